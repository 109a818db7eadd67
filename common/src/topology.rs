//! The AMQP topology: every exchange, queue and header name, their
//! arguments, and the one function that declares them.
//!
//! ```text
//! certfleet.jobs (topic) ──job.<kind>.<challenge>──► certfleet.work (quorum)
//!      ▲                                                 │ nack past the delivery limit
//!      │ TTL expires (dead-lettered, at-least-once)      ▼
//! certfleet.retry.<delay> ◄── certfleet.retry     certfleet.dead-letter (fanout) ──► certfleet.dead
//!      (quorum, TTL)          (headers: delay)        ▲ jobs that failed for good
//!                                                     └── published by workers with reason headers
//! certfleet.events (topic) ──cert.<event>.<name>──► certfleet.watch.<id> (one per webserver)
//! ```
//!
//! Both binaries call the declare functions; declaring is idempotent as
//! long as the arguments never change, so they are constants here.

use std::time::Duration;

use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

/// Topic exchange for jobs.
pub const JOBS_EXCHANGE: &str = "certfleet.jobs";
/// Default work queue (durable, quorum).
pub const WORK_QUEUE: &str = "certfleet.work";
/// Default binding of the work queue: every job.
pub const WORK_BINDING: &str = "job.#";
/// Headers exchange in front of the delay queues.
pub const RETRY_EXCHANGE: &str = "certfleet.retry";
/// Fanout exchange in front of the dead-letter queue.
pub const DEAD_EXCHANGE: &str = "certfleet.dead-letter";
/// Where jobs that cannot be done are parked, with reason headers.
pub const DEAD_QUEUE: &str = "certfleet.dead";
/// Topic exchange for events (JSON).
pub const EVENTS_EXCHANGE: &str = "certfleet.events";
/// Prefix of each webserver's durable event queue.
pub const WATCH_QUEUE_PREFIX: &str = "certfleet.watch.";
/// Topic exchange for webservers' reports (`server.<kind>.<name>`, see
/// [`crate::report`]).
pub const REPORTS_EXCHANGE: &str = "certfleet.reports";
/// The workers' queue of reports (quorum, bound `server.#`).
pub const REPORTS_QUEUE: &str = "certfleet.reports";

/// Header on a retried job: which delay queue it goes through; the retry
/// exchange (headers) routes on it. It must not start with `x-`: RabbitMQ's
/// headers exchange ignores such headers when matching, so a binding on
/// one would match every message (every retry was copied into all six
/// delay queues, and each copy came back as another try of the job).
pub const HDR_DELAY: &str = "certfleet-delay";
/// The delay header of releases before that was found: bindings on it are
/// removed when the topology is declared.
const LEGACY_HDR_DELAY: &str = "x-certfleet-delay";
/// Header: do not start this job before this time (Unix ms). A job that comes
/// back from a delay queue early (its wait was longer than the longest delay)
/// is delayed again without counting an attempt.
pub const HDR_NOT_BEFORE: &str = "x-certfleet-not-before";
/// Header on a dead job: why it is there.
pub const HDR_REASON: &str = "x-certfleet-reason";
/// Header on a dead job: `undecodable`, `permanent`, `exhausted`, `poison`.
pub const HDR_ERROR_KIND: &str = "x-certfleet-error-kind";
/// Header on a dead job: when it was parked (Unix ms).
pub const HDR_FAILED_AT: &str = "x-certfleet-failed-at";
/// Header on a dead job: the routing key to replay it with.
pub const HDR_ROUTING_KEY: &str = "x-certfleet-routing-key";
/// Header on a dead job: the job id, when the body could be decoded.
pub const HDR_JOB_ID: &str = "x-certfleet-job-id";

/// Redeliveries before RabbitMQ gives up on a message that keeps killing
/// its consumer (a poison message) and dead-letters it. Generous, because a
/// worker restart or a broker failover also counts as a delivery.
pub const DELIVERY_LIMIT: i64 = 20;

/// Delivery limit of the dead-letter queue: effectively none (a parked job
/// must never be dropped), but explicit, because RabbitMQ 4 gives quorum
/// queues a default of 20.
pub const DEAD_DELIVERY_LIMIT: i64 = 1_000_000_000;

/// Retry delays, in order: the nth retry of a job waits `RETRY_DELAYS[n-1]`
/// (the last one repeats). Transient CA or network trouble usually clears
/// within seconds (10 s); a CA or service outage takes minutes (1 m, 5 m);
/// a longer incident should not be hammered (30 m, 2 h). The longest is kept
/// well below a certificate's renewal margin, and 6 h covers Let's Encrypt's
/// longest `Retry-After` windows for failed-validation limits.
pub const RETRY_DELAYS: [(&str, Duration); 6] = [
    ("10s", Duration::from_secs(10)),
    ("1m", Duration::from_secs(60)),
    ("5m", Duration::from_secs(300)),
    ("30m", Duration::from_secs(1800)),
    ("2h", Duration::from_secs(7200)),
    ("6h", Duration::from_secs(21_600)),
];

/// Longest server (watch queue) id: `certfleet.watch.<id>` stays far below
/// AMQP's 255.
pub const MAX_QUEUE_ID_LEN: usize = 100;

/// Checks a server id (`watch --queue`, `server add`, a report's server):
/// `a-z 0-9 . _ -`, 1 to [`MAX_QUEUE_ID_LEN`] characters. Returns why it is
/// refused.
///
/// # Errors
/// The reason, for the caller's message.
pub fn check_queue_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("empty; give a stable id for this server, e.g. its hostname".into());
    }
    if id.len() > MAX_QUEUE_ID_LEN {
        return Err(format!("longer than {MAX_QUEUE_ID_LEN} characters"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!("contains {c:?}; use a-z, 0-9, '.', '_' and '-'"));
    }
    Ok(())
}

/// The delay before retry number `retry` (1-based).
pub fn backoff(retry: u32) -> Duration {
    let i = (retry.max(1) as usize - 1).min(RETRY_DELAYS.len() - 1);
    RETRY_DELAYS[i].1
}

/// The delay queue to wait `wait` in: the shortest one at least as long, or
/// the longest (the job then comes back early and is delayed again, see
/// [`HDR_NOT_BEFORE`]).
pub fn delay_tier(wait: Duration) -> (&'static str, Duration) {
    RETRY_DELAYS
        .iter()
        .copied()
        .find(|(_, d)| *d >= wait)
        .unwrap_or(RETRY_DELAYS[RETRY_DELAYS.len() - 1])
}

/// The longest a job is held back, however long a CA's `Retry-After`, a
/// fleet rate limit or an [`HDR_NOT_BEFORE`] header asks: such a value comes
/// from the network and may be absurd (`Retry-After: 18446744073709551615`).
/// A week is Let's Encrypt's longest rate-limit window (duplicate
/// certificates, 5 per 7 days); after it, trying again costs one request,
/// and a CA that still refuses sends a fresh `Retry-After`.
pub const MAX_DELAY: Duration = Duration::from_secs(7 * 86_400);

/// Name of the delay queue with the given label.
pub fn retry_queue(label: &str) -> String {
    format!("{RETRY_EXCHANGE}.{label}")
}

/// Name of a webserver's event queue.
pub fn watch_queue(id: &str) -> String {
    format!("{WATCH_QUEUE_PREFIX}{id}")
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

/// Declares the job exchanges, the delay queues and the dead-letter queue
/// (everything but a work queue). Called by the producer before publishing
/// and by every worker.
///
/// # Errors
/// Any broker error (including a queue that exists with other arguments).
pub async fn declare_jobs(channel: &Channel) -> lapin::Result<()> {
    channel
        .exchange_declare(
            JOBS_EXCHANGE.into(),
            ExchangeKind::Topic,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            RETRY_EXCHANGE.into(),
            ExchangeKind::Headers,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            DEAD_EXCHANGE.into(),
            ExchangeKind::Fanout,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            DEAD_QUEUE.into(),
            durable(),
            table(&[
                ("x-queue-type", text("quorum")),
                // `certfleet dlq list` reads and returns every message, which
                // counts as a delivery; RabbitMQ 4 quorum queues default to a
                // limit of 20 and would drop parked jobs after 20 listings.
                (
                    "x-delivery-limit",
                    AMQPValue::LongLongInt(DEAD_DELIVERY_LIMIT),
                ),
            ]),
        )
        .await?;
    channel
        .queue_bind(
            DEAD_QUEUE.into(),
            DEAD_EXCHANGE.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for (label, delay) in RETRY_DELAYS {
        let name = retry_queue(label);
        let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        channel
            .queue_declare(
                name.as_str().into(),
                durable(),
                table(&[
                    ("x-queue-type", text("quorum")),
                    ("x-message-ttl", AMQPValue::LongLongInt(ttl)),
                    ("x-dead-letter-exchange", text(JOBS_EXCHANGE)),
                    ("x-dead-letter-strategy", text("at-least-once")),
                    ("x-overflow", text("reject-publish")),
                ]),
            )
            .await?;
        // A binding on the legacy header matches everything (see
        // HDR_DELAY); unbinding one that does not exist is a no-op.
        channel
            .queue_unbind(
                name.as_str().into(),
                RETRY_EXCHANGE.into(),
                "".into(),
                table(&[("x-match", text("all")), (LEGACY_HDR_DELAY, text(label))]),
            )
            .await?;
        channel
            .queue_bind(
                name.as_str().into(),
                RETRY_EXCHANGE.into(),
                "".into(),
                QueueBindOptions::default(),
                table(&[("x-match", text("all")), (HDR_DELAY, text(label))]),
            )
            .await?;
    }
    Ok(())
}

/// Declares a work queue and binds it to the job patterns it serves.
///
/// # Errors
/// Any broker error.
pub async fn declare_work_queue(
    channel: &Channel,
    queue: &str,
    bindings: &[String],
) -> lapin::Result<()> {
    declare_jobs(channel).await?;
    channel
        .queue_declare(
            queue.into(),
            durable(),
            table(&[
                ("x-queue-type", text("quorum")),
                ("x-delivery-limit", AMQPValue::LongLongInt(DELIVERY_LIMIT)),
                ("x-dead-letter-exchange", text(DEAD_EXCHANGE)),
                ("x-dead-letter-strategy", text("at-least-once")),
                ("x-overflow", text("reject-publish")),
            ]),
        )
        .await?;
    for pattern in bindings {
        channel
            .queue_bind(
                queue.into(),
                JOBS_EXCHANGE.into(),
                pattern.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Declares the events exchange.
///
/// # Errors
/// Any broker error.
pub async fn declare_events(channel: &Channel) -> lapin::Result<()> {
    declare_topic(channel, EVENTS_EXCHANGE).await
}

/// Declares one of the fleet's durable topic exchanges.
async fn declare_topic(channel: &Channel, exchange: &str) -> lapin::Result<()> {
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            durable_exchange(),
            FieldTable::default(),
        )
        .await
}

/// Makes sure the events exchange exists, for a client that may lack the
/// right to declare it (a webserver's own broker user, `certfleet server
/// add`): a passive declaration first, which needs no permission; only if
/// the exchange is missing (a fleet no worker has started yet), the real
/// declaration. Each on a channel of its own, since a refused declaration
/// closes its channel.
///
/// # Errors
/// Broker errors, or the declaration refused.
pub async fn ensure_events(conn: &lapin::Connection) -> lapin::Result<()> {
    ensure_exchange(conn, EVENTS_EXCHANGE).await
}

/// Like [`ensure_events`], for any of the fleet's topic exchanges
/// (`watch` publishes to [`REPORTS_EXCHANGE`]).
///
/// # Errors
/// Broker errors, or the declaration refused.
pub async fn ensure_exchange(conn: &lapin::Connection, exchange: &str) -> lapin::Result<()> {
    let passive = conn.create_channel().await?;
    let found = passive
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive: true,
                ..durable_exchange()
            },
            FieldTable::default(),
        )
        .await;
    let _ = passive.close(200, "ok".into()).await;
    if found.is_ok() {
        return Ok(());
    }
    let active = conn.create_channel().await?;
    let declared = declare_topic(&active, exchange).await;
    let _ = active.close(200, "ok".into()).await;
    declared
}

/// Declares the reports exchange, the workers' reports queue (quorum) and
/// its binding `server.#`.
///
/// # Errors
/// Any broker error.
pub async fn declare_reports(channel: &Channel) -> lapin::Result<()> {
    declare_topic(channel, REPORTS_EXCHANGE).await?;
    channel
        .queue_declare(
            REPORTS_QUEUE.into(),
            durable(),
            table(&[("x-queue-type", text("quorum"))]),
        )
        .await?;
    channel
        .queue_bind(
            REPORTS_QUEUE.into(),
            REPORTS_EXCHANGE.into(),
            "server.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// Follows events matching `patterns` on a temporary queue of this channel
/// (server-named, exclusive, deleted with the channel's connection),
/// without acknowledgements. The queue is bound before this returns, so no
/// event published afterwards is missed. For a caller that waits while it
/// runs (`issue --wait`, tests, the benchmark); a webserver that must not
/// miss events while it is down uses [`declare_watch_queue`].
///
/// # Errors
/// Any broker error.
pub async fn subscribe_events(
    channel: &Channel,
    patterns: &[String],
) -> lapin::Result<lapin::Consumer> {
    declare_events(channel).await?;
    let bindings: Vec<(&str, &str)> = patterns
        .iter()
        .map(|p| (EVENTS_EXCHANGE, p.as_str()))
        .collect();
    subscribe(channel, &bindings).await
}

/// Like [`subscribe_events`], over `(exchange, pattern)` bindings of any of
/// the fleet's exchanges (the dashboard follows events and server
/// reports); the exchanges must exist.
///
/// # Errors
/// Any broker error.
pub async fn subscribe(
    channel: &Channel,
    bindings: &[(&str, &str)],
) -> lapin::Result<lapin::Consumer> {
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    for (exchange, pattern) in bindings {
        channel
            .queue_bind(
                queue.name().clone(),
                (*exchange).into(),
                (*pattern).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                exclusive: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

/// Declares a webserver's durable event queue and binds its patterns.
///
/// # Errors
/// Any broker error.
pub async fn declare_watch_queue(
    channel: &Channel,
    queue: &str,
    patterns: &[String],
) -> lapin::Result<()> {
    channel
        .queue_declare(
            queue.into(),
            durable(),
            table(&[("x-queue-type", text("quorum"))]),
        )
        .await?;
    for pattern in patterns {
        channel
            .queue_bind(
                queue.into(),
                EVENTS_EXCHANGE.into(),
                pattern.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Reads a string header.
pub fn header_str(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    let value = headers?.inner().get(name)?;
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// Reads an integer header.
pub fn header_i64(headers: Option<&FieldTable>, name: &str) -> Option<i64> {
    match headers?.inner().get(name)? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        _ => None,
    }
}

/// Builds a header table from string and integer values.
pub fn headers(strings: &[(&str, &str)], ints: &[(&str, i64)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in strings {
        t.insert(ShortString::from(*k), text(v));
    }
    for (k, v) in ints {
        t.insert(ShortString::from(*k), AMQPValue::LongLongInt(*v));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_schedule() {
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(2), Duration::from_secs(60));
        assert_eq!(backoff(100), Duration::from_secs(21_600));
    }

    #[test]
    fn tiers() {
        assert_eq!(delay_tier(Duration::from_secs(3)).0, "10s");
        assert_eq!(delay_tier(Duration::from_secs(61)).0, "5m");
        assert_eq!(delay_tier(Duration::from_secs(86_400)).0, "6h");
    }

    #[test]
    fn names() {
        assert_eq!(retry_queue("10s"), "certfleet.retry.10s");
        assert_eq!(watch_queue("web-1"), "certfleet.watch.web-1");
    }

    #[test]
    fn header_round_trip() {
        let h = headers(&[(HDR_REASON, "bad")], &[(HDR_NOT_BEFORE, 42)]);
        assert_eq!(header_str(Some(&h), HDR_REASON).as_deref(), Some("bad"));
        assert_eq!(header_i64(Some(&h), HDR_NOT_BEFORE), Some(42));
        assert_eq!(header_i64(Some(&h), HDR_REASON), None);
    }
}
