//! The `certfleet` command line as a library, so that tests can run every
//! command in-process.
//!
//! # Layout
//! - [`cli`]: arguments (clap), configuration loading, dispatch, exit codes.
//! - [`submit`]: `issue`, `submit` (bulk) and `renew`, and `--wait` on
//!   their events.
//! - [`status`]: `status` (a job or a certificate) and `list`.
//! - [`dlq`]: list, show, replay and purge the dead-letter queue.
//! - [`agent`]: the webserver agent, `pull` and `watch`, which keep a
//!   webserver's certificate directory up to date.
//!
//! Renewal scheduling (`renew --due`, `schedule`, `index rebuild`) lives in
//! [`certfleet_common::schedule`], because workers run it too.

pub mod agent;
pub mod cli;
pub mod dlq;
pub mod status;
pub mod submit;

pub use cli::{Cli, CliError, Command, run};
