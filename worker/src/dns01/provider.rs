//! The dns-01 provider interface and its error type.
//!
//! This module owns the contract every DNS backend implements (modelled on lego's
//! `Present`/`CleanUp`/`Timeout` and libdns's append/delete of single records: a provider
//! never replaces a whole RRset, so two orders for `example.com` and `*.example.com` can
//! have their TXT values live at `_acme-challenge.example.com.` at the same time), and the
//! typed [`DnsError`] with its [`Disposition`]: whether the job fails at once or is retried.
//!
//! No secret may reach an error message: providers build messages from server answers and
//! names only, and credentials are kept in wrappers whose `Debug` prints `***`.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// The boxed future a provider returns: `Send`, borrowing the provider and its arguments,
/// usable through `dyn Dns01Provider` without the `async-trait` crate.
pub type DnsFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, DnsError>> + Send + 'a>>;

/// A DNS backend that can publish and withdraw `_acme-challenge` TXT values.
///
/// Implementations must be additive: [`present`](Self::present) adds one value and keeps
/// any other values already at `fqdn`; [`cleanup`](Self::cleanup) removes exactly that one
/// value, and removing a value that is not there is `Ok`.
pub trait Dns01Provider: Send + Sync {
    /// Short, stable name for logs and metrics (`"rfc2136"`).
    fn name(&self) -> &'static str;

    /// Add one TXT `value` at `fqdn` (absolute, after CNAME following, e.g.
    /// `_acme-challenge.example.com.`) inside `zone` (the zone apex, e.g. `example.com.`),
    /// keeping any other values there.
    fn present<'a>(&'a self, fqdn: &'a str, zone: &'a str, value: &'a str) -> DnsFuture<'a, ()>;

    /// Remove only the TXT `value` at `fqdn`; other values stay. Absent is `Ok`.
    fn cleanup<'a>(&'a self, fqdn: &'a str, zone: &'a str, value: &'a str) -> DnsFuture<'a, ()>;

    /// How long the caller should wait for propagation with this backend, if it knows better
    /// than the caller's default (an API with slow replication, say).
    fn propagation_timeout(&self) -> Option<Duration> {
        None
    }
}

/// What the job runner does with a [`DnsError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Retrying cannot help (credentials, permissions, configuration, unknown zone): fail
    /// the job now with the error's message.
    Fail,
    /// Transient (timeouts, server failures, not yet propagated): retry later.
    Retry,
}

/// Why a transient [`DnsError::Retryable`] happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryKind {
    /// No answer within the time allowed.
    Timeout,
    /// Socket-level failure (connection refused, reset, unreachable).
    Network,
    /// The server answered that it failed (DNS SERVFAIL, HTTP 5xx).
    ServerFailure,
    /// The provider throttles us (HTTP 429).
    RateLimited,
    /// An answer we could not trust or parse (malformed, wrong id, bad response signature).
    BadResponse,
    /// The value was not yet visible on every authoritative server.
    NotPropagated,
}

/// Errors of the dns-01 module. Every message names the server and the DNS name concerned
/// and never contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// Credentials or permissions were rejected (TSIG BADSIG/BADKEY/BADTIME, NOTAUTH,
    /// REFUSED, HTTP 401/403). The message includes the server's answer.
    #[error("{0}")]
    Refused(String),
    /// No zone could be found for the name, or the server does not serve it.
    #[error("unknown DNS zone: {0}")]
    UnknownZone(String),
    /// Transient failure; see [`RetryKind`].
    #[error("{message}")]
    Retryable {
        /// What kind of transient failure.
        kind: RetryKind,
        /// Human-readable description naming the server and name.
        message: String,
    },
    /// The provider's configuration is unusable (bad key, unsupported algorithm, bad name).
    #[error("dns-01 configuration: {0}")]
    Config(String),
    /// The server gave a definite answer we cannot act on (FORMERR, NOTIMP, YXRRSET, …).
    #[error("{0}")]
    Rejected(String),
}

impl DnsError {
    /// A transient error of `kind`.
    pub fn retryable(kind: RetryKind, message: impl Into<String>) -> Self {
        Self::Retryable {
            kind,
            message: message.into(),
        }
    }

    /// What the job runner should do with this error.
    pub fn disposition(&self) -> Disposition {
        match self {
            Self::Retryable { .. } => Disposition::Retry,
            Self::Refused(_) | Self::UnknownZone(_) | Self::Config(_) | Self::Rejected(_) => {
                Disposition::Fail
            }
        }
    }

    /// `true` when retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.disposition() == Disposition::Retry
    }

    /// Classify an HTTP API answer for providers that talk HTTP: 401/403 refuse, 404 names an
    /// unknown zone, 429 and 5xx are retryable, other statuses are rejections. `context` says
    /// what was attempted ("creating TXT at _acme-challenge.example.com.") and `body_excerpt`
    /// is the (already secret-free, shortened) answer of the API.
    pub fn from_http_status(status: u16, context: &str, body_excerpt: &str) -> Self {
        let message = format!("{context}: HTTP {status}: {body_excerpt}");
        match status {
            401 | 403 => Self::Refused(message),
            404 => Self::UnknownZone(message),
            429 => Self::retryable(RetryKind::RateLimited, message),
            500..=599 => Self::retryable(RetryKind::ServerFailure, message),
            _ => Self::Rejected(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispositions() {
        assert_eq!(
            DnsError::Refused("x".into()).disposition(),
            Disposition::Fail
        );
        assert!(!DnsError::UnknownZone("x".into()).is_retryable());
        assert!(!DnsError::Config("x".into()).is_retryable());
        assert!(!DnsError::Rejected("x".into()).is_retryable());
        assert!(DnsError::retryable(RetryKind::Timeout, "t").is_retryable());
    }

    #[test]
    fn http_statuses() {
        let c = "creating TXT at _acme-challenge.example.com.";
        assert!(matches!(
            DnsError::from_http_status(401, c, "bad token"),
            DnsError::Refused(m) if m.contains("HTTP 401") && m.contains("bad token")
        ));
        assert!(matches!(
            DnsError::from_http_status(403, c, ""),
            DnsError::Refused(_)
        ));
        assert!(matches!(
            DnsError::from_http_status(404, c, ""),
            DnsError::UnknownZone(_)
        ));
        assert!(DnsError::from_http_status(429, c, "").is_retryable());
        assert!(DnsError::from_http_status(503, c, "").is_retryable());
        assert!(!DnsError::from_http_status(400, c, "").is_retryable());
    }

    #[test]
    fn provider_is_object_safe() {
        struct Nop;
        impl Dns01Provider for Nop {
            fn name(&self) -> &'static str {
                "nop"
            }
            fn present<'a>(&'a self, _: &'a str, _: &'a str, _: &'a str) -> DnsFuture<'a, ()> {
                Box::pin(async { Ok(()) })
            }
            fn cleanup<'a>(&'a self, _: &'a str, _: &'a str, _: &'a str) -> DnsFuture<'a, ()> {
                Box::pin(async { Ok(()) })
            }
        }
        let p: Box<dyn Dns01Provider> = Box::new(Nop);
        assert_eq!(p.name(), "nop");
        assert_eq!(p.propagation_timeout(), None);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(p.present("a.", "b.", "c")).unwrap();
    }
}
