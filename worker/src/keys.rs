//! Private keys, CSRs and the certificates that come back (rcgen,
//! x509-parser).

use certfleet_common::KeyType;
use certfleet_common::secret::Secret;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PublicKeyData, RsaKeySize};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;

use crate::error::JobError;

/// Generates a private key of the requested type, as PKCS#8 PEM.
pub(crate) fn generate(key_type: KeyType) -> Result<Secret<String>, JobError> {
    let pair = match key_type {
        KeyType::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyType::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyType::Rsa2048 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048),
        KeyType::Rsa3072 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_3072),
        KeyType::Rsa4096 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_4096),
    }
    .map_err(|e| JobError::Crypto(format!("generating a {key_type} key: {e}")))?;
    Ok(Secret::new(pair.serialize_pem()))
}

/// A DER CSR for `domains`, signed by `key_pem`.
pub(crate) fn csr(key_pem: &Secret<String>, domains: &[String]) -> Result<Vec<u8>, JobError> {
    let key = KeyPair::from_pem(key_pem.expose())
        .map_err(|e| JobError::Crypto(format!("reading the order's key: {e}")))?;
    let mut params = CertificateParams::new(domains.to_vec())
        .map_err(|e| JobError::Crypto(format!("CSR names: {e}")))?;
    params.distinguished_name = DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| JobError::Crypto(format!("signing the CSR: {e}")))?;
    Ok(csr.der().to_vec())
}

/// The facts certfleet keeps about an issued certificate.
#[derive(Debug, Clone)]
pub(crate) struct Issued {
    /// Leaf, PEM.
    pub(crate) cert_pem: String,
    /// Issuers, PEM (possibly empty).
    pub(crate) chain_pem: String,
    /// Serial, lower-case hex.
    pub(crate) serial: String,
    pub(crate) not_before: OffsetDateTime,
    pub(crate) not_after: OffsetDateTime,
    /// ARI identifier (`AKI.serial`, base64url), when the leaf has an AKI.
    pub(crate) ari_id: Option<String>,
}

/// Splits the CA's PEM chain into leaf and issuers and reads the leaf.
pub(crate) fn parse_chain(pem: &str) -> Result<Issued, JobError> {
    let bad = |what: String| JobError::Crypto(format!("certificate from the CA: {what}"));
    let ders: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    let leaf = ders
        .first()
        .ok_or_else(|| bad("no certificate in the response".into()))?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| bad(e.to_string()))?;
    let serial = certfleet_common::serial_stored(cert.raw_serial());
    let not_before = cert.validity().not_before.to_datetime();
    let not_after = cert.validity().not_after.to_datetime();
    let ari_id = instant_acme::CertificateIdentifier::try_from(leaf)
        .ok()
        .map(|id| id.to_string());
    let mut blocks = certfleet_common::storage::split_certificates(pem);
    let cert_pem = if blocks.is_empty() {
        return Err(bad("no PEM block".into()));
    } else {
        blocks.remove(0)
    };
    Ok(Issued {
        cert_pem,
        chain_pem: blocks.concat(),
        serial,
        not_before,
        not_after,
        ari_id,
    })
}

/// Whether `key_pem` is the private key of `cert_pem` (compares public keys).
pub(crate) fn key_matches(key_pem: &Secret<String>, cert_pem: &str) -> bool {
    let Ok(key) = KeyPair::from_pem(key_pem.expose()) else {
        return false;
    };
    let Some(Ok(der)) = CertificateDer::pem_slice_iter(cert_pem.as_bytes()).next() else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return false;
    };
    cert.public_key().raw == key.subject_public_key_info().as_slice()
}

/// Whether `cert_pem` carries the public key of the operator's `csr`.
pub(crate) fn csr_matches(csr: &certfleet_common::csr::Csr, cert_pem: &str) -> bool {
    let Some(Ok(der)) = CertificateDer::pem_slice_iter(cert_pem.as_bytes()).next() else {
        return false;
    };
    csr.matches_certificate(der.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(key: &Secret<String>, names: &[&str]) -> String {
        let kp = KeyPair::from_pem(key.expose()).expect("key");
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.self_signed(&kp).expect("cert").pem()
    }

    #[test]
    fn every_key_type_generates_and_signs_a_csr() -> Result<(), JobError> {
        for kt in [KeyType::EcdsaP256, KeyType::EcdsaP384, KeyType::Rsa2048] {
            let key = generate(kt)?;
            assert!(key.expose().contains("PRIVATE KEY"));
            let der = csr(&key, &["a.example.com".into(), "b.example.com".into()])?;
            assert!(der.len() > 100);
        }
        Ok(())
    }

    #[test]
    fn parses_chain_and_matches_key() -> Result<(), JobError> {
        let key = generate(KeyType::EcdsaP256)?;
        let leaf = self_signed(&key, &["a.example.com"]);
        let other_key = generate(KeyType::EcdsaP256)?;
        let issuer = self_signed(&other_key, &["ca.example.com"]);
        let issued = parse_chain(&format!("{leaf}{issuer}"))?;
        assert_eq!(
            certfleet_common::storage::split_certificates(&issued.cert_pem).len(),
            1
        );
        assert_eq!(
            certfleet_common::storage::split_certificates(&issued.chain_pem).len(),
            1
        );
        assert!(issued.not_after > issued.not_before);
        assert!(!issued.serial.is_empty());
        assert!(key_matches(&key, &issued.cert_pem));
        assert!(!key_matches(&other_key, &issued.cert_pem));
        assert!(parse_chain("garbage").is_err());
        Ok(())
    }
}
