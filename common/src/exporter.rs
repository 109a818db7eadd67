//! The fleet's certificate metrics, named like cert-manager's so its
//! dashboards and alerts carry over, read from Redis by
//! `certfleet exporter` (one per fleet).
//!
//! Per certificate (optional, [`CertMetrics::refresh`] with `per_name`):
//! - `certfleet_certificate_expiration_timestamp_seconds{name}`: notAfter;
//! - `certfleet_certificate_not_before_timestamp_seconds{name}`;
//! - `certfleet_certificate_renewal_timestamp_seconds{name}`: when the
//!   scheduler renews it (the expiry index's score);
//! - `certfleet_certificate_ready_status{name,condition}`: 1 on the current
//!   condition, 0 on the two others, like cert-manager: `True` (a version
//!   is stored and valid), `False` (expired, or its last job failed for
//!   good), `Unknown` (indexed, validity not known yet).
//!
//! Fleet summaries, each a handful of O(log n) Redis commands at any fleet
//! size (`ZCOUNT`, `ZRANGE 0 0`, `HLEN`):
//! - `certfleet_fleet_certificates`: names in the expiry index;
//! - `certfleet_fleet_certificates_expiring{within_days}`: cumulative
//!   counts of notAfter within 0 (expired), 3, 7, 14 and 30 days;
//! - `certfleet_fleet_renewals_overdue`: renewal time passed more than the
//!   grace ago; `certfleet_fleet_renewal_oldest_overdue_seconds`: by how
//!   long the oldest one is overdue (0: none);
//! - `certfleet_fleet_certificates_failed`: names whose last job failed;
//! - `certfleet_dead_letter_messages`: jobs in the dead-letter queue (set
//!   by the caller, which asks the broker).
//!
//! The data: the expiry index and its validity records
//! ([`crate::redis_keys::RedisKeys::validity`],
//! [`crate::redis_keys::RedisKeys::not_after`]) and failure marks, which
//! workers write with each stored version and failed job. Names indexed
//! before validity was recorded are filled in from their pointers, a few
//! hundred per refresh.

use std::collections::HashMap;
use std::sync::Mutex;

use deadpool_redis::redis;
use futures_util::{StreamExt, stream};
use prometheus::{Gauge, GaugeVec, IntCounter, IntGauge, IntGaugeVec, Opts, Registry};
use time::OffsetDateTime;

use crate::domain::CertName;
use crate::state::{State, StateError};
use crate::storage::Store;

/// Cumulative "expiring within" bands of the fleet summary, in days.
pub const EXPIRING_WITHIN_DAYS: [i64; 5] = [0, 3, 7, 14, 30];
/// Pointers read per refresh to fill in names without validity records.
const BACKFILL_PER_REFRESH: usize = 500;
/// Pointers read at once while filling in.
const BACKFILL_CONCURRENCY: usize = 16;

/// Registering failed: a name registered twice (a bug in this module).
pub type RegisterError = prometheus::Error;

/// What one refresh found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Names in the expiry index.
    pub certificates: u64,
    /// Renewals overdue by more than the grace.
    pub overdue: u64,
    /// Names whose last job failed.
    pub failed: u64,
    /// Names whose validity was filled in from storage by this refresh.
    pub backfilled: usize,
}

/// One name's data in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NameData {
    renew_at: i64,
    validity: Option<(i64, i64)>,
    failed: bool,
}

/// cert-manager's readiness conditions.
const CONDITIONS: [&str; 3] = ["True", "False", "Unknown"];

impl NameData {
    fn condition(&self, now: i64) -> &'static str {
        match self.validity {
            None => "Unknown",
            Some((_, not_after)) if not_after <= now || self.failed => "False",
            Some(_) => "True",
        }
    }
}

/// The certificate metrics of a fleet.
#[derive(Debug)]
pub struct CertMetrics {
    expiration: GaugeVec,
    not_before: GaugeVec,
    renewal: GaugeVec,
    ready: GaugeVec,
    rollout_behind: GaugeVec,
    rollout_oldest: GaugeVec,
    certificates: IntGauge,
    expiring: IntGaugeVec,
    overdue: IntGauge,
    oldest_overdue: Gauge,
    failed: IntGauge,
    dead_letters: IntGauge,
    refreshes: IntCounter,
    refresh_errors: IntCounter,
    last_refresh: Gauge,
    /// Held while the per-name series are replaced and while the registry
    /// is encoded, so a scrape never sees half a refresh.
    swap: Mutex<()>,
}

fn register<C: prometheus::core::Collector + Clone + 'static>(
    reg: &Registry,
    c: C,
) -> Result<C, RegisterError> {
    reg.register(Box::new(c.clone()))?;
    Ok(c)
}

impl CertMetrics {
    /// Registers `certfleet_certificate_*`, `certfleet_fleet_*` and
    /// `certfleet_exporter_*`.
    ///
    /// # Errors
    /// A name registered twice.
    pub fn register(reg: &Registry) -> Result<Self, RegisterError> {
        let name_vec = |name: &str, help: &str| {
            register(reg, GaugeVec::new(Opts::new(name, help), &["name"])?)
        };
        Ok(Self {
            expiration: name_vec(
                "certfleet_certificate_expiration_timestamp_seconds",
                "The date after which the certificate expires (notAfter), Unix seconds",
            )?,
            not_before: name_vec(
                "certfleet_certificate_not_before_timestamp_seconds",
                "The date before which the certificate is not valid (notBefore), Unix seconds",
            )?,
            renewal: name_vec(
                "certfleet_certificate_renewal_timestamp_seconds",
                "When the scheduler renews the certificate, Unix seconds",
            )?,
            ready: register(
                reg,
                GaugeVec::new(
                    Opts::new(
                        "certfleet_certificate_ready_status",
                        "1 on the certificate's readiness condition (True, False, Unknown)",
                    ),
                    &["name", "condition"],
                )?,
            )?,
            rollout_behind: name_vec(
                "certfleet_rollout_servers_behind",
                "Servers that reported on the certificate and do not serve its current version (older version, or its hook failed)",
            )?,
            rollout_oldest: name_vec(
                "certfleet_rollout_oldest_unloaded_seconds",
                "How long the current version has existed (since its notBefore) while some server does not serve it; 0 when all do",
            )?,
            certificates: register(
                reg,
                IntGauge::new(
                    "certfleet_fleet_certificates",
                    "Certificates in the expiry index",
                )?,
            )?,
            expiring: register(
                reg,
                IntGaugeVec::new(
                    Opts::new(
                        "certfleet_fleet_certificates_expiring",
                        "Certificates whose notAfter is within this many days (0: expired)",
                    ),
                    &["within_days"],
                )?,
            )?,
            overdue: register(
                reg,
                IntGauge::new(
                    "certfleet_fleet_renewals_overdue",
                    "Certificates whose renewal time passed more than the grace ago",
                )?,
            )?,
            oldest_overdue: register(
                reg,
                Gauge::new(
                    "certfleet_fleet_renewal_oldest_overdue_seconds",
                    "How long the most overdue renewal is past its time (0: none overdue)",
                )?,
            )?,
            failed: register(
                reg,
                IntGauge::new(
                    "certfleet_fleet_certificates_failed",
                    "Certificates whose last job failed for good",
                )?,
            )?,
            dead_letters: register(
                reg,
                IntGauge::new(
                    "certfleet_dead_letter_messages",
                    "Jobs waiting in the dead-letter queue (certfleet.dead)",
                )?,
            )?,
            refreshes: register(
                reg,
                IntCounter::new(
                    "certfleet_exporter_refreshes_total",
                    "Refreshes of the certificate metrics from Redis",
                )?,
            )?,
            refresh_errors: register(
                reg,
                IntCounter::new(
                    "certfleet_exporter_refresh_errors_total",
                    "Refreshes that failed (the metrics keep their last values)",
                )?,
            )?,
            last_refresh: register(
                reg,
                Gauge::new(
                    "certfleet_exporter_last_refresh_timestamp_seconds",
                    "When the certificate metrics were last refreshed, Unix seconds",
                )?,
            )?,
            swap: Mutex::new(()),
        })
    }

    /// Sets `certfleet_dead_letter_messages` (the caller counts the queue:
    /// the broker is not read here).
    pub fn set_dead_letters(&self, n: u32) {
        self.dead_letters.set(i64::from(n));
    }

    /// Encodes `reg` (which holds these metrics) without a refresh
    /// half-applied.
    ///
    /// # Errors
    /// A metric that cannot be encoded.
    pub fn encode(&self, reg: &Registry) -> Result<String, prometheus::Error> {
        let _swap = self
            .swap
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        prometheus::TextEncoder::new().encode_to_string(&reg.gather())
    }

    /// Reads the fleet from Redis and replaces every value. Per-name series
    /// only with `per_name` (a fleet of 100,000 names is 600,000 series);
    /// renewals count as overdue `grace` after their time. With `store`,
    /// names without validity records are filled in from their pointers
    /// (at most [`BACKFILL_PER_REFRESH`] per call).
    ///
    /// # Errors
    /// Redis unreachable; the metrics keep their last values.
    pub async fn refresh(
        &self,
        state: &State,
        store: Option<&Store>,
        now: OffsetDateTime,
        grace: time::Duration,
        per_name: bool,
    ) -> Result<Summary, StateError> {
        self.refreshes.inc();
        let result = self.refresh_inner(state, store, now, grace, per_name).await;
        match &result {
            Ok(_) => self.last_refresh.set(unix_f64(now)),
            Err(_) => self.refresh_errors.inc(),
        }
        result
    }

    async fn refresh_inner(
        &self,
        state: &State,
        store: Option<&Store>,
        now: OffsetDateTime,
        grace: time::Duration,
        per_name: bool,
    ) -> Result<Summary, StateError> {
        let keys = state.keys();
        let t = now.unix_timestamp();
        let overdue_before = (now - grace).unix_timestamp();
        let mut c = state.conn().await?;
        let mut pipe = redis::pipe();
        pipe.zcard(keys.expiry())
            .zcount(keys.expiry(), "-inf", overdue_before)
            .zrange_withscores(keys.expiry(), 0, 0)
            .hlen(keys.failed());
        for days in EXPIRING_WITHIN_DAYS {
            pipe.zcount(keys.not_after(), "-inf", t + days * 86_400);
        }
        pipe.hlen(keys.validity());
        #[allow(clippy::type_complexity)]
        let (certificates, overdue, oldest, failed, e0, e3, e7, e14, e30, validity_len): (
            u64,
            u64,
            Vec<(String, i64)>,
            u64,
            u64,
            u64,
            u64,
            u64,
            u64,
            u64,
        ) = pipe.query_async(&mut *c).await?;
        let expiring = [e0, e3, e7, e14, e30];
        let oldest_overdue = oldest
            .first()
            .map(|(_, at)| *at)
            .filter(|at| *at <= overdue_before)
            .map_or(0, |at| t - at);
        let mut summary = Summary {
            certificates,
            overdue,
            failed,
            backfilled: 0,
        };
        // Fill in names indexed before validity was recorded, if any.
        let mut per: Option<HashMap<String, NameData>> = None;
        if per_name || (store.is_some() && validity_len < certificates) {
            let data = read_names(state, &mut c).await?;
            if let Some(store) = store {
                summary.backfilled = backfill(state, store, &data).await?;
            }
            per = Some(data);
        }
        if summary.backfilled > 0 {
            // Re-read what changed, so this refresh already shows it.
            per = Some(read_names(state, &mut c).await?);
        }
        drop(c);
        // Series per name: not with --summary-only (reading every server's
        // reports costs servers × names).
        let rollout = if per_name {
            rollout_lag(state, t).await?
        } else {
            HashMap::new()
        };

        let _swap = self
            .swap
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.certificates.set(gauge_i64(certificates));
        for (days, n) in EXPIRING_WITHIN_DAYS.iter().zip(&expiring) {
            self.expiring
                .with_label_values(&[&days.to_string()])
                .set(gauge_i64(*n));
        }
        self.overdue.set(gauge_i64(overdue));
        #[allow(clippy::cast_precision_loss)]
        self.oldest_overdue.set(oldest_overdue as f64);
        self.failed.set(gauge_i64(failed));
        for v in [
            &self.expiration,
            &self.not_before,
            &self.renewal,
            &self.ready,
            &self.rollout_behind,
            &self.rollout_oldest,
        ] {
            v.reset();
        }
        for (name, (behind, age)) in &rollout {
            #[allow(clippy::cast_precision_loss)]
            {
                self.rollout_behind
                    .with_label_values(&[name])
                    .set(*behind as f64);
                self.rollout_oldest
                    .with_label_values(&[name])
                    .set(*age as f64);
            }
        }
        if per_name && let Some(data) = per {
            for (name, d) in &data {
                #[allow(clippy::cast_precision_loss)]
                self.renewal
                    .with_label_values(&[name])
                    .set(d.renew_at as f64);
                if let Some((nb, na)) = d.validity {
                    #[allow(clippy::cast_precision_loss)]
                    {
                        self.not_before.with_label_values(&[name]).set(nb as f64);
                        self.expiration.with_label_values(&[name]).set(na as f64);
                    }
                }
                let current = d.condition(t);
                for cond in CONDITIONS {
                    self.ready
                        .with_label_values(&[name, cond])
                        .set(if cond == current { 1.0 } else { 0.0 });
                }
            }
        }
        Ok(summary)
    }
}

/// Per name that servers reported on: how many do not serve its current
/// version (by notBefore, from the validity records), and how long that
/// version has existed while one does not (0 when all do). Reads every
/// server's reports: as many as servers × their names.
async fn rollout_lag(state: &State, now: i64) -> Result<HashMap<String, (u64, i64)>, StateError> {
    let servers = state.servers().await?;
    let mut names: Vec<String> = servers
        .iter()
        .flat_map(|(_, _, rs)| rs.iter().map(|r| r.name.to_string()))
        .collect();
    names.sort();
    names.dedup();
    let mut out = HashMap::new();
    if names.is_empty() {
        return Ok(out);
    }
    let mut c = state.conn().await?;
    let validity: Vec<Option<String>> = redis::cmd("HMGET")
        .arg(state.keys().validity())
        .arg(&names)
        .query_async(&mut *c)
        .await?;
    let not_before: HashMap<&str, i64> = names
        .iter()
        .zip(validity)
        .filter_map(|(n, v)| Some((n.as_str(), parse_validity(&v?)?.0)))
        .collect();
    for (_, _, reports) in &servers {
        for r in reports {
            let Some(nb) = not_before.get(r.name.as_str()) else {
                continue;
            };
            let entry = out.entry(r.name.to_string()).or_insert((0u64, 0i64));
            if !serves_current(r, *nb) {
                entry.0 += 1;
                entry.1 = (now - nb).max(0);
            }
        }
    }
    Ok(out)
}

/// Whether a report shows the server serving the version whose notBefore
/// is `not_before` (or a newer one), its hook ok or none.
fn serves_current(r: &crate::report::Report, not_before: i64) -> bool {
    crate::report::version_time(&r.version).is_some_and(|t| t >= not_before) && r.hook.is_ok()
}

/// One certificate as the dashboard shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertRow {
    /// The name.
    pub name: String,
    /// Planned renewal, Unix seconds.
    pub renew_at: i64,
    /// notBefore, when recorded.
    pub not_before: Option<i64>,
    /// notAfter, when recorded.
    pub not_after: Option<i64>,
    /// The last job failed for good.
    pub failed: bool,
    /// `True`, `False` or `Unknown` (as `certfleet_certificate_ready_status`).
    pub ready: &'static str,
    /// The servers that reported on it.
    pub rollout: Vec<ServerRow>,
}

/// One server's latest report on a certificate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerRow {
    /// The server.
    pub server: String,
    /// The serial it serves.
    pub serial: String,
    /// The hook's outcome.
    pub hook: String,
    /// Its exit code, when it failed with one.
    pub exit_code: Option<i32>,
    /// When it reported, Unix seconds.
    pub at: i64,
    /// Whether it serves the current version.
    pub current: bool,
}

/// Every indexed certificate with its validity, failure mark and rollout
/// (`certfleet dashboard`), sorted by name.
///
/// # Errors
/// Redis unreachable.
pub async fn fleet_view(state: &State, now: OffsetDateTime) -> Result<Vec<CertRow>, StateError> {
    let t = now.unix_timestamp();
    let mut c = state.conn().await?;
    let names = read_names(state, &mut c).await?;
    drop(c);
    let mut rollout: HashMap<String, Vec<crate::report::Report>> = HashMap::new();
    for (_, _, reports) in state.servers().await? {
        for r in reports {
            rollout.entry(r.name.to_string()).or_default().push(r);
        }
    }
    let mut rows: Vec<CertRow> = names
        .into_iter()
        .map(|(name, d)| {
            let nb = d.validity.map(|(nb, _)| nb);
            let servers = rollout
                .remove(&name)
                .unwrap_or_default()
                .into_iter()
                .map(|r| ServerRow {
                    current: nb.is_some_and(|nb| serves_current(&r, nb)),
                    server: r.server,
                    serial: r.serial,
                    hook: r.hook.outcome,
                    exit_code: r.hook.exit_code,
                    at: r.at.unix_timestamp(),
                })
                .collect();
            CertRow {
                ready: d.condition(t),
                renew_at: d.renew_at,
                not_before: nb,
                not_after: d.validity.map(|(_, na)| na),
                failed: d.failed,
                rollout: servers,
                name,
            }
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(rows)
}

fn gauge_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[allow(clippy::cast_precision_loss)]
fn unix_f64(t: OffsetDateTime) -> f64 {
    t.unix_timestamp() as f64
}

/// Every indexed name with its renewal time, validity and failure mark.
async fn read_names(
    state: &State,
    c: &mut crate::redis_pool::RedisConn,
) -> Result<HashMap<String, NameData>, StateError> {
    type Hash = HashMap<String, String>;
    let keys = state.keys();
    let (index, validity, failed): (Vec<(String, i64)>, Hash, Hash) = redis::pipe()
        .zrange_withscores(keys.expiry(), 0, -1)
        .hgetall(keys.validity())
        .hgetall(keys.failed())
        .query_async(&mut **c)
        .await?;
    Ok(index
        .into_iter()
        .map(|(name, renew_at)| {
            let v = validity.get(&name).and_then(|v| parse_validity(v));
            let d = NameData {
                renew_at,
                validity: v,
                failed: failed.contains_key(&name),
            };
            (name, d)
        })
        .collect())
}

/// `"<notBefore> <notAfter>"`; `None` for anything else (treated as not
/// recorded, and filled in again).
fn parse_validity(v: &str) -> Option<(i64, i64)> {
    let (nb, na) = v.split_once(' ')?;
    Some((nb.parse().ok()?, na.parse().ok()?))
}

/// Reads the pointers of (at most [`BACKFILL_PER_REFRESH`]) names without
/// validity and records it. A pointer that is gone or unreadable is
/// skipped (the next refresh tries again).
async fn backfill(
    state: &State,
    store: &Store,
    data: &HashMap<String, NameData>,
) -> Result<usize, StateError> {
    let missing: Vec<CertName> = data
        .iter()
        .filter(|(_, d)| d.validity.is_none())
        .filter_map(|(n, _)| CertName::parse(n).ok())
        .take(BACKFILL_PER_REFRESH)
        .collect();
    if missing.is_empty() {
        return Ok(0);
    }
    let found: Vec<_> = stream::iter(missing)
        .map(|name| async move {
            match store.pointer(&name).await {
                Ok(Some((p, _))) => Some((name, p.not_before, p.not_after)),
                Ok(None) => None,
                Err(e) => {
                    tracing::debug!(cert_name = %name, error = %crate::error::chain(&e), "cannot read the pointer for its validity");
                    None
                }
            }
        })
        .buffer_unordered(BACKFILL_CONCURRENCY)
        .filter_map(|x| async move { x })
        .collect()
        .await;
    state.validity_put_many(&found, false).await?;
    Ok(found.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_follow_validity_and_failure() {
        let now = 1_000_000;
        let d = |validity, failed| NameData {
            renew_at: 0,
            validity,
            failed,
        };
        assert_eq!(d(None, false).condition(now), "Unknown");
        assert_eq!(d(None, true).condition(now), "Unknown");
        assert_eq!(d(Some((0, now + 1)), false).condition(now), "True");
        assert_eq!(d(Some((0, now + 1)), true).condition(now), "False");
        assert_eq!(d(Some((0, now)), false).condition(now), "False");
    }

    #[test]
    fn validity_records_parse() {
        assert_eq!(parse_validity("10 20"), Some((10, 20)));
        assert_eq!(parse_validity("10"), None);
        assert_eq!(parse_validity("a b"), None);
        assert_eq!(parse_validity(""), None);
    }

    #[test]
    fn registers_once() -> Result<(), prometheus::Error> {
        let reg = Registry::new();
        let m = CertMetrics::register(&reg)?;
        m.certificates.set(3);
        let out = m.encode(&reg)?;
        assert!(
            out.lines().any(|l| l == "certfleet_fleet_certificates 3"),
            "{out}"
        );
        assert!(CertMetrics::register(&reg).is_err());
        Ok(())
    }
}
