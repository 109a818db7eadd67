//! Fan-out to M `certfleet watch` subscribers (see
//! `certfleet_bench::fanout`).

use std::path::PathBuf;

use certfleet_bench::fanout::{self, Options};
use certfleet_bench::results::Record;
use certfleet_bench::stack::{Ca, Stack};
use certfleet_bench::worker::default_bin_dir;
use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    ca: Ca,
    /// Subscribers.
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    /// Certificates, one after another.
    #[arg(long, default_value_t = 10)]
    certificates: usize,
    /// Label (names, vhost, prefixes).
    #[arg(long)]
    label: String,
    /// `certfleet-worker` binary.
    #[arg(long)]
    worker_bin: Option<PathBuf>,
    /// Working directory (subscriber directories, worker log).
    #[arg(long)]
    dir: PathBuf,
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
        subscribers: args.subscribers,
        certificates: args.certificates,
        label: args.label,
        worker_bin: args
            .worker_bin
            .unwrap_or_else(|| default_bin_dir().join("certfleet-worker")),
        dir: args.dir,
    };
    let r = fanout::run(&Stack::from_env(), &opts).await?;
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
