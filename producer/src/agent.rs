//! `certfleet pull` and `certfleet watch`: certificates from storage to the
//! files a webserver reads.
//!
//! Both write `DIR/<name>/{cert.pem,chain.pem,fullchain.pem,privkey.pem}`
//! from the name's current version in storage (pointer, then the bundle it
//! names, so certificate and key always belong together), each version
//! switched in atomically behind a symlink (`files`). `pull` does it once.
//! `watch` does it on start, then for every `issued`/`renewed` event its
//! durable queue receives, and runs the `--on-change` hook after each change
//! (`hook`); it reconnects on its own when the broker goes away
//! (`run`).
//!
//! # Layout
//! - `pattern`: `--queue` ids, `--filter` topic patterns and matching.
//! - `files`: the directory layout and the atomic writer.
//! - `hook`: the `--on-change` command, its pending markers and retries.
//! - `run`: the broker session: declare, catch up, consume, reconnect.
//!
//! An event only says "look again": the files always come from the pointer
//! read at that moment, never from the event, so a late or duplicated event
//! never rolls a certificate back.

mod files;
mod hook;
mod pattern;
mod run;

use std::fmt;
use std::path::{Path, PathBuf};

use certfleet_common::storage::StorageError;
use certfleet_common::{CertName, Classify, Config, Disposition, Store};
use clap::Args;
use tokio_util::sync::CancellationToken;

use files::{CertDir, Material};
use hook::{Hooks, Pending};

/// What `certfleet watch` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchOptions {
    /// Where certificates are written (`--dir`).
    pub dir: PathBuf,
    /// This server's queue id (`--queue`): the queue is
    /// `certfleet.watch.<id>`, durable, so events sent while the server is
    /// down wait for it. `a-z 0-9 . _ -`, at most 100 characters.
    pub queue_id: String,
    /// AMQP topic patterns over `cert.<event>.<name>` (`--filter`); none
    /// means `cert.#` (everything).
    pub filters: Vec<String>,
    /// Shell command run after each change (`--on-change`).
    pub on_change: Option<String>,
}

/// `certfleet pull`.
#[derive(Debug, Clone, Args)]
pub struct PullArgs {
    /// Directory receiving NAME/{cert,chain,fullchain,privkey}.pem.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Certificates to pull (default: every one).
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
}

/// `certfleet watch`.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Directory receiving NAME/{cert,chain,fullchain,privkey}.pem.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// This webserver's id: its durable queue is certfleet.watch.ID.
    #[arg(long = "queue", value_name = "ID")]
    pub queue_id: String,
    /// Certificate name patterns to follow (AMQP topic syntax); default all.
    #[arg(long = "filter", value_name = "PATTERN")]
    pub filters: Vec<String>,
    /// Command run after certificates changed.
    #[arg(long, value_name = "CMD")]
    pub on_change: Option<String>,
}

/// The command line's `--dir`, `--queue`, `--filter` and `--on-change`, as
/// given (they are checked by [`watch`]).
impl From<WatchArgs> for WatchOptions {
    fn from(args: WatchArgs) -> Self {
        WatchOptions {
            dir: args.dir,
            queue_id: args.queue_id,
            filters: args.filters,
            on_change: args.on_change,
        }
    }
}

/// Why `pull` or `watch` could not do its work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WatchError {
    /// `--queue` is not a safe identifier.
    #[error("--queue {id:?}: {reason}")]
    QueueId {
        /// The id given.
        id: String,
        /// Why it was refused.
        reason: String,
    },
    /// A `--filter` is not a usable topic pattern.
    #[error("--filter {pattern:?}: {reason}")]
    Filter {
        /// The pattern given.
        pattern: String,
        /// Why it was refused.
        reason: String,
    },
    /// `--dir` does not exist, is not a directory, or is not writable.
    #[error("--dir {}: {reason}", path.display())]
    Dir {
        /// The directory given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `DIR/<name>` exists and is not certfleet's symlink: someone else's
    /// files, left alone.
    #[error("{} exists and is not a symlink made by certfleet; move it away and run again (certfleet keeps each version under .certfleet/<name>/ beside it and points <name> at one)", path.display())]
    Occupied {
        /// `DIR/<name>`.
        path: PathBuf,
    },
    /// Storage holds something that cannot be written out.
    #[error("certificate {name}: unusable bundle in storage: {reason}")]
    Bundle {
        /// Certificate name.
        name: CertName,
        /// What is wrong.
        reason: String,
    },
    /// A file operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A file-writing task panicked.
    #[error("file writer task failed: {0}")]
    Task(String),
}

impl WatchError {
    /// Bad usage (exit 64): a bad `--queue` id, a bad `--filter`, or a
    /// `--dir` that is not a writable directory.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            WatchError::QueueId { .. } | WatchError::Filter { .. } | WatchError::Dir { .. }
        )
    }
}

impl Classify for WatchError {
    fn disposition(&self) -> Disposition {
        match self {
            WatchError::Storage(e) => e.disposition(),
            WatchError::Io { .. } => Disposition::Retry { after: None },
            WatchError::QueueId { .. }
            | WatchError::Filter { .. }
            | WatchError::Dir { .. }
            | WatchError::Occupied { .. }
            | WatchError::Bundle { .. }
            | WatchError::Task(_) => Disposition::Fail,
        }
    }
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

/// What storage says about a name, compared with the disk.
#[derive(Debug)]
enum Fetched {
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
struct Syncer {
    store: Store,
    dir: CertDir,
    hooks: Option<Hooks>,
}

impl Syncer {
    /// Reads the name's current version; compares it with the disk.
    async fn fetch(&self, name: &CertName) -> Result<Fetched, WatchError> {
        self.fetch_hinted(name, None).await
    }

    /// Like [`Syncer::fetch`], with the version an event announced. The
    /// event is only a hint: the bundle is read from its canonical key (an
    /// immutable object, never from a key the event names), and a version
    /// older than the one on disk (a late event) is ignored without reading
    /// storage at all. This halves the requests per event (no pointer read),
    /// which matters when a hundred webservers follow the same event. See
    /// [`follow_hint`] for when the pointer decides instead.
    async fn fetch_hinted(
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
                // Pointer first, then the bundle it names (never a bundle on
                // its own): certificate and key of one version.
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
    async fn apply(&self, material: Material, event: &str) -> Result<PathBuf, WatchError> {
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
    let syncer = Syncer {
        store,
        dir,
        hooks: None,
    };
    let mut report = PullReport::default();
    for name in names {
        let outcome = match pull_one(&syncer, &name).await {
            Ok(o) => o,
            Err(e) => PullOutcome::Failed {
                reason: certfleet_common::error::chain(&e),
            },
        };
        report.push(name, outcome);
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

/// Keeps `opts.dir` up to date until `shutdown`: validates the options,
/// runs hooks left pending by an earlier run, then (again after every
/// reconnect) declares the queue, catches up with storage for the names the
/// filters follow, and consumes events. Returns `Ok` once shut down.
///
/// # Errors
/// Only usage errors ([`WatchError::is_usage`]) and a state directory that
/// cannot be read: broker and storage trouble is logged and retried.
pub async fn watch(
    config: &Config,
    opts: WatchOptions,
    shutdown: CancellationToken,
) -> Result<(), WatchError> {
    pattern::check_queue_id(&opts.queue_id).map_err(|reason| WatchError::QueueId {
        id: opts.queue_id.clone(),
        reason,
    })?;
    let filters = pattern::Filters::parse(&opts.filters)
        .map_err(|(pattern, reason)| WatchError::Filter { pattern, reason })?;
    let path = opts.dir.clone();
    let dir = files::blocking(move || CertDir::open(&path)).await?;
    let store = Store::from_config(config).await;
    // The hook tasks get their own token, cancelled once the watcher is done.
    let hooks_stop = shutdown.child_token();
    let hooks = opts
        .on_change
        .clone()
        .map(|cmd| Hooks::new(cmd, dir.clone(), hooks_stop.clone()));
    if let Some(h) = &hooks {
        h.resume().await?;
    }
    let syncer = Syncer {
        store,
        dir,
        hooks: hooks.clone(),
    };
    let result = run::Watcher::new(syncer, filters, &opts.queue_id)
        .run(config, &shutdown)
        .await;
    hooks_stop.cancel();
    if let Some(h) = hooks {
        h.wait().await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> CertName {
        CertName::parse(s).expect("name")
    }

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

    #[test]
    fn usage_errors() {
        let usage = [
            WatchError::QueueId {
                id: "A".into(),
                reason: "r".into(),
            },
            WatchError::Filter {
                pattern: "#".into(),
                reason: "r".into(),
            },
            WatchError::Dir {
                path: "/nope".into(),
                reason: "r".into(),
            },
        ];
        for e in &usage {
            assert!(e.is_usage(), "{e}");
            assert_eq!(e.disposition(), Disposition::Fail);
        }
        let occupied = WatchError::Occupied {
            path: "/srv/certs/www.example.com".into(),
        };
        assert!(!occupied.is_usage());
        assert!(
            occupied
                .to_string()
                .starts_with("/srv/certs/www.example.com exists")
        );
    }

    #[tokio::test]
    async fn watch_refuses_bad_options_before_connecting() {
        let env = std::collections::HashMap::<String, String>::new();
        let config = Config::load(&certfleet_common::config::Sources::new(&env)).expect("config");
        let tmp = tempfile::tempdir().expect("tempdir");
        let opts = |queue: &str, filters: &[&str], dir: &Path| WatchOptions {
            dir: dir.to_path_buf(),
            queue_id: queue.into(),
            filters: filters.iter().map(|s| s.to_string()).collect(),
            on_change: None,
        };
        let cases = [
            opts("Web 1", &[], tmp.path()),
            opts("web1", &["job.#"], tmp.path()),
            opts("web1", &["cert.#"], &tmp.path().join("missing")),
        ];
        for o in cases {
            let err = watch(&config, o, CancellationToken::new())
                .await
                .expect_err("refused");
            assert!(err.is_usage(), "{err}");
        }
        let err = pull(&config, &tmp.path().join("missing"), &[])
            .await
            .expect_err("refused");
        assert!(err.is_usage(), "{err}");
    }
}
