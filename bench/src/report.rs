//! `report.md`: the tables, the settings, the targets and where the time
//! goes, from the records of one results directory.

use std::fmt::Write as _;

use crate::profile::Breakdown;
use crate::results::{Bookkeeping, Fanout, Record, StorageCeiling, Throughput, Tool};
use crate::stack::Mode;

/// What the report is made from.
#[derive(Debug, Default)]
pub struct Inputs {
    /// Every record of the run.
    pub records: Vec<Record>,
    /// `key: value` lines written by `run.sh` (machine, versions, options).
    pub settings: Vec<(String, String)>,
    /// The worker's CPU profile in instant mode, if perf was available.
    pub profile: Option<Breakdown>,
    /// The concurrency of the main certfleet runs.
    pub main_concurrency: u32,
    /// Whether the chart has text.
    pub chart_text: bool,
    /// Results directory name (timestamp).
    pub run: String,
}

/// A target and how the run did.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The target.
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// Met, missed, or not measured (None).
    pub met: Option<bool>,
}

impl Inputs {
    fn throughput(&self) -> impl Iterator<Item = &Throughput> {
        self.records.iter().filter_map(|r| match r {
            Record::Throughput(t) => Some(t),
            _ => None,
        })
    }

    fn fanouts(&self) -> Vec<&Fanout> {
        let mut v: Vec<&Fanout> = self
            .records
            .iter()
            .filter_map(|r| match r {
                Record::Fanout(f) => Some(f),
                _ => None,
            })
            .collect();
        v.sort_by_key(|f| f.subscribers);
        v
    }

    fn dashboard(&self) -> Option<&crate::results::DashboardView> {
        self.records.iter().find_map(|r| match r {
            Record::Dashboard(d) => Some(d),
            _ => None,
        })
    }

    fn bookkeeping(&self) -> Option<&Bookkeeping> {
        self.records.iter().find_map(|r| match r {
            Record::Bookkeeping(b) => Some(b),
            _ => None,
        })
    }

    /// Every storage ceiling (one per S3 server measured).
    fn storages(&self) -> Vec<&StorageCeiling> {
        self.records
            .iter()
            .filter_map(|r| match r {
                Record::Storage(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    /// The storage ceiling of the stack's own S3 server.
    fn storage(&self) -> Option<&StorageCeiling> {
        self.storages().into_iter().find(|s| s.server != "moto")
    }

    /// The S3 server of the stack, by name (`SeaweedFS`).
    fn s3_name(&self) -> &str {
        self.setting("S3 server")
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or("the S3 server")
    }

    /// Whether a run is one of the main ones: one worker, the stack's S3.
    fn main_run(t: &Throughput) -> bool {
        t.workers <= 1 && t.s3 != "moto"
    }

    /// The run of `tool` in `mode` at concurrency `c` (largest n if several;
    /// one worker, the stack's S3 server).
    pub fn find(&self, tool: Tool, mode: Mode, c: u32) -> Option<&Throughput> {
        self.throughput()
            .filter(|t| t.tool == tool && t.mode == mode && t.concurrency == c)
            .filter(|t| Self::main_run(t))
            .max_by_key(|t| t.n)
    }

    /// certfleet's instant-mode runs that are not main runs (two workers,
    /// or moto as the S3 server).
    fn variants(&self) -> Vec<&Throughput> {
        self.throughput()
            .filter(|t| t.tool == Tool::Certfleet && !Self::main_run(t))
            .collect()
    }

    /// The certfleet run with the most orders in flight.
    fn most_in_flight(&self) -> Option<&Throughput> {
        self.throughput()
            .filter(|t| t.tool == Tool::Certfleet)
            .max_by_key(|t| (t.max_in_flight.unwrap_or(0), t.n))
    }

    fn setting(&self, key: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The machine's CPUs (`nproc` of the run; 2 if not recorded).
    fn cores(&self) -> f64 {
        self.setting("nproc")
            .and_then(|v| v.parse().ok())
            .unwrap_or(2.0)
    }
}

fn f1(x: f64) -> String {
    format!("{x:.1}")
}

fn rate(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.0}")
    } else if x >= 1.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn secs(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn duration(s: f64) -> String {
    if !s.is_finite() {
        "—".into()
    } else if s >= 3600.0 {
        format!("{:.1} h", s / 3600.0)
    } else if s >= 120.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{s:.0} s")
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        let r = a / b;
        if r >= 10.0 {
            format!("{r:.0}×")
        } else {
            format!("{r:.1}×")
        }
    } else {
        "—".into()
    }
}

fn per_cert(total: f64, ok: usize) -> f64 {
    if ok == 0 { 0.0 } else { total / ok as f64 }
}

/// `instant C=64`, with [`variant`].
fn run_label(t: &Throughput) -> String {
    format!("{} C={}{}", t.mode.as_str(), t.concurrency, variant(t))
}

/// What sets a certfleet run apart from the main one: `, S3 on moto`,
/// `, 2 workers`, or nothing.
fn variant(t: &Throughput) -> String {
    match (t.workers, t.s3.as_str()) {
        (1, "moto") => ", S3 on moto".to_string(),
        (1, _) => String::new(),
        (w, _) => format!(", {w} workers"),
    }
}

fn client_label(t: &Throughput) -> String {
    match t.tool {
        Tool::Certfleet => format!(
            "certfleet, {} worker{}, C={}{}",
            t.workers,
            if t.workers == 1 { "" } else { "s" },
            t.concurrency,
            if t.s3 == "moto" { ", S3 on moto" } else { "" }
        ),
        Tool::Ceiling => format!("instant-acme only, C={}", t.concurrency),
        Tool::Lego if t.concurrency == 1 => "lego, sequential".into(),
        Tool::Lego => format!("lego, {} processes", t.concurrency),
    }
}

/// Time for `n` certificates at the run's rate, marked when extrapolated.
fn time_for(t: &Throughput, n: usize) -> String {
    if t.ok >= n && t.failed == 0 && t.n == n {
        format!("{} (measured)", duration(t.elapsed_s))
    } else if t.certs_per_s > 0.0 {
        format!("{} (extrapolated)", duration(n as f64 / t.certs_per_s))
    } else {
        "—".into()
    }
}

/// Renders the whole report.
pub fn render(inp: &Inputs, verdicts: &[Verdict]) -> String {
    let mut md = String::new();
    let c_main = inp.main_concurrency;
    let _ = writeln!(md, "# certfleet benchmark — {}\n", inp.run);
    let _ = writeln!(
        md,
        "`make bench` (bench/run.sh). One release `certfleet-worker` process; every mode has a \
         private Pebble 2.4 + challtestsrv started by `scripts/stack.sh` with its own STACK_DIR and \
         ports; RabbitMQ, Redis and S3 ({}) are the shared stack, used through a vhost and \
         prefixes of the bench's own. Domains resolve to {} (port 5002), the bench's own \
         loopback address.\n",
        inp.s3_name(),
        inp.setting("BENCH_IP").unwrap_or("the bench address")
    );
    if inp.throughput().any(|t| t.mode == Mode::Dns01) {
        let _ = writeln!(
            md,
            "dns01 mode: the private Pebble resolves through a BIND 9 of the bench's own \
             (`scripts/stack.sh up bind` in the same STACK_DIR, on {}), authoritative for \
             `dns01.test`, where the names of this mode are; both clients write their \
             `_acme-challenge` TXT records there with TSIG-signed RFC 2136 updates and wait until \
             its NS serves them: certfleet's `rfc2136` provider, and `lego --dns rfc2136` (each lego \
             process in a mount namespace whose /etc/resolv.conf names that BIND, since lego's \
             propagation check resolves NS names through the system resolver).\n",
            inp.setting("BENCH_BIND_ADDR")
                .unwrap_or("its own loopback address")
        );
    }

    // Targets first: the verdict.
    let _ = writeln!(md, "## Targets (2-core machine, measured by this run)\n");
    let _ = writeln!(md, "| target | measured | |");
    let _ = writeln!(md, "|---|---|---|");
    for v in verdicts {
        let mark = match v.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None if v.measured == "—" => "not measured",
            None => "measured",
        };
        let _ = writeln!(md, "| {} | {} | {} |", v.target, v.measured, mark);
    }
    md.push('\n');

    // Throughput table.
    let _ = writeln!(md, "## Throughput\n");
    let _ = writeln!(
        md,
        "Seconds per certificate: certfleet = job published → event received (the bench keeps C \
         jobs outstanding, so this is the job's own time, not its wait in the queue); ceiling = \
         new order → chain downloaded; lego = one `lego run` process, start → exit. CPU per \
         certificate from /proc (utime+stime) over the timed part; lego = all lego processes; \
         the ceiling's includes its in-process http-01 responder (the ceiling answers http-01 \
         only, so dns01 mode has none). S3 and ACME requests from the \
         worker's `/metrics`. \"1,000 certs take\" is measured where a run had 1,000, else \
         extrapolated from the run's rate.\n"
    );
    let _ = writeln!(
        md,
        "| mode | client | n | certs/s | p50 s | p99 s | client CPU ms/cert | Pebble CPU ms/cert | worker peak RSS MiB | S3 req/cert get+put | ACME req/cert | 1,000 certs take |"
    );
    let _ = writeln!(
        md,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for mode in Mode::ALL {
        let mut rows: Vec<&Throughput> = inp.throughput().filter(|t| t.mode == mode).collect();
        rows.sort_by_key(|t| (t.tool, t.concurrency, t.n));
        for t in rows {
            let s3 = if t.tool == Tool::Certfleet {
                let g = t.s3_requests.get("get").copied().unwrap_or(0.0);
                let p = t.s3_requests.get("put").copied().unwrap_or(0.0);
                format!("{}+{}", f1(per_cert(g, t.ok)), f1(per_cert(p, t.ok)))
            } else {
                "—".into()
            };
            let acme = t
                .acme_requests
                .map(|a| f1(per_cert(a, t.ok)))
                .unwrap_or_else(|| "—".into());
            let rss = match (t.tool, t.peak_rss_mib) {
                (Tool::Certfleet, Some(r)) => {
                    format!("{} ({} in flight)", f1(r), t.max_in_flight.unwrap_or(0))
                }
                _ => "—".into(),
            };
            let failed = if t.failed > 0 {
                format!(" ({} failed)", t.failed)
            } else {
                String::new()
            };
            let _ = writeln!(
                md,
                "| {} | {} | {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                mode.as_str(),
                client_label(t),
                t.ok,
                failed,
                rate(t.certs_per_s),
                secs(t.latency_s.p50),
                secs(t.latency_s.p99),
                f1(t.client_cpu_ms_per_cert()),
                f1(t.pebble_cpu_ms_per_cert()),
                rss,
                s3,
                acme,
                time_for(t, 1000),
            );
        }
    }
    md.push('\n');

    // Ratios.
    let _ = writeln!(md, "## Side by side\n");
    let _ = writeln!(
        md,
        "| mode | certfleet C={c_main} certs/s | lego sequential | lego ×8 | certfleet / lego sequential | certfleet / lego ×8 | instant-acme only C={c_main} | certfleet / ceiling |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for mode in Mode::ALL {
        let Some(cf) = inp.find(Tool::Certfleet, mode, c_main) else {
            continue;
        };
        let l1 = inp.find(Tool::Lego, mode, 1).map(|t| t.certs_per_s);
        let l8 = inp.find(Tool::Lego, mode, 8).map(|t| t.certs_per_s);
        let ce = inp.find(Tool::Ceiling, mode, c_main).map(|t| t.certs_per_s);
        let show = |x: Option<f64>| x.map(rate).unwrap_or_else(|| "—".into());
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            mode.as_str(),
            rate(cf.certs_per_s),
            show(l1),
            show(l8),
            l1.map(|l| ratio(cf.certs_per_s, l))
                .unwrap_or_else(|| "—".into()),
            l8.map(|l| ratio(cf.certs_per_s, l))
                .unwrap_or_else(|| "—".into()),
            show(ce),
            ce.map(|c| format!("{:.0} %", 100.0 * cf.certs_per_s / c.max(1e-9)))
                .unwrap_or_else(|| "—".into()),
        );
    }
    md.push('\n');
    let _ = writeln!(
        md,
        "![certificates per second vs concurrency](chart.png)\n\n{}\n",
        if inp.chart_text {
            "Chart: log-log; certfleet (blues; dns01 navy), the instant-acme-only ceiling (grey), lego (red/orange; dns01 dark red; x = parallel processes)."
        } else {
            "Chart drawn without text: no TTF font was found (install fonts-dejavu-core). Blues: certfleet (dns01 navy), grey: ceiling, red/orange: lego (dns01 dark red); x = concurrency (log), y = certificates/s (log)."
        }
    );

    // Fan-out.
    let fan = inp.fanouts();
    if !fan.is_empty() {
        let _ = writeln!(md, "## Fan-out\n");
        let _ = writeln!(
            md,
            "From the pointer's `updated_at` (the certificate is stored) to `DIR/<name>/fullchain.pem` \
             in a subscriber's directory (the atomic symlink switch: all four files in place), one \
             sample per certificate and subscriber; `certfleet watch` subscribers are in-process \
             tasks calling `certfleet::agent::watch`, each with its own durable queue and \
             directory; directories polled every 5 ms.\n"
        );
        let _ = writeln!(
            md,
            "| subscribers | certificates | samples | p50 ms | p99 ms | max ms | from the event's `at`: p99 ms | last subscriber: p50 / max ms | missing | S3 server CPU per delivery | machine busy |"
        );
        let _ = writeln!(
            md,
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for f in fan {
            let ms = |x: f64| format!("{:.0}", x * 1000.0);
            let deliveries = (f.certificates * f.subscribers).max(1) as f64;
            let s3 = f.cpu_s.get("s3").copied().unwrap_or(0.0);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {:.1} ms | {:.1} CPU-s |",
                f.subscribers,
                f.certificates,
                f.from_stored_s.n,
                ms(f.from_stored_s.p50),
                ms(f.from_stored_s.p99),
                ms(f.from_stored_s.max),
                ms(f.from_event_s.p99),
                ms(f.all_subscribers_s.p50),
                ms(f.all_subscribers_s.max),
                f.missing,
                1000.0 * s3 / deliveries,
                f.cpu_s.get("machine_busy").copied().unwrap_or(0.0)
            );
        }
        md.push('\n');
        let _ = writeln!(
            md,
            "Each subscriber reads the bundle the event announces from S3 (one GET per event \
             and subscriber; the pointer only at catch-up), so one certificate costs M requests \
             to the S3 server ({}) at once: the last of 100 subscribers waits for the 100 \
             requests before it.\n",
            inp.s3_name()
        );
    }

    // Bookkeeping.
    if let Some(b) = inp.bookkeeping() {
        let _ = writeln!(md, "## Bookkeeping\n");
        let _ = writeln!(
            md,
            "Expiry index of {} certificates (renewal times spread over 60 days), filled with \
             `State::index_replace` in {:.2} s. `schedule::due_scan` in dry run (index read, names \
             parsed, nothing published), median of {} runs after a warm-up. Bulk publish: \
             `Submitter::submit`, {} issue jobs, persistent, mandatory, publisher confirms, \
             into a quorum work queue.\n",
            b.indexed,
            b.fill_s,
            b.scans.first().map(|s| s.runs_ms.len()).unwrap_or(0),
            b.publish_jobs
        );
        let _ = writeln!(md, "| measurement | due | result |");
        let _ = writeln!(md, "|---|---:|---:|");
        for s in &b.scans {
            let _ = writeln!(
                md,
                "| due-scan, {} | {} | {:.1} ms |",
                s.label, s.due, s.median_ms
            );
        }
        for s in &b.exporter {
            let _ = writeln!(
                md,
                "| exporter refresh, {} | {} samples | {:.1} ms |",
                s.label, s.due, s.median_ms
            );
        }
        let _ = writeln!(
            md,
            "| bulk publish with confirms | {} jobs | {:.0} jobs/s (runs: {}) |",
            b.publish_jobs,
            b.publish_jobs_per_s,
            b.publish_runs_s
                .iter()
                .map(|s| format!("{s:.2} s"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let Some(t) = inp.most_in_flight() {
            let _ = writeln!(
                md,
                "| worker memory, {} orders in flight ({} mode, C={}) | — | peak RSS {:.1} MiB, RSS at most in flight {:.1} MiB |",
                t.max_in_flight.unwrap_or(0),
                t.mode.as_str(),
                t.concurrency,
                t.peak_rss_mib.unwrap_or(0.0),
                t.rss_at_max_in_flight_mib.unwrap_or(0.0)
            );
        }
        md.push('\n');
    }

    md.push_str(&where_time_goes(inp));

    // Settings.
    let _ = writeln!(md, "## Settings\n");
    for (k, v) in &inp.settings {
        let _ = writeln!(md, "- {k}: {v}");
    }
    md.push('\n');
    let notes: Vec<String> = inp
        .throughput()
        .filter(|t| !t.note.is_empty())
        .map(|t| {
            format!(
                "- {} {} ({}): {}",
                t.tool.as_str(),
                t.mode.as_str(),
                client_label(t),
                t.note
            )
        })
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(md, "Notes:\n");
        for n in notes {
            let _ = writeln!(md, "{n}");
        }
        md.push('\n');
    }
    md
}

/// The CPU split of the main instant run and the worker profile.
fn where_time_goes(inp: &Inputs) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## Where the time goes\n");
    let cores = inp.cores();
    let _ = writeln!(
        md,
        "CPU milliseconds per certificate of each process during certfleet's runs (from /proc; \
         BIND = the bench's BIND of dns01 mode; `machine` = every CPU of the machine, including \
         anything else running on it), and how busy the machine was ({cores:.0} cores):\n"
    );
    let _ = writeln!(
        md,
        "| run | certs/s | worker | Pebble | BIND | S3 | RabbitMQ | Redis | machine | machine busy | S3 server CPU per request | job in the worker / published → event, mean s |"
    );
    let _ = writeln!(
        md,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut runs: Vec<&Throughput> = inp
        .throughput()
        .filter(|t| t.tool == Tool::Certfleet)
        .collect();
    runs.sort_by_key(|t| (t.mode, t.concurrency));
    for t in runs {
        let ms = |k: &str| {
            format!(
                "{:.1}",
                per_cert(t.cpu_s.get(k).copied().unwrap_or(0.0) * 1000.0, t.ok)
            )
        };
        if t.ok == 0 || t.elapsed_s <= 0.0 {
            let _ = writeln!(
                md,
                "| {} C={} | no certificate | | | | | | | | | | |",
                t.mode.as_str(),
                t.concurrency
            );
            continue;
        }
        let busy = t.cpu_s.get("machine_busy").copied().unwrap_or(0.0);
        let s3_reqs: f64 = t.s3_requests.values().sum();
        let s3_cpu = t.cpu_s.get("s3").copied().unwrap_or(0.0);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} % | {} | {} / {:.2} |",
            run_label(t),
            rate(t.certs_per_s),
            ms("worker"),
            ms("pebble"),
            if t.cpu_s.contains_key("bind") {
                ms("bind")
            } else {
                "—".into()
            },
            ms("s3"),
            ms("rabbitmq"),
            ms("redis"),
            ms("machine_busy"),
            100.0 * busy / (t.elapsed_s.max(1e-9) * cores),
            if s3_reqs > 0.0 {
                format!("{:.1} ms", 1000.0 * s3_cpu / s3_reqs)
            } else {
                "—".into()
            },
            t.worker_job_mean_s
                .map(|m| format!("{m:.2}"))
                .unwrap_or_else(|| "—".into()),
            t.latency_s.mean
        );
    }
    md.push('\n');
    if let Some(st) = inp.storage() {
        let reqs = st.certificates.max(1) as f64 * f64::from(st.requests_per_certificate);
        let _ = writeln!(
            md,
            "The S3 server alone (`bench-step storage`: the worker's {} requests per new certificate — \
             pointer read, bundle write, pointer write — through the same client, {} \
             certificates at a time, nothing else running): **{:.0} certificates/s**, {} at \
             {:.1} ms of CPU per request ({:.0} % of one core). That is the storage ceiling of \
             this machine's local stack; certfleet cannot go faster end to end on it, whatever \
             the CA allows.\n",
            st.requests_per_certificate,
            st.concurrency,
            st.certs_per_s,
            inp.s3_name(),
            1000.0 * st.cpu_s.get("s3").copied().unwrap_or(0.0) / reqs,
            100.0 * st.cpu_s.get("s3").copied().unwrap_or(0.0) / st.elapsed_s.max(1e-9)
        );
    }
    for st in inp.storages().into_iter().filter(|s| s.server == "moto") {
        let reqs = st.certificates.max(1) as f64 * f64::from(st.requests_per_certificate);
        let _ = writeln!(
            md,
            "moto alone, the same step side by side: **{:.0} certificates/s**, {:.1} ms of CPU \
             per request ({:.0} % of one core).\n",
            st.certs_per_s,
            1000.0 * st.cpu_s.get("s3").copied().unwrap_or(0.0) / reqs,
            100.0 * st.cpu_s.get("s3").copied().unwrap_or(0.0) / st.elapsed_s.max(1e-9)
        );
    }
    let variants = inp.variants();
    if !variants.is_empty() {
        let _ = writeln!(
            md,
            "The main instant-mode run beside its variants (same mode, same jobs outstanding):\n"
        );
        let _ = writeln!(
            md,
            "| run | certs/s | p50 s | worker CPU ms/cert | S3 server CPU ms/cert | machine busy |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
        let mains: Vec<&Throughput> = variants
            .iter()
            .filter_map(|v| inp.find(Tool::Certfleet, v.mode, v.concurrency))
            .collect();
        let mut rows: Vec<&Throughput> = mains;
        rows.extend(variants.iter().copied());
        rows.sort_by_key(|t| (t.mode, t.concurrency, t.workers, t.s3.clone()));
        rows.dedup_by(|a, b| std::ptr::eq(*a, *b));
        for t in rows {
            let span = t.elapsed_s.max(1e-9);
            let _ = writeln!(
                md,
                "| {} C={}, {} worker{}, S3 {} | {} | {} | {:.1} | {:.1} | {:.0} % |",
                t.mode.as_str(),
                t.concurrency,
                t.workers,
                if t.workers == 1 { "" } else { "s" },
                if t.s3.is_empty() {
                    inp.s3_name()
                } else {
                    &t.s3
                },
                rate(t.certs_per_s),
                secs(t.latency_s.p50),
                t.client_cpu_ms_per_cert(),
                per_cert(1000.0 * t.cpu_s.get("s3").copied().unwrap_or(0.0), t.ok),
                100.0 * t.cpu_s.get("machine_busy").copied().unwrap_or(0.0) / span / 2.0,
            );
        }
        md.push('\n');
    }
    if inp.s3_name() == "moto"
        && let Some(t) = inp.find(Tool::Certfleet, Mode::Instant, inp.main_concurrency)
    {
        let s3_reqs: f64 = t.s3_requests.values().sum();
        let s3_cpu = t.cpu_s.get("s3").copied().unwrap_or(0.0);
        if s3_reqs > 0.0 && s3_cpu > 0.0 && t.ok > 0 {
            let per_req = s3_cpu / s3_reqs;
            let per_cert_reqs = s3_reqs / t.ok as f64;
            let _ = writeln!(
                md,
                "moto, the S3 server of the local stack, is one Python process (one core at most: \
                 the GIL): at {:.1} ms of its CPU per request and {:.1} requests per certificate \
                 (instant mode, C={}), it cannot serve more than about {:.0} certificates/s even \
                 with a whole core to itself, and it shares two cores with Pebble, RabbitMQ, Redis \
                 and the worker.\n",
                per_req * 1000.0,
                per_cert_reqs,
                t.concurrency,
                1.0 / (per_req * per_cert_reqs),
            );
        }
    }
    md.push_str(&phases(inp));
    if let Some(p) = &inp.profile {
        let _ = writeln!(
            md,
            "Worker CPU by activity (perf, dwarf call graphs, instant mode, C={}; a sample counts \
             for the first activity of this list that its stack is in):\n",
            inp.main_concurrency
        );
        let _ = writeln!(md, "| activity | share of worker CPU |");
        let _ = writeln!(md, "|---|---:|");
        for (name, share) in p.shares() {
            let _ = writeln!(md, "| {name} | {:.0} % |", share * 100.0);
        }
        let _ = writeln!(md, "\n({} samples)\n", p.total);
    }
    md
}

/// The phases of `certfleet_job_phase_duration_seconds`, in job order.
const PHASES: [&str; 7] = [
    "queued", "lease", "read", "order", "store", "announce", "complete",
];

/// Where an issue job's time goes inside the worker, per run, beside the
/// ceiling's whole order at the same concurrency.
fn phases(inp: &Inputs) -> String {
    let mut md = String::new();
    let mut runs: Vec<&Throughput> = inp
        .throughput()
        .filter(|t| t.tool == Tool::Certfleet && !t.phase_mean_ms.is_empty())
        .collect();
    if runs.is_empty() {
        return md;
    }
    runs.sort_by_key(|t| (t.mode, t.concurrency, t.workers, t.s3.clone()));
    let _ = writeln!(
        md,
        "Where a job's time goes, mean ms per phase (the worker's \
         `certfleet_job_phase_duration_seconds`): queued = published → delivered, lease, \
         read = the pointer, order = the CA (what the ceiling measures as a whole), store = \
         bundle and pointer writes, announce = the event until the broker confirmed it, \
         complete = Redis bookkeeping after the event (not in the measured latency). \
         Beside it, the mean of the ceiling's whole order at the same concurrency:\n"
    );
    let _ = writeln!(
        md,
        "| run | {} | sum | ceiling's order, mean ms |",
        PHASES.join(" | ")
    );
    let _ = writeln!(md, "|---|{}---:|---:|", "---:|".repeat(PHASES.len()));
    for t in runs {
        let cells: Vec<String> = PHASES
            .iter()
            .map(|p| {
                t.phase_mean_ms
                    .get(*p)
                    .map_or_else(|| "—".into(), |v| format!("{v:.1}"))
            })
            .collect();
        let sum: f64 = t.phase_mean_ms.values().sum();
        let ceiling = inp.find(Tool::Ceiling, t.mode, t.concurrency).map_or_else(
            || "—".into(),
            |c| format!("{:.1}", 1000.0 * c.latency_s.mean),
        );
        let _ = writeln!(
            md,
            "| {} | {} | {sum:.1} | {ceiling} |",
            run_label(t),
            cells.join(" | ")
        );
    }
    md.push('\n');
    md
}

/// Checks the targets against the records.
pub fn verdicts(inp: &Inputs) -> Vec<Verdict> {
    let c = inp.main_concurrency;
    let mut v = Vec::new();
    let cf_instant = inp.find(Tool::Certfleet, Mode::Instant, c);
    v.push(match cf_instant {
        Some(t) => Verdict {
            target: "instant validation: ≥ 100 certificates/s, one worker".into(),
            measured: format!(
                "{} certs/s (C={c}, n={}){}",
                rate(t.certs_per_s),
                t.ok,
                inp.storage()
                    .map(|s| format!("; the S3 server alone takes {:.0}/s", s.certs_per_s))
                    .unwrap_or_default()
            ),
            met: Some(t.certs_per_s >= 100.0),
        },
        None => missing("instant validation: ≥ 100 certificates/s, one worker"),
    });
    v.push(of_ceiling(
        inp,
        c,
        0.8,
        "instant: ≥ 80 % of the instant-acme-only ceiling".into(),
    ));
    // On the stack's own S3 server (SeaweedFS): the ceiling at 64 and 128.
    let s3 = inp.s3_name().to_string();
    let mut at = vec![c, 128];
    at.dedup();
    for cc in at {
        let target = format!("instant, {s3}: ≥ 90 % of the instant-acme-only ceiling at C={cc}");
        v.push(of_ceiling(inp, cc, 0.9, target));
    }
    let target = "instant: ≥ 150 certificates/s, one worker, wherever the ceiling is above 165";
    let fast: Vec<(&Throughput, &Throughput)> = inp
        .throughput()
        .filter(|ce| ce.tool == Tool::Ceiling && ce.mode == Mode::Instant && ce.certs_per_s > 165.0)
        .filter_map(|ce| {
            Some((
                inp.find(Tool::Certfleet, Mode::Instant, ce.concurrency)?,
                ce,
            ))
        })
        .collect();
    v.push(if fast.is_empty() {
        Verdict {
            target: target.into(),
            measured: "no concurrency measured with a ceiling above 165/s and a certfleet run"
                .into(),
            met: None,
        }
    } else {
        Verdict {
            target: target.into(),
            measured: fast
                .iter()
                .map(|(t, ce)| {
                    format!(
                        "C={}: {} (ceiling {})",
                        t.concurrency,
                        rate(t.certs_per_s),
                        rate(ce.certs_per_s)
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
            met: Some(fast.iter().all(|(t, _)| t.certs_per_s >= 150.0)),
        }
    });
    let target = "256 orders in flight: no retry storm (S3 reads per certificate ≤ 2)";
    v.push(match inp.find(Tool::Certfleet, Mode::Instant, 256) {
        Some(t) => {
            let gets = per_cert(t.s3_requests.get("get").copied().unwrap_or(0.0), t.ok);
            let acme = t.acme_requests.map(|a| per_cert(a, t.ok)).unwrap_or(0.0);
            Verdict {
                target: target.into(),
                measured: format!(
                    "{gets:.2} S3 reads and {acme:.1} ACME requests per certificate ({} certs/s)",
                    rate(t.certs_per_s)
                ),
                met: Some(gets <= 2.0),
            }
        }
        None => missing(target),
    });
    if let Some(two) = inp
        .variants()
        .into_iter()
        .find(|t| t.workers == 2 && t.mode == Mode::Instant)
    {
        let one = inp.find(Tool::Certfleet, Mode::Instant, two.concurrency);
        v.push(Verdict {
            target: format!(
                "two workers against one (instant, C={}, same stack)",
                two.concurrency
            ),
            measured: match one {
                Some(o) => format!(
                    "{} vs {} certs/s ({:.2}×)",
                    rate(two.certs_per_s),
                    rate(o.certs_per_s),
                    two.certs_per_s / o.certs_per_s.max(1e-9)
                ),
                None => format!("{} certs/s (no one-worker run)", rate(two.certs_per_s)),
            },
            // A comparison, not a target.
            met: None,
        });
    }
    v.push(match cf_instant {
        Some(t) => Verdict {
            target: "instant: worker CPU ≤ 3 ms per certificate".into(),
            measured: format!("{:.2} ms", t.client_cpu_ms_per_cert()),
            met: Some(t.client_cpu_ms_per_cert() <= 3.0),
        },
        None => missing("instant: worker CPU ≤ 3 ms per certificate"),
    });
    v.push(match inp.find(Tool::Certfleet, Mode::Http01, c) {
        Some(t) => Verdict {
            target: "real http-01: ≥ 50 certificates/s, one worker".into(),
            measured: format!("{} certs/s (C={c}, n={})", rate(t.certs_per_s), t.ok),
            met: Some(t.certs_per_s >= 50.0),
        },
        None => missing("real http-01: ≥ 50 certificates/s, one worker"),
    });
    // Default delay: a measured run of ≥ 1,000 if there is one, else the
    // fastest rate extrapolated.
    let delay_runs: Vec<&Throughput> = inp
        .throughput()
        .filter(|t| t.tool == Tool::Certfleet && t.mode == Mode::Delay)
        .collect();
    let measured_1000 = delay_runs
        .iter()
        .filter(|t| t.n >= 1000 && t.failed == 0)
        .min_by(|a, b| a.elapsed_s.total_cmp(&b.elapsed_s));
    v.push(
        match (
            measured_1000,
            delay_runs
                .iter()
                .max_by(|a, b| a.certs_per_s.total_cmp(&b.certs_per_s)),
        ) {
            (Some(t), _) => {
                let at_main = delay_runs
                    .iter()
                    .find(|r| r.concurrency == c)
                    .map(|r| {
                        format!(
                            "; at C={c}: {} certs/s → {} for 1,000 (extrapolated)",
                            rate(r.certs_per_s),
                            duration(r.seconds_for_1000())
                        )
                    })
                    .unwrap_or_default();
                Verdict {
                    target: "default validation delay: 1,000 certificates ≤ 60 s, one worker"
                        .into(),
                    measured: format!(
                        "{:.0} s for {} (measured, C={}){at_main}",
                        t.elapsed_s, t.n, t.concurrency
                    ),
                    met: Some(t.elapsed_s * 1000.0 / t.n as f64 <= 60.0),
                }
            }
            (None, Some(t)) => Verdict {
                target: "default validation delay: 1,000 certificates ≤ 60 s, one worker".into(),
                measured: format!(
                    "{} (extrapolated from {} at C={})",
                    duration(t.seconds_for_1000()),
                    t.ok,
                    t.concurrency
                ),
                met: Some(t.seconds_for_1000() <= 60.0),
            },
            _ => missing("default validation delay: 1,000 certificates ≤ 60 s, one worker"),
        },
    );
    v.push(match inp.most_in_flight() {
        Some(t) if t.max_in_flight.unwrap_or(0) >= 256 => Verdict {
            target: "worker RSS ≤ 64 MiB with 256 orders in flight".into(),
            measured: format!(
                "peak {:.1} MiB ({} in flight, {} mode)",
                t.peak_rss_mib.unwrap_or(0.0),
                t.max_in_flight.unwrap_or(0),
                t.mode.as_str()
            ),
            met: Some(t.peak_rss_mib.unwrap_or(f64::INFINITY) <= 64.0),
        },
        Some(t) => Verdict {
            target: "worker RSS ≤ 64 MiB with 256 orders in flight".into(),
            measured: format!(
                "only {} in flight were seen (peak {:.1} MiB)",
                t.max_in_flight.unwrap_or(0),
                t.peak_rss_mib.unwrap_or(0.0)
            ),
            met: None,
        },
        None => missing("worker RSS ≤ 64 MiB with 256 orders in flight"),
    });
    v.push(match cf_instant {
        Some(t) => {
            let puts = per_cert(t.s3_requests.get("put").copied().unwrap_or(0.0), t.ok);
            let gets = per_cert(t.s3_requests.get("get").copied().unwrap_or(0.0), t.ok);
            Verdict {
                target: "≤ 2 S3 writes per certificate besides the pointer read".into(),
                measured: format!("{puts:.2} writes + {gets:.2} reads per certificate"),
                met: Some(puts <= 2.0),
            }
        }
        None => missing("≤ 2 S3 writes per certificate besides the pointer read"),
    });
    v.push(
        match inp.fanouts().into_iter().find(|f| f.subscribers >= 100) {
            Some(f) => Verdict {
                target: "fan-out p99 ≤ 500 ms with 100 subscribers".into(),
                measured: format!(
                    "p99 {:.0} ms (p50 {:.0}, max {:.0}; {} missing)",
                    f.from_stored_s.p99 * 1000.0,
                    f.from_stored_s.p50 * 1000.0,
                    f.from_stored_s.max * 1000.0,
                    f.missing
                ),
                met: Some(f.from_stored_s.p99 <= 0.5 && f.missing == 0),
            },
            None => missing("fan-out p99 ≤ 500 ms with 100 subscribers"),
        },
    );
    if let Some(b) = inp.bookkeeping() {
        for s in &b.scans {
            v.push(Verdict {
                target: format!("due-scan over {} indexed < 100 ms ({})", b.indexed, s.label),
                measured: format!("{:.1} ms ({} due)", s.median_ms, s.due),
                met: Some(s.median_ms < 100.0),
            });
        }
        v.push(Verdict {
            target: format!(
                "bulk publish of {} jobs with confirms ≥ 2,000 jobs/s",
                b.publish_jobs
            ),
            measured: format!("{:.0} jobs/s", b.publish_jobs_per_s),
            met: Some(b.publish_jobs_per_s >= 2000.0),
        });
    } else {
        v.push(missing("due-scan over 100,000 indexed < 100 ms"));
        v.push(missing(
            "bulk publish of 10,000 jobs with confirms ≥ 2,000 jobs/s",
        ));
    }
    v.push(match inp.dashboard() {
        Some(d) => Verdict {
            target: format!(
                "dashboard with {} certificates: first view < 1 s",
                d.certificates
            ),
            measured: format!(
                "{:.0} ms median of {} (headless chromium; {} servers' reports each)",
                d.median_ms,
                d.runs_ms.len(),
                d.servers
            ),
            met: Some(d.median_ms < 1000.0),
        },
        None => missing("dashboard with 1,000 certificates: first view < 1 s"),
    });
    v
}

/// certfleet's instant-mode rate at concurrency `c` against the ceiling's
/// at the same concurrency: met at `share` or more.
/// The machine's CPU per certificate in a run (ms, every process) and the
/// rate its cores would carry at that cost, all of them busy.
fn cpu_cap(inp: &Inputs, t: &Throughput) -> Option<(f64, f64)> {
    let busy = t.cpu_s.get("machine_busy").copied()?;
    let ms = 1000.0 * per_cert(busy, t.ok);
    (ms > 0.0).then(|| (ms, inp.cores() * 1000.0 / ms))
}

fn of_ceiling(inp: &Inputs, c: u32, share: f64, target: String) -> Verdict {
    match (
        inp.find(Tool::Certfleet, Mode::Instant, c),
        inp.find(Tool::Ceiling, Mode::Instant, c),
    ) {
        (Some(t), Some(ce)) if ce.certs_per_s > 0.0 => {
            // What limits it: the CPU the whole path costs (CA, S3,
            // broker, Redis, worker) against what the cores carry.
            let cap = match (cpu_cap(inp, t), cpu_cap(inp, ce)) {
                (Some((ms, most)), Some((ce_ms, _))) => format!(
                    "; CPU per certificate {ms:.1} ms machine-wide (ceiling {ce_ms:.1}): {:.0} cores carry at most {}/s, {share_pct:.0} % of the ceiling is {}/s",
                    inp.cores(),
                    rate(most),
                    rate(share * ce.certs_per_s),
                    share_pct = 100.0 * share,
                ),
                _ => String::new(),
            };
            Verdict {
                target,
                measured: format!(
                    "{:.0} % ({} of {} certs/s){cap}",
                    100.0 * t.certs_per_s / ce.certs_per_s,
                    rate(t.certs_per_s),
                    rate(ce.certs_per_s)
                ),
                met: Some(t.certs_per_s >= share * ce.certs_per_s),
            }
        }
        _ => missing(&target),
    }
}

fn missing(target: &str) -> Verdict {
    Verdict {
        target: target.into(),
        measured: "—".into(),
        met: None,
    }
}
