//! `watch --metrics-listen`: what this webserver serves, per certificate
//! name, for Prometheus: the expiry of the certificate on disk (read from
//! `DIR/<name>/cert.pem` after every sync, so it is what the webserver
//! has, not what storage has), when this agent last installed a version,
//! and when the `--on-change` hook last ran and whether it succeeded.
//! Compared with the exporter's `certfleet_certificate_expiration_*`, the
//! expiry tells a webserver that still serves an old version (the chart's
//! `CertfleetWebserverServingOldCertificate` alert).

use std::path::Path;

use certfleet_common::CertName;
use prometheus::{GaugeVec, Opts, Registry};
use time::OffsetDateTime;

/// The agent's metrics.
#[derive(Debug)]
pub(crate) struct AgentMetrics {
    expiry: GaugeVec,
    installed: GaugeVec,
    hook_run: GaugeVec,
    hook_ok: GaugeVec,
}

#[allow(clippy::cast_precision_loss)]
fn unix(t: OffsetDateTime) -> f64 {
    t.unix_timestamp() as f64
}

impl AgentMetrics {
    /// Registers `certfleet_agent_*`.
    ///
    /// # Errors
    /// A name registered twice.
    pub(crate) fn register(reg: &Registry) -> Result<Self, prometheus::Error> {
        let vec = |name: &str, help: &str| -> Result<GaugeVec, prometheus::Error> {
            let v = GaugeVec::new(Opts::new(name, help), &["name"])?;
            reg.register(Box::new(v.clone()))?;
            Ok(v)
        };
        Ok(Self {
            expiry: vec(
                "certfleet_agent_certificate_expiration_timestamp_seconds",
                "notAfter of the certificate this webserver has on disk, Unix seconds",
            )?,
            installed: vec(
                "certfleet_agent_certificate_installed_timestamp_seconds",
                "When this agent last installed a version of the certificate, Unix seconds",
            )?,
            hook_run: vec(
                "certfleet_agent_hook_last_run_timestamp_seconds",
                "When the --on-change hook last ran for the certificate, Unix seconds",
            )?,
            hook_ok: vec(
                "certfleet_agent_hook_success",
                "1 if the hook's last run for the certificate succeeded, else 0",
            )?,
        })
    }

    /// After a sync of `name`: the expiry of `<link>/cert.pem`, and (when
    /// a version was just written) the install time. A file that cannot be
    /// read or parsed leaves the expiry as it was.
    pub(crate) fn synced(&self, name: &CertName, link: &Path, written: bool) {
        if written {
            self.installed
                .with_label_values(&[name.as_str()])
                .set(unix(OffsetDateTime::now_utc()));
        }
        if let Some(not_after) = not_after(&link.join("cert.pem")) {
            self.expiry
                .with_label_values(&[name.as_str()])
                .set(unix(not_after));
        }
    }

    /// A hook run for `name` ended.
    pub(crate) fn hook(&self, name: &CertName, ok: bool) {
        self.hook_run
            .with_label_values(&[name.as_str()])
            .set(unix(OffsetDateTime::now_utc()));
        self.hook_ok
            .with_label_values(&[name.as_str()])
            .set(if ok { 1.0 } else { 0.0 });
    }
}

/// notAfter of the first certificate of a PEM file.
fn not_after(path: &Path) -> Option<OffsetDateTime> {
    let pem = std::fs::read(path).ok()?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.validity().not_after.to_datetime())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_from_the_file_on_disk() -> Result<(), Box<dyn std::error::Error>> {
        let mut params = rcgen::CertificateParams::new(vec!["a.example.com".to_string()])?;
        params.not_after = rcgen::date_time_ymd(2031, 1, 2);
        let key = rcgen::KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("cert.pem"), cert.pem())?;
        let reg = Registry::new();
        let m = AgentMetrics::register(&reg)?;
        let name = CertName::parse("a.example.com")?;
        m.synced(&name, dir.path(), true);
        m.hook(&name, false);
        // A missing file keeps what was known.
        m.synced(&name, &dir.path().join("gone"), false);
        let out = prometheus::TextEncoder::new().encode_to_string(&reg.gather())?;
        let want = unix(rcgen::date_time_ymd(2031, 1, 2));
        assert!(
            out.contains(&format!(
                "certfleet_agent_certificate_expiration_timestamp_seconds{{name=\"a.example.com\"}} {want}"
            )),
            "{out}"
        );
        assert!(
            out.contains("certfleet_agent_hook_success{name=\"a.example.com\"} 0"),
            "{out}"
        );
        assert!(
            out.contains(
                "certfleet_agent_certificate_installed_timestamp_seconds{name=\"a.example.com\"}"
            ),
            "{out}"
        );
        Ok(())
    }
}
