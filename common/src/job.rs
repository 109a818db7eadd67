//! Jobs: what the producer asks and the workers do, and their wire format.
//!
//! A job travels as bincode (2.x, serde) inside a small versioned
//! [`Envelope`]. The version is the first field, so a worker reads it before
//! anything else and dead-letters a message from the future (or garbage)
//! with a reason instead of misreading it. Rules for changing the format:
//! append enum variants at the end, never reorder fields; anything else
//! bumps [`ENVELOPE_VERSION`] and keeps a decoder for every shipped version
//! (fixtures in `common/tests/fixtures/`).
//!
//! Every byte of a job comes from the network, so decoding is bounded: a
//! body longer than [`MAX_BODY_LEN`] is refused before it is looked at, and
//! the decoder may claim at most [`DECODE_LIMIT`] bytes, so a length prefix
//! that claims a huge string or list is an error instead of an allocation.
//! What decodes is checked once more by [`Envelope::validate`] before a
//! worker spends anything on it.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{self, CertName, DomainError, MAX_DOMAINS};
use crate::error::{Classify, Disposition};

/// A job's routing key on the jobs exchange: `job.<kind>.<challenge>`, so a
/// worker pool that can serve only some challenges binds only those.
pub fn routing_key(kind: JobKind, challenge: ChallengeType) -> String {
    format!("job.{}.{}", kind.as_str(), challenge.as_str())
}

/// RFC 5280 reason names a revoke job may carry (`certfleet revoke
/// --reason`). A revoke job's `reason` is `<reason> <serial>`.
pub const REVOCATION_REASONS: [&str; 6] = [
    "unspecified",
    "keyCompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "privilegeWithdrawn",
];

/// The newest envelope format this build reads and writes: version 2 adds
/// [`Job::options`]. A job without options is still written as version 1,
/// which every worker reads, so a fleet can be upgraded worker by worker;
/// only a job that uses an option needs workers of version 2.
pub const ENVELOPE_VERSION: u16 = 2;

/// The first envelope format: [`Job`] without `options`.
pub const ENVELOPE_V1: u16 = 1;

/// The options a job may carry (version 2), each a string:
/// - `profile`: the ACME profile to order (`certfleet issue --profile`);
/// - `ca`: the issuer to ask first (`certfleet issue --ca`);
/// - `csr`: the operator's CSR, base64 DER (`certfleet issue --csr`,
///   `--key-file`): ordered as is, no key made;
/// - `key`: with `csr` from `--key-file`, the operator's key sealed for the
///   name ([`crate::storage::KeyScope::Name`]), stored in every version's
///   bundle as is.
pub const JOB_OPTIONS: [&str; 4] = [OPTION_PROFILE, OPTION_CA, OPTION_CSR, OPTION_KEY];

/// The ACME profile option.
pub const OPTION_PROFILE: &str = "profile";

/// The issuer option.
pub const OPTION_CA: &str = "ca";

/// The CSR option.
pub const OPTION_CSR: &str = "csr";

/// The sealed-key option.
pub const OPTION_KEY: &str = "key";

/// The longest option value (a profile name is a short token) but for
/// [`OPTION_CSR`] and [`OPTION_KEY`].
pub const MAX_OPTION_LEN: usize = 256;

/// The longest [`OPTION_CSR`] or [`OPTION_KEY`] value: base64 of a CSR of
/// [`crate::csr::MAX_CSR_LEN`] is 10.9 KiB; a sealed RSA 4096 key to a few
/// recipients about 6 KiB. With the largest domain list (25.5 KiB) the body
/// stays under [`MAX_BODY_LEN`].
pub const MAX_LONG_OPTION_LEN: usize = 16 * 1024;

/// The longest job body a worker (or `certfleet dlq`) decodes; longer ones
/// are undecodable without a look inside.
///
/// The largest valid job carries [`MAX_DOMAINS`] names of
/// [`domain::MAX_NAME_LEN`] characters: 100 × (253 + 2 bytes of length) ≈
/// 25.5 KiB, plus a certificate name of at most 200 characters, a reason of
/// a few characters and ~40 bytes of fixed fields. 64 KiB is more than twice
/// that, so no job the CLI can submit comes near it, while a hostile body of
/// many MiB is refused before any work.
pub const MAX_BODY_LEN: usize = 64 * 1024;

/// The most bytes the decoder may claim while decoding one body (bincode's
/// `with_limit`). Every string claims its length and every integer its
/// in-memory size before anything is allocated, and a list claims
/// `len × size_of::<element>()` (24 bytes per name) while it fills, so a
/// valid body claims about as much as it is long (the largest valid job
/// ≈ 28 KiB). The same figure as [`MAX_BODY_LEN`]: a length prefix that
/// claims more than the body could hold is refused before any allocation.
pub const DECODE_LIMIT: usize = MAX_BODY_LEN;

/// The bincode configuration of the wire format (varint integers).
fn wire() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// [`wire`] with the decode limit: the same encoding, bounded claims.
fn wire_bounded() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
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
    /// Store a certificate obtained elsewhere (lego, certbot), staged in
    /// storage by `certfleet import` ([`crate::storage::Keys::import`]),
    /// through the same fenced path as an issued one.
    Import,
}

impl JobKind {
    /// The routing-key word.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Issue => "issue",
            JobKind::Renew => "renew",
            JobKind::Revoke => "revoke",
            JobKind::Import => "import",
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
    /// A TLS handshake on port 443 with the `acme-tls/1` protocol and a
    /// certificate carrying the key authorization's digest (RFC 8737).
    TlsAlpn01,
}

impl ChallengeType {
    /// Every challenge type, for help texts.
    pub const ALL: [ChallengeType; 3] = [
        ChallengeType::Http01,
        ChallengeType::Dns01,
        ChallengeType::TlsAlpn01,
    ];

    /// Whether it can prove a wildcard name (only dns-01 can: RFC 8555
    /// §7.1.3, RFC 8737 §3).
    pub fn proves_wildcards(self) -> bool {
        self == ChallengeType::Dns01
    }

    /// The ACME and routing-key spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeType::Http01 => "http-01",
            ChallengeType::Dns01 => "dns-01",
            ChallengeType::TlsAlpn01 => "tls-alpn-01",
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
            "tls-alpn-01" => Ok(Self::TlsAlpn01),
            other => Err(format!(
                "unknown challenge {other:?} (http-01, dns-01 or tls-alpn-01)"
            )),
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
    /// Options beyond the above ([`JOB_OPTIONS`]); empty in most jobs.
    /// Envelope version 2.
    pub options: BTreeMap<String, String>,
}

impl Job {
    /// The ACME profile this job asks for.
    pub fn profile(&self) -> Option<&str> {
        self.options.get(OPTION_PROFILE).map(String::as_str)
    }

    /// The issuer this job asks for first.
    pub fn ca(&self) -> Option<&str> {
        self.options.get(OPTION_CA).map(String::as_str)
    }

    /// The operator's CSR this job orders with, as carried (base64 DER).
    pub fn csr(&self) -> Option<&str> {
        self.options.get(OPTION_CSR).map(String::as_str)
    }

    /// The operator's key sealed for the name (`--key-file`), as carried
    /// (the [`crate::seal::SealedKey`] JSON).
    pub fn sealed_key(&self) -> Option<&str> {
        self.options.get(OPTION_KEY).map(String::as_str)
    }
}

/// [`Job`] as envelope version 1 carries it (no options).
#[derive(Serialize, Deserialize)]
struct JobV1 {
    name: CertName,
    domains: Vec<String>,
    key_type: KeyType,
    challenge: ChallengeType,
    reason: String,
}

/// [`Envelope`] version 1.
#[derive(Serialize, Deserialize)]
struct EnvelopeV1 {
    version: u16,
    job_id: Uuid,
    kind: JobKind,
    created_at_ms: i64,
    attempt: u32,
    job: JobV1,
}

/// The versioned envelope around a [`Job`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Format version, always the first field: as read, or as [`Envelope::encode`]
    /// will write it (1 without options, 2 with).
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
    #[error(
        "unknown envelope version {0} (this worker reads versions {ENVELOPE_V1} to {ENVELOPE_VERSION})"
    )]
    UnknownVersion(u16),
    /// Not bincode, or not an envelope (a length prefix that claims more
    /// than [`DECODE_LIMIT`] included).
    #[error("undecodable job body: {0}")]
    Malformed(String),
    /// A body longer than [`MAX_BODY_LEN`], refused without decoding.
    #[error("undecodable job body: {0} bytes, more than the limit of {MAX_BODY_LEN}")]
    TooLarge(usize),
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
        let version = if job.options.is_empty() {
            ENVELOPE_V1
        } else {
            ENVELOPE_VERSION
        };
        Self {
            version,
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
                options: BTreeMap::new(),
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
    /// A job without options is written as version 1 (every worker reads
    /// it), one with options as version 2.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let encoded = if self.job.options.is_empty() {
            let v1 = EnvelopeV1 {
                version: ENVELOPE_V1,
                job_id: self.job_id,
                kind: self.kind,
                created_at_ms: self.created_at_ms,
                attempt: self.attempt,
                job: JobV1 {
                    name: self.job.name.clone(),
                    domains: self.job.domains.clone(),
                    key_type: self.job.key_type,
                    challenge: self.job.challenge,
                    reason: self.job.reason.clone(),
                },
            };
            bincode::serde::encode_to_vec(&v1, wire())
        } else {
            let mut v2 = self.clone();
            v2.version = ENVELOPE_VERSION;
            bincode::serde::encode_to_vec(&v2, wire())
        };
        encoded.map_err(|e| CodecError::Encode(e.to_string()))
    }

    /// Decodes from the wire format, checking the size, then the version,
    /// then the whole envelope with at most [`DECODE_LIMIT`] bytes claimed.
    ///
    /// # Errors
    /// [`CodecError::TooLarge`], [`CodecError::UnknownVersion`] or
    /// [`CodecError::Malformed`].
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        if bytes.len() > MAX_BODY_LEN {
            return Err(CodecError::TooLarge(bytes.len()));
        }
        let (version, _): (u16, usize) = bincode::serde::decode_from_slice(bytes, wire_bounded())
            .map_err(|e| CodecError::Malformed(e.to_string()))?;
        let malformed = |e: bincode::error::DecodeError| CodecError::Malformed(e.to_string());
        let (envelope, used): (Self, usize) = match version {
            ENVELOPE_V1 => {
                let (v1, used): (EnvelopeV1, usize) =
                    bincode::serde::decode_from_slice(bytes, wire_bounded()).map_err(malformed)?;
                let envelope = Envelope {
                    version: v1.version,
                    job_id: v1.job_id,
                    kind: v1.kind,
                    created_at_ms: v1.created_at_ms,
                    attempt: v1.attempt,
                    job: Job {
                        name: v1.job.name,
                        domains: v1.job.domains,
                        key_type: v1.job.key_type,
                        challenge: v1.job.challenge,
                        reason: v1.job.reason,
                        options: BTreeMap::new(),
                    },
                };
                (envelope, used)
            }
            ENVELOPE_VERSION => {
                bincode::serde::decode_from_slice(bytes, wire_bounded()).map_err(malformed)?
            }
            other => return Err(CodecError::UnknownVersion(other)),
        };
        if used != bytes.len() {
            return Err(CodecError::Malformed(format!(
                "{} bytes after the envelope",
                bytes.len() - used
            )));
        }
        Ok(envelope)
    }
}

/// Why a decoded job cannot be done as asked.
///
/// The producer's validation (`certfleet issue`, `submit`) makes none of
/// these, but a job can reach the queue by other paths (a replayed dead
/// letter, an older producer, anyone with publish rights), so a worker checks
/// again with [`Envelope::validate`] before spending a lease, an order or a
/// rate-limit slot on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidJob {
    /// A name the CLI would refuse, too many names, none in an issue job,
    /// or a bad certificate name.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// A valid name in another spelling than the normalized one (upper case,
    /// a trailing dot, Unicode): names are compared and stored normalized.
    #[error("domain {given:?} is not normalized (it would be {normalized:?})")]
    NotNormalized {
        /// As in the job.
        given: String,
        /// As [`domain::normalize_domain`] writes it.
        normalized: String,
    },
    /// The same name twice.
    #[error("domain {0:?} is listed twice")]
    Duplicate(String),
    /// A wildcard with http-01 (RFC 8555 §7.1.3: only dns-01 proves a zone).
    #[error("wildcard {0:?} needs the dns-01 challenge")]
    WildcardNeedsDns01(String),
    /// An option this build does not know, or a bad value.
    #[error("job option {0}")]
    BadOption(String),
}

/// An issuer name: 1 to 32 lower-case letters, digits or `-` (as the
/// workers' `CERTFLEET_ACME_ISSUERS` names them).
///
/// # Errors
/// Why the name is not one.
pub fn check_issuer(name: &str) -> Result<(), String> {
    let ok = (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "issuer {name:?}: 1 to 32 lower-case letters, digits or '-'"
        ))
    }
}

/// A profile name: what CAs use (`classic`, `tlsserver`, `shortlived`), a
/// token of letters, digits, `-`, `_` and `.`, at most 64 characters.
///
/// # Errors
/// Why the name is not one.
pub fn check_profile(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("profile {name:?}: 1 to 64 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "profile {name:?}: only letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

impl Envelope {
    /// Checks what decoding cannot: at most [`MAX_DOMAINS`] names (at least
    /// one in an issue job; a renew job may carry none), each normalized as
    /// [`domain::normalize_domain`] would write it and listed once,
    /// wildcards only with dns-01, and a valid certificate name. The key
    /// type and challenge need no check: a value this build does not know
    /// does not decode.
    ///
    /// # Errors
    /// The first rule the job breaks.
    pub fn validate(&self) -> Result<(), InvalidJob> {
        let job = &self.job;
        // The count first: nothing below runs for more than MAX_DOMAINS names.
        if job.domains.len() > MAX_DOMAINS {
            return Err(DomainError::TooMany(job.domains.len()).into());
        }
        if job.domains.is_empty() && matches!(self.kind, JobKind::Issue | JobKind::Import) {
            return Err(DomainError::NoDomains.into());
        }
        CertName::parse(job.name.as_str())?;
        let mut seen: HashSet<&str> = HashSet::with_capacity(job.domains.len());
        for given in &job.domains {
            let normalized = domain::normalize_domain(given)?;
            if normalized != *given {
                return Err(InvalidJob::NotNormalized {
                    given: given.clone(),
                    normalized,
                });
            }
            if !seen.insert(given) {
                return Err(InvalidJob::Duplicate(given.clone()));
            }
            if domain::is_wildcard(given) && job.challenge != ChallengeType::Dns01 {
                return Err(InvalidJob::WildcardNeedsDns01(given.clone()));
            }
        }
        for (key, value) in &job.options {
            if !JOB_OPTIONS.contains(&key.as_str()) {
                return Err(InvalidJob::BadOption(format!(
                    "{key:?} is unknown to this worker (it knows {})",
                    JOB_OPTIONS.join(", ")
                )));
            }
            let max = if key == OPTION_CSR || key == OPTION_KEY {
                MAX_LONG_OPTION_LEN
            } else {
                MAX_OPTION_LEN
            };
            if value.len() > max {
                return Err(InvalidJob::BadOption(format!("{key}: value too long")));
            }
        }
        if let Some(text) = job.csr() {
            let csr = crate::csr::Csr::decode(text)
                .map_err(|e| InvalidJob::BadOption(format!("csr: {e}")))?;
            if !job.domains.is_empty() && !csr.names_are(&job.domains) {
                return Err(InvalidJob::BadOption(format!(
                    "csr: it names {}, the job {}",
                    csr.domains.join(", "),
                    job.domains.join(", ")
                )));
            }
        }
        if let Some(text) = job.sealed_key() {
            if job.csr().is_none() {
                return Err(InvalidJob::BadOption("key: given without csr".into()));
            }
            serde_json::from_str::<crate::seal::SealedKey>(text)
                .map_err(|e| InvalidJob::BadOption(format!("key: not a sealed key ({e})")))?;
        }
        if let Some(p) = job.profile() {
            check_profile(p).map_err(InvalidJob::BadOption)?;
        }
        if let Some(ca) = job.ca() {
            check_issuer(ca).map_err(InvalidJob::BadOption)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csr_option_must_be_a_csr_of_the_jobs_names() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["www.example.com".to_string()]).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        let der = params.serialize_request(&key).expect("csr").der().to_vec();
        let csr = crate::csr::Csr::from_der(&der).expect("csr");
        let mut e = sample();
        e.job.domains = vec!["www.example.com".into()];
        e.job.options.insert(OPTION_CSR.into(), csr.encode());
        assert_eq!(e.validate(), Ok(()));
        e.job.domains = vec!["other.example.com".into()];
        assert!(
            matches!(e.validate(), Err(InvalidJob::BadOption(m)) if m.contains("the job other.example.com"))
        );
        e.job.domains = vec!["www.example.com".into()];
        e.job.options.insert(OPTION_CSR.into(), "AAAA".into());
        assert!(matches!(e.validate(), Err(InvalidJob::BadOption(m)) if m.starts_with("csr:")));
        e.job.options.insert(OPTION_CSR.into(), csr.encode());
        e.job
            .options
            .insert(OPTION_KEY.into(), "{\"type\":\"nonsense\"}".into());
        assert!(matches!(e.validate(), Err(InvalidJob::BadOption(m)) if m.starts_with("key:")));
        e.job.options.remove(OPTION_CSR);
        e.job.options.insert(OPTION_KEY.into(), "{}".into());
        assert!(matches!(e.validate(), Err(InvalidJob::BadOption(m)) if m.contains("without csr")));
        e.job.options.clear();
        e.job
            .options
            .insert(OPTION_CSR.into(), "A".repeat(MAX_LONG_OPTION_LEN + 1));
        assert!(matches!(e.validate(), Err(InvalidJob::BadOption(m)) if m.contains("too long")));
    }

    pub(super) fn sample() -> Envelope {
        Envelope {
            version: ENVELOPE_V1,
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
                options: BTreeMap::new(),
            },
        }
    }

    #[test]
    fn round_trip() -> Result<(), CodecError> {
        let mut e = sample();
        e.version = ENVELOPE_V1;
        let bytes = e.encode()?;
        assert_eq!(bytes[0], 1, "a job without options is version 1");
        assert_eq!(Envelope::decode(&bytes)?, e);
        assert_eq!(e.routing_key(), "job.issue.http-01");
        // With an option: version 2, and the option survives.
        e.job
            .options
            .insert(OPTION_PROFILE.into(), "shortlived".into());
        let bytes = e.encode()?;
        assert_eq!(bytes[0], 2);
        let back = Envelope::decode(&bytes)?;
        assert_eq!(back.version, ENVELOPE_VERSION);
        assert_eq!(back.job.profile(), Some("shortlived"));
        assert_eq!(back.job, e.job);
        Ok(())
    }

    #[test]
    fn options_are_checked() {
        let mut e = sample();
        e.job.options.insert("colour".into(), "blue".into());
        assert!(matches!(e.validate(), Err(InvalidJob::BadOption(m)) if m.contains("colour")));
        let mut e = sample();
        e.job
            .options
            .insert(OPTION_PROFILE.into(), "short lived".into());
        assert!(matches!(e.validate(), Err(InvalidJob::BadOption(_))));
        let mut e = sample();
        e.job
            .options
            .insert(OPTION_PROFILE.into(), "tlsserver".into());
        assert_eq!(e.validate(), Ok(()));
    }

    /// Envelope version 1 as shipped; must decode forever.
    #[test]
    fn fixture_v1_decodes() -> Result<(), CodecError> {
        let hex = include_str!("../tests/fixtures/job-envelope-v1.hex");
        let bytes: Vec<u8> = (0..hex.trim().len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex.trim()[i..i + 2], 16).expect("hex fixture"))
            .collect();
        let mut want = sample();
        want.version = ENVELOPE_V1;
        assert_eq!(Envelope::decode(&bytes)?, want);
        // And is written back byte for byte.
        assert_eq!(want.encode()?, bytes);
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
        bytes[0] = 3;
        assert_eq!(Envelope::decode(&bytes), Err(CodecError::UnknownVersion(3)));
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

    /// `sample()` encoded, with the length prefix of the first string after
    /// `field` (its bytes as encoded) replaced by the varint `claim`.
    fn with_claimed_len(field: &[u8], claim: u64) -> Vec<u8> {
        let bytes = sample().encode().expect("encodes");
        let at = bytes
            .windows(field.len())
            .position(|w| w == field)
            .expect("field in bytes");
        // bincode varint: 0xfd, then the u64 little-endian.
        let mut out = bytes[..at].to_vec();
        out.push(0xfd);
        out.extend_from_slice(&claim.to_le_bytes());
        out.extend_from_slice(&bytes[at + 1..]);
        out
    }

    #[test]
    fn huge_length_prefixes_are_refused_without_allocating() {
        // The certificate name's length (0x0f "www.example.com"), then the
        // domain list's (0x02 0x0f ...): each claims 2^40 bytes or entries.
        // Unbounded, the first is a 1 TiB allocation that aborts the process.
        for (field, what) in [
            (&b"\x0fwww.example.com\x02"[..], "string"),
            (&b"\x02\x0fwww.example.com"[..], "list"),
        ] {
            for claim in [1u64 << 40, u64::MAX / 2, u64::MAX] {
                let bad = with_claimed_len(field, claim);
                assert!(
                    matches!(Envelope::decode(&bad), Err(CodecError::Malformed(_))),
                    "{what} claiming {claim}"
                );
            }
        }
    }

    #[test]
    fn bodies_over_the_limit_are_refused_before_decoding() -> Result<(), CodecError> {
        let mut big = sample().encode()?;
        big.resize(MAX_BODY_LEN + 1, 0);
        assert_eq!(
            Envelope::decode(&big),
            Err(CodecError::TooLarge(MAX_BODY_LEN + 1))
        );
        assert!(
            Envelope::decode(&vec![1u8; 20 << 20])
                .map(|_| ())
                .unwrap_err()
                .to_string()
                .contains("more than the limit of 65536")
        );
        Ok(())
    }

    /// The largest valid job (100 names of 253 characters, the longest
    /// certificate name) fits both limits with room to spare.
    #[test]
    fn the_largest_valid_job_decodes() -> Result<(), CodecError> {
        let label = "a".repeat(63);
        let mut e = sample();
        e.job.domains = (0..MAX_DOMAINS)
            .map(|i| format!("{label}.{label}.{label}.{}{i:03}.com", "b".repeat(54)))
            .collect();
        assert!(e.job.domains.iter().all(|d| d.len() == 253));
        e.job.name = CertName::parse(&"n".repeat(200)).expect("valid");
        assert_eq!(e.validate(), Ok(()));
        let bytes = e.encode()?;
        assert!(bytes.len() < MAX_BODY_LEN / 2, "{} bytes", bytes.len());
        assert_eq!(Envelope::decode(&bytes)?, e);
        Ok(())
    }

    #[test]
    fn validation() {
        let ok = sample();
        assert_eq!(ok.validate(), Ok(()));
        let with = |domains: &[&str], challenge: ChallengeType| {
            let mut e = sample();
            e.job.domains = domains.iter().map(|d| (*d).to_string()).collect();
            e.job.challenge = challenge;
            e.validate()
        };
        let http = ChallengeType::Http01;
        for (domains, want) in [
            (&["not a domain!!"][..], "contains ' '"),
            (&["192.0.2.1"][..], "IP address"),
            (&["localhost"][..], "not a fully qualified"),
            (&["WWW.example.com"][..], "not normalized"),
            (&["www.example.com."][..], "not normalized"),
            (&["a.example.com", "a.example.com"][..], "listed twice"),
            (&["*.example.com"][..], "needs the dns-01"),
            (&[][..], "no domain names"),
        ] {
            let err = with(domains, http)
                .map(|()| String::new())
                .unwrap_or_else(|e| e.to_string());
            assert!(err.contains(want), "{domains:?}: {err:?}");
        }
        let many: Vec<String> = (0..=MAX_DOMAINS)
            .map(|i| format!("h{i}.example.com"))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(with(&many, http), Err(DomainError::TooMany(101).into()));
        assert_eq!(
            with(&["*.example.com", "example.com"], ChallengeType::Dns01),
            Ok(())
        );
        // A renew job may leave the names to the stored certificate.
        let renew = Envelope::renewal(ok.job.name.clone(), http, "due", 0);
        assert_eq!(renew.validate(), Ok(()));
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
