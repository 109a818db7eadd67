//! Submitting jobs: `certfleet issue`, `submit` (bulk) and `renew`, and
//! `--wait` for their outcome.
//!
//! Every request is validated completely before the first connection is
//! opened (bad input is exit 64 and nothing is published). A job counts as
//! accepted only once the broker confirmed it; only then is its id printed
//! on stdout (scripts capture it) and its `queued` status record written
//! (best effort: Redis being down does not un-accept a job).
//!
//! # Layout
//! - `issue`, `bulk` (`certfleet submit`), `renew`: one command each, with
//!   its arguments. `renew` covers `renew NAME...` with dedup, and
//!   `renew --due`.
//! - `import`: `certfleet import --from lego|certbot DIR`, certificates
//!   obtained elsewhere, staged in storage and stored by import jobs.
//! - `request`: validating a request and parsing bulk files.
//! - `publish`: the broker connection with the job topology, pipelined
//!   confirmed publishes, and the `queued` status records.
//! - `wait`: `--wait` subscribes to the certificate events *before*
//!   publishing (a server-named, exclusive, auto-delete queue bound to
//!   `cert.*.NAME`), so an event that follows the job quickly cannot be
//!   missed, then waits for the events whose `job_id` is one of ours.
//! - `error`: [`SubmitError`] and the request and line errors it carries.

mod bulk;
mod error;
mod import;
mod issue;
mod own_key;
mod publish;
mod renew;
mod request;
mod revoke;
mod revoke_key;
mod wait;

#[cfg(test)]
mod tests;

pub use bulk::SubmitArgs;
pub use error::{LineError, RequestError, SubmitError};
pub use import::{ImportArgs, ImportSource};
pub use issue::IssueArgs;
pub use renew::RenewArgs;
pub use revoke::RevokeArgs;

pub(crate) use bulk::submit;
pub(crate) use import::import;
pub(crate) use issue::issue;
pub(crate) use publish::state_or_warn;
pub(crate) use renew::renew;
pub(crate) use revoke::revoke;
