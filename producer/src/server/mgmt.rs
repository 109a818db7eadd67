//! A small client of the RabbitMQ management HTTP API: the calls `server
//! add|list|remove` make (users, permissions, topic permissions, queues),
//! with basic authentication, a timeout on each request, and errors that
//! name the call and quote the API's answer (never the password).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use certfleet_common::secret::Secret;

/// Time allowed for one request.
const TIMEOUT: Duration = Duration::from_secs(20);
/// Longest answer read.
const MAX_BODY: usize = 4 * 1024 * 1024;

/// Why a management call failed.
#[derive(Debug, thiserror::Error)]
pub enum MgmtError {
    /// No answer (connection refused, timeout, TLS).
    #[error("RabbitMQ management API at {base}: {call}: {detail}")]
    Unreachable {
        /// The API's base URL (no credentials).
        base: String,
        /// The call.
        call: String,
        /// What went wrong.
        detail: String,
    },
    /// An answer with an error status.
    #[error("RabbitMQ management API at {base}: {call}: HTTP {status}: {body}")]
    Status {
        /// The API's base URL (no credentials).
        base: String,
        /// The call.
        call: String,
        /// Status code.
        status: u16,
        /// The start of the answer.
        body: String,
    },
}

impl MgmtError {
    /// The status of an answer, if there was one.
    pub(crate) fn status(&self) -> Option<u16> {
        match self {
            MgmtError::Status { status, .. } => Some(*status),
            MgmtError::Unreachable { .. } => None,
        }
    }
}

/// The API of one broker, with credentials.
#[derive(Clone)]
pub(crate) struct Mgmt {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// `scheme://host:port`, no credentials, no trailing slash.
    base: String,
    auth: Secret<String>,
}

impl Mgmt {
    /// A client of the API at `base` (`http(s)://host:port[/path]`) as
    /// `user`:`password`.
    pub(crate) fn new(base: &url::Url, user: &str, password: &str) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(provider)
            .map_err(|e| format!("TLS setup: {e}"))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(certfleet_common::net::tcp_connector());
        let mut shown = base.clone();
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        shown.set_query(None);
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            base: shown.as_str().trim_end_matches('/').to_string(),
            auth: Secret::new(format!("Basic {auth}")),
        })
    }

    /// The base URL (for messages).
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// One call: `path` below `/api/`, each segment already encoded.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Bytes, MgmtError> {
        let call = format!("{method} /api/{path}");
        let unreachable = |detail: String| MgmtError::Unreachable {
            base: self.base.clone(),
            call: call.clone(),
            detail,
        };
        let mut auth = http::HeaderValue::from_str(self.auth.expose())
            .map_err(|_| unreachable("credentials not usable in a header".into()))?;
        auth.set_sensitive(true);
        let payload = match &body {
            Some(v) => Bytes::from(v.to_string()),
            None => Bytes::new(),
        };
        let request = Request::builder()
            .method(method.clone())
            .uri(format!("{}/api/{path}", self.base))
            .header("authorization", auth)
            .header("content-type", "application/json")
            .body(Full::new(payload))
            .map_err(|e| unreachable(format!("bad request: {e}")))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| unreachable(certfleet_common::error::chain(&e)))?;
            let status = response.status().as_u16();
            let body = http_body_util::Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| unreachable(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, MgmtError>((status, body))
        };
        let (status, body) = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {TIMEOUT:?}")))??;
        if !(200..300).contains(&status) {
            let text: String = String::from_utf8_lossy(&body).chars().take(300).collect();
            return Err(MgmtError::Status {
                base: self.base.clone(),
                call,
                status,
                body: text,
            });
        }
        Ok(body)
    }

    /// GET, parsed as JSON.
    pub(crate) async fn get(&self, path: &str) -> Result<serde_json::Value, MgmtError> {
        let body = self.call(Method::GET, path, None).await?;
        serde_json::from_slice(&body).map_err(|e| MgmtError::Unreachable {
            base: self.base.clone(),
            call: format!("GET /api/{path}"),
            detail: format!("the answer is not JSON: {e}"),
        })
    }

    /// PUT a JSON body.
    pub(crate) async fn put(&self, path: &str, body: serde_json::Value) -> Result<(), MgmtError> {
        self.call(Method::PUT, path, Some(body)).await.map(|_| ())
    }

    /// DELETE; `false` when there was nothing to delete (404).
    pub(crate) async fn delete(&self, path: &str) -> Result<bool, MgmtError> {
        match self.call(Method::DELETE, path, None).await {
            Ok(_) => Ok(true),
            Err(e) if e.status() == Some(404) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// One path segment, percent-encoded (a vhost `/` is `%2F`).
pub(crate) fn segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}
