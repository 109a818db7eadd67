//! `bench-step STEP ...`: one measurement of `make bench`, its result as
//! JSON in `--out` (stdout without it), a summary line on stderr. The steps
//! are the modules of `certfleet_bench`; `bench/run.sh` runs them side by
//! side and `bench-report` turns their files into the report.

use std::path::PathBuf;

use certfleet_bench::bookkeeping::{self, INDEXED, JOBS};
use certfleet_bench::results::Record;
use certfleet_bench::stack::Stack;
use certfleet_bench::{ceiling, fanout, lego, stall, throughput};
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "bench-step")]
struct Cli {
    /// Result file (stdout without it).
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    #[command(subcommand)]
    step: Step,
}

#[derive(Debug, Subcommand)]
enum Step {
    /// certfleet: one worker process against the private Pebble.
    Throughput(throughput::Options),
    /// The ceiling: instant-acme alone against the private Pebble.
    Ceiling(ceiling::Options),
    /// lego, sequential or in parallel, against the private Pebble.
    Lego(lego::Options),
    /// Fan-out to M `certfleet watch` subscribers.
    Fanout(fanout::Options),
    /// The storage ceiling: the S3 server alone with the worker's requests.
    Storage(StorageArgs),
    /// Due-scan over a large expiry index and bulk submission with confirms.
    Bookkeeping(BookkeepingArgs),
    /// `certfleet dashboard`'s first view in a browser.
    Dashboard(DashboardArgs),
}

#[derive(Debug, Args)]
struct DashboardArgs {
    /// Certificates in the fleet shown.
    #[arg(long, default_value_t = certfleet_bench::dashboard::CERTIFICATES)]
    certificates: usize,
    /// Label (prefixes).
    #[arg(long)]
    label: String,
}

#[derive(Debug, Args)]
struct StorageArgs {
    /// Certificates' worth of requests at once.
    #[arg(long, default_value_t = 64)]
    concurrency: u32,
    /// Certificates' worth of requests.
    #[arg(long, default_value_t = 600)]
    n: usize,
    /// Label (S3 prefix).
    #[arg(long)]
    label: String,
}

#[derive(Debug, Args)]
struct BookkeepingArgs {
    /// Certificates in the index.
    #[arg(long, default_value_t = INDEXED)]
    indexed: usize,
    /// Jobs per bulk submission.
    #[arg(long, default_value_t = JOBS)]
    jobs: usize,
    /// Label (vhost, prefixes).
    #[arg(long)]
    label: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match run().await {
        Err(e) if e.downcast_ref::<stall::Stalled>().is_some() => {
            // bench/run.sh restarts the CA and runs the step again.
            eprintln!("{e:#}");
            std::process::exit(stall::EXIT_STALLED);
        }
        other => other,
    }
}

async fn run() -> anyhow::Result<()> {
    certfleet_bench::init();
    let cli = Cli::parse();
    let stack = Stack::from_env();
    let out = cli.out.as_deref();
    let record = match cli.step {
        Step::Throughput(o) => {
            return certfleet_bench::finish_throughput(out, throughput::run(&stack, &o).await?);
        }
        Step::Ceiling(o) => {
            return certfleet_bench::finish_throughput(out, ceiling::run(&stack, &o).await?);
        }
        Step::Lego(o) => {
            return certfleet_bench::finish_throughput(out, lego::run(&stack, &o).await?);
        }
        Step::Fanout(o) => {
            let r = fanout::run(&stack, &o).await?;
            eprintln!(
                "fan-out to {} subscribers, {} certificates: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms, {} missing",
                r.subscribers,
                r.certificates,
                r.from_stored_s.p50 * 1000.0,
                r.from_stored_s.p99 * 1000.0,
                r.from_stored_s.max * 1000.0,
                r.missing
            );
            Record::Fanout(r)
        }
        Step::Storage(a) => {
            let r = certfleet_bench::storage::run(&stack, &a.label, a.concurrency, a.n).await?;
            eprintln!(
                "S3 alone c={}: {} certificates' requests ({} failed), {:.0} certs/s, S3 server CPU {:.1} ms per request",
                r.concurrency,
                r.certificates,
                r.failed,
                r.certs_per_s,
                1000.0 * r.cpu_s.get("s3").copied().unwrap_or(0.0)
                    / (r.certificates.max(1) as f64 * f64::from(r.requests_per_certificate))
            );
            Record::Storage(r)
        }
        Step::Bookkeeping(a) => {
            let r = bookkeeping::run(&stack, &a.label, a.indexed, a.jobs).await?;
            for s in &r.scans {
                eprintln!("{}: {} due, median {:.1} ms", s.label, s.due, s.median_ms);
            }
            eprintln!(
                "bulk publish of {} jobs: {:.0} jobs/s",
                r.publish_jobs, r.publish_jobs_per_s
            );
            Record::Bookkeeping(r)
        }
        Step::Dashboard(a) => {
            let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .map(std::path::Path::to_path_buf)
                .unwrap_or_default();
            let r = certfleet_bench::dashboard::run(
                &stack,
                &a.label,
                a.certificates,
                &certfleet_bench::worker::default_bin_dir(),
                &repo,
            )
            .await?;
            eprintln!(
                "dashboard with {} certificates: first view median {:.0} ms",
                r.certificates, r.median_ms
            );
            Record::Dashboard(r)
        }
    };
    certfleet_bench::write_json(out, &record)
}
