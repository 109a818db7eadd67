//! Everything a worker publishes: events, retries and dead letters, each
//! confirmed by the broker before the job's delivery is acknowledged.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use certfleet_common::amqp::{BrokerError, CONTENT_TYPE_JOB, Outgoing, Publisher};
use certfleet_common::event::Event;
use certfleet_common::topology::{self, headers};
use certfleet_common::{Envelope, now_ms};

use crate::error::JobError;

/// The longest reason header a dead letter carries, in bytes; longer reasons
/// are cut (at a character boundary) and end with `…`. A reason may quote
/// what the job carried (a 60 KiB "domain name", a decoder error about it),
/// and all headers travel in one content-header frame, which must fit the
/// connection's `frame_max` (RabbitMQ: 128 KiB by default, 4 KiB at the
/// least the protocol allows): one too large closes the connection, and the
/// job would come back to do it again. 1 KiB says what went wrong.
pub(crate) const MAX_REASON_LEN: usize = 1024;

/// Publishes on one confirm channel (shared by all jobs of a connection).
#[derive(Clone, Debug)]
pub(crate) struct Outbox {
    publisher: Publisher,
    /// Set when the broker refused (nacked) a message on this channel.
    nacked: Arc<AtomicBool>,
}

impl Outbox {
    pub(crate) fn new(publisher: Publisher) -> Self {
        Self {
            publisher,
            nacked: Arc::default(),
        }
    }

    /// Whether the publishing channel is still usable. The broker closes it
    /// for good on a channel error (a deleted exchange, say); and a channel
    /// that published while a quorum queue's leader died may have every
    /// later publish to that queue nacked for as long as it lives (seen on
    /// RabbitMQ 3.10 when a cluster node is killed; a new channel works at
    /// once). Either way the consumer reconnects with fresh channels.
    pub(crate) fn is_open(&self) -> bool {
        self.publisher.channel().status().connected() && !self.nacked.load(Ordering::Relaxed)
    }

    /// Publishes on the channel; a nack marks it unusable, so that
    /// [`Outbox::is_open`] ends the session.
    async fn publish(&self, out: Outgoing<'_>) -> Result<(), BrokerError> {
        let result = self.publisher.publish(out).await;
        if matches!(result, Err(BrokerError::Nacked { .. })) {
            self.nacked.store(true, Ordering::Relaxed);
        }
        result
    }

    /// Publishes an event (not mandatory: no subscriber is fine).
    pub(crate) async fn event(&self, event: &Event) -> Result<(), JobError> {
        let body = event
            .to_json()
            .map_err(|e| JobError::Invalid(format!("encoding the event: {e}")))?;
        let key = event.routing_key();
        let job_id = event.job_id.to_string();
        self.publish(Outgoing::json(
            topology::EVENTS_EXCHANGE,
            &key,
            &body,
            Some(&job_id),
        ))
        .await?;
        Ok(())
    }

    /// Sends a job through the delay queue that waits at least `wait`
    /// (capped at the longest); it must not start before `now + wait`.
    /// `wait` may come from the network (a CA's `Retry-After`, a header):
    /// it is capped at [`topology::MAX_DELAY`].
    pub(crate) async fn delay(&self, envelope: &Envelope, wait: Duration) -> Result<(), JobError> {
        let wait = wait.min(topology::MAX_DELAY);
        let (label, _) = topology::delay_tier(wait);
        let not_before =
            now_ms().saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
        let body = envelope
            .encode()
            .map_err(|e| JobError::Invalid(e.to_string()))?;
        let key = envelope.routing_key();
        let job_id = envelope.job_id.to_string();
        self.publish(Outgoing {
            exchange: topology::RETRY_EXCHANGE,
            routing_key: &key,
            body: &body,
            content_type: CONTENT_TYPE_JOB,
            message_id: Some(&job_id),
            headers: Some(headers(
                &[(topology::HDR_DELAY, label)],
                &[(topology::HDR_NOT_BEFORE, not_before)],
            )),
            mandatory: true,
        })
        .await?;
        Ok(())
    }

    /// Parks a message in the dead-letter queue with its reason (cut to
    /// [`MAX_REASON_LEN`]).
    pub(crate) async fn dead(
        &self,
        body: &[u8],
        routing_key: &str,
        error_kind: &str,
        reason: &str,
        job_id: Option<&str>,
    ) -> Result<(), BrokerError> {
        let failed_at = now_ms().to_string();
        let reason = cut(reason, MAX_REASON_LEN);
        let mut strings = vec![
            (topology::HDR_ERROR_KIND, error_kind),
            (topology::HDR_REASON, reason.as_ref()),
            (topology::HDR_ROUTING_KEY, routing_key),
            (topology::HDR_FAILED_AT, failed_at.as_str()),
        ];
        if let Some(id) = job_id {
            strings.push((topology::HDR_JOB_ID, id));
        }
        self.publish(Outgoing {
            exchange: topology::DEAD_EXCHANGE,
            routing_key,
            body,
            content_type: CONTENT_TYPE_JOB,
            message_id: job_id,
            headers: Some(headers(&strings, &[])),
            mandatory: true,
        })
        .await
    }
}

/// `text` if it has at most `max` bytes, else its longest prefix of at most
/// `max - 3` bytes that ends at a character boundary, followed by `…`.
fn cut(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end]).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_reasons_are_cut_at_a_character_boundary() {
        assert_eq!(cut("short", 10), "short");
        assert_eq!(cut("abcdefghij", 10), "abcdefghij");
        assert_eq!(cut("abcdefghijk", 10), "abcdefg…");
        // 'é' is two bytes: the cut never splits it.
        let cut_e = cut("ééééééé", 10);
        assert_eq!(cut_e, "ééé…");
        assert!(cut_e.len() <= 10);
        let huge = "x".repeat(1 << 20);
        assert_eq!(cut(&huge, MAX_REASON_LEN).len(), MAX_REASON_LEN);
    }
}
