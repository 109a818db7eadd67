//! `certfleet dlq replay`: dead jobs published again.
//!
//! A replayed job is published again to `certfleet.jobs` with its routing
//! key and its attempt reset to 1 (same job id, so `certfleet status` keeps
//! following it) through the fleet's one submission path (the
//! `Submitter`, which also marks it queued again), and its dead copy is
//! acknowledged only once the broker confirmed the new one. A body that does not decode cannot be replayed:
//! it stays where it is until it is purged.

use std::collections::HashSet;

use certfleet_common::error::chain;
use certfleet_common::submit::{Dedup, Outcome, Submission, Submitter};
use certfleet_common::topology::DEAD_QUEUE;
use certfleet_common::{Config, Envelope};
use lapin::options::BasicAckOptions;
use uuid::Uuid;

use super::error::{DlqError, queue_error};
use super::message::{DeadMessage, text};
use super::queue::{fetch, open, requeue};
use crate::broker::close_broker;
use crate::output::out;
use crate::submit::state_or_warn;

/// `certfleet dlq replay (JOB_ID...|--all)`.
///
/// # Errors
/// A malformed id (before connecting), broker errors, or selected jobs
/// that could not be replayed.
pub(crate) async fn replay(config: &Config, job_ids: &[String], all: bool) -> Result<(), DlqError> {
    let mut wanted: HashSet<String> = HashSet::new();
    for id in job_ids {
        let uuid = Uuid::parse_str(id.trim()).map_err(|_| DlqError::BadJobId(id.clone()))?;
        wanted.insert(uuid.to_string());
    }
    let (conn, channel) = open(config).await?;
    let result = async {
        let submitter = Submitter::open(&conn, state_or_warn(config)).await?;
        let messages = fetch(&channel).await?;
        let selected: Vec<&DeadMessage> = messages
            .iter()
            .filter(|m| all || m.job_id.as_ref().is_some_and(|id| wanted.contains(id)))
            .collect();
        let mut failed = 0usize;
        let mut replayable: Vec<(&DeadMessage, Envelope, String)> = Vec::new();
        for m in &selected {
            match (&m.envelope, m.replay_routing_key()) {
                (Ok(e), Some(key)) => {
                    let mut e = e.clone();
                    e.attempt = 1;
                    replayable.push((m, e, key));
                }
                (Err(err), _) => {
                    // With --all, "everything that can be replayed".
                    if !all {
                        failed += 1;
                    }
                    eprintln!("{}: undecodable ({err}); it cannot be replayed (see certfleet dlq show, purge)", text(m.job_id.as_deref()));
                }
                (Ok(_), None) => failed += 1,
            }
        }
        let subs: Vec<Submission<'_>> = replayable
            .iter()
            .map(|(_, e, key)| Submission::routed(e, key.as_str()))
            .collect();
        let outcomes = submitter
            .submit(&subs, Dedup::Off, "replayed from the dead-letter queue")
            .await?;
        let mut acked: HashSet<u64> = HashSet::new();
        for ((m, e, key), outcome) in replayable.iter().zip(outcomes) {
            match outcome {
                Outcome::Queued => {
                    channel
                        .basic_ack(m.tag, BasicAckOptions { multiple: false })
                        .await
                        .map_err(queue_error("acknowledge a replayed message in"))?;
                    acked.insert(m.tag);
                    out(format_args!("{} {} replayed ({key})", e.job_id, e.job.name));
                }
                Outcome::NotAccepted(err) => {
                    failed += 1;
                    eprintln!("{} {}: not replayed: {}", e.job_id, e.job.name, chain(&err));
                }
                // Replays claim nothing: never already queued.
                Outcome::AlreadyQueued { .. } => {}
            }
        }
        let last_unacked = messages.iter().rev().find(|m| !acked.contains(&m.tag)).map(|m| m.tag);
        requeue(&channel, last_unacked).await?;
        let missing: Vec<&String> = {
            let seen: HashSet<&str> = messages.iter().filter_map(|m| m.job_id.as_deref()).collect();
            wanted.iter().filter(|id| !seen.contains(id.as_str())).collect()
        };
        for id in &missing {
            eprintln!("{id}: not in {DEAD_QUEUE}");
        }
        let total = if all { replayable.len() } else { wanted.len() };
        failed += missing.len();
        if all && selected.is_empty() {
            eprintln!("{DEAD_QUEUE} is empty");
        }
        if failed > 0 {
            return Err(DlqError::Incomplete { failed, total });
        }
        Ok(())
    }
    .await;
    certfleet_common::amqp::close_channel(&channel, 200, "done").await;
    close_broker(&conn).await;
    result
}
