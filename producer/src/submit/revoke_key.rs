//! `certfleet revoke NAME --key-file KEY`: revocation signed with the
//! certificate's own private key (RFC 8555 §7.6), the proof of key
//! compromise CAs ask for (Let's Encrypt accepts `keyCompromise` only so).
//! The key stays with the operator: it is read here, used for one JWS and
//! dropped; it never reaches the broker, Redis or a worker. The fleet's
//! revoke job follows as usual, and the worker, told `alreadyRevoked` by the
//! CA, records the revocation and announces it.
//!
//! The JWS carries the key itself (`jwk`, no account): ES256 / ES384 for
//! ECDSA P-256 / P-384 keys, RS256 for RSA.

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::{rand, signature};
use base64::Engine as _;
use bytes::Bytes;
use certfleet_common::Secret;
use certfleet_common::config::AcmeEndpoint;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use x509_parser::pem::Pem;
use x509_parser::prelude::{FromDer as _, X509Certificate};
use x509_parser::public_key::PublicKey;

use crate::private_key::PrivateKey;

/// One request to the CA may take this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Bad nonces tolerated before giving up (RFC 8555 §6.5: retry with the
/// nonce of the error).
const NONCE_RETRIES: usize = 3;

/// Why the revocation with the certificate's key did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RevokeKeyError {
    /// The key file is not a key this can sign with, or not the
    /// certificate's.
    #[error("{0}")]
    Key(String),
    /// The CA refused.
    #[error("the CA refused the revocation ({status}): {kind}: {detail}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The problem type.
        kind: String,
        /// Its detail.
        detail: String,
    },
    /// The CA could not be reached or answered nonsense.
    #[error("the CA at {url}: {detail}")]
    Transport {
        /// What was asked.
        url: String,
        /// What went wrong.
        detail: String,
    },
}

impl RevokeKeyError {
    /// Bad input (exit 64): nothing was sent.
    pub fn is_usage(&self) -> bool {
        matches!(self, RevokeKeyError::Key(_))
    }
}

/// A key that signs JWS with the algorithm its type calls for.
enum Signer {
    Ecdsa(signature::EcdsaKeyPair, &'static str),
    Rsa(signature::RsaKeyPair),
}

impl Signer {
    fn alg(&self) -> &'static str {
        match self {
            Signer::Ecdsa(_, alg) => alg,
            Signer::Rsa(_) => "RS256",
        }
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, RevokeKeyError> {
        let rng = rand::SystemRandom::new();
        let fail = |_| RevokeKeyError::Key("the key could not sign".into());
        match self {
            Signer::Ecdsa(k, _) => Ok(k.sign(&rng, message).map_err(fail)?.as_ref().to_vec()),
            Signer::Rsa(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut sig)
                    .map_err(fail)?;
                Ok(sig)
            }
        }
    }
}

/// The signer of `key_pem` (PKCS#8, SEC1 or PKCS#1 PEM).
fn signer(key_pem: &Secret<String>, file: &str) -> Result<Signer, RevokeKeyError> {
    let bad = |why: String| RevokeKeyError::Key(format!("--key-file {file}: the key {why}"));
    match PrivateKey::from_pem(key_pem.expose().as_bytes()).map_err(|e| bad(e.to_string()))? {
        PrivateKey::Ecdsa(k, alg) => Ok(Signer::Ecdsa(k, alg)),
        PrivateKey::Rsa(k) => Ok(Signer::Rsa(k)),
        PrivateKey::Ed25519(_) => Err(bad(
            "is an Ed25519 key: a revocation is signed here with ECDSA P-256/P-384 or RSA".into(),
        )),
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The JWK of the certificate's public key (RFC 7518 §6), from its
/// SubjectPublicKeyInfo.
fn jwk(leaf: &X509Certificate<'_>) -> Result<Value, RevokeKeyError> {
    let unsupported = || {
        RevokeKeyError::Key(
            "the certificate's key type cannot sign a revocation here (ECDSA P-256/P-384 or RSA)"
                .into(),
        )
    };
    match leaf.public_key().parsed().map_err(|_| unsupported())? {
        PublicKey::EC(point) => {
            let data = point.data();
            let (crv, len) = match data.len() {
                65 => ("P-256", 32),
                97 => ("P-384", 48),
                _ => return Err(unsupported()),
            };
            if data.first() != Some(&4) {
                return Err(unsupported());
            }
            Ok(json!({
                "crv": crv,
                "kty": "EC",
                "x": b64(&data[1..=len]),
                "y": b64(&data[1 + len..]),
            }))
        }
        PublicKey::RSA(rsa) => {
            let strip = |b: &[u8]| {
                let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
                b64(&b[first..])
            };
            Ok(json!({"e": strip(rsa.exponent), "kty": "RSA", "n": strip(rsa.modulus)}))
        }
        _ => Err(unsupported()),
    }
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One answer: status, Replay-Nonce, body.
struct Answer {
    status: StatusCode,
    nonce: Option<String>,
    body: Bytes,
}

async fn send(
    client: &HttpsClient,
    method: Method,
    url: &str,
    body: Option<Vec<u8>>,
) -> Result<Answer, RevokeKeyError> {
    let transport = |detail: String| RevokeKeyError::Transport {
        url: url.to_string(),
        detail,
    };
    let mut req = Request::builder().method(method).uri(url).header(
        http::header::USER_AGENT,
        concat!("certfleet/", env!("CARGO_PKG_VERSION")),
    );
    if body.is_some() {
        req = req.header(http::header::CONTENT_TYPE, "application/jose+json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| transport(e.to_string()))?;
    let rsp = tokio::time::timeout(REQUEST_TIMEOUT, client.request(req))
        .await
        .map_err(|_| transport(format!("no answer within {}s", REQUEST_TIMEOUT.as_secs())))?
        .map_err(|e| transport(certfleet_common::error::chain(&e)))?;
    let status = rsp.status();
    let nonce = rsp
        .headers()
        .get("replay-nonce")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = tokio::time::timeout(REQUEST_TIMEOUT, rsp.into_body().collect())
        .await
        .map_err(|_| transport("the answer did not finish".into()))?
        .map_err(|e| transport(e.to_string()))?
        .to_bytes();
    Ok(Answer {
        status,
        nonce,
        body,
    })
}

/// Revokes `cert_pem` (its first certificate) at the CA of `endpoint`,
/// signed with `key_pem` (read from `file`, named in errors), for RFC 5280
/// `reason`. A certificate the CA reports revoked already is success.
///
/// # Errors
/// A key that is not the certificate's or cannot sign (nothing was sent),
/// the CA's refusal, or an unreachable CA.
pub(crate) async fn revoke_with_key(
    endpoint: &AcmeEndpoint,
    cert_pem: &str,
    key_pem: &Secret<String>,
    file: &str,
    reason: u8,
) -> Result<(), RevokeKeyError> {
    let pem = Pem::iter_from_buffer(cert_pem.as_bytes())
        .next()
        .ok_or_else(|| RevokeKeyError::Key("the stored certificate is not PEM".into()))?
        .map_err(|e| RevokeKeyError::Key(format!("the stored certificate: {e}")))?;
    let (_, leaf) = X509Certificate::from_der(&pem.contents)
        .map_err(|e| RevokeKeyError::Key(format!("the stored certificate: {e}")))?;
    crate::agent::check_key(&leaf, key_pem).map_err(|e| {
        RevokeKeyError::Key(format!(
            "--key-file {file}: {e} (serial {})",
            leaf.raw_serial_as_string()
        ))
    })?;
    let signer = signer(key_pem, file)?;
    let jwk = jwk(&leaf)?;

    let roots = endpoint
        .roots()
        .map_err(|detail| RevokeKeyError::Transport {
            url: endpoint.directory.to_string(),
            detail,
        })?;
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| RevokeKeyError::Transport {
        url: endpoint.directory.to_string(),
        detail: e.to_string(),
    })?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(certfleet_common::net::tcp_connector());
    let client: HttpsClient = Client::builder(TokioExecutor::new()).build(connector);

    let dir_url = endpoint.directory.as_str();
    let dir = send(&client, Method::GET, dir_url, None).await?;
    let dir: Value = serde_json::from_slice(&dir.body).map_err(|e| RevokeKeyError::Transport {
        url: dir_url.to_string(),
        detail: format!("not a directory: {e}"),
    })?;
    let field = |name: &str| {
        dir[name]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| RevokeKeyError::Transport {
                url: dir_url.to_string(),
                detail: format!("the directory has no {name}"),
            })
    };
    let (new_nonce, revoke_url) = (field("newNonce")?, field("revokeCert")?);
    let mut nonce = send(&client, Method::HEAD, &new_nonce, None)
        .await?
        .nonce
        .ok_or_else(|| RevokeKeyError::Transport {
            url: new_nonce.clone(),
            detail: "no Replay-Nonce".into(),
        })?;
    let payload = b64(json!({"certificate": b64(&pem.contents), "reason": reason})
        .to_string()
        .as_bytes());
    for _ in 0..=NONCE_RETRIES {
        let protected = b64(
            json!({"alg": signer.alg(), "jwk": jwk, "nonce": nonce, "url": revoke_url})
                .to_string()
                .as_bytes(),
        );
        let signature = signer.sign(format!("{protected}.{payload}").as_bytes())?;
        let body =
            json!({"protected": protected, "payload": payload, "signature": b64(&signature)});
        let answer = send(
            &client,
            Method::POST,
            &revoke_url,
            Some(body.to_string().into_bytes()),
        )
        .await?;
        if answer.status.is_success() {
            return Ok(());
        }
        let problem: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        let kind = problem["type"].as_str().unwrap_or("").to_string();
        let short = kind.rsplit(':').next().unwrap_or("").to_string();
        match short.as_str() {
            "alreadyRevoked" => return Ok(()),
            "badNonce" if answer.nonce.is_some() => {
                nonce = answer.nonce.unwrap_or_default();
                continue;
            }
            _ => {
                return Err(RevokeKeyError::Refused {
                    status: answer.status.as_u16(),
                    kind,
                    detail: problem["detail"].as_str().unwrap_or("").to_string(),
                });
            }
        }
    }
    Err(RevokeKeyError::Refused {
        status: 400,
        kind: "urn:ietf:params:acme:error:badNonce".into(),
        detail: format!("{} bad nonces in a row", NONCE_RETRIES + 1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_that_is_not_one_is_refused_naming_the_file() {
        let not_pem = Secret::new("hello".to_string());
        assert!(matches!(
            signer(&not_pem, "k.pem"),
            Err(RevokeKeyError::Key(m)) if m.contains("k.pem") && m.contains("not PEM")
        ));
        let cert = Secret::new(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_string(),
        );
        assert!(matches!(
            signer(&cert, "c.pem"),
            Err(RevokeKeyError::Key(m)) if m.contains("no private key")
        ));
    }
}
