//! Reporting: `certfleet status JOB_ID|NAME` and `certfleet list`, as
//! text for people or JSON (`--json`) for scripts.
//!
//! S3 is the source of truth for certificates (the pointer of each name);
//! Redis adds what is in motion: job status records, the name's pending job
//! (dedup marker) and whether an ACME order is in flight. Redis being down
//! makes the status of a name less complete, not wrong, so that part is
//! best effort.

use certfleet_common::error::chain;
use certfleet_common::state::{JobStatus, State, StateError};
use certfleet_common::storage::StorageError;
use certfleet_common::{CertName, Config, Pointer, Store};
use futures_util::stream::{self, StreamExt};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::output::out;

/// Pointers read at once by `list`.
pub(crate) const LIST_CONCURRENCY: usize = 32;

/// Why `status` or `list` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    /// Neither a job id nor a certificate name.
    #[error("{0:?} is neither a job id (UUID) nor a certificate name")]
    BadTarget(String),
    /// No status record for this job id.
    #[error("unknown job {0} (status records are kept for 14 days)")]
    UnknownJob(Uuid),
    /// No pointer and no pending job for this name.
    #[error("no certificate named {0}, and no job is queued for it")]
    UnknownName(CertName),
    /// Redis failed where it is the only source.
    #[error("cannot read the job status from redis")]
    State(#[source] StateError),
    /// Storage failed.
    #[error("cannot read certificates from storage")]
    Storage(#[source] StorageError),
    /// Some pointers could not be read (the others were listed).
    #[error("{0} certificate pointers could not be read (see above)")]
    Unreadable(usize),
    /// JSON output failed.
    #[error("cannot write JSON")]
    Json(#[source] serde_json::Error),
}

impl StatusError {
    /// Whether this is bad usage (exit 64).
    pub fn is_usage(&self) -> bool {
        matches!(self, StatusError::BadTarget(_))
    }
}

/// What `status` was asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// A job id.
    Job(Uuid),
    /// A certificate name.
    Name(CertName),
}

impl Target {
    /// A UUID is a job, anything else must be a certificate name.
    ///
    /// # Errors
    /// [`StatusError::BadTarget`].
    pub(crate) fn parse(s: &str) -> Result<Self, StatusError> {
        if let Ok(id) = Uuid::parse_str(s.trim()) {
            return Ok(Target::Job(id));
        }
        CertName::parse(s.trim())
            .map(Target::Name)
            .map_err(|_| StatusError::BadTarget(s.to_string()))
    }
}

/// RFC 3339 to the second (storage keeps nanoseconds; nobody needs them).
fn when(t: OffsetDateTime) -> String {
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// `in 3d 4h` or `5h ago`, for humans.
fn relative(t: OffsetDateTime, now: OffsetDateTime) -> String {
    let d = t - now;
    let secs = d.whole_seconds().unsigned_abs();
    let text = if secs >= 86_400 {
        format!("{}d {}h", secs / 86_400, (secs % 86_400) / 3600)
    } else if secs >= 3600 {
        format!("{}h {}m", secs / 3600, (secs % 3600) / 60)
    } else if secs >= 60 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    };
    if d.is_negative() {
        format!("{text} ago")
    } else {
        format!("in {text}")
    }
}

fn job_line(s: &JobStatus) -> String {
    let state = serde_json::to_value(s.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{:?}", s.state));
    let mut line = format!(
        "{state}, attempt {}, updated {}",
        s.attempt,
        when(s.updated_at)
    );
    if !s.detail.is_empty() {
        line.push_str(&format!(": {}", s.detail));
    }
    line
}

/// `certfleet status JOB_ID|NAME`.
///
/// # Errors
/// A bad target (usage), an unknown job or name, or the service that is the
/// only source being down.
pub(crate) async fn status(config: &Config, target: &str, json: bool) -> Result<(), StatusError> {
    match Target::parse(target)? {
        Target::Job(id) => job_status(config, id, json).await,
        Target::Name(name) => name_status(config, &name, json).await,
    }
}

async fn job_status(config: &Config, id: Uuid, json: bool) -> Result<(), StatusError> {
    let state = State::from_config(config, 2).map_err(StatusError::State)?;
    let s = state
        .status(&id)
        .await
        .map_err(StatusError::State)?
        .ok_or(StatusError::UnknownJob(id))?;
    if json {
        out(serde_json::to_string(&s).map_err(StatusError::Json)?);
        return Ok(());
    }
    out(format_args!("job:      {}", s.job_id));
    out(format_args!("name:     {}", s.name));
    out(format_args!("kind:     {}", s.kind.as_str()));
    out(format_args!("status:   {}", job_line(&s)));
    Ok(())
}

/// What Redis knows about a name.
struct Motion {
    pending: Option<(String, Option<JobStatus>)>,
    order_in_flight: bool,
}

async fn motion(state: &State, name: &CertName) -> Result<Motion, StateError> {
    let pending = match state.pending_holder(name).await? {
        Some(id) => {
            let status = match id.parse::<Uuid>() {
                Ok(uuid) => state.status(&uuid).await?,
                Err(_) => None,
            };
            Some((id, status))
        }
        None => None,
    };
    let mut c = state.conn().await?;
    let order_in_flight = exists(&mut c, &state.keys().order(name)).await?;
    Ok(Motion {
        pending,
        order_in_flight,
    })
}

/// `status NAME --json`: one object; `null` where Redis could not say.
fn name_json(
    name: &CertName,
    pointer: Option<&Pointer>,
    motion: Option<&Motion>,
    failed_at: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> serde_json::Value {
    let certificate = pointer.map(|p| {
        let mut v =
            serde_json::to_value(ListEntry::new(p.clone(), now, failed_at)).unwrap_or_default();
        v["history"] = serde_json::json!(p.history);
        v["revoked"] = serde_json::json!(p.revoked.as_ref().map(|r| serde_json::json!({
            "at": when(r.at),
            "reason": r.reason,
            "job_id": r.job_id,
        })));
        v["job_id"] = serde_json::json!(p.job_id);
        v
    });
    let (pending, order) = match motion {
        Some(m) => (
            m.pending
                .as_ref()
                .map(|(id, s)| serde_json::json!({"job_id": id, "status": s})),
            Some(m.order_in_flight),
        ),
        None => (None, None),
    };
    serde_json::json!({
        "name": name,
        "certificate": certificate,
        "pending_job": pending,
        "order_in_flight": order,
        "last_job_failed_at": failed_at.map(when),
    })
}

async fn name_status(config: &Config, name: &CertName, json: bool) -> Result<(), StatusError> {
    let store = Store::from_config(config).await;
    let pointer = store.pointer(name).await.map_err(StatusError::Storage)?;
    let state = State::from_config(config, 2).map_err(StatusError::State)?;
    let motion = motion(&state, name).await;
    let now = OffsetDateTime::now_utc();
    let known = pointer.is_some() || matches!(&motion, Ok(m) if m.pending.is_some());
    if !known {
        if let Err(e) = &motion {
            tracing::warn!(error = %chain(e), "redis unavailable: cannot tell whether a job is queued");
        }
        return Err(StatusError::UnknownName(name.clone()));
    }
    let failed_at = match failed_marks(config).await {
        Ok(f) => f.get(name.as_str()).copied(),
        Err(_) => None,
    };
    if json {
        let v = name_json(
            name,
            pointer.as_ref().map(|(p, _)| p),
            motion.as_ref().ok(),
            failed_at,
            now,
        );
        out(v.to_string());
        return Ok(());
    }
    out(format_args!("name:        {name}"));
    match &pointer {
        Some((p, _)) => print_pointer(p, now),
        None => out("certificate: none stored yet"),
    }
    if let Some(t) = failed_at {
        out(format_args!(
            "last job:    failed {} ({}; certfleet dlq list)",
            when(t),
            relative(t, now)
        ));
    }
    match motion {
        Ok(m) => {
            match m.pending {
                Some((id, Some(s))) => out(format_args!("pending job: {id} ({})", job_line(&s))),
                Some((id, None)) => out(format_args!("pending job: {id} (no status record)")),
                None => out("pending job: none"),
            }
            out(format_args!(
                "order:       {}",
                if m.order_in_flight {
                    "in flight"
                } else {
                    "none in flight"
                }
            ));
        }
        Err(e) => out(format_args!("pending job: unknown (redis: {})", chain(&e))),
    }
    Ok(())
}

fn print_pointer(p: &Pointer, now: OffsetDateTime) {
    out(format_args!("domains:     {}", p.domains.join(", ")));
    out(format_args!(
        "serial:      {}",
        certfleet_common::serial_display(&p.serial)
    ));
    out(format_args!("key type:    {}", p.key_type));
    if p.csr.is_some() {
        out(format_args!(
            "key:         the operator's (issue --csr or --key-file); renewals order its CSR again"
        ));
    }
    out(format_args!("challenge:   {}", p.challenge));
    if let Some(profile) = &p.profile {
        out(format_args!("profile:     {profile}"));
    }
    if let Some(issuer) = &p.issuer {
        out(format_args!("issuer:      {issuer}"));
    }
    out(format_args!("not before:  {}", when(p.not_before)));
    out(format_args!(
        "not after:   {} ({})",
        when(p.not_after),
        relative(p.not_after, now)
    ));
    let due = if p.renew_at <= now { ", due" } else { "" };
    out(format_args!(
        "renew at:    {} ({}{due})",
        when(p.renew_at),
        relative(p.renew_at, now)
    ));
    if let Some(r) = &p.revoked {
        out(format_args!(
            "revoked:     {} ({}, job {}); not renewed",
            when(r.at),
            r.reason,
            r.job_id
        ));
    }
    out(format_args!("version:     {}", p.version));
    out(format_args!(
        "stored by:   job {} at {}",
        p.job_id,
        when(p.updated_at)
    ));
    if p.history.is_empty() {
        out("history:     none");
    } else {
        out(format_args!("history:     {}", p.history.join(", ")));
    }
}

/// One certificate in `list --json`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ListEntry {
    /// Name.
    pub(crate) name: CertName,
    /// Domains.
    pub(crate) domains: Vec<String>,
    /// Serial as openssl prints it (`serial_display`).
    pub(crate) serial: String,
    /// Validity start.
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) not_before: OffsetDateTime,
    /// Validity end.
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) not_after: OffsetDateTime,
    /// When it will be renewed.
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) renew_at: OffsetDateTime,
    /// Storage version.
    pub(crate) version: String,
    /// Key type.
    pub(crate) key_type: String,
    /// Challenge type.
    pub(crate) challenge: String,
    /// The ACME profile it was ordered with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) profile: Option<String>,
    /// The issuer (CA) of this version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) issuer: Option<String>,
    /// Ordered with the operator's CSR (`issue --csr`, `--key-file`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) own_key: bool,
    /// Whole days until notAfter (negative once expired).
    pub(crate) days_left: i64,
    /// When the name's last job failed for good, if it did after this
    /// version was stored.
    #[serde(with = "time::serde::rfc3339::option")]
    pub(crate) last_job_failed_at: Option<OffsetDateTime>,
}

impl ListEntry {
    fn new(p: Pointer, now: OffsetDateTime, failed_at: Option<OffsetDateTime>) -> Self {
        Self {
            days_left: days_left(p.not_after, now),
            name: p.name,
            domains: p.domains,
            serial: certfleet_common::serial_display(&p.serial),
            not_before: p.not_before,
            not_after: p.not_after,
            renew_at: p.renew_at,
            version: p.version,
            key_type: p.key_type.as_str().to_string(),
            challenge: p.challenge.as_str().to_string(),
            profile: p.profile,
            issuer: p.issuer,
            own_key: p.csr.is_some(),
            last_job_failed_at: failed_at,
        }
    }
}

/// Whole days from `now` until `t`, rounded towards minus infinity (so an
/// expired certificate has a negative count, one expiring today 0).
fn days_left(t: OffsetDateTime, now: OffsetDateTime) -> i64 {
    (t - now).whole_seconds().div_euclid(86_400)
}

/// What `list` shows.
#[derive(Debug, Clone, Default)]
pub(crate) struct ListFilter {
    /// Only certificates whose notAfter is within this long from now
    /// (`--expiring-within`).
    pub(crate) expiring_within: Option<std::time::Duration>,
    /// Only names whose last job failed for good (`--failed`).
    pub(crate) failed: bool,
}

impl ListFilter {
    fn keeps(&self, e: &ListEntry, now: OffsetDateTime) -> bool {
        let soon = self
            .expiring_within
            .is_none_or(|w| time::Duration::try_from(w).is_ok_and(|w| e.not_after <= now + w));
        soon && (!self.failed || e.last_job_failed_at.is_some())
    }
}

/// A pointer read: the pointer with its ETag, `None` if it is gone.
type PointerRead = Result<Option<(Pointer, certfleet_common::storage::ETag)>, StorageError>;

/// `certfleet list [--json] [--expiring-within D] [--failed]`: every
/// certificate with a pointer, by name, with its days left, its planned
/// renewal and whether its last job failed (from Redis: best effort, except
/// with `--failed`, which needs it).
///
/// # Errors
/// Storage unavailable (or Redis, with `--failed`); pointers that cannot be
/// read are reported and the others still listed (exit 1 at the end).
pub(crate) async fn list(
    config: &Config,
    json: bool,
    filter: &ListFilter,
) -> Result<(), StatusError> {
    let now = OffsetDateTime::now_utc();
    let failed = match failed_marks(config).await {
        Ok(f) => f,
        Err(e) if filter.failed => return Err(StatusError::State(e)),
        Err(e) => {
            tracing::warn!(error = %chain(&e), "redis unavailable: failed jobs are not shown");
            std::collections::HashMap::new()
        }
    };
    let store = Store::from_config(config).await;
    let names = store.names().await.map_err(StatusError::Storage)?;
    let store = &store;
    let results: Vec<(CertName, PointerRead)> = stream::iter(names)
        .map(|name| async move {
            let r = store.pointer(&name).await;
            (name, r)
        })
        .buffered(LIST_CONCURRENCY)
        .collect()
        .await;
    let mut entries: Vec<ListEntry> = Vec::with_capacity(results.len());
    let mut unreadable = 0;
    for (name, result) in results {
        match result {
            Ok(Some((p, _))) => {
                let failed_at = failed.get(p.name.as_str()).copied();
                let e = ListEntry::new(p, now, failed_at);
                if filter.keeps(&e, now) {
                    entries.push(e);
                }
            }
            Ok(None) => {}
            Err(e) => {
                unreadable += 1;
                eprintln!("{name}: {}", chain(&e));
            }
        }
    }
    if json {
        let text = serde_json::to_string_pretty(&entries).map_err(StatusError::Json)?;
        out(text);
    } else if !entries.is_empty() {
        let width = entries
            .iter()
            .map(|e| e.name.as_str().len())
            .max()
            .unwrap_or(4)
            .max(4);
        out(format_args!(
            "{:<width$}  {:>9}  {:<20}  {:<14}  {:<6}  {:<32}  DOMAINS",
            "NAME", "DAYS LEFT", "NOT AFTER", "RENEWAL", "LAST", "SERIAL"
        ));
        for e in &entries {
            let renewal = if e.renew_at <= now {
                "due".to_string()
            } else {
                relative(e.renew_at, now)
            };
            let last = if e.last_job_failed_at.is_some() {
                "failed"
            } else {
                "ok"
            };
            out(format_args!(
                "{:<width$}  {:>9}  {:<20}  {:<14}  {:<6}  {:<32}  {}",
                e.name.as_str(),
                e.days_left,
                when(e.not_after),
                renewal,
                last,
                e.serial,
                e.domains.join(",")
            ));
        }
    }
    if unreadable > 0 {
        return Err(StatusError::Unreadable(unreadable));
    }
    Ok(())
}

/// Names whose last job failed for good, with when (the workers' marks,
/// cleared by the next stored version).
async fn failed_marks(
    config: &Config,
) -> Result<std::collections::HashMap<String, OffsetDateTime>, StateError> {
    use deadpool_redis::redis::AsyncCommands as _;
    let state = State::from_config(config, 1)?;
    let mut c = state.conn().await?;
    let raw: std::collections::HashMap<String, i64> = c.hgetall(state.keys().failed()).await?;
    Ok(raw
        .into_iter()
        .filter_map(|(n, t)| Some((n, OffsetDateTime::from_unix_timestamp(t).ok()?)))
        .collect())
}

/// Whether a key exists (the one Redis command `status` needs that
/// [`State`] does not offer: the order record belongs to the worker).
async fn exists(
    c: &mut certfleet_common::redis_pool::RedisConn,
    key: &str,
) -> Result<bool, StateError> {
    use deadpool_redis::redis::AsyncCommands as _;
    Ok(c.exists(key).await?)
}

/// What each kind of window counts, for `certfleet limits`.
fn limit_name(kind: &str) -> &str {
    match kind {
        "orders" => "new orders per account",
        "failed" => "failed validations per name",
        "certs" => "certificates per registered domain",
        "duplicate" => "duplicate certificates",
        other => other,
    }
}

/// `certfleet limits`: every rate-limit window with entries, its use and
/// when a full one frees a slot.
pub(crate) async fn limits(config: &Config, json: bool) -> Result<(), StatusError> {
    let state = State::from_config(config, 2).map_err(StatusError::State)?;
    let windows = state
        .rate_windows(u64::try_from(certfleet_common::now_ms()).unwrap_or(0))
        .await
        .map_err(StatusError::State)?;
    if json {
        let text = serde_json::to_string_pretty(&windows).map_err(StatusError::Json)?;
        out(text);
        return Ok(());
    }
    if windows.is_empty() {
        out(
            "no rate-limit window holds anything (the limits are off, or nothing was counted within their windows)",
        );
        return Ok(());
    }
    let rows: Vec<[String; 5]> = windows
        .iter()
        .map(|w| {
            let subject = match w.kind.as_str() {
                "orders" => "the fleet's account".to_string(),
                "duplicate" => w.label.clone(),
                _ => w.subject.clone(),
            };
            let next = match w.next_slot_ms {
                Some(ms) => OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                    .ok()
                    .and_then(|t| t.replace_nanosecond(0).ok())
                    .and_then(|t| t.format(&Rfc3339).ok())
                    .unwrap_or_else(|| "?".into()),
                None => "now".into(),
            };
            [
                limit_name(&w.kind).to_string(),
                subject,
                format!("{}/{}", w.used, w.limit),
                certfleet_common::config::parse::format_duration(std::time::Duration::from_millis(
                    w.window_ms,
                )),
                next,
            ]
        })
        .collect();
    let header = ["LIMIT", "SUBJECT", "USED", "WINDOW", "NEXT SLOT"];
    let mut width = header.map(str::len);
    for r in &rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: [&str; 5]| {
        format!(
            "{:<a$}  {:<b$}  {:>c$}  {:<d$}  {}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            a = width[0],
            b = width[1],
            c = width[2],
            d = width[3]
        )
    };
    out(line(header));
    for r in &rows {
        out(line([&r[0], &r[1], &r[2], &r[3], &r[4]]));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn targets() {
        let id = "0192e4a0-0000-7000-8000-000000000001";
        assert!(matches!(Target::parse(id), Ok(Target::Job(_))));
        assert!(matches!(
            Target::parse("www.example.com"),
            Ok(Target::Name(_))
        ));
        let err = Target::parse("Not a name").map(|_| ()).expect_err("bad");
        assert!(err.is_usage());
    }

    #[test]
    fn relative_times() {
        let now = datetime!(2026-01-01 00:00 UTC);
        assert_eq!(relative(datetime!(2026-01-31 05:00 UTC), now), "in 30d 5h");
        assert_eq!(relative(datetime!(2025-12-31 22:30 UTC), now), "1h 30m ago");
        assert_eq!(relative(now, now), "in 0s");
    }
}
