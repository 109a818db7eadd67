//! Configuration: flags, then `CERTFLEET_*` environment, then an optional
//! TOML file, validated once per binary.
//!
//! Loading happens in two stages (ripgrep's `lowargs` → `hiargs`):
//! - [`keys`]: the contract's setting names (file key, variable, flag);
//! - [`sources`]: the raw stage, [`Sources`]: every value an optional string
//!   with the place it came from;
//! - [`parse`]: one small parser per value type;
//! - sections, validated from the sources into real types: [`Config`] here,
//!   the part every binary uses (broker, Redis, S3, key sealing, logs), and
//!   the worker's own sections (ACME, listeners, concurrency, ...) in the
//!   worker crate. Each binary validates what it uses, and nothing else:
//!   `certfleet pull` on a webserver never looks at ACME settings.
//!
//! Settings, `AWS_*` credentials and the log filter (`CERTFLEET_LOG`, else
//! `RUST_LOG`) are all read through [`Sources`]; nothing else in certfleet
//! reads the environment (except the AWS SDK's default credential chain,
//! when no static keys are given), and no connection is opened before validation
//! succeeds: a bad value ends the program with exit code 64 and a message
//! that names the variable (or flag, or file key) and the value.

pub mod keys;
pub mod parse;
pub mod sources;
pub mod tls;

use crate::secret::{Secret, SecretUrl};

pub use keys::env_name;
pub use sources::{ConfigError, Env, Origin, ProcessEnv, Sources};

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

/// Redis settings.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// One server or a Sentinel-watched primary (passwords hidden when
    /// printed).
    pub url: crate::redis_pool::RedisTarget,
    /// Prefix of every key, so several fleets (or tests) share one Redis.
    pub prefix: String,
    /// TLS files for `rediss://`.
    pub tls: tls::TlsFiles,
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
    /// For an `https://` endpoint: a CA trusted besides the public roots,
    /// a client certificate.
    pub tls: tls::TlsFiles,
    /// Static credentials when `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY` are in the given environment; otherwise the
    /// AWS default chain (profiles, web identity, instance roles) applies.
    pub credentials: Option<StaticCredentials>,
}

/// Statically configured credentials (tests; production uses the AWS chain).
#[derive(Debug, Clone)]
pub struct StaticCredentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: Secret<String>,
}

/// Private keys at rest ([`crate::seal`]).
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// The workers' own key (AES-256-GCM): seals the ACME account key and
    /// orders' keys; also bundles when there is no recipients file (then
    /// `pull` and `watch` open with it).
    pub encryption_key: Option<Secret<[u8; 32]>>,
    /// Which recipients each certificate's key is encrypted to.
    pub recipients: Option<std::sync::Arc<crate::seal::recipients::Recipients>>,
    /// The identities this process opens bundles' keys with.
    pub identities: std::sync::Arc<crate::seal::recipients::Identities>,
    /// Unencrypted keys allowed (`CERTFLEET_INSECURE_PLAINTEXT_KEYS`).
    pub insecure_plaintext_keys: bool,
}

impl StorageConfig {
    /// What a worker requires before it stores any key: a recipients file
    /// together with its own key, or (earlier releases' scheme) its own key
    /// alone, or an explicit `CERTFLEET_INSECURE_PLAINTEXT_KEYS=true`.
    /// `Ok` carries the warning to log at start, if any.
    ///
    /// # Errors
    /// Keys would be stored in the clear without the explicit setting.
    pub fn check_for_worker(&self) -> Result<Option<&'static str>, ConfigError> {
        let insecure = self.insecure_plaintext_keys;
        match (&self.recipients, &self.encryption_key) {
            (Some(_), Some(_)) => Ok(None),
            (None, Some(_)) => Ok(Some(
                "certificate keys are sealed with the workers' own key (CERTFLEET_ENCRYPTION_KEY), which every webserver then holds: set CERTFLEET_RECIPIENTS_FILE so each server group opens only its own certificates",
            )),
            (Some(_), None) if insecure => Ok(Some(
                "CERTFLEET_INSECURE_PLAINTEXT_KEYS=true: the ACME account key and orders' keys are stored unencrypted (set CERTFLEET_ENCRYPTION_KEY)",
            )),
            (None, None) if insecure => Ok(Some(
                "CERTFLEET_INSECURE_PLAINTEXT_KEYS=true: private keys are stored unencrypted; anyone who can read the bucket or Redis can read them",
            )),
            (Some(_), None) => Err(ConfigError::Invalid {
                origin: Origin::Env(env_name(keys::ENCRYPTION_KEY)),
                value: None,
                reason: "not set: the workers' own key seals the ACME account key and orders' keys (32 random bytes, base64: `openssl rand -base64 32`); set it, or CERTFLEET_INSECURE_PLAINTEXT_KEYS=true to store those in the clear".into(),
            }),
            (None, None) => Err(ConfigError::Invalid {
                origin: Origin::Env(env_name(keys::RECIPIENTS_FILE)),
                value: None,
                reason: "not set: private keys would be stored readable by anyone who can read the bucket; set it (lines of `pattern age1...`, see `certfleet keys identity`) and CERTFLEET_ENCRYPTION_KEY, or CERTFLEET_INSECURE_PLAINTEXT_KEYS=true".into(),
            }),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The settings every binary uses: where the broker, Redis and the bucket
/// are, how private keys are sealed, and how to log. The worker adds its
/// own sections on top (see the worker crate's `config`).
#[derive(Debug, Clone)]
pub struct Config {
    /// Broker node URLs (passwords hidden when printed).
    pub amqp_url: crate::amqp::BrokerUrls,
    /// Redis.
    pub redis: RedisConfig,
    /// Object storage.
    pub s3: S3Config,
    /// Sealing of private keys.
    pub storage: StorageConfig,
    /// The RabbitMQ management API, when configured (`server` commands).
    pub rabbitmq_mgmt_url: Option<SecretUrl>,
    /// The CA: the workers' orders, and the CLI's revocations signed with a
    /// certificate's own key.
    pub acme: AcmeEndpoint,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter from `CERTFLEET_LOG` (else `RUST_LOG`), checked when
    /// loaded; `None` means the binary's default.
    pub log_filter: Option<String>,
}

impl Config {
    /// Validates the settings every binary uses.
    ///
    /// # Errors
    /// The first invalid value, naming its variable, flag or file key.
    pub fn load(src: &Sources<'_>) -> Result<Self, ConfigError> {
        use parse::*;
        let amqp_nodes = src.parse_or(keys::AMQP_URL, DEFAULT_AMQP_URL, parse_broker_urls)?;
        let amqp_tls = tls::TlsFiles::amqp(src)?;
        tls::only_with_tls(
            &amqp_tls,
            amqp_nodes.iter().all(|u| u.url().scheme() == "amqps"),
            keys::AMQP_URL,
            if amqp_tls.ca_pem.is_some() {
                keys::AMQP_CA_FILE
            } else {
                keys::AMQP_CLIENT_CERT_FILE
            },
            "amqps",
        )?;
        let amqp_url = crate::amqp::BrokerUrls::new(amqp_nodes).with_tls(amqp_tls);
        let redis = RedisConfig {
            url: {
                let sentinel_password = src.parse(keys::REDIS_SENTINEL_PASSWORD, |s| {
                    Ok(Secret::new(s.to_string()))
                })?;
                src.parse_or(keys::REDIS_URL, DEFAULT_REDIS_URL, |s| {
                    crate::redis_pool::RedisTarget::parse(s, sentinel_password.clone())
                })?
            },
            prefix: src.parse_or(keys::REDIS_PREFIX, DEFAULT_REDIS_PREFIX, parse_prefix)?,
            tls: tls::TlsFiles::redis(src)?,
        };
        tls::only_with_tls(
            &redis.tls,
            redis.url.is_tls(),
            keys::REDIS_URL,
            if redis.tls.ca_pem.is_some() {
                keys::REDIS_CA_FILE
            } else {
                keys::REDIS_CLIENT_CERT_FILE
            },
            "rediss",
        )?;
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
            tls: tls::TlsFiles::load(
                src,
                keys::S3_CA_FILE,
                keys::S3_CLIENT_CERT_FILE,
                keys::S3_CLIENT_KEY_FILE,
            )?,
            credentials: match (
                src.env_var("AWS_ACCESS_KEY_ID"),
                src.env_var("AWS_SECRET_ACCESS_KEY"),
            ) {
                (Some(id), Some(secret)) => Some(StaticCredentials {
                    access_key_id: id,
                    secret_access_key: Secret::new(secret),
                }),
                _ => None,
            },
        };
        tls::only_with_tls(
            &s3.tls,
            s3.endpoint.as_ref().is_some_and(|e| e.scheme() == "https"),
            keys::S3_ENDPOINT,
            if s3.tls.ca_pem.is_some() {
                keys::S3_CA_FILE
            } else {
                keys::S3_CLIENT_CERT_FILE
            },
            "https",
        )?;
        if s3.tls.is_set()
            && let Err(reason) = crate::s3_https::client(&s3.tls)
        {
            return Err(ConfigError::Invalid {
                origin: Origin::Env(env_name(if s3.tls.client.is_some() {
                    keys::S3_CLIENT_CERT_FILE
                } else {
                    keys::S3_CA_FILE
                })),
                value: None,
                reason,
            });
        }
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
            encryption_key: key_inline.or(key_file).map(Secret::new),
            recipients: src.parse(keys::RECIPIENTS_FILE, |path| {
                crate::seal::recipients::Recipients::load(std::path::Path::new(path.trim()))
                    .map(std::sync::Arc::new)
            })?,
            identities: std::sync::Arc::new(
                src.parse(keys::IDENTITY_FILE, |path| {
                    crate::seal::recipients::Identities::load(std::path::Path::new(path.trim()))
                })?
                .unwrap_or_default(),
            ),
            insecure_plaintext_keys: src.parse_or(
                keys::INSECURE_PLAINTEXT_KEYS,
                "false",
                parse_bool,
            )?,
        };
        let log_format = src.parse_or(keys::LOG_FORMAT, "text", |s| match s.trim() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("{other:?} is not text or json")),
        })?;
        let log_filter = match src.parse(keys::LOG, parse_log_filter)? {
            Some(f) => Some(f),
            None => match src.env_var(keys::ENV_RUST_LOG) {
                Some(raw) => {
                    Some(
                        parse_log_filter(&raw).map_err(|reason| ConfigError::Invalid {
                            origin: Origin::Env(keys::ENV_RUST_LOG.into()),
                            value: Some(raw),
                            reason,
                        })?,
                    )
                }
                None => None,
            },
        };
        let rabbitmq_mgmt_url = src.parse(keys::RABBITMQ_MGMT_URL, |s| {
            parse_url(s, &["http", "https"]).map(SecretUrl::new)
        })?;
        let acme = AcmeEndpoint {
            directory: src.parse_or(keys::ACME_DIRECTORY, DEFAULT_ACME_DIRECTORY, |s| {
                parse_url(s, &["https", "http"])
            })?,
            ca_certs: src.parse(keys::ACME_CA_CERTS, parse_existing_file)?,
        };
        Ok(Self {
            amqp_url,
            redis,
            s3,
            rabbitmq_mgmt_url,
            acme,
            storage,
            log_format,
            log_filter,
        })
    }
}

/// Let's Encrypt's staging directory: production must be asked for.
pub const DEFAULT_ACME_DIRECTORY: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// Where the CA is.
#[derive(Debug, Clone)]
pub struct AcmeEndpoint {
    /// Directory URL.
    pub directory: url::Url,
    /// Extra PEM roots for the CA's TLS certificate.
    pub ca_certs: Option<std::path::PathBuf>,
}

impl AcmeEndpoint {
    /// The roots the CA's TLS certificate may chain to: the web's
    /// (webpki-roots) and every certificate of [`AcmeEndpoint::ca_certs`].
    ///
    /// # Errors
    /// The file cannot be read, holds a certificate rustls refuses, or
    /// none at all (the message names the file).
    pub fn roots(&self) -> Result<rustls::RootCertStore, String> {
        roots_with(self.ca_certs.as_deref()).map_err(|detail| match &self.ca_certs {
            Some(p) => format!("CA certificates {}: {detail}", p.display()),
            None => detail,
        })
    }
}

/// The web's roots and every PEM certificate in `extra`.
///
/// # Errors
/// As [`AcmeEndpoint::roots`], without the file's name.
pub fn roots_with(extra: Option<&std::path::Path>) -> Result<rustls::RootCertStore, String> {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra {
        let err = |detail: String| detail;
        let mut added = 0;
        for cert in
            rustls_pki_types::CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))?
        {
            let cert = cert.map_err(|e| err(e.to_string()))?;
            roots.add(cert).map_err(|e| err(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(err("no PEM certificate in the file".into()));
        }
    }
    Ok(roots)
}

/// A path to a regular file that can be read.
pub fn parse_existing_file(s: &str) -> Result<std::path::PathBuf, String> {
    let path = std::path::PathBuf::from(s.trim());
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => Ok(path),
        Ok(_) => Err("not a regular file".into()),
        Err(e) => Err(format!("cannot read it: {e}")),
    }
}

/// A log filter `tracing` accepts (`info`, `warn,certfleet=debug`, ...).
fn parse_log_filter(s: &str) -> Result<String, String> {
    let s = s.trim();
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("not a valid log filter: {e}"))
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

/// One AMQP URL, or a comma-separated list of a cluster's nodes.
fn parse_broker_urls(s: &str) -> Result<Vec<SecretUrl>, String> {
    let mut urls = Vec::new();
    for (i, part) in s.split(',').enumerate() {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!("node {} of the list is empty", i + 1));
        }
        // The value is secret (it may hold passwords): the error names the
        // node by its place in the list.
        let url = parse::parse_url(part, &["amqp", "amqps"]).map_err(|e| {
            if s.contains(',') {
                format!("node {} of the list: {e}", i + 1)
            } else {
                e
            }
        })?;
        urls.push(SecretUrl::new(url));
    }
    Ok(urls)
}

fn parse_region(s: &str) -> Result<String, String> {
    let s = s.trim();
    if !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        Ok(s.to_string())
    } else {
        Err("not a region name (e.g. us-east-1)".into())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<&str, &str> = vars.iter().copied().collect();
        Config::load(&Sources::new(&env))
    }

    #[test]
    fn defaults_are_valid() -> Result<(), ConfigError> {
        let c = load(&[])?;
        assert_eq!(c.redis.prefix, "certfleet:");
        assert_eq!(c.amqp_url.nodes().len(), 1);
        assert_eq!(c.amqp_url.nodes()[0].expose(), DEFAULT_AMQP_URL);
        assert_eq!(c.log_filter, None);
        Ok(())
    }

    #[test]
    fn broker_urls_are_a_list_of_nodes() -> Result<(), ConfigError> {
        let c = load(&[(
            "CERTFLEET_AMQP_URL",
            "amqp://u:p1@10.0.0.1:5672/v, amqps://u:p2@10.0.0.2:5671/v",
        )])?;
        assert_eq!(c.amqp_url.nodes().len(), 2);
        assert_eq!(
            c.amqp_url.redacted(),
            "amqp://u:***@10.0.0.1:5672/v,amqps://u:***@10.0.0.2:5671/v"
        );
        for bad in [
            "amqp://a:5672/v,",
            "amqp://a:5672/v,http://b/v",
            ",amqp://a/v",
        ] {
            let err = load(&[("CERTFLEET_AMQP_URL", bad)])
                .map(|_| ())
                .unwrap_err();
            let text = err.to_string();
            assert!(text.starts_with("CERTFLEET_AMQP_URL:"), "{text}");
            assert!(text.contains("node "), "names the node: {text}");
        }
        Ok(())
    }

    #[test]
    fn bad_value_names_variable_and_value() {
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
        std::fs::write(&path, "s3_path_style = \"maybe\"\n")?;
        let err = Config::load(&Sources::new(&env).file(Some(&path))?)
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().starts_with("s3_path_style in "), "{err}");
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
    fn buckets_and_prefixes() {
        assert!(load(&[("CERTFLEET_S3_BUCKET", "No_Caps")]).is_err());
        let c = load(&[("CERTFLEET_S3_PREFIX", "fleet-a")]).expect("ok");
        assert_eq!(c.s3.prefix, "fleet-a/");
    }

    #[test]
    fn log_filter_from_certfleet_log_else_rust_log() -> Result<(), ConfigError> {
        let c = load(&[("CERTFLEET_LOG", "debug"), ("RUST_LOG", "warn")])?;
        assert_eq!(c.log_filter.as_deref(), Some("debug"));
        let c = load(&[("RUST_LOG", "warn,certfleet=debug")])?;
        assert_eq!(c.log_filter.as_deref(), Some("warn,certfleet=debug"));
        let err = load(&[("CERTFLEET_LOG", "certfleet=loud")])
            .map(|_| ())
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("CERTFLEET_LOG=\"certfleet=loud\": not a valid log filter"),
            "{err}"
        );
        let err = load(&[("RUST_LOG", "=x=")]).map(|_| ()).unwrap_err();
        assert!(err.to_string().starts_with("RUST_LOG="), "{err}");
        Ok(())
    }
}
