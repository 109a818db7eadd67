//! Fleet-wide CA rate limits, counted in Redis so every worker sees the
//! same budget.
//!
//! Each limit is a sliding window kept as a sorted set of timestamps
//! (certmagic's `ratelimiter.go`, shared instead of per process). Taking a
//! slot and recording it is one Lua script, so two workers can never both
//! take the last slot. When the window is full, the job is deferred until
//! the oldest entry leaves it — not retried, not hammered. Defaults apply
//! Let's Encrypt's numbers to its own directories only (see
//! `CERTFLEET_RATE_ORDERS`, `CERTFLEET_RATE_FAILED_VALIDATIONS`,
//! `CERTFLEET_RATE_CERTS_PER_DOMAIN`, `CERTFLEET_RATE_DUPLICATES`).
//!
//! The two certificate limits count certificates issued, as the CA does:
//! checked before a new order, recorded once the certificate is
//! downloaded. Registered domains come from the Public Suffix List (the
//! `psl` crate: `www.shop.example.co.uk` counts against `example.co.uk`);
//! duplicates are keyed by the exact set of names, in any order. Renewals
//! that carry ARI's `replaces` are exempt from both, as Let's Encrypt
//! exempts them. Two workers may both pass the check for the last slot of
//! a window in the seconds before either records: the CA's own
//! `rateLimited` answer then defers the job as well.
//!
//! Every window's limit is also written to `rate-limits` (a hash of
//! kind → `COUNT/WINDOW_MS`), so `certfleet limits` can show each budget's
//! use from Redis alone.

use std::collections::BTreeSet;
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

/// The windows' kinds, as in the keys `rate:<kind>:<subject>`.
pub(crate) const ORDERS: &str = "orders";
pub(crate) const FAILED: &str = "failed";
pub(crate) const CERTS: &str = "certs";
pub(crate) const DUPLICATE: &str = "duplicate";

/// The limits a fleet keeps (`None`: off).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Limits {
    /// New orders per account.
    pub(crate) orders: Option<RateLimit>,
    /// Failed validations per hostname.
    pub(crate) failed_validations: Option<RateLimit>,
    /// New certificates per registered domain.
    pub(crate) certs_per_domain: Option<RateLimit>,
    /// New certificates per exact set of names.
    pub(crate) duplicates: Option<RateLimit>,
}

/// The registered domain a name counts against (Public Suffix List; a
/// name that is itself a public suffix, or unknown to the list, counts
/// against itself).
pub(crate) fn registered_domain(name: &str) -> String {
    let name = name.trim_start_matches("*.").to_ascii_lowercase();
    psl::domain_str(&name).unwrap_or(&name).to_string()
}

/// The subject of the duplicate-certificate window: the exact set of
/// names, order and case aside, hashed to a bounded key.
pub(crate) fn names_subject(domains: &[String]) -> String {
    let set: BTreeSet<String> = domains.iter().map(|d| d.to_ascii_lowercase()).collect();
    let joined = set.into_iter().collect::<Vec<_>>().join(",");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, joined.as_bytes());
    digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The limits of one account.
#[derive(Clone, Debug)]
pub(crate) struct RateLimiter {
    state: State,
    account: String,
    limits: Limits,
}

impl RateLimiter {
    pub(crate) fn new(state: State, account: String, limits: Limits) -> Self {
        Self {
            state,
            account,
            limits,
        }
    }

    /// Checks (and with `record`, takes) a slot of `kind` for `subject`;
    /// the wait until one frees when the window is full. `label` names what
    /// was counted (shown by `certfleet limits`).
    async fn window(
        &self,
        kind: &str,
        subject: &str,
        label: &str,
        limit: RateLimit,
        record: bool,
    ) -> Result<Option<Duration>, StateError> {
        let now = certfleet_common::now_ms();
        let window_ms = limit.window.as_millis() as u64;
        let mut c = self.state.conn().await?;
        let wait: i64 = redis::Script::new(SLIDING_WINDOW)
            .key(self.state.keys().rate(kind, subject))
            .arg(now)
            .arg(window_ms)
            .arg(limit.count)
            .arg(format!("{now}-{} {label}", uuid::Uuid::new_v4().simple()))
            .arg(if record { "1" } else { "0" })
            .invoke_async(&mut *c)
            .await?;
        Ok((wait >= 0).then(|| Duration::from_millis(wait as u64)))
    }

    /// Writes the limit of `kind` where `certfleet limits` reads it.
    async fn note_limit(&self, kind: &str, limit: RateLimit) -> Result<(), StateError> {
        let mut c = self.state.conn().await?;
        let _: () = redis::cmd("HSET")
            .arg(self.state.keys().rate_limits())
            .arg(kind)
            .arg(format!("{}/{}", limit.count, limit.window.as_millis()))
            .query_async(&mut *c)
            .await?;
        Ok(())
    }

    /// Records one event whatever the window holds.
    async fn record(
        &self,
        kind: &str,
        subject: &str,
        label: &str,
        limit: RateLimit,
    ) -> Result<(), StateError> {
        self.note_limit(kind, limit).await?;
        // A limit we can't reach: the slot is recorded even past the limit.
        let unlimited = RateLimit {
            count: u32::MAX,
            window: limit.window,
        };
        self.window(kind, subject, label, unlimited, true).await?;
        Ok(())
    }

    /// Before a new order: every hostname must be under its failed-validation
    /// limit; unless the order renews with ARI (`ari_renewal`), every
    /// registered domain under its certificate limit and the set of names
    /// under its duplicate limit; then an order slot is taken for the
    /// account.
    pub(crate) async fn before_new_order(
        &self,
        domains: &[String],
        ari_renewal: bool,
    ) -> Result<(), JobError> {
        if let Some(limit) = self.limits.failed_validations {
            for d in domains {
                if let Some(wait) = self.window(FAILED, d, d, limit, false).await? {
                    return Err(JobError::rate_limited(
                        format!("failed validations for {d}"),
                        wait,
                    ));
                }
            }
        }
        if !ari_renewal {
            if let Some(limit) = self.limits.certs_per_domain {
                let registered: BTreeSet<String> =
                    domains.iter().map(|d| registered_domain(d)).collect();
                for r in &registered {
                    if let Some(wait) = self.window(CERTS, r, r, limit, false).await? {
                        return Err(JobError::rate_limited(
                            format!("certificates per registered domain {r}"),
                            wait,
                        ));
                    }
                }
            }
            if let Some(limit) = self.limits.duplicates {
                let subject = names_subject(domains);
                let label = domains.join(",");
                if let Some(wait) = self
                    .window(DUPLICATE, &subject, &label, limit, false)
                    .await?
                {
                    return Err(JobError::rate_limited(
                        format!("duplicate certificates for {label}"),
                        wait,
                    ));
                }
            }
        }
        if let Some(limit) = self.limits.orders {
            self.note_limit(ORDERS, limit).await?;
            if let Some(wait) = self
                .window(ORDERS, &self.account, "new order", limit, true)
                .await?
            {
                return Err(JobError::rate_limited(
                    "new orders per account".into(),
                    wait,
                ));
            }
        }
        Ok(())
    }

    /// Counts an issued certificate against its registered domains and its
    /// set of names, unless it renewed with ARI (`replaced`).
    pub(crate) async fn issued(
        &self,
        domains: &[String],
        replaced: bool,
    ) -> Result<(), StateError> {
        if replaced {
            return Ok(());
        }
        if let Some(limit) = self.limits.certs_per_domain {
            let registered: BTreeSet<String> =
                domains.iter().map(|d| registered_domain(d)).collect();
            let label = domains.join(",");
            for r in &registered {
                self.record(CERTS, r, &label, limit).await?;
            }
        }
        if let Some(limit) = self.limits.duplicates {
            let label = domains.join(",");
            self.record(DUPLICATE, &names_subject(domains), &label, limit)
                .await?;
        }
        Ok(())
    }

    /// Records a failed validation of `hostname`.
    pub(crate) async fn failed_validation(&self, hostname: &str) -> Result<(), StateError> {
        if let Some(limit) = self.limits.failed_validations {
            self.record(FAILED, hostname, hostname, limit).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_domains_follow_the_public_suffix_list() {
        assert_eq!(registered_domain("www.example.com"), "example.com");
        assert_eq!(registered_domain("a.b.shop.example.co.uk"), "example.co.uk");
        assert_eq!(registered_domain("*.example.org"), "example.org");
        assert_eq!(registered_domain("Example.COM"), "example.com");
        // Private suffixes count: each github.io site is its own domain.
        assert_eq!(registered_domain("docs.alice.github.io"), "alice.github.io");
        assert_eq!(registered_domain("example.com"), "example.com");
    }

    #[test]
    fn duplicates_are_the_same_set_of_names_in_any_order_or_case() {
        let a = names_subject(&["www.example.com".into(), "example.com".into()]);
        let b = names_subject(&["EXAMPLE.com".into(), "www.example.com".into()]);
        let c = names_subject(&["example.com".into()]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 32);
    }
}
