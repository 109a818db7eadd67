//! lego, one process per certificate, sequentially or P at once (see
//! `certfleet_bench::lego`).

use std::path::PathBuf;

use certfleet_bench::lego::{self, Options};
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
    certfleet_bench::finish_throughput(args.out.as_deref(), r)
}
