//! The JSON-over-HTTP(S) client shared by the HTTP API providers (DigitalOcean, Cloudflare,
//! acme-dns), and [`Secret`], the wrapper for API tokens and keys.
//!
//! This module owns the project's one HTTP/TLS stack as used by dns-01: hyper-util's legacy
//! client over hyper-rustls (rustls with aws-lc-rs, the webpki roots, `https://` or plain
//! `http://` for local test doubles), a timeout on every request (connect, send and the whole
//! body), and the mapping of transport failures to [`DnsError`]s: a timeout or a socket
//! failure is retryable, a 2xx body that is not the documented JSON is a retryable
//! `BadResponse`. Statuses are mapped by each provider (it knows which zone a 404 concerns),
//! usually through [`DnsError::from_http_status`].
//!
//! Secrets: header values built from a [`Secret`] are marked sensitive, request headers are
//! never logged or quoted, and the body excerpts put into errors have every secret of the
//! request replaced by `***` (in case an API echoes a header back).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use tracing::debug;

use super::provider::{DnsError, RetryKind};

/// Default time allowed for one API request, answer body included.
pub(crate) const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest API answer read (a DNS API answer is a few kB; pages of records a few 100 kB).
const MAX_BODY: usize = 4 * 1024 * 1024;

/// Most characters of an API answer quoted in an error message.
const EXCERPT_CHARS: usize = 300;

/// An API token, key or password. `Debug` prints `***` and it has no `Display`; the value
/// only leaves through header values marked sensitive.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for building a request.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// A sensitive header value carrying `prefix` + the secret (`"Bearer "`).
    pub(crate) fn header(&self, prefix: &str) -> Result<HeaderValue, DnsError> {
        let mut value = HeaderValue::from_str(&format!("{prefix}{}", self.0)).map_err(|_| {
            DnsError::Config("API credential contains characters not allowed in a header".into())
        })?;
        value.set_sensitive(true);
        Ok(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// An API answer: status and body.
pub(crate) struct ApiResponse {
    pub(crate) status: u16,
    pub(crate) body: Bytes,
}

impl ApiResponse {
    /// `true` for a 2xx status.
    pub(crate) fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// One JSON request: method, URL, headers (values from [`Secret::header`] for credentials),
/// optional JSON body, and the secrets to scrub from anything quoted back.
pub(crate) struct ApiRequest<'a> {
    pub(crate) method: Method,
    pub(crate) url: String,
    pub(crate) headers: Vec<(&'static str, HeaderValue)>,
    pub(crate) body: Option<serde_json::Value>,
    pub(crate) secrets: &'a [&'a Secret],
}

/// The shared client (cheap to clone).
#[derive(Clone)]
pub(crate) struct HttpClient {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    /// A client trusting the webpki roots, allowing `https://` and `http://`, with
    /// `timeout` per request.
    pub(crate) fn new(timeout: Duration) -> Result<Self, DnsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(provider)
            .map_err(|e| DnsError::Config(format!("TLS setup: {e}")))?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(certfleet_common::net::tcp_connector());
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(Self { client, timeout })
    }

    /// Send `req` and read the whole answer within the timeout. Transport failures are
    /// retryable errors naming `what` (e.g. "DigitalOcean: creating TXT at x."); the status
    /// is left to the caller.
    pub(crate) async fn send(
        &self,
        req: ApiRequest<'_>,
        what: &str,
    ) -> Result<ApiResponse, DnsError> {
        let mut builder = Request::builder()
            .method(req.method.clone())
            .uri(req.url.as_str())
            .header("accept", "application/json")
            .header(
                "user-agent",
                concat!("certfleet-dns01/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in req.headers {
            builder = builder.header(name, value);
        }
        let body = match &req.body {
            Some(json) => {
                builder = builder.header("content-type", "application/json");
                Bytes::from(serde_json::to_vec(json).map_err(|e| {
                    DnsError::Config(format!("{what}: cannot encode the request: {e}"))
                })?)
            }
            None => Bytes::new(),
        };
        let request = builder
            .body(Full::new(body))
            .map_err(|e| DnsError::Config(format!("{what}: bad request URL {}: {e}", req.url)))?;
        debug!(method = %req.method, url = %req.url, "API request");
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                DnsError::retryable(
                    RetryKind::Network,
                    scrub(
                        &format!("{what}: {} {}: {}", req.method, req.url, error_chain(&e)),
                        req.secrets,
                    ),
                )
            })?;
            let status = response.status().as_u16();
            let collected = http_body_util::Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| {
                    DnsError::retryable(
                        RetryKind::Network,
                        format!("{what}: reading the answer of {}: {e}", req.url),
                    )
                })?;
            Ok::<_, DnsError>(ApiResponse {
                status,
                body: collected.to_bytes(),
            })
        };
        let response = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                DnsError::retryable(
                    RetryKind::Timeout,
                    format!(
                        "{what}: {} {} got no complete answer within {:?}",
                        req.method, req.url, self.timeout
                    ),
                )
            })??;
        debug!(url = %req.url, status = response.status, "API answer");
        Ok(response)
    }
}

/// Parse a 2xx JSON answer; anything else is a retryable `BadResponse`.
pub(crate) fn parse_json<T: DeserializeOwned>(
    body: &[u8],
    what: &str,
    secrets: &[&Secret],
) -> Result<T, DnsError> {
    serde_json::from_slice(body).map_err(|e| {
        DnsError::retryable(
            RetryKind::BadResponse,
            format!(
                "{what}: unexpected answer ({e}): {}",
                excerpt(body, secrets)
            ),
        )
    })
}

/// At most [`EXCERPT_CHARS`] characters of an answer, on one line, secrets replaced by `***`.
pub(crate) fn excerpt(body: &[u8], secrets: &[&Secret]) -> String {
    let mut text = String::from_utf8_lossy(body).into_owned();
    for secret in secrets {
        if !secret.0.is_empty() {
            text = text.replace(&secret.0, "***");
        }
    }
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(EXCERPT_CHARS)
        .collect();
    if text.chars().count() > EXCERPT_CHARS {
        out.push('…');
    }
    let trimmed = out.trim();
    if trimmed.is_empty() {
        "(empty answer)".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// Remove every secret from a message (used on texts assembled from API answers).
pub(crate) fn scrub(text: &str, secrets: &[&Secret]) -> String {
    let mut out = text.to_owned();
    for secret in secrets {
        if !secret.0.is_empty() {
            out = out.replace(&secret.0, "***");
        }
    }
    out
}

/// Check an API base URL (`http://` or `https://`, a host, no query) and drop a final `/`.
pub(crate) fn normalize_base(base: &str, what: &str) -> Result<String, DnsError> {
    let base = base.trim().trim_end_matches('/');
    let uri: http::Uri = base
        .parse()
        .map_err(|e| DnsError::Config(format!("{what} API base URL {base:?}: {e}")))?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    if !scheme_ok || uri.host().is_none() || uri.query().is_some() {
        return Err(DnsError::Config(format!(
            "{what} API base URL {base:?} must be http(s)://host[:port][/path]"
        )));
    }
    Ok(base.to_owned())
}

/// Percent-encode one URL path segment or query value (RFC 3986 unreserved kept).
pub(crate) fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `name` without its final dot.
pub(crate) fn unfqdn(name: &str) -> &str {
    name.trim().trim_end_matches('.')
}

/// `fqdn` lies in `zone` (or is it), case-insensitively, final dots ignored.
pub(crate) fn in_zone(fqdn: &str, zone: &str) -> bool {
    let (fqdn, zone) = (
        unfqdn(fqdn).to_ascii_lowercase(),
        unfqdn(zone).to_ascii_lowercase(),
    );
    !zone.is_empty()
        && (fqdn == zone
            || fqdn
                .strip_suffix(&zone)
                .is_some_and(|rest| rest.ends_with('.')))
}

/// Check that the challenge name lies in the zone and the value is usable.
pub(crate) fn check_args(fqdn: &str, zone: &str, value: &str) -> Result<(), DnsError> {
    if !in_zone(fqdn, zone) {
        return Err(DnsError::Config(format!(
            "{fqdn} is not inside zone {zone}"
        )));
    }
    if value.is_empty() {
        return Err(DnsError::Config("empty TXT value".to_owned()));
    }
    Ok(())
}

/// The error and its sources on one line (hyper-util's errors keep the cause as a source).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_is_masked() {
        let s = Secret::new("tok-123");
        assert_eq!(format!("{s:?}"), "***");
        let h = s.header("Bearer ").unwrap();
        assert!(h.is_sensitive());
        assert!(!format!("{h:?}").contains("tok-123"));
    }

    #[test]
    fn excerpts_are_short_and_scrubbed() {
        let s = Secret::new("sekrit");
        let long = format!("{{\"echo\":\"sekrit\"}}\n{}", "x".repeat(500));
        let e = excerpt(long.as_bytes(), &[&s]);
        assert!(e.starts_with("{\"echo\":\"***\"}"));
        assert!(!e.contains("sekrit") && !e.contains('\n'));
        assert_eq!(e.chars().count(), EXCERPT_CHARS + 1);
        assert_eq!(excerpt(b"  ", &[]), "(empty answer)");
    }

    #[test]
    fn names_and_urls() {
        assert!(in_zone("_acme-challenge.a.Example.com.", "example.com"));
        assert!(in_zone("example.com", "example.com."));
        assert!(!in_zone("_acme-challenge.badexample.com.", "example.com."));
        assert!(!in_zone("x.", ""));
        assert_eq!(encode("_acme-challenge.a.b"), "_acme-challenge.a.b");
        assert_eq!(encode("a b/\"c\""), "a%20b%2F%22c%22");
        assert_eq!(
            normalize_base("https://api.example.com/v4/", "X").unwrap(),
            "https://api.example.com/v4"
        );
        assert!(normalize_base("ftp://x", "X").is_err());
        assert!(normalize_base("api.example.com", "X").is_err());
        assert!(normalize_base("https://x/?a=b", "X").is_err());
    }
}
