//! Renewal scheduling: find the certificates that are due and queue one
//! renew job for each, fleet-wide at most once at a time.
//!
//! The expiry index in Redis ([`State::index_due`]) answers "what is due"
//! without touching S3; S3 stays the source of truth, and
//! [`rebuild_index`] rebuilds the index from the pointers when Redis lost it.
//! A due-scan ([`due_scan`]) hands the due names to the one job submission
//! path, [`Submitter`] with [`Dedup::ClaimNames`]: every name claimed in one
//! pipelined round trip, so a name that already has a queued or running job
//! is skipped, the renew jobs published pipelined with publisher confirms,
//! and a claim whose job could not be published released at once, so the
//! next scan tries again.
//!
//! [`run_scheduler`] runs the scan periodically and [`run`] keeps it on a
//! broker connection, reconnecting as every certfleet client does
//! ([`RECONNECT`]). Any number of instances may run it (every worker started with `--schedule-every`, a `certfleet
//! schedule` deployment, a CronJob running `certfleet renew --due`): a lease
//! in Redis ([`RedisKeys::scheduler`](crate::redis_keys::RedisKeys::scheduler))
//! lets only one of them scan per period, and the dedup markers make a
//! second scan harmless anyway.

use std::fmt;
use std::time::Duration as StdDuration;

use deadpool_redis::redis;
use futures_util::stream::{self, StreamExt};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::amqp::{self, RECONNECT};
use crate::domain::CertName;
use crate::error::{Classify, Disposition};
use crate::job::{ChallengeType, Envelope};
use crate::state::{COMPARE_AND_DELETE, State, StateError};
use crate::storage::{StorageError, Store};
use crate::submit::{Dedup, Outcome, Submission, SubmitError, Submitter};

/// Pointers read at once while rebuilding the index: enough to hide S3's
/// per-request latency (100,000 pointers at ~10 ms each take ~30 s), few
/// enough not to trip an S3-compatible server's connection limits.
pub const REBUILD_CONCURRENCY: usize = 32;

/// The `reason` of renew jobs queued by a due-scan.
pub const DUE_REASON: &str = "due";

/// The `queued` status detail of renew jobs queued by a due-scan.
const SCHEDULER_STATUS: &str = "queued by the renewal scheduler (due)";

/// How often a running scheduler checks that its broker channel is open.
const HEALTH_CHECK: StdDuration = StdDuration::from_secs(1);

/// Takes the scheduler lease if it is free, or extends it if this instance
/// already holds it. `KEYS[1]` lease key, `ARGV[1]` this instance's value,
/// ARGV[2] TTL in milliseconds. Returns 1 when the caller holds the lease.
const LEASE_ACQUIRE: &str = r#"
local v = redis.call('GET', KEYS[1])
if v == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

/// What stopped a scan or a rebuild.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// Reading the expiry index failed.
    #[error("cannot read the expiry index")]
    Index(#[source] StateError),
    /// Writing the rebuilt index failed.
    #[error("cannot write the rebuilt expiry index")]
    IndexWrite(#[source] StateError),
    /// Listing the certificates in storage failed.
    #[error("cannot list the certificates in storage")]
    List(#[source] StorageError),
    /// Reading a pointer failed (the rebuild is abandoned rather than
    /// leaving names out of the index).
    #[error("cannot read the pointer of {name}")]
    Pointer {
        /// The certificate.
        name: CertName,
        /// Cause.
        #[source]
        source: StorageError,
    },
    /// Claiming or publishing the renew jobs failed before anything was
    /// accepted.
    #[error("cannot queue renew jobs")]
    Submit(#[source] SubmitError),
}

impl Classify for ScheduleError {
    fn disposition(&self) -> Disposition {
        match self {
            ScheduleError::Index(e) | ScheduleError::IndexWrite(e) => e.disposition(),
            ScheduleError::List(e) | ScheduleError::Pointer { source: e, .. } => e.disposition(),
            ScheduleError::Submit(e) => e.disposition(),
        }
    }
}

/// What happened to one due name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanOutcome {
    /// Due, nothing published (dry run).
    Due,
    /// A renew job was published and confirmed.
    Queued {
        /// Its id.
        job_id: Uuid,
    },
    /// Another job holds the name's dedup marker.
    AlreadyQueued {
        /// That job's id, if the marker could still be read.
        job_id: Option<String>,
    },
    /// Publishing failed; the claim was released and the next scan retries.
    Failed {
        /// Why.
        reason: String,
    },
}

/// One due name and what the scan did with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanEntry {
    /// The certificate.
    pub name: CertName,
    /// Its renewal time, Unix seconds.
    pub renew_at: i64,
    /// The challenge its renew job routes to.
    pub challenge: ChallengeType,
    /// What happened.
    pub outcome: ScanOutcome,
}

impl ScanEntry {
    /// The renewal time as a date, if it is representable.
    pub fn renew_at_time(&self) -> Option<OffsetDateTime> {
        OffsetDateTime::from_unix_timestamp(self.renew_at).ok()
    }
}

/// The result of one due-scan, soonest renewal first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// `Some(count)` when the index was found lost and rebuilt first.
    pub rebuilt: Option<usize>,
    /// Every due name.
    pub entries: Vec<ScanEntry>,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Time the scan took.
    pub elapsed: StdDuration,
}

impl ScanReport {
    fn count(&self, f: impl Fn(&ScanOutcome) -> bool) -> usize {
        self.entries.iter().filter(|e| f(&e.outcome)).count()
    }

    /// Renew jobs published.
    pub fn queued(&self) -> usize {
        self.count(|o| matches!(o, ScanOutcome::Queued { .. }))
    }

    /// Names skipped because a job already holds them.
    pub fn already_queued(&self) -> usize {
        self.count(|o| matches!(o, ScanOutcome::AlreadyQueued { .. }))
    }

    /// Names whose job could not be published.
    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, ScanOutcome::Failed { .. }))
    }
}

impl fmt::Display for ScanReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} due", self.entries.len())?;
        if self.dry_run {
            f.write_str(" (dry run, nothing published)")?;
        } else {
            write!(
                f,
                ", {} queued, {} already queued, {} failed",
                self.queued(),
                self.already_queued(),
                self.failed()
            )?;
        }
        if let Some(n) = self.rebuilt {
            write!(f, "; index was lost and rebuilt from {n} certificates")?;
        }
        write!(f, " in {} ms", self.elapsed.as_millis())
    }
}

/// Rebuilds the expiry index from the pointers in storage: lists every
/// name, reads the pointers [`REBUILD_CONCURRENCY`] at a time, and replaces
/// the index with (name, renew_at, challenge) in one transaction, after
/// the validity records the certificate metrics read. Returns the number
/// of certificates indexed.
///
/// A pointer that does not parse is logged and left out (it cannot be
/// renewed from anyway); a pointer that cannot be read abandons the rebuild,
/// so that an index that is marked built never silently misses names.
///
/// A certificate renewed while the rebuild runs may be indexed with its old
/// renewal time; the worst case is one early, deduplicated renew job.
///
/// # Errors
/// Storage unavailable, or Redis unavailable.
pub async fn rebuild_index(state: &State, store: &Store) -> Result<usize, ScheduleError> {
    let names = store.names().await.map_err(ScheduleError::List)?;
    let mut reads = stream::iter(names)
        .map(|name| async move {
            let result = store.pointer(&name).await;
            (name, result)
        })
        .buffer_unordered(REBUILD_CONCURRENCY);
    let mut entries: Vec<(CertName, i64, ChallengeType)> = Vec::new();
    let mut validity = Vec::new();
    while let Some((name, result)) = reads.next().await {
        match result {
            Ok(Some((pointer, _))) => {
                validity.push((name.clone(), pointer.not_before, pointer.not_after));
                entries.push((name, pointer.renew_at.unix_timestamp(), pointer.challenge));
            }
            // Deleted between the listing and the read.
            Ok(None) | Err(StorageError::NotFound(_)) => {}
            Err(e @ (StorageError::Corrupt { .. } | StorageError::Seal(_))) => {
                tracing::warn!(cert_name = %name, error = %crate::error::chain(&e), "pointer left out of the expiry index");
            }
            Err(source) => return Err(ScheduleError::Pointer { name, source }),
        }
    }
    drop(reads);
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    // Validity first: the index marked built is what says "done".
    state
        .validity_put_many(&validity, true)
        .await
        .map_err(ScheduleError::IndexWrite)?;
    state
        .index_replace(&entries)
        .await
        .map_err(ScheduleError::IndexWrite)?;
    Ok(entries.len())
}

/// The certificates due within `within` from now, soonest first, without
/// publishing anything (every outcome is [`ScanOutcome::Due`]). Rebuilds the
/// index first if it looks lost, as [`due_scan`] does.
///
/// # Errors
/// Redis unavailable, or storage unavailable during a rebuild.
pub async fn due_list(
    state: &State,
    store: &Store,
    within: time::Duration,
) -> Result<ScanReport, ScheduleError> {
    let started = tokio::time::Instant::now();
    let mut report = ScanReport {
        dry_run: true,
        ..ScanReport::default()
    };
    if state.index_lost().await.map_err(ScheduleError::Index)? {
        tracing::warn!(
            "the expiry index is empty and was never built (Redis lost its data?); rebuilding it from storage"
        );
        let n = rebuild_index(state, store).await?;
        tracing::info!(certificates = n, "expiry index rebuilt");
        report.rebuilt = Some(n);
    }
    let now = OffsetDateTime::now_utc();
    let due = state
        .index_due(now + within)
        .await
        .map_err(ScheduleError::Index)?;
    report.entries = due
        .into_iter()
        .map(|d| ScanEntry {
            name: d.name,
            renew_at: d.renew_at,
            challenge: d.challenge,
            outcome: ScanOutcome::Due,
        })
        .collect();
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Queues one renew job (reason `reason`) for each name that has no job
/// yet, through the [`Submitter`] with [`Dedup::ClaimNames`]. Returns the
/// envelopes and their outcomes, in order.
///
/// # Errors
/// A failure of the whole batch ([`SubmitError`]).
pub async fn submit_renewals(
    submitter: &Submitter,
    names: impl IntoIterator<Item = (CertName, ChallengeType)>,
    reason: &str,
    status: &str,
) -> Result<Vec<(Envelope, Outcome)>, SubmitError> {
    let now_ms = crate::now_ms();
    let envelopes: Vec<Envelope> = names
        .into_iter()
        .map(|(name, challenge)| Envelope::renewal(name, challenge, reason, now_ms))
        .collect();
    let subs: Vec<Submission<'_>> = envelopes.iter().map(Submission::new).collect();
    let outcomes = submitter.submit(&subs, Dedup::ClaimNames, status).await?;
    Ok(envelopes.into_iter().zip(outcomes).collect())
}

/// Finds the certificates due within `within` from now and queues a renew
/// job for each one that has no job yet.
///
/// Steps: [`due_list`] (which rebuilds the index first if it looks lost),
/// then [`submit_renewals`]: every due name claimed in one round trip, the
/// claimed ones' renew jobs published pipelined (routing key by each
/// entry's challenge, `domains` empty so the worker renews with the stored
/// certificate's domains and key type), the claims of any that failed given
/// back, a `queued` status record for each published job. No pointer is
/// read from S3 (except for a rebuild).
///
/// With `dry_run`, stops after reading the due names and publishes nothing.
///
/// # Errors
/// Redis unavailable, or the broker unavailable before anything was sent.
/// Individual publish failures are reported per name instead.
pub async fn due_scan(
    state: &State,
    store: &Store,
    submitter: &Submitter,
    within: time::Duration,
    dry_run: bool,
) -> Result<ScanReport, ScheduleError> {
    let started = tokio::time::Instant::now();
    let mut report = due_list(state, store, within).await?;
    report.dry_run = dry_run;
    if dry_run || report.entries.is_empty() {
        report.elapsed = started.elapsed();
        return Ok(report);
    }
    let due = std::mem::take(&mut report.entries);
    let submitted = submit_renewals(
        submitter,
        due.iter().map(|d| (d.name.clone(), d.challenge)),
        DUE_REASON,
        SCHEDULER_STATUS,
    )
    .await
    .map_err(ScheduleError::Submit)?;
    report.entries = due
        .into_iter()
        .zip(submitted)
        .map(|(d, (envelope, outcome))| ScanEntry {
            outcome: match outcome {
                Outcome::Queued => ScanOutcome::Queued {
                    job_id: envelope.job_id,
                },
                Outcome::AlreadyQueued { holder } => ScanOutcome::AlreadyQueued { job_id: holder },
                Outcome::NotAccepted(e) => ScanOutcome::Failed {
                    reason: crate::error::chain(&e),
                },
            },
            ..d
        })
        .collect();
    report.elapsed = started.elapsed();
    Ok(report)
}

/// A value that identifies this scheduler instance in the lease.
fn instance_id() -> String {
    format!(
        "{}/{}",
        crate::amqp::connection_name("scheduler"),
        Uuid::new_v4()
    )
}

/// Takes (or extends) the scheduler lease for `ttl`.
async fn acquire_lease(state: &State, value: &str, ttl: StdDuration) -> Result<bool, StateError> {
    let mut c = state.conn().await?;
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
    let got: i64 = redis::Script::new(LEASE_ACQUIRE)
        .key(state.keys().scheduler())
        .arg(value)
        .arg(ttl_ms)
        .invoke_async(&mut *c)
        .await?;
    Ok(got == 1)
}

/// Gives the scheduler lease back if this instance still holds it.
async fn release_lease(state: &State, value: &str) {
    let result: Result<(), StateError> = async {
        let mut c = state.conn().await?;
        let _: i64 = redis::Script::new(COMPARE_AND_DELETE)
            .key(state.keys().scheduler())
            .arg(value)
            .invoke_async(&mut *c)
            .await?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "cannot release the scheduler lease; it expires on its own");
    }
}

/// Runs the scheduler until `shutdown`, on a broker connection of its own
/// that it opens, watches and reopens with the fleet's one reconnect policy
/// ([`RECONNECT`]). Used by `certfleet schedule` and by workers started with
/// `--schedule-every`; see [`run_scheduler`] for what each tick does.
pub async fn run(
    amqp_url: &amqp::BrokerUrls,
    connection_name: &str,
    state: &State,
    store: &Store,
    every: StdDuration,
    within: time::Duration,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        let opened = RECONNECT
            .session(&shutdown, "renewal scheduler", || async {
                let conn = amqp::connect(amqp_url, connection_name).await?;
                match Submitter::open(&conn, Some(state.clone())).await {
                    Ok(s) => Ok((conn, s)),
                    Err(e) => {
                        amqp::close(&conn, 320, "setup failed").await;
                        Err(e)
                    }
                }
            })
            .await;
        let Some((conn, submitter)) = opened else {
            break;
        };
        let lost = async {
            loop {
                tokio::time::sleep(HEALTH_CHECK).await;
                if !conn.status().connected() || !submitter.is_connected() {
                    return;
                }
            }
        };
        tokio::select! {
            () = run_scheduler(state, store, &submitter, every, within, shutdown.clone()) => {}
            () = lost => tracing::warn!("renewal scheduler: lost the broker connection; reconnecting"),
        }
        amqp::close(&conn, 200, "scheduler stopping").await;
    }
}

/// Runs [`due_scan`] (renewing what is due within `within`) every `every`
/// until `shutdown` is cancelled, on one submitter (see [`run`] for the
/// loop that reconnects).
///
/// Each tick first takes a lease in Redis with a TTL of `every` (taken with
/// SET-if-absent semantics, and extended by the instance that already holds
/// it), so one instance in the fleet scans per period. The lease is kept
/// after a successful scan, so that no other instance scans again in the
/// same period; it is given back (compare-and-delete) after a failed scan,
/// so another instance may retry sooner, and on shutdown, so another
/// instance takes over at its next tick.
///
/// Never returns on an error: a Redis, S3 or broker failure is logged and
/// the next tick tries again. A submitter whose channel is closed cannot
/// recover here; that is logged at each tick, and [`run`] reconnects.
pub async fn run_scheduler(
    state: &State,
    store: &Store,
    submitter: &Submitter,
    every: StdDuration,
    within: time::Duration,
    shutdown: CancellationToken,
) {
    let every = every.max(StdDuration::from_secs(1));
    let me = instance_id();
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(every = ?every, within = %within, instance = %me, "renewal scheduler started");
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        if !submitter.is_connected() {
            tracing::error!(
                "the broker channel of the scheduler is closed; no renew job can be published until it reconnects"
            );
            continue;
        }
        match acquire_lease(state, &me, every).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!("another instance holds the scheduler lease for this period");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "cannot take the scheduler lease; retrying at the next tick");
                continue;
            }
        }
        let scan = tokio::select! {
            () = shutdown.cancelled() => None,
            r = due_scan(state, store, submitter, within, false) => Some(r),
        };
        match scan {
            None => break,
            Some(Ok(report)) => {
                if report.failed() > 0 {
                    tracing::warn!(%report, "due-scan finished with failures");
                } else {
                    tracing::info!(%report, "due-scan finished");
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %crate::error::chain(&e), "due-scan failed; retrying at the next tick");
                release_lease(state, &me).await;
            }
        }
    }
    release_lease(state, &me).await;
    tracing::info!("renewal scheduler stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, outcome: ScanOutcome) -> ScanEntry {
        ScanEntry {
            name: CertName::parse(name).expect("valid name"),
            renew_at: 1_800_000_000,
            challenge: ChallengeType::Http01,
            outcome,
        }
    }

    #[test]
    fn report_counts_and_summary() {
        let report = ScanReport {
            rebuilt: Some(3),
            entries: vec![
                entry(
                    "a.example.com",
                    ScanOutcome::Queued {
                        job_id: Uuid::nil(),
                    },
                ),
                entry("b.example.com", ScanOutcome::AlreadyQueued { job_id: None }),
                entry("c.example.com", ScanOutcome::Failed { reason: "x".into() }),
                entry(
                    "d.example.com",
                    ScanOutcome::Queued {
                        job_id: Uuid::nil(),
                    },
                ),
            ],
            dry_run: false,
            elapsed: StdDuration::from_millis(12),
        };
        assert_eq!(
            (report.queued(), report.already_queued(), report.failed()),
            (2, 1, 1)
        );
        assert_eq!(
            report.to_string(),
            "4 due, 2 queued, 1 already queued, 1 failed; index was lost and rebuilt from 3 certificates in 12 ms"
        );
        let dry = ScanReport {
            dry_run: true,
            ..ScanReport::default()
        };
        assert_eq!(
            dry.to_string(),
            "0 due (dry run, nothing published) in 0 ms"
        );
    }

    #[test]
    fn renew_at_converts() {
        let e = entry("a.example.com", ScanOutcome::Due);
        assert_eq!(e.renew_at_time().map(|t| t.year()), Some(2027));
    }
}
