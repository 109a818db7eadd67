//! The storage ceiling: the S3 server alone with the worker's requests for
//! new certificates (see `certfleet_bench::storage`).

use std::path::PathBuf;

use certfleet_bench::results::Record;
use certfleet_bench::stack::Stack;
use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// Certificates' worth of requests at once.
    #[arg(long, default_value_t = 64)]
    concurrency: u32,
    /// Certificates' worth of requests.
    #[arg(long, default_value_t = 600)]
    n: usize,
    /// Label (S3 prefix).
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
    let r =
        certfleet_bench::storage::run(&Stack::from_env(), &args.label, args.concurrency, args.n)
            .await?;
    eprintln!(
        "S3 alone c={}: {} certificates' requests ({} failed), {:.0} certs/s, moto CPU {:.1} ms per request",
        r.concurrency,
        r.certificates,
        r.failed,
        r.certs_per_s,
        1000.0 * r.cpu_s.get("s3").copied().unwrap_or(0.0)
            / (r.certificates.max(1) as f64 * f64::from(r.requests_per_certificate))
    );
    certfleet_bench::write_json(args.out.as_deref(), &Record::Storage(r))
}
