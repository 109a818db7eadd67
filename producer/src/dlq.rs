//! The dead-letter queue (`certfleet.dead`): `certfleet dlq list`, `show`,
//! `replay` and `purge`.
//!
//! Reading never loses a message: every message is taken without being
//! acknowledged and all are given back at the end, in their order
//! (`queue`). A replayed job's dead copy is acknowledged only once the
//! broker confirmed the new one (`replay`). A body that does not decode
//! cannot be replayed: it stays where it is until it is purged.
//!
//! # Layout
//! - `queue`: opening the queue, reading it without losing a message, and
//!   `purge`.
//! - `message`: one dead message as read, decoded or not.
//! - `inspect`: `list` and `show`.
//! - `replay`: `replay`.
//! - `error`: [`DlqError`].

mod error;
mod inspect;
mod message;
mod queue;
mod replay;

use clap::Subcommand;

pub use error::DlqError;

pub(crate) use inspect::{list, show};
pub(crate) use queue::purge;
pub(crate) use replay::replay;

/// `certfleet dlq ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum DlqCommand {
    /// List the dead jobs (nothing is removed).
    List {
        /// Show at most this many.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead job in full.
    Show {
        /// Its job id.
        #[arg(value_name = "JOB_ID")]
        job_id: String,
    },
    /// Publish dead jobs again (attempt reset to 1) and remove them from
    /// the dead-letter queue once the broker confirmed.
    Replay {
        /// Job ids to replay.
        #[arg(
            value_name = "JOB_ID",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        job_ids: Vec<String>,
        /// Replay every decodable dead job (undecodable ones are skipped).
        #[arg(long)]
        all: bool,
    },
    /// Delete every message in the dead-letter queue.
    Purge {
        /// Confirm.
        #[arg(long)]
        yes: bool,
    },
}
