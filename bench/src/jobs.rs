//! Submitting issue jobs the way `certfleet issue` does (the one
//! [`Submitter`]: confirmed, mandatory, persistent) and following the
//! events exchange.

use std::time::Duration;

use anyhow::{Context, anyhow};
use certfleet_common::amqp;
use certfleet_common::submit::{Dedup, Outcome, Submission, Submitter};
use certfleet_common::{
    CertName, ChallengeType, Config, Envelope, Event, Job, JobKind, KeyType, topology,
};
use futures_util::StreamExt;

/// An issue job for one name (ECDSA P-256) answered with `challenge`.
///
/// # Errors
/// `name` is not a valid certificate name.
pub fn issue_envelope(name: &str, challenge: ChallengeType) -> anyhow::Result<Envelope> {
    Ok(Envelope::new(
        JobKind::Issue,
        Job {
            name: CertName::parse(name)?,
            domains: vec![name.to_string()],
            key_type: KeyType::EcdsaP256,
            challenge,
            reason: "bench".into(),
            options: Default::default(),
        },
        certfleet_common::now_ms(),
    ))
}

/// A submitter on its own connection (no Redis: no status records).
pub struct Jobs {
    conn: lapin::Connection,
    submitter: Submitter,
}

impl Jobs {
    /// Connects and declares the jobs exchange.
    ///
    /// # Errors
    /// Broker unreachable.
    pub async fn connect(cfg: &Config) -> anyhow::Result<Self> {
        let conn = amqp::connect(&cfg.amqp_url, "certfleet-bench").await?;
        let submitter = Submitter::open(&conn, None).await?;
        Ok(Self { conn, submitter })
    }

    /// Submits one envelope and waits for its confirm.
    ///
    /// # Errors
    /// Broker errors, or no queue bound (no worker ever started).
    pub async fn publish(&self, envelope: &Envelope) -> anyhow::Result<()> {
        let refused = self.publish_all(std::slice::from_ref(envelope)).await?;
        anyhow::ensure!(refused == 0, "the job was not accepted");
        Ok(())
    }

    /// Submits many envelopes pipelined; returns how many were refused.
    ///
    /// # Errors
    /// Broker errors before anything was sent.
    pub async fn publish_all(&self, envelopes: &[Envelope]) -> anyhow::Result<usize> {
        let subs: Vec<Submission<'_>> = envelopes.iter().map(Submission::new).collect();
        let outcomes = self.submitter.submit(&subs, Dedup::Off, "bench").await?;
        if let Some(Outcome::NotAccepted(e)) = outcomes.iter().find(|o| !o.is_queued()) {
            tracing::warn!(error = %e, "a job was not accepted");
        }
        Ok(outcomes.iter().filter(|o| !o.is_queued()).count())
    }

    /// The submitter (due-scans).
    pub fn submitter(&self) -> &Submitter {
        &self.submitter
    }

    /// A channel of this connection (declarations, purges).
    ///
    /// # Errors
    /// Broker errors.
    pub async fn channel(&self) -> anyhow::Result<lapin::Channel> {
        Ok(self.conn.create_channel().await?)
    }
}

/// Events matching a pattern, on an exclusive queue of their own.
pub struct Events {
    _conn: lapin::Connection,
    consumer: lapin::Consumer,
}

impl Events {
    /// Declares the queue and binds `pattern` before returning, so no event
    /// published afterwards is missed.
    ///
    /// # Errors
    /// Broker errors.
    pub async fn subscribe(cfg: &Config, pattern: &str) -> anyhow::Result<Self> {
        let conn = amqp::connect(&cfg.amqp_url, "certfleet-bench-events").await?;
        let ch = conn.create_channel().await?;
        let consumer = topology::subscribe_events(&ch, &[pattern.to_string()]).await?;
        Ok(Self {
            _conn: conn,
            consumer,
        })
    }

    /// The next event, or `None` after `timeout`.
    ///
    /// # Errors
    /// The consumer ended or an event did not parse.
    pub async fn next(&mut self, timeout: Duration) -> anyhow::Result<Option<Event>> {
        match tokio::time::timeout(timeout, self.consumer.next()).await {
            Err(_) => Ok(None),
            Ok(None) => Err(anyhow!("the event consumer ended")),
            Ok(Some(d)) => {
                let d = d?;
                Ok(Some(Event::from_json(&d.data).context("event JSON")?))
            }
        }
    }
}
