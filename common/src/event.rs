//! Events: what workers announce, as JSON any language can read.
//!
//! Published to `certfleet.events` with routing key
//! `cert.<issued|renewed|failed|revoked|resealed>.<name>`, content type
//! `application/json`. The schema is documented in `docs/events.md`, and a
//! checked-in example (`common/tests/fixtures/event-issued-v1.json`) is
//! parsed by the tests so that a change that would break subscribers fails
//! here first. Fields are only ever added; a consumer must ignore fields it
//! does not know.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::CertName;

/// The value of [`Event::schema`].
pub const EVENT_SCHEMA: &str = "certfleet.event.v1";
/// Content type of events.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A certificate was stored for a name that had none (or new domains).
    Issued,
    /// A certificate replaced an earlier one of the same name.
    Renewed,
    /// A job ended without a certificate.
    Failed,
    /// The certificate of a name was revoked.
    Revoked,
    /// The stored versions' keys were encrypted anew to the current
    /// recipients (`certfleet keys reseal`); the certificate is the same.
    /// A webserver that could not open the version before installs it now.
    Resealed,
}

impl EventKind {
    /// The routing-key word.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Issued => "issued",
            EventKind::Renewed => "renewed",
            EventKind::Failed => "failed",
            EventKind::Revoked => "revoked",
            EventKind::Resealed => "resealed",
        }
    }
}

/// Where the certificate is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// Bucket.
    pub bucket: String,
    /// Key of the immutable bundle of this version.
    pub bundle_key: String,
    /// Key of the name's pointer to its current version.
    pub pointer_key: String,
}

/// The certificate an issued or renewed event is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertInfo {
    /// Serial number, lower-case hex.
    pub serial: String,
    /// Start of validity (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// End of validity (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// When certfleet will renew it (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub renew_at: OffsetDateTime,
    /// Storage version id.
    pub version: String,
    /// Storage location.
    pub location: Location,
    /// Serial of the certificate this one replaces (renewals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_serial: Option<String>,
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// `acme` (the CA refused), `input`, `exhausted` (ran out of attempts),
    /// `internal`.
    pub kind: String,
    /// Human-readable reason.
    pub detail: String,
    /// The CA's RFC 7807 problem document, when the CA gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<serde_json::Value>,
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Always [`EVENT_SCHEMA`].
    pub schema: String,
    /// What happened.
    pub kind: EventKind,
    /// The certificate's name.
    pub name: CertName,
    /// Its domains.
    pub domains: Vec<String>,
    /// The job that led here.
    pub job_id: Uuid,
    /// The job's attempt number.
    pub attempt: u32,
    /// When the event was published (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The certificate (issued, renewed, revoked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertInfo>,
    /// The failure (failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
}

impl Event {
    /// `cert.<kind>.<name>`.
    pub fn routing_key(&self) -> String {
        format!("cert.{}.{}", self.kind.as_str(), self.name)
    }

    /// JSON bytes.
    ///
    /// # Errors
    /// Never for a well-formed event; serde_json's error otherwise.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// Parses JSON bytes.
    ///
    /// # Errors
    /// Not an event.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../tests/fixtures/event-issued-v1.json");

    #[test]
    fn fixture_parses_and_round_trips() -> Result<(), serde_json::Error> {
        let e = Event::from_json(FIXTURE.as_bytes())?;
        assert_eq!(e.schema, EVENT_SCHEMA);
        assert_eq!(e.kind, EventKind::Issued);
        assert_eq!(e.routing_key(), "cert.issued.www.example.com");
        let cert = e.certificate.as_ref().expect("certificate");
        assert!(cert.not_after > cert.not_before);
        let again: serde_json::Value = serde_json::from_slice(&e.to_json()?)?;
        let fixture: serde_json::Value = serde_json::from_str(FIXTURE)?;
        assert_eq!(
            again, fixture,
            "serialization drifted from the documented fixture"
        );
        Ok(())
    }

    #[test]
    fn unknown_fields_are_ignored() -> Result<(), serde_json::Error> {
        let mut v: serde_json::Value = serde_json::from_str(FIXTURE)?;
        v["future_field"] = serde_json::json!(1);
        assert!(Event::from_json(&serde_json::to_vec(&v)?).is_ok());
        Ok(())
    }
}
