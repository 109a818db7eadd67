//! Renders `report.md` and `chart.png` from a results directory (see
//! `certfleet_bench::report`), and copies them to `bench/results/latest.*`
//! when asked.

use std::path::PathBuf;

use certfleet_bench::report::{self, Inputs};
use certfleet_bench::results::{self, Record};
use certfleet_bench::{chart, profile};
use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// The results directory of one run.
    dir: PathBuf,
    /// Concurrency of the main certfleet runs.
    #[arg(long, default_value_t = 64)]
    concurrency: u32,
    /// Also copy the report and chart to these paths (`latest.md`,
    /// `latest.png`).
    #[arg(long)]
    latest: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    certfleet_bench::init();
    let args = Args::parse();
    let records = results::load_dir(&args.dir)?;
    let settings = std::fs::read_to_string(args.dir.join("settings.txt"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let profile = std::fs::read_to_string(args.dir.join("perf-worker.txt"))
        .ok()
        .map(|t| profile::fold(&t))
        .filter(|b| b.total > 0);
    let runs: Vec<_> = records
        .iter()
        .filter_map(|r| match r {
            Record::Throughput(t) => Some(t.clone()),
            _ => None,
        })
        .collect();
    let chart_path = args.dir.join("chart.png");
    let chart_text = chart::draw(&runs, &chart_path)?;
    let inputs = Inputs {
        records,
        settings,
        profile,
        main_concurrency: args.concurrency,
        chart_text,
        run: args
            .dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    let verdicts = report::verdicts(&inputs);
    let md = report::render(&inputs, &verdicts);
    let report_path = args.dir.join("report.md");
    std::fs::write(&report_path, &md)?;
    if let Some(latest) = &args.latest {
        // latest.md links latest.png.
        std::fs::write(
            latest.with_extension("md"),
            md.replace("](chart.png)", "](latest.png)"),
        )?;
        std::fs::copy(&chart_path, latest.with_extension("png"))?;
    }
    println!("{}", report_path.display());
    Ok(())
}
