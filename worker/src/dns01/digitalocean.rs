//! DigitalOcean DNS provider (API v2, <https://docs.digitalocean.com/reference/api/digitalocean/#tag/Domain-Records>).
//!
//! This module owns the DigitalOcean domain-records calls, modelled on lego's
//! `providers/dns/digitalocean`:
//!
//! - present: `POST /v2/domains/{zone}/records` with `{"type":"TXT","name":<fqdn with its
//!   final dot, as lego sends it>,"data":value,"ttl":ttl}`; the answer's
//!   `domain_record.id` is remembered per (fqdn, value).
//! - cleanup: `GET /v2/domains/{zone}/records?type=TXT&name=<fqdn without final dot>` (every
//!   page, following `links.pages.next`), then `DELETE /v2/domains/{zone}/records/{id}`
//!   for each record whose `data` is the value, plus the remembered id if the listing
//!   missed it. Listing makes cleanup work in another process after a crash. A 404 on
//!   DELETE means already gone (`Ok`).
//!
//! Authentication is `Authorization: Bearer <token>`. Errors: 401/403 refuse (with the
//! API's `id: message`), a 404 on the domain is an unknown zone, 429 and 5xx are retryable
//! (see [`DnsError::from_http_status`]). The zone is the caller's, without its final dot.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use http::Method;
use serde::Deserialize;
use serde_json::json;
use tracing::{debug, info};

use super::http::{
    ApiRequest, ApiResponse, DEFAULT_HTTP_TIMEOUT, HttpClient, Secret, check_args, encode, excerpt,
    normalize_base, parse_json, unfqdn,
};
use super::provider::{Dns01Provider, DnsError, DnsFuture};

/// The real API.
pub const DIGITALOCEAN_API_BASE: &str = "https://api.digitalocean.com";

/// Most pages of records read in one cleanup (200 records a page).
const MAX_PAGES: u32 = 50;

/// Settings of a [`DigitalOceanProvider`].
#[derive(Debug, Clone)]
pub struct DigitalOceanConfig {
    /// API base URL without `/v2` ([`DIGITALOCEAN_API_BASE`]; tests point elsewhere).
    pub api_base: String,
    /// Personal access token with write access to the domain.
    pub token: Secret,
    /// TTL of the TXT records (seconds; DigitalOcean's minimum is 30).
    pub ttl: u32,
    /// Time allowed for one API request.
    pub timeout: Duration,
    /// `per_page` asked when listing records (1..=200).
    pub page_size: u32,
    /// Propagation wait this backend wants, if not the caller's default.
    pub propagation_timeout: Option<Duration>,
}

impl DigitalOceanConfig {
    /// Defaults: the real API, TTL 30, 30 s per request, 200 records a page.
    pub fn new(token: Secret) -> Self {
        Self {
            api_base: DIGITALOCEAN_API_BASE.to_owned(),
            token,
            ttl: 30,
            timeout: DEFAULT_HTTP_TIMEOUT,
            page_size: 200,
            propagation_timeout: None,
        }
    }
}

/// DigitalOcean dns-01 provider; see the module documentation.
#[derive(Debug)]
pub struct DigitalOceanProvider {
    http: HttpClient,
    api_base: String,
    token: Secret,
    ttl: u32,
    page_size: u32,
    propagation_timeout: Option<Duration>,
    /// Record ids created by this process, by (fqdn lower-case without dot, value).
    ids: Mutex<HashMap<(String, String), u64>>,
}

/// `{"id":"unauthorized","message":"Unable to authenticate you"}`.
#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    id: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct Record {
    id: u64,
    #[serde(default)]
    name: String,
    #[serde(default)]
    data: String,
    #[serde(default, rename = "type")]
    rtype: String,
}

#[derive(Deserialize)]
struct CreateAnswer {
    domain_record: Record,
}

#[derive(Deserialize)]
struct ListAnswer {
    #[serde(default)]
    domain_records: Vec<Record>,
    #[serde(default)]
    links: Links,
}

#[derive(Deserialize, Default)]
struct Links {
    #[serde(default)]
    pages: Pages,
}

#[derive(Deserialize, Default)]
struct Pages {
    next: Option<String>,
}

impl DigitalOceanProvider {
    /// Check the configuration and build the HTTP client.
    pub fn new(config: DigitalOceanConfig) -> Result<Self, DnsError> {
        if config.token.expose().trim().is_empty() {
            return Err(DnsError::Config("DigitalOcean API token is empty".into()));
        }
        Ok(Self {
            http: HttpClient::new(config.timeout)?,
            api_base: normalize_base(&config.api_base, "DigitalOcean")?,
            token: config.token,
            ttl: config.ttl,
            page_size: config.page_size.clamp(1, 200),
            propagation_timeout: config.propagation_timeout,
            ids: Mutex::new(HashMap::new()),
        })
    }

    fn records_url(&self, zone: &str) -> String {
        format!("{}/v2/domains/{}/records", self.api_base, encode(zone))
    }

    async fn call(
        &self,
        method: Method,
        url: String,
        body: Option<serde_json::Value>,
        what: &str,
    ) -> Result<ApiResponse, DnsError> {
        let auth = self.token.header("Bearer ")?;
        let secrets = [&self.token];
        let req = ApiRequest {
            method,
            url,
            headers: vec![("authorization", auth)],
            body,
            secrets: &secrets,
        };
        self.http.send(req, what).await
    }

    /// The error for a non-2xx answer: the API's `id: message` when it sent one.
    fn status_error(&self, response: &ApiResponse, what: &str) -> DnsError {
        let text = match serde_json::from_slice::<ApiError>(&response.body) {
            Ok(e) if !e.id.is_empty() || !e.message.is_empty() => excerpt(
                format!("{}: {}", e.id, e.message).as_bytes(),
                &[&self.token],
            ),
            _ => excerpt(&response.body, &[&self.token]),
        };
        DnsError::from_http_status(response.status, what, &text)
    }

    async fn present_txt(&self, fqdn: &str, zone: &str, value: &str) -> Result<(), DnsError> {
        check_args(fqdn, zone, value)?;
        let zone = unfqdn(zone);
        let name = format!("{}.", unfqdn(fqdn));
        let what = format!("DigitalOcean: creating TXT at {name} in domain {zone}");
        let body = json!({ "type": "TXT", "name": name, "data": value, "ttl": self.ttl });
        let response = self
            .call(Method::POST, self.records_url(zone), Some(body), &what)
            .await?;
        if !response.is_success() {
            return Err(self.status_error(&response, &what));
        }
        let created: CreateAnswer = parse_json(&response.body, &what, &[&self.token])?;
        let id = created.domain_record.id;
        if let Ok(mut ids) = self.ids.lock() {
            ids.insert(key(fqdn, value), id);
        }
        info!(%name, %zone, id, "DigitalOcean TXT record created");
        Ok(())
    }

    async fn cleanup_txt(&self, fqdn: &str, zone: &str, value: &str) -> Result<(), DnsError> {
        check_args(fqdn, zone, value)?;
        let zone = unfqdn(zone);
        let remembered = self
            .ids
            .lock()
            .ok()
            .and_then(|ids| ids.get(&key(fqdn, value)).copied());
        let mut doomed = self.matching_ids(fqdn, zone, value).await?;
        if let Some(id) = remembered
            && !doomed.contains(&id)
        {
            doomed.push(id);
        }
        for id in doomed {
            let what = format!("DigitalOcean: deleting TXT record {id} at {fqdn} in domain {zone}");
            let url = format!("{}/{id}", self.records_url(zone));
            let response = self.call(Method::DELETE, url, None, &what).await?;
            match response.status {
                200..=299 => info!(%fqdn, %zone, id, "DigitalOcean TXT record deleted"),
                404 => debug!(%fqdn, %zone, id, "DigitalOcean TXT record already gone"),
                _ => return Err(self.status_error(&response, &what)),
            }
        }
        if let Ok(mut ids) = self.ids.lock() {
            ids.remove(&key(fqdn, value));
        }
        Ok(())
    }

    /// Ids of the TXT records at `fqdn` whose data is `value`, over every page.
    async fn matching_ids(
        &self,
        fqdn: &str,
        zone: &str,
        value: &str,
    ) -> Result<Vec<u64>, DnsError> {
        let name = unfqdn(fqdn).to_ascii_lowercase();
        let relative = relative_name(&name, &zone.to_ascii_lowercase());
        let what = format!("DigitalOcean: listing TXT records at {name} in domain {zone}");
        let mut found = Vec::new();
        let mut seen_pages = HashSet::new();
        let mut page = 1u32;
        loop {
            let url = format!(
                "{}?type=TXT&name={}&page={page}&per_page={}",
                self.records_url(zone),
                encode(&name),
                self.page_size
            );
            let response = self.call(Method::GET, url, None, &what).await?;
            if !response.is_success() {
                return Err(self.status_error(&response, &what));
            }
            let list: ListAnswer = parse_json(&response.body, &what, &[&self.token])?;
            found.extend(
                list.domain_records
                    .iter()
                    .filter(|r| {
                        r.rtype.eq_ignore_ascii_case("TXT")
                            && r.data == value
                            && (r.name.eq_ignore_ascii_case(&relative)
                                || unfqdn(&r.name).eq_ignore_ascii_case(&name))
                    })
                    .map(|r| r.id),
            );
            seen_pages.insert(page);
            // Only the page number is taken from `next`: the token never goes to a host
            // other than the configured one.
            match list.links.pages.next.as_deref().and_then(page_of) {
                Some(next)
                    if !seen_pages.contains(&next) && seen_pages.len() < MAX_PAGES as usize =>
                {
                    page = next;
                }
                _ => break,
            }
        }
        Ok(found)
    }
}

impl Dns01Provider for DigitalOceanProvider {
    fn name(&self) -> &'static str {
        "digitalocean"
    }

    fn present<'a>(&'a self, fqdn: &'a str, zone: &'a str, value: &'a str) -> DnsFuture<'a, ()> {
        Box::pin(self.present_txt(fqdn, zone, value))
    }

    fn cleanup<'a>(&'a self, fqdn: &'a str, zone: &'a str, value: &'a str) -> DnsFuture<'a, ()> {
        Box::pin(self.cleanup_txt(fqdn, zone, value))
    }

    fn propagation_timeout(&self) -> Option<Duration> {
        self.propagation_timeout
    }
}

fn key(fqdn: &str, value: &str) -> (String, String) {
    (unfqdn(fqdn).to_ascii_lowercase(), value.to_owned())
}

/// DigitalOcean's record name for `fqdn` in `zone` (`@` at the apex); both lower-case,
/// without final dots.
fn relative_name(fqdn: &str, zone: &str) -> String {
    if fqdn == zone {
        return "@".to_owned();
    }
    fqdn.strip_suffix(zone)
        .and_then(|rest| rest.strip_suffix('.'))
        .unwrap_or(fqdn)
        .to_owned()
}

/// The `page` query parameter of a `links.pages.next` URL.
fn page_of(url: &str) -> Option<u32> {
    let query = url.split_once('?')?.1;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("page="))
        .and_then(|p| p.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_names() {
        assert_eq!(
            page_of("https://api.digitalocean.com/v2/domains/x/records?per_page=2&page=3&type=TXT"),
            Some(3)
        );
        assert_eq!(page_of("https://x/v2/domains/x/records?per_page=2"), None);
        assert_eq!(
            relative_name("_acme-challenge.a.example.com", "example.com"),
            "_acme-challenge.a"
        );
        assert_eq!(relative_name("example.com", "example.com"), "@");
    }

    #[test]
    fn config_checks_and_debug() {
        let mut c = DigitalOceanConfig::new(Secret::new("dop_v1_secret"));
        c.api_base = "http://127.0.0.1:1/".into();
        let p = DigitalOceanProvider::new(c.clone()).unwrap();
        assert_eq!(p.api_base, "http://127.0.0.1:1");
        let debug = format!("{p:?} {c:?}");
        assert!(!debug.contains("dop_v1_secret"), "{debug}");
        c.token = Secret::new(" ");
        assert!(matches!(
            DigitalOceanProvider::new(c),
            Err(DnsError::Config(_))
        ));
    }
}
