//! ARI followed over time (RFC 9773 §4.3): the CA's suggested renewal
//! window is read again on the schedule its `Retry-After` asks for, so a
//! CA that moves the window (a mass revocation, an incident) is followed
//! within that time instead of at the next renewal.
//!
//! Each stored certificate with an ARI identifier has an entry in the
//! sorted set `ari-check` (name → when to ask next, Unix ms), written when
//! the version is stored. Every worker looks for due entries each tick and
//! claims them in one script (pushing them a few minutes ahead), so each is
//! asked by one worker; a worker that dies mid-way leaves the claim to
//! expire. When the new window no longer contains the planned renewal time,
//! a new time inside it goes into the expiry index, which the due-scan
//! reads: a window moved into the past renews at the next scan. The pointer
//! in storage keeps the time planned at issuance; the index is what
//! schedules.

use std::sync::Arc;
use std::time::Duration;

use certfleet_common::domain::CertName;
use certfleet_common::state::{State, StateError};
use deadpool_redis::redis;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Ctx;

/// The longest a CA's `Retry-After` is followed: a day (the window may move
/// at any time; RFC 9773 asks clients to look at least that often).
pub(crate) const MAX_RECHECK: Duration = Duration::from_secs(24 * 3600);

/// When ARI could not be read: ask again this much later.
const UNAVAILABLE_RECHECK: Duration = Duration::from_secs(6 * 3600);

/// How long a claim keeps other workers off a name.
const CLAIM: Duration = Duration::from_secs(300);

/// Names claimed per tick.
const BATCH: usize = 50;

/// Claims up to ARGV[3] entries due by ARGV[1] by moving them to ARGV[2].
const CLAIM_DUE: &str = r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, m in ipairs(due) do
  redis.call('ZADD', KEYS[1], ARGV[2], m)
end
return due
"#;

/// The CA's `Retry-After`, kept between `min` and [`MAX_RECHECK`].
pub(crate) fn next_check(retry_after: Duration, min: Duration) -> Duration {
    retry_after.clamp(min, MAX_RECHECK.max(min))
}

/// Records when to ask the CA about `name` again.
pub(crate) async fn schedule(
    state: &State,
    name: &CertName,
    after: Duration,
) -> Result<(), StateError> {
    let at = certfleet_common::now_ms().saturating_add(after.as_millis() as i64);
    let mut c = state.conn().await?;
    let _: () = redis::cmd("ZADD")
        .arg(state.keys().ari_check())
        .arg(at)
        .arg(name.as_str())
        .query_async(&mut *c)
        .await?;
    Ok(())
}

/// Asks the CA again for every due certificate, until `shutdown`.
pub(crate) async fn run(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    let min = ctx.cfg.worker.ari_recheck_min;
    let tick = min.clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(tick) => {}
        }
        match claim(&ctx.state).await {
            Ok(names) => {
                for name in names {
                    if shutdown.is_cancelled() {
                        break;
                    }
                    if let Err(e) = recheck(&ctx, &name, min).await {
                        warn!(error = %e, %name, "ARI re-check failed; retrying after the claim");
                    }
                }
            }
            Err(e) => debug!(error = %e, "ARI re-check: Redis unavailable"),
        }
    }
}

async fn claim(state: &State) -> Result<Vec<CertName>, StateError> {
    let now = certfleet_common::now_ms();
    let mut c = state.conn().await?;
    let due: Vec<String> = redis::Script::new(CLAIM_DUE)
        .key(state.keys().ari_check())
        .arg(now)
        .arg(now.saturating_add(CLAIM.as_millis() as i64))
        .arg(BATCH)
        .invoke_async(&mut *c)
        .await?;
    Ok(due
        .into_iter()
        .filter_map(|n| CertName::parse(&n).ok())
        .collect())
}

/// Why one re-check failed (the claim brings it back).
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecheckError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Storage(#[from] certfleet_common::storage::StorageError),
}

async fn recheck(ctx: &Ctx, name: &CertName, min: Duration) -> Result<(), RecheckError> {
    let pointer = ctx.store.pointer(name).await?;
    let Some((p, _)) = pointer else {
        return forget(&ctx.state, name).await.map_err(Into::into);
    };
    let Some(ari_id) = p.ari_id.clone() else {
        return forget(&ctx.state, name).await.map_err(Into::into);
    };
    let issuer = ctx.issuers.by_name(p.issuer.as_deref());
    let Some((window, retry_after)) = issuer.renewal_window(&ari_id).await else {
        schedule(&ctx.state, name, UNAVAILABLE_RECHECK.max(min)).await?;
        return Ok(());
    };
    let mut c = ctx.state.conn().await?;
    let planned: Option<i64> = redis::cmd("ZSCORE")
        .arg(ctx.state.keys().expiry())
        .arg(name.as_str())
        .query_async(&mut *c)
        .await
        .map_err(StateError::from)?;
    let planned = planned
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(p.renew_at);
    // A second's slack: the index keeps whole seconds.
    let inside = planned >= window.start - time::Duration::seconds(1)
        && planned <= window.end + time::Duration::seconds(1);
    if !inside {
        let renew_at = crate::renewal::renewal_time(
            p.not_before,
            p.not_after,
            Some(window),
            rand::random::<f64>(),
        );
        let mut pipe = redis::pipe();
        ctx.state
            .index_put_into(&mut pipe, name, renew_at, p.challenge);
        let _: () = pipe.query_async(&mut *c).await.map_err(StateError::from)?;
        ctx.metrics.jobs.ari_moved.inc();
        info!(
            %name,
            was = %planned,
            now = %renew_at,
            window_start = %window.start,
            window_end = %window.end,
            "the CA moved the renewal window; renewal rescheduled"
        );
    }
    schedule(&ctx.state, name, next_check(retry_after, min)).await?;
    Ok(())
}

async fn forget(state: &State, name: &CertName) -> Result<(), StateError> {
    let mut c = state.conn().await?;
    let _: () = redis::cmd("ZREM")
        .arg(state.keys().ari_check())
        .arg(name.as_str())
        .query_async(&mut *c)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_followed_within_bounds() {
        let min = Duration::from_secs(60);
        assert_eq!(
            next_check(Duration::from_secs(3600), min),
            Duration::from_secs(3600)
        );
        assert_eq!(next_check(Duration::ZERO, min), min);
        assert_eq!(
            next_check(Duration::from_secs(30 * 86_400), min),
            MAX_RECHECK
        );
        // A minimum above a day wins.
        let long = Duration::from_secs(2 * 86_400);
        assert_eq!(next_check(Duration::from_secs(1), long), long);
    }
}
