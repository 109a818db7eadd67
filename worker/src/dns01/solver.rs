//! The dns-01 solver of a worker: which provider serves a name, where its
//! TXT value goes, and the bookkeeping that makes cleanup certain.
//!
//! For each identifier of an order: `_acme-challenge.<domain>` (the same
//! name for `example.com` and `*.example.com`, so both values live there at
//! once), followed through CNAMEs (delegation, e.g. to acme-dns), its zone
//! found by an SOA walk, the zone's provider chosen (`CERTFLEET_DNS01_ZONES`,
//! else `CERTFLEET_DNS01_PROVIDER`). Every value is recorded in Redis
//! (`dns01:<name>`, a set next to the order record) *before* it is
//! presented, so whatever an attempt added, even one killed right after,
//! is removed by the next attempt once the order is valid or invalid.
//! Providers add and remove single values, never the whole set, so many
//! orders of one zone can be in flight without one removing another's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use certfleet_common::domain::CertName;
use certfleet_common::state::{State, StateError};
use deadpool_redis::redis::AsyncCommands;
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::settings::{Dns01Settings, ProviderName};
use super::{
    AcmeDnsProvider, CloudflareProvider, DigitalOceanProvider, Dns01Provider, DnsError,
    ExecProvider, Propagation, PropagationConfig, Rfc2136Provider, Route53Provider, challenge_fqdn,
    system_resolvers,
};

/// How often the authoritative servers are asked again while waiting.
const PROPAGATION_INTERVAL: Duration = Duration::from_secs(1);
/// How long the record of presented values lives: as long as an order.
const RECORD_TTL: Duration = Duration::from_secs(7 * 86_400);

/// Where one TXT value was put: recorded before it is presented.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct Placement {
    /// The name the value lives at (after CNAMEs), absolute.
    pub(crate) fqdn: String,
    /// Its zone, absolute.
    pub(crate) zone: String,
    /// The provider that put it there.
    pub(crate) provider: String,
    /// The value (a digest of the key authorization: not a secret).
    pub(crate) value: String,
}

/// Why the solver failed: the DNS side or Redis.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SolveError {
    /// A provider, a look-up or the propagation wait.
    #[error(transparent)]
    Dns(#[from] DnsError),
    /// Recording what was presented.
    #[error(transparent)]
    State(#[from] StateError),
}

/// The providers of one worker and its propagation checker.
pub(crate) struct Solver {
    providers: HashMap<ProviderName, Arc<dyn Dns01Provider>>,
    default: Option<ProviderName>,
    /// Zone suffixes, longest first.
    zones: Vec<(String, ProviderName)>,
    propagation: Propagation,
    timeout: Duration,
}

impl Solver {
    /// Builds the configured providers (no connection is opened). `None`
    /// when no provider is configured: this worker does not solve dns-01.
    ///
    /// # Errors
    /// A provider that cannot be built, or no resolver to look names up.
    pub(crate) async fn new(settings: &Dns01Settings) -> Result<Option<Self>, DnsError> {
        if !settings.enabled() {
            return Ok(None);
        }
        let mut providers: HashMap<ProviderName, Arc<dyn Dns01Provider>> = HashMap::new();
        if let Some(c) = &settings.rfc2136 {
            providers.insert(
                ProviderName::Rfc2136,
                Arc::new(Rfc2136Provider::new(c.clone())?),
            );
        }
        if let Some(c) = &settings.digitalocean {
            providers.insert(
                ProviderName::DigitalOcean,
                Arc::new(DigitalOceanProvider::new(c.clone())?),
            );
        }
        if let Some(c) = &settings.cloudflare {
            providers.insert(
                ProviderName::Cloudflare,
                Arc::new(CloudflareProvider::new(c.clone())?),
            );
        }
        if let Some(c) = &settings.route53 {
            providers.insert(
                ProviderName::Route53,
                Arc::new(Route53Provider::new(c.clone()).await?),
            );
        }
        if let Some(c) = &settings.acmedns {
            providers.insert(
                ProviderName::AcmeDns,
                Arc::new(AcmeDnsProvider::new(c.clone())?),
            );
        }
        if let Some(c) = &settings.exec {
            providers.insert(ProviderName::Exec, Arc::new(ExecProvider::new(c.clone())?));
        }
        let resolvers = if settings.resolvers.is_empty() {
            system_resolvers()?
        } else {
            settings.resolvers.clone()
        };
        let mut zones = settings.zones.clone();
        zones.sort_by_key(|(z, _)| std::cmp::Reverse(z.len()));
        Ok(Some(Self {
            providers,
            default: settings.default_provider,
            zones,
            propagation: Propagation::new(PropagationConfig::new(resolvers))?,
            timeout: settings.propagation_timeout,
        }))
    }

    /// The provider of `zone`: the longest configured zone that ends it,
    /// else the default provider.
    fn provider_for(
        &self,
        zone: &str,
    ) -> Result<(ProviderName, &Arc<dyn Dns01Provider>), DnsError> {
        let zone = zone.trim_end_matches('.').to_ascii_lowercase();
        let chosen = self
            .zones
            .iter()
            .find(|(z, _)| zone == *z || zone.ends_with(&format!(".{z}")))
            .map(|(_, p)| *p)
            .or(self.default)
            .ok_or_else(|| {
                DnsError::UnknownZone(format!(
                    "{zone}: no dns-01 provider serves this zone (CERTFLEET_DNS01_ZONES, CERTFLEET_DNS01_PROVIDER)"
                ))
            })?;
        let provider = self.providers.get(&chosen).ok_or_else(|| {
            DnsError::Config(format!("dns-01 provider {chosen} is not configured"))
        })?;
        Ok((chosen, provider))
    }

    /// Where `domain`'s value goes: its challenge name followed through
    /// CNAMEs, the zone there, and the zone's provider.
    pub(crate) async fn place(&self, domain: &str, value: &str) -> Result<Placement, DnsError> {
        let fqdn = challenge_fqdn(domain)?;
        let target = self.propagation.follow_cnames(&fqdn).await?;
        let zone = self.propagation.find_zone(&target).await?;
        let (provider, _) = self.provider_for(&zone)?;
        if target != fqdn {
            debug!(%fqdn, %target, "challenge delegated by CNAME");
        }
        Ok(Placement {
            fqdn: target,
            zone,
            provider: provider.as_str().to_string(),
            value: value.to_string(),
        })
    }

    fn provider_of(&self, p: &Placement) -> Result<&Arc<dyn Dns01Provider>, DnsError> {
        let name: ProviderName = p
            .provider
            .parse()
            .map_err(|e: String| DnsError::Config(e))?;
        self.providers.get(&name).ok_or_else(|| {
            DnsError::Config(format!(
                "a value at {} was put there by the {name} provider, which this worker does not have",
                p.fqdn
            ))
        })
    }

    /// Records `placement` for `name` in Redis, then presents it.
    pub(crate) async fn present(
        &self,
        state: &State,
        name: &CertName,
        placement: &Placement,
    ) -> Result<(), SolveError> {
        record(state, name, placement).await?;
        let provider = self.provider_of(placement)?;
        provider
            .present(&placement.fqdn, &placement.zone, &placement.value)
            .await?;
        debug!(fqdn = %placement.fqdn, provider = %placement.provider, "TXT value presented");
        Ok(())
    }

    /// Waits until every authoritative server of each placement's zone
    /// serves its value (all placements at once).
    ///
    /// # Errors
    /// The first placement that did not propagate in time (retryable) or
    /// whose zone has no reachable nameserver.
    pub(crate) async fn wait(&self, placements: &[Placement]) -> Result<(), DnsError> {
        let waits = placements.iter().map(|p| {
            let timeout = self
                .provider_of(p)
                .ok()
                .and_then(|prov| prov.propagation_timeout())
                .unwrap_or(self.timeout);
            self.propagation
                .wait_for_txt(&p.fqdn, &p.zone, &p.value, timeout, PROPAGATION_INTERVAL)
        });
        for r in join_all(waits).await {
            r?;
        }
        Ok(())
    }

    /// Removes every value recorded for `name` (this attempt's and any an
    /// earlier, interrupted attempt left), then the record. A value that
    /// cannot be removed stays recorded, and the next job of the name tries
    /// again; that is logged, never a job failure.
    pub(crate) async fn cleanup(&self, state: &State, name: &CertName) {
        let placements = match recorded(state, name).await {
            Ok(p) => p,
            Err(e) => {
                warn!(%name, error = %e, "cannot read the dns-01 values to remove");
                return;
            }
        };
        if placements.is_empty() {
            return;
        }
        let removals = placements.iter().map(|p| async move {
            let result = match self.provider_of(p) {
                Ok(provider) => provider.cleanup(&p.fqdn, &p.zone, &p.value).await,
                Err(e) => Err(e),
            };
            (p, result)
        });
        let mut left = 0;
        for (p, result) in join_all(removals).await {
            match result {
                Ok(()) => {
                    if let Err(e) = forget(state, name, p).await {
                        warn!(%name, error = %e, "cannot update the dns-01 record");
                        left += 1;
                    }
                }
                Err(e) => {
                    warn!(%name, fqdn = %p.fqdn, error = %e, "cannot remove a dns-01 value; the next job of this name tries again");
                    left += 1;
                }
            }
        }
        if left == 0 {
            info!(%name, removed = placements.len(), "dns-01 values removed");
        }
    }
}

async fn record(state: &State, name: &CertName, p: &Placement) -> Result<(), StateError> {
    let json = serde_json::to_string(p).map_err(|e| StateError::Corrupt {
        key: state.keys().dns01(name),
        detail: e.to_string(),
    })?;
    let key = state.keys().dns01(name);
    let mut c = state.conn().await?;
    let _: () = deadpool_redis::redis::pipe()
        .sadd(&key, json)
        .expire(&key, RECORD_TTL.as_secs() as i64)
        .query_async(&mut *c)
        .await?;
    Ok(())
}

async fn forget(state: &State, name: &CertName, p: &Placement) -> Result<(), StateError> {
    let json = serde_json::to_string(p).map_err(|e| StateError::Corrupt {
        key: state.keys().dns01(name),
        detail: e.to_string(),
    })?;
    let mut c = state.conn().await?;
    let _: () = c.srem(state.keys().dns01(name), json).await?;
    Ok(())
}

/// The values recorded for `name`.
pub(crate) async fn recorded(state: &State, name: &CertName) -> Result<Vec<Placement>, StateError> {
    let mut c = state.conn().await?;
    let raw: Vec<String> = c.smembers(state.keys().dns01(name)).await?;
    Ok(raw
        .iter()
        .filter_map(|s| match serde_json::from_str(s) {
            Ok(p) => Some(p),
            Err(e) => {
                warn!(%name, error = %e, "ignoring an unreadable dns-01 record");
                None
            }
        })
        .collect())
}
