//! Due-scan over a large expiry index and bulk publishing with confirms
//! (see `certfleet_bench::bookkeeping`).

use std::path::PathBuf;

use certfleet_bench::bookkeeping::{self, INDEXED, JOBS};
use certfleet_bench::results::Record;
use certfleet_bench::stack::Stack;
use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// Certificates in the index.
    #[arg(long, default_value_t = INDEXED)]
    indexed: usize,
    /// Jobs per bulk publish.
    #[arg(long, default_value_t = JOBS)]
    jobs: usize,
    /// Label (vhost, prefixes).
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
    let r = bookkeeping::run(&Stack::from_env(), &args.label, args.indexed, args.jobs).await?;
    for s in &r.scans {
        eprintln!("{}: {} due, median {:.1} ms", s.label, s.due, s.median_ms);
    }
    eprintln!(
        "bulk publish of {} jobs: {:.0} jobs/s",
        r.publish_jobs, r.publish_jobs_per_s
    );
    certfleet_bench::write_json(args.out.as_deref(), &Record::Bookkeeping(r))
}
