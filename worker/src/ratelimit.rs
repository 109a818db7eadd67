//! Fleet-wide CA rate limits, counted in Redis so every worker sees the
//! same budget.
//!
//! Each limit is a sliding window kept as a sorted set of timestamps
//! (certmagic's `ratelimiter.go`, shared instead of per process). Taking a
//! slot and recording it is one Lua script, so two workers can never both
//! take the last slot. When the window is full, the job is deferred until
//! the oldest entry leaves it — not retried, not hammered. Defaults apply
//! Let's Encrypt's numbers to its own directories only (see
//! `CERTFLEET_RATE_ORDERS` and `CERTFLEET_RATE_FAILED_VALIDATIONS`).

use std::time::Duration;

use crate::config::RateLimit;
use certfleet_common::state::{State, StateError};
use deadpool_redis::redis;

use crate::error::JobError;

/// Returns -1 after recording a slot, or the milliseconds until one frees.
const SLIDING_WINDOW: &str = r#"
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) + window - now)
end
if ARGV[5] == '1' then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], window)
end
return -1
"#;

/// The limits of one account.
#[derive(Clone, Debug)]
pub(crate) struct RateLimiter {
    state: State,
    account: String,
    orders: Option<RateLimit>,
    failed_validations: Option<RateLimit>,
}

impl RateLimiter {
    pub(crate) fn new(
        state: State,
        account: String,
        orders: Option<RateLimit>,
        failed_validations: Option<RateLimit>,
    ) -> Self {
        Self {
            state,
            account,
            orders,
            failed_validations,
        }
    }

    async fn window(
        &self,
        key: String,
        limit: RateLimit,
        record: bool,
    ) -> Result<Option<Duration>, StateError> {
        let now = certfleet_common::now_ms();
        let mut c = self.state.conn().await?;
        let wait: i64 = redis::Script::new(SLIDING_WINDOW)
            .key(key)
            .arg(now)
            .arg(limit.window.as_millis() as u64)
            .arg(limit.count)
            .arg(format!("{now}-{}", uuid::Uuid::new_v4().simple()))
            .arg(if record { "1" } else { "0" })
            .invoke_async(&mut *c)
            .await?;
        Ok((wait >= 0).then(|| Duration::from_millis(wait as u64)))
    }

    /// Before a new order: every hostname must be under its failed-validation
    /// limit, then an order slot is taken for the account.
    pub(crate) async fn before_new_order(&self, domains: &[String]) -> Result<(), JobError> {
        if let Some(limit) = self.failed_validations {
            for d in domains {
                let key = self.state.keys().rate("failed", d);
                if let Some(wait) = self.window(key, limit, false).await? {
                    return Err(JobError::RateLimited {
                        what: format!("failed validations for {d}"),
                        wait,
                    });
                }
            }
        }
        if let Some(limit) = self.orders {
            let key = self.state.keys().rate("orders", &self.account);
            if let Some(wait) = self.window(key, limit, true).await? {
                return Err(JobError::RateLimited {
                    what: "new orders per account".into(),
                    wait,
                });
            }
        }
        Ok(())
    }

    /// Records a failed validation of `hostname`.
    pub(crate) async fn failed_validation(&self, hostname: &str) -> Result<(), StateError> {
        if let Some(limit) = self.failed_validations {
            let key = self.state.keys().rate("failed", hostname);
            // Record even past the limit: pass a limit we can't reach.
            let unlimited = RateLimit {
                count: u32::MAX,
                window: limit.window,
            };
            self.window(key, unlimited, true).await?;
        }
        Ok(())
    }
}
