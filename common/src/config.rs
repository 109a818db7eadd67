//! Configuration: flags, then `CERTFLEET_*` environment, then an optional
//! TOML file, validated once into [`Config`].
//!
//! Loading happens in two stages (ripgrep's `lowargs` → `hiargs`). The raw
//! stage is [`Sources`]: every value is an optional string together with the
//! place it came from. [`Config::load`] then parses each value exactly once
//! into real types (`Duration`, `Url`, `NonZeroU32`, …). Nothing else in
//! certfleet reads the environment, and no connection is opened before this
//! succeeds: a bad value ends the program with exit code 64 and a message that
//! names the variable (or flag, or file key) and the value.
//!
//! The environment is read through the [`Env`] trait so that tests can use a
//! `HashMap` instead of `std::env::set_var` (linkerd2-proxy's `Strings`).

pub mod parse;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::secret::{Secret, SecretUrl};

/// Source of environment variables.
pub trait Env {
    /// The value of `name`, if set.
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

impl Env for HashMap<&str, &str> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).map(|s| (*s).to_string())
    }
}

macro_rules! settings {
    ($( $(#[$doc:meta])* $konst:ident = $key:literal, $secret:literal; )*) => {
        /// Every setting's file key; the environment variable is
        /// `CERTFLEET_` + the key in upper case, the flag `--` + the key with
        /// dashes.
        pub mod keys {
            $( $(#[$doc])* pub const $konst: &str = $key; )*
            /// All keys, for checking a TOML file for typos.
            pub const ALL: &[&str] = &[$($key),*];
            /// Whether each key of [`ALL`] is secret (never printed, never a flag).
            pub(crate) const SECRET_FLAGS: &[bool] = &[$( $secret ),*];
        }
    };
}

settings! {
    /// Broker URL with vhost: `amqp://user:pass@host:5672/vhost`.
    AMQP_URL = "amqp_url", true;
    /// `redis://host:port/db`.
    REDIS_URL = "redis_url", true;
    /// Prefix of every Redis key (default `certfleet:`).
    REDIS_PREFIX = "redis_prefix", false;
    /// Bucket holding certificates and account data.
    S3_BUCKET = "s3_bucket", false;
    /// Endpoint of an S3-compatible server (AWS when unset).
    S3_ENDPOINT = "s3_endpoint", false;
    /// Region (default `us-east-1`).
    S3_REGION = "s3_region", false;
    /// Path-style addressing (`true` for MinIO, moto, Ceph).
    S3_PATH_STYLE = "s3_path_style", false;
    /// Prefix of every object key (default empty).
    S3_PREFIX = "s3_prefix", false;
    /// ACME directory URL (default Let's Encrypt staging).
    ACME_DIRECTORY = "acme_directory", false;
    /// Extra PEM roots to trust for the ACME server.
    ACME_CA_CERTS = "acme_ca_certs", false;
    /// Account contact address.
    ACME_EMAIL = "acme_email", false;
    /// External account binding key id (ZeroSSL, Google).
    ACME_EAB_KID = "acme_eab_kid", false;
    /// External account binding HMAC key, base64url.
    ACME_EAB_HMAC_KEY = "acme_eab_hmac_key", true;
    /// Where a worker answers `/.well-known/acme-challenge/`.
    HTTP01_LISTEN = "http01_listen", false;
    /// Where a worker serves `/metrics`, `/healthz`, `/readyz`.
    METRICS_LISTEN = "metrics_listen", false;
    /// Orders in flight per worker (= AMQP prefetch).
    CONCURRENCY = "concurrency", false;
    /// Attempts before a job is dead-lettered.
    MAX_ATTEMPTS = "max_attempts", false;
    /// How long in-flight jobs may run on after SIGTERM.
    SHUTDOWN_GRACE = "shutdown_grace", false;
    /// Lifetime of a name's lease in Redis (refreshed at a third of it).
    LEASE_TTL = "lease_ttl", false;
    /// Run the renewal due-scan this often inside the worker.
    SCHEDULE_EVERY = "schedule_every", false;
    /// Routing-key patterns the worker's queue is bound to.
    WORKER_BINDINGS = "worker_bindings", false;
    /// The work queue this worker consumes (one per pool of workers).
    WORK_QUEUE = "work_queue", false;
    /// Versions kept per certificate besides the current one.
    HISTORY = "history", false;
    /// 32-byte key (base64) to encrypt private keys at rest.
    ENCRYPTION_KEY = "encryption_key", true;
    /// File holding the encryption key.
    ENCRYPTION_KEY_FILE = "encryption_key_file", false;
    /// Fleet-wide cap on new orders per account: `COUNT/DURATION` or `off`.
    RATE_ORDERS = "rate_orders", false;
    /// Fleet-wide cap on failed validations per hostname: `COUNT/DURATION` or `off`.
    RATE_FAILED_VALIDATIONS = "rate_failed_validations", false;
    /// `text` or `json` logs.
    LOG_FORMAT = "log_format", false;
}

/// The environment variable of a setting key.
pub fn env_name(key: &str) -> String {
    format!("CERTFLEET_{}", key.to_ascii_uppercase())
}

fn is_secret(key: &str) -> bool {
    keys::ALL
        .iter()
        .zip(keys::SECRET_FLAGS)
        .any(|(k, secret)| *secret && *k == key)
}

/// Environment variable naming the TOML file.
pub const ENV_CONFIG: &str = "CERTFLEET_CONFIG";

/// Let's Encrypt staging: the default CA, because production must be asked for.
pub const DEFAULT_ACME_DIRECTORY: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";
/// Default broker: the local one with RabbitMQ's loopback-only guest user.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Default Redis.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";
/// Default Redis key prefix.
pub const DEFAULT_REDIS_PREFIX: &str = "certfleet:";
/// Default bucket.
pub const DEFAULT_S3_BUCKET: &str = "certfleet";
/// Default region (also what most S3-compatible servers expect).
pub const DEFAULT_S3_REGION: &str = "us-east-1";
/// Default http-01 listener: unprivileged, so the worker need not run as
/// root; the load balancer or Service maps port 80 to it.
pub const DEFAULT_HTTP01_LISTEN: &str = "0.0.0.0:8080";
/// Default metrics listener.
pub const DEFAULT_METRICS_LISTEN: &str = "0.0.0.0:9090";
/// Default orders in flight per worker. An order spends most of its time
/// waiting on the CA, so one process can keep many in the air.
pub const DEFAULT_CONCURRENCY: u32 = 32;
/// Upper bound of concurrency: prefetch counts are 16-bit in AMQP.
pub const MAX_CONCURRENCY: u32 = 65_535;
/// Default attempts: the first one plus one per retry delay of
/// [`crate::topology::RETRY_DELAYS`] (10 s … 2 h, about 2.6 hours in all).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 6;
/// Default shutdown grace period (Helm's terminationGracePeriodSeconds is 45).
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Default lease lifetime: long enough to survive a GC pause or a slow Redis
/// round trip, short enough that a crashed worker's names free up quickly.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(60);
/// Default versions kept besides the current one.
pub const DEFAULT_HISTORY: u32 = 3;

/// Where a value came from; printed in error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag.
    Flag(String),
    /// An environment variable.
    Env(String),
    /// A key in the TOML file.
    File {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "--{flag}"),
            Origin::Env(name) => f.write_str(name),
            Origin::File { path, key } => write!(f, "{key} in {}", path.display()),
        }
    }
}

/// A configuration error: always names the input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value that does not parse or is out of range.
    #[error("{origin}{shown}: {reason}", shown = value.as_ref().map(|v| format!("={v:?}")).unwrap_or_default())]
    Invalid {
        /// Where it came from.
        origin: Origin,
        /// The value, unless it is secret.
        value: Option<String>,
        /// Why it was refused.
        reason: String,
    },
    /// The TOML file could not be read or parsed.
    #[error("configuration file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A secret was given as a command-line flag, where `ps` would show it.
    #[error("--{flag} is a secret and cannot be a flag (anyone can read flags with ps); set {env} or use a file", flag = .0.replace('_', "-"), env = env_name(.0))]
    SecretFlag(String),
}

/// The raw layer: values as strings with their origin, not yet validated.
pub struct Sources<'a> {
    flags: HashMap<String, String>,
    env: &'a dyn Env,
    file: Option<(PathBuf, toml::Table)>,
}

impl<'a> Sources<'a> {
    /// Sources with the given environment and no flags or file.
    pub fn new(env: &'a dyn Env) -> Self {
        Self {
            flags: HashMap::new(),
            env,
            file: None,
        }
    }

    /// Adds a flag value for a setting key (ignored when `None`).
    ///
    /// # Errors
    /// A secret setting given as a flag.
    pub fn flag(mut self, key: &str, value: Option<impl ToString>) -> Result<Self, ConfigError> {
        if let Some(value) = value {
            if is_secret(key) {
                return Err(ConfigError::SecretFlag(key.to_string()));
            }
            self.flags.insert(key.to_string(), value.to_string());
        }
        Ok(self)
    }

    /// Loads the TOML file named by `path`, or else by `CERTFLEET_CONFIG`.
    ///
    /// # Errors
    /// An unreadable file, bad TOML, an unknown key or a value that is not a
    /// string, number or boolean.
    pub fn file(mut self, path: Option<&Path>) -> Result<Self, ConfigError> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None => match self.env.get(ENV_CONFIG) {
                Some(p) if !p.is_empty() => PathBuf::from(p),
                _ => return Ok(self),
            },
        };
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::File {
                path: path.clone(),
                reason: e.message().to_string(),
            })?;
        for (key, value) in &table {
            if !keys::ALL.contains(&key.as_str()) {
                return Err(ConfigError::File {
                    path: path.clone(),
                    reason: format!("unknown key {key:?}"),
                });
            }
            if value.is_table() || value.is_array() {
                return Err(ConfigError::File {
                    path: path.clone(),
                    reason: format!("{key} must be a string, number or boolean"),
                });
            }
        }
        self.file = Some((path, table));
        Ok(self)
    }

    /// The raw value of a setting and where it came from: flag, then
    /// environment, then file.
    pub fn raw(&self, key: &str) -> Option<(String, Origin)> {
        if let Some(v) = self.flags.get(key) {
            return Some((v.clone(), Origin::Flag(key.replace('_', "-"))));
        }
        let env = env_name(key);
        if let Some(v) = self.env.get(&env).filter(|v| !v.is_empty()) {
            return Some((v, Origin::Env(env)));
        }
        let (path, table) = self.file.as_ref()?;
        let value = table.get(key)?;
        let text = match value {
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        Some((
            text,
            Origin::File {
                path: path.clone(),
                key: key.to_string(),
            },
        ))
    }

    fn parse<T>(
        &self,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        let Some((raw, origin)) = self.raw(key) else {
            return Ok(None);
        };
        parse(&raw)
            .map(Some)
            .map_err(|reason| ConfigError::Invalid {
                value: (!is_secret(key)).then_some(raw),
                origin,
                reason,
            })
    }

    fn parse_or<T>(
        &self,
        key: &str,
        default: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        match self.parse(key, &parse)? {
            Some(v) => Ok(v),
            None => parse(default).map_err(|reason| ConfigError::Invalid {
                origin: Origin::Env(env_name(key)),
                value: Some(default.to_string()),
                reason: format!("built-in default is invalid: {reason}"),
            }),
        }
    }
}

/// Redis settings.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Connection URL (password hidden when printed).
    pub url: SecretUrl,
    /// Prefix of every key, so several fleets (or tests) share one Redis.
    pub prefix: String,
}

/// Object storage settings.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// Bucket.
    pub bucket: String,
    /// Endpoint of an S3-compatible server; `None` means AWS.
    pub endpoint: Option<url::Url>,
    /// Region.
    pub region: String,
    /// Path-style addressing.
    pub path_style: bool,
    /// Prefix of every object key.
    pub prefix: String,
    /// Static credentials when `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY` are in the given environment; otherwise the
    /// AWS default chain (profiles, web identity, instance roles) applies.
    pub credentials: Option<crate::storage::StaticCredentials>,
}

/// External account binding for CAs that require it.
#[derive(Debug, Clone)]
pub struct Eab {
    /// Key identifier.
    pub kid: String,
    /// HMAC key, base64url as the CA hands it out.
    pub hmac_key: Secret<String>,
}

/// A fleet-wide rate limit: at most `count` events per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Events allowed in the window.
    pub count: u32,
    /// The sliding window.
    pub window: Duration,
}

impl RateLimit {
    /// Parses `COUNT/DURATION` (`300/3h`); `off` means no limit.
    pub fn parse(s: &str) -> Result<Option<Self>, String> {
        if s.trim().eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let (count, window) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not COUNT/DURATION (e.g. 300/3h) or off"))?;
        Ok(Some(Self {
            count: parse::parse_count(count, u32::MAX)?.get(),
            window: parse::parse_duration(window)?,
        }))
    }
}

/// ACME settings.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// Directory URL.
    pub directory: url::Url,
    /// Extra PEM roots for the ACME server's TLS certificate.
    pub ca_certs: Option<PathBuf>,
    /// Contact address.
    pub email: Option<String>,
    /// External account binding.
    pub eab: Option<Eab>,
    /// New orders per account (Let's Encrypt: 300 per 3 h).
    pub rate_orders: Option<RateLimit>,
    /// Failed validations per hostname (Let's Encrypt: 5 per hour).
    pub rate_failed_validations: Option<RateLimit>,
}

/// Worker process settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// http-01 responder address.
    pub http01_listen: SocketAddr,
    /// Metrics and health address.
    pub metrics_listen: SocketAddr,
    /// Orders in flight (= prefetch).
    pub concurrency: NonZeroU32,
    /// Attempts before dead-lettering.
    pub max_attempts: NonZeroU32,
    /// Grace period on shutdown.
    pub shutdown_grace: Duration,
    /// Lease lifetime.
    pub lease_ttl: Duration,
    /// Due-scan period, if this worker runs the scheduler.
    pub schedule_every: Option<Duration>,
    /// Routing-key patterns of jobs this worker can serve.
    pub bindings: Vec<String>,
    /// The queue it consumes.
    pub work_queue: String,
}

/// Storage policy.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Previous versions kept per certificate.
    pub history: u32,
    /// Key to seal private keys at rest with AES-256-GCM.
    pub encryption_key: Option<Secret<[u8; 32]>>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The validated configuration: the only thing the rest of certfleet sees.
#[derive(Debug, Clone)]
pub struct Config {
    /// Broker URL (password hidden when printed).
    pub amqp_url: SecretUrl,
    /// Redis.
    pub redis: RedisConfig,
    /// Object storage.
    pub s3: S3Config,
    /// ACME.
    pub acme: AcmeConfig,
    /// Worker process.
    pub worker: WorkerConfig,
    /// Storage policy.
    pub storage: StorageConfig,
    /// Log format.
    pub log_format: LogFormat,
}

/// Let's Encrypt's limits, applied by default only to its own directories.
fn is_letsencrypt(directory: &url::Url) -> bool {
    directory
        .host_str()
        .is_some_and(|h| h.ends_with(".letsencrypt.org"))
}

impl Config {
    /// Validates every setting.
    ///
    /// # Errors
    /// The first invalid value, naming its variable, flag or file key.
    pub fn load(src: &Sources<'_>) -> Result<Self, ConfigError> {
        use parse::*;
        let amqp_url = SecretUrl::new(src.parse_or(keys::AMQP_URL, DEFAULT_AMQP_URL, |s| {
            parse_url(s, &["amqp", "amqps"])
        })?);
        let redis = RedisConfig {
            url: SecretUrl::new(src.parse_or(keys::REDIS_URL, DEFAULT_REDIS_URL, |s| {
                parse_url(s, &["redis", "rediss"])
            })?),
            prefix: src.parse_or(keys::REDIS_PREFIX, DEFAULT_REDIS_PREFIX, parse_prefix)?,
        };
        let s3 = S3Config {
            bucket: src.parse_or(keys::S3_BUCKET, DEFAULT_S3_BUCKET, parse_bucket)?,
            endpoint: src.parse(keys::S3_ENDPOINT, |s| parse_url(s, &["http", "https"]))?,
            region: src.parse_or(keys::S3_REGION, DEFAULT_S3_REGION, parse_region)?,
            path_style: src.parse_or(keys::S3_PATH_STYLE, "false", parse_bool)?,
            prefix: src.parse_or(keys::S3_PREFIX, "", |s| {
                let p = parse_prefix(s)?;
                Ok(if p.is_empty() || p.ends_with('/') {
                    p
                } else {
                    format!("{p}/")
                })
            })?,
            credentials: match (
                src.env.get("AWS_ACCESS_KEY_ID").filter(|v| !v.is_empty()),
                src.env
                    .get("AWS_SECRET_ACCESS_KEY")
                    .filter(|v| !v.is_empty()),
            ) {
                (Some(id), Some(secret)) => Some(crate::storage::StaticCredentials {
                    access_key_id: id,
                    secret_access_key: Secret::new(secret),
                }),
                _ => None,
            },
        };
        let directory = src.parse_or(keys::ACME_DIRECTORY, DEFAULT_ACME_DIRECTORY, |s| {
            parse_url(s, &["https", "http"])
        })?;
        let le = is_letsencrypt(&directory);
        let eab_kid = src.parse(keys::ACME_EAB_KID, |s| Ok(s.trim().to_string()))?;
        let eab_hmac = src.parse(keys::ACME_EAB_HMAC_KEY, |s| Ok(s.trim().to_string()))?;
        let eab = match (eab_kid, eab_hmac) {
            (Some(kid), Some(hmac)) => Some(Eab {
                kid,
                hmac_key: Secret::new(hmac),
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::Invalid {
                    origin: Origin::Env(env_name(keys::ACME_EAB_HMAC_KEY)),
                    value: None,
                    reason: format!("missing, but {} is set", env_name(keys::ACME_EAB_KID)),
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    origin: Origin::Env(env_name(keys::ACME_EAB_KID)),
                    value: None,
                    reason: format!("missing, but {} is set", env_name(keys::ACME_EAB_HMAC_KEY)),
                });
            }
        };
        let acme = AcmeConfig {
            directory,
            ca_certs: src.parse(keys::ACME_CA_CERTS, parse_existing_file)?,
            email: src.parse(keys::ACME_EMAIL, parse_email)?,
            eab,
            rate_orders: src.parse_or(
                keys::RATE_ORDERS,
                if le { "300/3h" } else { "off" },
                RateLimit::parse,
            )?,
            rate_failed_validations: src.parse_or(
                keys::RATE_FAILED_VALIDATIONS,
                if le { "5/1h" } else { "off" },
                RateLimit::parse,
            )?,
        };
        let lease_ttl = src.parse_or(keys::LEASE_TTL, "60s", |s| {
            let d = parse_duration(s)?;
            if d < Duration::from_secs(3) {
                return Err("must be at least 3s".into());
            }
            Ok(d)
        })?;
        let worker = WorkerConfig {
            http01_listen: src.parse_or(
                keys::HTTP01_LISTEN,
                DEFAULT_HTTP01_LISTEN,
                parse_listen,
            )?,
            metrics_listen: src.parse_or(
                keys::METRICS_LISTEN,
                DEFAULT_METRICS_LISTEN,
                parse_listen,
            )?,
            concurrency: src.parse_or(
                keys::CONCURRENCY,
                &DEFAULT_CONCURRENCY.to_string(),
                |s| parse_count(s, MAX_CONCURRENCY),
            )?,
            max_attempts: src.parse_or(
                keys::MAX_ATTEMPTS,
                &DEFAULT_MAX_ATTEMPTS.to_string(),
                |s| parse_count(s, 1000),
            )?,
            shutdown_grace: src.parse_or(keys::SHUTDOWN_GRACE, "30s", parse_duration)?,
            lease_ttl,
            schedule_every: src.parse(keys::SCHEDULE_EVERY, |s| {
                let d = parse_duration(s)?;
                if d < Duration::from_secs(1) {
                    return Err("must be at least 1s".into());
                }
                Ok(d)
            })?,
            bindings: src.parse_or(keys::WORKER_BINDINGS, "job.#", parse_bindings)?,
            work_queue: src.parse_or(keys::WORK_QUEUE, crate::topology::WORK_QUEUE, |s| {
                let s = s.trim();
                if s.starts_with("certfleet.") && s.len() <= 200 && parse_prefix(s).is_ok() {
                    Ok(s.to_string())
                } else {
                    Err("must start with \"certfleet.\" (e.g. certfleet.work.dns)".into())
                }
            })?,
        };
        let key_inline = src.parse(keys::ENCRYPTION_KEY, parse_key256)?;
        let key_file = src.parse(keys::ENCRYPTION_KEY_FILE, |path| {
            let text = std::fs::read_to_string(path.trim())
                .map_err(|e| format!("cannot read the key file: {e}"))?;
            parse_key256(&text)
        })?;
        if key_inline.is_some() && key_file.is_some() {
            return Err(ConfigError::Invalid {
                origin: Origin::Env(env_name(keys::ENCRYPTION_KEY_FILE)),
                value: None,
                reason: format!("set only one of it and {}", env_name(keys::ENCRYPTION_KEY)),
            });
        }
        let storage = StorageConfig {
            history: src.parse_or(keys::HISTORY, &DEFAULT_HISTORY.to_string(), |s| {
                parse_u32(s, 100)
            })?,
            encryption_key: key_inline.or(key_file).map(Secret::new),
        };
        let log_format = src.parse_or(keys::LOG_FORMAT, "text", |s| match s.trim() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("{other:?} is not text or json")),
        })?;
        Ok(Self {
            amqp_url,
            redis,
            s3,
            acme,
            worker,
            storage,
            log_format,
        })
    }

    /// Loads from the process environment and the optional file only.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn from_env() -> Result<Self, ConfigError> {
        let env = ProcessEnv;
        Self::load(&Sources::new(&env).file(None)?)
    }
}

fn parse_bucket(s: &str) -> Result<String, String> {
    let s = s.trim();
    let ok = (3..=63).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.']);
    if ok {
        Ok(s.to_string())
    } else {
        Err("not a valid bucket name (3-63 of a-z, 0-9, '-' and '.')".into())
    }
}

fn parse_region(s: &str) -> Result<String, String> {
    let s = s.trim();
    if !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        Ok(s.to_string())
    } else {
        Err("not a region name (e.g. us-east-1)".into())
    }
}

fn parse_email(s: &str) -> Result<String, String> {
    let s = s.trim();
    match s.split_once('@') {
        Some((local, domain))
            if !local.is_empty()
                && domain.contains('.')
                && !s.contains(char::is_whitespace)
                && !domain.contains('@') =>
        {
            Ok(s.to_string())
        }
        _ => Err("not an email address".into()),
    }
}

fn parse_existing_file(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s.trim());
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => Ok(path),
        Ok(_) => Err("not a regular file".into()),
        Err(e) => Err(format!("cannot read it: {e}")),
    }
}

fn parse_bindings(s: &str) -> Result<Vec<String>, String> {
    let patterns: Vec<String> = s
        .split([',', ' '])
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    if patterns.is_empty() {
        return Err("no routing-key pattern given (e.g. job.#)".into());
    }
    for p in &patterns {
        if !p.starts_with("job.") && p != "#" {
            return Err(format!(
                "{p:?} does not match jobs (patterns start with job.)"
            ));
        }
    }
    Ok(patterns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<&str, &str> = vars.iter().copied().collect();
        Config::load(&Sources::new(&env))
    }

    #[test]
    fn defaults_are_valid_and_staging() -> Result<(), ConfigError> {
        let c = load(&[])?;
        assert_eq!(c.acme.directory.as_str(), DEFAULT_ACME_DIRECTORY);
        assert_eq!(c.worker.concurrency.get(), DEFAULT_CONCURRENCY);
        assert_eq!(c.acme.rate_orders.map(|r| r.count), Some(300));
        assert_eq!(c.redis.prefix, "certfleet:");
        assert_eq!(c.worker.bindings, vec!["job.#".to_string()]);
        Ok(())
    }

    #[test]
    fn bad_value_names_variable_and_value() {
        let err = load(&[("CERTFLEET_CONCURRENCY", "lots")])
            .map(|_| ())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "CERTFLEET_CONCURRENCY=\"lots\": \"lots\" is not a whole number"
        );
        let err = load(&[("CERTFLEET_SHUTDOWN_GRACE", "30")])
            .map(|_| ())
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("CERTFLEET_SHUTDOWN_GRACE=\"30\"")
        );
        let err = load(&[("CERTFLEET_AMQP_URL", "http://x")])
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().starts_with("CERTFLEET_AMQP_URL:"), "{err}");
    }

    #[test]
    fn secrets_are_not_echoed() {
        let err = load(&[("CERTFLEET_REDIS_URL", "ftp://u:topsecret@h")])
            .map(|_| ())
            .unwrap_err();
        assert!(!err.to_string().contains("topsecret"), "{err}");
        let err = load(&[("CERTFLEET_ENCRYPTION_KEY", "c2VjcmV0")])
            .map(|_| ())
            .unwrap_err();
        assert!(!err.to_string().contains("c2VjcmV0"), "{err}");
        let c = load(&[("CERTFLEET_AMQP_URL", "amqp://u:topsecret@h:5672/%2f")]);
        let shown = format!("{:?}", c.expect("valid"));
        assert!(!shown.contains("topsecret"));
    }

    #[test]
    fn flag_beats_env_beats_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "concurrency = 3\nhistory = 7\ns3_path_style = true\n",
        )?;
        let env: HashMap<&str, &str> = [("CERTFLEET_CONCURRENCY", "5")].into();
        let c = Config::load(&Sources::new(&env).file(Some(&path))?)?;
        assert_eq!(c.worker.concurrency.get(), 5);
        assert_eq!(c.storage.history, 7);
        assert!(c.s3.path_style);
        let c = Config::load(
            &Sources::new(&env)
                .file(Some(&path))?
                .flag(keys::CONCURRENCY, Some(9))?,
        )?;
        assert_eq!(c.worker.concurrency.get(), 9);
        Ok(())
    }

    #[test]
    fn file_errors_name_the_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "concurency = 3\n")?;
        let env: HashMap<&str, &str> = HashMap::new();
        let err = Sources::new(&env)
            .file(Some(&path))
            .map(|_| ())
            .unwrap_err();
        assert!(
            err.to_string().contains("unknown key \"concurency\""),
            "{err}"
        );
        std::fs::write(&path, "history = \"many\"\n")?;
        let err = Config::load(&Sources::new(&env).file(Some(&path))?)
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().starts_with("history in "), "{err}");
        Ok(())
    }

    #[test]
    fn secret_flags_refused() {
        let env: HashMap<&str, &str> = HashMap::new();
        let err = Sources::new(&env)
            .flag(keys::ENCRYPTION_KEY, Some("x"))
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().contains("CERTFLEET_ENCRYPTION_KEY"));
    }

    #[test]
    fn eab_needs_both_halves() {
        let err = load(&[("CERTFLEET_ACME_EAB_KID", "kid")])
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().contains("CERTFLEET_ACME_EAB_HMAC_KEY"));
    }

    #[test]
    fn rate_limits() {
        assert_eq!(RateLimit::parse("off"), Ok(None));
        assert_eq!(
            RateLimit::parse("300/3h"),
            Ok(Some(RateLimit {
                count: 300,
                window: Duration::from_secs(3 * 3600)
            }))
        );
        assert!(RateLimit::parse("300").is_err());
        let c = load(&[("CERTFLEET_ACME_DIRECTORY", "https://127.0.0.1:14000/dir")]).expect("ok");
        assert_eq!(c.acme.rate_orders, None);
    }

    #[test]
    fn bindings_and_buckets() {
        assert!(load(&[("CERTFLEET_WORKER_BINDINGS", "job.*.dns-01, job.renew.#")]).is_ok());
        assert!(load(&[("CERTFLEET_WORKER_BINDINGS", "cert.#")]).is_err());
        assert!(load(&[("CERTFLEET_S3_BUCKET", "No_Caps")]).is_err());
        let c = load(&[("CERTFLEET_S3_PREFIX", "fleet-a")]).expect("ok");
        assert_eq!(c.s3.prefix, "fleet-a/");
    }
}
