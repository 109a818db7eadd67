//! The tls-alpn-01 responder (RFC 8737): the CA opens TLS to port 443 of
//! the name with SNI = the name and ALPN `acme-tls/1` only, and expects a
//! self-signed certificate for exactly that name carrying the critical
//! acmeIdentifier extension (id-pe-acmeIdentifier, 1.3.6.1.5.5.7.1.31)
//! whose value is SHA-256 of the key authorization.
//!
//! Like http-01, the answer comes from Redis (`tlsalpn01:<domain>`), so the
//! CA may reach any worker of the fleet; the worker that placed the order
//! also keeps it in memory. What Redis holds is the key authorization, not
//! a certificate: each handshake gets a certificate made for it (an
//! ECDSA P-256 key and a signature, well under a millisecond), so no
//! private key, however throwaway, is ever stored.
//!
//! A handshake without `acme-tls/1` is refused: this port serves challenges
//! only (put it behind a TLS router that sends `acme-tls/1` here, or give
//! it port 443 of the names it proves).

use std::sync::Arc;
use std::time::Duration;

use certfleet_common::redis_keys::tlsalpn01_answer;
use certfleet_common::state::State;
use deadpool_redis::redis::AsyncCommands;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::http01::LocalAnswers;
use crate::metrics::ServiceMetrics;

/// The ALPN protocol of RFC 8737 §6.2.
pub(crate) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Handshakes at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 256;

/// A client gets this long for the whole exchange.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a handshake got no certificate.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsAlpnError {
    /// The challenge certificate could not be made.
    #[error("making the challenge certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the certificate or the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// The self-signed certificate and key for `domain` proving `key_auth`
/// (RFC 8737 §3): the one SAN is the domain, the acmeIdentifier extension
/// (critical) holds SHA-256 of the key authorization.
///
/// # Errors
/// A domain rcgen refuses as a SAN, a key that cannot be made.
pub(crate) fn challenge_certificate(
    domain: &str,
    key_auth: &str,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), rcgen::Error> {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key_auth.as_bytes());
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest.as_ref()));
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((cert.der().clone(), key_der))
}

/// Always the one challenge certificate. rustls's `with_single_cert` would
/// refuse it (webpki knows no acmeIdentifier extension, and it is
/// critical); a resolver presents it as it is.
#[derive(Debug)]
struct Fixed(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A server configuration presenting the challenge certificate with
/// `acme-tls/1` as the only protocol.
fn server_config(domain: &str, key_auth: &str) -> Result<rustls::ServerConfig, TlsAlpnError> {
    let (cert, key) = challenge_certificate(domain, key_auth)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let signing = provider.key_provider.load_private_key(key)?;
    let certified = rustls::sign::CertifiedKey::new(vec![cert], signing);
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Fixed(Arc::new(certified))));
    cfg.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    Ok(cfg)
}

/// A name the CA may ask for: a DNS name in ASCII, nothing longer than
/// DNS allows (the SNI is the client's, looked up in Redis only then).
fn plausible_name(name: &str) -> bool {
    (1..=253).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Serves tls-alpn-01 handshakes on `listener` until `shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    state: State,
    local: Arc<LocalAnswers>,
    metrics: ServiceMetrics,
    shutdown: CancellationToken,
) {
    certfleet_common::serve::accept_each(
        listener,
        "tls-alpn-01",
        MAX_CONNECTIONS,
        shutdown,
        move |stream, peer| {
            let (state, local, metrics) = (state.clone(), local.clone(), metrics.clone());
            async move {
                let result = tokio::time::timeout(
                    HANDSHAKE_TIMEOUT,
                    handshake(stream, &state, &local, &metrics),
                )
                .await;
                if result.is_err() {
                    debug!(%peer, "tls-alpn-01: handshake timed out");
                }
            }
        },
    )
    .await;
}

/// One connection: read the ClientHello, look the name up, answer with its
/// challenge certificate (or close).
async fn handshake(
    stream: tokio::net::TcpStream,
    state: &State,
    local: &LocalAnswers,
    metrics: &ServiceMetrics,
) {
    let acceptor =
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
    let start = match acceptor.await {
        Ok(s) => s,
        Err(e) => {
            metrics.tlsalpn01("refused");
            debug!(error = %e, "tls-alpn-01: no ClientHello");
            return;
        }
    };
    let hello = start.client_hello();
    let acme = hello
        .alpn()
        .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
    let name = hello.server_name().map(str::to_ascii_lowercase);
    let Some(name) = name.filter(|n| acme && plausible_name(n)) else {
        metrics.tlsalpn01("refused");
        return;
    };
    let id = tlsalpn01_answer(&name);
    let key_auth = match local.get(&id) {
        Some(a) => Ok(Some(a)),
        None => lookup(state, &name).await,
    };
    let key_auth = match key_auth {
        Ok(Some(a)) => a,
        Ok(None) => {
            metrics.tlsalpn01("miss");
            return;
        }
        Err(e) => {
            metrics.tlsalpn01("error");
            warn!(error = %e, "tls-alpn-01 lookup failed");
            return;
        }
    };
    let cfg = match server_config(&name, &key_auth) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            metrics.tlsalpn01("error");
            warn!(error = %e, domain = %name, "tls-alpn-01: no certificate");
            return;
        }
    };
    match start.into_stream(cfg).await {
        Ok(mut tls) => {
            metrics.tlsalpn01("hit");
            // RFC 8737 §3: the validator closes after the handshake.
            let _ = tls.shutdown().await;
        }
        Err(e) => {
            metrics.tlsalpn01("error");
            debug!(error = %e, domain = %name, "tls-alpn-01: handshake failed");
        }
    }
}

async fn lookup(
    state: &State,
    name: &str,
) -> Result<Option<String>, certfleet_common::state::StateError> {
    let mut c = state.conn().await?;
    Ok(c.get(state.keys().tlsalpn01(name)).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_names_the_domain_and_carries_the_digest()
    -> Result<(), Box<dyn std::error::Error>> {
        let (cert, _key) = challenge_certificate("www.example.com", "token.thumbprint")?;
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())?;
        let ext = parsed
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .ok_or("no acmeIdentifier extension")?;
        assert!(ext.critical);
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"token.thumbprint");
        // DER OCTET STRING of 32 bytes: 04 20 <digest>.
        let mut want = vec![0x04, 0x20];
        want.extend_from_slice(digest.as_ref());
        assert_eq!(ext.value, want.as_slice());
        let sans: Vec<String> = parsed
            .subject_alternative_name()?
            .ok_or("no SAN")?
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(sans, ["DNSName(www.example.com)"]);
        Ok(())
    }

    #[test]
    fn only_dns_names_are_looked_up() {
        assert!(plausible_name("www.example.com"));
        assert!(!plausible_name(""));
        assert!(!plausible_name("a b"));
        assert!(!plausible_name(&"a".repeat(254)));
        assert!(!plausible_name("*.example.com"));
    }
}
