//! lego, one process per certificate, sequentially or P at once (see
//! `certfleet_bench::lego`).

use std::path::PathBuf;

use certfleet_bench::lego::{self, Options};
use certfleet_bench::results::Record;
use certfleet_bench::stack::{Ca, Stack};
use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    ca: Ca,
    /// lego processes at once.
    #[arg(long, default_value_t = 1)]
    parallel: u32,
    /// Certificates (the first N names of the label).
    #[arg(long, default_value_t = 200)]
    n: usize,
    /// Certificates the comparison is about (extrapolated when larger than N).
    #[arg(long)]
    full_n: Option<usize>,
    /// Label of the names: certfleet's, for the same names.
    #[arg(long)]
    label: String,
    /// Working directory (account, webroot, logs).
    #[arg(long)]
    dir: PathBuf,
    /// The lego binary.
    #[arg(long, default_value = "lego")]
    lego: PathBuf,
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
        parallel: args.parallel,
        n: args.n,
        full_n: args.full_n.unwrap_or(args.n),
        label: args.label,
        dir: args.dir,
        lego: args.lego,
    };
    let r = lego::run(&Stack::from_env(), &opts).await?;
    eprintln!(
        "lego {} x{} n={}: {} ok, {} failed, {:.2} certs/s, p50 {:.3} s, p99 {:.3} s, lego CPU {:.1} ms/cert {}",
        r.mode.as_str(),
        r.concurrency,
        r.n,
        r.ok,
        r.failed,
        r.certs_per_s,
        r.latency_s.p50,
        r.latency_s.p99,
        r.client_cpu_ms_per_cert(),
        r.note
    );
    let failed = r.failed;
    certfleet_bench::write_json(args.out.as_deref(), &Record::Throughput(r))?;
    // A run with failures exits non-zero (its result is written), so run.sh
    // can retry it on a restarted Pebble: Pebble 2.4 sometimes deadlocks
    // under load (see bench/README.md).
    anyhow::ensure!(
        failed == 0,
        "{failed} certificates failed or never finished"
    );
    Ok(())
}
