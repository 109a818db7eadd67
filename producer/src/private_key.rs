//! Private keys handed over in PEM: `issue --key-file`, `revoke --key-file`,
//! `import`, and the agent's check of a bundle before it installs it. One
//! reader, so every command accepts and refuses the same files alike.

use aws_lc_rs::signature::{self, KeyPair as _};
use certfleet_common::Secret;
use x509_parser::pem::Pem;

/// Why a PEM text gives no usable private key. Shown after the key's noun
/// ("the private key ...", "--key-file F: the key ...").
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PemKeyError {
    /// No PEM block at all.
    NotPem,
    /// A block whose base64 or armour is broken.
    Unparsable,
    /// `ENCRYPTED PRIVATE KEY`: a passphrase is needed, which certfleet
    /// never asks for.
    Encrypted,
    /// PEM blocks, none of them a private key (the first one's label).
    NoKey(String),
    /// A private key block of a type that cannot be read here.
    Unsupported,
}

impl std::fmt::Display for PemKeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotPem => f.write_str("is not PEM"),
            Self::Unparsable => f.write_str("PEM does not parse"),
            Self::Encrypted => f.write_str(
                "is encrypted with a passphrase: decrypt it first (`openssl pkey -in KEY -out PLAIN`)",
            ),
            Self::NoKey(label) => write!(
                f,
                "PEM holds a {label:?} block and no private key (PKCS#8, SEC 1 or PKCS#1)"
            ),
            Self::Unsupported => {
                f.write_str("cannot be read (not an ECDSA P-256/P-384, RSA or Ed25519 key)")
            }
        }
    }
}

impl std::error::Error for PemKeyError {}

/// The first private key block of `pem` (other blocks, such as a
/// certificate in the same file, are passed over): its label and DER.
pub(crate) fn key_block(pem: &[u8]) -> Result<(String, Secret<Vec<u8>>), PemKeyError> {
    let mut first_label = None;
    for block in Pem::iter_from_buffer(pem) {
        let block = block.map_err(|_| PemKeyError::Unparsable)?;
        if block.label == "ENCRYPTED PRIVATE KEY" {
            return Err(PemKeyError::Encrypted);
        }
        if block.label.ends_with("PRIVATE KEY") {
            return Ok((block.label, Secret::new(block.contents)));
        }
        first_label.get_or_insert(block.label);
    }
    Err(first_label.map_or(PemKeyError::NotPem, PemKeyError::NoKey))
}

/// A private key read for signing.
pub(crate) enum PrivateKey {
    /// With its JWS algorithm (`ES256`, `ES384`).
    Ecdsa(signature::EcdsaKeyPair, &'static str),
    Rsa(signature::RsaKeyPair),
    Ed25519(signature::Ed25519KeyPair),
}

impl PrivateKey {
    /// The key of the first private key block of `pem` (PKCS#8, SEC 1 or
    /// PKCS#1).
    ///
    /// # Errors
    /// No such block, or a key of another type.
    pub(crate) fn from_pem(pem: &[u8]) -> Result<Self, PemKeyError> {
        let (_, der) = key_block(pem)?;
        let der = der.expose().as_slice();
        for (alg, name) in [
            (&signature::ECDSA_P256_SHA256_FIXED_SIGNING, "ES256"),
            (&signature::ECDSA_P384_SHA384_FIXED_SIGNING, "ES384"),
        ] {
            if let Ok(k) = signature::EcdsaKeyPair::from_private_key_der(alg, der) {
                return Ok(Self::Ecdsa(k, name));
            }
        }
        if let Ok(k) =
            signature::RsaKeyPair::from_pkcs8(der).or_else(|_| signature::RsaKeyPair::from_der(der))
        {
            return Ok(Self::Rsa(k));
        }
        signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map(Self::Ed25519)
            .map_err(|_| PemKeyError::Unsupported)
    }

    /// The public key as a certificate's SubjectPublicKeyInfo carries it
    /// (its BIT STRING's content).
    pub(crate) fn public_key(&self) -> &[u8] {
        match self {
            Self::Ecdsa(k, _) => k.public_key().as_ref(),
            Self::Rsa(k) => k.public_key().as_ref(),
            Self::Ed25519(k) => k.public_key().as_ref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem(label: &str) -> String {
        format!("-----BEGIN {label}-----\nAAAA\n-----END {label}-----\n")
    }

    #[test]
    fn every_refusal_says_why() {
        assert_eq!(key_block(b"hello").err(), Some(PemKeyError::NotPem));
        assert_eq!(
            key_block(pem("ENCRYPTED PRIVATE KEY").as_bytes()).err(),
            Some(PemKeyError::Encrypted)
        );
        assert_eq!(
            key_block(pem("CERTIFICATE").as_bytes()).err(),
            Some(PemKeyError::NoKey("CERTIFICATE".into()))
        );
        assert_eq!(
            key_block(b"-----BEGIN PRIVATE KEY-----\n!!\n-----END PRIVATE KEY-----\n").err(),
            Some(PemKeyError::Unparsable)
        );
        assert!(matches!(
            PrivateKey::from_pem(pem("PRIVATE KEY").as_bytes()),
            Err(PemKeyError::Unsupported)
        ));
    }

    #[test]
    fn keys_of_each_type_are_read_after_a_certificate_block() {
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ] {
            let key = rcgen::KeyPair::generate_for(alg).expect("key");
            let text = format!("{}{}", pem("CERTIFICATE"), key.serialize_pem());
            let read = PrivateKey::from_pem(text.as_bytes()).expect("read");
            assert_eq!(read.public_key(), key.public_key_raw());
        }
    }
}
