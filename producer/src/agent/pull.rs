//! `certfleet pull`: the current version of each name written once into
//! `DIR/<name>/`, with a report of what happened to each.

use std::fmt;
use std::path::{Path, PathBuf};

use certfleet_common::{CertName, Config, Store};
use clap::Args;

use super::error::WatchError;
use super::files::{self, CertDir};
use super::sync::{Fetched, Syncer};

/// `certfleet pull`.
#[derive(Debug, Clone, Args)]
pub struct PullArgs {
    /// Directory receiving NAME/{cert,chain,fullchain,privkey}.pem.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Certificates to pull (default: every one).
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
    /// Report to the fleet as this server (what `certfleet rollout` shows);
    /// the id `watch --queue` would take.
    #[arg(long, value_name = "ID")]
    pub server_id: Option<String>,
}

/// What happened to one name in a [`pull`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PullOutcome {
    /// A new version was written.
    Written {
        /// Storage version id.
        version: String,
        /// Serial, hex.
        serial: String,
    },
    /// The version on disk is already the current one.
    Unchanged {
        /// Storage version id.
        version: String,
    },
    /// Storage has no certificate for the name.
    Missing,
    /// The name could not be written (the other names were).
    Failed {
        /// Why, with its cause chain.
        reason: String,
    },
}

/// The result of a [`pull`], one entry per name in the order processed.
/// `Display` prints one line per name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullReport {
    entries: Vec<(CertName, PullOutcome)>,
    missing: Vec<CertName>,
}

impl PullReport {
    fn push(&mut self, name: CertName, outcome: PullOutcome) {
        if outcome == PullOutcome::Missing {
            self.missing.push(name.clone());
        }
        self.entries.push((name, outcome));
    }

    /// Every name with its outcome.
    pub fn entries(&self) -> &[(CertName, PullOutcome)] {
        &self.entries
    }

    /// Names storage has no certificate for.
    pub fn missing(&self) -> &[CertName] {
        &self.missing
    }

    /// Names that could not be written, with the reason.
    pub fn failed(&self) -> impl Iterator<Item = (&CertName, &str)> {
        self.entries.iter().filter_map(|(n, o)| match o {
            PullOutcome::Failed { reason } => Some((n, reason.as_str())),
            _ => None,
        })
    }

    /// How many names got a new version.
    pub fn written(&self) -> usize {
        self.entries
            .iter()
            .filter(|(_, o)| matches!(o, PullOutcome::Written { .. }))
            .count()
    }

    /// Every name is on disk in its current version (none missing, none
    /// failed): the CLI exits 0 exactly then.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty() && self.failed().next().is_none()
    }
}

impl fmt::Display for PullReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.entries.is_empty() {
            return writeln!(f, "no certificates in storage");
        }
        for (name, outcome) in &self.entries {
            match outcome {
                PullOutcome::Written { version, serial } => {
                    writeln!(f, "{name}: written (version {version}, serial {serial})")?
                }
                PullOutcome::Unchanged { version } => {
                    writeln!(f, "{name}: unchanged (version {version})")?
                }
                PullOutcome::Missing => writeln!(f, "{name}: missing (no certificate in storage)")?,
                PullOutcome::Failed { reason } => writeln!(f, "{name}: failed: {reason}")?,
            }
        }
        Ok(())
    }
}

/// One-shot download: writes the current version of each name (every name
/// in storage if `names` is empty) under `dir`, skipping names whose version
/// on disk is current.
///
/// A name that cannot be written is reported as failed and the others go
/// on; [`PullReport::is_complete`] says whether everything is in place.
///
/// # Errors
/// [`WatchError::Dir`] (usage) if `dir` is not a writable directory;
/// storage errors if the names cannot be listed.
pub async fn pull(
    config: &Config,
    dir: &Path,
    names: &[CertName],
) -> Result<PullReport, WatchError> {
    pull_as(config, dir, names, None).await
}

/// [`pull`], reporting to the fleet as server `server` (`pull --server-id`)
/// what it wrote and what it holds.
///
/// # Errors
/// As [`pull`].
pub async fn pull_as(
    config: &Config,
    dir: &Path,
    names: &[CertName],
    server: Option<&str>,
) -> Result<PullReport, WatchError> {
    if let Some(id) = server {
        super::pattern::check_queue_id(id).map_err(|reason| WatchError::QueueId {
            id: id.to_string(),
            reason,
        })?;
    }
    let path = dir.to_path_buf();
    let dir = files::blocking(move || CertDir::open(&path)).await?;
    let store = Store::from_config(config).await;
    let names: Vec<CertName> = if names.is_empty() {
        store.names().await?
    } else {
        let mut unique: Vec<CertName> = Vec::with_capacity(names.len());
        for n in names {
            if !unique.contains(n) {
                unique.push(n.clone());
            }
        }
        unique
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let reporting = server.map(|id| super::report::Reporter::start(config, id, stop.clone()));
    let syncer = Syncer {
        store,
        dir,
        hooks: None,
        metrics: None,
        reporter: reporting.as_ref().map(|(r, _)| r.clone()),
    };
    let mut report = PullReport::default();
    for name in names {
        let outcome = match pull_one(&syncer, &name).await {
            Ok(o) => o,
            Err(e) => PullOutcome::Failed {
                reason: certfleet_common::error::chain(&e),
            },
        };
        if matches!(outcome, PullOutcome::Unchanged { .. }) {
            syncer.report_held(&name).await;
        }
        report.push(name, outcome);
    }
    // The reports go out before pull ends (a few seconds at most).
    drop(syncer);
    if let Some((_, task)) = reporting {
        stop.cancel();
        let _ = task.await;
    }
    Ok(report)
}

async fn pull_one(syncer: &Syncer, name: &CertName) -> Result<PullOutcome, WatchError> {
    match syncer.fetch(name).await? {
        Fetched::Missing => Ok(PullOutcome::Missing),
        Fetched::Unchanged { version } => Ok(PullOutcome::Unchanged { version }),
        Fetched::New(m) => {
            let (version, serial) = (m.version.clone(), m.serial.clone());
            syncer.apply(m, "sync").await?;
            tracing::debug!(cert_name = %name, %version, %serial, "certificate written");
            Ok(PullOutcome::Written { version, serial })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> CertName {
        CertName::parse(s).expect("name")
    }

    #[test]
    fn report_prints_one_line_per_name() {
        let mut r = PullReport::default();
        r.push(
            name("www.example.com"),
            PullOutcome::Written {
                version: "20261125T083000Z-3f1a".into(),
                serial: "3f1a".into(),
            },
        );
        r.push(
            name("api.example.com"),
            PullOutcome::Unchanged {
                version: "v1".into(),
            },
        );
        r.push(name("old.example.com"), PullOutcome::Missing);
        r.push(
            name("bad.example.com"),
            PullOutcome::Failed {
                reason: "object storage get: timeout".into(),
            },
        );
        assert_eq!(
            r.to_string(),
            "www.example.com: written (version 20261125T083000Z-3f1a, serial 3f1a)\n\
             api.example.com: unchanged (version v1)\n\
             old.example.com: missing (no certificate in storage)\n\
             bad.example.com: failed: object storage get: timeout\n"
        );
        assert_eq!(r.missing(), &[name("old.example.com")]);
        assert_eq!(r.failed().count(), 1);
        assert_eq!(r.written(), 1);
        assert!(!r.is_complete());
    }

    #[test]
    fn empty_and_complete_reports() {
        let mut r = PullReport::default();
        assert_eq!(r.to_string(), "no certificates in storage\n");
        assert!(r.is_complete());
        r.push(
            name("a.example.com"),
            PullOutcome::Unchanged {
                version: "v".into(),
            },
        );
        assert!(r.is_complete());
    }
}
