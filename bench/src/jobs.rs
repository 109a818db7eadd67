//! Publishing issue jobs the way `certfleet issue` does (confirmed,
//! mandatory, persistent) and following the events exchange.

use std::time::Duration;

use anyhow::{Context, anyhow};
use certfleet_common::amqp::{self, CONTENT_TYPE_JOB, Outgoing, Publisher};
use certfleet_common::{
    CertName, ChallengeType, Config, Envelope, Event, Job, JobKind, KeyType, topology,
};
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

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
            .publish(Outgoing {
                exchange: topology::JOBS_EXCHANGE,
                routing_key: &envelope.routing_key(),
                body: &body,
                content_type: CONTENT_TYPE_JOB,
                message_id: Some(&id),
                headers: None,
                mandatory: true,
            })
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
        topology::declare_events(&ch).await?;
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        ch.queue_bind(
            q.name().clone(),
            topology::EVENTS_EXCHANGE.into(),
            pattern.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        let consumer = ch
            .basic_consume(
                q.name().clone(),
                "bench-events".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
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
