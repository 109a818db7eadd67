//! The error of one job, and what it means for the job (`Disposition`).

use std::time::Duration;

use certfleet_common::amqp::BrokerError;
use certfleet_common::error::{Classify, Disposition};
use certfleet_common::seal::SealError;
use certfleet_common::state::StateError;
use certfleet_common::storage::StorageError;

/// RFC 8555 §6.7 problem type prefix.
const ACME_URN: &str = "urn:ietf:params:acme:error:";

/// What the ACME server said, kept whole for the failure event.
#[derive(Debug, Clone)]
pub struct AcmeProblem {
    /// Problem type without the URN prefix (`rateLimited`, `unauthorized`).
    pub kind: String,
    /// The problem document as JSON.
    pub document: serde_json::Value,
    /// `Retry-After` of the response, if any.
    pub retry_after: Option<Duration>,
    /// Human-readable detail.
    pub detail: String,
}

impl AcmeProblem {
    /// From instant-acme's problem document.
    pub fn from_problem(p: &instant_acme::Problem, retry_after: Option<Duration>) -> Self {
        let full = p.r#type.clone().unwrap_or_default();
        let kind = full.strip_prefix(ACME_URN).unwrap_or(&full).to_string();
        let subproblems: Vec<serde_json::Value> = p
            .subproblems
            .iter()
            .map(|s| {
                serde_json::json!({
                    "type": s.r#type,
                    "detail": s.detail,
                    "identifier": s.identifier.as_ref().map(|i| format!("{i:?}")),
                })
            })
            .collect();
        let mut document = serde_json::json!({
            "type": p.r#type,
            "detail": p.detail,
            "status": p.status,
        });
        if !subproblems.is_empty() {
            document["subproblems"] = serde_json::Value::Array(subproblems);
        }
        Self {
            kind,
            document,
            retry_after,
            detail: p.to_string(),
        }
    }
}

/// Why a job did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The CA answered with a problem document.
    #[error("the CA refused: {}", .0.detail)]
    Acme(AcmeProblem),
    /// The CA could not be reached or answered nonsense.
    #[error("ACME request failed: {0}")]
    AcmeTransport(String),
    /// A validation failed for one of the names.
    #[error("validation of {identifier} failed: {}", problem.detail)]
    Validation {
        /// The name.
        identifier: String,
        /// The CA's problem.
        problem: AcmeProblem,
    },
    /// The order went invalid without saying why.
    #[error("the order became invalid: {0}")]
    OrderInvalid(String),
    /// Object storage.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Redis.
    #[error(transparent)]
    State(#[from] StateError),
    /// The broker.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// A sealed key that cannot be opened.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// Another worker holds the name.
    #[error("{0} is being worked on by another worker")]
    Busy(String),
    /// Our lease on the name expired or was taken while we worked.
    #[error("lost the lease on {0}")]
    LostLease(String),
    /// A fleet-wide rate limit window is closed.
    #[error("rate limit {what} reached; deferred until {until} (in {}s)", wait.as_secs())]
    RateLimited {
        /// Which limit.
        what: String,
        /// How long until a slot frees.
        wait: Duration,
        /// When that is (RFC 3339, UTC), for the job's status.
        until: String,
    },
    /// A job that cannot be done as asked (bad input, unsupported kind).
    #[error("{0}")]
    Invalid(String),
    /// dns-01: a provider, a look-up or the propagation wait.
    #[error("dns-01: {0}")]
    Dns(#[from] crate::dns01::DnsError),
    /// Key generation, CSR or certificate parsing.
    #[error("certificate handling: {0}")]
    Crypto(String),
    /// The worker is shutting down.
    #[error("worker shutting down")]
    Shutdown,
    /// Handling the job panicked (a bug, or input nobody foresaw): the job
    /// is dead-lettered with the panic message, the worker carries on.
    #[error("panic: {0}")]
    Panicked(String),
}

impl JobError {
    /// Whether another CA may succeed where this one failed this way: it
    /// could not be reached or answered 5xx, or it rate-limits for longer
    /// than `patience`. Not a refusal of the request or a failed validation:
    /// another CA would refuse it too, or the names are at fault.
    pub(crate) fn another_ca_may_cure(&self, patience: Duration) -> bool {
        match self {
            JobError::AcmeTransport(_) => true,
            JobError::Acme(p) => {
                p.kind == "serverInternal"
                    || p.document["status"].as_u64().is_some_and(|s| s >= 500)
                    || (p.kind == "rateLimited"
                        && p.retry_after.unwrap_or(Duration::from_secs(3600)) > patience)
            }
            JobError::RateLimited { wait, .. } => *wait > patience,
            _ => false,
        }
    }

    /// A closed window of `what`, open again after `wait`.
    pub(crate) fn rate_limited(what: String, wait: Duration) -> Self {
        let at = time::OffsetDateTime::now_utc() + wait;
        let until = at
            .replace_nanosecond(0)
            .unwrap_or(at)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| format!("{}s from now", wait.as_secs()));
        JobError::RateLimited { what, wait, until }
    }

    /// The problem document to put in a failure event, if the CA gave one.
    pub fn problem(&self) -> Option<&AcmeProblem> {
        match self {
            JobError::Acme(p) | JobError::Validation { problem: p, .. } => Some(p),
            _ => None,
        }
    }

    /// The `kind` of a failure event.
    pub fn failure_kind(&self) -> &'static str {
        match self {
            JobError::Acme(_) | JobError::Validation { .. } | JobError::OrderInvalid(_) => "acme",
            JobError::Invalid(_) => "input",
            JobError::Dns(_) => "dns",
            JobError::Panicked(_) => "panic",
            _ => "internal",
        }
    }

    /// The error-kind header of the dead letter of a job that failed for
    /// good with this error (an exhausted one is `exhausted` instead).
    pub fn dead_letter_kind(&self) -> &'static str {
        match self {
            JobError::Panicked(_) => "panic",
            _ => "permanent",
        }
    }

    /// Whether the stored order is of no further use.
    pub fn abandons_order(&self) -> bool {
        matches!(
            self,
            JobError::Validation { .. } | JobError::OrderInvalid(_)
        ) || matches!(self, JobError::Acme(p) if p.kind == "orderNotReady" || p.kind == "malformed")
    }
}

/// Problem types retrying cannot fix (RFC 8555 §6.7).
const PERMANENT: &[&str] = &[
    "unauthorized",
    "caa",
    "rejectedIdentifier",
    "unsupportedIdentifier",
    "malformed",
    "badCSR",
    "badSignatureAlgorithm",
    "badPublicKey",
    "invalidContact",
    "unsupportedContact",
    "externalAccountRequired",
    "userActionRequired",
    "badRevocationReason",
    "alreadyRevoked",
    "compound",
];

fn acme_disposition(p: &AcmeProblem) -> Disposition {
    if p.kind == "rateLimited" {
        // Let's Encrypt always sends Retry-After with rateLimited; without
        // one, an hour is the shortest window its limits use.
        return Disposition::Defer {
            after: p.retry_after.unwrap_or(Duration::from_secs(3600)),
        };
    }
    if PERMANENT.contains(&p.kind.as_str()) {
        return Disposition::Fail;
    }
    // badNonce, serverInternal, connection, dns, tls, incorrectResponse,
    // orderNotReady, accountDoesNotExist (after a reset) and 5xx.
    Disposition::Retry {
        after: p.retry_after,
    }
}

/// A failed validation that a later order may pass: the CA got a wrong or
/// no answer (`unauthorized`, `incorrectResponse`), which in a fleet can be
/// a moment's trouble (a worker restarting, Redis losing its data while the
/// CA asked, a DNS value not yet everywhere). Retried with backoff (a new
/// order each time; the failed-validation limit still counts them) and
/// dead-lettered as exhausted if it never passes. CAA and other refusals
/// stay permanent.
fn validation_disposition(p: &AcmeProblem) -> Disposition {
    match p.kind.as_str() {
        "unauthorized" | "incorrectResponse" => Disposition::Retry { after: None },
        _ => acme_disposition(p),
    }
}

impl From<crate::dns01::SolveError> for JobError {
    fn from(e: crate::dns01::SolveError) -> Self {
        match e {
            crate::dns01::SolveError::Dns(e) => JobError::Dns(e),
            crate::dns01::SolveError::State(e) => JobError::State(e),
        }
    }
}

/// How long a job waits when this worker's encryption key does not open
/// what the fleet sealed (the shortest delay queue).
pub(crate) const KEY_FAULT_DEFER: Duration = Duration::from_secs(10);

impl JobError {
    /// Whether the worker's own encryption key is wrong or missing for
    /// records it sealed (the ACME account, an order): a fault of this
    /// worker's configuration, not of the job.
    pub(crate) fn is_key_fault(&self) -> bool {
        matches!(
            self,
            JobError::Seal(SealError::WrongKey { .. } | SealError::NoKey(_))
        )
    }
}

impl Classify for JobError {
    fn disposition(&self) -> Disposition {
        match self {
            JobError::Acme(p) => acme_disposition(p),
            JobError::Validation { problem, .. } => validation_disposition(problem),
            JobError::AcmeTransport(_) | JobError::OrderInvalid(_) | JobError::Crypto(_) => {
                Disposition::Retry { after: None }
            }
            JobError::Storage(e) => e.disposition(),
            JobError::State(e) => e.disposition(),
            JobError::Broker(e) => e.disposition(),
            // This worker's CERTFLEET_ENCRYPTION_KEY is not the fleet's (or
            // is missing): no job of it can go right, and any of them would
            // fail the same way. Not the job's fault: put back, not counted,
            // while the worker says it is not ready (see `is_key_fault`).
            JobError::Seal(_) if self.is_key_fault() => Disposition::Defer {
                after: KEY_FAULT_DEFER,
            },
            JobError::Seal(_) | JobError::Invalid(_) | JobError::Panicked(_) => Disposition::Fail,
            // Credentials or permissions refused, an unknown zone, a bad
            // setting: no retry can fix them. Timeouts, SERVFAIL, 5xx and
            // a value not yet everywhere are retried with backoff.
            JobError::Dns(e) => match e.disposition() {
                crate::dns01::Disposition::Fail => Disposition::Fail,
                crate::dns01::Disposition::Retry => Disposition::Retry { after: None },
            },
            JobError::Busy(_) => Disposition::Defer {
                after: Duration::from_secs(10),
            },
            JobError::LostLease(_) => Disposition::Defer {
                after: Duration::from_secs(10),
            },
            JobError::RateLimited { wait, .. } => Disposition::Defer { after: *wait },
            JobError::Shutdown => Disposition::Stop,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(kind: &str, retry_after: Option<Duration>) -> JobError {
        JobError::Acme(AcmeProblem {
            kind: kind.into(),
            document: serde_json::json!({}),
            retry_after,
            detail: kind.into(),
        })
    }

    #[test]
    fn what_another_ca_may_cure() {
        let hour = Duration::from_secs(3600);
        assert!(JobError::AcmeTransport("connection refused".into()).another_ca_may_cure(hour));
        assert!(problem("serverInternal", None).another_ca_may_cure(hour));
        assert!(problem("rateLimited", Some(2 * hour)).another_ca_may_cure(hour));
        assert!(!problem("rateLimited", Some(Duration::from_secs(60))).another_ca_may_cure(hour));
        assert!(!problem("unauthorized", None).another_ca_may_cure(hour));
        assert!(!problem("caa", None).another_ca_may_cure(hour));
        assert!(!JobError::Invalid("bad".into()).another_ca_may_cure(hour));
        assert!(JobError::rate_limited("orders".into(), 2 * hour).another_ca_may_cure(hour));
    }

    #[test]
    fn acme_dispositions() {
        assert_eq!(
            problem("rateLimited", Some(Duration::from_secs(42))).disposition(),
            Disposition::Defer {
                after: Duration::from_secs(42)
            }
        );
        assert_eq!(
            problem("unauthorized", None).disposition(),
            Disposition::Fail
        );
        assert_eq!(problem("caa", None).disposition(), Disposition::Fail);
        // The same problems from a challenge's validation: a wrong or
        // missing answer may pass on a later order, CAA never does.
        let failed = |kind: &str| {
            let JobError::Acme(p) = problem(kind, None) else {
                unreachable!("problem() builds JobError::Acme")
            };
            JobError::Validation {
                identifier: "a.example.com".into(),
                problem: p,
            }
        };
        assert_eq!(
            failed("unauthorized").disposition(),
            Disposition::Retry { after: None }
        );
        assert_eq!(failed("caa").disposition(), Disposition::Fail);
        assert_eq!(
            problem("badNonce", None).disposition(),
            Disposition::Retry { after: None }
        );
        assert_eq!(
            problem("serverInternal", Some(Duration::from_secs(5))).disposition(),
            Disposition::Retry {
                after: Some(Duration::from_secs(5))
            }
        );
    }

    #[test]
    fn a_wrong_or_missing_encryption_key_defers_a_corrupt_record_fails() {
        let wrong = JobError::Seal(SealError::WrongKey {
            stored: "k1".into(),
            configured: "k2".into(),
        });
        assert!(wrong.is_key_fault());
        assert_eq!(
            wrong.disposition(),
            Disposition::Defer {
                after: KEY_FAULT_DEFER
            }
        );
        let missing = JobError::Seal(SealError::NoKey("k1".into()));
        assert!(missing.is_key_fault());
        let corrupt = JobError::Seal(SealError::Corrupt);
        assert!(!corrupt.is_key_fault());
        assert_eq!(corrupt.disposition(), Disposition::Fail);
    }

    #[test]
    fn infrastructure_dispositions() {
        assert_eq!(JobError::Shutdown.disposition(), Disposition::Stop);
        assert!(matches!(
            JobError::Busy("x".into()).disposition(),
            Disposition::Defer { .. }
        ));
        assert_eq!(
            JobError::Invalid("x".into()).disposition(),
            Disposition::Fail
        );
        assert_eq!(
            JobError::Storage(StorageError::Unavailable {
                op: "put",
                key: "k".into(),
                detail: "down".into()
            })
            .disposition(),
            Disposition::Retry { after: None }
        );
    }

    #[test]
    fn problem_urn_is_stripped() {
        let p = instant_acme::Problem {
            r#type: Some("urn:ietf:params:acme:error:rateLimited".into()),
            detail: Some("too many".into()),
            status: Some(429),
            subproblems: vec![],
        };
        let ap = AcmeProblem::from_problem(&p, None);
        assert_eq!(ap.kind, "rateLimited");
        assert_eq!(ap.document["status"], 429);
    }
}
