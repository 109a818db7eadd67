//! `certfleet schedule` and `certfleet index rebuild`: the operator's side
//! of renewal scheduling.
//!
//! The scheduling itself (the expiry index, the due-scan, the scan loop
//! that one instance of the fleet runs per period) lives in
//! [`certfleet_common::schedule`], because workers run it too. This module
//! owns the two commands around them: their arguments and their errors;
//! the scheduler loop, with its own broker connection and the fleet's one
//! reconnect policy, is [`certfleet_common::schedule::run`].

use std::time::Duration;

use certfleet_common::amqp;
use certfleet_common::schedule::{self, ScheduleError};
use certfleet_common::state::{State, StateError};
use certfleet_common::{Config, Store};
use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::args::duration;
use crate::output::out;

/// `certfleet schedule`.
#[derive(Debug, Clone, Args)]
pub struct ScheduleArgs {
    /// Scan period (at least 1s).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub every: Duration,
    /// Also renew what becomes due within this long.
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub within: Option<Duration>,
}

/// `certfleet index ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum IndexCommand {
    /// Rebuild the expiry index from the certificates in storage.
    Rebuild,
}

/// Why `schedule` or `index rebuild` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleCmdError {
    /// Bad arguments found after parsing (`--every` below 1s, `--within`
    /// too long).
    #[error("{0}")]
    Usage(String),
    /// Redis configuration unusable.
    #[error(transparent)]
    State(#[from] StateError),
    /// `index rebuild` failed.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
}

impl ScheduleCmdError {
    /// Whether this is bad usage (exit 64).
    pub fn is_usage(&self) -> bool {
        matches!(self, ScheduleCmdError::Usage(_))
    }
}

/// `certfleet index rebuild`: the expiry index from the certificates in
/// storage; prints how many were indexed.
///
/// # Errors
/// Redis configuration unusable, or the rebuild failed.
pub(crate) async fn index(config: &Config, command: &IndexCommand) -> Result<(), ScheduleCmdError> {
    match command {
        IndexCommand::Rebuild => {
            let state = State::from_config(config, 4)?;
            let store = Store::from_config(config).await;
            let n = schedule::rebuild_index(&state, &store).await?;
            out(format_args!("indexed {n} certificates"));
        }
    }
    Ok(())
}

/// `certfleet schedule`: runs the scheduler
/// ([`certfleet_common::schedule::run`], which reconnects to the broker
/// whenever the connection is lost) until `shutdown`.
///
/// # Errors
/// Bad arguments (usage) or an unusable Redis configuration; broker trouble
/// is logged and retried.
pub(crate) async fn run_schedule(
    config: &Config,
    args: &ScheduleArgs,
    shutdown: CancellationToken,
) -> Result<(), ScheduleCmdError> {
    if args.every < Duration::from_secs(1) {
        return Err(ScheduleCmdError::Usage(
            "--every must be at least 1s".into(),
        ));
    }
    let within = match args.within {
        Some(w) => time::Duration::try_from(w)
            .map_err(|_| ScheduleCmdError::Usage("--within is too long".into()))?,
        None => time::Duration::ZERO,
    };
    let state = State::from_config(config, 8)?;
    let store = Store::from_config(config).await;
    schedule::run(
        &config.amqp_url,
        &amqp::connection_name("certfleet"),
        &state,
        &store,
        args.every,
        within,
        shutdown,
    )
    .await;
    Ok(())
}
