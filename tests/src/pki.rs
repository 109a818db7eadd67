//! Checking what the CA issued: chains, keys, names.

use std::sync::Arc;

use anyhow::{Context, anyhow};
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// Verifies that `fullchain_pem` (leaf first) chains to `root_pem` and is
/// valid for `name` now.
pub fn verify_chain(fullchain_pem: &str, root_pem: &str, name: &str) -> anyhow::Result<()> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(fullchain_pem.as_bytes()).collect::<Result<_, _>>()?;
    let (leaf, intermediates) = certs.split_first().ok_or_else(|| anyhow!("empty chain"))?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
    )
    .build()?;
    verifier
        .verify_server_cert(
            leaf,
            intermediates,
            &ServerName::try_from(name.to_string())?,
            &[],
            UnixTime::now(),
        )
        .with_context(|| format!("chain does not verify for {name}"))?;
    Ok(())
}

/// The DNS names of a certificate's SAN extension, sorted.
pub fn sans(cert_pem: &str) -> anyhow::Result<Vec<String>> {
    let der = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .next()
        .ok_or_else(|| anyhow!("no certificate"))??;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())?;
    let mut names = Vec::new();
    if let Some(san) = cert.subject_alternative_name()? {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_string());
            }
        }
    }
    names.sort();
    Ok(names)
}

/// Serial of a certificate, lower-case hex without leading zeros.
pub fn serial(cert_pem: &str) -> anyhow::Result<String> {
    let der = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .next()
        .ok_or_else(|| anyhow!("no certificate"))??;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())?;
    let hex: String = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(hex.trim_start_matches('0').to_string())
}

/// Whether `key_pem` is the private key of `cert_pem`.
pub fn key_matches(key_pem: &str, cert_pem: &str) -> anyhow::Result<bool> {
    use rcgen::PublicKeyData;
    let key = rcgen::KeyPair::from_pem(key_pem)?;
    let der = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .next()
        .ok_or_else(|| anyhow!("no certificate"))??;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())?;
    Ok(cert.public_key().raw == key.subject_public_key_info().as_slice())
}
