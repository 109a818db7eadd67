//! The HTTP client the ACME account talks through.
//!
//! One rustls stack (aws-lc-rs) trusting the public web roots plus the
//! operator's extra roots (`CERTFLEET_ACME_CA_CERTS`, e.g. Pebble's CA).
//! It also notes the `Retry-After` of error responses in a task-local slot:
//! instant-acme turns an error response into a problem document and drops
//! the headers, but a `rateLimited` job must wait exactly as long as the CA
//! asked. Each job runs inside [`capture_retry_after`], so the value it reads
//! back with [`retry_after`] is its own.

use std::cell::Cell;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::Request;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::metrics::AcmeMetrics;

/// Longest wait for the CA to start answering one ACME request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

tokio::task_local! {
    static RETRY_AFTER: Cell<Option<SystemTime>>;
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

fn parse_retry_after(value: &str) -> Option<SystemTime> {
    let value = value.trim();
    if let Ok(secs) = u64::from_str(value) {
        return Some(SystemTime::now() + Duration::from_secs(secs));
    }
    let parsed =
        time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc2822).ok()?;
    Some(SystemTime::from(parsed))
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
}

impl AcmeHttp {
    /// Builds the client with the web roots and `extra_roots`.
    pub(crate) fn new(
        extra_roots: Option<&Path>,
        allow_http: bool,
        metrics: Arc<AcmeMetrics>,
    ) -> Result<Self, ClientError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = extra_roots {
            let err = |detail: String| ClientError::Roots {
                path: path.display().to_string(),
                detail,
            };
            let mut added = 0;
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))? {
                let cert = cert.map_err(|e| err(e.to_string()))?;
                roots.add(cert).map_err(|e| err(e.to_string()))?;
                added += 1;
            }
            if added == 0 {
                return Err(err("no PEM certificate in the file".into()));
            }
        }
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
                .build()
        } else {
            builder.https_only().enable_http1().enable_http2().build()
        };
        let inner = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(Self { inner, metrics })
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let fut = HttpClient::request(&self.inner, req);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            // A CA that stops answering must not hold a job (and its lease)
            // forever: the timeout is a retryable transport error.
            let rsp = match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
                Ok(r) => r,
                Err(_) => Err(instant_acme::Error::Other(
                    format!(
                        "no answer from the CA within {}s",
                        REQUEST_TIMEOUT.as_secs()
                    )
                    .into(),
                )),
            };
            match &rsp {
                Ok(r) => {
                    let status = r.parts.status;
                    metrics.request(status.as_u16());
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
                Err(_) => metrics.request(0),
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
