//! One message of the dead-letter queue as read: the job if its body
//! decodes, and what the headers say about why and when it was parked and
//! how to replay it.

use certfleet_common::Envelope;
use certfleet_common::job::CodecError;
use certfleet_common::topology::{
    HDR_ERROR_KIND, HDR_FAILED_AT, HDR_JOB_ID, HDR_REASON, HDR_ROUTING_KEY, header_i64, header_str,
};
use lapin::BasicProperties;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Header RabbitMQ itself puts on a message it dead-lettered (for example a
/// poison message past the delivery limit): why.
const HDR_FIRST_DEATH_REASON: &str = "x-first-death-reason";

/// One message of the dead-letter queue, as read.
#[derive(Debug)]
pub(crate) struct DeadMessage {
    /// Delivery tag on the reading channel.
    pub(crate) tag: u64,
    /// The job, if the body decodes.
    pub(crate) envelope: Result<Envelope, CodecError>,
    /// Job id: the header, else the decoded envelope's, else the message id.
    pub(crate) job_id: Option<String>,
    /// Why it is here.
    pub(crate) reason: Option<String>,
    /// `undecodable`, `permanent`, `exhausted`, `panic`, `poison`, or RabbitMQ's own
    /// dead-letter reason.
    pub(crate) error_kind: Option<String>,
    /// When it was parked, Unix ms.
    pub(crate) failed_at: Option<i64>,
    /// Routing key to replay it with, from the header.
    pub(crate) routing_key: Option<String>,
    /// Message properties (for `show`).
    pub(crate) properties: BasicProperties,
    /// Body size.
    pub(crate) body_len: usize,
    /// Whether the broker delivered it before.
    pub(crate) redelivered: bool,
}

impl DeadMessage {
    pub(super) fn from_delivery(d: &lapin::message::Delivery) -> Self {
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

    /// The certificate name, if the body decodes (the commands print
    /// the envelope's fields directly; tests read it here).
    #[cfg(test)]
    pub(crate) fn name(&self) -> Option<&certfleet_common::CertName> {
        self.envelope.as_ref().ok().map(|e| &e.job.name)
    }

    /// The routing key to replay with: the header, else the envelope's.
    pub(crate) fn replay_routing_key(&self) -> Option<String> {
        self.routing_key
            .clone()
            .filter(|k| k.starts_with("job."))
            .or_else(|| self.envelope.as_ref().ok().map(Envelope::routing_key))
    }

    /// One line of `dlq list --json`.
    pub(super) fn summary(&self) -> serde_json::Value {
        let envelope = self.envelope.as_ref().ok();
        serde_json::json!({
            "job_id": self.job_id,
            "name": envelope.map(|e| e.job.name.to_string()),
            "kind": envelope.map(|e| e.kind.as_str()),
            "error_kind": self.error_kind,
            "failed_at": self.failed_at.map(|_| self.failed_at_text()),
            "reason": self.reason,
            "routing_key": self.replay_routing_key(),
        })
    }

    pub(super) fn failed_at_text(&self) -> String {
        self.failed_at
            .and_then(|ms| {
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
            })
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_else(|| "-".into())
    }
}

pub(super) fn text(value: Option<&str>) -> &str {
    value.filter(|v| !v.is_empty()).unwrap_or("-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use certfleet_common::topology;
    use certfleet_common::{CertName, ChallengeType, Job, JobKind, KeyType};
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
                options: Default::default(),
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
}
