//! Operators' commands run in a process group of their own (the webserver
//! agent's `--on-change` hook, the dns-01 `exec` provider), so that a
//! command that times out, or is cut short, is ended with everything it
//! started: [`ProcessGroup`] signals the whole group.

use rustix::process::{Pid, Signal, kill_process_group};

/// Sets up `cmd` the way every operator's command runs: no stdin, stdout
/// and stderr piped (their tails go into messages), its own process group
/// (so [`ProcessGroup`] can end all of it), killed if its handle is dropped.
pub fn isolated(cmd: &mut tokio::process::Command) -> &mut tokio::process::Command {
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
}

/// The process group a child leads (spawned with `process_group(0)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessGroup(Option<Pid>);

impl ProcessGroup {
    /// The group `child` leads: its pid is the group id. Nothing when the
    /// child has exited already (or has a pid that cannot be a group).
    pub fn of(child: &tokio::process::Child) -> Self {
        Self(
            child
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .filter(|id| *id > 1)
                .and_then(Pid::from_raw),
        )
    }

    /// No group (a guard that was disarmed).
    pub fn none() -> Self {
        Self(None)
    }

    /// Sends `signal` to every process of the group; a group already gone
    /// is fine, any other failure is logged with `what`.
    pub fn signal(&self, signal: Signal, what: &str) {
        if let Some(pid) = self.0
            && let Err(e) = kill_process_group(pid, signal)
            && e != rustix::io::Errno::SRCH
        {
            tracing::warn!(pgid = pid.as_raw_nonzero().get(), error = %e, "cannot signal the process group of {what}");
        }
    }
}

pub use rustix::process::Signal as GroupSignal;
