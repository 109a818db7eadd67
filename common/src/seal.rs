//! Encryption at rest for private keys.
//!
//! Two schemes, for two kinds of reader:
//! - **Certificate keys in bundles** are encrypted with age to the
//!   recipients (public keys) of the server groups allowed to read the
//!   certificate, chosen by name in `CERTFLEET_RECIPIENTS_FILE`
//!   ([`recipients`]); a webserver opens them with its own identity
//!   (`CERTFLEET_IDENTITY_FILE`).
//! - **Keys only workers use** (the ACME account key, keys of orders in
//!   flight) are sealed with AES-256-GCM under the workers' own key,
//!   `CERTFLEET_ENCRYPTION_KEY` (or `_FILE`). Without a recipients file,
//!   bundles are sealed with that key too (the scheme of earlier releases:
//!   every reader then holds the workers' key); such bundles stay readable.
//!
//! Either way the ciphertext is bound to the place it was written for (for
//! a bundle: its name and version), so a sealed key copied elsewhere does
//! not open.

pub mod recipients;

use std::sync::Arc;

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
    /// age, to X25519 recipients ([`recipients`]).
    Age {
        /// The recipients it is encrypted to (`age1...`, public), sorted:
        /// which server groups can open it, and what `keys reseal`
        /// compares with the recipients file.
        recipients: Vec<String>,
        /// The age file (binary format), base64.
        ciphertext: String,
    },
}

impl SealedKey {
    /// The age recipients it is encrypted to (empty for the other schemes).
    pub fn age_recipients(&self) -> &[String] {
        match self {
            SealedKey::Age { recipients, .. } => recipients,
            _ => &[],
        }
    }
}

impl std::fmt::Debug for SealedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SealedKey::Plain { .. } => f.write_str("SealedKey::Plain(***)"),
            SealedKey::Aes256Gcm { key_id, .. } => write!(f, "SealedKey::Aes256Gcm({key_id})"),
            SealedKey::Age { recipients, .. } => {
                write!(f, "SealedKey::Age({} recipients)", recipients.len())
            }
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
        "the private key is stored in the clear but this reader expects encrypted keys ({configured} is configured): refused; renew the certificate so that it is stored encrypted"
    )]
    Plaintext {
        /// What is configured.
        configured: String,
    },
    /// The system random source failed.
    #[error("encryption failed")]
    Crypto,
    /// No line of the recipients file covers the name.
    #[error(
        "no line of the recipients file (CERTFLEET_RECIPIENTS_FILE) covers {name}: add one (`{name} age1...` or `*.ZONE age1...`) so its key can be stored"
    )]
    NoRecipient {
        /// The certificate name.
        name: String,
    },
    /// Encrypted to identities, but none is configured here.
    #[error(
        "the private key is encrypted to {recipients} but no identity is configured (CERTFLEET_IDENTITY_FILE)"
    )]
    NoIdentity {
        /// Who can open it.
        recipients: String,
    },
    /// Encrypted to identities, none of them ours.
    #[error(
        "the private key is not encrypted to this server's identity ({ours}); it is encrypted to {recipients}: add this server's recipient to the name's line of the recipients file and run `certfleet keys reseal`"
    )]
    NotARecipient {
        /// Who can open it.
        recipients: String,
        /// Our recipients.
        ours: String,
    },
}

/// Seals and opens private keys with the configured keys, if any.
#[derive(Clone)]
pub struct Sealer {
    key: Option<(Secret<[u8; 32]>, String)>,
    recipients: Option<Arc<recipients::Recipients>>,
    identities: Arc<recipients::Identities>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key {
            Some((_, id)) => write!(f, "Sealer(aes-256-gcm, key id {id}")?,
            None => f.write_str("Sealer(no worker key")?,
        }
        if self.recipients.is_some() {
            f.write_str(", age recipients")?;
        }
        write!(f, ", {:?})", self.identities)
    }
}

/// A new random workers' key, base64 (what `CERTFLEET_ENCRYPTION_KEY`
/// takes; `openssl rand -base64 32` makes one as well).
///
/// # Errors
/// The system random source failed.
pub fn new_encryption_key() -> Result<Secret<String>, SealError> {
    let mut key = [0u8; 32];
    aws_lc_rs::rand::fill(&mut key).map_err(|_| SealError::Crypto)?;
    Ok(Secret::new(B64.encode(key)))
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
            recipients: None,
            identities: Arc::default(),
        }
    }

    /// A sealer as configured: the workers' key, the recipients file (for
    /// bundles), the identities (to open bundles).
    pub fn with(
        key: Option<Secret<[u8; 32]>>,
        recipients: Option<Arc<recipients::Recipients>>,
        identities: Arc<recipients::Identities>,
    ) -> Self {
        Self {
            recipients,
            identities,
            ..Self::new(key)
        }
    }

    /// Whether bundles are encrypted to recipients.
    pub fn has_recipients(&self) -> bool {
        self.recipients.is_some()
    }

    /// The age recipients a bundle of `name` is encrypted to now (sorted),
    /// `None` without a recipients file.
    ///
    /// # Errors
    /// [`SealError::NoRecipient`]: no line covers the name.
    pub fn recipients_for(&self, name: &str) -> Result<Option<Vec<String>>, SealError> {
        let Some(rules) = &self.recipients else {
            return Ok(None);
        };
        let list: Vec<String> = rules
            .for_name(name)
            .iter()
            .map(ToString::to_string)
            .collect();
        if list.is_empty() {
            return Err(SealError::NoRecipient { name: name.into() });
        }
        Ok(Some(list))
    }

    /// Seals a certificate's key for its bundle: to the name's recipients
    /// when a recipients file is configured, else as [`Sealer::seal`].
    ///
    /// # Errors
    /// No recipient covers the name, or the random source failed.
    pub fn seal_bundle(
        &self,
        name: &str,
        pem: &str,
        context: &str,
    ) -> Result<SealedKey, SealError> {
        let Some(rules) = &self.recipients else {
            return self.seal(pem, context);
        };
        let list = rules.for_name(name);
        if list.is_empty() {
            return Err(SealError::NoRecipient { name: name.into() });
        }
        let ciphertext = recipients::encrypt(&list, pem, context)?;
        Ok(SealedKey::Age {
            recipients: list.iter().map(ToString::to_string).collect(),
            ciphertext: B64.encode(ciphertext),
        })
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
        if let SealedKey::Plain { .. } = stored {
            let configured = match &self.key {
                Some((_, id)) => Some(format!("CERTFLEET_ENCRYPTION_KEY, key id {id},")),
                None if !self.identities.is_empty() => Some("CERTFLEET_IDENTITY_FILE".into()),
                None => None,
            };
            if let Some(configured) = configured {
                return Err(SealError::Plaintext { configured });
            }
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
            SealedKey::Age {
                recipients,
                ciphertext,
            } => {
                let bytes = B64.decode(ciphertext).map_err(|_| SealError::Corrupt)?;
                recipients::decrypt(&self.identities, &bytes, context, recipients)
            }
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
