//! exec provider: an operator's command publishes and withdraws the TXT values.
//!
//! This module owns running the hook, following lego's `exec` provider contract
//! (<https://go-acme.github.io/lego/dns/exec/>):
//!
//! ```text
//! COMMAND [ARGS...] present _acme-challenge.my.example.org. MsijOYZxqyjGnFGwhjrhfg-Xgbl5r68WPda0J9EgqqI
//! COMMAND [ARGS...] cleanup _acme-challenge.my.example.org. MsijOYZxqyjGnFGwhjrhfg-Xgbl5r68WPda0J9EgqqI
//! ```
//!
//! The name is absolute (final dot) and is the one after CNAME following; the value is
//! the TXT value itself. `present` must add that value and keep others at the name;
//! `cleanup` must remove only that value and succeed when it is absent.
//!
//! Exit status: 0 is success; **2 is a permanent failure** (bad credentials, unknown zone:
//! the job fails at once, [`DnsError::Rejected`]); any other status, death by a signal or
//! the timeout is transient ([`DnsError::Retryable`]: the job is retried later). The last
//! 300 bytes of the hook's stderr (else of its stdout) are put into the error message, so
//! a hook must not print secrets.
//!
//! Environment: the hook runs with a clean environment holding only `PATH`, `HOME`, `LANG`
//! and the variables named in [`ExecConfig::pass_env`], taken from the worker's environment
//! (or from [`ExecConfig::base_env`] when set). Nothing else of the worker's environment
//! (broker, Redis, S3 credentials) reaches the hook. It has no standard input.
//!
//! Processes: the hook is the leader of a new process group. After [`ExecConfig::timeout`]
//! the group gets SIGTERM, then SIGKILL after [`ExecConfig::kill_grace`]; when the hook exits,
//! anything it left running in its group is killed too.

use std::collections::HashMap;
use std::fmt;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use certfleet_common::child::{GroupSignal as Signal, ProcessGroup, isolated};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::provider::{Dns01Provider, DnsError, DnsFuture, RetryKind};

/// Variables every hook gets (when the base environment has them).
pub const ALWAYS_PASSED: [&str; 3] = ["PATH", "HOME", "LANG"];

/// `PATH` when the base environment has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Bytes of the hook's output quoted in an error.
const TAIL_BYTES: usize = 300;

/// Exit status meaning "permanent failure, do not retry".
pub const EXIT_PERMANENT: i32 = 2;

/// Settings of an [`ExecProvider`].
#[derive(Clone)]
pub struct ExecConfig {
    /// The program run (absolute path, or a name looked up in the hook's `PATH`).
    pub command: PathBuf,
    /// Arguments put before `present|cleanup FQDN VALUE` (e.g. a script for an interpreter).
    pub args: Vec<String>,
    /// Longest run of one call.
    pub timeout: Duration,
    /// Wait between SIGTERM and SIGKILL of the process group after the timeout.
    pub kill_grace: Duration,
    /// Names of further variables passed from the base environment.
    pub pass_env: Vec<String>,
    /// The environment the passed variables are taken from; `None` is the worker's own
    /// environment, read at each run (tests inject a map instead).
    pub base_env: Option<HashMap<String, String>>,
    /// Propagation wait this backend wants, if not the caller's default.
    pub propagation_timeout: Option<Duration>,
}

impl ExecConfig {
    /// Defaults: no extra arguments, 60 s timeout, 2 s grace, only `PATH`/`HOME`/`LANG`.
    pub fn new(command: impl Into<PathBuf>) -> Self {
        Self {
            command: command.into(),
            args: Vec::new(),
            timeout: Duration::from_secs(60),
            kill_grace: Duration::from_secs(2),
            pass_env: Vec::new(),
            base_env: None,
            propagation_timeout: None,
        }
    }
}

impl fmt::Debug for ExecConfig {
    /// Shows the names in `base_env`, never their values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let base_env = self.base_env.as_ref().map(|env| {
            let mut names: Vec<&String> = env.keys().collect();
            names.sort();
            names
        });
        f.debug_struct("ExecConfig")
            .field("command", &self.command)
            .field("args", &self.args)
            .field("timeout", &self.timeout)
            .field("kill_grace", &self.kill_grace)
            .field("pass_env", &self.pass_env)
            .field("base_env_names", &base_env)
            .finish_non_exhaustive()
    }
}

/// exec dns-01 provider; see the module documentation.
#[derive(Debug)]
pub struct ExecProvider {
    config: ExecConfig,
}

/// How a run ended.
enum Outcome {
    Exited(ExitStatus),
    TimedOut,
}

impl ExecProvider {
    /// Check the configuration.
    pub fn new(config: ExecConfig) -> Result<Self, DnsError> {
        if config.command.as_os_str().is_empty() {
            return Err(DnsError::Config("exec: no command configured".into()));
        }
        if let Some(bad) = config
            .pass_env
            .iter()
            .find(|n| n.is_empty() || n.contains(['=', '\0']))
        {
            return Err(DnsError::Config(format!(
                "exec: {bad:?} is not an environment variable name"
            )));
        }
        if config.timeout.is_zero() {
            return Err(DnsError::Config("exec: timeout must be positive".into()));
        }
        Ok(Self { config })
    }

    /// The hook's environment: `PATH`, `HOME`, `LANG` and `pass_env`, from the base.
    pub fn hook_env(&self) -> HashMap<String, String> {
        let lookup = |name: &str| match &self.config.base_env {
            Some(env) => env.get(name).cloned(),
            None => std::env::var(name).ok(),
        };
        let mut env = HashMap::new();
        for name in ALWAYS_PASSED
            .iter()
            .copied()
            .chain(self.config.pass_env.iter().map(String::as_str))
        {
            if let Some(value) = lookup(name) {
                env.insert(name.to_owned(), value);
            }
        }
        env.entry("PATH".to_owned())
            .or_insert_with(|| DEFAULT_PATH.to_owned());
        env
    }

    async fn run(&self, action: &str, fqdn: &str, value: &str) -> Result<(), DnsError> {
        if value.is_empty() {
            return Err(DnsError::Config("empty TXT value".to_owned()));
        }
        let command = self.config.command.display().to_string();
        let what = format!("exec hook {command} {action} {fqdn}");
        let mut child = isolated(
            tokio::process::Command::new(&self.config.command)
                .args(&self.config.args)
                .args([action, fqdn, value])
                .env_clear()
                .envs(self.hook_env()),
        )
        .spawn()
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => DnsError::Config(format!("{what}: command not found")),
            ErrorKind::PermissionDenied => {
                DnsError::Config(format!("{what}: command is not executable"))
            }
            _ => DnsError::retryable(
                RetryKind::ServerFailure,
                format!("{what}: cannot start: {e}"),
            ),
        })?;
        let group = ProcessGroup::of(&child);
        let stdout = child.stdout.take().map(|s| tokio::spawn(read_tail(s)));
        let stderr = child.stderr.take().map(|s| tokio::spawn(read_tail(s)));

        let outcome = match tokio::time::timeout(self.config.timeout, child.wait()).await {
            Ok(Ok(status)) => Outcome::Exited(status),
            Ok(Err(e)) => {
                group.signal(Signal::KILL, "the exec hook");
                return Err(DnsError::retryable(
                    RetryKind::ServerFailure,
                    format!("{what}: waiting for the hook failed: {e}"),
                ));
            }
            Err(_) => {
                warn!(%what, timeout = ?self.config.timeout, "exec hook timed out; terminating its process group");
                group.signal(Signal::TERM, "the exec hook");
                let _ = tokio::time::timeout(self.config.kill_grace, child.wait()).await;
                Outcome::TimedOut
            }
        };
        // Whatever is left of the group (children the hook left behind, or all of it after
        // a timeout) is killed; then the hook itself is reaped.
        group.signal(Signal::KILL, "the exec hook");
        if matches!(outcome, Outcome::TimedOut) {
            // In case the group could not be signalled: the hook itself at least.
            let _ = child.start_kill();
        }
        let _ = child.wait().await;
        let output = tail_text(collect(stderr).await, collect(stdout).await);

        match outcome {
            Outcome::TimedOut => Err(DnsError::retryable(
                RetryKind::Timeout,
                format!(
                    "{what}: no result within {:?}; its process group was killed{output}",
                    self.config.timeout
                ),
            )),
            Outcome::Exited(status) if status.success() => {
                info!(%command, action, %fqdn, "exec hook succeeded");
                Ok(())
            }
            Outcome::Exited(status) => match status.code() {
                Some(EXIT_PERMANENT) => Err(DnsError::Rejected(format!(
                    "{what}: exit status {EXIT_PERMANENT} (permanent failure){output}"
                ))),
                Some(code) => Err(DnsError::retryable(
                    RetryKind::ServerFailure,
                    format!("{what}: exit status {code}{output}"),
                )),
                None => Err(DnsError::retryable(
                    RetryKind::ServerFailure,
                    format!("{what}: killed by a signal ({status}){output}"),
                )),
            },
        }
    }
}

impl Dns01Provider for ExecProvider {
    fn name(&self) -> &'static str {
        "exec"
    }

    fn present<'a>(&'a self, fqdn: &'a str, _zone: &'a str, value: &'a str) -> DnsFuture<'a, ()> {
        Box::pin(self.run("present", fqdn, value))
    }

    fn cleanup<'a>(&'a self, fqdn: &'a str, _zone: &'a str, value: &'a str) -> DnsFuture<'a, ()> {
        Box::pin(self.run("cleanup", fqdn, value))
    }

    fn propagation_timeout(&self) -> Option<Duration> {
        self.config.propagation_timeout
    }
}

/// Read a pipe to its end, keeping the last [`TAIL_BYTES`] bytes.
async fn read_tail<R: AsyncRead + Unpin>(mut pipe: R) -> Vec<u8> {
    let mut tail = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > TAIL_BYTES {
                    tail.drain(..tail.len() - TAIL_BYTES);
                }
            }
        }
    }
    tail
}

/// The reader's result; a reader still blocked after a second (a grandchild that left the
/// group still holds the pipe) is abandoned.
async fn collect(reader: Option<JoinHandle<Vec<u8>>>) -> Vec<u8> {
    let Some(mut handle) = reader else {
        return Vec::new();
    };
    match tokio::time::timeout(Duration::from_secs(1), &mut handle).await {
        Ok(Ok(tail)) => tail,
        _ => {
            handle.abort();
            Vec::new()
        }
    }
}

/// `": stderr: …"` from the stderr tail, else the stdout tail, else nothing.
fn tail_text(stderr: Vec<u8>, stdout: Vec<u8>) -> String {
    let (label, bytes) = if stderr.iter().any(|b| !b.is_ascii_whitespace()) {
        ("stderr", stderr)
    } else {
        ("stdout", stdout)
    };
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim_start_matches('\u{FFFD}').trim();
    if text.is_empty() {
        return String::new();
    }
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!(": {label}: {one_line}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_is_allowlisted() {
        let mut c = ExecConfig::new("/bin/true");
        c.pass_env = vec!["DNS_TOKEN".into(), "ABSENT".into()];
        c.base_env = Some(HashMap::from([
            ("HOME".to_owned(), "/root".to_owned()),
            ("DNS_TOKEN".to_owned(), "t".to_owned()),
            ("AWS_SECRET_ACCESS_KEY".to_owned(), "leak-me".to_owned()),
        ]));
        let debug = format!("{c:?}");
        assert!(!debug.contains("leak-me") && debug.contains("AWS_SECRET_ACCESS_KEY"));
        let env = ExecProvider::new(c).unwrap().hook_env();
        let mut names: Vec<&str> = env.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["DNS_TOKEN", "HOME", "PATH"]);
        assert_eq!(env["PATH"], DEFAULT_PATH);
    }

    #[test]
    fn bad_config() {
        let mut c = ExecConfig::new("");
        assert!(ExecProvider::new(c.clone()).is_err());
        c.command = "/bin/true".into();
        c.pass_env = vec!["A=B".into()];
        assert!(ExecProvider::new(c).is_err());
    }

    #[test]
    fn tails() {
        assert_eq!(
            tail_text(b" \n".to_vec(), b"out\n".to_vec()),
            ": stdout: out"
        );
        assert_eq!(
            tail_text(b"e1\ne2\n".to_vec(), b"out".to_vec()),
            ": stderr: e1 e2"
        );
        assert_eq!(tail_text(Vec::new(), Vec::new()), "");
    }
}
