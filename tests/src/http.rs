//! A small HTTP(S) client for the RabbitMQ management API, Pebble's
//! management API, pebble-challtestsrv and a worker's `/metrics`, shared by
//! the tests and the benchmark: one hyper + rustls (aws-lc-rs) stack, as
//! everywhere else in the workspace. It trusts only the roots it is given
//! (all its traffic is to the local stack on loopback).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A client trusting only the certificates of one PEM file, if any (plain
/// `http://` needs none).
#[derive(Clone)]
pub struct Http {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Http {
    /// Builds the client.
    ///
    /// # Errors
    /// `roots_file` cannot be read.
    pub fn new(roots_file: Option<&Path>) -> anyhow::Result<Self> {
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector(roots_file, false)?),
        })
    }

    /// Sends a request with an optional JSON body; user and password in the
    /// URL become basic authentication. Returns status and body.
    ///
    /// # Errors
    /// Bad URL, connection failure, timeout.
    pub async fn send(
        &self,
        method: http::Method,
        url: &str,
        body: Option<String>,
    ) -> anyhow::Result<(u16, String)> {
        let parsed = url::Url::parse(url).with_context(|| format!("bad URL {url}"))?;
        let mut clean = parsed.clone();
        let _ = clean.set_username("");
        let _ = clean.set_password(None);
        let mut req = http::Request::builder()
            .method(method)
            .uri(clean.as_str())
            .header("content-type", "application/json");
        if !parsed.username().is_empty() {
            use base64::Engine as _;
            let cred = format!("{}:{}", parsed.username(), parsed.password().unwrap_or(""));
            req = req.header(
                "authorization",
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(cred)
                ),
            );
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let rsp = tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(req))
            .await
            .with_context(|| format!("{clean} timed out"))?
            .with_context(|| format!("{clean}"))?;
        let status = rsp.status().as_u16();
        let body = rsp.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// GET; fails unless the status is 2xx.
    ///
    /// # Errors
    /// As [`Http::send`], or a non-2xx status.
    pub async fn get_ok(&self, url: &str) -> anyhow::Result<String> {
        let (status, body) = self.send(http::Method::GET, url, None).await?;
        anyhow::ensure!((200..300).contains(&status), "GET {url}: {status} {body}");
        Ok(body)
    }
}

/// An HTTP and HTTPS connector trusting only the certificates of `roots`
/// (see [`tls_config`]); with `http2`, h2 is offered through ALPN too.
///
/// # Errors
/// As [`tls_config`].
pub fn connector(
    roots_file: Option<&Path>,
    http2: bool,
) -> anyhow::Result<hyper_rustls::HttpsConnector<HttpConnector>> {
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(roots_file)?)
        .https_or_http()
        .enable_http1();
    Ok(if http2 {
        builder
            .enable_http2()
            .wrap_connector(certfleet_common::net::tcp_connector())
    } else {
        builder.wrap_connector(certfleet_common::net::tcp_connector())
    })
}

/// A rustls client configuration (aws-lc-rs) trusting only the
/// certificates of `roots` (none without it).
///
/// # Errors
/// The roots file cannot be read or holds no certificate.
pub fn tls_config(roots_file: Option<&Path>) -> anyhow::Result<rustls::ClientConfig> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = roots_file {
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path)
            .with_context(|| format!("reading {}", path.display()))?
        {
            roots.add(cert?)?;
            added += 1;
        }
        anyhow::ensure!(added > 0, "no certificate in {}", path.display());
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

impl Http {
    /// Creates `vhost` through the RabbitMQ management API at `mgmt` and
    /// gives the management user (guest without one) every permission on it.
    ///
    /// # Errors
    /// The management API cannot be reached or refuses.
    pub async fn create_vhost(&self, mgmt: &str, vhost: &str) -> anyhow::Result<()> {
        let mgmt = mgmt.trim_end_matches('/');
        let (status, body) = self
            .send(
                http::Method::PUT,
                &format!("{mgmt}/api/vhosts/{vhost}"),
                None,
            )
            .await
            .context("creating a RabbitMQ vhost (is the stack up? scripts/stack.sh up)")?;
        anyhow::ensure!(status < 300, "creating vhost {vhost}: {status} {body}");
        let user = url::Url::parse(mgmt)
            .ok()
            .map(|u| u.username().to_string())
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "guest".into());
        let (status, body) = self
            .send(
                http::Method::PUT,
                &format!("{mgmt}/api/permissions/{vhost}/{user}"),
                Some(r#"{"configure":".*","write":".*","read":".*"}"#.into()),
            )
            .await?;
        anyhow::ensure!(
            status < 300,
            "granting permissions on {vhost}: {status} {body}"
        );
        Ok(())
    }

    /// Deletes `vhost` and every queue in it.
    ///
    /// # Errors
    /// The management API cannot be reached or refuses.
    pub async fn delete_vhost(&self, mgmt: &str, vhost: &str) -> anyhow::Result<()> {
        let mgmt = mgmt.trim_end_matches('/');
        let (status, body) = self
            .send(
                http::Method::DELETE,
                &format!("{mgmt}/api/vhosts/{vhost}"),
                None,
            )
            .await?;
        anyhow::ensure!(
            status < 300 || status == 404,
            "deleting vhost {vhost}: {status} {body}"
        );
        Ok(())
    }
}
