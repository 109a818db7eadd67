//! The worker's own configuration sections, on top of the settings every
//! binary shares ([`certfleet_common::Config`]): the CA ([`AcmeConfig`])
//! and the process ([`WorkerConfig`]: listeners, concurrency, attempts,
//! leases, history, bindings). Only `certfleet-worker` validates these;
//! the names are the contract's ([`certfleet_common::config::keys`]).

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use certfleet_common::config::parse::parse_url;
use certfleet_common::config::parse::{
    format_duration, parse_count, parse_duration, parse_listen, parse_prefix, parse_u32,
};
use certfleet_common::config::{
    AcmeEndpoint, ConfigError, Origin, Sources, env_name, keys, parse_existing_file,
};
use certfleet_common::{Config, Secret};

pub use crate::dns01::settings::{Dns01Settings, ProviderName};

/// Let's Encrypt staging: the default CA, because production must be asked for.
pub use certfleet_common::config::DEFAULT_ACME_DIRECTORY;
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
/// [`certfleet_common::topology::RETRY_DELAYS`] (10 s … 2 h, about 2.6
/// hours in all).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 6;
/// Default shutdown grace period (Helm's terminationGracePeriodSeconds is 45).
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Default lease lifetime: long enough to survive a GC pause or a slow Redis
/// round trip, short enough that a crashed worker's names free up quickly.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(60);
/// Shortest lease: it is refreshed at a third of its lifetime, and a
/// refresh must fit in that third.
const MIN_LEASE_TTL: Duration = Duration::from_secs(3);
/// Default versions kept besides the current one.
pub const DEFAULT_HISTORY: u32 = 3;

/// Everything `certfleet-worker` runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Broker, Redis, S3, key sealing, logs (shared with every binary).
    pub common: Config,
    /// The first issuer (the only one without `CERTFLEET_ACME_ISSUERS`).
    pub acme: AcmeConfig,
    /// Every issuer, in the order they are tried.
    pub issuers: Vec<AcmeConfig>,
    /// A CA rate-limiting for longer than this falls back to the next one.
    pub fallback_after: Duration,
    /// The worker process.
    pub worker: WorkerConfig,
    /// dns-01: providers, zones, propagation.
    pub dns01: Dns01Settings,
}

impl Settings {
    /// Validates the shared settings and the worker's own.
    ///
    /// # Errors
    /// The first invalid value, naming its variable, flag or file key.
    pub fn load(src: &Sources<'_>) -> Result<Self, ConfigError> {
        let common = Config::load(src)?;
        common.storage.check_for_worker()?;
        let dns01 = Dns01Settings::load(src, common.s3.credentials.as_ref())?;
        let issuers = AcmeConfig::load_issuers(src, &common.acme)?;
        let fallback_after = src.parse_or(keys::ACME_FALLBACK_AFTER, "1h", parse_duration)?;
        Ok(Self {
            common,
            acme: issuers[0].clone(),
            issuers,
            fallback_after,
            worker: WorkerConfig::load(src)?,
            dns01,
        })
    }
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
            count: parse_count(count, u32::MAX)?.get(),
            window: parse_duration(window)?,
        }))
    }
}

/// ACME settings of one issuer (CA).
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The issuer's name (`issue --ca`, the pointer's `issuer`).
    pub name: String,
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
    /// New certificates per registered domain (Let's Encrypt: 50 per 7 days).
    pub rate_certs_per_domain: Option<RateLimit>,
    /// New certificates per exact set of names (Let's Encrypt: 5 per 7 days).
    pub rate_duplicates: Option<RateLimit>,
}

/// Worker process settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// http-01 responder address.
    pub http01_listen: SocketAddr,
    /// tls-alpn-01 responder address (none: tls-alpn-01 jobs fail here).
    pub tlsalpn01_listen: Option<SocketAddr>,
    /// The shortest wait between two reads of a certificate's ARI window.
    pub ari_recheck_min: Duration,
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
    /// Previous versions kept per certificate.
    pub history: u32,
}

/// Let's Encrypt's limits, applied by default only to its own directories.
fn is_letsencrypt(directory: &url::Url) -> bool {
    directory
        .host_str()
        .is_some_and(|h| h.ends_with(".letsencrypt.org"))
}

/// The name of the one issuer when `CERTFLEET_ACME_ISSUERS` is not set.
pub const DEFAULT_ISSUER: &str = "default";

/// An issuer's name: what `issue --ca` and the pointer's `issuer` say.
fn parse_issuer_name(s: &str) -> Result<String, String> {
    certfleet_common::job::check_issuer(s).map(|()| s.to_string())
}

/// `NAME=DIRECTORY_URL[,NAME=DIRECTORY_URL...]`: the CAs in the order they
/// are tried.
fn parse_issuers(s: &str) -> Result<Vec<(String, url::Url)>, String> {
    let mut out: Vec<(String, url::Url)> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, url) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?} is not NAME=DIRECTORY_URL"))?;
        let name = parse_issuer_name(name.trim())?;
        if out.iter().any(|(n, _)| *n == name) {
            return Err(format!("issuer {name} is listed twice"));
        }
        out.push((name, parse_url(url.trim(), &["https", "http"])?));
    }
    if out.is_empty() {
        return Err("no issuer listed".into());
    }
    Ok(out)
}

impl AcmeConfig {
    /// Validates the CA settings: the issuers of `CERTFLEET_ACME_ISSUERS`,
    /// or the one of `CERTFLEET_ACME_DIRECTORY` (`endpoint`), named
    /// [`DEFAULT_ISSUER`]. Each issuer `NAME` may have its own
    /// `CERTFLEET_ACME_ISSUER_<NAME>_{CA_CERTS,EMAIL,EAB_KID,EAB_HMAC_KEY}`
    /// (`-` written `_`); the CA roots and the email default to the global
    /// ones, an account binding only for the first issuer.
    ///
    /// # Errors
    /// The first invalid value; one half of an external account binding
    /// without the other.
    pub fn load_issuers(
        src: &Sources<'_>,
        endpoint: &AcmeEndpoint,
    ) -> Result<Vec<Self>, ConfigError> {
        let Some(list) = src.parse(keys::ACME_ISSUERS, parse_issuers)? else {
            return Ok(vec![Self::load_one(
                src,
                DEFAULT_ISSUER,
                endpoint.directory.clone(),
                endpoint.ca_certs.clone(),
                true,
            )?]);
        };
        let mut out = Vec::with_capacity(list.len());
        for (i, (name, directory)) in list.into_iter().enumerate() {
            let key = |what: &str| format!("acme_issuer_{}_{what}", name.replace('-', "_"));
            let ca_certs = match src.parse(&key("ca_certs"), parse_existing_file)? {
                Some(p) => Some(p),
                None => endpoint.ca_certs.clone(),
            };
            out.push(Self::load_one(src, &name, directory, ca_certs, i == 0)?);
        }
        Ok(out)
    }

    /// One issuer. `primary`: the global account binding applies to it.
    fn load_one(
        src: &Sources<'_>,
        name: &str,
        directory: url::Url,
        ca_certs: Option<PathBuf>,
        primary: bool,
    ) -> Result<Self, ConfigError> {
        let own = |what: &str| format!("acme_issuer_{}_{what}", name.replace('-', "_"));
        let le = is_letsencrypt(&directory);
        let pick = |own_key: String, global: &str| -> Result<Option<String>, ConfigError> {
            // An account binding's parts are secrets: never echoed.
            let read = |s: &str| Ok(s.trim().to_string());
            match src.parse(&own_key, read)? {
                Some(v) => Ok(Some(v)),
                None if primary || name == DEFAULT_ISSUER => src.parse(global, read),
                None => Ok(None),
            }
        };
        let eab_kid = pick(own("eab_kid"), keys::ACME_EAB_KID)?;
        let eab_hmac = pick(own("eab_hmac_key"), keys::ACME_EAB_HMAC_KEY)?;
        let missing = |key: &str, other: &str| ConfigError::Invalid {
            origin: Origin::Env(env_name(key)),
            value: None,
            reason: format!("missing, but {} is set", env_name(other)),
        };
        let eab = match (eab_kid, eab_hmac) {
            (Some(kid), Some(hmac)) => Some(Eab {
                kid,
                hmac_key: Secret::new(hmac),
            }),
            (None, None) => None,
            (Some(_), None) => return Err(missing(keys::ACME_EAB_HMAC_KEY, keys::ACME_EAB_KID)),
            (None, Some(_)) => return Err(missing(keys::ACME_EAB_KID, keys::ACME_EAB_HMAC_KEY)),
        };
        let email = match src.parse(&own("email"), parse_email)? {
            Some(e) => Some(e),
            None => src.parse(keys::ACME_EMAIL, parse_email)?,
        };
        Ok(Self {
            name: name.to_string(),
            directory,
            ca_certs,
            email,
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
            rate_certs_per_domain: src.parse_or(
                keys::RATE_CERTS_PER_DOMAIN,
                if le { "50/7d" } else { "off" },
                RateLimit::parse,
            )?,
            rate_duplicates: src.parse_or(
                keys::RATE_DUPLICATES,
                if le { "5/7d" } else { "off" },
                RateLimit::parse,
            )?,
        })
    }
}

impl WorkerConfig {
    /// Validates the worker process settings.
    ///
    /// # Errors
    /// The first invalid value.
    pub fn load(src: &Sources<'_>) -> Result<Self, ConfigError> {
        Ok(Self {
            http01_listen: src.parse_or(
                keys::HTTP01_LISTEN,
                DEFAULT_HTTP01_LISTEN,
                parse_listen,
            )?,
            tlsalpn01_listen: src.parse(keys::TLSALPN01_LISTEN, parse_listen)?,
            ari_recheck_min: src.parse_or(keys::ARI_RECHECK_MIN, "1m", |s| {
                let d = parse_duration(s)?;
                if d < Duration::from_secs(1) {
                    return Err("must be at least 1s".into());
                }
                Ok(d)
            })?,
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
            shutdown_grace: src.parse_or(
                keys::SHUTDOWN_GRACE,
                &format_duration(DEFAULT_SHUTDOWN_GRACE),
                parse_duration,
            )?,
            lease_ttl: src.parse_or(keys::LEASE_TTL, &format_duration(DEFAULT_LEASE_TTL), |s| {
                let d = parse_duration(s)?;
                if d < MIN_LEASE_TTL {
                    return Err(format!(
                        "must be at least {}",
                        format_duration(MIN_LEASE_TTL)
                    ));
                }
                Ok(d)
            })?,
            schedule_every: src.parse(keys::SCHEDULE_EVERY, |s| {
                let d = parse_duration(s)?;
                if d < Duration::from_secs(1) {
                    return Err("must be at least 1s".into());
                }
                Ok(d)
            })?,
            bindings: src.parse_or(keys::WORKER_BINDINGS, "job.#", parse_bindings)?,
            work_queue: src.parse_or(
                keys::WORK_QUEUE,
                certfleet_common::topology::WORK_QUEUE,
                |s| {
                    let s = s.trim();
                    if s.starts_with("certfleet.") && s.len() <= 200 && parse_prefix(s).is_ok() {
                        Ok(s.to_string())
                    } else {
                        Err("must start with \"certfleet.\" (e.g. certfleet.work.dns)".into())
                    }
                },
            )?,
            history: src.parse_or(keys::HISTORY, &DEFAULT_HISTORY.to_string(), |s| {
                parse_u32(s, 100)
            })?,
        })
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
    use std::collections::HashMap;

    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let mut env: HashMap<&str, &str> = vars.iter().copied().collect();
        env.entry("CERTFLEET_INSECURE_PLAINTEXT_KEYS")
            .or_insert("true");
        Settings::load(&Sources::new(&env))
    }

    #[test]
    fn issuers_in_order_each_with_its_own_settings() -> Result<(), ConfigError> {
        let c = load(&[
            (
                "CERTFLEET_ACME_ISSUERS",
                "le=https://acme-v02.api.letsencrypt.org/directory, zerossl=https://acme.zerossl.com/v2/DV90",
            ),
            ("CERTFLEET_ACME_ISSUER_ZEROSSL_EAB_KID", "kid"),
            ("CERTFLEET_ACME_ISSUER_ZEROSSL_EAB_HMAC_KEY", "c2VjcmV0"),
            ("CERTFLEET_ACME_EMAIL", "ops@example.com"),
        ])?;
        let names: Vec<&str> = c.issuers.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["le", "zerossl"]);
        assert_eq!(c.acme.name, "le");
        // Let's Encrypt's limits only for Let's Encrypt; the binding only
        // where it was given; the email for both.
        assert_eq!(c.issuers[0].rate_orders.map(|r| r.count), Some(300));
        assert_eq!(c.issuers[1].rate_orders, None);
        assert!(c.issuers[0].eab.is_none());
        assert_eq!(
            c.issuers[1].eab.as_ref().map(|e| e.kid.as_str()),
            Some("kid")
        );
        assert!(
            c.issuers
                .iter()
                .all(|i| i.email.as_deref() == Some("ops@example.com"))
        );
        // Without the list: one issuer, "default".
        assert_eq!(load(&[])?.issuers.len(), 1);
        assert_eq!(load(&[])?.acme.name, DEFAULT_ISSUER);
        for bad in [
            "le",
            "LE=https://a.example/dir",
            "a=https://x/d,a=https://y/d",
            "a=ftp://x/d",
        ] {
            let Err(err) = load(&[("CERTFLEET_ACME_ISSUERS", bad)]) else {
                panic!("{bad} accepted");
            };
            assert!(
                err.to_string().contains("CERTFLEET_ACME_ISSUERS"),
                "{bad}: {err}"
            );
        }
        Ok(())
    }

    #[test]
    fn defaults_are_valid_and_staging() -> Result<(), ConfigError> {
        let c = load(&[])?;
        assert_eq!(c.acme.directory.as_str(), DEFAULT_ACME_DIRECTORY);
        assert_eq!(c.worker.concurrency.get(), DEFAULT_CONCURRENCY);
        assert_eq!(c.acme.rate_orders.map(|r| r.count), Some(300));
        assert_eq!(c.common.redis.prefix, "certfleet:");
        assert_eq!(c.worker.bindings, vec!["job.#".to_string()]);
        assert_eq!(c.worker.lease_ttl, DEFAULT_LEASE_TTL);
        assert_eq!(c.worker.shutdown_grace, DEFAULT_SHUTDOWN_GRACE);
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
        let err = load(&[("CERTFLEET_LEASE_TTL", "2s")])
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().ends_with("must be at least 3s"), "{err}");
    }

    #[test]
    fn flag_beats_env_beats_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "concurrency = 3\nhistory = 7\ns3_path_style = true\n",
        )?;
        let env: HashMap<&str, &str> = [
            ("CERTFLEET_CONCURRENCY", "5"),
            ("CERTFLEET_INSECURE_PLAINTEXT_KEYS", "true"),
        ]
        .into();
        let c = Settings::load(&Sources::new(&env).file(Some(&path))?)?;
        assert_eq!(c.worker.concurrency.get(), 5);
        assert_eq!(c.worker.history, 7);
        assert!(c.common.s3.path_style);
        let c = Settings::load(
            &Sources::new(&env)
                .file(Some(&path))?
                .flag(keys::CONCURRENCY, Some(9))?,
        )?;
        assert_eq!(c.worker.concurrency.get(), 9);
        Ok(())
    }

    #[test]
    fn keys_are_not_stored_in_the_clear_unless_told() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (_, recipient) = certfleet_common::seal::recipients::generate();
        let recipients = dir.path().join("recipients");
        std::fs::write(&recipients, format!("* {recipient}\n"))?;
        let recipients = recipients.display().to_string();
        let bare: HashMap<&str, &str> = HashMap::new();
        let err = Settings::load(&Sources::new(&bare))
            .map(|_| ())
            .unwrap_err();
        assert!(
            err.to_string().contains("CERTFLEET_RECIPIENTS_FILE"),
            "{err}"
        );
        let only_recipients: HashMap<&str, &str> =
            [("CERTFLEET_RECIPIENTS_FILE", recipients.as_str())].into();
        let err = Settings::load(&Sources::new(&only_recipients))
            .map(|_| ())
            .unwrap_err();
        assert!(
            err.to_string().contains("CERTFLEET_ENCRYPTION_KEY"),
            "{err}"
        );
        let both: HashMap<&str, &str> = [
            ("CERTFLEET_RECIPIENTS_FILE", recipients.as_str()),
            (
                "CERTFLEET_ENCRYPTION_KEY",
                "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
            ),
        ]
        .into();
        let c = Settings::load(&Sources::new(&both))?;
        assert_eq!(c.common.storage.check_for_worker()?, None);
        let insecure: HashMap<&str, &str> = [("CERTFLEET_INSECURE_PLAINTEXT_KEYS", "true")].into();
        let c = Settings::load(&Sources::new(&insecure))?;
        assert!(c.common.storage.check_for_worker()?.is_some());
        let broken = dir.path().join("broken");
        std::fs::write(&broken, "*.example.com not-a-recipient\n")?;
        let broken = broken.display().to_string();
        let env: HashMap<&str, &str> = [("CERTFLEET_RECIPIENTS_FILE", broken.as_str())].into();
        let err = Settings::load(&Sources::new(&env)).map(|_| ()).unwrap_err();
        assert!(
            err.to_string().contains("CERTFLEET_RECIPIENTS_FILE")
                && err.to_string().contains("line 1"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn file_errors_name_the_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "history = \"many\"\n")?;
        let env: HashMap<&str, &str> = [("CERTFLEET_INSECURE_PLAINTEXT_KEYS", "true")].into();
        let err = Settings::load(&Sources::new(&env).file(Some(&path))?)
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().starts_with("history in "), "{err}");
        Ok(())
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
    fn bindings() {
        assert!(load(&[("CERTFLEET_WORKER_BINDINGS", "job.*.dns-01, job.renew.#")]).is_ok());
        assert!(load(&[("CERTFLEET_WORKER_BINDINGS", "cert.#")]).is_err());
    }

    #[test]
    fn a_client_does_not_validate_worker_settings() -> Result<(), ConfigError> {
        // `certfleet pull` on a webserver: a bad worker setting is not its concern.
        let env: HashMap<&str, &str> = [("CERTFLEET_CONCURRENCY", "lots")].into();
        Config::load(&Sources::new(&env))?;
        assert!(Settings::load(&Sources::new(&env)).is_err());
        Ok(())
    }
}
