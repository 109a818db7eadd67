//! Cloudflare DNS provider (API v4 with an API token,
//! <https://developers.cloudflare.com/api/resources/dns/subresources/records/>).
//!
//! This module owns the Cloudflare calls, modelled on lego's `providers/dns/cloudflare`:
//!
//! - zone id: `GET /zones?name=<zone>` → the `result` entry named exactly like the zone
//!   (none → [`DnsError::UnknownZone`]); cached per zone.
//! - present: `POST /zones/{id}/dns_records` with `{"type":"TXT","name":<fqdn without final
//!   dot>,"content":"\"<value>\"","ttl":ttl}` (TXT content as quoted character strings, as
//!   Cloudflare documents and lego sends). "An identical record already exists" (81058) is
//!   success: present is idempotent.
//! - cleanup: `GET /zones/{id}/dns_records?type=TXT&name=<fqdn>` (every page, by
//!   `result_info.total_pages`), then `DELETE /zones/{id}/dns_records/{record id}` for every
//!   record whose content, unquoted, is the value. No state is kept between present and
//!   cleanup, so cleanup works from another process. A 404 on DELETE means already gone.
//!
//! Every answer is the v4 envelope `{"success", "errors":[{"code","message","error_chain"}],
//! "result", "result_info"}`; `success:false` is an error even with HTTP 200. Refused:
//! HTTP 401/403 and the authentication codes (6003 and 61xx bad headers, 9103, 9106, 9107,
//! 9109 invalid token, 10000 authentication error) whatever the status; 429 and code 971
//! are rate limits; 5xx retryable; 404 and codes 1001/7003 (bad zone id) are an unknown
//! zone (and drop the cached id); other errors are rejections.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use http::Method;
use serde::Deserialize;
use serde_json::json;
use tracing::{debug, info};

use super::http::{
    ApiRequest, DEFAULT_HTTP_TIMEOUT, HttpClient, Secret, check_args, encode, normalize_base,
    parse_json, unfqdn,
};
use super::provider::{Dns01Provider, DnsError, DnsFuture};
use super::txt::{quote, unquote};

mod api;
use api::{CODE_IDENTICAL_RECORD, Envelope, Failure, Record, Zone, failure};

/// The real API.
pub const CLOUDFLARE_API_BASE: &str = "https://api.cloudflare.com/client/v4";

/// Records asked per page when listing (Cloudflare allows up to 5 000).
const PAGE_SIZE: u32 = 100;
/// Most pages read in one cleanup.
const MAX_PAGES: u32 = 50;
/// Settings of a [`CloudflareProvider`].
#[derive(Debug, Clone)]
pub struct CloudflareConfig {
    /// API base URL including `/client/v4` ([`CLOUDFLARE_API_BASE`]).
    pub api_base: String,
    /// API token with Zone:Read and DNS:Edit on the zones used.
    pub token: Secret,
    /// TTL of the TXT records (seconds; 1 means "automatic"; 120 is lego's default).
    pub ttl: u32,
    /// Time allowed for one API request.
    pub timeout: Duration,
    /// Propagation wait this backend wants, if not the caller's default.
    pub propagation_timeout: Option<Duration>,
}

impl CloudflareConfig {
    /// Defaults: the real API, TTL 120, 30 s per request.
    pub fn new(token: Secret) -> Self {
        Self {
            api_base: CLOUDFLARE_API_BASE.to_owned(),
            token,
            ttl: 120,
            timeout: DEFAULT_HTTP_TIMEOUT,
            propagation_timeout: None,
        }
    }
}

/// Cloudflare dns-01 provider; see the module documentation.
#[derive(Debug)]
pub struct CloudflareProvider {
    http: HttpClient,
    api_base: String,
    token: Secret,
    ttl: u32,
    propagation_timeout: Option<Duration>,
    /// Zone ids by zone name (lower-case, no final dot).
    zone_ids: Mutex<HashMap<String, String>>,
}

impl CloudflareProvider {
    /// Check the configuration and build the HTTP client.
    pub fn new(config: CloudflareConfig) -> Result<Self, DnsError> {
        if config.token.expose().trim().is_empty() {
            return Err(DnsError::Config("Cloudflare API token is empty".into()));
        }
        Ok(Self {
            http: HttpClient::new(config.timeout)?,
            api_base: normalize_base(&config.api_base, "Cloudflare")?,
            token: config.token,
            ttl: config.ttl,
            propagation_timeout: config.propagation_timeout,
            zone_ids: Mutex::new(HashMap::new()),
        })
    }

    /// Send a request and open the envelope: `Ok(None)` for a 404 (the caller knows what
    /// is missing), errors mapped as the module documentation says.
    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        method: Method,
        url: String,
        body: Option<serde_json::Value>,
        what: &str,
        zone: &str,
    ) -> Result<Option<Envelope<T>>, Failure> {
        let auth = self.token.header("Bearer ")?;
        let secrets = [&self.token];
        let req = ApiRequest {
            method,
            url,
            headers: vec![("authorization", auth)],
            body,
            secrets: &secrets,
        };
        let response = self.http.send(req, what).await?;
        if response.status == 404 {
            return Ok(None);
        }
        let envelope = match serde_json::from_slice::<Envelope<T>>(&response.body) {
            Ok(envelope) => envelope,
            Err(_) if !response.is_success() => {
                return Err(failure(&response, &[], what, zone, &secrets));
            }
            Err(_) => parse_json(&response.body, what, &secrets)?,
        };
        if response.is_success() && envelope.success {
            return Ok(Some(envelope));
        }
        Err(failure(&response, &envelope.errors, what, zone, &secrets))
    }

    /// The zone's id (cached).
    async fn zone_id(&self, zone: &str) -> Result<String, DnsError> {
        let zone = unfqdn(zone).to_ascii_lowercase();
        if let Some(id) = self
            .zone_ids
            .lock()
            .ok()
            .and_then(|ids| ids.get(&zone).cloned())
        {
            return Ok(id);
        }
        let what = format!("Cloudflare: looking up zone {zone}");
        let url = format!("{}/zones?name={}&per_page=50", self.api_base, encode(&zone));
        let envelope: Option<Envelope<Vec<Zone>>> =
            self.call(Method::GET, url, None, &what, &zone).await?;
        let id = envelope
            .and_then(|e| e.result)
            .unwrap_or_default()
            .into_iter()
            .find(|z| unfqdn(&z.name).eq_ignore_ascii_case(&zone))
            .map(|z| z.id)
            .ok_or_else(|| {
                DnsError::UnknownZone(format!(
                    "{zone}: Cloudflare has no such zone for this token"
                ))
            })?;
        if let Ok(mut ids) = self.zone_ids.lock() {
            ids.insert(zone, id.clone());
        }
        Ok(id)
    }

    /// Forget a cached zone id after an unknown-zone answer (the zone may be re-created).
    fn forget_zone<T>(&self, zone: &str, result: Result<T, DnsError>) -> Result<T, DnsError> {
        if matches!(result, Err(DnsError::UnknownZone(_)))
            && let Ok(mut ids) = self.zone_ids.lock()
        {
            ids.remove(&unfqdn(zone).to_ascii_lowercase());
        }
        result
    }

    async fn present_txt(&self, fqdn: &str, zone: &str, value: &str) -> Result<(), DnsError> {
        check_args(fqdn, zone, value)?;
        let zone_id = self.zone_id(zone).await?;
        let name = unfqdn(fqdn);
        let what = format!(
            "Cloudflare: creating TXT at {name} in zone {}",
            unfqdn(zone)
        );
        let url = format!("{}/zones/{}/dns_records", self.api_base, encode(&zone_id));
        let body = json!({ "type": "TXT", "name": name, "content": quote(value), "ttl": self.ttl });
        match self
            .call::<Record>(Method::POST, url, Some(body), &what, unfqdn(zone))
            .await
        {
            Ok(Some(envelope)) => {
                let id = envelope.result.map(|r| r.id).unwrap_or_default();
                info!(%name, zone_id, id, "Cloudflare TXT record created");
                Ok(())
            }
            Ok(None) => Err(DnsError::UnknownZone(format!(
                "{}: {what}: HTTP 404 for zone id {zone_id}",
                unfqdn(zone)
            ))),
            Err(failure) if failure.codes.contains(&CODE_IDENTICAL_RECORD) => {
                debug!(%name, "Cloudflare TXT record already exists");
                Ok(())
            }
            Err(failure) => Err(failure.error),
        }
    }

    async fn cleanup_txt(&self, fqdn: &str, zone: &str, value: &str) -> Result<(), DnsError> {
        check_args(fqdn, zone, value)?;
        let zone_id = self.zone_id(zone).await?;
        let zone = unfqdn(zone);
        let name = unfqdn(fqdn);
        let records_url = format!("{}/zones/{}/dns_records", self.api_base, encode(&zone_id));
        let what = format!("Cloudflare: listing TXT records at {name} in zone {zone}");
        let mut doomed = Vec::new();
        let mut page = 1;
        loop {
            let url = format!(
                "{records_url}?type=TXT&name={}&page={page}&per_page={PAGE_SIZE}",
                encode(name)
            );
            let Some(envelope) = self
                .call::<Vec<Record>>(Method::GET, url, None, &what, zone)
                .await?
            else {
                return Err(DnsError::UnknownZone(format!(
                    "{zone}: {what}: HTTP 404 for zone id {zone_id}"
                )));
            };
            let total_pages = envelope.result_info.map_or(1, |i| i.total_pages);
            doomed.extend(
                envelope
                    .result
                    .unwrap_or_default()
                    .into_iter()
                    // The filters are the server's; check them again before deleting.
                    .filter(|r| {
                        r.rtype.eq_ignore_ascii_case("TXT")
                            && unfqdn(&r.name).eq_ignore_ascii_case(name)
                            && unquote(&r.content) == value
                    })
                    .map(|r| r.id),
            );
            if page >= total_pages || page >= MAX_PAGES {
                break;
            }
            page += 1;
        }
        for id in doomed {
            let what = format!("Cloudflare: deleting TXT record {id} at {name} in zone {zone}");
            let url = format!("{records_url}/{}", encode(&id));
            match self
                .call::<serde_json::Value>(Method::DELETE, url, None, &what, zone)
                .await?
            {
                Some(_) => info!(%name, %zone, id, "Cloudflare TXT record deleted"),
                None => debug!(%name, %zone, id, "Cloudflare TXT record already gone"),
            }
        }
        Ok(())
    }
}

impl Dns01Provider for CloudflareProvider {
    fn name(&self) -> &'static str {
        "cloudflare"
    }

    fn present<'a>(&'a self, fqdn: &'a str, zone: &'a str, value: &'a str) -> DnsFuture<'a, ()> {
        Box::pin(async move { self.forget_zone(zone, self.present_txt(fqdn, zone, value).await) })
    }

    fn cleanup<'a>(&'a self, fqdn: &'a str, zone: &'a str, value: &'a str) -> DnsFuture<'a, ()> {
        Box::pin(async move { self.forget_zone(zone, self.cleanup_txt(fqdn, zone, value).await) })
    }

    fn propagation_timeout(&self) -> Option<Duration> {
        self.propagation_timeout
    }
}
