//! Fan-out to M `certfleet watch` subscribers (see
//! `certfleet_bench::fanout`).

use std::path::PathBuf;

use certfleet_bench::fanout::{self, Options};
use certfleet_bench::results::Record;
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
    let r = fanout::run(&Stack::from_env(), &args.opts).await?;
    eprintln!(
        "fan-out to {} subscribers, {} certificates: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms, {} missing",
        r.subscribers,
        r.certificates,
        r.from_stored_s.p50 * 1000.0,
        r.from_stored_s.p99 * 1000.0,
        r.from_stored_s.max * 1000.0,
        r.missing
    );
    certfleet_bench::write_json(args.out.as_deref(), &Record::Fanout(r))
}
