//! Publishing jobs and recording them: the broker connection with the job
//! topology declared, pipelined confirmed publishes, and the `queued` status
//! records written (best effort) once the broker accepted the jobs.

use certfleet_common::amqp::{BrokerError, Outgoing, Publisher};
use certfleet_common::error::chain;
use certfleet_common::state::{JobState, JobStatus, State};
use certfleet_common::{Config, Envelope, topology};

use super::error::SubmitError;
use crate::broker::connect_broker;

/// `reason` of jobs from `issue` and `renew NAME`.
pub(crate) const REASON_CLI: &str = "cli";
/// `reason` of jobs from `submit`.
pub(crate) const REASON_BULK: &str = "bulk";

/// Status records written at once after a bulk publish.
pub(super) const STATUS_CONCURRENCY: usize = 16;

/// Publishes envelopes pipelined and returns one result per envelope.
pub(super) async fn publish_all(
    publisher: &Publisher,
    envelopes: &[&Envelope],
) -> Result<Vec<Result<(), BrokerError>>, SubmitError> {
    let bodies: Vec<Vec<u8>> = envelopes
        .iter()
        .map(|e| e.encode())
        .collect::<Result<_, _>>()?;
    let keys: Vec<String> = envelopes.iter().map(|e| e.routing_key()).collect();
    let ids: Vec<String> = envelopes.iter().map(|e| e.job_id.to_string()).collect();
    let msgs: Vec<Outgoing<'_>> = bodies
        .iter()
        .zip(&keys)
        .zip(&ids)
        .map(|((b, k), id)| Outgoing::job(k, b, Some(id)))
        .collect();
    Ok(publisher.publish_many(&msgs).await?)
}

/// Connects, opens a confirming channel and declares the job topology.
pub(super) async fn open_publisher(
    config: &Config,
) -> Result<(lapin::Connection, Publisher), SubmitError> {
    let conn = connect_broker(config).await?;
    let publisher = Publisher::new(&conn).await?;
    topology::declare_jobs(publisher.channel())
        .await
        .map_err(SubmitError::Topology)?;
    Ok((conn, publisher))
}

/// Writes `queued` status records (pipelined), best effort: the jobs are
/// accepted whatever happens here, so a failure is a warning.
pub(super) async fn record_queued(state: Option<&State>, envelopes: &[&Envelope], detail: &str) {
    let Some(state) = state else {
        return;
    };
    let statuses: Vec<JobStatus> = envelopes
        .iter()
        .map(|e| JobStatus::of(e, JobState::Queued, detail))
        .collect();
    if let Err(e) = state.set_statuses(&statuses).await {
        tracing::warn!(error = %chain(&e), "the job is accepted, but its status record could not be written (redis)");
    }
}

pub(super) fn state_or_warn(config: &Config) -> Option<State> {
    match State::from_config(config, STATUS_CONCURRENCY) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %chain(&e), "no status records (redis)");
            None
        }
    }
}
