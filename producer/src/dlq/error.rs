//! Why a `dlq` command failed, and whether that was bad usage.

use certfleet_common::amqp::BrokerError;
use certfleet_common::topology::DEAD_QUEUE;

/// Why a `dlq` command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DlqError {
    /// `purge` without `--yes`.
    #[error("purge deletes every message in {DEAD_QUEUE} for good; run it again with --yes")]
    NeedsYes,
    /// A job id that is not a UUID.
    #[error("{0:?} is not a job id (a UUID)")]
    BadJobId(String),
    /// The broker.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// Publishing the replayed jobs failed as a whole.
    #[error(transparent)]
    Submit(#[from] certfleet_common::submit::SubmitError),
    /// An operation on the dead-letter queue failed.
    #[error("cannot {op} {DEAD_QUEUE}")]
    Queue {
        /// What was being done.
        op: &'static str,
        /// Cause.
        #[source]
        source: lapin::Error,
    },
    /// The job is not in the queue.
    #[error("no job {0} in {DEAD_QUEUE}")]
    NotFound(String),
    /// Some selected jobs were not replayed.
    #[error("{failed} of {total} selected jobs were not replayed (see above)")]
    Incomplete {
        /// Not replayed.
        failed: usize,
        /// Selected.
        total: usize,
    },
}

impl DlqError {
    /// Whether this is bad usage (exit 64).
    pub fn is_usage(&self) -> bool {
        matches!(self, DlqError::NeedsYes | DlqError::BadJobId(_))
    }
}

pub(super) fn queue_error(op: &'static str) -> impl FnOnce(lapin::Error) -> DlqError {
    move |source| DlqError::Queue { op, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors() {
        assert!(DlqError::NeedsYes.is_usage());
        assert!(DlqError::BadJobId("x".into()).is_usage());
        assert!(!DlqError::NotFound("x".into()).is_usage());
    }
}
