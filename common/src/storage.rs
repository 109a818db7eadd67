//! Object storage: the key layout and the typed reads and writes on it.
//!
//! ```text
//! <prefix>certs/<name>/current.json                  the pointer: small, replaced on each new version
//! <prefix>certs/<name>/versions/<version>.json       one immutable bundle per version
//! <prefix>accounts/<directory hash>.json             the fleet's ACME account for one CA
//! ```
//!
//! A new version is written in full under its own key (with `If-None-Match:
//! *`, so it can never overwrite anything) before the pointer is replaced
//! (with `If-Match` on the ETag that was read, and only if the pointer's
//! fencing token is not newer than the writer's). A reader reads the pointer,
//! then the bundle it names: certificate, chain and key always come from one
//! object, so a reader never pairs a new certificate with an old key.
//! S3 is the source of truth; the Redis expiry index can be rebuilt from it.
//!
//! Every key is built here and nowhere else (certmagic's `KeyBuilder`).

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::config::{S3Config, StaticCredentials};
use crate::domain::CertName;
use crate::error::{Classify, Disposition};
use crate::event::Location;
use crate::job::KeyType;
use crate::seal::{SealError, SealedKey, Sealer};
use crate::secret::Secret;

/// Schema tag of pointers.
pub const POINTER_SCHEMA: &str = "certfleet.pointer.v1";
/// Schema tag of bundles.
pub const BUNDLE_SCHEMA: &str = "certfleet.bundle.v1";

/// Builds every object key.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (empty, or ending in `/`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// Prefix of all certificates.
    pub fn certs(&self) -> String {
        format!("{}certs/", self.prefix)
    }

    /// The pointer of a name.
    pub fn pointer(&self, name: &CertName) -> String {
        format!("{}certs/{name}/current.json", self.prefix)
    }

    /// Prefix of a name's versions.
    pub fn versions(&self, name: &CertName) -> String {
        format!("{}certs/{name}/versions/", self.prefix)
    }

    /// The bundle of one version.
    pub fn bundle(&self, name: &CertName, version: &str) -> String {
        format!("{}certs/{name}/versions/{version}.json", self.prefix)
    }

    /// An import's staged bundle (`certfleet import` writes it, the import
    /// job's worker makes it a version and deletes it).
    pub fn import(&self, job_id: &Uuid) -> String {
        format!("{}imports/{job_id}.json", self.prefix)
    }

    /// A worker's start-up probe (written, rewritten and deleted at start
    /// to check the bucket and its conditional writes).
    pub fn probe(&self, worker_id: &str) -> String {
        format!("{}probes/{worker_id}.json", self.prefix)
    }

    /// The account record for a CA directory.
    pub fn account(&self, directory: &str) -> String {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, directory.as_bytes());
        let hex: String = d.as_ref()[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{}accounts/{hex}.json", self.prefix)
    }

    /// The name a pointer key belongs to, if it is one.
    pub(crate) fn name_of_pointer(&self, key: &str) -> Option<CertName> {
        let rest = key.strip_prefix(&self.certs())?;
        let name = rest.strip_suffix("/current.json")?;
        CertName::parse(name).ok()
    }
}

/// The CERTIFICATE blocks of a PEM text, each with its BEGIN and END lines
/// and a final newline (a chain as the CA or a tool wrote it, split).
pub fn split_certificates(pem: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(end) = rest.find(END) {
        let block = &rest[..end + END.len()];
        let start = block.find("-----BEGIN").unwrap_or(0);
        out.push(format!("{}\n", &block[start..]));
        rest = &rest[end + END.len()..];
    }
    out
}

/// The stored form of a serial number (pointers, bundles, version ids):
/// the DER integer's bytes in lower-case hex without leading zero digits
/// (`915f959810e6736`; `0` for zero). People and scripts get
/// [`serial_display`].
pub fn serial_stored(der_bytes: &[u8]) -> String {
    let hex: String = der_bytes.iter().map(|b| format!("{b:02x}")).collect();
    match hex.trim_start_matches('0') {
        "" => "0".to_string(),
        s => s.to_string(),
    }
}

/// A serial as the certificate encodes it and `openssl x509 -serial`
/// prints it: whole bytes, upper-case hex (`0915F959810E6736` for the
/// stored `915f959810e6736`). What events, `status`, `list` and hooks show,
/// so a script can compare it with openssl's. Accepts either form.
pub fn serial_display(serial: &str) -> String {
    let s = serial.trim_start_matches('0');
    let s = if s.is_empty() { "0" } else { s };
    let padded = if s.len() % 2 == 1 {
        format!("0{s}")
    } else {
        s.to_string()
    };
    padded.to_ascii_uppercase()
}

/// A version id: sortable by notBefore to the second, unique by serial
/// (`20261125T083000Z-3f1a9c0b2e7d4a5b`). Two versions of one second (a
/// renewal right after issuance) do not order by their text: the pointer
/// says which is current.
pub fn version_id(at: OffsetDateTime, serial_hex: &str) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    let serial: String = serial_hex.chars().take(32).collect();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z-{serial}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// The small object naming a certificate's current version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pointer {
    /// Always [`POINTER_SCHEMA`].
    pub schema: String,
    /// Certificate name.
    pub name: CertName,
    /// Current version id.
    pub version: String,
    /// Key of the current bundle.
    pub bundle_key: String,
    /// Serial, hex.
    pub serial: String,
    /// Domains.
    pub domains: Vec<String>,
    /// Key type.
    pub key_type: KeyType,
    /// Validity start.
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// Validity end.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// When to renew.
    #[serde(with = "time::serde::rfc3339")]
    pub renew_at: OffsetDateTime,
    /// The job that stored this version.
    pub job_id: Uuid,
    /// Fencing token of the lease under which it was written.
    pub fence: u64,
    /// Earlier versions still kept, newest first.
    #[serde(default)]
    pub history: Vec<String>,
    /// When the pointer was written.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// How its names are validated (renew jobs route by it).
    #[serde(default = "default_challenge")]
    pub challenge: crate::job::ChallengeType,
    /// ARI certificate identifier (`base64url(AKI).base64url(serial)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ari_id: Option<String>,
    /// The ACME profile the certificate was ordered with (`issue
    /// --profile`); renewals order the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// The issuer (CA) of this version, by its name in the workers'
    /// configuration (`CERTFLEET_ACME_ISSUERS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The issuer asked for (`issue --ca`), kept for renewals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// Set once this version was revoked at the CA (`certfleet revoke`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<Revoked>,
    /// The operator's CSR it was ordered with (`issue --csr`,
    /// `--key-file`), base64 DER: renewals send it again, so the key stays
    /// the operator's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<String>,
}

/// A revocation recorded in the pointer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// When the CA accepted it.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// RFC 5280 reason name (`keyCompromise`, `superseded`, ...).
    pub reason: String,
    /// The revoke job.
    pub job_id: Uuid,
}

fn default_challenge() -> crate::job::ChallengeType {
    crate::job::ChallengeType::Http01
}

/// One stored version: certificate, chain and (sealed) key together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// Always [`BUNDLE_SCHEMA`].
    pub schema: String,
    /// Certificate name.
    pub name: CertName,
    /// Version id.
    pub version: String,
    /// The leaf certificate, PEM.
    pub cert_pem: String,
    /// The issuer chain, PEM (without the leaf).
    pub chain_pem: String,
    /// The private key; none when the operator holds it (`issue --csr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<SealedKey>,
    /// What the key is sealed for: this version (a key made for the
    /// order), or the name (the operator's key, `issue --key-file`, the
    /// same in every version).
    #[serde(default, skip_serializing_if = "KeyScope::is_version")]
    pub key_scope: KeyScope,
    /// The job that obtained it: lets a retry of that job find a bundle it
    /// stored but could not make current, instead of ordering again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<Uuid>,
    /// The issuer (CA) of this version, by its name in the workers'
    /// configuration: revoking it after it was superseded asks that CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Revoked after it was superseded (`certfleet revoke --reissue`); a
    /// revoked current version is marked in its pointer instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<Revoked>,
}

/// What a bundle's key is sealed for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyScope {
    /// One version ([`Bundle::seal_context`]).
    #[default]
    Version,
    /// Every version of the name ([`Bundle::name_context`]).
    Name,
}

impl KeyScope {
    fn is_version(&self) -> bool {
        *self == KeyScope::Version
    }
}

impl Bundle {
    /// The associated data a bundle's key is sealed with.
    pub fn seal_context(name: &CertName, version: &str) -> String {
        format!("bundle:{name}:{version}")
    }

    /// The associated data of the operator's key of a name (`issue
    /// --key-file`): one key for every version, so bound to the name only.
    pub fn name_context(name: &CertName) -> String {
        format!("bundle-key:{name}")
    }

    /// The associated data this bundle's key was sealed with.
    pub fn key_context(&self) -> String {
        match self.key_scope {
            KeyScope::Version => Self::seal_context(&self.name, &self.version),
            KeyScope::Name => Self::name_context(&self.name),
        }
    }
}

/// What went wrong with storage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The object does not exist.
    #[error("{0} does not exist")]
    NotFound(String),
    /// A conditional write lost: someone else wrote first.
    #[error("{0} was changed by someone else (conditional write refused)")]
    Conflict(String),
    /// The service could not be reached or answered with an error.
    #[error("object storage {op} {key}: {detail}")]
    Unavailable {
        /// Operation.
        op: &'static str,
        /// Key.
        key: String,
        /// Cause.
        detail: String,
    },
    /// The bucket itself: missing, or the credentials refused. Retried
    /// (a bucket recreated or a credential rotated heals it), and the
    /// reason names the bucket and the endpoint.
    #[error("object storage bucket {bucket} at {endpoint}: {detail}")]
    Bucket {
        /// The bucket.
        bucket: String,
        /// The endpoint (`AWS` when none is configured).
        endpoint: String,
        /// What the service said.
        detail: String,
    },
    /// An object that does not parse.
    #[error("{key} is not a valid {what}: {detail}")]
    Corrupt {
        /// Key.
        key: String,
        /// Expected content.
        what: &'static str,
        /// Cause.
        detail: String,
    },
    /// A sealed key that does not open.
    #[error(transparent)]
    Seal(#[from] SealError),
}

impl Classify for StorageError {
    fn disposition(&self) -> Disposition {
        match self {
            // A bucket or credentials that went away: retried on the usual
            // schedule (10 s … 2 h), never failed for good.
            StorageError::Unavailable { .. } | StorageError::Bucket { .. } => {
                Disposition::Retry { after: None }
            }
            StorageError::Conflict(_) => Disposition::Defer {
                after: std::time::Duration::from_secs(10),
            },
            StorageError::NotFound(_) | StorageError::Corrupt { .. } | StorageError::Seal(_) => {
                Disposition::Fail
            }
        }
    }
}

/// A write condition.
#[derive(Debug, Clone, Copy)]
pub enum Condition<'a> {
    /// Unconditional.
    None,
    /// Only if the key does not exist (`If-None-Match: *`).
    Absent,
    /// Only if the object still has this ETag (`If-Match`).
    Matches(&'a ETag),
}

/// An ETag, for conditional writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ETag(pub String);

/// Typed access to the bucket.
#[derive(Clone)]
pub struct Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// The endpoint, for messages (`AWS` when none is configured).
    endpoint: String,
    keys: Keys,
    sealer: Sealer,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("bucket", &self.bucket)
            .field("keys", &self.keys)
            .field("sealer", &self.sealer)
            .finish()
    }
}

/// S3 error codes that concern the bucket or the credentials, not an
/// object: a key read then is not "missing", the whole store is.
const BUCKET_CODES: &[&str] = &[
    "NoSuchBucket",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AllAccessDisabled",
    "InvalidBucketName",
    "ExpiredToken",
    "InvalidToken",
];

impl Store {
    /// What an S3 SDK error means for certfleet: a failed condition is
    /// [`StorageError::Conflict`], a missing key [`StorageError::NotFound`],
    /// a missing bucket or refused credentials [`StorageError::Bucket`]
    /// (naming bucket and endpoint), anything else
    /// [`StorageError::Unavailable`] (retried).
    pub fn sdk_error<E, R>(&self, op: &'static str, key: &str, err: SdkError<E, R>) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        match err.code() {
            Some(code) if BUCKET_CODES.contains(&code) => StorageError::Bucket {
                bucket: self.bucket.clone(),
                endpoint: self.endpoint.clone(),
                detail: match err.message() {
                    Some(m) => format!("{code}: {m} ({op} {key})"),
                    None => format!("{code} ({op} {key})"),
                },
            },
            _ => sdk_error(op, key, err),
        }
    }
}

fn sdk_error<E, R>(op: &'static str, key: &str, err: SdkError<E, R>) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let status = match &err {
        SdkError::ServiceError(e) => Some(format!("{:?}", e.raw())),
        _ => None,
    };
    let code = err.code().map(str::to_string);
    if code.as_deref() == Some("PreconditionFailed")
        || status
            .as_deref()
            .is_some_and(|s| s.contains("StatusCode(412)"))
    {
        return StorageError::Conflict(key.to_string());
    }
    if matches!(code.as_deref(), Some("NoSuchKey" | "NotFound"))
        || status
            .as_deref()
            .is_some_and(|s| s.contains("StatusCode(404)"))
    {
        return StorageError::NotFound(key.to_string());
    }
    let detail = match (code, err.message()) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c,
        _ => crate::error::chain(&err),
    };
    StorageError::Unavailable {
        op,
        key: key.to_string(),
        detail,
    }
}

impl Store {
    /// Builds the S3 client (credentials from the AWS chain unless given).
    /// Opens no connection.
    pub async fn connect(
        cfg: &S3Config,
        credentials: Option<StaticCredentials>,
        sealer: Sealer,
    ) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(cfg.region.clone()));
        if let Some(c) = credentials {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                c.access_key_id,
                c.secret_access_key.expose().clone(),
                None,
                None,
                "certfleet-static",
            ));
        }
        let shared = loader.load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(cfg.path_style)
            .retry_config(
                aws_sdk_s3::config::retry::RetryConfig::standard()
                    .with_max_attempts(3)
                    .with_initial_backoff(std::time::Duration::from_millis(200)),
            )
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(std::time::Duration::from_secs(5))
                    .operation_attempt_timeout(std::time::Duration::from_secs(20))
                    .build(),
            );
        if let Some(endpoint) = &cfg.endpoint {
            builder = builder.endpoint_url(endpoint.as_str().trim_end_matches('/'));
        }
        if cfg.tls.is_set() {
            match crate::s3_https::client(&cfg.tls) {
                Ok(client) => builder = builder.http_client(client),
                // Checked when the configuration loaded; the default client
                // then fails with a certificate error naming the endpoint.
                Err(e) => tracing::error!(error = %e, "S3 TLS settings not usable"),
            }
        }
        Self {
            client: aws_sdk_s3::Client::from_conf(builder.build()),
            bucket: cfg.bucket.clone(),
            endpoint: cfg.endpoint.as_ref().map_or_else(
                || "AWS".to_string(),
                |u| u.as_str().trim_end_matches('/').to_string(),
            ),
            keys: Keys::new(cfg.prefix.clone()),
            sealer,
        }
    }

    /// The store for a configuration (S3 settings, credentials, sealing key).
    pub async fn from_config(cfg: &crate::Config) -> Self {
        Self::connect(
            &cfg.s3,
            cfg.s3.credentials.clone(),
            Sealer::with(
                cfg.storage.encryption_key.clone(),
                cfg.storage.recipients.clone(),
                cfg.storage.identities.clone(),
            ),
        )
        .await
    }

    /// The endpoint, for messages (`AWS` when none is configured).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The key layout.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The sealer for private keys.
    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// The S3 client: the worker's writes (`certfleet_worker::objects`)
    /// go through it; every reader uses the typed reads here.
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// Writes a JSON object. `Condition::Absent` refuses to overwrite,
    /// `Condition::Matches` only replaces the version that was read.
    ///
    /// # Errors
    /// [`StorageError::Conflict`] when the condition fails, or unavailable.
    pub async fn put_json<T: Serialize + Sync>(
        &self,
        key: &str,
        value: &T,
        condition: Condition<'_>,
    ) -> Result<ETag, StorageError> {
        let body = serde_json::to_vec_pretty(value).map_err(|e| StorageError::Corrupt {
            key: key.to_string(),
            what: "JSON value",
            detail: e.to_string(),
        })?;
        let mut req = self
            .client()
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .body(aws_sdk_s3::primitives::ByteStream::from(body));
        req = match condition {
            Condition::None => req,
            Condition::Absent => req.if_none_match("*"),
            Condition::Matches(etag) => req.if_match(etag.0.clone()),
        };
        let out = req
            .send()
            .await
            .map_err(|e| self.sdk_error("put", key, e))?;
        match out.e_tag() {
            Some(tag) if !tag.trim_matches('"').is_empty() => Ok(ETag(tag.to_string())),
            _ => Err(StorageError::Unavailable {
                op: "put",
                key: key.to_string(),
                detail: "the answer carries no ETag (conditional writes cannot work)".into(),
            }),
        }
    }

    /// Reads an object's bytes and ETag.
    ///
    /// # Errors
    /// [`StorageError::NotFound`] or [`StorageError::Unavailable`].
    async fn get_bytes(&self, key: &str) -> Result<(Vec<u8>, ETag), StorageError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.sdk_error("get", key, e))?;
        let etag = ETag(out.e_tag().unwrap_or_default().to_string());
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| StorageError::Unavailable {
                op: "get",
                key: key.to_string(),
                detail: e.to_string(),
            })?;
        Ok((body.into_bytes().to_vec(), etag))
    }

    /// Reads and parses a JSON object; `None` if it does not exist.
    ///
    /// # Errors
    /// Unavailable, or not the expected JSON.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        key: &str,
        what: &'static str,
    ) -> Result<Option<(T, ETag)>, StorageError> {
        match self.get_bytes(key).await {
            Ok((bytes, etag)) => serde_json::from_slice(&bytes)
                .map(|v| Some((v, etag)))
                .map_err(|e| StorageError::Corrupt {
                    key: key.to_string(),
                    what,
                    detail: e.to_string(),
                }),
            Err(StorageError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Lists keys under a prefix.
    ///
    /// # Errors
    /// Unavailable.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| self.sdk_error("list", prefix, e))?;
            keys.extend(
                out.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
            match out.next_continuation_token() {
                Some(t) if out.is_truncated().unwrap_or(false) => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(keys)
    }

    /// Every certificate name that has a pointer.
    ///
    /// # Errors
    /// Unavailable.
    pub async fn names(&self) -> Result<Vec<CertName>, StorageError> {
        let mut names: Vec<CertName> = self
            .list(&self.keys.certs())
            .await?
            .iter()
            .filter_map(|k| self.keys.name_of_pointer(k))
            .collect();
        names.sort();
        Ok(names)
    }

    /// A name's pointer with its ETag; `None` if it has no certificate.
    ///
    /// # Errors
    /// Unavailable or corrupt.
    pub async fn pointer(&self, name: &CertName) -> Result<Option<(Pointer, ETag)>, StorageError> {
        self.get_json(&self.keys.pointer(name), "certificate pointer")
            .await
    }

    /// A bundle by key.
    ///
    /// # Errors
    /// Missing, unavailable or corrupt.
    pub async fn bundle(&self, key: &str) -> Result<Bundle, StorageError> {
        self.get_json(key, "certificate bundle")
            .await?
            .map(|(b, _)| b)
            .ok_or_else(|| StorageError::NotFound(key.to_string()))
    }

    /// The current bundle of a name with its pointer, read in that order.
    ///
    /// # Errors
    /// Unavailable or corrupt.
    pub async fn current(
        &self,
        name: &CertName,
    ) -> Result<Option<(Pointer, Bundle)>, StorageError> {
        let Some((pointer, _)) = self.pointer(name).await? else {
            return Ok(None);
        };
        let bundle = self.bundle(&pointer.bundle_key).await?;
        Ok(Some((pointer, bundle)))
    }

    /// Stages an import's bundle at [`Keys::import`], never over another
    /// object (`If-None-Match: *`). The one write outside the workers:
    /// what becomes current is still decided by the fenced pointer flip of
    /// the import job.
    ///
    /// # Errors
    /// Unavailable, or [`StorageError::Conflict`] if the key exists.
    pub async fn stage_import(&self, job_id: &Uuid, bundle: &Bundle) -> Result<(), StorageError> {
        let key = self.keys.import(job_id);
        let body = serde_json::to_vec_pretty(bundle).map_err(|e| StorageError::Corrupt {
            key: key.clone(),
            what: "staged import",
            detail: e.to_string(),
        })?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("application/json")
            .if_none_match("*")
            .body(aws_sdk_s3::primitives::ByteStream::from(body))
            .send()
            .await
            .map_err(|e| self.sdk_error("put", &key, e))?;
        Ok(())
    }

    /// Opens a bundle's private key; `None` when the bundle holds none (the
    /// operator's, `issue --csr`). When an encryption key is configured, a
    /// key stored in the clear is refused ([`Sealer::open_sealed`]).
    ///
    /// # Errors
    /// The key is sealed and cannot be opened here, or it is in the clear
    /// while encryption is configured.
    pub fn open_key(&self, bundle: &Bundle) -> Result<Option<Secret<String>>, StorageError> {
        match &bundle.key {
            Some(key) => Ok(Some(self.sealer.open_sealed(key, &bundle.key_context())?)),
            None => Ok(None),
        }
    }

    /// What an event says of the version a pointer names.
    pub fn cert_info(
        &self,
        p: &Pointer,
        previous_serial: Option<String>,
    ) -> crate::event::CertInfo {
        crate::event::CertInfo {
            serial: serial_display(&p.serial),
            not_before: p.not_before,
            not_after: p.not_after,
            renew_at: p.renew_at,
            version: p.version.clone(),
            location: self.location(&p.name, &p.version),
            previous_serial,
        }
    }

    /// Where a version lives, for events.
    pub fn location(&self, name: &CertName, version: &str) -> Location {
        Location {
            bucket: self.bucket.clone(),
            bundle_key: self.keys.bundle(name, version),
            pointer_key: self.keys.pointer(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_layout() -> Result<(), crate::domain::DomainError> {
        let k = Keys::new("fleet/");
        let n = CertName::parse("www.example.com")?;
        assert_eq!(k.pointer(&n), "fleet/certs/www.example.com/current.json");
        assert_eq!(
            k.bundle(&n, "v1"),
            "fleet/certs/www.example.com/versions/v1.json"
        );
        assert_eq!(k.name_of_pointer(&k.pointer(&n)), Some(n.clone()));
        assert_eq!(k.name_of_pointer(&k.bundle(&n, "v1")), None);
        assert!(k.account("https://ca/dir").starts_with("fleet/accounts/"));
        assert_ne!(k.account("https://a/dir"), k.account("https://b/dir"));
        Ok(())
    }

    #[test]
    fn serials_stored_and_shown() {
        assert_eq!(serial_stored(&[0x09, 0x15, 0xf9]), "915f9");
        assert_eq!(serial_stored(&[0x00, 0x3f, 0x0a]), "3f0a");
        assert_eq!(serial_stored(&[0x00]), "0");
        assert_eq!(serial_display("915f959810e6736"), "0915F959810E6736");
        assert_eq!(serial_display("0915F959810E6736"), "0915F959810E6736");
        assert_eq!(serial_display("3f0a"), "3F0A");
        assert_eq!(serial_display("0"), "00");
        assert_eq!(serial_display(&serial_stored(&[0x80, 0x01])), "8001");
    }

    #[test]
    fn version_ids_sort_by_time() {
        let a = version_id(time::macros::datetime!(2026-11-25 08:30:00 UTC), "ff");
        let b = version_id(time::macros::datetime!(2026-12-01 00:00:00 UTC), "00");
        assert_eq!(a, "20261125T083000Z-ff");
        assert!(a < b);
    }
}
