//! The dead-letter queue (`certfleet.dead`): list, show, replay, purge.
//!
//! AMQP 0-9-1 has no way to peek at a queue, so reading is done by taking
//! the messages with `basic.get` *without* acknowledging them, and giving
//! them all back at the end with one `basic.nack(multiple, requeue)`, which
//! keeps their order. If anything goes wrong in between (or the process
//! dies), the broker requeues every unacknowledged message when the channel
//! closes: reading never loses a message. While a listing runs, the
//! messages are invisible to other readers of the queue.
//!
//! A replayed job is published again to `certfleet.jobs` with its routing
//! key and its attempt reset to 1 (same job id, so `certfleet status` keeps
//! following it), and its dead copy is acknowledged only once the broker
//! confirmed the new one. A body that does not decode cannot be replayed:
//! it stays where it is until it is purged.

use std::collections::HashSet;

use certfleet_common::amqp::{BrokerError, Outgoing, Publisher};
use certfleet_common::error::chain;
use certfleet_common::job::CodecError;
use certfleet_common::state::{JobState, JobStatus, State};
use certfleet_common::topology::{
    self, DEAD_QUEUE, HDR_ERROR_KIND, HDR_FAILED_AT, HDR_JOB_ID, HDR_REASON, HDR_ROUTING_KEY,
    header_i64, header_str,
};
use certfleet_common::{CertName, Config, Envelope};
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueuePurgeOptions};
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::cli::{close_broker, connect_broker, out};

/// Header RabbitMQ itself puts on a message it dead-lettered (for example a
/// poison message past the delivery limit): why.
const HDR_FIRST_DEATH_REASON: &str = "x-first-death-reason";

/// Why a `dlq` command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DlqError {
    /// `purge` without `--yes`.
    #[error("purge deletes every message in {DEAD_QUEUE} for good; run it again with --yes")]
    NeedsYes,
    /// A job id that is not a UUID.
    #[error("{0:?} is not a job id (a UUID)")]
    BadJobId(String),
    /// The broker.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// An operation on the dead-letter queue failed.
    #[error("cannot {op} {DEAD_QUEUE}")]
    Queue {
        /// What was being done.
        op: &'static str,
        /// Cause.
        #[source]
        source: lapin::Error,
    },
    /// The job is not in the queue.
    #[error("no job {0} in {DEAD_QUEUE}")]
    NotFound(String),
    /// Some selected jobs were not replayed.
    #[error("{failed} of {total} selected jobs were not replayed (see above)")]
    Incomplete {
        /// Not replayed.
        failed: usize,
        /// Selected.
        total: usize,
    },
}

impl DlqError {
    /// Whether this is bad usage (exit 64).
    pub fn is_usage(&self) -> bool {
        matches!(self, DlqError::NeedsYes | DlqError::BadJobId(_))
    }
}

fn queue_error(op: &'static str) -> impl FnOnce(lapin::Error) -> DlqError {
    move |source| DlqError::Queue { op, source }
}

/// One message of the dead-letter queue, as read.
#[derive(Debug)]
pub struct DeadMessage {
    /// Delivery tag on the reading channel.
    pub tag: u64,
    /// The job, if the body decodes.
    pub envelope: Result<Envelope, CodecError>,
    /// Job id: the header, else the decoded envelope's, else the message id.
    pub job_id: Option<String>,
    /// Why it is here.
    pub reason: Option<String>,
    /// `undecodable`, `permanent`, `exhausted`, `poison`, or RabbitMQ's own
    /// dead-letter reason.
    pub error_kind: Option<String>,
    /// When it was parked, Unix ms.
    pub failed_at: Option<i64>,
    /// Routing key to replay it with, from the header.
    pub routing_key: Option<String>,
    /// Message properties (for `show`).
    pub properties: BasicProperties,
    /// Body size.
    pub body_len: usize,
    /// Whether the broker delivered it before.
    pub redelivered: bool,
}

impl DeadMessage {
    fn from_delivery(d: &lapin::message::Delivery) -> Self {
        let headers = d.properties.headers().as_ref();
        let envelope = Envelope::decode(&d.data);
        let message_id = d
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str().to_string());
        let job_id = header_str(headers, HDR_JOB_ID)
            .or_else(|| envelope.as_ref().ok().map(|e| e.job_id.to_string()))
            .or(message_id);
        let failed_at = header_i64(headers, HDR_FAILED_AT)
            .or_else(|| header_str(headers, HDR_FAILED_AT).and_then(|s| s.trim().parse().ok()));
        Self {
            tag: d.delivery_tag,
            job_id,
            reason: header_str(headers, HDR_REASON),
            error_kind: header_str(headers, HDR_ERROR_KIND)
                .or_else(|| header_str(headers, HDR_FIRST_DEATH_REASON)),
            failed_at,
            routing_key: header_str(headers, HDR_ROUTING_KEY),
            envelope,
            properties: d.properties.clone(),
            body_len: d.data.len(),
            redelivered: d.redelivered,
        }
    }

    /// The certificate name, if the body decodes.
    pub fn name(&self) -> Option<&CertName> {
        self.envelope.as_ref().ok().map(|e| &e.job.name)
    }

    /// The routing key to replay with: the header, else the envelope's.
    pub fn replay_routing_key(&self) -> Option<String> {
        self.routing_key
            .clone()
            .filter(|k| k.starts_with("job."))
            .or_else(|| self.envelope.as_ref().ok().map(Envelope::routing_key))
    }

    fn failed_at_text(&self) -> String {
        self.failed_at
            .and_then(|ms| {
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
            })
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_else(|| "-".into())
    }
}

/// Connects and opens a reading channel, declaring the job topology (which
/// includes the dead-letter queue) so that a fresh broker works too.
async fn open(config: &Config) -> Result<(lapin::Connection, Channel), DlqError> {
    let conn = connect_broker(config).await?;
    let channel = conn.create_channel().await.map_err(BrokerError::from)?;
    topology::declare_jobs(&channel)
        .await
        .map_err(queue_error("declare"))?;
    Ok((conn, channel))
}

/// Takes every message with `basic.get`, unacknowledged, until the queue
/// is empty.
///
/// Always the whole queue: a quorum queue puts messages given back at its
/// end, so giving back all of them, in order, restores the original order,
/// where giving back only the first few would move them behind the rest.
async fn fetch(channel: &Channel) -> Result<Vec<DeadMessage>, DlqError> {
    let mut messages = Vec::new();
    loop {
        let got = channel
            .basic_get(DEAD_QUEUE.into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(queue_error("read"))?;
        let Some(got) = got else {
            break;
        };
        messages.push(DeadMessage::from_delivery(&got.delivery));
        if got.message_count == 0 {
            break;
        }
    }
    Ok(messages)
}

/// Gives back every message still unacknowledged, up to `last_tag`, in one
/// `basic.nack(multiple, requeue)`.
async fn requeue(channel: &Channel, last_tag: Option<u64>) -> Result<(), DlqError> {
    if let Some(tag) = last_tag {
        channel
            .basic_nack(
                tag,
                BasicNackOptions {
                    multiple: true,
                    requeue: true,
                },
            )
            .await
            .map_err(queue_error("give back the messages to"))?;
    }
    Ok(())
}

/// Reads messages, runs `f` on them, then requeues them whatever `f`
/// returned and closes the connection.
async fn with_messages<T>(
    config: &Config,
    f: impl FnOnce(&[DeadMessage]) -> T,
) -> Result<T, DlqError> {
    let (conn, channel) = open(config).await?;
    let result = async {
        let messages = fetch(&channel).await?;
        let value = f(&messages);
        requeue(&channel, messages.last().map(|m| m.tag)).await?;
        Ok(value)
    }
    .await;
    // Closing the channel also requeues anything still unacknowledged.
    certfleet_common::amqp::close_channel(&channel, 200, "done").await;
    close_broker(&conn).await;
    result
}

fn text(value: Option<&str>) -> &str {
    value.filter(|v| !v.is_empty()).unwrap_or("-")
}

/// `certfleet dlq list [--limit N]`: every message is read (and given
/// back), the first `limit` are shown.
///
/// # Errors
/// Broker errors.
pub async fn list(config: &Config, limit: Option<usize>) -> Result<(), DlqError> {
    with_messages(config, |all| {
        let messages = &all[..limit.unwrap_or(all.len()).min(all.len())];
        if all.is_empty() {
            eprintln!("{DEAD_QUEUE} is empty");
            return;
        }
        out(format_args!(
            "{:<36}  {:<30}  {:<12}  {:<24}  REASON",
            "JOB ID", "NAME", "KIND", "FAILED AT"
        ));
        for m in messages {
            let name = match &m.envelope {
                Ok(e) => e.job.name.to_string(),
                Err(_) => "(undecodable)".into(),
            };
            out(format_args!(
                "{:<36}  {:<30}  {:<12}  {:<24}  {}",
                text(m.job_id.as_deref()),
                name,
                text(m.error_kind.as_deref()),
                m.failed_at_text(),
                text(m.reason.as_deref()).replace('\n', " ")
            ));
        }
        if messages.len() < all.len() {
            eprintln!("{} of {} dead messages shown", messages.len(), all.len());
        } else {
            eprintln!("{} dead messages", all.len());
        }
    })
    .await
}

fn header_value(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        other => format!("{other:?}"),
    }
}

fn print_full(m: &DeadMessage) {
    out(format_args!("job id:       {}", text(m.job_id.as_deref())));
    out(format_args!(
        "error kind:   {}",
        text(m.error_kind.as_deref())
    ));
    out(format_args!("reason:       {}", text(m.reason.as_deref())));
    out(format_args!("failed at:    {}", m.failed_at_text()));
    out(format_args!(
        "routing key:  {}",
        text(m.replay_routing_key().as_deref())
    ));
    match &m.envelope {
        Ok(e) => {
            out(format_args!("name:         {}", e.job.name));
            out(format_args!("kind:         {}", e.kind.as_str()));
            let domains = if e.job.domains.is_empty() {
                "(those of the stored certificate)".to_string()
            } else {
                e.job.domains.join(", ")
            };
            out(format_args!("domains:      {domains}"));
            out(format_args!("key type:     {}", e.job.key_type));
            out(format_args!("challenge:    {}", e.job.challenge));
            out(format_args!("job reason:   {}", e.job.reason));
            out(format_args!("attempt:      {}", e.attempt));
            let created =
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(e.created_at_ms) * 1_000_000)
                    .ok()
                    .and_then(|t| t.format(&Rfc3339).ok())
                    .unwrap_or_else(|| e.created_at_ms.to_string());
            out(format_args!("created at:   {created}"));
        }
        Err(e) => out(format_args!("body:         {e}; it cannot be replayed")),
    }
    out(format_args!("body size:    {} bytes", m.body_len));
    out(format_args!("redelivered:  {}", m.redelivered));
    if let Some(headers) = m.properties.headers() {
        let mut keys: Vec<_> = headers.inner().iter().collect();
        keys.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        for (k, v) in keys {
            out(format_args!(
                "header:       {} = {}",
                k.as_str(),
                header_value(v)
            ));
        }
    }
}

/// `certfleet dlq show JOB_ID`.
///
/// # Errors
/// Not in the queue, or broker errors.
pub async fn show(config: &Config, job_id: &str) -> Result<(), DlqError> {
    let wanted = job_id.trim().to_ascii_lowercase();
    let matches = |m: &DeadMessage| {
        m.job_id.as_deref().map(str::to_ascii_lowercase).as_deref() == Some(wanted.as_str())
    };
    let found = with_messages(config, |messages| {
        // The same job can be parked more than once (replayed, failed again).
        let mut found = 0;
        for m in messages.iter().filter(|m| matches(m)) {
            if found > 0 {
                out("");
            }
            print_full(m);
            found += 1;
        }
        found
    })
    .await?;
    if found > 0 {
        Ok(())
    } else {
        Err(DlqError::NotFound(job_id.to_string()))
    }
}

/// `certfleet dlq replay (JOB_ID...|--all)`.
///
/// # Errors
/// A malformed id (before connecting), broker errors, or selected jobs
/// that could not be replayed.
pub async fn replay(config: &Config, job_ids: &[String], all: bool) -> Result<(), DlqError> {
    let mut wanted: HashSet<String> = HashSet::new();
    for id in job_ids {
        let uuid = Uuid::parse_str(id.trim()).map_err(|_| DlqError::BadJobId(id.clone()))?;
        wanted.insert(uuid.to_string());
    }
    let (conn, channel) = open(config).await?;
    let result = async {
        let publisher = Publisher::new(&conn).await?;
        let messages = fetch(&channel).await?;
        let selected: Vec<&DeadMessage> = messages
            .iter()
            .filter(|m| all || m.job_id.as_ref().is_some_and(|id| wanted.contains(id)))
            .collect();
        let mut failed = 0usize;
        let mut replayable: Vec<(&DeadMessage, Envelope, String)> = Vec::new();
        for m in &selected {
            match (&m.envelope, m.replay_routing_key()) {
                (Ok(e), Some(key)) => {
                    let mut e = e.clone();
                    e.attempt = 1;
                    replayable.push((m, e, key));
                }
                (Err(err), _) => {
                    // With --all, "everything that can be replayed".
                    if !all {
                        failed += 1;
                    }
                    eprintln!("{}: undecodable ({err}); it cannot be replayed (see certfleet dlq show, purge)", text(m.job_id.as_deref()));
                }
                (Ok(_), None) => failed += 1,
            }
        }
        let bodies: Vec<Vec<u8>> = replayable
            .iter()
            .map(|(_, e, _)| e.encode())
            .collect::<Result<_, _>>()
            .map_err(|e| BrokerError::Channel(lapin::Error::from(std::io::Error::other(e))))?;
        let ids: Vec<String> = replayable.iter().map(|(_, e, _)| e.job_id.to_string()).collect();
        let msgs: Vec<Outgoing<'_>> = replayable
            .iter()
            .zip(&bodies)
            .zip(&ids)
            .map(|(((_, _, key), body), id)| Outgoing::job(key, body, Some(id)))
            .collect();
        let results = if msgs.is_empty() {
            Vec::new()
        } else {
            publisher.publish_many(&msgs).await?
        };
        let mut acked: HashSet<u64> = HashSet::new();
        let mut replayed: Vec<&Envelope> = Vec::new();
        for ((m, e, key), result) in replayable.iter().zip(results) {
            match result {
                Ok(()) => {
                    channel
                        .basic_ack(m.tag, BasicAckOptions { multiple: false })
                        .await
                        .map_err(queue_error("acknowledge a replayed message in"))?;
                    acked.insert(m.tag);
                    replayed.push(e);
                    out(format_args!("{} {} replayed ({key})", e.job_id, e.job.name));
                }
                Err(err) => {
                    failed += 1;
                    eprintln!("{} {}: not replayed: {}", e.job_id, e.job.name, chain(&err));
                }
            }
        }
        let last_unacked = messages.iter().rev().find(|m| !acked.contains(&m.tag)).map(|m| m.tag);
        requeue(&channel, last_unacked).await?;
        record_replayed(config, &replayed).await;
        let missing: Vec<&String> = {
            let seen: HashSet<&str> = messages.iter().filter_map(|m| m.job_id.as_deref()).collect();
            wanted.iter().filter(|id| !seen.contains(id.as_str())).collect()
        };
        for id in &missing {
            eprintln!("{id}: not in {DEAD_QUEUE}");
        }
        let total = if all { replayable.len() } else { wanted.len() };
        failed += missing.len();
        if all && selected.is_empty() {
            eprintln!("{DEAD_QUEUE} is empty");
        }
        if failed > 0 {
            return Err(DlqError::Incomplete { failed, total });
        }
        Ok(())
    }
    .await;
    certfleet_common::amqp::close_channel(&channel, 200, "done").await;
    close_broker(&conn).await;
    result
}

/// Marks replayed jobs queued again (best effort).
async fn record_replayed(config: &Config, envelopes: &[&Envelope]) {
    if envelopes.is_empty() {
        return;
    }
    let state = match State::from_config(config, 4) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %chain(&e), "no status records (redis)");
            return;
        }
    };
    for e in envelopes {
        let status = JobStatus::of(e, JobState::Queued, "replayed from the dead-letter queue");
        if let Err(err) = state.set_status(&status).await {
            tracing::warn!(error = %chain(&err), "replayed, but the status records could not be written (redis)");
            return;
        }
    }
}

/// `certfleet dlq purge --yes`.
///
/// # Errors
/// Without `--yes` (usage), or broker errors.
pub async fn purge(config: &Config, yes: bool) -> Result<(), DlqError> {
    if !yes {
        return Err(DlqError::NeedsYes);
    }
    let (conn, channel) = open(config).await?;
    let result = channel
        .queue_purge(DEAD_QUEUE.into(), QueuePurgeOptions::default())
        .await
        .map_err(queue_error("purge"));
    close_broker(&conn).await;
    let n = result?;
    out(format_args!("purged {n} messages from {DEAD_QUEUE}"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use certfleet_common::{ChallengeType, Job, JobKind, KeyType};
    use lapin::types::FieldTable;

    /// Headers of a dead message, for tests.
    fn dead_headers(job_id: Option<&str>) -> FieldTable {
        let mut strings = vec![
            (HDR_ERROR_KIND, "permanent"),
            (HDR_REASON, "urn:ietf:params:acme:error:caa"),
            (HDR_ROUTING_KEY, "job.issue.http-01"),
            (HDR_FAILED_AT, "1764000000000"),
        ];
        if let Some(id) = job_id {
            strings.push((HDR_JOB_ID, id));
        }
        topology::headers(&strings, &[])
    }

    fn delivery(body: Vec<u8>, headers: FieldTable) -> lapin::message::Delivery {
        let mut d = lapin::message::Delivery::mock(7, "".into(), "".into(), false, body);
        d.properties = BasicProperties::default().with_headers(headers);
        d
    }

    fn envelope() -> Envelope {
        let mut e = Envelope::new(
            JobKind::Renew,
            Job {
                name: CertName::parse("www.example.com").expect("valid"),
                domains: vec![],
                key_type: KeyType::default(),
                challenge: ChallengeType::Http01,
                reason: "due".into(),
            },
            1_764_000_000_000,
        );
        e.attempt = 6;
        e
    }

    #[test]
    fn reads_a_decodable_message() -> Result<(), CodecError> {
        let e = envelope();
        let m = DeadMessage::from_delivery(&delivery(e.encode()?, dead_headers(None)));
        assert_eq!(m.job_id, Some(e.job_id.to_string()));
        assert_eq!(m.name().map(CertName::as_str), Some("www.example.com"));
        assert_eq!(m.error_kind.as_deref(), Some("permanent"));
        assert_eq!(m.failed_at, Some(1_764_000_000_000));
        assert_eq!(m.failed_at_text(), "2025-11-24T16:00:00Z");
        // The header wins over the envelope (a worker pool may route differently).
        assert_eq!(m.replay_routing_key().as_deref(), Some("job.issue.http-01"));
        Ok(())
    }

    #[test]
    fn reads_garbage_without_losing_its_id() {
        let m = DeadMessage::from_delivery(&delivery(
            b"\xffgarbage".to_vec(),
            dead_headers(Some("abc")),
        ));
        assert!(m.envelope.is_err());
        assert_eq!(m.job_id.as_deref(), Some("abc"));
        assert_eq!(m.name(), None);
        // A routing key that is not a job key is not used for replay.
        let m = DeadMessage::from_delivery(&delivery(b"".to_vec(), FieldTable::default()));
        assert_eq!(m.replay_routing_key(), None);
        assert_eq!(m.failed_at_text(), "-");
    }

    #[test]
    fn routing_key_falls_back_to_the_envelope() -> Result<(), CodecError> {
        let e = envelope();
        let m = DeadMessage::from_delivery(&delivery(e.encode()?, FieldTable::default()));
        assert_eq!(m.replay_routing_key().as_deref(), Some("job.renew.http-01"));
        Ok(())
    }

    #[test]
    fn usage_errors() {
        assert!(DlqError::NeedsYes.is_usage());
        assert!(DlqError::BadJobId("x".into()).is_usage());
        assert!(!DlqError::NotFound("x".into()).is_usage());
    }
}
