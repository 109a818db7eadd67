//! The S3 client's HTTPS when the endpoint needs more than the public roots:
//! a private CA (`CERTFLEET_S3_CA_FILE`) and/or a client certificate
//! (`CERTFLEET_S3_CLIENT_CERT_FILE`, `_KEY_FILE`). A hyper client over
//! hyper-rustls (aws-lc-rs, the webpki roots plus the CA), plugged into the
//! SDK as its HTTP connector; the SDK's own timeouts and retries still
//! apply around every request.

use std::sync::Arc;

use aws_sdk_s3::config::SharedHttpClient;
use aws_smithy_runtime_api::client::http::{
    HttpConnector, HttpConnectorFuture, SharedHttpConnector, http_client_fn,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::http::Response;
use aws_smithy_types::body::SdkBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector as TcpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::tls::TlsFiles;

/// The connector: one pooled hyper client.
#[derive(Clone)]
struct Connector {
    client: Client<hyper_rustls::HttpsConnector<TcpConnector>, SdkBody>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("certfleet S3 HTTPS connector")
    }
}

impl HttpConnector for Connector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let client = self.client.clone();
        HttpConnectorFuture::new(async move {
            let request = request
                .try_into_http1x()
                .map_err(|e| ConnectorError::other(Box::new(e), None))?;
            let response = client
                .request(request)
                .await
                .map_err(|e| ConnectorError::io(Box::new(e)))?;
            let response = response.map(SdkBody::from_body_1_x);
            Response::try_from(response).map_err(|e| ConnectorError::other(Box::new(e), None))
        })
    }
}

/// The SDK HTTP client for `tls`.
///
/// # Errors
/// A CA file without a certificate rustls accepts, or a client key that
/// does not parse or does not fit its certificate.
pub fn client(tls: &TlsFiles) -> Result<SharedHttpClient, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = &tls.ca_pem {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(ca.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("CERTFLEET_S3_CA_FILE: {e}"))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err("CERTFLEET_S3_CA_FILE: no usable CA certificate".into());
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots);
    let config = match &tls.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("CERTFLEET_S3_CLIENT_CERT_FILE: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(key.expose().as_bytes())
                .map_err(|_| "CERTFLEET_S3_CLIENT_KEY_FILE: no PEM private key".to_string())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("CERTFLEET_S3_CLIENT_CERT_FILE with its key: {e}"))?
        }
    };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .wrap_connector(crate::net::tcp_connector());
    let connector = SharedHttpConnector::new(Connector {
        client: Client::builder(TokioExecutor::new()).build(https),
    });
    Ok(http_client_fn(move |_, _| connector.clone()))
}
