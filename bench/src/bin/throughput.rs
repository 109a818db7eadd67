//! certfleet end to end: one release worker, N certificates at concurrency
//! C against the private Pebble (see `certfleet_bench::throughput`).

use std::path::PathBuf;

use certfleet_bench::results::Record;
use certfleet_bench::stack::{Ca, Stack};
use certfleet_bench::throughput::{self, Options};
use certfleet_bench::worker::default_bin_dir;
use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    ca: Ca,
    /// Orders in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: u32,
    /// Certificates.
    #[arg(long, default_value_t = 200)]
    n: usize,
    /// Label of the names (lego reuses it for the same names).
    #[arg(long)]
    label: String,
    /// `certfleet-worker` binary.
    #[arg(long)]
    worker_bin: Option<PathBuf>,
    /// Worker log file.
    #[arg(long, default_value = "worker.log")]
    log: PathBuf,
    /// Profile the worker with `perf record` into this file.
    #[arg(long)]
    perf: Option<PathBuf>,
    /// Result file (stdout without it).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    certfleet_bench::init();
    let args = Args::parse();
    let opts = Options {
        ca: args.ca,
        concurrency: args.concurrency,
        n: args.n,
        label: args.label,
        worker_bin: args
            .worker_bin
            .unwrap_or_else(|| default_bin_dir().join("certfleet-worker")),
        log: args.log,
        perf: args.perf,
    };
    let result = throughput::run(&Stack::from_env(), &opts).await?;
    eprintln!(
        "certfleet {} c={} n={}: {} ok, {} failed, {:.1} certs/s, p50 {:.3} s, p99 {:.3} s, worker CPU {:.2} ms/cert",
        result.mode.as_str(),
        result.concurrency,
        result.n,
        result.ok,
        result.failed,
        result.certs_per_s,
        result.latency_s.p50,
        result.latency_s.p99,
        result.client_cpu_ms_per_cert()
    );
    let failed = result.failed;
    certfleet_bench::write_json(args.out.as_deref(), &Record::Throughput(result))?;
    // A run with failures exits non-zero (its result is written), so run.sh
    // can retry it on a restarted Pebble: Pebble 2.4 sometimes deadlocks
    // under load (see bench/README.md).
    anyhow::ensure!(
        failed == 0,
        "{failed} certificates failed or never finished"
    );
    Ok(())
}
