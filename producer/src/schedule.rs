//! `certfleet schedule` and `certfleet index rebuild`: the operator's side
//! of renewal scheduling.
//!
//! The scheduling itself (the expiry index, the due-scan, the scan loop
//! that one instance of the fleet runs per period) lives in
//! [`certfleet_common::schedule`], because workers run it too. This module
//! owns the two commands around it: their arguments, the broker connection
//! the scheduler publishes through (reconnecting whenever it is lost), and
//! their errors.

use std::time::Duration;

use certfleet_common::amqp::{self, BrokerError};
use certfleet_common::schedule::{self, ScheduleError};
use certfleet_common::state::{State, StateError};
use certfleet_common::{Config, Store};
use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::args::duration;
use crate::broker::{close_broker, connect_broker};
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

/// `certfleet schedule`: runs the scheduler, reconnecting to the broker
/// whenever the connection is lost, until `shutdown`.
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
    let mut backoff = Duration::from_secs(1);
    while !shutdown.is_cancelled() {
        let connected = async {
            let conn = connect_broker(config).await?;
            let publisher = amqp::Publisher::new(&conn).await?;
            Ok::<_, BrokerError>((conn, publisher))
        }
        .await;
        let (conn, publisher) = match connected {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %certfleet_common::error::chain(&e), retry_in = ?backoff, "cannot connect to the broker");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
                continue;
            }
        };
        backoff = Duration::from_secs(1);
        let run_token = shutdown.child_token();
        let scheduler = schedule::run_scheduler_within(
            &state,
            &store,
            &publisher,
            args.every,
            within,
            run_token.clone(),
        );
        tokio::pin!(scheduler);
        loop {
            tokio::select! {
                () = &mut scheduler => break,
                () = tokio::time::sleep(Duration::from_secs(2)) => {
                    let healthy = conn.status().connected() && publisher.channel().status().connected();
                    if !healthy && !run_token.is_cancelled() {
                        tracing::warn!("lost the broker connection; reconnecting");
                        run_token.cancel();
                    }
                }
            }
        }
        close_broker(&conn).await;
    }
    Ok(())
}
