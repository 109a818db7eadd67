//! Submitting jobs: the one path from envelopes to accepted jobs, shared by
//! `certfleet issue`, `submit` and `renew`, the renewal due-scan, `certfleet
//! dlq replay`, the benchmark and the tests.
//!
//! A [`Submitter`] takes a batch of envelopes and, in order:
//! 1. **claims** the names' dedup markers when asked ([`Dedup::ClaimNames`],
//!    one round trip for the batch): a name another job already holds is
//!    not published again (certmagic's `jobManager.Submit` drops duplicate
//!    work by name the same way);
//! 2. **publishes** the rest pipelined with publisher confirms
//!    ([`Publisher::publish_many`]: persistent, mandatory): a job counts as
//!    accepted only once the broker confirmed it;
//! 3. **settles**: gives back the claims of jobs the broker did not accept,
//!    so the next attempt can claim them at once, and writes a `queued`
//!    status record for each accepted job (best effort: Redis being down
//!    does not un-accept a job).
//!
//! It returns one [`Outcome`] per envelope, in order, so a caller can say
//! which jobs were queued, already queued, or not accepted.

use deadpool_redis::redis;
use lapin::Connection;
use uuid::Uuid;

use crate::amqp::{BrokerError, Outgoing, Publisher};
use crate::domain::CertName;
use crate::error::{Classify, Disposition, chain};
use crate::job::{CodecError, Envelope};
use crate::state::{JobState, JobStatus, State, StateError};
use crate::topology;

/// Redis commands per pipeline when releasing claims or reading holders in
/// bulk (keeps each request well below Redis' buffer limits).
const PIPELINE_CHUNK: usize = 5000;

/// Whether a batch claims its names first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dedup {
    /// Publish every envelope (new certificates, replays).
    Off,
    /// Claim each name's dedup marker first and skip names another job
    /// holds (renewals: at most one queued renewal per name).
    ClaimNames,
}

/// One job to submit: the envelope and the routing key it goes out with.
#[derive(Debug, Clone)]
pub struct Submission<'a> {
    /// The job.
    pub envelope: &'a Envelope,
    /// Its routing key: the envelope's own, or the one a dead letter
    /// recorded (a worker pool may route differently).
    pub routing_key: String,
}

impl<'a> Submission<'a> {
    /// The envelope with its own routing key.
    pub fn new(envelope: &'a Envelope) -> Self {
        Self {
            routing_key: envelope.routing_key(),
            envelope,
        }
    }

    /// The envelope with another routing key.
    pub fn routed(envelope: &'a Envelope, routing_key: impl Into<String>) -> Self {
        Self {
            envelope,
            routing_key: routing_key.into(),
        }
    }
}

/// What became of one envelope.
#[derive(Debug)]
pub enum Outcome {
    /// Confirmed by the broker: the job is accepted.
    Queued,
    /// Another job holds the name's dedup marker; nothing was published.
    AlreadyQueued {
        /// That job's id, if the marker could still be read (it may have
        /// ended in between).
        holder: Option<String>,
    },
    /// The broker did not accept it (nack, unroutable, channel error); its
    /// claim, if any, was given back.
    NotAccepted(BrokerError),
}

impl Outcome {
    /// Whether the job was accepted.
    pub fn is_queued(&self) -> bool {
        matches!(self, Outcome::Queued)
    }
}

/// Why a whole batch could not be submitted. Nothing of it was accepted,
/// and every claim it took was given back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// Opening the confirming channel failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// Declaring the job topology failed.
    #[error("cannot declare the job exchanges and queues")]
    Topology(#[source] lapin::Error),
    /// Deduplication was asked for without Redis.
    #[error("cannot claim the names: no redis configured for this submitter")]
    NoState,
    /// Claiming the names failed (Redis).
    #[error("cannot claim the names in redis (dedup of renew jobs)")]
    Claim(#[source] StateError),
    /// A job did not encode (a bug).
    #[error("cannot encode the job of {name}")]
    Encode {
        /// The certificate.
        name: CertName,
        /// Cause.
        #[source]
        source: CodecError,
    },
    /// The broker failed before anything was sent.
    #[error("cannot publish the jobs")]
    Publish(#[source] BrokerError),
}

impl Classify for SubmitError {
    fn disposition(&self) -> Disposition {
        match self {
            SubmitError::Broker(e) | SubmitError::Publish(e) => e.disposition(),
            SubmitError::Claim(e) => e.disposition(),
            SubmitError::Topology(_) => Disposition::Retry { after: None },
            SubmitError::NoState | SubmitError::Encode { .. } => Disposition::Fail,
        }
    }
}

/// Submits jobs: claim, confirmed publish, settle (see the module docs).
#[derive(Debug, Clone)]
pub struct Submitter {
    publisher: Publisher,
    /// A second channel, for messages the first one had nacked.
    spare: Publisher,
    state: Option<State>,
}

/// How long the submitter waits before it publishes nacked jobs again on
/// its spare channel (a quorum queue's new leader is elected within a
/// second of a node's loss).
pub const NACK_RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(750);

impl Submitter {
    /// Opens a confirming channel on `conn` and declares the job topology.
    /// Without `state`, no claims can be taken and no status records are
    /// written.
    ///
    /// # Errors
    /// The channel or the declarations failed.
    pub async fn open(conn: &Connection, state: Option<State>) -> Result<Self, SubmitError> {
        let publisher = Publisher::new(conn).await?;
        topology::declare_jobs(publisher.channel())
            .await
            .map_err(SubmitError::Topology)?;
        let spare = Publisher::new(conn).await?;
        Ok(Self {
            publisher,
            spare,
            state,
        })
    }

    /// Whether the channel is still open (a long-running submitter, such as
    /// the scheduler, reconnects when it is not).
    pub fn is_connected(&self) -> bool {
        self.publisher.channel().status().connected()
    }

    /// Submits `jobs`; `status` is the detail of their `queued` records.
    /// Returns one outcome per submission, in order.
    ///
    /// # Errors
    /// A failure that concerns the whole batch (see [`SubmitError`]):
    /// then nothing was accepted and every claim taken was given back.
    pub async fn submit(
        &self,
        jobs: &[Submission<'_>],
        dedup: Dedup,
        status: &str,
    ) -> Result<Vec<Outcome>, SubmitError> {
        let claimed = self.claim(jobs, dedup).await?;
        let (mine, skipped): (Vec<usize>, Vec<usize>) =
            (0..jobs.len()).partition(|&i| claimed.get(i).copied().unwrap_or(false));
        let envelopes_of =
            |idx: &[usize]| -> Vec<&Envelope> { idx.iter().map(|&i| jobs[i].envelope).collect() };

        let mut bodies = Vec::with_capacity(mine.len());
        for &i in &mine {
            match jobs[i].envelope.encode() {
                Ok(body) => bodies.push(body),
                Err(source) => {
                    self.release(dedup, &envelopes_of(&mine)).await;
                    return Err(SubmitError::Encode {
                        name: jobs[i].envelope.job.name.clone(),
                        source,
                    });
                }
            }
        }
        let ids: Vec<String> = mine
            .iter()
            .map(|&i| jobs[i].envelope.job_id.to_string())
            .collect();
        let msgs: Vec<Outgoing<'_>> = mine
            .iter()
            .zip(&bodies)
            .zip(&ids)
            .map(|((&i, body), id)| Outgoing::job(&jobs[i].routing_key, body, Some(id)))
            .collect();
        let results = if msgs.is_empty() {
            Vec::new()
        } else {
            match self.publish(&msgs).await {
                Ok(r) => r,
                Err(e) => {
                    self.release(dedup, &envelopes_of(&mine)).await;
                    return Err(SubmitError::Publish(e));
                }
            }
        };

        let mut outcomes: Vec<Outcome> = (0..jobs.len())
            .map(|_| Outcome::AlreadyQueued { holder: None })
            .collect();
        let mut accepted: Vec<&Envelope> = Vec::new();
        let mut refused: Vec<usize> = Vec::new();
        for (&i, result) in mine.iter().zip(results) {
            outcomes[i] = match result {
                Ok(()) => {
                    accepted.push(jobs[i].envelope);
                    Outcome::Queued
                }
                Err(e) => {
                    refused.push(i);
                    Outcome::NotAccepted(e)
                }
            };
        }
        if !refused.is_empty() && dedup == Dedup::ClaimNames {
            tracing::warn!(
                failed = refused.len(),
                "some jobs were not accepted by the broker; their claims are released"
            );
            self.release(dedup, &envelopes_of(&refused)).await;
        }
        self.record_queued(&accepted, status).await;
        self.fill_holders(jobs, &skipped, &mut outcomes).await;
        Ok(outcomes)
    }

    /// Publishes `msgs` with confirms. Messages the broker nacked are
    /// published once more, after [`NACK_RETRY_AFTER`], on the spare
    /// channel: when a cluster node holding a quorum queue's leader dies,
    /// a channel that published to it during the election can have every
    /// later publish nacked for as long as it lives (RabbitMQ 3.10), while
    /// a new channel works at once.
    async fn publish(
        &self,
        msgs: &[Outgoing<'_>],
    ) -> Result<Vec<Result<(), BrokerError>>, BrokerError> {
        let mut results = self.publisher.publish_many(msgs).await?;
        let nacked: Vec<usize> = (0..results.len())
            .filter(|&i| matches!(results[i], Err(BrokerError::Nacked { .. })))
            .collect();
        if nacked.is_empty() {
            return Ok(results);
        }
        tracing::warn!(
            nacked = nacked.len(),
            "the broker refused some jobs; publishing them again on a fresh channel"
        );
        tokio::time::sleep(NACK_RETRY_AFTER).await;
        let again: Vec<Outgoing<'_>> = nacked.iter().map(|&i| msgs[i].clone()).collect();
        let retried = self.spare.publish_many(&again).await?;
        for (i, r) in nacked.into_iter().zip(retried) {
            results[i] = r;
        }
        Ok(results)
    }

    /// Claims every name (one round trip), or none with [`Dedup::Off`].
    async fn claim(&self, jobs: &[Submission<'_>], dedup: Dedup) -> Result<Vec<bool>, SubmitError> {
        if dedup == Dedup::Off {
            return Ok(vec![true; jobs.len()]);
        }
        let state = self.state.as_ref().ok_or(SubmitError::NoState)?;
        let claims: Vec<(CertName, Uuid)> = jobs
            .iter()
            .map(|j| (j.envelope.job.name.clone(), j.envelope.job_id))
            .collect();
        state
            .pending_claim_many(&claims)
            .await
            .map_err(SubmitError::Claim)
    }

    /// Gives back the claims of jobs that were not accepted (pipelined
    /// compare-and-delete). A failure only delays the names until the
    /// markers expire, so it is logged, not returned.
    async fn release(&self, dedup: Dedup, envelopes: &[&Envelope]) {
        let Some(state) = &self.state else {
            return;
        };
        if dedup == Dedup::Off || envelopes.is_empty() {
            return;
        }
        let result: Result<(), StateError> = async {
            let mut c = state.conn().await?;
            for chunk in envelopes.chunks(PIPELINE_CHUNK) {
                let mut pipe = redis::pipe();
                for e in chunk {
                    state.pending_release_into(&mut pipe, &e.job.name, &e.job_id);
                }
                let _: () = pipe.query_async(&mut *c).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %chain(&e), names = envelopes.len(),
                "cannot release dedup markers; these names wait until the markers expire");
        }
    }

    /// Writes a `queued` status record for each accepted job, pipelined;
    /// best effort.
    async fn record_queued(&self, envelopes: &[&Envelope], detail: &str) {
        let Some(state) = &self.state else {
            return;
        };
        let statuses: Vec<JobStatus> = envelopes
            .iter()
            .map(|e| JobStatus::of(e, JobState::Queued, detail))
            .collect();
        if let Err(e) = state.set_statuses(&statuses).await {
            tracing::warn!(error = %chain(&e),
                "the jobs are accepted, but their status records could not be written (redis)");
        }
    }

    /// Reads who holds the names that were already claimed (one MGET per
    /// chunk); best effort.
    async fn fill_holders(
        &self,
        jobs: &[Submission<'_>],
        skipped: &[usize],
        outcomes: &mut [Outcome],
    ) {
        let Some(state) = &self.state else {
            return;
        };
        if skipped.is_empty() {
            return;
        }
        let result: Result<Vec<Option<String>>, StateError> = async {
            let mut c = state.conn().await?;
            let mut out = Vec::with_capacity(skipped.len());
            for chunk in skipped.chunks(PIPELINE_CHUNK) {
                let keys: Vec<String> = chunk
                    .iter()
                    .map(|&i| state.keys().pending(&jobs[i].envelope.job.name))
                    .collect();
                let got: Vec<Option<String>> =
                    redis::cmd("MGET").arg(&keys).query_async(&mut *c).await?;
                out.extend(got);
            }
            Ok(out)
        }
        .await;
        match result {
            Ok(holders) => {
                for (&i, holder) in skipped.iter().zip(holders) {
                    outcomes[i] = Outcome::AlreadyQueued { holder };
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot read who holds the skipped names"),
        }
    }
}
