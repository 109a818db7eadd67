//! `certfleet dlq replay`: dead jobs published again.
//!
//! A replayed job is published again to `certfleet.jobs` with its routing
//! key and its attempt reset to 1 (same job id, so `certfleet status` keeps
//! following it), and its dead copy is acknowledged only once the broker
//! confirmed the new one. A body that does not decode cannot be replayed:
//! it stays where it is until it is purged.

use std::collections::HashSet;

use certfleet_common::amqp::{BrokerError, Outgoing, Publisher};
use certfleet_common::error::chain;
use certfleet_common::state::{JobState, JobStatus, State};
use certfleet_common::topology::DEAD_QUEUE;
use certfleet_common::{Config, Envelope};
use lapin::options::BasicAckOptions;
use uuid::Uuid;

use super::error::{DlqError, queue_error};
use super::message::{DeadMessage, text};
use super::queue::{fetch, open, requeue};
use crate::broker::close_broker;
use crate::output::out;

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
        let publisher = Publisher::new(&conn).await?;
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
        let bodies: Vec<Vec<u8>> = replayable
            .iter()
            .map(|(_, e, _)| e.encode())
            .collect::<Result<_, _>>()
            .map_err(|e| BrokerError::Channel(lapin::Error::from(std::io::Error::other(e))))?;
        let ids: Vec<String> = replayable.iter().map(|(_, e, _)| e.job_id.to_string()).collect();
        let msgs: Vec<Outgoing<'_>> = replayable
            .iter()
            .zip(&bodies)
            .zip(&ids)
            .map(|(((_, _, key), body), id)| Outgoing::job(key, body, Some(id)))
            .collect();
        let results = if msgs.is_empty() {
            Vec::new()
        } else {
            publisher.publish_many(&msgs).await?
        };
        let mut acked: HashSet<u64> = HashSet::new();
        let mut replayed: Vec<&Envelope> = Vec::new();
        for ((m, e, key), result) in replayable.iter().zip(results) {
            match result {
                Ok(()) => {
                    channel
                        .basic_ack(m.tag, BasicAckOptions { multiple: false })
                        .await
                        .map_err(queue_error("acknowledge a replayed message in"))?;
                    acked.insert(m.tag);
                    replayed.push(e);
                    out(format_args!("{} {} replayed ({key})", e.job_id, e.job.name));
                }
                Err(err) => {
                    failed += 1;
                    eprintln!("{} {}: not replayed: {}", e.job_id, e.job.name, chain(&err));
                }
            }
        }
        let last_unacked = messages.iter().rev().find(|m| !acked.contains(&m.tag)).map(|m| m.tag);
        requeue(&channel, last_unacked).await?;
        record_replayed(config, &replayed).await;
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

/// Marks replayed jobs queued again (best effort).
async fn record_replayed(config: &Config, envelopes: &[&Envelope]) {
    if envelopes.is_empty() {
        return;
    }
    let state = match State::from_config(config, 4) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %chain(&e), "no status records (redis)");
            return;
        }
    };
    for e in envelopes {
        let status = JobStatus::of(e, JobState::Queued, "replayed from the dead-letter queue");
        if let Err(err) = state.set_status(&status).await {
            tracing::warn!(error = %chain(&err), "replayed, but the status records could not be written (redis)");
            return;
        }
    }
}
