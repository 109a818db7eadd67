//! certfleet benchmarks: `make bench` runs `bench/run.sh`, which brings up
//! private Pebble instances beside the shared stack and runs the steps
//! below, each a binary that writes one JSON result into
//! `bench/results/<timestamp>/`; `report` turns them into `report.md` and
//! `chart.png`.
//!
//! # Layout
//! - [`stack`] — where the shared stack and the bench's private CA listen,
//!   and the bench's own slice of the shared services (vhost, Redis prefix,
//!   S3 prefix), so a run never touches what other tests use.
//! - [`http`] — a small HTTP client for management APIs and `/metrics`.
//! - [`procfs`] — CPU seconds and memory of processes, from `/proc`.
//! - [`stats`] — percentiles.
//! - [`prom`] — reading the worker's Prometheus text.
//! - [`worker`] — a release `certfleet-worker` process.
//! - [`jobs`] — publishing issue jobs and following events.
//! - [`names`] — the certificate names of a run.
//! - [`results`] — the JSON every step writes and the report reads.
//! - The steps — [`throughput`] (certfleet end to end), [`ceiling`]
//!   (instant-acme alone), [`storage`] (the S3 server alone), [`lego`],
//!   [`fanout`], [`bookkeeping`].
//! - [`report`], [`chart`] and [`profile`] — `report.md`, `chart.png`, and
//!   the worker's CPU profile folded into activities.

pub mod bookkeeping;
pub mod ceiling;
pub mod chart;
pub mod dashboard;
pub mod fanout;
pub mod jobs;
pub mod lego;
pub mod names;
pub mod pool;
pub mod procfs;
pub mod profile;
pub mod prom;
pub mod report;
pub mod results;
pub mod stack;
pub mod stall;
pub mod stats;
pub mod storage;
pub mod throughput;
pub mod worker;

/// Installs the process-wide rustls provider (aws-lc-rs, the workspace's
/// only one) and a log subscriber (`RUST_LOG`, default warnings).
pub fn init() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // lapin logs a refused passive declare (a probe) as an error.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,lapin=off")),
        )
        .with_writer(std::io::stderr)
        .try_init();
}

/// The end of a throughput step: prints its summary line, writes its record,
/// and fails when any certificate failed. The record is written either way,
/// and the non-zero exit lets run.sh retry the step on a restarted Pebble
/// (Pebble 2.4 sometimes deadlocks under load; see bench/README.md).
pub fn finish_throughput(
    out: Option<&std::path::Path>,
    r: results::Throughput,
) -> anyhow::Result<()> {
    eprintln!("{}", r.summary_line());
    let failed = r.failed;
    write_json(out, &results::Record::Throughput(r))?;
    anyhow::ensure!(
        failed == 0,
        "{failed} certificates failed or never finished"
    );
    Ok(())
}

/// Writes `value` as pretty JSON to `path`, or to stdout without one.
///
/// # Errors
/// The file cannot be written.
pub fn write_json<T: serde::Serialize>(
    path: Option<&std::path::Path>,
    value: &T,
) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    match path {
        Some(p) => {
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(p, text + "\n")?;
        }
        None => println!("{text}"),
    }
    Ok(())
}
