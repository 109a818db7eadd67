//! `certfleet submit`: many certificates from a file (or stdin), one per
//! line, every line checked before anything is published; one job id and
//! name per accepted job on stdout.

use std::path::{Path, PathBuf};
use std::time::Duration;

use certfleet_common::error::chain;
use certfleet_common::submit::{Dedup, Outcome, Submission};
use certfleet_common::{CertName, Config, Envelope, JobKind};
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::error::SubmitError;
use super::publish::{REASON_BULK, open_submitter, state_or_warn};
use super::request::parse_file;
use super::wait::{DEFAULT_WAIT_TIMEOUT, EventWaiter};
use crate::args::duration;
use crate::broker::close_broker;
use crate::output::out;

/// `certfleet submit`.
#[derive(Debug, Clone, Args)]
pub struct SubmitArgs {
    /// File with one certificate per line:
    /// `DOMAIN [DOMAIN...] [name=NAME] [key=TYPE] [challenge=TYPE]`;
    /// `#` starts a comment; `-` reads stdin.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Wait until every certificate is stored or its job failed: a
    /// progress bar on a terminal, failures on stderr, then one summary
    /// line on stdout (instead of the job ids).
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits for all of them.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_WAIT_TIMEOUT, value_parser = duration)]
    pub timeout: Duration,
}

async fn read_input(path: &Path) -> Result<(String, String), SubmitError> {
    if path.as_os_str() == "-" {
        let label = "<stdin>".to_string();
        let text = tokio::task::spawn_blocking(|| std::io::read_to_string(std::io::stdin()))
            .await
            .map_err(|e| SubmitError::Read {
                file: label.clone(),
                source: std::io::Error::other(e),
            })?
            .map_err(|source| SubmitError::Read {
                file: label.clone(),
                source,
            })?;
        return Ok((label, text));
    }
    let label = path.display().to_string();
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| SubmitError::Read {
            file: label.clone(),
            source,
        })?;
    Ok((label, text))
}

/// `certfleet submit`.
///
/// # Errors
/// Bad lines (before any connection), broker errors, jobs not accepted, and
/// with `--wait` failed jobs, a timeout or an interruption.
pub(crate) async fn submit(
    config: &Config,
    args: &SubmitArgs,
    shutdown: CancellationToken,
) -> Result<(), SubmitError> {
    let (label, text) = read_input(&args.file).await?;
    let requests = parse_file(&text, &label)?;
    let (conn, submitter) = open_submitter(config, state_or_warn(config)).await?;
    let result = async {
        let names: Vec<&CertName> = requests.iter().map(|(_, r)| &r.name).collect();
        let waiter = if args.wait {
            Some(EventWaiter::open(&conn, &names).await?)
        } else {
            None
        };
        let now = certfleet_common::now_ms();
        let envelopes: Vec<Envelope> = requests
            .iter()
            .map(|(_, r)| Envelope::new(JobKind::Issue, r.job(REASON_BULK), now))
            .collect();
        let subs: Vec<Submission<'_>> = envelopes.iter().map(Submission::new).collect();
        let outcomes = submitter
            .submit(&subs, Dedup::Off, "queued (certfleet submit)")
            .await?;
        let mut accepted: Vec<&Envelope> = Vec::new();
        let mut failed = 0;
        for (((line, request), envelope), outcome) in requests.iter().zip(&envelopes).zip(outcomes)
        {
            match outcome {
                Outcome::Queued => {
                    // With --wait, the outcomes and the summary say it all.
                    if !args.wait {
                        out(format_args!("{} {}", envelope.job_id, request.name));
                    }
                    accepted.push(envelope);
                }
                Outcome::NotAccepted(e) => {
                    failed += 1;
                    eprintln!(
                        "{label}:{line}: {}: not accepted: {}",
                        request.name,
                        chain(&e)
                    );
                }
                // No claims without dedup: nothing is ever already queued here.
                Outcome::AlreadyQueued { .. } => {}
            }
        }
        let wait_result = match waiter {
            Some(waiter) if !accepted.is_empty() => {
                let jobs = accepted
                    .iter()
                    .map(|e| (e.job_id, e.job.name.clone()))
                    .collect();
                waiter.wait(jobs, args.timeout, shutdown).await
            }
            _ => Ok(()),
        };
        if failed > 0 {
            return Err(SubmitError::Incomplete {
                failed,
                total: envelopes.len(),
                what: "jobs were not accepted by the broker",
            });
        }
        wait_result
    }
    .await;
    close_broker(&conn).await;
    result
}
