//! The ceiling: instant-acme alone against the private Pebble (see
//! `certfleet_bench::ceiling`).

use std::path::PathBuf;

use certfleet_bench::ceiling::{self, Options};
use certfleet_bench::results::Record;
use certfleet_bench::stack::{Ca, Stack};
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
    /// Label of the names.
    #[arg(long)]
    label: String,
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
    };
    let r = ceiling::run(&Stack::from_env(), &opts).await?;
    eprintln!(
        "ceiling {} c={} n={}: {} ok, {} failed, {:.1} certs/s, p50 {:.3} s, p99 {:.3} s, client CPU {:.2} ms/cert",
        r.mode.as_str(),
        r.concurrency,
        r.n,
        r.ok,
        r.failed,
        r.certs_per_s,
        r.latency_s.p50,
        r.latency_s.p99,
        r.client_cpu_ms_per_cert()
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
