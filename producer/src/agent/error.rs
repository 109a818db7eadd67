//! Why `pull` or `watch` could not do its work: [`WatchError`], which says
//! whether it was bad usage (exit 64) and, for the work `watch` retries,
//! whether trying again can help ([`Classify`]).

use std::path::PathBuf;

use certfleet_common::storage::StorageError;
use certfleet_common::{CertName, Classify, Disposition};

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
    /// A `--hook-env` name that may not be passed to hooks.
    #[error("--hook-env {name:?}: {reason}")]
    HookEnv {
        /// The name given.
        name: String,
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
    /// `--metrics-listen` cannot be served (address taken, not local).
    #[error("--metrics-listen {addr}: {source}")]
    MetricsListen {
        /// The address given.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// `DIR/<name>` exists and is not certfleet's symlink: someone else's
    /// files, left alone.
    #[error("{} exists and is not a symlink made by certfleet; move it away and run again (certfleet keeps each version under .certfleet/<name>/ beside it and points <name> at one)", path.display())]
    Occupied {
        /// `DIR/<name>`.
        path: PathBuf,
    },
    /// The version storage names cannot be installed: it failed a check
    /// (see `check`), or cannot be written out. Nothing is switched in.
    #[error("certificate {name}: version {version} in storage not installed: {reason}")]
    Bundle {
        /// Certificate name.
        name: CertName,
        /// The version the pointer names.
        version: String,
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
    /// Bad usage (exit 64): a bad `--queue` id, a bad `--filter`, a
    /// refused `--hook-env`, or a `--dir` that is not a writable directory.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            WatchError::QueueId { .. }
                | WatchError::Filter { .. }
                | WatchError::HookEnv { .. }
                | WatchError::Dir { .. }
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
            | WatchError::HookEnv { .. }
            | WatchError::Dir { .. }
            | WatchError::Occupied { .. }
            | WatchError::MetricsListen { .. }
            | WatchError::Bundle { .. }
            | WatchError::Task(_) => Disposition::Fail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
