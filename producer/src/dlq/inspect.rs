//! `certfleet dlq list` and `certfleet dlq show`: the dead jobs, read and
//! given back (see `queue`), as a table or one in full.

use certfleet_common::Config;
use certfleet_common::topology::DEAD_QUEUE;
use lapin::types::AMQPValue;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::error::DlqError;
use super::message::{DeadMessage, text};
use super::queue::with_messages;
use crate::output::out;

/// `certfleet dlq list [--limit N] [--json]`: every message is read (and
/// given back), the first `limit` are shown: a table, or a JSON array of
/// objects (`job_id`, `name`, `kind`, `error_kind`, `failed_at`, `reason`,
/// `routing_key`; `null` where unknown) on one line.
///
/// # Errors
/// Broker errors.
pub(crate) async fn list(
    config: &Config,
    limit: Option<usize>,
    json: bool,
) -> Result<(), DlqError> {
    with_messages(config, |all| {
        let messages = &all[..limit.unwrap_or(all.len()).min(all.len())];
        if json {
            let rows: Vec<serde_json::Value> = messages.iter().map(DeadMessage::summary).collect();
            out(serde_json::Value::Array(rows).to_string());
            return;
        }
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
pub(crate) async fn show(config: &Config, job_id: &str) -> Result<(), DlqError> {
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
