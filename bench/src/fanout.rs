//! Fan-out: from a stored certificate to M webservers having the files.
//!
//! M `certfleet watch` subscribers run in this process (tasks calling
//! `certfleet::agent::watch`, each with its own durable queue
//! `certfleet.watch.<id>` and its own directory), against one release
//! worker in instant mode. Certificates are issued one at a time; for each,
//! the time from the pointer's `updated_at` (the moment the worker flipped
//! the pointer: the certificate is stored) to `DIR/<name>/fullchain.pem`
//! appearing in each subscriber's directory (the symlink switch, i.e. all
//! four files in place) is one sample. The directories are polled every
//! [`POLL_EVERY`], which bounds the resolution.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use certfleet::agent::WatchOptions;
use certfleet_common::{CertName, ChallengeType, EventKind, Store, topology};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::jobs::{Events, Jobs, issue_envelope};
use crate::procfs::CpuMeter;
use crate::results::Fanout;
use crate::stack::{Ca, Slice, Stack};
use crate::stats;
use crate::worker::WorkerProcess;

/// How often subscriber directories are checked.
pub const POLL_EVERY: Duration = Duration::from_millis(5);
/// How long one certificate may take to reach every subscriber.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// What to run (the command line of `bench-step fanout`).
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The private CA (instant mode).
    #[command(flatten)]
    pub ca: Ca,
    /// Subscribers.
    #[arg(long, default_value_t = 10)]
    pub subscribers: usize,
    /// Certificates, one after another.
    #[arg(long, default_value_t = 10)]
    pub certificates: usize,
    /// Label (names, vhost, prefixes).
    #[arg(long)]
    pub label: String,
    /// `certfleet-worker` binary.
    #[arg(long, default_value_os_t = crate::worker::default_worker_bin())]
    pub worker_bin: PathBuf,
    /// Where subscriber directories and the worker log go.
    #[arg(long)]
    pub dir: PathBuf,
}

/// Runs it.
///
/// # Errors
/// Setup failed (broker, worker, subscribers not ready in time).
pub async fn run(stack: &Stack, opts: &Options) -> anyhow::Result<Fanout> {
    let slice = Slice::create(stack, &opts.label, Some(&opts.ca)).await?;
    let result = run_in(stack, &slice, opts).await;
    slice.cleanup().await;
    result
}

async fn run_in(stack: &Stack, slice: &Slice, opts: &Options) -> anyhow::Result<Fanout> {
    let cfg = slice.config()?;
    let mut worker = WorkerProcess::spawn(
        &opts.worker_bin,
        slice.vars(),
        64,
        &opts.dir.join("worker.log"),
    )?;
    worker.ready(Duration::from_secs(60)).await?;
    let stop = CancellationToken::new();
    let result = async {
        let mut events = Events::subscribe(&cfg, "cert.#").await?;
        let jobs = Jobs::connect(&cfg).await?;
        // Warm-up (account) before the subscribers start.
        jobs.publish(&issue_envelope(
            &opts.ca.warmup_name(&opts.label, "fan"),
            opts.ca.mode.challenge(),
        )?)
        .await?;
        events
            .next(Duration::from_secs(120))
            .await?
            .context("no event for the warm-up certificate")?;

        let dirs = start_subscribers(&cfg, opts, &stop).await?;
        let store = Store::from_config(&cfg).await;
        let cpu = CpuMeter::start(
            &stack.service_pid_files(),
            &[("worker", worker.pid()), ("bench", std::process::id())],
        );
        let mut from_stored = Vec::new();
        let mut from_event = Vec::new();
        let mut all = Vec::new();
        let mut missing = 0;
        for k in 0..opts.certificates {
            let name = format!("f{k:03}.{}.{}", opts.label, opts.ca.zone);
            let seen = deliver(&jobs, &mut events, &dirs, &name, opts.ca.mode.challenge()).await?;
            let (pointer, _) = store
                .pointer(&CertName::parse(&name)?)
                .await?
                .context("no pointer after the event")?;
            let stored = SystemTime::from(pointer.updated_at);
            let mut worst: f64 = 0.0;
            for t in &seen.at {
                match t {
                    Some(t) => {
                        let d = secs_between(stored, *t);
                        worst = worst.max(d);
                        from_stored.push(d);
                        if let Some(e) = seen.event_at {
                            from_event.push(secs_between(e, *t));
                        }
                    }
                    None => missing += 1,
                }
            }
            all.push(worst);
        }
        let cpu_s = cpu.stop();
        anyhow::Ok(Fanout {
            subscribers: opts.subscribers,
            certificates: opts.certificates,
            from_stored_s: stats::summary(&from_stored),
            from_event_s: stats::summary(&from_event),
            all_subscribers_s: stats::summary(&all),
            missing,
            cpu_s,
        })
    }
    .await;
    stop.cancel();
    worker.stop().await;
    result
}

fn secs_between(from: SystemTime, to: SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Starts the subscribers and waits until each consumes from its queue.
async fn start_subscribers(
    cfg: &certfleet_common::Config,
    opts: &Options,
    stop: &CancellationToken,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    let mut queues = Vec::new();
    for i in 0..opts.subscribers {
        let dir = opts.dir.join(format!("web{i:03}"));
        std::fs::create_dir_all(&dir)?;
        let queue_id = format!("bench-web{i:03}");
        queues.push(topology::watch_queue(&queue_id));
        let (cfg, dir2, stop) = (cfg.clone(), dir.clone(), stop.child_token());
        tokio::spawn(async move {
            let o = WatchOptions {
                dir: dir2,
                queue_id,
                filters: Vec::new(),
                on_change: None,
                hook_env: vec![],
                metrics_listen: None,
            };
            if let Err(e) = certfleet::agent::watch(&cfg, o, stop).await {
                tracing::warn!(error = %e, "a subscriber stopped");
            }
        });
        dirs.push(dir);
    }
    // A subscriber is ready once its queue has a consumer (a passive
    // declare is exact; it fails, closing the channel, while the queue
    // does not exist yet).
    let conn = certfleet_common::amqp::connect(&cfg.amqp_url, "certfleet-bench-probe").await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    for q in &queues {
        loop {
            let ch = conn.create_channel().await?;
            let ready = ch
                .queue_declare(
                    q.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map(|d| d.consumer_count() > 0)
                .unwrap_or(false);
            certfleet_common::amqp::close_channel(&ch, 200, "probe").await;
            if ready {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "subscriber queue {q} has no consumer after 120 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    certfleet_common::amqp::close(&conn, 200, "done").await;
    Ok(dirs)
}

struct Seen {
    /// When each subscriber had the files (None: not in time).
    at: Vec<Option<SystemTime>>,
    /// The event's `at`.
    event_at: Option<SystemTime>,
}

/// Issues `name` and polls every directory until all have the files.
async fn deliver(
    jobs: &Jobs,
    events: &mut Events,
    dirs: &[PathBuf],
    name: &str,
    challenge: ChallengeType,
) -> anyhow::Result<Seen> {
    let env = issue_envelope(name, challenge)?;
    jobs.publish(&env).await?;
    let files: Vec<PathBuf> = dirs.iter().map(|d| target(d, name)).collect();
    let mut at: Vec<Option<SystemTime>> = vec![None; dirs.len()];
    let mut left = dirs.len();
    let mut event_at = None;
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    while (left > 0 || event_at.is_none()) && Instant::now() < deadline {
        if event_at.is_none() {
            if let Some(ev) = events.next(POLL_EVERY).await?
                && ev.job_id == env.job_id
            {
                anyhow::ensure!(
                    ev.kind == EventKind::Issued,
                    "{name} failed: {:?}",
                    ev.error
                );
                event_at = Some(SystemTime::from(ev.at));
            }
        } else {
            tokio::time::sleep(POLL_EVERY).await;
        }
        let now = SystemTime::now();
        for (slot, file) in at.iter_mut().zip(&files) {
            if slot.is_none() && file.exists() {
                *slot = Some(now);
                left -= 1;
            }
        }
    }
    anyhow::ensure!(
        event_at.is_some(),
        "no event for {name} within {DELIVERY_TIMEOUT:?} (is the CA stuck?)"
    );
    Ok(Seen { at, event_at })
}

fn target(dir: &Path, name: &str) -> PathBuf {
    dir.join(name).join("fullchain.pem")
}
