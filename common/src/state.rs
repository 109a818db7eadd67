//! Shared coordination state in Redis that both binaries touch: the expiry
//! index, dedup markers and job status records.
//!
//! The lease and order records belong to the worker alone and live there.

use std::time::Duration;

use deadpool_redis::redis::{self, AsyncCommands};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::config::RedisConfig;
use crate::domain::CertName;
use crate::error::{Classify, Disposition};
use crate::job::{ChallengeType, JobKind};
use crate::redis_keys::RedisKeys;
use crate::redis_pool::{RedisConn, RedisPool};

/// How long job status records and done markers live: long enough for
/// `certfleet status` after a week-long incident, short enough not to grow.
pub const STATUS_TTL: Duration = Duration::from_secs(14 * 86_400);
/// How long a dedup marker lives if nobody clears it (a job lost its way):
/// longer than a job can spend in the retry queues with default settings.
pub const PENDING_TTL: Duration = Duration::from_secs(12 * 3600);

/// Redis could not be reached or refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// No connection from the pool.
    #[error("redis unavailable: {0}")]
    Pool(String),
    /// A command failed.
    #[error("redis: {0}")]
    Command(#[from] redis::RedisError),
    /// A record that does not parse.
    #[error("redis key {key} holds invalid data: {detail}")]
    Corrupt {
        /// Key.
        key: String,
        /// Cause.
        detail: String,
    },
}

impl Classify for StateError {
    fn disposition(&self) -> Disposition {
        match self {
            StateError::Corrupt { .. } => Disposition::Fail,
            _ => Disposition::Retry { after: None },
        }
    }
}

/// Builds a connection pool (one server or Sentinel). Opens no connection.
///
/// # Errors
/// An unusable URL (already validated by the configuration).
pub fn pool(cfg: &RedisConfig, max_size: usize) -> Result<RedisPool, StateError> {
    RedisPool::new(&cfg.url, &cfg.tls, max_size).map_err(StateError::Pool)
}

/// Shared Redis state.
#[derive(Clone)]
pub struct State {
    pool: RedisPool,
    keys: RedisKeys,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("keys", &self.keys).finish()
    }
}

/// One entry of a due-scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueEntry {
    /// Certificate name.
    pub name: CertName,
    /// Renewal time, Unix seconds.
    pub renew_at: i64,
    /// Challenge type its renew job routes to.
    pub challenge: ChallengeType,
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Accepted by the broker.
    Queued,
    /// A worker is on it.
    Running,
    /// Waiting in a delay queue.
    Retrying,
    /// Certificate stored.
    Done,
    /// Ended without a certificate (see the dead-letter queue).
    Failed,
}

/// A job's status record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    /// The job.
    pub job_id: Uuid,
    /// Its certificate name.
    pub name: CertName,
    /// Its kind.
    pub kind: JobKind,
    /// Where it stands.
    pub state: JobState,
    /// Attempt number.
    pub attempt: u32,
    /// Last news (error text, serial, …).
    pub detail: String,
    /// When this record was written.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl JobStatus {
    /// The record of `envelope`'s job in `state`, written now.
    pub fn of(envelope: &crate::job::Envelope, state: JobState, detail: impl Into<String>) -> Self {
        Self {
            job_id: envelope.job_id,
            name: envelope.job.name.clone(),
            kind: envelope.kind,
            state,
            attempt: envelope.attempt,
            detail: detail.into(),
            updated_at: OffsetDateTime::now_utc(),
        }
    }
}

async fn conn(pool: &RedisPool) -> Result<RedisConn, StateError> {
    pool.get()
        .await
        .map_err(|e| StateError::Pool(e.to_string()))
}

impl State {
    /// State for a configuration: a pool of up to `max_size` connections.
    ///
    /// # Errors
    /// An unusable URL.
    pub fn from_config(cfg: &crate::Config, max_size: usize) -> Result<Self, StateError> {
        Ok(Self::new(
            pool(&cfg.redis, max_size)?,
            RedisKeys::new(cfg.redis.prefix.clone()),
        ))
    }

    /// State over a pool with the given key prefix.
    pub fn new(pool: RedisPool, keys: RedisKeys) -> Self {
        Self { pool, keys }
    }

    /// The pool.
    pub fn pool(&self) -> &RedisPool {
        &self.pool
    }

    /// The keys.
    pub fn keys(&self) -> &RedisKeys {
        &self.keys
    }

    /// A pooled connection.
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn conn(&self) -> Result<RedisConn, StateError> {
        conn(&self.pool).await
    }

    /// Checks that Redis answers.
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn ping(&self) -> Result<(), StateError> {
        let mut c = self.conn().await?;
        let _: String = redis::cmd("PING").query_async(&mut *c).await?;
        Ok(())
    }

    /// Records (or moves) a name's renewal time in the expiry index.
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn index_put(
        &self,
        name: &CertName,
        renew_at: OffsetDateTime,
        challenge: ChallengeType,
    ) -> Result<(), StateError> {
        let mut c = self.conn().await?;
        let mut pipe = redis::pipe();
        self.index_put_into(&mut pipe, name, renew_at, challenge);
        let _: () = pipe.query_async(&mut *c).await?;
        Ok(())
    }

    /// Adds the commands of [`State::index_put`] to a pipeline (so a caller
    /// can send them with its own in one round trip).
    pub fn index_put_into(
        &self,
        pipe: &mut redis::Pipeline,
        name: &CertName,
        renew_at: OffsetDateTime,
        challenge: ChallengeType,
    ) {
        pipe.zadd(self.keys.expiry(), name.as_str(), renew_at.unix_timestamp())
            .ignore();
        // The meta hash is sparse: http-01, the default, is not stored, so
        // a due-scan over a fleet without dns-01 names reads no hash at all.
        if challenge == ChallengeType::Http01 {
            pipe.hdel(self.keys.expiry_meta(), name.as_str()).ignore();
        } else {
            pipe.hset(self.keys.expiry_meta(), name.as_str(), challenge.as_str())
                .ignore();
        }
        pipe.set_nx(
            self.keys.expiry_built(),
            OffsetDateTime::now_utc().unix_timestamp(),
        )
        .ignore();
    }

    /// Adds "record this version's validity" to a pipeline: the
    /// [`RedisKeys::validity`] hash and the [`RedisKeys::not_after`] set,
    /// and clears the name's failure mark (a version was stored).
    pub fn validity_put_into(
        &self,
        pipe: &mut redis::Pipeline,
        name: &CertName,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) {
        let (nb, na) = (not_before.unix_timestamp(), not_after.unix_timestamp());
        pipe.hset(self.keys.validity(), name.as_str(), format!("{nb} {na}"))
            .ignore()
            .zadd(self.keys.not_after(), name.as_str(), na)
            .ignore()
            .hdel(self.keys.failed(), name.as_str())
            .ignore();
    }

    /// Records validity for many names at once: the exporter filling in
    /// names stored before validity was kept, or (`replace`) an index
    /// rebuild, which first drops what was recorded.
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn validity_put_many(
        &self,
        entries: &[(CertName, OffsetDateTime, OffsetDateTime)],
        replace: bool,
    ) -> Result<(), StateError> {
        let mut c = self.conn().await?;
        if replace {
            let _: () = redis::pipe()
                .del(self.keys.validity())
                .del(self.keys.not_after())
                .query_async(&mut *c)
                .await?;
        }
        for chunk in entries.chunks(1000) {
            let mut pipe = redis::pipe();
            for (name, nb, na) in chunk {
                let (nb, na) = (nb.unix_timestamp(), na.unix_timestamp());
                pipe.hset(self.keys.validity(), name.as_str(), format!("{nb} {na}"))
                    .ignore()
                    .zadd(self.keys.not_after(), name.as_str(), na)
                    .ignore();
            }
            let _: () = pipe.query_async(&mut *c).await?;
        }
        Ok(())
    }

    /// Marks `name`'s last job as failed for good at `at` (until a version
    /// is stored).
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn mark_failed(&self, name: &CertName, at: OffsetDateTime) -> Result<(), StateError> {
        let mut c = self.conn().await?;
        let _: () = c
            .hset(self.keys.failed(), name.as_str(), at.unix_timestamp())
            .await?;
        Ok(())
    }

    /// Adds "release the dedup marker if `job_id` holds it" to a pipeline.
    pub fn pending_release_into(&self, pipe: &mut redis::Pipeline, name: &CertName, job_id: &Uuid) {
        pipe.cmd("EVAL")
            .arg(COMPARE_AND_DELETE)
            .arg(1)
            .arg(self.keys.pending(name))
            .arg(job_id.to_string())
            .ignore();
    }

    /// Adds "write this status record" to a pipeline.
    ///
    /// # Errors
    /// The record does not serialize (never for a valid one).
    pub fn set_status_into(
        &self,
        pipe: &mut redis::Pipeline,
        status: &JobStatus,
    ) -> Result<(), StateError> {
        let json = serde_json::to_string(status).map_err(|e| StateError::Corrupt {
            key: self.keys.job(&status.job_id),
            detail: e.to_string(),
        })?;
        pipe.set_ex(self.keys.job(&status.job_id), json, STATUS_TTL.as_secs())
            .ignore();
        Ok(())
    }

    /// Replaces the whole index (after a rebuild from storage), and marks it
    /// built.
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn index_replace(
        &self,
        entries: &[(CertName, i64, ChallengeType)],
    ) -> Result<(), StateError> {
        let mut c = self.conn().await?;
        let tmp = format!("{}:rebuild", self.keys.expiry());
        let tmp_meta = format!("{}:rebuild", self.keys.expiry_meta());
        let mut pipe = redis::pipe();
        pipe.atomic().del(&tmp).del(&tmp_meta);
        for chunk in entries.chunks(1000) {
            let items: Vec<(i64, &str)> = chunk.iter().map(|(n, t, _)| (*t, n.as_str())).collect();
            pipe.zadd_multiple(&tmp, &items);
            let meta: Vec<(&str, &str)> = chunk
                .iter()
                .filter(|(_, _, c)| *c != ChallengeType::Http01)
                .map(|(n, _, c)| (n.as_str(), c.as_str()))
                .collect();
            if !meta.is_empty() {
                pipe.hset_multiple(&tmp_meta, &meta);
            }
        }
        // RENAME of a key that does not exist fails: delete, then rename
        // only what was written.
        pipe.del(self.keys.expiry()).del(self.keys.expiry_meta());
        if !entries.is_empty() {
            pipe.rename(&tmp, self.keys.expiry());
        }
        if entries.iter().any(|(_, _, c)| *c != ChallengeType::Http01) {
            pipe.rename(&tmp_meta, self.keys.expiry_meta());
        }
        pipe.set(
            self.keys.expiry_built(),
            OffsetDateTime::now_utc().unix_timestamp(),
        );
        let _: () = pipe.query_async(&mut *c).await?;
        Ok(())
    }

    /// Whether the index looks lost: empty and never built since Redis last
    /// lost its data.
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn index_lost(&self) -> Result<bool, StateError> {
        let mut c = self.conn().await?;
        let (len, built): (u64, bool) = redis::pipe()
            .zcard(self.keys.expiry())
            .exists(self.keys.expiry_built())
            .query_async(&mut *c)
            .await?;
        Ok(len == 0 && !built)
    }

    /// Names whose renewal time is at or before `until`, soonest first,
    /// with their renewal time (Unix s) and challenge type.
    ///
    /// # Errors
    /// Redis unreachable or an invalid entry in the index.
    pub async fn index_due(&self, until: OffsetDateTime) -> Result<Vec<DueEntry>, StateError> {
        let mut c = self.conn().await?;
        let raw: Vec<(String, i64)> = c
            .zrangebyscore_withscores(self.keys.expiry(), "-inf", until.unix_timestamp())
            .await?;
        // Sparse: only names that are not http-01 are in the hash.
        let meta: std::collections::HashMap<String, String> =
            c.hgetall(self.keys.expiry_meta()).await?;
        let corrupt = |detail: String| StateError::Corrupt {
            key: self.keys.expiry(),
            detail,
        };
        raw.into_iter()
            .map(|(n, t)| {
                let challenge = match meta.get(&n) {
                    Some(c) => c.parse().map_err(corrupt)?,
                    None => ChallengeType::Http01,
                };
                let name = CertName::parse(&n).map_err(|e| corrupt(e.to_string()))?;
                Ok(DueEntry {
                    name,
                    renew_at: t,
                    challenge,
                })
            })
            .collect()
    }

    /// Removes a name from the index.
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn index_remove(&self, name: &CertName) -> Result<(), StateError> {
        let mut c = self.conn().await?;
        let _: () = redis::pipe()
            .zrem(self.keys.expiry(), name.as_str())
            .hdel(self.keys.expiry_meta(), name.as_str())
            .hdel(self.keys.validity(), name.as_str())
            .zrem(self.keys.not_after(), name.as_str())
            .hdel(self.keys.failed(), name.as_str())
            .query_async(&mut *c)
            .await?;
        Ok(())
    }

    /// Claims many names at once (one round trip): `true` for each name this
    /// call claimed, `false` where another job already holds it.
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn pending_claim_many(
        &self,
        claims: &[(CertName, Uuid)],
    ) -> Result<Vec<bool>, StateError> {
        let mut c = self.conn().await?;
        let mut out = Vec::with_capacity(claims.len());
        for chunk in claims.chunks(5000) {
            let mut pipe = redis::pipe();
            for (name, job_id) in chunk {
                pipe.cmd("SET")
                    .arg(self.keys.pending(name))
                    .arg(job_id.to_string())
                    .arg("NX")
                    .arg("PX")
                    .arg(PENDING_TTL.as_millis() as u64);
            }
            let got: Vec<Option<String>> = pipe.query_async(&mut *c).await?;
            out.extend(got.into_iter().map(|r| r.is_some()));
        }
        Ok(out)
    }

    /// The job holding a name's dedup marker, if any.
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn pending_holder(&self, name: &CertName) -> Result<Option<String>, StateError> {
        let mut c = self.conn().await?;
        Ok(c.get(self.keys.pending(name)).await?)
    }

    /// Releases a name's dedup marker if `job_id` holds it.
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn pending_release(&self, name: &CertName, job_id: &Uuid) -> Result<(), StateError> {
        let mut pipe = redis::pipe();
        self.pending_release_into(&mut pipe, name, job_id);
        let mut c = self.conn().await?;
        let _: () = pipe.query_async(&mut *c).await?;
        Ok(())
    }

    /// Writes a job's status record.
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn set_status(&self, status: &JobStatus) -> Result<(), StateError> {
        let mut pipe = redis::pipe();
        self.set_status_into(&mut pipe, status)?;
        let mut c = self.conn().await?;
        let _: () = pipe.query_async(&mut *c).await?;
        Ok(())
    }

    /// Writes many status records, pipelined (5,000 to a round trip).
    ///
    /// # Errors
    /// Redis unreachable; the records of earlier round trips stay written.
    pub async fn set_statuses(&self, statuses: &[JobStatus]) -> Result<(), StateError> {
        if statuses.is_empty() {
            return Ok(());
        }
        let mut c = self.conn().await?;
        for chunk in statuses.chunks(5_000) {
            let mut pipe = redis::pipe();
            for status in chunk {
                self.set_status_into(&mut pipe, status)?;
            }
            let _: () = pipe.query_async(&mut *c).await?;
        }
        Ok(())
    }

    /// Reads a job's status record.
    ///
    /// # Errors
    /// Redis unreachable or a corrupt record.
    pub async fn status(&self, job_id: &Uuid) -> Result<Option<JobStatus>, StateError> {
        let mut c = self.conn().await?;
        let raw: Option<String> = c.get(self.keys.job(job_id)).await?;
        raw.map(|s| {
            serde_json::from_str(&s).map_err(|e| StateError::Corrupt {
                key: self.keys.job(job_id),
                detail: e.to_string(),
            })
        })
        .transpose()
    }
}

/// Records a server's report unless a newer one is there: KEYS = rollout
/// hash, server hash, servers hash; ARGV = server, name, `<at ms>\t<json>`,
/// at ms. Values start with the report's time so the comparison needs no
/// JSON decoding.
const RECORD_REPORT: &str = r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local t = tonumber(string.match(cur, '^(%d+)'))
  if t and t > tonumber(ARGV[4]) then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
local last = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
if tonumber(ARGV[4]) > last then redis.call('HSET', KEYS[3], ARGV[1], ARGV[4]) end
return 1
"#;

/// The reports of a hash's values (`<at ms>\t<json>`); unreadable ones are
/// skipped.
fn reports_of(values: impl IntoIterator<Item = String>) -> Vec<crate::report::Report> {
    values
        .into_iter()
        .filter_map(|v| {
            let (_, json) = v.split_once('\t')?;
            crate::report::Report::from_json(json.as_bytes()).ok()
        })
        .collect()
}

impl State {
    /// Records a server's report (newest wins; a duplicate or an older one
    /// changes nothing). Returns whether it was recorded.
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn record_report(&self, r: &crate::report::Report) -> Result<bool, StateError> {
        let at_ms = i64::try_from(r.at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        let json = serde_json::to_string(r).map_err(|e| StateError::Corrupt {
            key: self.keys.rollout(&r.name),
            detail: e.to_string(),
        })?;
        let mut c = self.conn().await?;
        let done: i64 = redis::Script::new(RECORD_REPORT)
            .key(self.keys.rollout(&r.name))
            .key(self.keys.server(&r.server))
            .key(self.keys.servers())
            .arg(&r.server)
            .arg(r.name.as_str())
            .arg(format!("{at_ms}\t{json}"))
            .arg(at_ms)
            .invoke_async(&mut *c)
            .await?;
        Ok(done == 1)
    }

    /// The latest report of every server that reported on `name`.
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn rollout(&self, name: &CertName) -> Result<Vec<crate::report::Report>, StateError> {
        let mut c = self.conn().await?;
        let values: Vec<String> = c.hvals(self.keys.rollout(name)).await?;
        let mut reports = reports_of(values);
        reports.sort_by(|a, b| a.server.cmp(&b.server));
        Ok(reports)
    }

    /// Every server that reported, with the time of its last report, and
    /// its latest report per name.
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn servers(
        &self,
    ) -> Result<Vec<(String, OffsetDateTime, Vec<crate::report::Report>)>, StateError> {
        let mut c = self.conn().await?;
        let ids: Vec<(String, i64)> = c.hgetall(self.keys.servers()).await?;
        let mut out = Vec::new();
        for (id, at_ms) in ids {
            let values: Vec<String> = c.hvals(self.keys.server(&id)).await?;
            let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(at_ms) * 1_000_000)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH);
            out.push((id, at, reports_of(values)));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The CA rate-limit windows the workers keep (`rate:<kind>:<subject>`,
    /// with the limits they wrote to `rate-limits`), each with its use in
    /// the window as of `now_ms`; sorted by kind and subject.
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn rate_windows(&self, now_ms: u64) -> Result<Vec<RateWindow>, StateError> {
        let mut c = self.conn().await?;
        let limits: std::collections::HashMap<String, String> =
            c.hgetall(self.keys.rate_limits()).await?;
        // `<prefix>rate:` (not the `rate-limits` hash beside the windows).
        let prefix = self.keys.rate("", "");
        let prefix = prefix.strip_suffix(':').unwrap_or(&prefix);
        let mut keys: Vec<String> = Vec::new();
        {
            let mut iter: redis::AsyncIter<'_, String> = c.scan_match(format!("{prefix}*")).await?;
            while let Some(k) = iter.next_item().await {
                keys.push(k?);
            }
        }
        let mut out = Vec::new();
        for key in keys {
            let Some((kind, subject)) = key
                .strip_prefix(prefix)
                .and_then(|rest| rest.split_once(':'))
            else {
                continue;
            };
            let Some((count, window_ms)) = limits
                .get(kind)
                .and_then(|l| l.split_once('/'))
                .and_then(|(n, w)| Some((n.parse::<u64>().ok()?, w.parse::<u64>().ok()?)))
            else {
                continue;
            };
            let since = now_ms.saturating_sub(window_ms);
            let entries: Vec<(String, u64)> = c
                .zrangebyscore_withscores(&key, since.saturating_add(1), "+inf")
                .await?;
            if entries.is_empty() {
                continue;
            }
            let used = entries.len() as u64;
            let label = entries
                .last()
                .and_then(|(m, _)| m.split_once(' '))
                .map(|(_, l)| l.to_string())
                .unwrap_or_else(|| subject.to_string());
            // The window is full until its oldest entry leaves it.
            let next_slot_ms = (used >= count)
                .then(|| entries.first().map(|(_, at)| at + window_ms))
                .flatten();
            out.push(RateWindow {
                kind: kind.to_string(),
                subject: subject.to_string(),
                label,
                used,
                limit: count,
                window_ms,
                next_slot_ms,
            });
        }
        out.sort_by(|a, b| (&a.kind, &a.subject).cmp(&(&b.kind, &b.subject)));
        Ok(out)
    }

    /// Forgets a server: its reports, and its entry in every rollout.
    /// Returns whether it was known.
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn forget_server(&self, id: &str) -> Result<bool, StateError> {
        let mut c = self.conn().await?;
        let names: Vec<String> = c.hkeys(self.keys.server(id)).await?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for n in &names {
            if let Ok(name) = CertName::parse(n) {
                pipe.hdel(self.keys.rollout(&name), id).ignore();
            }
        }
        pipe.del(self.keys.server(id)).ignore();
        pipe.hdel(self.keys.servers(), id);
        let (known,): (i64,) = pipe.query_async(&mut *c).await?;
        Ok(known > 0 || !names.is_empty())
    }
}

/// One CA rate-limit window's use ([`State::rate_windows`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RateWindow {
    /// `orders` (per account), `failed` (validations per hostname), `certs`
    /// (per registered domain), `duplicate` (per exact set of names).
    pub kind: String,
    /// The key's subject: the account, hostname, registered domain, or the
    /// hash of the set of names.
    pub subject: String,
    /// What the last entry counted (for duplicates: the names).
    pub label: String,
    /// Entries in the window now.
    pub used: u64,
    /// The most the window allows.
    pub limit: u64,
    /// The window's length.
    pub window_ms: u64,
    /// When the next slot frees (Unix ms), if the window is full.
    pub next_slot_ms: Option<u64>,
}

/// Deletes `KEYS[1]` only if it still holds `ARGV[1]`.
pub const COMPARE_AND_DELETE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;
