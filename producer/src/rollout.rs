//! `certfleet rollout NAME` and `certfleet servers`: which servers serve
//! which version, from the webservers' reports ([`certfleet_common::report`])
//! kept in Redis by the workers. `servers` also lists the servers that have
//! a watch queue but have not reported (management API; skipped with a
//! note when it cannot be reached).
//!
//! A server serves a name's current version when its latest report names
//! the version the pointer names and its hook succeeded (or it has none).
//! `rollout --wait` polls until every server that reported on the name
//! serves the current version, or the timeout names the laggards (exit 1).

use std::time::Duration;

use certfleet_common::report::Report;
use certfleet_common::state::{State, StateError};
use certfleet_common::storage::StorageError;
use certfleet_common::{CertName, Config, Store};
use clap::{Args, Subcommand};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::args::duration;
use crate::output::out;

/// How often `rollout --wait` looks again.
const POLL: Duration = Duration::from_millis(500);

/// `certfleet rollout`.
#[derive(Debug, Clone, Args)]
pub struct RolloutArgs {
    /// The certificate.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Wait until every server that reported on it serves the current
    /// version (exit 1 naming the others at the timeout).
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = duration)]
    pub timeout: Duration,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `certfleet servers ...`.
#[derive(Debug, Clone, Args)]
pub struct ServersArgs {
    /// What to do (default: list).
    #[command(subcommand)]
    pub command: Option<ServersCommand>,
    /// Print a JSON array.
    #[arg(long)]
    pub json: bool,
}

/// `certfleet servers forget`.
#[derive(Debug, Clone, Subcommand)]
pub enum ServersCommand {
    /// Forget a server's reports (a server taken out of service).
    Forget {
        /// The server's id.
        #[arg(value_name = "ID")]
        id: String,
    },
}

/// Why `rollout` or `servers` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RolloutError {
    /// Bad arguments (exit 64).
    #[error("{0}")]
    Usage(String),
    /// Redis.
    #[error(transparent)]
    State(#[from] StateError),
    /// Storage.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// `--wait` timed out.
    #[error("{name}: not served everywhere after {waited}s: {laggards}")]
    Behind {
        /// The certificate.
        name: CertName,
        /// Seconds waited.
        waited: u64,
        /// The servers behind, with why.
        laggards: String,
    },
    /// Interrupted.
    #[error("interrupted")]
    Interrupted,
}

impl RolloutError {
    /// Whether this is bad usage (exit 64).
    pub fn is_usage(&self) -> bool {
        matches!(self, RolloutError::Usage(_))
    }
}

/// One server's row.
fn row(r: &Report, current: &str) -> serde_json::Value {
    serde_json::json!({
        "server": r.server,
        "version": r.version,
        "serial": r.serial,
        "loaded_at": r.at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "report": r.kind.as_str(),
        "hook": r.hook.outcome,
        "hook_exit_code": r.hook.exit_code,
        "current": r.serves(current),
        "behind": r.version != current,
    })
}

/// Why a server does not serve `current`.
fn lag(r: &Report, current: &str) -> String {
    if r.version != current {
        format!("{} has {} (serial {})", r.server, r.version, r.serial)
    } else {
        match r.hook.exit_code {
            Some(code) => format!("{} hook {} (exit {code})", r.server, r.hook.outcome),
            None => format!("{} hook {}", r.server, r.hook.outcome),
        }
    }
}

/// `certfleet rollout`.
///
/// # Errors
/// See [`RolloutError`].
pub(crate) async fn rollout(
    config: &Config,
    args: &RolloutArgs,
    shutdown: CancellationToken,
) -> Result<(), RolloutError> {
    let name = CertName::parse(&args.name)
        .map_err(|e| RolloutError::Usage(format!("name {:?}: {e}", args.name)))?;
    let store = Store::from_config(config).await;
    let state = State::from_config(config, 2)?;
    let started = tokio::time::Instant::now();
    loop {
        let Some((pointer, _)) = store.pointer(&name).await? else {
            return Err(RolloutError::Usage(format!(
                "{name}: no certificate stored"
            )));
        };
        let reports = state.rollout(&name).await?;
        let behind: Vec<&Report> = reports
            .iter()
            .filter(|r| !r.serves(&pointer.version))
            .collect();
        let done = behind.is_empty();
        if !args.wait || done || started.elapsed() >= args.timeout {
            print(&name, &pointer, &reports, args.json);
            if args.wait && !done {
                return Err(RolloutError::Behind {
                    name,
                    waited: started.elapsed().as_secs(),
                    laggards: behind
                        .iter()
                        .map(|r| lag(r, &pointer.version))
                        .collect::<Vec<_>>()
                        .join("; "),
                });
            }
            return Ok(());
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = shutdown.cancelled() => return Err(RolloutError::Interrupted),
        }
    }
}

fn print(name: &CertName, pointer: &certfleet_common::Pointer, reports: &[Report], json: bool) {
    let current = &pointer.version;
    if json {
        out(serde_json::json!({
            "name": name,
            "version": current,
            "serial": certfleet_common::serial_display(&pointer.serial),
            "servers": reports.iter().map(|r| row(r, current)).collect::<Vec<_>>(),
            "current": reports.iter().filter(|r| r.serves(current)).count(),
            "total": reports.len(),
        }));
        return;
    }
    out(format_args!(
        "{name}: current version {current} (serial {}); {} of {} servers serve it",
        certfleet_common::serial_display(&pointer.serial),
        reports.iter().filter(|r| r.serves(current)).count(),
        reports.len()
    ));
    if reports.is_empty() {
        out("no server has reported on it (watch reports; pull with --server-id)");
        return;
    }
    out(format_args!(
        "{:<24} {:<34} {:<21} {:<12} STATE",
        "SERVER", "SERIAL", "LOADED", "HOOK"
    ));
    for r in reports {
        let hook = match r.hook.exit_code {
            Some(c) => format!("{} ({c})", r.hook.outcome),
            None => r.hook.outcome.clone(),
        };
        let state = if r.serves(current) {
            "current"
        } else if r.version != *current {
            "behind"
        } else {
            "hook failed"
        };
        out(format_args!(
            "{:<24} {:<34} {:<21} {:<12} {state}",
            r.server,
            r.serial,
            r.at.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
                .chars()
                .take(19)
                .collect::<String>(),
            hook
        ));
    }
}

/// `certfleet servers [forget ID]`.
///
/// # Errors
/// See [`RolloutError`].
pub(crate) async fn servers(config: &Config, args: &ServersArgs) -> Result<(), RolloutError> {
    let state = State::from_config(config, 2)?;
    if let Some(ServersCommand::Forget { id }) = &args.command {
        if !state.forget_server(id).await? {
            return Err(RolloutError::Usage(format!("no server {id} has reported")));
        }
        out(format_args!("server {id} forgotten"));
        return Ok(());
    }
    let store = Store::from_config(config).await;
    let mut current: std::collections::HashMap<CertName, Option<String>> = Default::default();
    let mut rows = Vec::new();
    let mut known = state.servers().await?;
    // Servers with a watch queue that have not reported (yet).
    match crate::server::watch_queue_ids(config).await {
        Ok(ids) => {
            for id in ids {
                if !known.iter().any(|(k, _, _)| *k == id) {
                    known.push((id, OffsetDateTime::UNIX_EPOCH, Vec::new()));
                }
            }
            known.sort_by(|a, b| a.0.cmp(&b.0));
        }
        Err(e) => eprintln!(
            "servers with a watch queue but no report are not listed: {}",
            certfleet_common::error::chain(&e)
        ),
    }
    for (id, last, reports) in known {
        let mut behind = Vec::new();
        for r in &reports {
            let version = match current.get(&r.name) {
                Some(v) => v.clone(),
                None => {
                    let v = store.pointer(&r.name).await?.map(|(p, _)| p.version);
                    current.insert(r.name.clone(), v.clone());
                    v
                }
            };
            if version.as_deref().is_some_and(|v| !r.serves(v)) {
                behind.push(r.name.to_string());
            }
        }
        rows.push((id, last, reports.len(), behind));
    }
    if args.json {
        out(serde_json::Value::Array(
            rows.iter()
                .map(|(id, last, names, behind)| {
                    let last_report = (*last != OffsetDateTime::UNIX_EPOCH).then(|| {
                        last.format(&time::format_description::well_known::Rfc3339)
                            .unwrap_or_default()
                    });
                    serde_json::json!({
                        "id": id,
                        "last_report": last_report,
                        "names": names,
                        "behind": behind,
                    })
                })
                .collect(),
        ));
        return Ok(());
    }
    if rows.is_empty() {
        out("no server has reported (watch reports; pull with --server-id)");
    }
    let now = OffsetDateTime::now_utc();
    for (id, last, names, behind) in rows {
        let last_report = if last == OffsetDateTime::UNIX_EPOCH {
            "no report yet".to_string()
        } else {
            format!("last report {}s ago", (now - last).whole_seconds().max(0))
        };
        out(format_args!(
            "{id}  {last_report}  {names} names  {} behind{}",
            behind.len(),
            if behind.is_empty() {
                String::new()
            } else {
                format!(": {}", behind.join(" "))
            }
        ));
    }
    Ok(())
}
