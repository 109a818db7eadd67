//! The connection every submitting command opens: the broker connection
//! and the one job submission path of the fleet
//! ([`certfleet_common::submit::Submitter`]: claim, confirmed publish,
//! settle), with the Redis state that records `queued` jobs.

use std::collections::HashMap;
use std::time::Duration;

use certfleet_common::error::chain;
use certfleet_common::state::State;
use certfleet_common::submit::{Dedup, Outcome, Submission, Submitter};
use certfleet_common::{Config, Envelope};
use tokio_util::sync::CancellationToken;

use super::error::SubmitError;
use super::wait::EventWaiter;
use crate::broker::{close_broker, connect_broker};
use crate::output::out;

/// `reason` of jobs from `issue` and `renew NAME`.
pub(crate) const REASON_CLI: &str = "cli";
/// `reason` of jobs from `submit`.
pub(crate) const REASON_BULK: &str = "bulk";

/// Redis connections of a submitting command (status records are written
/// pipelined, so a few are plenty).
pub(super) const STATUS_CONCURRENCY: usize = 16;

/// Connects and opens the submitter (job topology declared). Without
/// `state`, no claims are taken and no status records written.
pub(super) async fn open_submitter(
    config: &Config,
    state: Option<State>,
) -> Result<(lapin::Connection, Submitter), SubmitError> {
    let conn = connect_broker(config).await?;
    match Submitter::open(&conn, state).await {
        Ok(submitter) => Ok((conn, submitter)),
        Err(e) => {
            close_broker(&conn).await;
            Err(e.into())
        }
    }
}

/// Redis for status records, or none (a warning): the jobs are accepted
/// whatever happens to their records.
pub(crate) fn state_or_warn(config: &Config) -> Option<State> {
    match State::from_config(config, STATUS_CONCURRENCY) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %chain(&e), "no status records (redis)");
            None
        }
    }
}

/// One job from the command line (`issue`, `revoke`): published with a
/// confirm, its id printed on stdout, and with `wait` (the timeout) its
/// outcome waited for, subscribed before the publish.
///
/// # Errors
/// Broker errors, the job not accepted, and while waiting its failure, a
/// timeout or an interruption.
pub(super) async fn submit_one(
    config: &Config,
    envelope: &Envelope,
    status: &str,
    wait: Option<Duration>,
    shutdown: CancellationToken,
) -> Result<(), SubmitError> {
    let (conn, submitter) = open_submitter(config, state_or_warn(config)).await?;
    let result = async {
        let waiter = match wait {
            Some(_) => Some(EventWaiter::open(&conn, &[&envelope.job.name]).await?),
            None => None,
        };
        let outcome = submitter
            .submit(&[Submission::new(envelope)], Dedup::Off, status)
            .await?
            .pop();
        if let Some(Outcome::NotAccepted(e)) = outcome {
            return Err(e.into());
        }
        out(envelope.job_id);
        if let (Some(waiter), Some(timeout)) = (waiter, wait) {
            let jobs = HashMap::from([(envelope.job_id, envelope.job.name.clone())]);
            waiter.wait(jobs, timeout, shutdown).await?;
        }
        Ok(())
    }
    .await;
    close_broker(&conn).await;
    result
}
