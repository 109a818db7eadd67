//! certfleet end to end: one release worker, N certificates at concurrency
//! C against the private Pebble (see `certfleet_bench::throughput`).

use std::path::PathBuf;

use certfleet_bench::stack::Stack;
use certfleet_bench::throughput::{self, Options};
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
    let r = throughput::run(&Stack::from_env(), &args.opts).await?;
    certfleet_bench::finish_throughput(args.out.as_deref(), r)
}
