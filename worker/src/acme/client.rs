//! The HTTP client the ACME account talks through.
//!
//! One rustls stack (aws-lc-rs) trusting the public web roots plus the
//! operator's extra roots (`CERTFLEET_ACME_CA_CERTS`, e.g. Pebble's CA).
//! It also notes the `Retry-After` of error responses in a task-local slot:
//! instant-acme turns an error response into a problem document and drops
//! the headers, but a `rateLimited` job must wait exactly as long as the CA
//! asked. Each job runs inside [`capture_retry_after`], so the value it reads
//! back with [`retry_after`] is its own.
//!
//! A `Retry-After` is network input: one in seconds longer than
//! [`topology::MAX_DELAY`] is rewritten as that long in the response before
//! anything reads it (instant-acme adds the seconds to the clock unchecked,
//! which panics on a value such as `18446744073709551615`).

use std::cell::Cell;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use certfleet_common::topology;
use http::{HeaderValue, Request};
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};

use crate::metrics::AcmeMetrics;

/// Longest wait for one whole ACME exchange: the CA's answer, headers and
/// body (a CA that sends headers and then stalls must not hold a job).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest ACME response body read: a certificate chain or an order is a
/// few KiB; anything far beyond is refused instead of buffered.
const MAX_RESPONSE_BODY: usize = 1 << 20;

tokio::task_local! {
    static RETRY_AFTER: Cell<Option<SystemTime>>;
    /// The last answer seen inside [`post_as_get`]'s scope.
    static RAW_ANSWER: std::cell::RefCell<Option<RawAnswer>>;
}

/// A CA's answer as it came: status, headers and body.
#[derive(Debug, Clone)]
pub(crate) struct RawAnswer {
    pub(crate) status: http::StatusCode,
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: Bytes,
}

/// A POST-as-GET (RFC 8555 §6.3) of any resource the account may read,
/// such as the account object or its orders list, answered as it came.
///
/// instant-acme 0.8 signs POST-as-GET requests only for the resources it
/// models (orders, authorizations, challenges). `Account::order` signs one
/// for any URL and then parses the answer as an order; the client below
/// keeps the answer it saw in a task-local slot, which is what this returns
/// (the parse result is not used).
pub(crate) async fn post_as_get(
    account: &instant_acme::Account,
    url: &str,
) -> Result<RawAnswer, instant_acme::Error> {
    RAW_ANSWER
        .scope(std::cell::RefCell::new(None), async {
            let parsed = account.order(url.to_owned()).await;
            let raw = RAW_ANSWER.with(|slot| slot.borrow_mut().take());
            match (raw, parsed) {
                (Some(raw), _) if raw.status.is_success() => Ok(raw),
                (_, Err(e)) => Err(e),
                (_, Ok(_)) => Err(instant_acme::Error::Str(
                    "no answer to a POST-as-GET recorded",
                )),
            }
        })
        .await
}

/// Runs `f` with its own Retry-After slot.
pub(crate) fn capture_retry_after<F: Future>(f: F) -> impl Future<Output = F::Output> {
    RETRY_AFTER.scope(Cell::new(None), f)
}

/// The Retry-After of the last error response inside the current scope.
pub(crate) fn retry_after() -> Option<Duration> {
    let at = RETRY_AFTER.try_with(Cell::get).ok().flatten()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The target of the first `Link: <URL>;rel="REL"` among `headers`
/// (RFC 8288; ACME uses it for the orders list's next page).
pub(crate) fn link(headers: &http::HeaderMap, rel: &str) -> Option<String> {
    headers
        .get_all(http::header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|entry| {
            let (target, params) = entry.trim().strip_prefix('<')?.split_once('>')?;
            params
                .split(';')
                .filter_map(|p| p.trim().strip_prefix("rel="))
                .any(|r| r.trim_matches('"').split_whitespace().any(|r| r == rel))
                .then(|| target.to_owned())
        })
}

fn parse_retry_after(value: &str) -> Option<SystemTime> {
    let value = value.trim();
    if let Ok(secs) = u64::from_str(value) {
        // A huge value from the network must not overflow the clock.
        return SystemTime::now().checked_add(Duration::from_secs(secs));
    }
    let parsed =
        time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc2822).ok()?;
    Some(SystemTime::from(parsed))
}

/// A `Retry-After` in seconds beyond [`topology::MAX_DELAY`] (or beyond
/// `u64`), rewritten as `MAX_DELAY`; `None` leaves the header as it is.
/// Applied to every response before it is read, by us or by instant-acme
/// (which adds the seconds to the clock unchecked when it polls an order
/// or asks for renewal info, and would panic on `u64::MAX`).
fn capped_retry_after(value: &HeaderValue) -> Option<HeaderValue> {
    let text = value.to_str().ok()?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let within = u64::from_str(text).is_ok_and(|secs| secs <= topology::MAX_DELAY.as_secs());
    (!within).then(|| HeaderValue::from(topology::MAX_DELAY.as_secs()))
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The extra roots file.
    #[error("cannot read CA certificates from {path}: {detail}")]
    Roots {
        /// File.
        path: String,
        /// Why.
        detail: String,
    },
    /// rustls refused the configuration.
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
}

/// The ACME HTTP client (cheap to clone).
#[derive(Clone)]
pub(crate) struct AcmeHttp {
    inner: HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
    metrics: Arc<AcmeMetrics>,
    /// Deadline of one whole exchange ([`REQUEST_TIMEOUT`]).
    timeout: Duration,
}

impl AcmeHttp {
    /// Builds the client with the web roots and `extra_roots`.
    pub(crate) fn new(
        extra_roots: Option<&Path>,
        allow_http: bool,
        metrics: Arc<AcmeMetrics>,
    ) -> Result<Self, ClientError> {
        let roots = certfleet_common::config::roots_with(extra_roots).map_err(|detail| {
            ClientError::Roots {
                path: extra_roots
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                detail,
            }
        })?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
        let connector = if allow_http {
            builder
                .https_or_http()
                .enable_http1()
                .enable_http2()
                .wrap_connector(certfleet_common::net::tcp_connector())
        } else {
            builder
                .https_only()
                .enable_http1()
                .enable_http2()
                .wrap_connector(certfleet_common::net::tcp_connector())
        };
        let inner = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(Self {
            inner,
            metrics,
            timeout: REQUEST_TIMEOUT,
        })
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let host = req.uri().host().unwrap_or("").to_string();
        let action = crate::metrics::acme_action(req.method(), req.uri().path());
        let fut = self.inner.request(req);
        let metrics = self.metrics.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let started = tokio::time::Instant::now();
            // A CA that stops answering, or stalls in the middle of a body,
            // must not hold a job (and its lease) forever: the whole
            // exchange has one deadline, a retryable transport error.
            let whole = async {
                let rsp = fut
                    .await
                    .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
                let (mut parts, body) = rsp.into_parts();
                if let Some(capped) = parts
                    .headers
                    .get(http::header::RETRY_AFTER)
                    .and_then(capped_retry_after)
                {
                    parts.headers.insert(http::header::RETRY_AFTER, capped);
                }
                let bytes = http_body_util::Limited::new(body, MAX_RESPONSE_BODY)
                    .collect()
                    .await
                    .map_err(|e| {
                        instant_acme::Error::Other(format!("reading the CA's answer: {e}").into())
                    })?
                    .to_bytes();
                let _ = RAW_ANSWER.try_with(|slot| {
                    *slot.borrow_mut() = Some(RawAnswer {
                        status: parts.status,
                        headers: parts.headers.clone(),
                        body: bytes.clone(),
                    });
                });
                Ok(BytesResponse {
                    parts,
                    body: Box::new(bytes),
                })
            };
            let rsp = match tokio::time::timeout(timeout, whole).await {
                Ok(r) => r,
                Err(_) => Err(instant_acme::Error::Other(
                    format!("no whole answer from the CA within {}s", timeout.as_secs()).into(),
                )),
            };
            match &rsp {
                Ok(r) => {
                    let status = r.parts.status;
                    metrics.request(
                        &host,
                        action,
                        Some(status.as_u16()),
                        started.elapsed().as_secs_f64(),
                    );
                    if status.is_client_error() || status.is_server_error() {
                        let at = r
                            .parts
                            .headers
                            .get(http::header::RETRY_AFTER)
                            .and_then(|v| v.to_str().ok())
                            .and_then(parse_retry_after);
                        if at.is_some() {
                            let _ = RETRY_AFTER.try_with(|c| c.set(at));
                        }
                    }
                }
                Err(_) => metrics.request(&host, action, None, started.elapsed().as_secs_f64()),
            }
            rsp
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let secs = parse_retry_after("120").expect("seconds");
        let d = secs.duration_since(SystemTime::now()).expect("future");
        assert!(d > Duration::from_secs(118) && d <= Duration::from_secs(120));
        let date = parse_retry_after("Fri, 31 Dec 2999 23:59:59 GMT").expect("date");
        assert!(date > SystemTime::now());
        assert!(parse_retry_after("soon").is_none());
        // A value from the network that would overflow the clock: no panic.
        assert!(parse_retry_after(&u64::MAX.to_string()).is_none());
    }

    /// A CA that sends its headers and then stalls in the body: the request
    /// ends with a (retryable) transport error at the deadline instead of
    /// holding the job; a body beyond the cap is refused.
    #[tokio::test]
    async fn whole_answer_has_a_deadline_and_a_size_cap() -> Result<(), Box<dyn std::error::Error>>
    {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((mut sock, _)) = listener.accept().await {
                n += 1;
                let huge = n > 1;
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let _ = sock.read(&mut buf).await;
                    if huge {
                        let body = vec![b'x'; MAX_RESPONSE_BODY + 1];
                        let head =
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                        let _ = sock.write_all(head.as_bytes()).await;
                        let _ = sock.write_all(&body).await;
                    } else {
                        let _ = sock
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
                            .await;
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                });
            }
        });
        let mut client = AcmeHttp::new(
            None,
            true,
            Arc::new(AcmeMetrics::register(&crate::metrics::Registry::new())?),
        )?;
        client.timeout = Duration::from_millis(500);
        let request =
            || Request::get(format!("http://{addr}/dir")).body(BodyWrapper::from(Vec::new()));
        let started = tokio::time::Instant::now();
        let stalled = client.request(request()?).await;
        assert!(stalled.is_err(), "a stalled body is an error");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let huge = client.request(request()?).await;
        assert!(huge.is_err(), "a body over the cap is refused");
        Ok(())
    }

    /// Absurd values from the network are capped before instant-acme (or
    /// we) add them to the clock.
    #[test]
    fn link_finds_the_relation() {
        let mut h = http::HeaderMap::new();
        h.append(
            http::header::LINK,
            HeaderValue::from_static("<https://ca.test/dir>;rel=\"index\""),
        );
        h.append(
            http::header::LINK,
            HeaderValue::from_static(
                "<https://ca.test/orders/1/page/2>; rel=\"next\", <https://ca.test/x>;rel=up",
            ),
        );
        assert_eq!(
            link(&h, "next").as_deref(),
            Some("https://ca.test/orders/1/page/2")
        );
        assert_eq!(link(&h, "up").as_deref(), Some("https://ca.test/x"));
        assert_eq!(link(&h, "index").as_deref(), Some("https://ca.test/dir"));
        assert_eq!(link(&h, "prev"), None);
        assert_eq!(link(&http::HeaderMap::new(), "next"), None);
    }

    #[test]
    fn retry_after_is_capped() {
        let max = topology::MAX_DELAY;
        let big = HeaderValue::from_static("18446744073709551615");
        assert_eq!(
            capped_retry_after(&big),
            Some(HeaderValue::from(max.as_secs()))
        );
        let beyond_u64 = HeaderValue::from_static("99999999999999999999999");
        assert!(capped_retry_after(&beyond_u64).is_some());
        assert_eq!(capped_retry_after(&HeaderValue::from_static("120")), None);
        assert_eq!(
            capped_retry_after(&HeaderValue::from_static("Fri, 31 Dec 2999 23:59:59 GMT")),
            None
        );
    }

    #[tokio::test]
    async fn slot_is_per_scope() {
        assert_eq!(retry_after(), None);
        capture_retry_after(async {
            let _ =
                RETRY_AFTER.try_with(|c| c.set(Some(SystemTime::now() + Duration::from_secs(30))));
            assert!(retry_after().is_some_and(|d| d > Duration::from_secs(25)));
        })
        .await;
        capture_retry_after(async { assert_eq!(retry_after(), None) }).await;
    }
}
