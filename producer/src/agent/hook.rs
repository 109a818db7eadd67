//! The `--on-change` hook: run once per change, retried until it succeeds,
//! never lost.
//!
//! Before a new version is switched in (and so before its event is acked),
//! a marker `DIR/.certfleet/<name>/hook-pending` is written atomically with
//! what the hook is to be told. A task per name then runs
//! `sh -c CMD` with `CERTFLEET_CERT_NAME`, `CERTFLEET_CERT_DIR`,
//! `CERTFLEET_CERT_VERSION`, `CERTFLEET_CERT_SERIAL` and `CERTFLEET_EVENT`
//! set, and deletes the marker only once the command exited 0.
//!
//! The hook gets a clean environment ([`HookEnv`]): those variables, `PATH`,
//! `HOME`, `LANG`, and only the names the operator allowed with
//! `--hook-env`; never the broker URL, Redis URL, S3 credentials or the
//! encryption key certfleet itself runs with. It runs in a process group of
//! its own; one still running after [`HOOK_TIMEOUT`] gets SIGTERM, then
//! after [`KILL_GRACE`] SIGKILL, both sent to the whole group, so a reload
//! script's children (`sleep 100 &`) do not outlive it. A failure is
//! logged with the exit status and the end of stderr and retried after
//! [`RETRY_FIRST`], doubling up to [`RETRY_MAX`]; a newer change of the same
//! name retries at once, with the newer values. After a restart, markers
//! left on disk are picked up again ([`Hooks::resume`]). Each name has its
//! own task, so a hook that keeps failing for one name delays nothing else.
//!
//! The marker is written before the files are switched (both under one
//! lock), so a crash between the two runs the hook once too often, never
//! once too few; and a task reads the marker under the same lock, so it never
//! runs the hook for a version whose files are not in place yet.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use certfleet_common::CertName;
use certfleet_common::child::{GroupSignal as Signal, ProcessGroup, isolated};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::sync::{Mutex, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::error::WatchError;
use super::files::{self, CertDir, OnDisk};

/// The marker's file name, in `DIR/.certfleet/<name>/`.
pub(crate) const MARKER_FILE: &str = "hook-pending";
/// First retry delay of a failed hook.
pub(crate) const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest retry delay: a webserver that cannot reload for minutes should
/// still pick up the certificate within a minute of being fixed.
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(60);
/// A hook still running after this long is killed and counts as failed (a
/// reload that hangs must not hold the name's updates back forever).
pub(crate) const HOOK_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a running hook may go on after shutdown was asked for; the
/// marker stays, so it runs again on the next start if it was cut short.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Hooks running at once (a catch-up after downtime may change many names;
/// a handful of parallel reloads is plenty).
pub(crate) const MAX_PARALLEL: usize = 4;
/// How long a timed-out hook's process group has between SIGTERM and
/// SIGKILL.
pub(crate) const KILL_GRACE: Duration = Duration::from_secs(2);
/// How long the hook's output is still read after it exited: a background
/// child it left behind may hold the pipes open.
const PIPE_GRACE: Duration = Duration::from_secs(1);
/// How much of a failed hook's stderr is logged.
const STDERR_TAIL: usize = 1000;
/// How much of each output stream is kept while reading it.
const OUTPUT_KEEP: usize = 16 * 1024;
/// Variables a hook always inherits from certfleet's environment.
pub(crate) const ALWAYS_PASSED: [&str; 3] = ["PATH", "HOME", "LANG"];
/// `PATH` for a hook when certfleet itself has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Prefixes of names `--hook-env` refuses: certfleet's own settings (the
/// broker and Redis URLs with their passwords, the encryption key and its
/// file, the config file) and the AWS SDK's (S3 credentials). The hook's
/// own `CERTFLEET_CERT_*` and `CERTFLEET_EVENT` are set by certfleet.
pub(crate) const REFUSED_PREFIXES: [&str; 2] = ["CERTFLEET_", "AWS_"];

/// The part of certfleet's environment a hook inherits: [`ALWAYS_PASSED`]
/// and the names allowed with `--hook-env`, read once when `watch` starts.
/// Everything else (credentials above all) is left out.
#[derive(Clone, Default)]
pub(crate) struct HookEnv {
    vars: Vec<(String, OsString)>,
}

impl std::fmt::Debug for HookEnv {
    /// Names only: an allowed variable may still be private.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.vars.iter().map(|(n, _)| n))
            .finish()
    }
}

impl HookEnv {
    /// Whether `name` may be passed to hooks with `--hook-env`.
    ///
    /// # Errors
    /// Why not: not a variable name, or one of [`REFUSED_PREFIXES`].
    pub(crate) fn check_name(name: &str) -> Result<(), String> {
        let mut chars = name.chars();
        let valid = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err("not an environment variable name (A-Z a-z 0-9 _)".into());
        }
        let upper = name.to_ascii_uppercase();
        if let Some(p) = REFUSED_PREFIXES.iter().find(|p| upper.starts_with(**p)) {
            return Err(format!(
                "{p}* variables carry certfleet's or the AWS SDK's settings and credentials, never passed to hooks"
            ));
        }
        Ok(())
    }

    /// [`ALWAYS_PASSED`] and `allowed` (already checked with
    /// [`HookEnv::check_name`]) as `lookup` gives them; unset ones are left
    /// out.
    pub(crate) fn from_lookup(
        allowed: &[String],
        lookup: impl Fn(&str) -> Option<OsString>,
    ) -> Self {
        let mut vars: Vec<(String, OsString)> = Vec::new();
        for name in ALWAYS_PASSED
            .iter()
            .copied()
            .chain(allowed.iter().map(String::as_str))
        {
            if vars.iter().any(|(n, _)| n == name) {
                continue;
            }
            if let Some(value) = lookup(name) {
                vars.push((name.to_string(), value));
            }
        }
        Self { vars }
    }

    /// From this process's environment. Besides `common::config` (and the
    /// AWS SDK's credential chain), this is the one place the agent reads
    /// the environment: only to hand these names on.
    pub(crate) fn from_process(allowed: &[String]) -> Self {
        Self::from_lookup(allowed, |name| std::env::var_os(name))
    }

    /// The variables, `PATH` defaulted.
    fn pairs(&self) -> impl Iterator<Item = (&str, &std::ffi::OsStr)> {
        let default_path = (!self.vars.iter().any(|(n, _)| n == "PATH"))
            .then_some(("PATH", std::ffi::OsStr::new(DEFAULT_PATH)));
        self.vars
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_os_str()))
            .chain(default_path)
    }
}

/// What the hook of one pending change is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Pending {
    /// `issued`, `renewed` or `sync` (found on start or reconnect).
    pub(crate) event: String,
    /// Storage version now on disk.
    pub(crate) version: String,
    /// Serial, hex.
    pub(crate) serial: String,
    /// When the change was recorded (Unix ms), so markers differ per change.
    pub(crate) since_ms: i64,
}

fn marker_path(dir: &CertDir, name: &CertName) -> PathBuf {
    dir.state_dir(name).join(MARKER_FILE)
}

/// Reads a name's marker. A marker that does not parse (written by hand?)
/// still means "run the hook": it gets the values of the version on disk.
fn read_marker(dir: &CertDir, name: &CertName) -> Result<Option<Pending>, WatchError> {
    let path = marker_path(dir, name);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(WatchError::Io {
                op: "read",
                path,
                source,
            });
        }
    };
    if let Ok(p) = serde_json::from_slice::<Pending>(&bytes) {
        return Ok(Some(p));
    }
    tracing::warn!(cert_name = %name, path = %path.display(), "unreadable hook marker; running the hook for the version on disk");
    let on_disk: Option<OnDisk> = dir.current(name).ok().flatten();
    Ok(Some(Pending {
        event: "sync".into(),
        version: on_disk
            .as_ref()
            .map(|s| s.version.clone())
            .unwrap_or_default(),
        serial: on_disk.map(|s| s.serial).unwrap_or_default(),
        since_ms: 0,
    }))
}

fn write_marker(dir: &CertDir, name: &CertName, pending: &Pending) -> Result<(), WatchError> {
    let path = marker_path(dir, name);
    std::fs::create_dir_all(dir.state_dir(name)).map_err(|source| WatchError::Io {
        op: "create",
        path: dir.state_dir(name),
        source,
    })?;
    let json = serde_json::to_vec_pretty(pending).map_err(|e| WatchError::Io {
        op: "encode",
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    files::replace_file(&path, &json, 0o644)
}

fn remove_marker(dir: &CertDir, name: &CertName) -> Result<(), WatchError> {
    let path = marker_path(dir, name);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(WatchError::Io {
            op: "remove",
            path,
            source,
        }),
    }
}

/// The delay before retry number `failures` (1-based): `first`, doubling,
/// capped at `max`.
pub(crate) fn backoff(failures: u32, first: Duration, max: Duration) -> Duration {
    let shift = failures.saturating_sub(1).min(20);
    first.saturating_mul(1 << shift).min(max)
}

/// How a hook run failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HookFailure {
    /// Exit status, or why it did not run.
    pub(crate) status: String,
    /// The end of its stderr.
    pub(crate) stderr_tail: String,
    /// Its exit code, when it exited with one.
    pub(crate) exit_code: Option<i32>,
}

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_end();
    let start = text.len().saturating_sub(STDERR_TAIL);
    let start = (start..=text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].to_string()
}

/// Kills the hook's process group when dropped while armed: a hook cut
/// short (shutdown past [`SHUTDOWN_GRACE`] drops the run) leaves nothing
/// behind. Disarmed once the hook exited on its own, so a daemon it started
/// on purpose is left alone.
struct GroupGuard(ProcessGroup);

impl GroupGuard {
    /// Kills the group now and disarms the guard.
    fn kill(&mut self) {
        std::mem::replace(&mut self.0, ProcessGroup::none()).signal(Signal::KILL, "a hook");
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads a pipe to its end into `out`, keeping the last [`OUTPUT_KEEP`]
/// bytes.
async fn read_into<R: AsyncRead + Unpin>(mut pipe: R, out: Arc<std::sync::Mutex<Vec<u8>>>) {
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let Ok(mut kept) = out.lock() else { break };
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > OUTPUT_KEEP {
                    let cut = kept.len() - OUTPUT_KEEP;
                    kept.drain(..cut);
                }
            }
        }
    }
}

/// A pipe being read on its own task, and what it gave so far.
type Reader = (tokio::task::JoinHandle<()>, Arc<std::sync::Mutex<Vec<u8>>>);

fn spawn_reader<R: AsyncRead + Unpin + Send + 'static>(pipe: Option<R>) -> Option<Reader> {
    pipe.map(|p| {
        let out = Arc::new(std::sync::Mutex::new(Vec::new()));
        (tokio::spawn(read_into(p, out.clone())), out)
    })
}

/// What a reader collected, waiting at most [`PIPE_GRACE`] for its end.
async fn collected(reader: Option<Reader>) -> Vec<u8> {
    let Some((mut task, out)) = reader else {
        return Vec::new();
    };
    if tokio::time::timeout(PIPE_GRACE, &mut task).await.is_err() {
        task.abort();
    }
    out.lock().map(|o| o.clone()).unwrap_or_default()
}

/// Runs the hook once for a pending change, in a clean environment (`env`
/// plus the hook's own variables) and a process group of its own.
pub(crate) async fn run_once(
    command: &str,
    cert_dir: &Path,
    name: &CertName,
    pending: &Pending,
    env: &HookEnv,
    timeout: Duration,
) -> Result<(), HookFailure> {
    let mut child = isolated(
        tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .env_clear()
            .envs(env.pairs())
            .env("CERTFLEET_CERT_NAME", name.as_str())
            .env("CERTFLEET_CERT_DIR", cert_dir)
            .env("CERTFLEET_CERT_VERSION", &pending.version)
            .env(
                "CERTFLEET_CERT_SERIAL",
                certfleet_common::serial_display(&pending.serial),
            )
            .env("CERTFLEET_EVENT", &pending.event),
    )
    .spawn()
    .map_err(|e| HookFailure {
        status: format!("could not start sh: {e}"),
        stderr_tail: String::new(),
        exit_code: None,
    })?;
    // The hook leads its group: its pid is the group id.
    let group = ProcessGroup::of(&child);
    let mut guard = GroupGuard(group);
    let stdout = spawn_reader(child.stdout.take());
    let stderr = spawn_reader(child.stderr.take());
    let status: ExitStatus = match tokio::time::timeout(timeout, child.wait()).await {
        Err(_) => {
            group.signal(Signal::TERM, "a hook");
            let _ = tokio::time::timeout(KILL_GRACE, child.wait()).await;
            guard.kill();
            // In case the group could not be signalled: the hook at least.
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(HookFailure {
                status: format!("still running after {timeout:?}, killed with its process group"),
                stderr_tail: tail(&collected(stderr).await),
                exit_code: None,
            });
        }
        Ok(Err(e)) => {
            guard.kill();
            return Err(HookFailure {
                status: format!("could not wait for it: {e}"),
                stderr_tail: String::new(),
                exit_code: None,
            });
        }
        Ok(Ok(status)) => status,
    };
    guard.0 = ProcessGroup::none();
    let out = collected(stdout).await;
    let err = collected(stderr).await;
    if !out.is_empty() {
        tracing::debug!(cert_name = %name, stdout = %tail(&out), "hook output");
    }
    if status.success() {
        Ok(())
    } else {
        Err(HookFailure {
            status: status.to_string(),
            stderr_tail: tail(&err),
            exit_code: status.code(),
        })
    }
}

/// The hook runner of one watch.
#[derive(Clone)]
pub(crate) struct Hooks {
    inner: Arc<Inner>,
}

struct Inner {
    command: String,
    env: HookEnv,
    dir: CertDir,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    parallel: Semaphore,
    retry_first: Duration,
    retry_max: Duration,
    timeout: Duration,
    /// `watch --metrics-listen`: each run's outcome per name.
    metrics: Option<Arc<super::metrics::AgentMetrics>>,
    /// Each run's outcome, reported to the fleet.
    reporter: Option<super::report::Reporter>,
    /// One entry per name whose task is running, to wake it on a newer
    /// change. The lock also orders marker writes, file switches and marker
    /// reads (see the module doc).
    tasks: Mutex<HashMap<CertName, Arc<Notify>>>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("command", &self.inner.command)
            .field("env", &self.inner.env)
            .finish_non_exhaustive()
    }
}

impl Hooks {
    /// A runner for `command` with environment `env`; its tasks stop on
    /// `shutdown`.
    pub(crate) fn new(
        command: String,
        env: HookEnv,
        dir: CertDir,
        shutdown: CancellationToken,
    ) -> Self {
        Self::with_timing(
            command,
            env,
            dir,
            shutdown,
            RETRY_FIRST,
            RETRY_MAX,
            HOOK_TIMEOUT,
        )
    }

    /// Like [`Hooks::new`] with other delays (tests).
    pub(crate) fn with_timing(
        command: String,
        env: HookEnv,
        dir: CertDir,
        shutdown: CancellationToken,
        retry_first: Duration,
        retry_max: Duration,
        timeout: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                command,
                env,
                dir,
                shutdown,
                tracker: TaskTracker::new(),
                parallel: Semaphore::new(MAX_PARALLEL),
                retry_first,
                retry_max,
                timeout,
                metrics: None,
                reporter: None,
                tasks: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Reports each run's outcome to `metrics` (before any hook ran).
    pub(crate) fn with_metrics(mut self, metrics: Arc<super::metrics::AgentMetrics>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.metrics = Some(metrics);
        }
        self
    }

    /// Reports each run's outcome to the fleet (before any hook ran).
    pub(crate) fn with_reporter(mut self, reporter: super::report::Reporter) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.reporter = Some(reporter);
        }
        self
    }

    /// Whether a change of `name` waits for its hook.
    pub(crate) fn is_pending(&self, name: &CertName) -> bool {
        marker_path(&self.inner.dir, name).exists()
    }

    /// Records a change and switches its files: writes the marker, runs
    /// `switch` (the file write), and starts or wakes the name's hook task.
    /// If `switch` fails, the marker is put back as it was.
    ///
    /// # Errors
    /// Writing the marker, or `switch`'s error.
    pub(crate) async fn record<T, F>(
        &self,
        name: &CertName,
        pending: Pending,
        switch: F,
    ) -> Result<T, WatchError>
    where
        F: FnOnce() -> Result<T, WatchError> + Send + 'static,
        T: Send + 'static,
    {
        let mut tasks = self.inner.tasks.lock().await;
        let dir = self.inner.dir.clone();
        let n = name.clone();
        let result = files::blocking(move || {
            let before = read_marker(&dir, &n)?;
            write_marker(&dir, &n, &pending)?;
            match switch() {
                Ok(t) => Ok(Ok(t)),
                Err(e) => {
                    let restored = match before {
                        Some(p) => write_marker(&dir, &n, &p),
                        None => remove_marker(&dir, &n),
                    };
                    if let Err(r) = restored {
                        tracing::warn!(cert_name = %n, error = %r, "cannot restore the hook marker");
                    }
                    Ok(Err(e))
                }
            }
        })
        .await?;
        let out = result?;
        self.wake(&mut tasks, name);
        Ok(out)
    }

    /// Starts a task for every marker left on disk (after a restart).
    /// Returns how many there were.
    ///
    /// # Errors
    /// The state directory cannot be listed.
    pub(crate) async fn resume(&self) -> Result<usize, WatchError> {
        let dir = self.inner.dir.clone();
        let pending = files::blocking(move || {
            let mut out = Vec::new();
            for name in dir.state_names()? {
                if marker_path(&dir, &name).exists() {
                    out.push(name);
                }
            }
            Ok(out)
        })
        .await?;
        let mut tasks = self.inner.tasks.lock().await;
        for name in &pending {
            tracing::info!(cert_name = %name, "running a hook left pending by an earlier run");
            self.wake(&mut tasks, name);
        }
        Ok(pending.len())
    }

    /// Waits for every hook task to end (they end on shutdown).
    pub(crate) async fn wait(&self) {
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }

    fn wake(&self, tasks: &mut HashMap<CertName, Arc<Notify>>, name: &CertName) {
        if let Some(notify) = tasks.get(name) {
            notify.notify_one();
            return;
        }
        let notify = Arc::new(Notify::new());
        tasks.insert(name.clone(), notify.clone());
        let inner = self.inner.clone();
        let span = tracing::info_span!("hook", cert_name = %name);
        self.inner
            .tracker
            .spawn(drive(inner, name.clone(), notify).instrument(span));
    }
}

/// What a hook task finds when it looks at its marker.
enum Snapshot {
    /// No marker: nothing to do, the task ends.
    Done,
    /// Run the hook with these values.
    Run(Pending),
    /// The marker could not be read (I/O): try again after the backoff.
    Unreadable(WatchError),
}

/// Reads the marker under the lock: a task never runs the hook for a change
/// whose files are still being switched, and when there is no marker it
/// removes its entry in the same critical section, so no change is missed.
async fn take_snapshot(inner: &Inner, name: &CertName) -> Snapshot {
    let mut tasks = inner.tasks.lock().await;
    let dir = inner.dir.clone();
    let n = name.clone();
    match files::blocking(move || read_marker(&dir, &n)).await {
        Ok(Some(p)) => Snapshot::Run(p),
        Ok(None) => {
            tasks.remove(name);
            Snapshot::Done
        }
        Err(e) => Snapshot::Unreadable(e),
    }
}

/// Deletes the marker if it still holds the change the hook just ran for.
async fn complete(inner: &Inner, name: &CertName, ran: &Pending) -> Result<(), WatchError> {
    let _tasks = inner.tasks.lock().await;
    let dir = inner.dir.clone();
    let n = name.clone();
    let ran = ran.clone();
    files::blocking(move || {
        if read_marker(&dir, &n)?.as_ref() == Some(&ran) {
            remove_marker(&dir, &n)?;
        }
        Ok(())
    })
    .await
}

/// One name's hook task: run, retry with backoff, stop when the marker is
/// gone or on shutdown.
async fn drive(inner: Arc<Inner>, name: CertName, notify: Arc<Notify>) {
    let cert_dir = inner.dir.link(&name);
    let mut failures: u32 = 0;
    loop {
        if inner.shutdown.is_cancelled() {
            return;
        }
        let (pending, outcome) = match take_snapshot(&inner, &name).await {
            Snapshot::Done => return,
            Snapshot::Unreadable(e) => {
                let failure = HookFailure {
                    status: format!("not run, the marker could not be read: {e}"),
                    stderr_tail: String::new(),
                    exit_code: None,
                };
                (None, Err(failure))
            }
            Snapshot::Run(pending) => {
                let permit = tokio::select! {
                    p = inner.parallel.acquire() => p,
                    () = inner.shutdown.cancelled() => return,
                };
                let mut run = Box::pin(run_once(
                    &inner.command,
                    &cert_dir,
                    &name,
                    &pending,
                    &inner.env,
                    inner.timeout,
                ));
                let outcome = tokio::select! {
                    r = &mut run => r,
                    () = inner.shutdown.cancelled() => {
                        match tokio::time::timeout(SHUTDOWN_GRACE, &mut run).await {
                            Ok(r) => r,
                            Err(_) => return,
                        }
                    }
                };
                drop(permit);
                drop(run);
                (Some(pending), outcome)
            }
        };
        let version = pending
            .as_ref()
            .map(|p| p.version.as_str())
            .unwrap_or_default();
        if let (Some(m), Some(_)) = (&inner.metrics, &pending) {
            m.hook(&name, outcome.is_ok());
        }
        if let (Some(r), Some(p)) = (&inner.reporter, &pending) {
            use certfleet_common::report::{HookState, ReportKind};
            let (kind, hook) = match &outcome {
                Ok(()) => (
                    ReportKind::Loaded,
                    HookState {
                        outcome: "ok".into(),
                        exit_code: None,
                    },
                ),
                Err(f) => (
                    ReportKind::HookFailed,
                    HookState {
                        outcome: "failed".into(),
                        exit_code: f.exit_code,
                    },
                ),
            };
            r.send(kind, &name, &p.version, &p.serial, hook);
        }
        let failure = match (outcome, &pending) {
            (Ok(()), Some(pending)) => {
                if failures > 0 {
                    tracing::info!(version = %pending.version, attempts = failures + 1, "hook succeeded after retries");
                } else {
                    tracing::info!(version = %pending.version, event = %pending.event, "hook succeeded");
                }
                match complete(&inner, &name, pending).await {
                    Ok(()) => {
                        failures = 0;
                        continue;
                    }
                    // Not a hot loop: back off like a failure, then run again.
                    Err(e) => HookFailure {
                        status: format!(
                            "succeeded, but the marker could not be removed ({e}); it will run again"
                        ),
                        stderr_tail: String::new(),
                        exit_code: None,
                    },
                }
            }
            (Ok(()), None) => continue,
            (Err(f), _) => f,
        };
        failures = failures.saturating_add(1);
        let delay = backoff(failures, inner.retry_first, inner.retry_max);
        tracing::warn!(
            version = %version,
            status = %failure.status,
            stderr = %failure.stderr_tail,
            attempt = failures,
            retry_in = ?delay,
            "--on-change hook failed; will retry"
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = notify.notified() => failures = 0,
            () = inner.shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests;
