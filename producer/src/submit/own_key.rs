//! `certfleet issue --csr FILE` and `--key-file FILE`: certificates for a
//! key the operator brings.
//!
//! - `--csr`: the CSR is checked here (signature, key type, names) and
//!   carried in the job; the worker orders with it as is. No private key is
//!   made or stored anywhere: the bundle holds none, `watch` writes no
//!   `privkey.pem`. Renewals send the same CSR (kept in the pointer).
//! - `--key-file`: a CSR for the names is made here with the key, and the
//!   key is sealed here as the fleet's bundles are (to the name's recipients
//!   of `CERTFLEET_RECIPIENTS_FILE`, or with `CERTFLEET_ENCRYPTION_KEY`),
//!   bound to the certificate's name rather than one version: the worker
//!   copies the ciphertext into every version's bundle without opening it,
//!   and webservers open it as any key. Only ciphertext leaves this
//!   process.

use std::path::Path;

use base64::Engine as _;
use certfleet_common::config::StorageConfig;
use certfleet_common::csr::Csr;
use certfleet_common::seal::{SealedKey, Sealer};
use certfleet_common::storage::Bundle;
use certfleet_common::{CertName, Secret};
use rcgen::{CertificateParams, DistinguishedName, KeyPair};

use super::error::SubmitError;
use crate::private_key::{self, PemKeyError};

/// The most bytes read from a CSR or key file (an RSA 4096 key is 3.2 KiB).
const MAX_FILE_LEN: u64 = 64 * 1024;

fn read_limited(flag: &str, path: &Path) -> Result<Vec<u8>, SubmitError> {
    let usage = |why: String| SubmitError::Usage(format!("{flag} {}: {why}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| usage(e.to_string()))?;
    if !meta.is_file() {
        return Err(usage("not a file".into()));
    }
    if meta.len() > MAX_FILE_LEN {
        return Err(usage(format!(
            "{} bytes: larger than {MAX_FILE_LEN}",
            meta.len()
        )));
    }
    std::fs::read(path).map_err(|e| usage(e.to_string()))
}

/// Reads and checks `--csr FILE` (PEM or DER).
///
/// # Errors
/// A usage error naming the file and what is wrong with it.
pub(crate) fn read_csr(path: &Path) -> Result<Csr, SubmitError> {
    let bytes = read_limited("--csr", path)?;
    Csr::from_pem_or_der(&bytes)
        .map_err(|why| SubmitError::Usage(format!("--csr {}: {why}", path.display())))
}

/// Reads `--key-file FILE`, makes the CSR for `domains` with it, and seals
/// the key for `name` as `storage` says bundles' keys are sealed.
///
/// # Errors
/// A usage error naming the file: not a key, a type certfleet does not
/// order, no encryption configured, or no recipient for the name.
pub(crate) fn from_key_file(
    path: &Path,
    domains: &[String],
    name: &CertName,
    storage: &StorageConfig,
) -> Result<(Csr, SealedKey), SubmitError> {
    let file = path.display().to_string();
    let usage = |why: String| SubmitError::Usage(format!("--key-file {file}: {why}"));
    if storage.recipients.is_none()
        && storage.encryption_key.is_none()
        && !storage.insecure_plaintext_keys
    {
        return Err(usage(
            "the key would be stored in the clear: set CERTFLEET_RECIPIENTS_FILE (as the workers have it) or CERTFLEET_ENCRYPTION_KEY, or CERTFLEET_INSECURE_PLAINTEXT_KEYS=true".into(),
        ));
    }
    let bytes = Secret::new(read_limited("--key-file", path)?);
    let (label, der) = private_key::key_block(bytes.expose()).map_err(|e| {
        usage(match e {
            PemKeyError::Encrypted => {
                format!("the key {e}; certfleet stores it encrypted as configured")
            }
            e => format!("the key {e}"),
        })
    })?;
    let pair = KeyPair::try_from(der.expose().as_slice()).map_err(|_| {
        usage("the key cannot be read (not an ECDSA P-256/P-384 or RSA key)".into())
    })?;
    let mut params =
        CertificateParams::new(domains.to_vec()).map_err(|e| usage(format!("the names: {e}")))?;
    params.distinguished_name = DistinguishedName::new();
    let request = params
        .serialize_request(&pair)
        .map_err(|e| usage(format!("signing the CSR: {e}")))?;
    let csr = Csr::from_der(request.der()).map_err(usage)?;
    // The key as given (its own format), re-armoured: what webservers get.
    let body = base64::engine::general_purpose::STANDARD.encode(der.expose());
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    let pem = Secret::new(pem);
    let sealer = Sealer::with(
        storage.encryption_key.clone(),
        storage.recipients.clone(),
        storage.identities.clone(),
    );
    let sealed = sealer
        .seal_bundle(name.as_str(), pem.expose(), &Bundle::name_context(name))
        .map_err(|e| usage(format!("sealing the key: {e}")))?;
    Ok((csr, sealed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::PublicKeyData as _;

    fn storage(key: bool) -> StorageConfig {
        StorageConfig {
            encryption_key: key.then(|| Secret::new([7u8; 32])),
            recipients: None,
            identities: Default::default(),
            insecure_plaintext_keys: false,
        }
    }

    #[test]
    fn a_key_file_gives_a_csr_of_its_key_and_a_sealed_key_bound_to_the_name()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let name = CertName::parse("own.example.com")?;
        let domains = vec!["own.example.com".to_string(), "www.own.example.com".into()];
        for (alg, want) in [
            (
                &rcgen::PKCS_ECDSA_P384_SHA384,
                certfleet_common::KeyType::EcdsaP384,
            ),
            (
                &rcgen::PKCS_ECDSA_P256_SHA256,
                certfleet_common::KeyType::EcdsaP256,
            ),
        ] {
            let pair = KeyPair::generate_for(alg)?;
            let path = dir.path().join("key.pem");
            std::fs::write(&path, pair.serialize_pem())?;
            let (csr, sealed) = from_key_file(&path, &domains, &name, &storage(true))?;
            assert_eq!(csr.domains, domains);
            assert_eq!(csr.key_type, want);
            assert_eq!(csr.spki, pair.subject_public_key_info());
            let sealer = Sealer::new(Some(Secret::new([7u8; 32])));
            let opened = sealer.open(&sealed, &Bundle::name_context(&name))?;
            assert_eq!(opened.expose(), &pair.serialize_pem());
            // Bound to the name: another name's context does not open it.
            let other = CertName::parse("other.example.com")?;
            assert!(sealer.open(&sealed, &Bundle::name_context(&other)).is_err());
        }
        Ok(())
    }

    #[test]
    fn key_file_refusals_name_the_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let name = CertName::parse("own.example.com")?;
        let domains = vec!["own.example.com".to_string()];
        let path = dir.path().join("k.pem");
        let pair = KeyPair::generate()?;
        std::fs::write(&path, pair.serialize_pem())?;
        let refused = |p: &Path, s: &StorageConfig| match from_key_file(p, &domains, &name, s) {
            Err(SubmitError::Usage(m)) => m,
            other => panic!("not refused: {:?}", other.map(|_| ())),
        };
        let m = refused(&path, &storage(false));
        assert!(
            m.contains("stored in the clear") && m.contains("k.pem"),
            "{m}"
        );
        std::fs::write(
            &path,
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )?;
        let m = refused(&path, &storage(true));
        assert!(m.contains("passphrase"), "{m}");
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )?;
        let m = refused(&path, &storage(true));
        assert!(m.contains("no private key"), "{m}");
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        std::fs::write(&path, ed.serialize_pem())?;
        let m = refused(&path, &storage(true));
        assert!(m.contains("neither ECDSA"), "{m}");
        let m = refused(&dir.path().join("missing.pem"), &storage(true));
        assert!(m.contains("missing.pem"), "{m}");
        Ok(())
    }
}
