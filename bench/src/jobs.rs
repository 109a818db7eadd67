//! Publishing issue jobs the way `certfleet issue` does (confirmed,
//! mandatory, persistent) and following the events exchange.

use std::time::Duration;

use anyhow::{Context, anyhow};
use certfleet_common::amqp::{self, Outgoing, Publisher};
use certfleet_common::{
    CertName, ChallengeType, Config, Envelope, Event, Job, JobKind, KeyType, topology,
};
use futures_util::StreamExt;

/// An issue job for one name (ECDSA P-256, http-01: the defaults).
///
/// # Errors
/// `name` is not a valid certificate name.
pub fn issue_envelope(name: &str) -> anyhow::Result<Envelope> {
    Ok(Envelope::new(
        JobKind::Issue,
        Job {
            name: CertName::parse(name)?,
            domains: vec![name.to_string()],
            key_type: KeyType::EcdsaP256,
            challenge: ChallengeType::Http01,
            reason: "bench".into(),
        },
        certfleet_common::now_ms(),
    ))
}

/// A confirmed publisher on its own connection.
pub struct Jobs {
    _conn: lapin::Connection,
    publisher: Publisher,
}

impl Jobs {
    /// Connects and declares the jobs exchange.
    ///
    /// # Errors
    /// Broker unreachable.
    pub async fn connect(cfg: &Config) -> anyhow::Result<Self> {
        let conn = amqp::connect(&cfg.amqp_url, "certfleet-bench").await?;
        let publisher = Publisher::new(&conn).await?;
        topology::declare_jobs(publisher.channel()).await?;
        Ok(Self {
            _conn: conn,
            publisher,
        })
    }

    /// Publishes one envelope and waits for its confirm.
    ///
    /// # Errors
    /// Broker errors, or no queue bound (no worker ever started).
    pub async fn publish(&self, envelope: &Envelope) -> anyhow::Result<()> {
        let body = envelope.encode()?;
        let id = envelope.job_id.to_string();
        self.publisher
            .publish(Outgoing::job(&envelope.routing_key(), &body, Some(&id)))
            .await?;
        Ok(())
    }

    /// The publisher (bulk publishing).
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
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
