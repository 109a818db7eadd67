//! AWS Route 53 provider (aws-sdk-route53; API reference
//! <https://docs.aws.amazon.com/Route53/latest/APIReference/API_ChangeResourceRecordSets.html>).
//!
//! This module owns the Route 53 calls, modelled on lego's `providers/dns/route53`:
//!
//! - hosted zone: [`Route53Config::hosted_zone_id`], else `ListHostedZonesByName(zone)` and
//!   the zone named exactly so (a public one preferred over a private one); cached.
//! - Route 53 keeps a TXT RRset, not single values, so present and cleanup read the set
//!   (`ListResourceRecordSets` from the name, type TXT) and write it whole with
//!   `ChangeResourceRecordSets`: present UPSERTs the current values plus ours (nothing to do
//!   when ours is there); cleanup UPSERTs the others, or DELETEs the set (with its exact
//!   current values and TTL) when ours is the last. Values are quoted strings (`"v"`).
//! - Read-modify-write is serialized per (hosted zone, name) inside one provider. Two
//!   *workers* writing one name at once can still lose a value (UPSERT has no
//!   compare-and-set): the integrator must re-present when the propagation check does not
//!   see the value. A DELETE with stale values fails with `InvalidChangeBatch`; that is
//!   retried twice after a re-read.
//! - With [`Route53Config::wait_for_sync`], present waits for `GetChange` to say `INSYNC`.
//!
//! Credentials: the standard AWS chain, or static keys in the config; the endpoint can be
//! overridden (tests use moto). Errors: AccessDenied, InvalidClientTokenId,
//! SignatureDoesNotMatch and the like refuse; NoSuchHostedZone is an unknown zone;
//! Throttling, PriorRequestNotComplete, 5xx, timeouts and network failures are retryable.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_route53::Client;
use aws_sdk_route53::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ChangeStatus, ResourceRecord, ResourceRecordSet, RrType,
};
use tokio::time::Instant;
use tracing::{debug, info};

use super::http::{Secret, check_args, unfqdn};
use super::provider::{Dns01Provider, DnsError, DnsFuture, RetryKind};
use super::txt::{quote, unquote};

mod config;
mod errors;
pub use config::{AwsStaticCredentials, Route53Config};
use errors::{AwsFailure, build_error, call};

/// Route 53 dns-01 provider; see the module documentation.
#[derive(Debug)]
pub struct Route53Provider {
    client: Client,
    config: Route53Config,
    /// Hosted zone ids by zone name (lower-case, final dot).
    zone_ids: Mutex<HashMap<String, String>>,
    /// One lock per (hosted zone id, name) being changed.
    locks: Mutex<HashMap<(String, String), NameLock>>,
}

/// Serializes read-modify-write of one (hosted zone, name).
type NameLock = Arc<tokio::sync::Mutex<()>>;

/// The TXT set at a name: its TTL and raw (quoted) values.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TxtSet {
    ttl: i64,
    values: Vec<String>,
}

impl Route53Provider {
    /// Build an SDK client from `config` (credentials chain or static keys, endpoint).
    pub async fn new(config: Route53Config) -> Result<Self, DnsError> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .operation_timeout(config.timeout)
                    .build(),
            );
        if let Some(creds) = &config.credentials {
            loader = loader.credentials_provider(Credentials::new(
                creds.access_key_id.clone(),
                creds.secret_access_key.expose().to_owned(),
                creds.session_token.as_ref().map(|t| t.expose().to_owned()),
                None,
                "certfleet-route53-static",
            ));
        }
        if let Some(endpoint) = &config.endpoint_url {
            loader = loader.endpoint_url(endpoint.clone());
        }
        let sdk = loader.load().await;
        Ok(Self::with_client(Client::new(&sdk), config))
    }

    /// Use an SDK client built by the caller (`credentials`, `endpoint_url`, `region` of
    /// `config` are then ignored).
    pub fn with_client(client: Client, config: Route53Config) -> Self {
        Self {
            client,
            config,
            zone_ids: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
        }
    }

    fn secrets(&self) -> Vec<&Secret> {
        self.config
            .credentials
            .iter()
            .flat_map(|c| std::iter::once(&c.secret_access_key).chain(c.session_token.as_ref()))
            .collect()
    }

    /// The hosted zone id for `zone`.
    async fn zone_id(&self, zone: &str) -> Result<String, DnsError> {
        if let Some(id) = &self.config.hosted_zone_id {
            return Ok(id.trim_start_matches("/hostedzone/").to_owned());
        }
        let zone = format!("{}.", unfqdn(zone).to_ascii_lowercase());
        if let Some(id) = self
            .zone_ids
            .lock()
            .ok()
            .and_then(|m| m.get(&zone).cloned())
        {
            return Ok(id);
        }
        let what = format!("Route 53: looking up hosted zone {zone}");
        let request = self
            .client
            .list_hosted_zones_by_name()
            .dns_name(&zone)
            .max_items(10);
        let out = call(
            self.config.timeout,
            &what,
            &zone,
            &self.secrets(),
            request.send(),
        )
        .await?;
        let mut matching: Vec<_> = out
            .hosted_zones()
            .iter()
            .filter(|z| format!("{}.", unfqdn(z.name()).to_ascii_lowercase()) == zone)
            .collect();
        matching.sort_by_key(|z| z.config().is_some_and(|c| c.private_zone()));
        let id = matching
            .first()
            .map(|z| z.id().trim_start_matches("/hostedzone/").to_owned())
            .ok_or_else(|| {
                DnsError::UnknownZone(format!("{zone}: no Route 53 hosted zone has this name"))
            })?;
        if let Ok(mut m) = self.zone_ids.lock() {
            m.insert(zone, id.clone());
        }
        Ok(id)
    }

    /// The lock of one (hosted zone, name); unused locks are dropped on the way.
    fn name_lock(&self, zone_id: &str, name: &str) -> NameLock {
        let Ok(mut locks) = self.locks.lock() else {
            return Arc::new(tokio::sync::Mutex::new(()));
        };
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        locks
            .entry((zone_id.to_owned(), name.to_owned()))
            .or_default()
            .clone()
    }

    /// The TXT set at `name` (absolute, lower-case), if any.
    async fn read_set(
        &self,
        zone_id: &str,
        name: &str,
        zone: &str,
    ) -> Result<Option<TxtSet>, DnsError> {
        let what = format!("Route 53: reading TXT at {name} in hosted zone {zone_id}");
        let request = self
            .client
            .list_resource_record_sets()
            .hosted_zone_id(zone_id)
            .start_record_name(name)
            .start_record_type(RrType::Txt)
            .max_items(1);
        let out = call(
            self.config.timeout,
            &what,
            zone,
            &self.secrets(),
            request.send(),
        )
        .await?;
        Ok(out
            .resource_record_sets()
            .iter()
            .find(|set| {
                *set.r#type() == RrType::Txt
                    && set.set_identifier().is_none()
                    && format!("{}.", unfqdn(set.name()).to_ascii_lowercase()) == name
            })
            .map(|set| TxtSet {
                ttl: set.ttl().unwrap_or(i64::from(self.config.ttl)),
                values: set
                    .resource_records()
                    .iter()
                    .map(|r| r.value().to_owned())
                    .collect(),
            }))
    }

    /// Send one change of the TXT set at `name`; returns the change id.
    async fn change(
        &self,
        zone_id: &str,
        zone: &str,
        name: &str,
        action: ChangeAction,
        set: &TxtSet,
    ) -> Result<String, AwsFailure> {
        let what = format!("Route 53: {action} of TXT at {name} in hosted zone {zone_id}");
        let mut rrset = ResourceRecordSet::builder()
            .name(name)
            .r#type(RrType::Txt)
            .ttl(set.ttl);
        for value in &set.values {
            rrset = rrset.resource_records(
                ResourceRecord::builder()
                    .value(value)
                    .build()
                    .map_err(build_error)?,
            );
        }
        let change = Change::builder()
            .action(action)
            .resource_record_set(rrset.build().map_err(build_error)?)
            .build()
            .map_err(build_error)?;
        let batch = ChangeBatch::builder()
            .comment("certfleet dns-01")
            .changes(change)
            .build()
            .map_err(build_error)?;
        let request = self
            .client
            .change_resource_record_sets()
            .hosted_zone_id(zone_id)
            .change_batch(batch);
        let out = call(
            self.config.timeout,
            &what,
            zone,
            &self.secrets(),
            request.send(),
        )
        .await?;
        Ok(out
            .change_info()
            .map(|c| c.id().to_owned())
            .unwrap_or_default())
    }

    /// Read the set, apply `edit` (which returns `None` when nothing is to change), write it
    /// back; a stale DELETE (`InvalidChangeBatch`) is retried after a re-read.
    async fn modify(
        &self,
        fqdn: &str,
        zone: &str,
        edit: impl Fn(Option<TxtSet>) -> Option<(ChangeAction, TxtSet)>,
    ) -> Result<Option<String>, DnsError> {
        let zone_id = self.zone_id(zone).await?;
        let name = format!("{}.", unfqdn(fqdn).to_ascii_lowercase());
        let lock = self.name_lock(&zone_id, &name);
        let _guard = lock.lock().await;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let current = self.read_set(&zone_id, &name, zone).await?;
            let Some((action, set)) = edit(current) else {
                return Ok(None);
            };
            match self
                .change(&zone_id, zone, &name, action.clone(), &set)
                .await
            {
                Ok(change_id) => {
                    info!(%name, zone_id, %action, values = set.values.len(), "Route 53 TXT set changed");
                    return Ok(Some(change_id));
                }
                Err(failure)
                    if attempt < 3 && failure.code.as_deref() == Some("InvalidChangeBatch") =>
                {
                    debug!(%name, error = %failure.error, "Route 53 change raced; re-reading");
                }
                Err(failure) => return Err(failure.error),
            }
        }
    }

    async fn present_txt(&self, fqdn: &str, zone: &str, value: &str) -> Result<(), DnsError> {
        check_args(fqdn, zone, value)?;
        let ttl = i64::from(self.config.ttl);
        let change_id = self
            .modify(fqdn, zone, |current| {
                let mut set = current.unwrap_or(TxtSet {
                    ttl,
                    values: Vec::new(),
                });
                if set.values.iter().any(|v| unquote(v) == value) {
                    return None;
                }
                set.values.push(quote(value));
                Some((ChangeAction::Upsert, set))
            })
            .await?;
        match change_id {
            Some(id) if self.config.wait_for_sync && !id.is_empty() => {
                self.wait_in_sync(&id, fqdn).await
            }
            _ => Ok(()),
        }
    }

    async fn cleanup_txt(&self, fqdn: &str, zone: &str, value: &str) -> Result<(), DnsError> {
        check_args(fqdn, zone, value)?;
        self.modify(fqdn, zone, |current| {
            let current = current?;
            if !current.values.iter().any(|v| unquote(v) == value) {
                return None;
            }
            let rest: Vec<String> = current
                .values
                .iter()
                .filter(|v| unquote(v) != value)
                .cloned()
                .collect();
            if rest.is_empty() {
                Some((ChangeAction::Delete, current))
            } else {
                Some((
                    ChangeAction::Upsert,
                    TxtSet {
                        ttl: current.ttl,
                        values: rest,
                    },
                ))
            }
        })
        .await?;
        Ok(())
    }

    /// Poll `GetChange` until `INSYNC`.
    async fn wait_in_sync(&self, change_id: &str, fqdn: &str) -> Result<(), DnsError> {
        let deadline = Instant::now() + self.config.sync_timeout;
        let what = format!("Route 53: waiting for change {change_id} of {fqdn}");
        loop {
            let request = self.client.get_change().id(change_id);
            let out = call(
                self.config.timeout,
                &what,
                "",
                &self.secrets(),
                request.send(),
            )
            .await?;
            if out
                .change_info()
                .is_some_and(|c| *c.status() == ChangeStatus::Insync)
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(DnsError::retryable(
                    RetryKind::NotPropagated,
                    format!("{what}: not INSYNC after {:?}", self.config.sync_timeout),
                ));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

impl Dns01Provider for Route53Provider {
    fn name(&self) -> &'static str {
        "route53"
    }

    fn present<'a>(&'a self, fqdn: &'a str, zone: &'a str, value: &'a str) -> DnsFuture<'a, ()> {
        Box::pin(self.present_txt(fqdn, zone, value))
    }

    fn cleanup<'a>(&'a self, fqdn: &'a str, zone: &'a str, value: &'a str) -> DnsFuture<'a, ()> {
        Box::pin(self.cleanup_txt(fqdn, zone, value))
    }

    fn propagation_timeout(&self) -> Option<Duration> {
        self.config.propagation_timeout
    }
}

#[cfg(test)]
mod tests;
