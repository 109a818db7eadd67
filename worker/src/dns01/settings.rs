//! The dns-01 section of the worker's configuration: which provider serves
//! which zone, how each provider reaches its DNS host, where zones and
//! nameservers are looked up, and how long to wait for propagation.
//!
//! Validated with the rest of the configuration, before any connection: a
//! provider that is named (`CERTFLEET_DNS01_PROVIDER`, or a zone of
//! `CERTFLEET_DNS01_ZONES`) must have its settings, and a missing or bad
//! one stops the worker with exit code 64 naming the variable. Providers
//! that nobody names are not validated. Secrets (TSIG secret, API tokens)
//! come only from the environment or a `_FILE`; lego's variable names for
//! the same providers are read when certfleet's are unset, so an existing
//! lego environment works unchanged.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use certfleet_common::config::parse::{format_duration, parse_duration, parse_u32, parse_url};
use certfleet_common::config::{ConfigError, Origin, Sources, env_name, keys};
use certfleet_common::secret::Secret;

use super::{
    AcmeDnsConfig, CloudflareConfig, DigitalOceanConfig, ExecConfig, Rfc2136Config, Route53Config,
    TsigAlg, TsigSecret,
};

/// Default wait until every authoritative server serves the value.
pub const DEFAULT_PROPAGATION_TIMEOUT: Duration = Duration::from_secs(120);
/// Default TTL of the challenge records (short: they live for minutes).
pub const DEFAULT_TTL: u32 = 60;
/// Default time one run of the `exec` command may take.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// A dns-01 provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderName {
    /// RFC 2136 dynamic updates with TSIG.
    Rfc2136,
    /// DigitalOcean's API.
    DigitalOcean,
    /// Cloudflare's API.
    Cloudflare,
    /// AWS Route 53.
    Route53,
    /// acme-dns (CNAME delegation).
    AcmeDns,
    /// An operator's command.
    Exec,
}

impl ProviderName {
    /// The name in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rfc2136 => "rfc2136",
            Self::DigitalOcean => "digitalocean",
            Self::Cloudflare => "cloudflare",
            Self::Route53 => "route53",
            Self::AcmeDns => "acme-dns",
            Self::Exec => "exec",
        }
    }
}

impl fmt::Display for ProviderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProviderName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "rfc2136" => Self::Rfc2136,
            "digitalocean" => Self::DigitalOcean,
            "cloudflare" => Self::Cloudflare,
            "route53" => Self::Route53,
            "acme-dns" | "acmedns" => Self::AcmeDns,
            "exec" => Self::Exec,
            other => {
                return Err(format!(
                    "unknown dns-01 provider {other:?} (rfc2136, digitalocean, cloudflare, route53, acme-dns or exec)"
                ));
            }
        })
    }
}

/// The validated dns-01 settings.
#[derive(Debug, Clone, Default)]
pub struct Dns01Settings {
    /// Provider of every zone not in `zones`; `None`: no dns-01 here.
    pub default_provider: Option<ProviderName>,
    /// Providers of particular zones (lower case, no trailing dot); a name
    /// belongs to the longest zone that ends it.
    pub zones: Vec<(String, ProviderName)>,
    /// Recursive resolvers for look-ups; empty means the system's.
    pub resolvers: Vec<SocketAddr>,
    /// Wait until every authoritative server serves the value.
    pub propagation_timeout: Duration,
    /// TTL of the records.
    pub ttl: u32,
    /// `rfc2136`, when used.
    pub rfc2136: Option<Rfc2136Config>,
    /// `digitalocean`, when used.
    pub digitalocean: Option<DigitalOceanConfig>,
    /// `cloudflare`, when used.
    pub cloudflare: Option<CloudflareConfig>,
    /// `route53`, when used.
    pub route53: Option<Route53Config>,
    /// `acme-dns`, when used.
    pub acmedns: Option<AcmeDnsConfig>,
    /// `exec`, when used.
    pub exec: Option<ExecConfig>,
}

impl Dns01Settings {
    /// Whether this worker can solve dns-01 at all.
    pub fn enabled(&self) -> bool {
        self.default_provider.is_some() || !self.zones.is_empty()
    }

    /// Validates the section.
    ///
    /// # Errors
    /// The first invalid or missing value, naming its variable.
    pub fn load(
        src: &Sources<'_>,
        aws: Option<&certfleet_common::config::StaticCredentials>,
    ) -> Result<Self, ConfigError> {
        let default_provider = src.parse(keys::DNS01_PROVIDER, |s| s.parse::<ProviderName>())?;
        let zones = src
            .parse(keys::DNS01_ZONES, parse_zones)?
            .unwrap_or_default();
        let mut used: Vec<ProviderName> = zones.iter().map(|(_, p)| *p).collect();
        used.extend(default_provider);
        let ttl = src.parse_or(keys::DNS01_TTL, &DEFAULT_TTL.to_string(), |s| {
            let ttl = parse_u32(s, 86_400)?;
            if ttl == 0 {
                return Err("must be at least 1".into());
            }
            Ok(ttl)
        })?;
        let mut settings = Self {
            default_provider,
            zones,
            resolvers: src
                .parse(keys::DNS01_RESOLVERS, parse_resolvers)?
                .unwrap_or_default(),
            propagation_timeout: src.parse_or(
                keys::DNS01_PROPAGATION_TIMEOUT,
                &format_duration(DEFAULT_PROPAGATION_TIMEOUT),
                parse_duration,
            )?,
            ttl,
            ..Self::default()
        };
        for provider in used {
            match provider {
                ProviderName::Rfc2136 if settings.rfc2136.is_none() => {
                    settings.rfc2136 = Some(rfc2136(src, ttl)?);
                }
                ProviderName::DigitalOcean if settings.digitalocean.is_none() => {
                    let token = secret(
                        src,
                        keys::DIGITALOCEAN_TOKEN,
                        keys::DIGITALOCEAN_TOKEN_FILE,
                        "DO_AUTH_TOKEN",
                        provider,
                    )?;
                    let mut c =
                        DigitalOceanConfig::new(super::ApiSecret::new(token.expose().clone()));
                    if let Some(url) = src.parse(keys::DIGITALOCEAN_API_URL, |s| {
                        parse_url(s, &["https", "http"])
                    })? {
                        c.api_base = url.as_str().trim_end_matches('/').to_string();
                    }
                    c.ttl = ttl;
                    settings.digitalocean = Some(c);
                }
                ProviderName::Cloudflare if settings.cloudflare.is_none() => {
                    let token = secret(
                        src,
                        keys::CLOUDFLARE_API_TOKEN,
                        keys::CLOUDFLARE_API_TOKEN_FILE,
                        "CLOUDFLARE_DNS_API_TOKEN",
                        provider,
                    )?;
                    let mut c =
                        CloudflareConfig::new(super::ApiSecret::new(token.expose().clone()));
                    if let Some(url) = src.parse(keys::CLOUDFLARE_API_URL, |s| {
                        parse_url(s, &["https", "http"])
                    })? {
                        c.api_base = url.as_str().trim_end_matches('/').to_string();
                    }
                    c.ttl = ttl;
                    settings.cloudflare = Some(c);
                }
                ProviderName::Route53 if settings.route53.is_none() => {
                    let mut c = Route53Config::new();
                    c.hosted_zone_id =
                        src.parse(keys::ROUTE53_HOSTED_ZONE_ID, |s| Ok(s.trim().to_string()))?;
                    c.endpoint_url = src
                        .parse(keys::ROUTE53_ENDPOINT, |s| parse_url(s, &["https", "http"]))?
                        .map(|u| u.as_str().trim_end_matches('/').to_string());
                    c.credentials = aws.map(|a| super::AwsStaticCredentials {
                        access_key_id: a.access_key_id.clone(),
                        secret_access_key: super::ApiSecret::new(
                            a.secret_access_key.expose().clone(),
                        ),
                        session_token: None,
                    });
                    c.ttl = ttl;
                    settings.route53 = Some(c);
                }
                ProviderName::AcmeDns if settings.acmedns.is_none() => {
                    settings.acmedns = Some(acmedns(src)?);
                }
                ProviderName::Exec if settings.exec.is_none() => {
                    settings.exec = Some(exec(src)?);
                }
                _ => {}
            }
        }
        Ok(settings)
    }
}

fn missing(key: &str, provider: ProviderName, also: &str) -> ConfigError {
    ConfigError::Invalid {
        origin: Origin::Env(env_name(key)),
        value: None,
        reason: format!("missing: the {provider} dns-01 provider needs it{also}"),
    }
}

/// A setting, else the same setting under lego's variable name.
fn with_lego<T>(
    src: &Sources<'_>,
    key: &str,
    lego: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<T>, ConfigError> {
    if let Some(v) = src.parse(key, &parse)? {
        return Ok(Some(v));
    }
    match src.env_var(lego) {
        Some(raw) => parse(&raw)
            .map(Some)
            .map_err(|reason| ConfigError::Invalid {
                origin: Origin::Env(lego.to_string()),
                value: Some(raw),
                reason,
            }),
        None => Ok(None),
    }
}

/// A secret from `KEY`, `KEY_FILE`, or lego's `LEGO` / `LEGO_FILE`.
fn secret(
    src: &Sources<'_>,
    key: &str,
    file_key: &str,
    lego: &str,
    provider: ProviderName,
) -> Result<Secret<String>, ConfigError> {
    let read_file = |path: &str| -> Result<String, String> {
        let text = std::fs::read_to_string(path.trim())
            .map_err(|e| format!("cannot read the file: {e}"))?;
        let text = text.trim().to_string();
        if text.is_empty() {
            return Err("the file is empty".into());
        }
        Ok(text)
    };
    let inline = src.parse(key, |s| Ok(s.trim().to_string()))?;
    let file = src.parse(file_key, read_file)?;
    if inline.is_some() && file.is_some() {
        return Err(ConfigError::Invalid {
            origin: Origin::Env(env_name(file_key)),
            value: None,
            reason: format!("set only one of it and {}", env_name(key)),
        });
    }
    if let Some(v) = inline.or(file) {
        return Ok(Secret::new(v));
    }
    if let Some(v) = src.env_var(lego) {
        return Ok(Secret::new(v.trim().to_string()));
    }
    let lego_file = format!("{lego}_FILE");
    if let Some(path) = src.env_var(&lego_file) {
        return read_file(&path)
            .map(Secret::new)
            .map_err(|reason| ConfigError::Invalid {
                origin: Origin::Env(lego_file),
                value: Some(path),
                reason,
            });
    }
    Err(missing(
        key,
        provider,
        &format!(" (or {}, or lego's {lego})", env_name(file_key)),
    ))
}

fn rfc2136(src: &Sources<'_>, ttl: u32) -> Result<Rfc2136Config, ConfigError> {
    let p = ProviderName::Rfc2136;
    let nameserver = with_lego(src, keys::RFC2136_NAMESERVER, "RFC2136_NAMESERVER", |s| {
        let s = s.trim();
        if s.is_empty() || s.contains(char::is_whitespace) {
            return Err("not host[:port]".into());
        }
        Ok(s.to_string())
    })?
    .ok_or_else(|| {
        missing(
            keys::RFC2136_NAMESERVER,
            p,
            " (or lego's RFC2136_NAMESERVER)",
        )
    })?;
    let key_name = with_lego(src, keys::RFC2136_TSIG_KEY, "RFC2136_TSIG_KEY", |s| {
        let s = s.trim();
        if s.is_empty() || s.contains(char::is_whitespace) {
            return Err("not a TSIG key name".into());
        }
        Ok(s.to_string())
    })?
    .ok_or_else(|| missing(keys::RFC2136_TSIG_KEY, p, " (or lego's RFC2136_TSIG_KEY)"))?;
    let raw = secret(
        src,
        keys::RFC2136_TSIG_SECRET,
        keys::RFC2136_TSIG_SECRET_FILE,
        "RFC2136_TSIG_SECRET",
        p,
    )?;
    let tsig = TsigSecret::from_base64(raw.expose()).map_err(|e| ConfigError::Invalid {
        origin: Origin::Env(env_name(keys::RFC2136_TSIG_SECRET)),
        value: None,
        reason: e.to_string(),
    })?;
    let algorithm = with_lego(
        src,
        keys::RFC2136_TSIG_ALGORITHM,
        "RFC2136_TSIG_ALGORITHM",
        |s| s.parse::<TsigAlg>().map_err(|e| e.to_string()),
    )?
    .unwrap_or_default();
    let mut c = Rfc2136Config::new(nameserver, key_name, tsig);
    c.algorithm = algorithm;
    c.ttl = ttl;
    Ok(c)
}

fn acmedns(src: &Sources<'_>) -> Result<AcmeDnsConfig, ConfigError> {
    let p = ProviderName::AcmeDns;
    let api = with_lego(src, keys::ACMEDNS_API_URL, "ACME_DNS_API_BASE", |s| {
        parse_url(s, &["https", "http"]).map(|u| u.as_str().trim_end_matches('/').to_string())
    })?
    .ok_or_else(|| missing(keys::ACMEDNS_API_URL, p, " (or lego's ACME_DNS_API_BASE)"))?;
    let storage: PathBuf = with_lego(src, keys::ACMEDNS_STORAGE, "ACME_DNS_STORAGE_PATH", |s| {
        Ok(PathBuf::from(s.trim()))
    })?
    .ok_or_else(|| {
        missing(
            keys::ACMEDNS_STORAGE,
            p,
            " (or lego's ACME_DNS_STORAGE_PATH)",
        )
    })?;
    let origin = Origin::Env(env_name(keys::ACMEDNS_STORAGE));
    let text = std::fs::read_to_string(&storage).map_err(|e| ConfigError::Invalid {
        origin: origin.clone(),
        value: Some(storage.display().to_string()),
        reason: format!("cannot read the accounts file: {e}"),
    })?;
    AcmeDnsConfig::from_storage_json(api, &text).map_err(|e| ConfigError::Invalid {
        origin,
        value: Some(storage.display().to_string()),
        reason: e.to_string(),
    })
}

fn exec(src: &Sources<'_>) -> Result<ExecConfig, ConfigError> {
    let p = ProviderName::Exec;
    let command = with_lego(src, keys::DNS01_EXEC, "EXEC_PATH", |s| {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty command".into());
        }
        Ok(PathBuf::from(s))
    })?
    .ok_or_else(|| missing(keys::DNS01_EXEC, p, " (or lego's EXEC_PATH)"))?;
    let mut c = ExecConfig::new(command);
    c.timeout = src.parse_or(
        keys::DNS01_EXEC_TIMEOUT,
        &format_duration(DEFAULT_EXEC_TIMEOUT),
        parse_duration,
    )?;
    c.pass_env = src
        .parse(keys::DNS01_EXEC_ENV, |s| {
            let names: Vec<String> = s
                .split([',', ' '])
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect();
            for n in &names {
                if !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!("{n:?} is not a variable name"));
                }
            }
            Ok(names)
        })?
        .unwrap_or_default();
    // The hook's environment is taken now, through the configuration
    // layer: PATH, HOME, LANG and the names the operator listed, nothing
    // else (never the broker's, Redis' or S3's credentials).
    let mut base: HashMap<String, String> = HashMap::new();
    for name in ["PATH", "HOME", "LANG"]
        .into_iter()
        .map(str::to_string)
        .chain(c.pass_env.iter().cloned())
    {
        if let Some(v) = src.env_var(&name) {
            base.insert(name, v);
        }
    }
    c.base_env = Some(base);
    Ok(c)
}

fn parse_zones(s: &str) -> Result<Vec<(String, ProviderName)>, String> {
    let mut zones = Vec::new();
    for part in s.split([',', ' ']).map(str::trim).filter(|p| !p.is_empty()) {
        let (zone, provider) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not ZONE=PROVIDER"))?;
        let zone = zone.trim().trim_end_matches('.').to_ascii_lowercase();
        if zone.is_empty() || zone.contains(char::is_whitespace) {
            return Err(format!("{part:?}: empty or bad zone"));
        }
        zones.push((zone, provider.parse()?));
    }
    if zones.is_empty() {
        return Err("no ZONE=PROVIDER given".into());
    }
    Ok(zones)
}

fn parse_resolvers(s: &str) -> Result<Vec<SocketAddr>, String> {
    let mut out = Vec::new();
    for part in s.split([',', ' ']).map(str::trim).filter(|p| !p.is_empty()) {
        let addr = match part.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => match part.parse::<std::net::IpAddr>() {
                Ok(ip) => SocketAddr::new(ip, 53),
                Err(_) => return Err(format!("{part:?} is not IP[:port]")),
            },
        };
        out.push(addr);
    }
    if out.is_empty() {
        return Err("no resolver given".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<Dns01Settings, ConfigError> {
        let env: HashMap<&str, &str> = vars.iter().copied().collect();
        Dns01Settings::load(&Sources::new(&env), None)
    }

    #[test]
    fn off_by_default() -> Result<(), ConfigError> {
        let s = load(&[])?;
        assert!(!s.enabled());
        assert_eq!(s.propagation_timeout, DEFAULT_PROPAGATION_TIMEOUT);
        // Settings of a provider nobody names are not validated.
        assert!(!load(&[("CERTFLEET_RFC2136_TSIG_ALGORITHM", "md5")])?.enabled());
        Ok(())
    }

    #[test]
    fn rfc2136_from_certfleet_or_lego_names() -> Result<(), ConfigError> {
        let s = load(&[
            ("CERTFLEET_DNS01_PROVIDER", "rfc2136"),
            ("CERTFLEET_RFC2136_NAMESERVER", "127.0.0.153:53"),
            ("CERTFLEET_RFC2136_TSIG_KEY", "certfleet."),
            ("CERTFLEET_RFC2136_TSIG_SECRET", "c2VjcmV0c2VjcmV0"),
        ])?;
        let c = s.rfc2136.expect("configured");
        assert_eq!(c.key_name, "certfleet.");
        assert_eq!(c.algorithm, TsigAlg::HmacSha256);
        let s = load(&[
            ("CERTFLEET_DNS01_PROVIDER", "rfc2136"),
            ("RFC2136_NAMESERVER", "ns1.example.com"),
            ("RFC2136_TSIG_KEY", "lego."),
            ("RFC2136_TSIG_SECRET", "c2VjcmV0c2VjcmV0"),
            ("RFC2136_TSIG_ALGORITHM", "hmac-sha512."),
        ])?;
        let c = s.rfc2136.expect("configured");
        assert_eq!(
            (c.nameserver.as_str(), c.algorithm),
            ("ns1.example.com", TsigAlg::HmacSha512)
        );
        Ok(())
    }

    #[test]
    fn missing_and_bad_values_name_the_variable_never_the_secret() {
        let err = load(&[("CERTFLEET_DNS01_PROVIDER", "rfc2136")])
            .map(|_| ())
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("CERTFLEET_RFC2136_NAMESERVER: missing"),
            "{err}"
        );
        let err = load(&[("CERTFLEET_DNS01_PROVIDER", "bind")])
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().contains("unknown dns-01 provider"), "{err}");
        let err = load(&[
            ("CERTFLEET_DNS01_PROVIDER", "rfc2136"),
            ("CERTFLEET_RFC2136_NAMESERVER", "127.0.0.1"),
            ("CERTFLEET_RFC2136_TSIG_KEY", "k."),
            ("CERTFLEET_RFC2136_TSIG_SECRET", "not base64 %%%"),
        ])
        .map(|_| ())
        .unwrap_err();
        assert!(
            err.to_string().starts_with("CERTFLEET_RFC2136_TSIG_SECRET"),
            "{err}"
        );
        assert!(!err.to_string().contains("%%%"), "{err}");
        let err = load(&[("CERTFLEET_DNS01_PROVIDER", "digitalocean")])
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().contains("DO_AUTH_TOKEN"), "{err}");
        let s = load(&[
            ("CERTFLEET_DNS01_PROVIDER", "digitalocean"),
            ("DO_AUTH_TOKEN", "dop_v1_topsecret"),
        ])
        .expect("lego's name");
        assert!(!format!("{s:?}").contains("topsecret"));
    }

    #[test]
    fn zones_and_resolvers() -> Result<(), ConfigError> {
        let s = load(&[
            (
                "CERTFLEET_DNS01_ZONES",
                "Example.COM.=exec, dns02.test=exec",
            ),
            ("CERTFLEET_DNS01_EXEC", "/usr/local/bin/hook"),
            ("CERTFLEET_DNS01_RESOLVERS", "127.0.0.153, 127.0.0.1:5353"),
        ])?;
        assert_eq!(s.zones[0], ("example.com".to_string(), ProviderName::Exec));
        assert_eq!(s.resolvers[0], "127.0.0.153:53".parse().expect("addr"));
        assert!(load(&[("CERTFLEET_DNS01_ZONES", "example.com")]).is_err());
        assert!(load(&[("CERTFLEET_DNS01_RESOLVERS", "resolver.local")]).is_err());
        Ok(())
    }

    #[test]
    fn exec_environment_is_an_allowlist() -> Result<(), ConfigError> {
        let s = load(&[
            ("CERTFLEET_DNS01_PROVIDER", "exec"),
            ("CERTFLEET_DNS01_EXEC", "hook"),
            ("CERTFLEET_DNS01_EXEC_ENV", "DNS_API_KEY"),
            ("DNS_API_KEY", "k"),
            ("PATH", "/usr/bin"),
            ("AWS_SECRET_ACCESS_KEY", "leak-me"),
            ("CERTFLEET_AMQP_URL", "amqp://u:pw@h/%2f"),
        ])?;
        let base = s.exec.and_then(|e| e.base_env).expect("snapshot");
        let mut names: Vec<&String> = base.keys().collect();
        names.sort();
        assert_eq!(names, ["DNS_API_KEY", "PATH"]);
        Ok(())
    }
}
