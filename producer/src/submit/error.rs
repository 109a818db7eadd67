//! What can go wrong submitting: [`SubmitError`] for `issue`, `submit` and
//! `renew`, with the errors of one request ([`RequestError`]) and of one
//! line of a bulk file ([`LineError`]) it carries. Each knows whether it is
//! bad usage (exit 64, nothing published) or failed work (exit 1).

use std::fmt;

use certfleet_common::CertName;
use certfleet_common::amqp::BrokerError;
use certfleet_common::domain::DomainError;
use certfleet_common::schedule::ScheduleError;
use certfleet_common::state::StateError;
use certfleet_common::storage::StorageError;
use uuid::Uuid;

/// Bad lines shown in full in one error (the rest are counted).
const MAX_LINE_ERRORS: usize = 20;

/// Why `issue`, `submit` or `renew` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// A bad request on the command line.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// A bad certificate name on the command line.
    #[error(transparent)]
    Name(DomainError),
    /// Bad lines in a bulk file (all of them are listed).
    #[error("{}", format_line_errors(.0))]
    Lines(Vec<LineError>),
    /// A bulk file with no certificate in it.
    #[error(
        "{0}: no certificate lines (one per line: DOMAIN [DOMAIN...] [name=NAME] [key=TYPE] [challenge=TYPE])"
    )]
    EmptyFile(String),
    /// The bulk file cannot be read.
    #[error("cannot read {file}")]
    Read {
        /// The file.
        file: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// `renew` of names that have no certificate.
    #[error("no certificate named {} (use certfleet issue)", join(.0))]
    UnknownNames(Vec<CertName>),
    /// Another bad argument.
    #[error("{0}")]
    Usage(String),
    /// The broker.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// Subscribing to events for `--wait` failed.
    #[error("cannot subscribe to certificate events for --wait")]
    Subscribe(#[source] lapin::Error),
    /// Reading pointers failed.
    #[error("cannot read certificate {name} from storage")]
    Storage {
        /// The certificate.
        name: CertName,
        /// Cause.
        #[source]
        source: StorageError,
    },
    /// Redis failed where it is needed (dedup claims).
    #[error("cannot claim the names in redis (dedup of renew jobs)")]
    State(#[source] StateError),
    /// The due-scan failed.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// A job did not encode (a bug).
    #[error(transparent)]
    Submission(#[from] certfleet_common::submit::SubmitError),
    /// The one job waited for failed.
    #[error("job {job_id} for {name} failed: {reason}")]
    JobFailed {
        /// The job.
        job_id: Uuid,
        /// Its certificate.
        name: CertName,
        /// The CA's reason and problem type.
        reason: String,
    },
    /// `--wait` ran out of time.
    #[error("timed out after {after} waiting for {}; {} still queued, see certfleet status {}",
        jobs_phrase(.pending), it_they(.pending), first(.pending))]
    TimedOut {
        /// The timeout, formatted.
        after: String,
        /// Jobs without an outcome.
        pending: Vec<Uuid>,
    },
    /// `--wait` was interrupted (SIGINT/SIGTERM).
    #[error("interrupted while waiting for {}; {} still queued, see certfleet status {}",
        jobs_phrase(.pending), it_they(.pending), first(.pending))]
    Interrupted {
        /// Jobs without an outcome.
        pending: Vec<Uuid>,
    },
    /// The event subscription broke while waiting.
    #[error("lost the event subscription while waiting for {}; {} still queued, see certfleet status {}",
        jobs_phrase(.pending), it_they(.pending), first(.pending))]
    WaitLost {
        /// Jobs without an outcome.
        pending: Vec<Uuid>,
        /// Cause, if the broker gave one.
        #[source]
        source: Option<lapin::Error>,
    },
    /// `revoke --key-file`: the revocation signed with the certificate's
    /// key did not happen (nothing was queued).
    #[error("revocation with the certificate's key: {0}")]
    RevokeKey(#[from] super::revoke_key::RevokeKeyError),
    /// Some of several jobs were not accepted or failed.
    #[error("{failed} of {total} {what}")]
    Incomplete {
        /// How many failed.
        failed: usize,
        /// Out of how many.
        total: usize,
        /// What failed (`jobs were not accepted by the broker`, ...).
        what: &'static str,
    },
}

impl SubmitError {
    /// Whether this is bad usage or bad input: exit 64, nothing was published.
    pub fn is_usage(&self) -> bool {
        if let SubmitError::RevokeKey(e) = self {
            return e.is_usage();
        }
        matches!(
            self,
            SubmitError::Request(_)
                | SubmitError::Name(_)
                | SubmitError::Lines(_)
                | SubmitError::EmptyFile(_)
                | SubmitError::Read { .. }
                | SubmitError::UnknownNames(_)
                | SubmitError::Usage(_)
        )
    }
}

fn join(names: &[CertName]) -> String {
    names
        .iter()
        .map(CertName::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

fn jobs_phrase(ids: &[Uuid]) -> String {
    match ids {
        [one] => format!("job {one}"),
        many => format!("{} jobs", many.len()),
    }
}

fn it_they(ids: &[Uuid]) -> &'static str {
    if ids.len() == 1 { "it is" } else { "they are" }
}

fn first(ids: &[Uuid]) -> String {
    ids.first()
        .map_or_else(|| "JOB_ID".to_string(), Uuid::to_string)
}

/// What is wrong with one certificate request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// A bad domain or certificate name.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// A wildcard validated over http-01 (impossible: RFC 8555 §7.1.3).
    #[error("wildcard names need --challenge dns-01 ({0})")]
    WildcardNeedsDns01(String),
}

/// One bad line of a bulk file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// The file as given (`-` is shown as `<stdin>`).
    pub file: String,
    /// 1-based line number.
    pub line: usize,
    /// Why.
    pub reason: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.reason)
    }
}

fn format_line_errors(errors: &[LineError]) -> String {
    let mut lines: Vec<String> = errors
        .iter()
        .take(MAX_LINE_ERRORS)
        .map(ToString::to_string)
        .collect();
    if errors.len() > MAX_LINE_ERRORS {
        lines.push(format!(
            "... and {} more bad lines",
            errors.len() - MAX_LINE_ERRORS
        ));
    }
    lines.push("nothing was published".into());
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages() {
        let id = Uuid::nil();
        let e = SubmitError::TimedOut {
            after: "10m".into(),
            pending: vec![id],
        };
        assert_eq!(
            e.to_string(),
            format!(
                "timed out after 10m waiting for job {id}; it is still queued, see certfleet status {id}"
            )
        );
        let name = CertName::parse("x.example.com").expect("valid");
        assert_eq!(
            SubmitError::UnknownNames(vec![name]).to_string(),
            "no certificate named x.example.com (use certfleet issue)"
        );
    }
}
