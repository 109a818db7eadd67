//! The connection every submitting command opens: the broker connection
//! and the one job submission path of the fleet
//! ([`certfleet_common::submit::Submitter`]: claim, confirmed publish,
//! settle), with the Redis state that records `queued` jobs.

use certfleet_common::Config;
use certfleet_common::error::chain;
use certfleet_common::state::State;
use certfleet_common::submit::Submitter;

use super::error::SubmitError;
use crate::broker::{close_broker, connect_broker};

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
