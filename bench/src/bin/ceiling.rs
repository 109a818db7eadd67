//! The ceiling: instant-acme alone against the private Pebble (see
//! `certfleet_bench::ceiling`).

use std::path::PathBuf;

use certfleet_bench::ceiling::{self, Options};
use certfleet_bench::stack::Stack;
use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    opts: Options,
    /// Result file (stdout without it).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    certfleet_bench::init();
    let args = Args::parse();
    let r = ceiling::run(&Stack::from_env(), &args.opts).await?;
    certfleet_bench::finish_throughput(args.out.as_deref(), r)
}
