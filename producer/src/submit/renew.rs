//! `certfleet renew NAME...` (dedup through the names' pending markers)
//! and `certfleet renew --due` (the due-scan of
//! [`certfleet_common::schedule`]).

use std::collections::HashMap;
use std::time::Duration;

use certfleet_common::error::chain;
use certfleet_common::schedule::{self, ScanOutcome};
use certfleet_common::state::State;
use certfleet_common::storage::StorageError;
use certfleet_common::submit::Outcome;
use certfleet_common::{CertName, ChallengeType, Config, Store};
use clap::Args;
use futures_util::stream::{self, StreamExt};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::error::SubmitError;
use super::publish::{REASON_CLI, STATUS_CONCURRENCY, open_submitter};
use super::wait::{DEFAULT_WAIT_TIMEOUT, EventWaiter};
use crate::args::duration;
use crate::broker::close_broker;
use crate::output::out;

/// `certfleet renew`.
#[derive(Debug, Clone, Args)]
pub struct RenewArgs {
    /// Names of stored certificates.
    #[arg(
        value_name = "NAME",
        required_unless_present = "due",
        conflicts_with = "due"
    )]
    pub names: Vec<String>,
    /// Renew every certificate whose renewal time has come.
    #[arg(long)]
    pub due: bool,
    /// With --due: also those due within this long from now.
    #[arg(long, value_name = "DURATION", requires = "due", value_parser = duration)]
    pub within: Option<Duration>,
    /// With --due: only print what is due, publish nothing.
    #[arg(long, requires = "due")]
    pub dry_run: bool,
    /// Wait until every renewed certificate is stored or its job failed
    /// (several: a progress bar on a terminal, then one summary line).
    #[arg(long, conflicts_with = "dry_run")]
    pub wait: bool,
    /// How long --wait waits for all of them.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_WAIT_TIMEOUT, value_parser = duration)]
    pub timeout: Duration,
}

/// `certfleet renew NAME...` and `certfleet renew --due`.
///
/// # Errors
/// Unknown names (before publishing), storage, Redis or broker errors, jobs
/// not accepted, and with `--wait` failed jobs, a timeout or an
/// interruption.
pub(crate) async fn renew(
    config: &Config,
    args: &RenewArgs,
    shutdown: CancellationToken,
) -> Result<(), SubmitError> {
    if args.due {
        return renew_due(config, args, shutdown).await;
    }
    let mut names: Vec<CertName> = Vec::new();
    for n in &args.names {
        let name = CertName::parse(n).map_err(SubmitError::Name)?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if names.is_empty() {
        return Err(SubmitError::Usage("no certificate names given".into()));
    }
    let store = Store::from_config(config).await;
    let pointers: Vec<(CertName, Result<_, StorageError>)> = stream::iter(names.iter().cloned())
        .map(|name| {
            let store = &store;
            async move {
                let r = store.pointer(&name).await;
                (name, r)
            }
        })
        .buffered(16)
        .collect()
        .await;
    let mut challenges: Vec<(CertName, ChallengeType)> = Vec::new();
    let mut unknown: Vec<CertName> = Vec::new();
    for (name, result) in pointers {
        match result {
            Ok(Some((pointer, _))) => challenges.push((name, pointer.challenge)),
            Ok(None) => unknown.push(name),
            Err(source) => return Err(SubmitError::Storage { name, source }),
        }
    }
    if !unknown.is_empty() {
        return Err(SubmitError::UnknownNames(unknown));
    }
    let state = State::from_config(config, STATUS_CONCURRENCY).map_err(SubmitError::State)?;
    let (conn, submitter) = open_submitter(config, Some(state)).await?;
    let result = async {
        let waiter = if args.wait {
            let refs: Vec<&CertName> = names.iter().collect();
            Some(EventWaiter::open(&conn, &refs).await?)
        } else {
            None
        };
        let submitted = schedule::submit_renewals(
            &submitter,
            challenges.iter().cloned(),
            REASON_CLI,
            "queued (certfleet renew)",
        )
        .await?;
        let mut wait_for: HashMap<Uuid, CertName> = HashMap::new();
        let (mut attempted, mut failed) = (0, 0);
        for (envelope, outcome) in &submitted {
            let name = &envelope.job.name;
            match outcome {
                Outcome::Queued => {
                    attempted += 1;
                    // Waiting for several, the summary replaces the ids.
                    if !(args.wait && names.len() > 1) {
                        out(format_args!("{} {name}", envelope.job_id));
                    }
                    wait_for.insert(envelope.job_id, name.clone());
                }
                Outcome::NotAccepted(e) => {
                    attempted += 1;
                    failed += 1;
                    eprintln!("{name}: not accepted: {}", chain(e));
                }
                Outcome::AlreadyQueued { holder: Some(id) } => {
                    eprintln!("{name}: already queued as job {id}");
                    if let Ok(id) = id.parse::<Uuid>() {
                        wait_for.insert(id, name.clone());
                    }
                }
                // Released between the claim and the read: the job just ended.
                Outcome::AlreadyQueued { holder: None } => {
                    eprintln!("{name}: already queued (that job just finished)");
                }
            }
        }
        let wait_result = match waiter {
            Some(waiter) if !wait_for.is_empty() => {
                waiter.wait(wait_for, args.timeout, shutdown).await
            }
            _ => Ok(()),
        };
        if failed > 0 {
            return Err(SubmitError::Incomplete {
                failed,
                total: attempted,
                what: "renew jobs were not accepted by the broker",
            });
        }
        wait_result
    }
    .await;
    close_broker(&conn).await;
    result
}

fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// `certfleet renew --due [--within D] [--dry-run | --wait]`. With
/// `--wait`, the event subscription is opened before the scan publishes
/// (bound to every certificate event: which names are due is known only
/// after the scan), and the jobs it queued, or found queued, are waited
/// for.
async fn renew_due(
    config: &Config,
    args: &RenewArgs,
    shutdown: CancellationToken,
) -> Result<(), SubmitError> {
    let within = match args.within {
        Some(w) => time::Duration::try_from(w)
            .map_err(|_| SubmitError::Usage("--within is too long".into()))?,
        None => time::Duration::ZERO,
    };
    let state = State::from_config(config, 8).map_err(SubmitError::State)?;
    let store = Store::from_config(config).await;
    let mut waited = Ok(());
    let report = if args.dry_run {
        schedule::due_list(&state, &store, within).await?
    } else {
        let (conn, submitter) = open_submitter(config, Some(state.clone())).await?;
        let waiter = if args.wait {
            match EventWaiter::open_all(&conn).await {
                Ok(w) => Some(w),
                Err(e) => {
                    close_broker(&conn).await;
                    return Err(e);
                }
            }
        } else {
            None
        };
        let r = schedule::due_scan(&state, &store, &submitter, within, false).await;
        if let (Some(waiter), Ok(report)) = (waiter, &r) {
            let jobs: HashMap<Uuid, CertName> = report
                .entries
                .iter()
                .filter_map(|e| match &e.outcome {
                    ScanOutcome::Queued { job_id } => Some((*job_id, e.name.clone())),
                    ScanOutcome::AlreadyQueued { job_id: Some(id) } => {
                        id.parse().ok().map(|id| (id, e.name.clone()))
                    }
                    _ => None,
                })
                .collect();
            if !jobs.is_empty() {
                waited = waiter.wait(jobs, args.timeout, shutdown).await;
            }
        }
        close_broker(&conn).await;
        r?
    };
    eprintln!("{report}");
    if args.wait {
        if report.failed() > 0 {
            return Err(SubmitError::Incomplete {
                failed: report.failed(),
                total: report.entries.len(),
                what: "renew jobs were not accepted by the broker",
            });
        }
        return waited;
    }
    for e in &report.entries {
        let what = match &e.outcome {
            ScanOutcome::Due => e.challenge.to_string(),
            ScanOutcome::Queued { job_id } => job_id.to_string(),
            ScanOutcome::AlreadyQueued { job_id: Some(id) } => format!("already queued (job {id})"),
            ScanOutcome::AlreadyQueued { job_id: None } => "already queued".into(),
            ScanOutcome::Failed { reason } => format!("failed: {reason}"),
        };
        out(format_args!("{} {} {what}", e.name, rfc3339(e.renew_at)));
    }
    if report.failed() > 0 {
        return Err(SubmitError::Incomplete {
            failed: report.failed(),
            total: report.entries.len(),
            what: "renew jobs were not accepted by the broker",
        });
    }
    Ok(())
}
