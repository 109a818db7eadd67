//! The ceiling: instant-acme alone against the private Pebble (see
//! `certfleet_bench::ceiling`).

use std::path::PathBuf;

use certfleet_bench::ceiling::{self, Options};
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
    certfleet_bench::finish_throughput(args.out.as_deref(), r)
}
