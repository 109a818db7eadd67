//! Syncing one name: storage on one side, the certificate directory (and
//! the hook) on the other.
//!
//! [`Syncer::fetch`] reads the name's pointer, then the bundle it names,
//! unless the disk already holds that version; the bundle is installed only
//! once it passed `check` (pointer and bundle agree, the key is the
//! certificate's, the domains are covered, valid now, the chain verifies).
//! [`Syncer::fetch_hinted`] starts from the version an event announced: if
//! the disk holds that version or a newer one (a late or duplicated event),
//! storage is not read at all; otherwise the pointer decides exactly as in
//! `fetch`. The announced version itself is never installed unless the
//! pointer, read then, names it: an event is unauthenticated, and a forged
//! one could name any bundle in the bucket (an old version, or one whose
//! pointer flip never happened). Either way certificate and key come from
//! one bundle, so they belong together. [`Syncer::apply`] writes a checked
//! version (`files`), recording it for the `--on-change` hook first when
//! there is one (`hook`). `pull` and the `watch` session (`run`) both sync
//! through a [`Syncer`].
//!
//! Cost per event that brings a new version: two S3 reads (pointer, bundle)
//! per webserver. A late or duplicated event costs none.

use std::path::PathBuf;

use certfleet_common::{CertName, Store};
use time::OffsetDateTime;

use super::check;
use super::error::WatchError;
use super::files::{self, CertDir, Material};
use super::hook::{Hooks, Pending};

/// What storage says about a name, compared with the disk.
#[derive(Debug)]
pub(super) enum Fetched {
    /// No certificate in storage.
    Missing,
    /// The disk already has the current version.
    Unchanged { version: String },
    /// A checked version to write.
    New(Material),
}

/// Whether the disk already holds `announced` or something newer, so that
/// an event for it needs no storage read. Version ids order by notBefore,
/// to the second; two of one second (a renewal right after issuance) do
/// not order by their text, so then the pointer decides (`false`).
fn already_on_disk(on_disk: &str, announced: &str) -> bool {
    on_disk == announced || version_time(on_disk) > version_time(announced)
}

/// The time part of a version id (`20261125T083000Z` of
/// `20261125T083000Z-0a1b`), which orders versions to the second.
fn version_time(version: &str) -> &str {
    version.split_once('-').map_or(version, |(t, _)| t)
}

/// Storage on one side, the directory (and the hook) on the other.
#[derive(Debug, Clone)]
pub(super) struct Syncer {
    pub(super) store: Store,
    pub(super) dir: CertDir,
    pub(super) hooks: Option<Hooks>,
    /// `watch --metrics-listen`.
    pub(super) metrics: Option<std::sync::Arc<super::metrics::AgentMetrics>>,
    /// Reports to the fleet (`watch`; `pull --server-id`).
    pub(super) reporter: Option<super::report::Reporter>,
}

impl Syncer {
    /// Tells the metrics (if any) that `name` was synced: `written` a new
    /// version, or found current.
    pub(super) fn observed(&self, name: &CertName, written: bool) {
        if let Some(m) = &self.metrics {
            m.synced(name, &self.dir.link(name), written);
        }
    }

    /// Reports what the disk holds for `name` (a server starting, or
    /// `pull`): not while its hook is pending (the hook's run reports).
    pub(super) async fn report_held(&self, name: &CertName) {
        let Some(r) = &self.reporter else {
            return;
        };
        let hook = match &self.hooks {
            Some(h) if h.is_pending(name) => return,
            Some(_) => certfleet_common::report::HookState {
                outcome: "ok".into(),
                exit_code: None,
            },
            None => certfleet_common::report::HookState::none(),
        };
        let dir = self.dir.clone();
        let n = name.clone();
        if let Ok(Some(d)) = files::blocking(move || dir.current(&n)).await {
            r.send(
                certfleet_common::report::ReportKind::Holds,
                name,
                &d.version,
                &d.serial,
                hook,
            );
        }
    }

    /// Reads the name's current version; compares it with the disk.
    pub(super) async fn fetch(&self, name: &CertName) -> Result<Fetched, WatchError> {
        self.fetch_hinted(name, None).await
    }

    /// Like [`Syncer::fetch`], with the version an event announced. The
    /// event is only a hint: a version the disk already has (or an older
    /// one: a late event) is ignored without reading storage; anything else
    /// is decided by the pointer, and only the pointer's version is
    /// installed (see the module doc).
    ///
    /// # Errors
    /// Storage or disk trouble, or [`WatchError::Bundle`] when the version
    /// the pointer names fails a check: nothing is written then.
    pub(super) async fn fetch_hinted(
        &self,
        name: &CertName,
        announced: Option<&str>,
    ) -> Result<Fetched, WatchError> {
        let dir = self.dir.clone();
        let n = name.clone();
        let on_disk = files::blocking(move || dir.current(&n)).await?;
        let announced = announced.filter(|v| files::check_version(v).is_ok());
        if let (Some(d), Some(a)) = (&on_disk, announced)
            && already_on_disk(&d.version, a)
        {
            return Ok(Fetched::Unchanged {
                version: d.version.clone(),
            });
        }
        // The pointer decides; the announced version's bundle (its
        // canonical, immutable key) is read at the same time, so a new
        // version costs one round trip of latency, not two. It is used only
        // if the pointer names that version.
        let speculative_key = announced.map(|a| self.store.keys().bundle(name, a));
        let (pointer, speculative) = match &speculative_key {
            Some(key) => {
                let (p, b) = tokio::join!(self.store.pointer(name), self.store.bundle(key));
                (p, Some(b))
            }
            None => (self.store.pointer(name).await, None),
        };
        let Some((pointer, _)) = pointer? else {
            return Ok(Fetched::Missing);
        };
        if let Some(a) = announced
            && a != pointer.version
        {
            let earlier = pointer.history.iter().any(|h| h == a)
                || version_time(a) < version_time(&pointer.version);
            if earlier {
                tracing::debug!(cert_name = %name, announced = %a, current = %pointer.version, "event for an earlier version; the pointer names a newer one");
            } else {
                tracing::warn!(cert_name = %name, announced = %a, current = %pointer.version, fence = pointer.fence,
                    "event announces a version the pointer does not name (forged, or never made current); not installed");
            }
        }
        if on_disk
            .as_ref()
            .is_some_and(|d| d.version == pointer.version)
        {
            return Ok(Fetched::Unchanged {
                version: pointer.version,
            });
        }
        let bad = |reason: String| WatchError::Bundle {
            name: name.clone(),
            version: pointer.version.clone(),
            reason,
        };
        files::check_version(&pointer.version).map_err(bad)?;
        // From its canonical key (an immutable object), not a key taken
        // from the pointer's text.
        let bundle = match speculative {
            Some(Ok(b)) if announced == Some(pointer.version.as_str()) => b,
            _ => {
                self.store
                    .bundle(&self.store.keys().bundle(name, &pointer.version))
                    .await?
            }
        };
        let key_pem = self.store.open_key(&bundle)?;
        let checked = check::check(
            &pointer,
            &bundle,
            key_pem.as_ref(),
            OffsetDateTime::now_utc(),
        )
        .map_err(bad)?;
        Ok(Fetched::New(Material {
            name: name.clone(),
            version: pointer.version,
            serial: checked.serial,
            cert_pem: bundle.cert_pem,
            chain_pem: bundle.chain_pem,
            key_pem,
        }))
    }

    /// Writes a fetched version; with a hook, records the change for it
    /// first (`event`: issued, renewed or sync).
    pub(super) async fn apply(
        &self,
        material: Material,
        event: &str,
    ) -> Result<PathBuf, WatchError> {
        let dir = self.dir.clone();
        match &self.hooks {
            None => {
                let (name, version, serial) = (
                    material.name.clone(),
                    material.version.clone(),
                    material.serial.clone(),
                );
                let written = files::blocking(move || dir.write(&material)).await?;
                if let Some(r) = &self.reporter {
                    r.send(
                        certfleet_common::report::ReportKind::Loaded,
                        &name,
                        &version,
                        &serial,
                        certfleet_common::report::HookState::none(),
                    );
                }
                Ok(written)
            }
            Some(hooks) => {
                let pending = Pending {
                    event: event.to_string(),
                    version: material.version.clone(),
                    serial: material.serial.clone(),
                    since_ms: certfleet_common::now_ms(),
                };
                let name = material.name.clone();
                hooks
                    .record(&name, pending, move || dir.write(&material))
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_events_need_no_read_and_a_second_does_not_order() {
        let old = "20261125T083000Z-ff";
        let same_second = "20261125T083000Z-0a";
        let newer = "20261125T083001Z-00";
        assert!(!already_on_disk(old, newer));
        assert!(already_on_disk(newer, old));
        assert!(already_on_disk(old, old));
        // "ff" > "0a" as text, yet the later serial may be the newer
        // certificate: only the pointer knows.
        assert!(!already_on_disk(old, same_second));
        assert!(!already_on_disk(same_second, old));
    }
}
