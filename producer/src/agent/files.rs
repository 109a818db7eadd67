//! The certificate directory on a webserver and its atomic writer.
//!
//! ```text
//! DIR/www.example.com -> .certfleet/www.example.com/20261125T083000Z-3f1a   (symlink)
//! DIR/.certfleet/www.example.com/
//!     20261125T083000Z-3f1a/{cert.pem,chain.pem,fullchain.pem,privkey.pem,.certfleet.json}
//!     20260826T083000Z-77b0/   the previous version, kept for readers that resolved the old link
//!     hook-pending             a change whose --on-change hook has not succeeded yet (see hook.rs)
//! ```
//!
//! Webservers read `DIR/<name>/fullchain.pem` and `DIR/<name>/privkey.pem`.
//! A new version is written in full into a fresh staging directory (each
//! file created with its final mode, `privkey.pem` 0600 from the first byte,
//! and fsynced), the directory is fsynced and renamed to its version name,
//! and only then is `DIR/<name>` switched by renaming a new symlink over it
//! (`rename(2)` is atomic). A reader that follows `DIR/<name>` therefore sees
//! all four files of one version or all four of the other, never a new
//! certificate with an old key. The previous version directory is kept, so a
//! reader that resolved the old link a moment before the switch can still
//! open its files; older ones are deleted.
//!
//! A webserver opens `fullchain.pem` and `privkey.pem` one after the other,
//! each through the link; the `--on-change` hook runs (and so the reload
//! happens) only after the switch, so both opens see the new version. A
//! reader that must be consistent even while a switch happens resolves the
//! link once (`realpath DIR/<name>`) and reads both files from there.
//!
//! `DIR/<name>/.certfleet.json` (inside the version directory) records the
//! version and serial on disk, so an unchanged version is not rewritten.
//!
//! Everything here is blocking file I/O; async callers run it on the blocking
//! pool ([`blocking`]).

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use certfleet_common::{CertName, Secret};
use serde::{Deserialize, Serialize};

use super::error::WatchError;

/// Hidden directory under DIR holding every version and certfleet's state.
pub(crate) const STATE_DIR: &str = ".certfleet";
/// The state file inside a version directory.
pub(crate) const STATE_FILE: &str = ".certfleet.json";
/// Schema tag of [`STATE_FILE`].
pub(crate) const STATE_SCHEMA: &str = "certfleet.local.v1";
/// The leaf certificate.
pub(crate) const CERT_FILE: &str = "cert.pem";
/// The issuer chain, without the leaf.
pub(crate) const CHAIN_FILE: &str = "chain.pem";
/// Leaf then chain: what nginx' `ssl_certificate` wants.
pub(crate) const FULLCHAIN_FILE: &str = "fullchain.pem";
/// The private key.
pub(crate) const KEY_FILE: &str = "privkey.pem";
/// The four files every version directory holds (the key file but for a
/// key the operator holds).
pub(crate) const PEM_FILES: [&str; 4] = [CERT_FILE, CHAIN_FILE, FULLCHAIN_FILE, KEY_FILE];
/// Mode of the private key: created so, never chmod-ed afterwards, so there
/// is no moment at which it is readable by others.
const KEY_MODE: u32 = 0o600;
/// Mode of certificates and state files (public data).
const PUBLIC_MODE: u32 = 0o644;
/// Mode of directories: a webserver that drops privileges must still be able
/// to traverse to its certificate (the key itself stays 0600).
const DIR_MODE: u32 = 0o755;
/// Prefix of staging directories (a crash leaves one behind; the next write
/// of the name deletes it).
const STAGING_PREFIX: &str = ".partial-";
/// The new symlink, before it is renamed over `DIR/<name>`.
const LINK_TMP: &str = ".link.tmp";
/// Longest version id accepted as a directory name.
const MAX_VERSION_LEN: usize = 200;

/// One version as it goes on disk.
pub(crate) struct Material {
    /// Certificate name.
    pub(crate) name: CertName,
    /// Storage version id (becomes the directory name).
    pub(crate) version: String,
    /// Serial, hex.
    pub(crate) serial: String,
    /// Leaf certificate, PEM.
    pub(crate) cert_pem: String,
    /// Issuer chain, PEM.
    pub(crate) chain_pem: String,
    /// Private key, PEM. Never logged. None when the operator holds it
    /// (`issue --csr`): no `privkey.pem` is written.
    pub(crate) key_pem: Option<Secret<String>>,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

/// What [`STATE_FILE`] records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OnDisk {
    /// Always [`STATE_SCHEMA`].
    pub(crate) schema: String,
    /// Certificate name.
    pub(crate) name: CertName,
    /// Storage version id.
    pub(crate) version: String,
    /// Serial, hex.
    pub(crate) serial: String,
    /// When it was written (Unix ms).
    pub(crate) written_at_ms: i64,
    /// Written without `privkey.pem`: the operator holds the key
    /// (`issue --csr`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) no_key: bool,
}

/// The directory certificates are written to (`--dir`), validated.
#[derive(Debug, Clone)]
pub(crate) struct CertDir {
    root: PathBuf,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WatchError + 'a {
    move |source| WatchError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn dir_err(path: &Path, reason: impl Into<String>) -> WatchError {
    WatchError::Dir {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Fsyncs a directory, so that a rename or creation in it survives a crash.
fn sync_dir(path: &Path) -> Result<(), WatchError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", path))
}

fn make_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().mode(DIR_MODE).create(path)
}

/// Creates a new file with `mode`, writes `data` and fsyncs it.
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), WatchError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err("create", path))?;
    file.write_all(data).map_err(io_err("write", path))?;
    file.sync_all().map_err(io_err("fsync", path))
}

/// Replaces `path` atomically with `data`: write beside, fsync, rename,
/// fsync the directory.
pub(crate) fn replace_file(path: &Path, data: &[u8], mode: u32) -> Result<(), WatchError> {
    let parent = path.parent().unwrap_or_else(|| Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{file_name}.tmp"));
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove", &tmp)(e)),
    }
    write_new(&tmp, data, mode)?;
    fs::rename(&tmp, path).map_err(io_err("rename", &tmp))?;
    sync_dir(parent)
}

/// Whether a storage version id is safe as a directory name.
pub(crate) fn check_version(version: &str) -> Result<(), String> {
    if version.is_empty() || version.len() > MAX_VERSION_LEN {
        return Err(format!("version id of {} characters", version.len()));
    }
    if version.starts_with('.') {
        return Err(format!("version id {version:?} starts with a dot"));
    }
    if let Some(c) = version
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!("version id {version:?} contains {c:?}"));
    }
    Ok(())
}

fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{}-{nanos}", std::process::id())
}

impl CertDir {
    /// Validates `--dir`: it must be a writable directory; a missing one is
    /// created with its parents (as `aws s3 sync`, which `pull` and `watch`
    /// replace, does). Creates `DIR/.certfleet` and returns the directory
    /// with an absolute path (hooks get absolute paths).
    ///
    /// # Errors
    /// [`WatchError::Dir`] (a usage error: not a directory, not writable,
    /// cannot be created) or I/O.
    pub(crate) fn open(dir: &Path) -> Result<Self, WatchError> {
        let meta = match fs::metadata(dir) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(dir).map_err(|e| {
                    dir_err(dir, format!("does not exist and cannot be created: {e}"))
                })?;
                tracing::info!(dir = %dir.display(), "created the certificate directory");
                fs::metadata(dir).map_err(|e| dir_err(dir, e.to_string()))?
            }
            Err(e) => return Err(dir_err(dir, e.to_string())),
        };
        if !meta.is_dir() {
            return Err(dir_err(dir, "is not a directory"));
        }
        let root = fs::canonicalize(dir).map_err(|e| dir_err(dir, e.to_string()))?;
        let state = root.join(STATE_DIR);
        let not_writable = |e: io::Error| match e.kind() {
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                dir_err(dir, format!("is not writable ({e})"))
            }
            _ => dir_err(dir, format!("cannot write in it: {e}")),
        };
        match make_dir(&state) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(not_writable(e)),
        }
        if !fs::symlink_metadata(&state).map_err(not_writable)?.is_dir() {
            return Err(dir_err(
                dir,
                format!("{} exists and is not a directory", state.display()),
            ));
        }
        let probe = state.join(format!(".probe-{}", unique_suffix()));
        File::create(&probe).map_err(not_writable)?;
        let _ = fs::remove_file(&probe);
        Ok(Self { root })
    }

    /// The directory itself (absolute).
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// `DIR/<name>`: the symlink webservers read through.
    pub(crate) fn link(&self, name: &CertName) -> PathBuf {
        self.root.join(name.as_str())
    }

    /// `DIR/.certfleet/<name>`: the name's versions and state.
    pub(crate) fn state_dir(&self, name: &CertName) -> PathBuf {
        self.root.join(STATE_DIR).join(name.as_str())
    }

    /// The names with a state directory (for pending hooks after a restart).
    ///
    /// # Errors
    /// The state directory cannot be listed.
    pub(crate) fn state_names(&self) -> Result<Vec<CertName>, WatchError> {
        let state = self.root.join(STATE_DIR);
        let mut names = Vec::new();
        for entry in fs::read_dir(&state).map_err(io_err("list", &state))? {
            let entry = entry.map_err(io_err("list", &state))?;
            let name = entry
                .file_name()
                .to_str()
                .and_then(|n| CertName::parse(n).ok());
            if let Some(name) = name
                && entry.file_type().is_ok_and(|t| t.is_dir())
            {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Refuses a `DIR/<name>` that is not a symlink: it holds someone
    /// else's files, which certfleet must not delete or shadow.
    fn check_link_free(&self, name: &CertName) -> Result<Option<PathBuf>, WatchError> {
        let link = self.link(name);
        match fs::symlink_metadata(&link) {
            Ok(m) if m.file_type().is_symlink() => Ok(Some(
                fs::read_link(&link).map_err(io_err("read link", &link))?,
            )),
            Ok(_) => Err(WatchError::Occupied { path: link }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("inspect", &link)(e)),
        }
    }

    /// What is on disk for a name: the state of the version `DIR/<name>`
    /// points at, if the link, the state file and all four files are there.
    ///
    /// # Errors
    /// [`WatchError::Occupied`] if `DIR/<name>` is not a symlink.
    pub(crate) fn current(&self, name: &CertName) -> Result<Option<OnDisk>, WatchError> {
        if self.check_link_free(name)?.is_none() {
            return Ok(None);
        }
        let link = self.link(name);
        let Ok(bytes) = fs::read(link.join(STATE_FILE)) else {
            return Ok(None);
        };
        let Ok(state) = serde_json::from_slice::<OnDisk>(&bytes) else {
            return Ok(None);
        };
        let complete = PEM_FILES
            .iter()
            .filter(|f| !(state.no_key && **f == KEY_FILE))
            .all(|f| link.join(f).is_file());
        if &state.name != name || !complete {
            return Ok(None);
        }
        Ok(Some(state))
    }

    /// Writes a version and points `DIR/<name>` at it (see the module doc).
    /// Returns `DIR/<name>`.
    ///
    /// # Errors
    /// [`WatchError::Occupied`] if `DIR/<name>` is not a symlink,
    /// [`WatchError::Bundle`] for a version id that is not a safe directory
    /// name, I/O otherwise. On error, `DIR/<name>` is unchanged.
    pub(crate) fn write(&self, m: &Material) -> Result<PathBuf, WatchError> {
        check_version(&m.version).map_err(|reason| WatchError::Bundle {
            name: m.name.clone(),
            version: m.version.clone(),
            reason,
        })?;
        let previous = self.check_link_free(&m.name)?;
        let state_dir = self.state_dir(&m.name);
        match make_dir(&state_dir) {
            Ok(()) => sync_dir(&self.root.join(STATE_DIR))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create", &state_dir)(e)),
        }

        // 1. The whole version, in a directory nobody reads yet.
        let staging = state_dir.join(format!("{STAGING_PREFIX}{}-{}", m.version, unique_suffix()));
        make_dir(&staging).map_err(io_err("create", &staging))?;
        if let Err(e) = self.fill(&staging, m) {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }

        // 2. Under its version name. The link's current target is kept as is
        // (a repair of the current version gets a new directory name).
        let previous_dir = previous
            .as_ref()
            .and_then(|target| self.own_version_dir(&m.name, target));
        let mut final_name = m.version.clone();
        if previous_dir.as_deref() == Some(final_name.as_str()) {
            final_name = format!("{}.{}", m.version, unique_suffix());
        }
        let final_dir = state_dir.join(&final_name);
        if fs::symlink_metadata(&final_dir).is_ok() {
            fs::remove_dir_all(&final_dir).map_err(io_err("remove", &final_dir))?;
        }
        if let Err(e) = fs::rename(&staging, &final_dir) {
            let _ = fs::remove_dir_all(&staging);
            return Err(io_err("rename", &staging)(e));
        }
        sync_dir(&state_dir)?;

        // 3. The switch: a new symlink renamed over DIR/<name>.
        let link = self.link(&m.name);
        let tmp_link = state_dir.join(LINK_TMP);
        match fs::remove_file(&tmp_link) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &tmp_link)(e)),
        }
        let target = Path::new(STATE_DIR).join(m.name.as_str()).join(&final_name);
        std::os::unix::fs::symlink(&target, &tmp_link).map_err(io_err("symlink", &tmp_link))?;
        // Someone may have put a real directory there since the check above.
        self.check_link_free(&m.name)?;
        fs::rename(&tmp_link, &link).map_err(io_err("rename", &tmp_link))?;
        sync_dir(&self.root)?;
        sync_dir(&state_dir)?;

        // 4. Keep the new and the previous version, delete the rest.
        self.prune(&m.name, &final_name, previous_dir.as_deref());
        Ok(link)
    }

    fn fill(&self, dir: &Path, m: &Material) -> Result<(), WatchError> {
        let mut fullchain = m.cert_pem.clone();
        if !fullchain.is_empty() && !fullchain.ends_with('\n') {
            fullchain.push('\n');
        }
        fullchain.push_str(&m.chain_pem);
        write_new(&dir.join(CERT_FILE), m.cert_pem.as_bytes(), PUBLIC_MODE)?;
        write_new(&dir.join(CHAIN_FILE), m.chain_pem.as_bytes(), PUBLIC_MODE)?;
        write_new(&dir.join(FULLCHAIN_FILE), fullchain.as_bytes(), PUBLIC_MODE)?;
        if let Some(key_pem) = &m.key_pem {
            write_new(&dir.join(KEY_FILE), key_pem.expose().as_bytes(), KEY_MODE)?;
        }
        let state = OnDisk {
            schema: STATE_SCHEMA.to_string(),
            name: m.name.clone(),
            version: m.version.clone(),
            serial: m.serial.clone(),
            written_at_ms: certfleet_common::now_ms(),
            no_key: m.key_pem.is_none(),
        };
        let json = serde_json::to_vec_pretty(&state).map_err(|e| WatchError::Io {
            op: "encode",
            path: dir.join(STATE_FILE),
            source: io::Error::other(e),
        })?;
        write_new(&dir.join(STATE_FILE), &json, PUBLIC_MODE)?;
        sync_dir(dir)
    }

    /// The version directory name a link target points at, if it is one of
    /// ours (`.certfleet/<name>/<dir>`).
    fn own_version_dir(&self, name: &CertName, target: &Path) -> Option<String> {
        let absolute = if target.is_absolute() {
            target.to_path_buf()
        } else {
            self.root.join(target)
        };
        if absolute.parent() != Some(self.state_dir(name).as_path()) {
            return None;
        }
        absolute.file_name()?.to_str().map(str::to_string)
    }

    /// Deletes version and staging directories other than `keep`; files
    /// (the hook marker) are left alone. Failures are only logged: the new
    /// version is in place already.
    fn prune(&self, name: &CertName, current: &str, previous: Option<&str>) {
        let state_dir = self.state_dir(name);
        let Ok(entries) = fs::read_dir(&state_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(dir_name) = file_name.to_str() else {
                continue;
            };
            if dir_name == current || Some(dir_name) == previous {
                continue;
            }
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if let Err(e) = fs::remove_dir_all(entry.path()) {
                tracing::warn!(cert_name = %name, path = %entry.path().display(), error = %e,
                    "cannot delete an old certificate version");
            }
        }
    }
}

/// Runs blocking file work on Tokio's blocking pool. The work runs to the
/// end even if the caller is dropped (a shutdown never interrupts a write
/// half-way).
///
/// # Errors
/// The closure's error, or [`WatchError::Task`] if it panicked.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, WatchError>
where
    F: FnOnce() -> Result<T, WatchError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| WatchError::Task(e.to_string()))?
}

#[cfg(test)]
mod tests;
