//! Renewal bookkeeping at scale, against the shared Redis and RabbitMQ.
//!
//! - The expiry index is filled with [`INDEXED`] certificates
//!   (`State::index_replace`), renewal times spread evenly over the next 60
//!   days, as a fleet renewing every 60 days looks.
//! - `schedule::due_scan` (dry run: index read, names parsed, nothing
//!   published) is timed for a daily scan (what is due within 24 h, about
//!   1/60 of the fleet) and for the worst case (everything due).
//! - `certfleet exporter`'s refresh (`exporter::CertMetrics::refresh`) is
//!   timed over the same index with a validity record per name: fleet
//!   summaries only, and with a series per certificate.
//! - [`JOBS`] issue jobs are published with confirms
//!   (`Submitter::submit`, encoding included) to a work queue declared as the workers
//!   declare it (quorum, persistent messages).

use std::time::Duration;

use certfleet_common::state::State;
use certfleet_common::{CertName, ChallengeType, Store, schedule, topology};
use lapin::options::QueuePurgeOptions;
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::jobs::{Jobs, issue_envelope};
use crate::results::{Bookkeeping, Scan};
use crate::stack::{Slice, Stack};
use crate::stats;

/// Certificates in the index.
pub const INDEXED: usize = 100_000;
/// Jobs per bulk publish.
pub const JOBS: usize = 10_000;
/// Timed runs per measurement (after one untimed).
const RUNS: usize = 5;
/// Bulk publishes.
const PUBLISH_RUNS: usize = 3;

/// Runs it in a slice labelled `label`.
///
/// # Errors
/// Redis or the broker unavailable.
pub async fn run(
    stack: &Stack,
    label: &str,
    indexed: usize,
    jobs: usize,
) -> anyhow::Result<Bookkeeping> {
    let slice = Slice::create(stack, label, None).await?;
    let result = run_in(&slice, indexed, jobs).await;
    slice.cleanup().await;
    result
}

async fn run_in(slice: &Slice, indexed: usize, jobs: usize) -> anyhow::Result<Bookkeeping> {
    let cfg = slice.config()?;
    let state = State::from_config(&cfg, 4)?;
    let store = Store::from_config(&cfg).await;

    let now = OffsetDateTime::now_utc().unix_timestamp();
    let span = 60 * 86_400_i64;
    let entries: Vec<(CertName, i64, ChallengeType)> = (0..indexed)
        .map(|i| {
            let name = CertName::parse(&format!("c{i:06}.bulk.{}", crate::names::SUFFIX))?;
            let at = now + 60 + span * i as i64 / indexed.max(1) as i64;
            Ok((name, at, ChallengeType::Http01))
        })
        .collect::<anyhow::Result<_>>()?;
    let t = Instant::now();
    state.index_replace(&entries).await?;
    let fill_s = t.elapsed().as_secs_f64();
    let validity: Vec<_> = entries
        .iter()
        .map(|(n, at, _)| {
            let at = OffsetDateTime::from_unix_timestamp(*at).unwrap_or(OffsetDateTime::UNIX_EPOCH);
            (
                n.clone(),
                at - time::Duration::days(60),
                at + time::Duration::days(30),
            )
        })
        .collect();
    state.validity_put_many(&validity, true).await?;
    let exporter = exporter_refreshes(&state).await?;

    let jobs_conn = Jobs::connect(&cfg).await?;
    let channel = jobs_conn.channel().await?;
    let mut scans = Vec::new();
    for (label, within) in [
        ("daily scan: due within 24 h", time::Duration::days(1)),
        ("worst case: all due", time::Duration::days(61)),
    ] {
        let mut runs_ms = Vec::new();
        let mut due = 0;
        for i in 0..=RUNS {
            let t = Instant::now();
            let report =
                schedule::due_scan(&state, &store, jobs_conn.submitter(), within, true).await?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            due = report.entries.len();
            if i > 0 {
                runs_ms.push(ms);
            }
        }
        scans.push(Scan {
            label: label.to_string(),
            due,
            median_ms: stats::median(&runs_ms),
            runs_ms,
        });
    }

    // Bulk publish into a work queue declared like the workers do.
    topology::declare_work_queue(
        &channel,
        topology::WORK_QUEUE,
        &[topology::WORK_BINDING.to_string()],
    )
    .await?;
    let envelopes = (0..jobs)
        .map(|i| {
            issue_envelope(
                &format!("j{i:05}.bulk.{}", crate::names::SUFFIX),
                ChallengeType::Http01,
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut publish_runs_s = Vec::new();
    for _ in 0..PUBLISH_RUNS {
        let t = Instant::now();
        let refused = jobs_conn.publish_all(&envelopes).await?;
        let s = t.elapsed().as_secs_f64();
        anyhow::ensure!(refused == 0, "{refused} of {jobs} jobs were not confirmed");
        publish_runs_s.push(s);
        channel
            .queue_purge(topology::WORK_QUEUE.into(), QueuePurgeOptions::default())
            .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let median_s = stats::median(&publish_runs_s);
    Ok(Bookkeeping {
        exporter,
        indexed,
        fill_s,
        scans,
        publish_jobs: jobs,
        publish_runs_s,
        publish_jobs_per_s: if median_s > 0.0 {
            jobs as f64 / median_s
        } else {
            0.0
        },
    })
}

/// Times the exporter's refresh, summaries only and per certificate;
/// `due` of each is the number of samples it then exposes.
async fn exporter_refreshes(state: &State) -> anyhow::Result<Vec<Scan>> {
    use certfleet_common::exporter::CertMetrics;
    let mut out = Vec::new();
    for (label, per_name) in [
        ("summaries only", false),
        ("a series per certificate", true),
    ] {
        let reg = prometheus::Registry::new();
        let metrics = CertMetrics::register(&reg)?;
        let mut runs_ms = Vec::new();
        for i in 0..=RUNS {
            let t = Instant::now();
            metrics
                .refresh(
                    state,
                    None,
                    OffsetDateTime::now_utc(),
                    time::Duration::hours(1),
                    per_name,
                )
                .await?;
            if i > 0 {
                runs_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        let samples = metrics
            .encode(&reg)?
            .lines()
            .filter(|l| !l.starts_with('#'))
            .count();
        out.push(Scan {
            label: label.to_string(),
            due: samples,
            median_ms: stats::median(&runs_ms),
            runs_ms,
        });
    }
    Ok(out)
}
