//! certfleet end to end: one release worker process at concurrency C
//! issues N certificates; the bench publishes the jobs and waits for the
//! events.
//!
//! The load is a closed loop with C jobs outstanding: a job is published
//! (confirmed) whenever an event frees a slot. The worker's prefetch is C,
//! so it always has C orders in flight — the same as publishing all N at
//! once — and each certificate's time (published → event received, which
//! includes the broker hops, S3 and the confirmed event) is its own, not
//! its wait in the queue, and compares with one lego process per
//! certificate. One certificate is issued first, untimed: it creates the
//! fleet's ACME account, as lego's and the ceiling's warm-ups do.
//!
//! In dns-01 mode the jobs ask for dns-01 and the worker gets the `rfc2136`
//! provider on the bench's BIND ([`crate::stack::Ca::dns01_vars`]).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use certfleet_common::EventKind;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use uuid::Uuid;

use crate::jobs::{Events, Jobs, issue_envelope};
use crate::procfs::{self, CpuMeter};
use crate::prom::{Scrape, delta};
use crate::results::{Throughput, Tool};
use crate::stack::{Ca, Slice, Stack};
use crate::stall::{self, Probe};
use crate::stats;
use crate::worker;
use crate::worker::WorkerProcess;
use certfleet_tests::http::Http;

/// Longest wait for the next event before the run is called stuck (far
/// longer than any certificate takes; Pebble 2.4 can deadlock under load,
/// see `bench/README.md`).
const EVENT_TIMEOUT: Duration = Duration::from_secs(120);
/// How often memory and jobs in flight are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// What to run (the command line of `bench-step throughput`).
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The private CA.
    #[command(flatten)]
    pub ca: Ca,
    /// Orders in flight (`CERTFLEET_CONCURRENCY`).
    #[arg(long, default_value_t = 64)]
    pub concurrency: u32,
    /// Certificates.
    #[arg(long, default_value_t = 200)]
    pub n: usize,
    /// Name label (shared with lego's run of the same names).
    #[arg(long)]
    pub label: String,
    /// `certfleet-worker` binary.
    #[arg(long, default_value_os_t = crate::worker::default_worker_bin())]
    pub worker_bin: PathBuf,
    /// Where the worker's log goes.
    #[arg(long, default_value = "worker.log")]
    pub log: PathBuf,
    /// Record a CPU profile of the worker during the run with
    /// `perf record` into this file.
    #[arg(long)]
    pub perf: Option<PathBuf>,
    /// Worker processes on the same stack (each with `--concurrency`
    /// slots; the bench still keeps `--concurrency` jobs outstanding).
    #[arg(long, default_value_t = 1)]
    pub workers: u32,
}

struct Sampled {
    max_rss_kib: u64,
    max_in_flight: u32,
    rss_at_max_in_flight_kib: u64,
}

/// Runs it.
///
/// # Errors
/// The stack or the worker could not be set up. Jobs that fail are
/// counted, not errors.
pub async fn run(stack: &Stack, opts: &Options) -> anyhow::Result<Throughput> {
    let http = Http::new(None)?;
    let slice = Slice::create(stack, &opts.label, Some(&opts.ca)).await?;
    let result = run_in(stack, &slice, &http, opts).await;
    slice.cleanup().await;
    result
}

async fn run_in(
    stack: &Stack,
    slice: &Slice,
    http: &Http,
    opts: &Options,
) -> anyhow::Result<Throughput> {
    let cfg = slice.config()?;
    let names = opts.ca.names(&opts.label, opts.n);
    let warmup = opts.ca.warmup_name(&opts.label, "cf");
    opts.ca
        .point_dns(http, &[names.clone(), vec![warmup.clone()]].concat())
        .await?;

    let mut workers = Vec::new();
    for i in 0..opts.workers.max(1) {
        let log = if i == 0 {
            opts.log.clone()
        } else {
            opts.log.with_extension(format!("{}.log", i + 1))
        };
        let mut w = WorkerProcess::spawn(&opts.worker_bin, slice.vars(), opts.concurrency, &log)?;
        w.ready(Duration::from_secs(60)).await?;
        workers.push(w);
    }
    let outcome = drive(stack, &cfg, &workers, opts, &names, &warmup).await;
    for w in workers {
        w.stop().await;
    }
    outcome
}

async fn drive(
    stack: &Stack,
    cfg: &certfleet_common::Config,
    workers: &[WorkerProcess],
    opts: &Options,
    names: &[String],
    warmup: &str,
) -> anyhow::Result<Throughput> {
    let mut events = Events::subscribe(cfg, "cert.#").await?;
    let jobs = Arc::new(Jobs::connect(cfg).await?);
    let probe = Probe::new(&opts.ca).await?;
    let quiet = stall::quiet_for(opts.ca.mode);

    // Warm-up: account creation, connections.
    let challenge = opts.ca.mode.challenge();
    let env = issue_envelope(warmup, challenge)?;
    jobs.publish(&env).await?;
    let ev = events
        .next(EVENT_TIMEOUT)
        .await?
        .context("no event for the warm-up certificate")?;
    anyhow::ensure!(
        ev.kind == EventKind::Issued,
        "warm-up certificate failed: {:?}",
        ev.error
    );

    let worker = &workers[0];
    let pid = worker.pid();
    let before = scrape_all(workers).await?;
    let names_of: Vec<String> = (0..workers.len())
        .map(|i| {
            if i == 0 {
                "worker".into()
            } else {
                format!("worker{}", i + 1)
            }
        })
        .collect();
    let worker_pids: Vec<(&str, u32)> = workers
        .iter()
        .zip(&names_of)
        .map(|(w, n)| (n.as_str(), w.pid()))
        .collect();
    let cpu = CpuMeter::start(&opts.ca.pid_files(stack), &worker_pids);
    let perf = match &opts.perf {
        Some(file) => Some(start_perf(pid, file).await?),
        None => None,
    };

    // Memory and in-flight sampler.
    let stop_sampling = tokio_util::sync::CancellationToken::new();
    let sampler = {
        let stop = stop_sampling.clone();
        let http = Http::new(None)?;
        let url = format!("{}/metrics", worker.metrics_url());
        tokio::spawn(async move {
            let mut s = Sampled {
                max_rss_kib: 0,
                max_in_flight: 0,
                rss_at_max_in_flight_kib: 0,
            };
            loop {
                let rss = procfs::memory(pid).map(|m| m.rss_kib).unwrap_or(0);
                s.max_rss_kib = s.max_rss_kib.max(rss);
                if let Ok(text) = http.get_ok(&url).await {
                    let in_flight =
                        Scrape::parse(&text).sum("certfleet_jobs_in_flight", &[]) as u32;
                    if in_flight > s.max_in_flight {
                        s.max_in_flight = in_flight;
                        s.rss_at_max_in_flight_kib = rss;
                    } else if in_flight == s.max_in_flight {
                        s.rss_at_max_in_flight_kib = s.rss_at_max_in_flight_kib.max(rss);
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(SAMPLE_EVERY) => {}
                }
            }
            s
        })
    };

    // The closed loop.
    let slots = Arc::new(Semaphore::new(opts.concurrency as usize));
    let started: Arc<Mutex<HashMap<Uuid, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let t0 = Instant::now();
    let publisher = {
        let slots = slots.clone();
        let started = started.clone();
        let jobs = jobs.clone();
        let names = names.to_vec();
        tokio::spawn(async move {
            // Each job is published as soon as a slot frees, its publisher
            // confirm awaited in a task of its own: one at a time, a
            // confirm's round trip would cap the rate the bench can offer
            // (at 5 ms, 200 jobs/s), whatever the worker does.
            let mut confirms = tokio::task::JoinSet::new();
            for name in names {
                let permit = slots.acquire().await?;
                permit.forget();
                let env = issue_envelope(&name, challenge)?;
                if let Ok(mut m) = started.lock() {
                    m.insert(env.job_id, Instant::now());
                }
                let jobs = jobs.clone();
                confirms.spawn(async move { jobs.publish(&env).await });
                while let Some(done) = confirms.try_join_next() {
                    done??;
                }
            }
            while let Some(done) = confirms.join_next().await {
                done??;
            }
            anyhow::Ok(())
        })
    };
    let mut latencies = Vec::with_capacity(names.len());
    let mut failed = 0usize;
    let mut last = t0;
    while latencies.len() + failed < names.len() {
        let Some(ev) = events.next(quiet).await? else {
            if probe.stalled().await {
                publisher.abort();
                let stalled = probe
                    .stalled_ca(&opts.ca.pebble_pid_file, latencies.len())
                    .await;
                return Err(stalled.into());
            }
            if last.elapsed() >= EVENT_TIMEOUT {
                tracing::warn!("no event for {EVENT_TIMEOUT:?}; giving up on the rest");
                break;
            }
            continue;
        };
        let Some(at) = started.lock().ok().and_then(|mut m| m.remove(&ev.job_id)) else {
            continue; // a duplicate (events are at-least-once)
        };
        last = Instant::now();
        match ev.kind {
            EventKind::Issued | EventKind::Renewed => {
                latencies.push(last.duration_since(at).as_secs_f64());
            }
            _ => {
                failed += 1;
                tracing::warn!(name = %ev.name, error = ?ev.error, "certificate failed");
            }
        }
        slots.add_permits(1);
    }
    let elapsed = last.duration_since(t0).as_secs_f64();
    let mut cpu_s = cpu.stop();
    // Every worker process's CPU counts as the worker's.
    let extra: f64 = names_of[1..].iter().filter_map(|n| cpu_s.remove(n)).sum();
    *cpu_s.entry("worker".into()).or_default() += extra;
    publisher.abort();
    if let Some(p) = perf {
        stop_perf(p).await;
    }
    stop_sampling.cancel();
    let sampled = sampler.await?;
    let after = scrape_all(workers).await?;
    let mem = procfs::memory(pid).unwrap_or_default();

    let ok = latencies.len();
    let not_finished = names.len() - ok - failed;
    let s3 = delta(
        &before.by_label("certfleet_s3_requests_total", "op"),
        &after.by_label("certfleet_s3_requests_total", "op"),
    );
    let acme = after.sum("certfleet_acme_client_requests_total", &[])
        - before.sum("certfleet_acme_client_requests_total", &[]);
    let mib = |kib: u64| kib as f64 / 1024.0;
    let job_s = after.sum("certfleet_jobs_duration_seconds_sum", &[])
        - before.sum("certfleet_jobs_duration_seconds_sum", &[]);
    let jobs = after.sum("certfleet_jobs_duration_seconds_count", &[])
        - before.sum("certfleet_jobs_duration_seconds_count", &[]);
    Ok(Throughput {
        workers: opts.workers.max(1),
        s3: stack.s3_server.clone(),
        tool: Tool::Certfleet,
        mode: opts.ca.mode,
        concurrency: opts.concurrency,
        n: names.len(),
        ok,
        failed: failed + not_finished,
        elapsed_s: elapsed,
        certs_per_s: if elapsed > 0.0 {
            ok as f64 / elapsed
        } else {
            0.0
        },
        latency_s: stats::summary(&latencies),
        client_cpu_s: cpu_s.get("worker").copied().unwrap_or(0.0),
        cpu_s,
        peak_rss_mib: Some(mib(mem.hwm_kib.max(sampled.max_rss_kib))),
        rss_at_max_in_flight_mib: Some(mib(sampled.rss_at_max_in_flight_kib)),
        max_in_flight: Some(sampled.max_in_flight),
        s3_requests: s3.into_iter().collect::<BTreeMap<_, _>>(),
        acme_requests: Some(acme),
        worker_job_mean_s: (jobs > 0.0).then(|| job_s / jobs),
        phase_mean_ms: phase_means(&before, &after),
        note: String::new(),
    })
}

/// Mean milliseconds per phase of a job over the run (from the worker's
/// `certfleet_job_phase_duration_seconds`).
fn phase_means(before: &Scrape, after: &Scrape) -> BTreeMap<String, f64> {
    const NAME: &str = "certfleet_job_phase_duration_seconds";
    let sums = delta(
        &before.by_label(&format!("{NAME}_sum"), "phase"),
        &after.by_label(&format!("{NAME}_sum"), "phase"),
    );
    let counts = delta(
        &before.by_label(&format!("{NAME}_count"), "phase"),
        &after.by_label(&format!("{NAME}_count"), "phase"),
    );
    sums.into_iter()
        .filter_map(|(phase, sum)| {
            let n = counts.get(&phase).copied().unwrap_or(0.0);
            (n > 0.0).then(|| (phase, 1000.0 * sum / n))
        })
        .collect()
}

/// Every worker's `/metrics`, as one scrape (their lines together: sums
/// add up across processes).
async fn scrape_all(workers: &[WorkerProcess]) -> anyhow::Result<Scrape> {
    let mut text = String::new();
    for w in workers {
        text.push_str(&w.metrics_text().await?);
        text.push('\n');
    }
    Ok(Scrape::parse(&text))
}

struct Perf {
    child: tokio::process::Child,
}

async fn start_perf(pid: u32, file: &std::path::Path) -> anyhow::Result<Perf> {
    let child = tokio::process::Command::new("perf")
        .args([
            "record",
            "-e",
            "cpu-clock",
            "-F",
            "499",
            "--call-graph",
            "dwarf,32768",
            "-o",
        ])
        .arg(file)
        .args(["-p", &pid.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting perf record")?;
    // perf needs a moment to attach.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(Perf { child })
}

async fn stop_perf(mut p: Perf) {
    if let Some(id) = p.child.id() {
        worker::signal(id, "INT").await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), p.child.wait()).await;
}
