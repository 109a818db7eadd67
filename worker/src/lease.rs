//! One order per certificate name across the fleet: leases in Redis.
//!
//! A lease is `SET lease:<name> <token> NX PX <ttl>`, taken together with a
//! fencing token from a counter that only grows (one Lua script, so both
//! happen or neither). The holder refreshes it every third of its lifetime
//! (certmagic's `keepLockfileFresh`) and, when a refresh finds the key gone
//! or owned by someone else — Redis restarted, or this process stalled past
//! the TTL — cancels [`Lease::lost`] so the job stops before doing harm.
//! The fencing token is written into the S3 pointer; a writer whose token is
//! older than the pointer's never replaces it (see `store.rs`). A Redis
//! failure is never read as "still held": if refreshes fail for a whole TTL,
//! the lease counts as lost.

use std::time::Duration;

use certfleet_common::CertName;
use certfleet_common::redis_keys::RedisKeys;
use certfleet_common::state::{COMPARE_AND_DELETE, State, StateError};
use deadpool_redis::redis;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Takes the lease and the next fencing token, or returns nil.
const ACQUIRE: &str = r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return false
"#;

/// Extends the lease if we still own it.
const REFRESH: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

/// Raises the fencing counter above a floor (after Redis lost it).
const RAISE_FENCE: &str = r#"
local v = redis.call('INCR', KEYS[1])
local floor = tonumber(ARGV[1])
if v <= floor then
  redis.call('SET', KEYS[1], floor + 1)
  return floor + 1
end
return v
"#;

/// A held lease. Dropping it stops the refresher; call [`Lease::release`]
/// to free the name at once.
pub(crate) struct Lease {
    state: State,
    key: String,
    fence_key: String,
    token: String,
    fence: u64,
    lost: CancellationToken,
    refresher: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// Tries to take the lease on `name`; `None` if another worker holds it.
    /// `status`, if given, is written in the same round trip.
    pub(crate) async fn acquire(
        state: &State,
        name: &CertName,
        owner: &str,
        ttl: Duration,
        status: Option<&certfleet_common::state::JobStatus>,
    ) -> Result<Option<Self>, StateError> {
        let keys: &RedisKeys = state.keys();
        let key = keys.lease(name);
        let fence_key = keys.fence(name);
        let token = format!("{owner}:{}", uuid::Uuid::new_v4().simple());
        // One round trip: the job's status record, then the lease.
        let mut pipe = redis::pipe();
        if let Some(status) = status {
            state.set_status_into(&mut pipe, status)?;
        }
        pipe.cmd("EVAL")
            .arg(ACQUIRE)
            .arg(2)
            .arg(&key)
            .arg(&fence_key)
            .arg(&token)
            .arg(ttl.as_millis() as u64);
        let mut c = state.conn().await?;
        let (fence,): (Option<u64>,) = pipe.query_async(&mut *c).await?;
        let Some(fence) = fence else {
            return Ok(None);
        };
        let lost = CancellationToken::new();
        let refresher = tokio::spawn(refresh_loop(
            state.clone(),
            key.clone(),
            token.clone(),
            ttl,
            lost.clone(),
        ));
        debug!(%name, fence, "lease taken");
        Ok(Some(Self {
            state: state.clone(),
            key,
            fence_key,
            token,
            fence,
            lost,
            refresher,
        }))
    }

    /// The fencing token of this lease.
    pub(crate) fn fence(&self) -> u64 {
        self.fence
    }

    /// Makes the fencing token larger than `floor` (the pointer's token, when
    /// Redis lost its counter).
    pub(crate) async fn raise_fence(&mut self, floor: u64) -> Result<u64, StateError> {
        if self.fence > floor {
            return Ok(self.fence);
        }
        let mut c = self.state.conn().await?;
        let fence: u64 = redis::Script::new(RAISE_FENCE)
            .key(&self.fence_key)
            .arg(floor)
            .invoke_async(&mut *c)
            .await?;
        self.fence = fence;
        Ok(fence)
    }

    /// Cancelled when the lease is (or may be) lost.
    pub(crate) fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    /// Checks with Redis, now, that we still hold the lease.
    pub(crate) async fn still_held(&self) -> Result<bool, StateError> {
        if self.lost.is_cancelled() {
            return Ok(false);
        }
        let mut c = self.state.conn().await?;
        let current: Option<String> = redis::cmd("GET")
            .arg(&self.key)
            .query_async(&mut *c)
            .await?;
        Ok(current.as_deref() == Some(self.token.as_str()))
    }

    /// Frees the name (only if we still hold it).
    pub(crate) async fn release(self) {
        self.refresher.abort();
        let result: Result<(), StateError> = async {
            let mut c = self.state.conn().await?;
            let _: i64 = redis::Script::new(COMPARE_AND_DELETE)
                .key(&self.key)
                .arg(&self.token)
                .invoke_async(&mut *c)
                .await?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            // The lease expires on its own; another worker waits at most a TTL.
            warn!(key = %self.key, error = %e, "could not release lease");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

async fn refresh_loop(
    state: State,
    key: String,
    token: String,
    ttl: Duration,
    lost: CancellationToken,
) {
    let every = ttl / 3;
    let mut last_ok = Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let result: Result<i64, StateError> = async {
            let mut c = state.conn().await?;
            Ok(redis::Script::new(REFRESH)
                .key(&key)
                .arg(&token)
                .arg(ttl.as_millis() as u64)
                .invoke_async(&mut *c)
                .await?)
        }
        .await;
        match result {
            Ok(1) => last_ok = Instant::now(),
            Ok(_) => {
                warn!(%key, "lease lost (expired or taken over)");
                lost.cancel();
                return;
            }
            Err(e) => {
                warn!(%key, error = %e, "lease refresh failed");
                // Without a successful refresh for a TTL, assume it is gone.
                if last_ok.elapsed() + every >= ttl {
                    lost.cancel();
                    return;
                }
            }
        }
    }
}
