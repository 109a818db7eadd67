//! Syncing one name: storage on one side, the certificate directory (and
//! the hook) on the other.
//!
//! [`Syncer::fetch`] reads the name's pointer, then the bundle it names,
//! unless the disk already holds that version. [`Syncer::fetch_hinted`]
//! starts from the version an event announced instead: newer than the
//! disk's, it reads that version's bundle directly, without the pointer;
//! the disk's or older, it reads nothing; of the same second as the disk's
//! (or unusable, or pruned already), the pointer decides as in `fetch`
//! ([`follow_hint`]). Either way certificate and key come from one bundle,
//! so they belong together. [`Syncer::apply`] writes a fetched version
//! (`files`), recording it for the `--on-change` hook first when there is
//! one (`hook`). `pull` and the `watch` session (`run`) both sync through
//! a [`Syncer`].

use std::path::PathBuf;

use certfleet_common::{CertName, Store};

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
    /// A version to write.
    New(Material),
}

/// What an event's announced version means for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hint {
    /// Read the announced version's bundle (newer than the disk's).
    Follow,
    /// Nothing to do: the disk has it, or something newer (a late event).
    Stale,
    /// The pointer decides: no usable hint, or a version of the same second
    /// as the disk's (version ids order by notBefore, to the second; two of
    /// one second, e.g. a renewal right after issuance, do not order).
    ReadPointer,
}

fn follow_hint(on_disk: Option<&str>, announced: Option<&str>) -> Hint {
    let Some(announced) = announced else {
        return Hint::ReadPointer;
    };
    let Some(on_disk) = on_disk else {
        return Hint::Follow;
    };
    if on_disk == announced {
        return Hint::Stale;
    }
    match version_time(on_disk).cmp(version_time(announced)) {
        std::cmp::Ordering::Less => Hint::Follow,
        std::cmp::Ordering::Greater => Hint::Stale,
        std::cmp::Ordering::Equal => Hint::ReadPointer,
    }
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
}

impl Syncer {
    /// Reads the name's current version; compares it with the disk.
    pub(super) async fn fetch(&self, name: &CertName) -> Result<Fetched, WatchError> {
        self.fetch_hinted(name, None).await
    }

    /// Like [`Syncer::fetch`], with the version an event announced. The
    /// event is only a hint: the bundle is read from its canonical key (an
    /// immutable object, never from a key the event names), and a version
    /// older than the one on disk (a late event) is ignored without reading
    /// storage at all. This halves the requests per event (no pointer read),
    /// which matters when a hundred webservers follow the same event. See
    /// [`follow_hint`] for when the pointer decides instead.
    pub(super) async fn fetch_hinted(
        &self,
        name: &CertName,
        hint: Option<(&str, &str)>,
    ) -> Result<Fetched, WatchError> {
        let dir = self.dir.clone();
        let n = name.clone();
        let on_disk = files::blocking(move || dir.current(&n)).await?;
        let announced = hint.filter(|(v, _)| files::check_version(v).is_ok());
        let follow = follow_hint(
            on_disk.as_ref().map(|d| d.version.as_str()),
            announced.map(|(v, _)| v),
        );
        let (version, serial) = match (follow, announced, &on_disk) {
            (Hint::Stale, _, Some(d)) => {
                return Ok(Fetched::Unchanged {
                    version: d.version.clone(),
                });
            }
            (Hint::Follow, Some((v, s)), _) => (v.to_string(), s.to_string()),
            _ => {
                // Pointer first, then the bundle it names: certificate and
                // key of the current version.
                let Some((pointer, _)) = self.store.pointer(name).await? else {
                    return Ok(Fetched::Missing);
                };
                if on_disk
                    .as_ref()
                    .is_some_and(|d| d.version == pointer.version)
                {
                    return Ok(Fetched::Unchanged {
                        version: pointer.version,
                    });
                }
                (pointer.version, pointer.serial)
            }
        };
        let bundle = match self
            .store
            .bundle(&self.store.keys().bundle(name, &version))
            .await
        {
            Ok(b) => b,
            // Pruned already (history is short and events can be late): the
            // pointer knows what is current.
            Err(certfleet_common::storage::StorageError::NotFound(_)) if announced.is_some() => {
                return Box::pin(self.fetch_hinted(name, None)).await;
            }
            Err(e) => return Err(e.into()),
        };
        let bad = |reason: String| WatchError::Bundle {
            name: name.clone(),
            reason,
        };
        if &bundle.name != name || bundle.version != version {
            return Err(bad(format!(
                "the pointer names version {version} but its bundle holds {} version {}",
                bundle.name, bundle.version
            )));
        }
        if !bundle.cert_pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(bad("the certificate is not PEM".into()));
        }
        files::check_version(&version).map_err(bad)?;
        let key_pem = self.store.open_key(&bundle)?;
        if !key_pem.expose().contains("PRIVATE KEY-----") {
            return Err(bad("the private key is not PEM".into()));
        }
        Ok(Fetched::New(Material {
            name: name.clone(),
            version,
            serial,
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
            None => files::blocking(move || dir.write(&material)).await,
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
    fn hints_follow_newer_skip_older_and_ask_the_pointer_within_a_second() {
        let old = "20261125T083000Z-ff";
        let same_second = "20261125T083000Z-0a";
        let newer = "20261125T083001Z-00";
        assert_eq!(follow_hint(Some(old), Some(newer)), Hint::Follow);
        assert_eq!(follow_hint(None, Some(newer)), Hint::Follow);
        assert_eq!(follow_hint(Some(newer), Some(old)), Hint::Stale);
        assert_eq!(follow_hint(Some(old), Some(old)), Hint::Stale);
        // "ff" > "0a" as text, yet the later serial may be the newer
        // certificate: only the pointer knows.
        assert_eq!(follow_hint(Some(old), Some(same_second)), Hint::ReadPointer);
        assert_eq!(follow_hint(Some(old), None), Hint::ReadPointer);
    }
}
