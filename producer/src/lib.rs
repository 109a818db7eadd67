//! The `certfleet` command line as a library, so that tests can run every
//! command in-process.
//!
//! # Layout
//! - `cli` ([`Cli`], [`run`]): the entrance: arguments (clap), configuration
//!   loading, dispatch to the command modules, exit codes. Nothing imports
//!   from it; each command module owns its arguments.
//! - The operator's commands (run wherever jobs are submitted and followed):
//!   - `submit`: `issue`, `submit` (bulk) and `renew`, and `--wait` on their
//!     events.
//!   - `status`: `status` (a job or a certificate) and `list`.
//!   - `dlq`: list, show, replay and purge the dead-letter queue.
//!   - `schedule`: `schedule` (the renewal scheduler, reconnecting to the
//!     broker) and `index rebuild`.
//!   - `exporter`: `exporter`, the fleet's certificate metrics for
//!     Prometheus (read from Redis by [`certfleet_common::exporter`]).
//!   - `keys`: `keys identity` (an age identity for a server group) and
//!     `keys reseal` (stored keys encrypted anew for the current
//!     recipients).
//!   - `rollout`: `rollout NAME [--wait]` and `servers [forget ID]`, from
//!     the webservers' reports the workers keep in Redis.
//!   - `dashboard`: a live, read-only web page of the fleet (Server-Sent
//!     Events), opened with one-time tokens kept in Redis.
//!   - `server`: `server add|list|remove`, a broker user per webserver
//!     that may follow only its names' events (RabbitMQ management API).
//! - [`agent`]: the webserver agent, `pull` and `watch`, which run on each
//!   webserver and keep its certificate directory up to date.
//! - Shared by the commands: `broker` (connecting to the broker and closing
//!   the connection), `output` (lines on stdout), `args` (value parsers for
//!   arguments).
//!
//! Renewal scheduling itself (the expiry index, the due-scan, the scheduler
//! loop behind `renew --due`, `schedule` and `index rebuild`) lives in
//! [`certfleet_common::schedule`], because workers run it too.
//!
//! The public surface is what `main` and the tests use: [`Cli`] and [`run`]
//! with the arguments and errors of each command, and [`agent`] to run
//! `pull` and `watch` in-process.

pub mod agent;
mod args;
mod broker;
mod cli;
mod dashboard;
mod dlq;
mod exporter;
mod keys;
mod output;
mod private_key;
mod rollout;
mod schedule;
mod server;
mod status;
mod submit;

pub use cli::{Cli, CliError, Command, clap_exit_code, load_config, run};
pub use dashboard::{DashboardArgs, DashboardCommand, DashboardError};
pub use dlq::{DlqCommand, DlqError};
pub use exporter::{ExporterArgs, ExporterError};
pub use keys::{KeysCommand, KeysError};
pub use rollout::{RolloutArgs, RolloutError, ServersArgs, ServersCommand};
pub use schedule::{IndexCommand, ScheduleArgs, ScheduleCmdError};
pub use server::{ServerCommand, ServerError};
pub use status::StatusError;
pub use submit::{
    ImportArgs, ImportSource, IssueArgs, LineError, RenewArgs, RequestError, RevokeArgs,
    SubmitArgs, SubmitError,
};
