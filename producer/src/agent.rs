//! The webserver agent: `certfleet pull` and `certfleet watch`, which run on
//! each webserver (not on the operator's machine, where the other commands
//! run) and keep its certificate files in step with storage.
//!
//! Both write `DIR/<name>/{cert.pem,chain.pem,fullchain.pem,privkey.pem}`
//! from one bundle in storage, so certificate and key always belong
//! together, each version switched in atomically behind a symlink
//! (`files`). `pull` does it once, for the version the pointer names.
//! `watch` does it on start, then for every `issued`/`renewed` event its
//! durable queue receives, and runs the `--on-change` hook after each change
//! (`hook`); it reconnects on its own when the broker goes away (`run`).
//!
//! An event is a hint, not the source of the files. If the disk already
//! holds the announced version, or a newer one (a late or duplicated
//! event), storage is not read at all, so an event never rolls a
//! certificate back. Otherwise the pointer, read at that moment, decides:
//! only the version it names is ever installed, so a forged event cannot
//! bring in a bundle that was never current (see `sync`). And the version
//! the pointer names is installed only after it proved itself (`check`):
//! bundle and pointer agree, the private key is the certificate's, the
//! certificate covers the domains, is valid now and its chain verifies.
//! One that fails is logged with the reason and retried like any other
//! sync failure; the files and the hook stay as they were.
//!
//! # Layout
//! - `sync`: one name from storage to disk: which version (the pointer;
//!   an event's hint only saves reads), its bundle, the files, the hook's
//!   pending marker.
//! - `check`: what a version must prove before it is installed.
//! - `pull`: [`pull()`] and its [`PullReport`].
//! - `watch`: [`WatchOptions`] and [`watch()`], which runs the hooks and the
//!   broker sessions.
//! - `run`: the broker session: declare, catch up, consume, reconnect.
//! - `pattern`: `--queue` ids, `--filter` topic patterns and matching.
//! - `files`: the directory layout and the atomic writer.
//! - `hook`: the `--on-change` command, its pending markers and retries.
//! - `metrics`: `watch --metrics-listen`, what this webserver serves.
//! - `error`: [`WatchError`].

mod check;
mod error;
mod files;
mod hook;
mod metrics;
mod pattern;
mod pull;
mod report;
mod run;
mod sync;
mod watch;

pub(crate) use check::check_key;
pub use error::WatchError;
pub(crate) use pattern::check_queue_id;
pub use pull::{PullArgs, PullOutcome, PullReport, pull, pull_as};
pub use watch::{WatchArgs, WatchOptions, watch};
