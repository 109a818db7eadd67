//! Everything a worker publishes: events, retries and dead letters, each
//! confirmed by the broker before the job's delivery is acknowledged.

use std::time::Duration;

use certfleet_common::amqp::{BrokerError, CONTENT_TYPE_JOB, Outgoing, Publisher};
use certfleet_common::event::{CONTENT_TYPE_JSON, Event};
use certfleet_common::topology::{self, headers};
use certfleet_common::{Envelope, now_ms};

use crate::error::JobError;

/// Publishes on one confirm channel (shared by all jobs of a connection).
#[derive(Clone, Debug)]
pub(crate) struct Outbox {
    publisher: Publisher,
}

impl Outbox {
    pub(crate) fn new(publisher: Publisher) -> Self {
        Self { publisher }
    }

    /// Publishes an event (not mandatory: no subscriber is fine).
    pub(crate) async fn event(&self, event: &Event) -> Result<(), JobError> {
        let body = event
            .to_json()
            .map_err(|e| JobError::Invalid(format!("encoding the event: {e}")))?;
        let key = event.routing_key();
        let job_id = event.job_id.to_string();
        self.publisher
            .publish(Outgoing {
                exchange: topology::EVENTS_EXCHANGE,
                routing_key: &key,
                body: &body,
                content_type: CONTENT_TYPE_JSON,
                message_id: Some(&job_id),
                headers: None,
                mandatory: false,
            })
            .await?;
        Ok(())
    }

    /// Sends a job through the delay queue that waits at least `wait`
    /// (capped at the longest); it must not start before `now + wait`.
    pub(crate) async fn delay(&self, envelope: &Envelope, wait: Duration) -> Result<(), JobError> {
        let (label, _) = topology::delay_tier(wait);
        let not_before =
            now_ms().saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
        let body = envelope
            .encode()
            .map_err(|e| JobError::Invalid(e.to_string()))?;
        let key = envelope.routing_key();
        let job_id = envelope.job_id.to_string();
        self.publisher
            .publish(Outgoing {
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

    /// Parks a message in the dead-letter queue with its reason.
    pub(crate) async fn dead(
        &self,
        body: &[u8],
        routing_key: &str,
        error_kind: &str,
        reason: &str,
        job_id: Option<&str>,
    ) -> Result<(), BrokerError> {
        let failed_at = now_ms().to_string();
        let mut strings = vec![
            (topology::HDR_ERROR_KIND, error_kind),
            (topology::HDR_REASON, reason),
            (topology::HDR_ROUTING_KEY, routing_key),
            (topology::HDR_FAILED_AT, failed_at.as_str()),
        ];
        if let Some(id) = job_id {
            strings.push((topology::HDR_JOB_ID, id));
        }
        self.publisher
            .publish(Outgoing {
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
