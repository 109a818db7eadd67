//! What a failure means for the job that hit it.
//!
//! Every error a worker can meet while running a job answers one question:
//! retry later, give up on this job, or stop touching it? The answer lives on
//! the error type ([`Classify::disposition`]) instead of in string matching at
//! the call site, as certmagic's `ErrNoRetry` does for its job queue.

use std::time::Duration;

/// What the consumer does with a job whose processing returned an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// A transient failure (network, 5xx, `badNonce`, a service briefly away):
    /// count an attempt and try again after the backoff, or after `after` when
    /// the server said when (`Retry-After`).
    Retry {
        /// The server's own wish, if it gave one.
        after: Option<Duration>,
    },
    /// Not this job's fault and not a failed attempt (the name is leased by
    /// another worker, a CA rate limit window is still closed): put it back
    /// for later without counting an attempt.
    Defer {
        /// When to look again.
        after: Duration,
    },
    /// Retrying cannot help (bad input, `unauthorized`, `caa`,
    /// `rejectedIdentifier`): publish `cert.failed.<name>` and park the
    /// message in the dead-letter queue.
    Fail,
    /// The worker itself cannot go on with this delivery (shutdown, the broker
    /// channel is gone): leave the message unacknowledged so that the broker
    /// redelivers it, and touch nothing else.
    Stop,
}

/// Errors that know their [`Disposition`].
pub trait Classify {
    /// What to do with the job that met this error.
    fn disposition(&self) -> Disposition;
}

/// Formats an error with its whole cause chain on one line (`a: b: c`).
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("inner")]
    struct Inner;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner);

    #[test]
    fn chain_joins_causes() {
        let e = Outer(Inner);
        assert_eq!(chain(&e), "outer: inner");
    }
}
