//! What the certfleet producer (`certfleet`) and the workers
//! (`certfleet-worker`) must agree on.
//!
//! # Layout
//! - [`job`]: the job envelope and its bincode wire format.
//! - [`event`]: the JSON events workers publish.
//! - [`topology`]: exchange, queue and header names, retry delays, and the
//!   functions that declare them.
//! - [`amqp`]: broker connections, the one reconnect policy, confirmed
//!   publishing.
//! - [`storage`]: the S3 key layout, pointers and bundles, and the store.
//! - [`redis_keys`] and [`state`]: Redis keys, the expiry index, dedup
//!   markers and job status records; [`redis_pool`]: one Redis server or
//!   a primary found through Sentinel, behind one pool.
//! - [`submit`]: the one path from envelopes to accepted jobs (claim,
//!   confirmed publish, settle), used by every command that queues jobs and
//!   by the renewal scheduler.
//! - [`schedule`]: the renewal due-scan, the index rebuild, the scheduler
//!   loop.
//! - [`domain`]: domain and certificate name validation.
//! - [`config`]: flags → environment → TOML; the setting names and the
//!   section every binary validates.
//! - [`logging`] and [`shutdown`]: the one tracing setup and the one signal
//!   handler of both binaries; [`child`]: operators' commands ended with
//!   their whole process group.
//! - [`seal`] and [`secret`]: encryption at rest and values never printed.
//! - [`exporter`]: the fleet's certificate metrics (expiry, renewal,
//!   readiness, summaries) read from Redis; [`serve`]: the small HTTP
//!   server of metrics and probes.
//! - [`error`]: what a failure means for the job ([`Disposition`]).

#![warn(missing_docs)]

pub mod amqp;
pub mod child;
pub mod config;
pub mod csr;
pub mod domain;
pub mod error;
pub mod event;
pub mod exporter;
pub mod job;
pub mod logging;
pub mod net;
pub mod redis_keys;
pub mod redis_pool;
pub mod report;
pub mod s3_https;
pub mod schedule;
pub mod seal;
pub mod secret;
pub mod serve;
pub mod shutdown;
pub mod state;
pub mod storage;
pub mod submit;
pub mod topology;

pub use config::{Config, ConfigError};
pub use domain::{CertName, DomainError};
pub use error::{Classify, Disposition};
pub use event::{Event, EventKind};
pub use job::{ChallengeType, Envelope, Job, JobKind, KeyType};
pub use secret::{Secret, SecretUrl};
pub use storage::{Bundle, Pointer, Store, serial_display, serial_stored};

/// Stack of the async runtimes' worker threads (8 MiB, Linux's main-thread
/// default, instead of Rust's 2 MiB). Release builds need far less; a
/// debug build's poll frames keep a slot for every future built in them,
/// and the worker's job (the order, the S3 client's requests) came near
/// 2 MiB. The test harness runs with the same (`RUST_MIN_STACK` in the
/// Makefile).
pub const RUNTIME_THREAD_STACK: usize = 8 << 20;

/// Exit code for bad usage or bad input (BSD `EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;
/// Exit code when the work failed.
pub const EXIT_FAILURE: u8 = 1;

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}
