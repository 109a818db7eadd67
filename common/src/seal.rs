//! Encryption at rest for private keys (AES-256-GCM, aws-lc-rs).
//!
//! When the operator sets `CERTFLEET_ENCRYPTION_KEY` (or `_FILE`), every
//! private key certfleet writes (certificate keys in bundles, keys of orders
//! in flight, the ACME account key) is sealed with it. The associated data
//! binds each ciphertext to the place it was written for (for a bundle: its
//! name and version), so a sealed key copied elsewhere does not open.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// A key material as stored: plain PEM, or sealed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SealedKey {
    /// Stored in the clear (no encryption key configured).
    Plain {
        /// PEM (PKCS#8).
        pem: String,
    },
    /// AES-256-GCM.
    Aes256Gcm {
        /// First 8 bytes of SHA-256 of the key, hex: which key sealed it.
        key_id: String,
        /// 12-byte nonce, base64.
        nonce: String,
        /// Ciphertext with tag, base64.
        ciphertext: String,
    },
}

impl std::fmt::Debug for SealedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SealedKey::Plain { .. } => f.write_str("SealedKey::Plain(***)"),
            SealedKey::Aes256Gcm { key_id, .. } => write!(f, "SealedKey::Aes256Gcm({key_id})"),
        }
    }
}

/// Why a key could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// Sealed, but no key is configured.
    #[error(
        "the private key is encrypted (key id {0}) but no encryption key is configured (CERTFLEET_ENCRYPTION_KEY)"
    )]
    NoKey(String),
    /// Sealed with another key.
    #[error(
        "the private key was encrypted with key id {stored}, the configured key is {configured}"
    )]
    WrongKey {
        /// Key id in storage.
        stored: String,
        /// Key id configured.
        configured: String,
    },
    /// Tampered with, or moved to another place.
    #[error("the encrypted private key does not open (corrupt, or copied from elsewhere)")]
    Corrupt,
    /// Stored in the clear although an encryption key is configured: anyone
    /// who can write to the bucket could have put it there, so it is not
    /// used (see [`Sealer::open_sealed`]).
    #[error(
        "the private key is stored in the clear but an encryption key is configured (CERTFLEET_ENCRYPTION_KEY, key id {configured}): refused; renew the certificate so that it is stored encrypted"
    )]
    Plaintext {
        /// Key id configured.
        configured: String,
    },
    /// The system random source failed.
    #[error("encryption failed")]
    Crypto,
}

/// Seals and opens private keys with the configured key, if any.
#[derive(Clone)]
pub struct Sealer {
    key: Option<(Secret<[u8; 32]>, String)>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key {
            Some((_, id)) => write!(f, "Sealer(aes-256-gcm, key id {id})"),
            None => f.write_str("Sealer(plain)"),
        }
    }
}

fn key_id(key: &[u8; 32]) -> String {
    let d = digest::digest(&digest::SHA256, key);
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

impl Sealer {
    /// A sealer for the configured key (`None`: keys are stored in the clear).
    pub fn new(key: Option<Secret<[u8; 32]>>) -> Self {
        Self {
            key: key.map(|k| {
                let id = key_id(k.expose());
                (k, id)
            }),
        }
    }

    /// Seals `pem` for the place named by `context`.
    ///
    /// # Errors
    /// Only if the random source fails.
    pub fn seal(&self, pem: &str, context: &str) -> Result<SealedKey, SealError> {
        let Some((key, id)) = &self.key else {
            return Ok(SealedKey::Plain {
                pem: pem.to_string(),
            });
        };
        let unbound = UnboundKey::new(&AES_256_GCM, key.expose()).map_err(|_| SealError::Crypto)?;
        let sealing = LessSafeKey::new(unbound);
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| SealError::Crypto)?;
        let mut data = pem.as_bytes().to_vec();
        sealing
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut data,
            )
            .map_err(|_| SealError::Crypto)?;
        Ok(SealedKey::Aes256Gcm {
            key_id: id.clone(),
            nonce: B64.encode(nonce),
            ciphertext: B64.encode(data),
        })
    }

    /// Like [`Sealer::open`], but when a key is configured a key stored in
    /// the clear is refused ([`SealError::Plaintext`]): with encryption on,
    /// every key certfleet writes is sealed and bound to its place, so a
    /// plaintext one was put there by someone else (or before encryption was
    /// turned on). Readers of certificate bundles use this
    /// ([`crate::Store::open_key`]).
    ///
    /// # Errors
    /// As [`Sealer::open`], and [`SealError::Plaintext`].
    pub fn open_sealed(
        &self,
        stored: &SealedKey,
        context: &str,
    ) -> Result<Secret<String>, SealError> {
        if let (SealedKey::Plain { .. }, Some((_, id))) = (stored, &self.key) {
            return Err(SealError::Plaintext {
                configured: id.clone(),
            });
        }
        self.open(stored, context)
    }

    /// Opens a stored key written for `context`.
    ///
    /// # Errors
    /// No key or the wrong key configured, or the ciphertext does not open.
    pub fn open(&self, stored: &SealedKey, context: &str) -> Result<Secret<String>, SealError> {
        match stored {
            SealedKey::Plain { pem } => Ok(Secret::new(pem.clone())),
            SealedKey::Aes256Gcm {
                key_id: stored_id,
                nonce,
                ciphertext,
            } => {
                let Some((key, id)) = &self.key else {
                    return Err(SealError::NoKey(stored_id.clone()));
                };
                if id != stored_id {
                    return Err(SealError::WrongKey {
                        stored: stored_id.clone(),
                        configured: id.clone(),
                    });
                }
                let nonce: [u8; NONCE_LEN] = B64
                    .decode(nonce)
                    .ok()
                    .and_then(|n| n.try_into().ok())
                    .ok_or(SealError::Corrupt)?;
                let mut data = B64.decode(ciphertext).map_err(|_| SealError::Corrupt)?;
                let unbound =
                    UnboundKey::new(&AES_256_GCM, key.expose()).map_err(|_| SealError::Crypto)?;
                let plain = LessSafeKey::new(unbound)
                    .open_in_place(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(context.as_bytes()),
                        &mut data,
                    )
                    .map_err(|_| SealError::Corrupt)?;
                String::from_utf8(plain.to_vec())
                    .map(Secret::new)
                    .map_err(|_| SealError::Corrupt)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n";

    #[test]
    fn seals_and_opens() -> Result<(), SealError> {
        let s = Sealer::new(Some(Secret::new([7u8; 32])));
        let sealed = s.seal(PEM, "a/v1")?;
        let SealedKey::Aes256Gcm { ciphertext, .. } = &sealed else {
            panic!("not sealed");
        };
        assert!(!ciphertext.contains("PRIVATE"));
        assert_eq!(s.open(&sealed, "a/v1")?.expose(), PEM);
        assert_eq!(s.open(&sealed, "b/v1").err(), Some(SealError::Corrupt));
        let other = Sealer::new(Some(Secret::new([8u8; 32])));
        assert!(matches!(
            other.open(&sealed, "a/v1"),
            Err(SealError::WrongKey { .. })
        ));
        assert!(matches!(
            Sealer::new(None).open(&sealed, "a/v1"),
            Err(SealError::NoKey(_))
        ));
        assert!(!format!("{sealed:?}").contains(ciphertext.as_str()));
        Ok(())
    }

    #[test]
    fn plain_when_no_key() -> Result<(), SealError> {
        let s = Sealer::new(None);
        let stored = s.seal(PEM, "x")?;
        assert_eq!(stored, SealedKey::Plain { pem: PEM.into() });
        assert_eq!(format!("{stored:?}"), "SealedKey::Plain(***)");
        assert_eq!(s.open(&stored, "y")?.expose(), PEM);
        assert_eq!(s.open_sealed(&stored, "y")?.expose(), PEM);
        Ok(())
    }

    #[test]
    fn plaintext_is_refused_when_a_key_is_configured() -> Result<(), SealError> {
        let s = Sealer::new(Some(Secret::new([7u8; 32])));
        let plain = SealedKey::Plain { pem: PEM.into() };
        let err = s.open_sealed(&plain, "a/v1").err();
        assert!(matches!(&err, Some(SealError::Plaintext { .. })), "{err:?}");
        assert!(
            err.map(|e| e.to_string())
                .unwrap_or_default()
                .contains("stored in the clear")
        );
        // Sealed keys still open, and `open` (order and account keys) is
        // unchanged.
        let sealed = s.seal(PEM, "a/v1")?;
        assert_eq!(s.open_sealed(&sealed, "a/v1")?.expose(), PEM);
        assert_eq!(s.open(&plain, "a/v1")?.expose(), PEM);
        Ok(())
    }
}
