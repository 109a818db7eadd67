//! acme-dns provider (joohoi/acme-dns HTTP API, <https://github.com/joohoi/acme-dns#api>).
//!
//! This module owns the `/update` call and the account storage, modelled on lego's
//! `providers/dns/acmedns` (goacmedns):
//!
//! - Accounts come from the JSON file lego keeps at `ACME_DNS_STORAGE_PATH`: an object
//!   mapping each domain to `{"username","password","fulldomain","subdomain","server_url"}`
//!   (`server_url` optional, informational: requests go to [`AcmeDnsConfig::api_base`], as in
//!   lego). See [`AcmeDnsConfig::from_storage_json`].
//! - present: `POST {api_base}/update` with headers `X-Api-User`/`X-Api-Key` and
//!   `{"subdomain":..,"txt":value}`; 200 means done. The caller passes the name *after*
//!   CNAME following (`_acme-challenge.example.com` → `<subdomain>.<acme-dns zone>`), so the
//!   account is the one whose `fulldomain` is that name (case-insensitive, final dot
//!   ignored); none → [`DnsError::Config`] asking to register the domain.
//! - cleanup: nothing. acme-dns has no delete: each subdomain serves its two most recent
//!   values (an update overwrites the older one), which is exactly enough for an apex and a
//!   wildcard order at once; stale values are harmless and get overwritten by the next
//!   order. A third concurrent order for one domain evicts the oldest value: its
//!   validation fails and is retried.
//!
//! Errors: 401 (`{"error":"forbidden"}`: wrong user/key, subdomain mismatch, or an
//! `allowfrom` range excluding us) refuses; 400 (`bad_txt`, `bad_subdomain`) rejects (acme-dns
//! only accepts 43-character values, the size of an ACME key authorization digest); 429 and
//! 5xx are retryable. The key never appears in messages.

use std::collections::HashMap;
use std::time::Duration;

use http::Method;
use serde::Deserialize;
use serde_json::json;
use tracing::info;

use super::http::{
    ApiRequest, DEFAULT_HTTP_TIMEOUT, HttpClient, Secret, excerpt, normalize_base, parse_json,
    unfqdn,
};
use super::provider::{Dns01Provider, DnsError, DnsFuture};

/// One acme-dns registration (lego/goacmedns storage format).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AcmeDnsAccount {
    /// API user (a UUID), sent as `X-Api-User`.
    pub username: String,
    /// API key, sent as `X-Api-Key`.
    pub password: Secret,
    /// The name the domain's `_acme-challenge` CNAME points to (`<subdomain>.<zone>`).
    pub fulldomain: String,
    /// The account's label under the acme-dns zone.
    pub subdomain: String,
    /// The acme-dns server the account was registered with (informational).
    #[serde(default)]
    pub server_url: Option<String>,
}

/// Settings of an [`AcmeDnsProvider`].
#[derive(Debug, Clone)]
pub struct AcmeDnsConfig {
    /// The acme-dns API (`https://auth.example.org`).
    pub api_base: String,
    /// Accounts by domain (the storage file's keys; the lookup itself uses `fulldomain`).
    pub accounts: HashMap<String, AcmeDnsAccount>,
    /// Time allowed for one API request.
    pub timeout: Duration,
    /// Propagation wait this backend wants, if not the caller's default.
    pub propagation_timeout: Option<Duration>,
}

impl AcmeDnsConfig {
    /// No accounts, 30 s per request.
    pub fn new(api_base: impl Into<String>) -> Self {
        Self {
            api_base: api_base.into(),
            accounts: HashMap::new(),
            timeout: DEFAULT_HTTP_TIMEOUT,
            propagation_timeout: None,
        }
    }

    /// Settings with the accounts of a lego/goacmedns storage file (`{"example.com":
    /// {"username":..,"password":..,"fulldomain":..,"subdomain":..}, ..}`). Parse errors
    /// give only a position, never file content.
    pub fn from_storage_json(api_base: impl Into<String>, json: &str) -> Result<Self, DnsError> {
        let accounts: HashMap<String, AcmeDnsAccount> =
            serde_json::from_str(json).map_err(|e| {
                DnsError::Config(format!(
                    "acme-dns account storage is not valid ({:?} error at line {}, column {}); \
                     expected {{\"<domain>\": {{\"username\", \"password\", \"fulldomain\", \"subdomain\"}}}}",
                    e.classify(),
                    e.line(),
                    e.column()
                ))
            })?;
        Ok(Self {
            accounts,
            ..Self::new(api_base)
        })
    }
}

/// acme-dns dns-01 provider; see the module documentation.
#[derive(Debug)]
pub struct AcmeDnsProvider {
    http: HttpClient,
    api_base: String,
    accounts: Vec<AcmeDnsAccount>,
    propagation_timeout: Option<Duration>,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    error: String,
}

impl AcmeDnsProvider {
    /// Check the configuration and build the HTTP client.
    pub fn new(config: AcmeDnsConfig) -> Result<Self, DnsError> {
        for (domain, account) in &config.accounts {
            if account.username.is_empty()
                || account.subdomain.is_empty()
                || account.fulldomain.is_empty()
                || account.password.expose().is_empty()
            {
                return Err(DnsError::Config(format!(
                    "acme-dns account for {domain} lacks username, password, fulldomain or subdomain"
                )));
            }
        }
        Ok(Self {
            http: HttpClient::new(config.timeout)?,
            api_base: normalize_base(&config.api_base, "acme-dns")?,
            accounts: config.accounts.into_values().collect(),
            propagation_timeout: config.propagation_timeout,
        })
    }

    fn account_for(&self, fqdn: &str) -> Result<&AcmeDnsAccount, DnsError> {
        let name = unfqdn(fqdn);
        self.accounts
            .iter()
            .find(|a| unfqdn(&a.fulldomain).eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                DnsError::Config(format!(
                    "no acme-dns account has fulldomain {name}: register the domain with \
                     acme-dns, point its _acme-challenge CNAME at the account's fulldomain, \
                     and add the account to the acme-dns storage"
                ))
            })
    }

    async fn update(&self, fqdn: &str, value: &str) -> Result<(), DnsError> {
        let account = self.account_for(fqdn)?;
        let what = format!(
            "acme-dns: updating TXT of {} at {}",
            unfqdn(&account.fulldomain),
            self.api_base
        );
        let user = http::HeaderValue::from_str(&account.username)
            .map_err(|_| DnsError::Config(format!("{what}: username is not a header value")))?;
        let secrets = [&account.password];
        let req = ApiRequest {
            method: Method::POST,
            url: format!("{}/update", self.api_base),
            headers: vec![
                ("x-api-user", user),
                ("x-api-key", account.password.header("")?),
            ],
            body: Some(json!({ "subdomain": account.subdomain, "txt": value })),
            secrets: &secrets,
        };
        let response = self.http.send(req, &what).await?;
        if response.is_success() {
            info!(fulldomain = %account.fulldomain, "acme-dns TXT updated");
            return Ok(());
        }
        let text = match serde_json::from_slice::<ApiError>(&response.body) {
            Ok(e) if !e.error.is_empty() => excerpt(e.error.as_bytes(), &secrets),
            _ => excerpt(&response.body, &secrets),
        };
        Err(DnsError::from_http_status(response.status, &what, &text))
    }
}

impl Dns01Provider for AcmeDnsProvider {
    fn name(&self) -> &'static str {
        "acme-dns"
    }

    fn present<'a>(&'a self, fqdn: &'a str, _zone: &'a str, value: &'a str) -> DnsFuture<'a, ()> {
        Box::pin(self.update(fqdn, value))
    }

    /// acme-dns cannot delete a value (see the module documentation): always `Ok`.
    fn cleanup<'a>(&'a self, _fqdn: &'a str, _zone: &'a str, _value: &'a str) -> DnsFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn propagation_timeout(&self) -> Option<Duration> {
        self.propagation_timeout
    }
}

/// Register a new account (`POST {api_base}/register`, answer 201). For tests and tools:
/// operators normally register with acme-dns's own client and keep the storage file.
pub async fn register(api_base: &str, timeout: Duration) -> Result<AcmeDnsAccount, DnsError> {
    let base = normalize_base(api_base, "acme-dns")?;
    let http = HttpClient::new(timeout)?;
    let what = format!("acme-dns: registering an account at {base}");
    let req = ApiRequest {
        method: Method::POST,
        url: format!("{base}/register"),
        headers: Vec::new(),
        body: None,
        secrets: &[],
    };
    let response = http.send(req, &what).await?;
    if response.status != 201 {
        return Err(DnsError::from_http_status(
            response.status,
            &what,
            &excerpt(&response.body, &[]),
        ));
    }
    let mut account: AcmeDnsAccount = parse_json(&response.body, &what, &[])?;
    account.server_url = Some(base);
    Ok(account)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORAGE: &str = r#"{
      "example.com": {
        "fulldomain": "d420c923-bbd7-4056-ab64-c3ca54c9b3cf.auth.example.org",
        "subdomain": "d420c923-bbd7-4056-ab64-c3ca54c9b3cf",
        "username": "eabcdb41-d89f-4580-826f-3e62e9755ef2",
        "password": "pbAXVjlIOE01xbut7YnAbkhMQIkcwoHO0ek2j4Q0",
        "server_url": "https://auth.example.org"
      },
      "other.org": {
        "fulldomain": "x.auth.example.org", "subdomain": "x",
        "username": "u", "password": "p"
      }
    }"#;

    #[test]
    fn storage_is_parsed_and_accounts_found() {
        let c = AcmeDnsConfig::from_storage_json("https://auth.example.org", STORAGE).unwrap();
        assert_eq!(c.accounts.len(), 2);
        assert_eq!(c.accounts["other.org"].server_url, None);
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("pbAXVjlIOE01xbut7YnAbkhMQIkcwoHO0ek2j4Q0"),
            "{debug}"
        );
        let p = AcmeDnsProvider::new(c).unwrap();
        let a = p
            .account_for("D420C923-bbd7-4056-ab64-c3ca54c9b3cf.auth.example.org.")
            .unwrap();
        assert_eq!(a.subdomain, "d420c923-bbd7-4056-ab64-c3ca54c9b3cf");
        let err = p.account_for("_acme-challenge.nope.example.").unwrap_err();
        assert!(
            matches!(&err, DnsError::Config(m) if m.contains("_acme-challenge.nope.example") && m.contains("register")),
            "{err:?}"
        );
    }

    #[test]
    fn bad_storage_quotes_nothing() {
        let err = AcmeDnsConfig::from_storage_json("https://a", r#"{"d": {"password": 12345678}}"#)
            .unwrap_err();
        assert!(
            matches!(&err, DnsError::Config(m) if !m.contains("12345678")),
            "{err:?}"
        );
    }
}
