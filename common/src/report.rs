//! Reports from webservers: which version each server has loaded, and
//! whether its reload hook succeeded.
//!
//! `watch` (and `pull --server-id`) publish a [`Report`] to the reports
//! exchange (`certfleet.reports`, topic) with routing key
//! `server.<loaded|hook_failed|holds>.<name>`:
//! - `loaded`: a version was switched in and its hook succeeded (or there
//!   is no hook);
//! - `hook_failed`: the version's files are in place, the hook failed (its
//!   exit code; it is retried, and a later success reports `loaded`);
//! - `holds`: what a starting server holds after its catch-up.
//!
//! Workers consume them (queue `certfleet.reports`) into Redis: the latest
//! report per server and name ([`crate::state::State::record_report`]),
//! where `certfleet rollout`, `certfleet servers` and the exporter read
//! them. Delivery is at least once; recording keeps the newest report by
//! its time, so a duplicate or a late one changes nothing.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::CertName;

/// Schema of a report.
pub const REPORT_SCHEMA: &str = "certfleet.report.v1";

/// What a report says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportKind {
    /// Switched in, hook succeeded (or none).
    Loaded,
    /// Switched in, hook failed.
    HookFailed,
    /// Held at start.
    Holds,
}

impl ReportKind {
    /// The routing key word.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportKind::Loaded => "loaded",
            ReportKind::HookFailed => "hook_failed",
            ReportKind::Holds => "holds",
        }
    }
}

/// The reload hook's state for the version reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookState {
    /// `ok`, `failed`, `none` (no hook configured) or `pending` (not run
    /// yet, or being retried).
    pub outcome: String,
    /// The hook's exit code when it failed with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

impl HookState {
    /// No hook configured.
    pub fn none() -> Self {
        Self {
            outcome: "none".into(),
            exit_code: None,
        }
    }

    /// Whether the server serves the version (hook ok or none).
    pub fn is_ok(&self) -> bool {
        matches!(self.outcome.as_str(), "ok" | "none")
    }
}

/// One report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Always [`REPORT_SCHEMA`].
    pub schema: String,
    /// What it says.
    pub kind: ReportKind,
    /// The server (its watch queue id).
    pub server: String,
    /// The certificate.
    pub name: CertName,
    /// The version in place.
    pub version: String,
    /// Its serial (as `openssl x509 -serial` prints it).
    pub serial: String,
    /// The hook.
    pub hook: HookState,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl Report {
    /// `server.<kind>.<name>`.
    pub fn routing_key(&self) -> String {
        format!("server.{}.{}", self.kind.as_str(), self.name)
    }

    /// Whether the server serves `version` (the name's current one).
    pub fn serves(&self, version: &str) -> bool {
        self.version == version && self.hook.is_ok()
    }

    /// Parses and checks a report from the network: a server id as
    /// `watch --queue` takes, a version id of the expected shape.
    ///
    /// # Errors
    /// Not a report, or a field out of shape.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let r: Report = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if r.schema != REPORT_SCHEMA {
            return Err(format!("schema {:?} is not {REPORT_SCHEMA}", r.schema));
        }
        crate::topology::check_queue_id(&r.server).map_err(|e| format!("server id: {e}"))?;
        let version_ok = !r.version.is_empty()
            && r.version.len() <= 100
            && r.version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !version_ok || r.serial.len() > 128 || r.hook.outcome.len() > 16 {
            return Err("version, serial or hook out of shape".into());
        }
        Ok(r)
    }
}

/// The time part of a version id (`20261125T083000Z-<serial>`), Unix
/// seconds: the certificate's notBefore, to the second.
pub fn version_time(version: &str) -> Option<i64> {
    let t = version.split_once('-').map_or(version, |(t, _)| t);
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::PrimitiveDateTime::parse(t, fmt)
        .ok()
        .map(|p| p.assume_utc().unix_timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checks() -> Result<(), String> {
        let r = Report {
            schema: REPORT_SCHEMA.into(),
            kind: ReportKind::HookFailed,
            server: "web-1".into(),
            name: CertName::from_domain("www.example.com").map_err(|e| e.to_string())?,
            version: "20261125T083000Z-0a1b".into(),
            serial: "0A1B".into(),
            hook: HookState {
                outcome: "failed".into(),
                exit_code: Some(3),
            },
            at: OffsetDateTime::UNIX_EPOCH,
        };
        assert_eq!(r.routing_key(), "server.hook_failed.www.example.com");
        let json = serde_json::to_vec(&r).map_err(|e| e.to_string())?;
        assert_eq!(Report::from_json(&json)?, r);
        assert!(!r.serves("20261125T083000Z-0a1b"));
        let bad = String::from_utf8_lossy(&json).replace("web-1", "Web 1");
        assert!(Report::from_json(bad.as_bytes()).is_err());
        assert_eq!(version_time("20261125T083000Z-0a1b"), Some(1_795_595_400));
        Ok(())
    }
}
