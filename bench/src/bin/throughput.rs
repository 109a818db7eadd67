//! certfleet end to end: one release worker, N certificates at concurrency
//! C against the private Pebble (see `certfleet_bench::throughput`).

use std::path::PathBuf;

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
    certfleet_bench::finish_throughput(args.out.as_deref(), result)
}
