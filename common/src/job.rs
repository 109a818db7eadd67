//! Jobs: what the producer asks and the workers do, and their wire format.
//!
//! A job travels as bincode (2.x, serde) inside a small versioned
//! [`Envelope`]. The version is the first field, so a worker reads it before
//! anything else and dead-letters a message from the future (or garbage)
//! with a reason instead of misreading it. Rules for changing the format:
//! append enum variants at the end, never reorder fields; anything else
//! bumps [`ENVELOPE_VERSION`] and keeps a decoder for every shipped version
//! (fixtures in `common/tests/fixtures/`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::CertName;
use crate::error::{Classify, Disposition};

/// A job's routing key on the jobs exchange: `job.<kind>.<challenge>`, so a
/// worker pool that can serve only some challenges binds only those.
pub fn routing_key(kind: JobKind, challenge: ChallengeType) -> String {
    format!("job.{}.{}", kind.as_str(), challenge.as_str())
}

/// The envelope format this build writes.
pub const ENVELOPE_VERSION: u16 = 1;

/// The bincode configuration of the wire format (varint integers).
fn wire() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// What a job asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobKind {
    /// A new certificate (or new domains for a name).
    Issue,
    /// A fresh certificate for a name that has one.
    Renew,
    /// Revoke the current certificate of a name.
    Revoke,
}

impl JobKind {
    /// The routing-key word.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Issue => "issue",
            JobKind::Renew => "renew",
            JobKind::Revoke => "revoke",
        }
    }
}

/// How the CA validates control of the names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChallengeType {
    /// A file under `/.well-known/acme-challenge/` on port 80.
    Http01,
    /// A TXT record at `_acme-challenge.<name>`.
    Dns01,
}

impl ChallengeType {
    /// The ACME and routing-key spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeType::Http01 => "http-01",
            ChallengeType::Dns01 => "dns-01",
        }
    }
}

impl fmt::Display for ChallengeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ChallengeType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "http-01" => Ok(Self::Http01),
            "dns-01" => Ok(Self::Dns01),
            other => Err(format!("unknown challenge {other:?} (http-01 or dns-01)")),
        }
    }
}

/// The certificate's key algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum KeyType {
    /// ECDSA P-256 with SHA-256: small, fast, accepted everywhere today.
    #[default]
    EcdsaP256,
    /// ECDSA P-384 with SHA-384.
    EcdsaP384,
    /// RSA 2048.
    Rsa2048,
    /// RSA 3072.
    Rsa3072,
    /// RSA 4096.
    Rsa4096,
}

impl KeyType {
    /// The command-line spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::EcdsaP384 => "ecdsa-p384",
            KeyType::Rsa2048 => "rsa-2048",
            KeyType::Rsa3072 => "rsa-3072",
            KeyType::Rsa4096 => "rsa-4096",
        }
    }

    /// Every key type, for help texts.
    pub const ALL: [KeyType; 5] = [
        KeyType::EcdsaP256,
        KeyType::EcdsaP384,
        KeyType::Rsa2048,
        KeyType::Rsa3072,
        KeyType::Rsa4096,
    ];
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown key type {s:?} (one of {})",
                    Self::ALL.map(KeyType::as_str).join(", ")
                )
            })
    }
}

/// The job itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// The certificate's name.
    pub name: CertName,
    /// Normalized domain names, first one first. Empty in a renew job:
    /// the worker renews with the domains of the stored certificate.
    pub domains: Vec<String>,
    /// Key algorithm. In a renew job with empty `domains`, the stored
    /// certificate's key type applies instead.
    pub key_type: KeyType,
    /// Challenge type.
    pub challenge: ChallengeType,
    /// Why the job exists (`cli`, `due`, `bulk`, …), for logs and status.
    pub reason: String,
}

/// The versioned envelope around a [`Job`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Format version; always the first field.
    pub version: u16,
    /// Unique id, printed by `certfleet issue` and carried by events.
    pub job_id: Uuid,
    /// What to do.
    pub kind: JobKind,
    /// When the job was accepted, Unix milliseconds.
    pub created_at_ms: i64,
    /// 1 for the first delivery; incremented by each retry.
    pub attempt: u32,
    /// The job.
    pub job: Job,
}

/// Why a message body is not a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// An envelope version this build does not read.
    #[error("unknown envelope version {0} (this worker reads version {ENVELOPE_VERSION})")]
    UnknownVersion(u16),
    /// Not bincode, or not an envelope.
    #[error("undecodable job body: {0}")]
    Malformed(String),
    /// Could not encode (should not happen).
    #[error("cannot encode job: {0}")]
    Encode(String),
}

impl Classify for CodecError {
    fn disposition(&self) -> Disposition {
        Disposition::Fail
    }
}

impl Envelope {
    /// A new first-attempt envelope for `job`.
    pub fn new(kind: JobKind, job: Job, now_ms: i64) -> Self {
        Self {
            version: ENVELOPE_VERSION,
            job_id: Uuid::now_v7(),
            kind,
            created_at_ms: now_ms,
            attempt: 1,
            job,
        }
    }

    /// A renew job for a stored certificate: `domains` empty, so the worker
    /// renews the stored domains with the stored key type.
    pub fn renewal(name: CertName, challenge: ChallengeType, reason: &str, now_ms: i64) -> Self {
        Self::new(
            JobKind::Renew,
            Job {
                name,
                domains: Vec::new(),
                key_type: KeyType::default(),
                challenge,
                reason: reason.to_string(),
            },
            now_ms,
        )
    }

    /// The routing key: [`routing_key`] of its kind and challenge.
    pub fn routing_key(&self) -> String {
        routing_key(self.kind, self.job.challenge)
    }

    /// Encodes to the wire format.
    ///
    /// # Errors
    /// Only if serialization fails, which a valid envelope never does.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        bincode::serde::encode_to_vec(self, wire()).map_err(|e| CodecError::Encode(e.to_string()))
    }

    /// Decodes from the wire format, checking the version first.
    ///
    /// # Errors
    /// [`CodecError::UnknownVersion`] or [`CodecError::Malformed`].
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let (version, _): (u16, usize) = bincode::serde::decode_from_slice(bytes, wire())
            .map_err(|e| CodecError::Malformed(e.to_string()))?;
        if version != ENVELOPE_VERSION {
            return Err(CodecError::UnknownVersion(version));
        }
        let (envelope, used): (Self, usize) = bincode::serde::decode_from_slice(bytes, wire())
            .map_err(|e| CodecError::Malformed(e.to_string()))?;
        if used != bytes.len() {
            return Err(CodecError::Malformed(format!(
                "{} bytes after the envelope",
                bytes.len() - used
            )));
        }
        Ok(envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn sample() -> Envelope {
        Envelope {
            version: ENVELOPE_VERSION,
            job_id: Uuid::from_u128(0x0192_0000_0000_7000_8000_0000_0000_0001),
            kind: JobKind::Issue,
            created_at_ms: 1_764_000_000_000,
            attempt: 1,
            job: Job {
                name: CertName::parse("www.example.com").expect("valid"),
                domains: vec!["www.example.com".into(), "example.com".into()],
                key_type: KeyType::EcdsaP256,
                challenge: ChallengeType::Http01,
                reason: "cli".into(),
            },
        }
    }

    #[test]
    fn round_trip() -> Result<(), CodecError> {
        let e = sample();
        let bytes = e.encode()?;
        assert_eq!(bytes[0], 1, "version is the first byte");
        assert_eq!(Envelope::decode(&bytes)?, e);
        assert_eq!(e.routing_key(), "job.issue.http-01");
        Ok(())
    }

    /// Envelope version 1 as shipped; must decode forever.
    #[test]
    fn fixture_v1_decodes() -> Result<(), CodecError> {
        let hex = include_str!("../tests/fixtures/job-envelope-v1.hex");
        let bytes: Vec<u8> = (0..hex.trim().len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex.trim()[i..i + 2], 16).expect("hex fixture"))
            .collect();
        assert_eq!(Envelope::decode(&bytes)?, sample());
        Ok(())
    }

    #[test]
    fn garbage_and_future_versions_are_refused() -> Result<(), CodecError> {
        assert!(matches!(
            Envelope::decode(b""),
            Err(CodecError::Malformed(_))
        ));
        assert!(matches!(
            Envelope::decode(b"\x01garbage"),
            Err(CodecError::Malformed(_))
        ));
        let mut bytes = sample().encode()?;
        bytes[0] = 2;
        assert_eq!(Envelope::decode(&bytes), Err(CodecError::UnknownVersion(2)));
        let mut bytes = sample().encode()?;
        bytes.push(0);
        assert!(matches!(
            Envelope::decode(&bytes),
            Err(CodecError::Malformed(_))
        ));
        Ok(())
    }

    #[test]
    fn invalid_name_inside_is_malformed() -> Result<(), CodecError> {
        let mut e = sample();
        e.job.name = CertName::parse("ok.example.com").expect("valid");
        let bytes = e.encode()?;
        let pos = bytes
            .windows(14)
            .position(|w| w == b"ok.example.com")
            .expect("name in bytes");
        let mut bad = bytes.clone();
        bad[pos] = b'/';
        assert!(matches!(
            Envelope::decode(&bad),
            Err(CodecError::Malformed(_))
        ));
        Ok(())
    }

    #[test]
    fn parse_spellings() {
        assert_eq!("rsa-3072".parse(), Ok(KeyType::Rsa3072));
        assert!("rsa-1024".parse::<KeyType>().is_err());
        assert_eq!("dns-01".parse(), Ok(ChallengeType::Dns01));
    }

    #[test]
    fn routing_keys() {
        assert_eq!(
            routing_key(JobKind::Renew, ChallengeType::Dns01),
            "job.renew.dns-01"
        );
    }
}
