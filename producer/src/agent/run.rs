//! The broker side of `watch`: one session after another until shutdown.
//!
//! A session connects, declares the durable queue `certfleet.watch.<id>`
//! bound to the filters (events published while this server was away have
//! been waiting in it), catches up with storage for every name the filters
//! follow, and only then consumes. When the connection drops, the next
//! session starts after the fleet's one reconnect backoff
//! ([`amqp::RECONNECT`]: 0.5 s doubling up to 30 s; one attempt, queue
//! declaration included, bounded by its connect timeout), and catches up
//! again.
//!
//! An event is acked once the name is in its current version on disk and
//! its hook is recorded as pending (the hook itself runs later, on its own
//! task). If the name cannot be synced (storage away, a disk error, someone
//! else's directory in the way, a current version that fails its checks in
//! `sync`), the event is still acked and the name is
//! retried here, from [`SYNC_RETRY_FIRST`] up to [`SYNC_RETRY_MAX`] apart:
//! storage, not the event, holds what has to be written, and a restart
//! catches up with storage anyway. Holding the delivery instead would
//! stall the queue once the prefetch is used up and trip the broker's
//! consumer timeout. While the broker is away, storage is still caught up
//! with (once per outage) and these retries go on, so a server that boots
//! during a broker outage still gets its certificates.
//! Every [`RESYNC_EVERY`] the whole catch-up runs again,
//! as a safety net for events that never reached the queue (a queue deleted
//! by hand, a binding added later).

use std::collections::HashMap;
use std::time::Duration;

use certfleet_common::amqp::{self, BrokerError, RECONNECT};
use certfleet_common::error::chain;
use certfleet_common::{CertName, Config, Event, EventKind, topology};
use futures_util::StreamExt as _;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::error::WatchError;
use super::hook::backoff;
use super::pattern::Filters;
use super::sync::{Fetched, Syncer};

/// Events in flight per watch: enough to hide the round trip, few enough
/// that a restart redelivers little.
pub(crate) const PREFETCH: u16 = 16;
/// First delay before a name that failed to sync is tried again.
pub(crate) const SYNC_RETRY_FIRST: Duration = Duration::from_secs(5);
/// Longest delay between sync attempts of one name (each logs a warning).
pub(crate) const SYNC_RETRY_MAX: Duration = Duration::from_secs(300);
/// Full catch-up with storage this often, besides each (re)connect.
pub(crate) const RESYNC_EVERY: Duration = Duration::from_secs(3600);
/// Program part of the connection name shown in the RabbitMQ UI.
const PROGRAM: &str = "certfleet-watch";

/// A name waiting for another sync attempt.
#[derive(Debug)]
struct Retry {
    /// What the hook will be told (the first event that asked for it).
    event: String,
    failures: u32,
    at: Instant,
}

/// How a session or a piece of work ended.
#[derive(Debug)]
enum Ended {
    Shutdown,
    Lost(String),
}

/// The outcome of one name's sync.
#[derive(Debug, PartialEq, Eq)]
enum Synced {
    Written,
    Unchanged,
    Missing,
    Failed,
    Shutdown,
}

/// The consumer loop of one watch.
#[derive(Debug)]
pub(crate) struct Watcher {
    syncer: Syncer,
    filters: Filters,
    queue: String,
    retries: HashMap<CertName, Retry>,
    next_resync: Instant,
    resync_failures: u32,
}

impl Watcher {
    pub(crate) fn new(syncer: Syncer, filters: Filters, queue_id: &str) -> Self {
        Self {
            syncer,
            filters,
            queue: topology::watch_queue(queue_id),
            retries: HashMap::new(),
            next_resync: Instant::now() + RESYNC_EVERY,
            resync_failures: 0,
        }
    }

    /// Sessions until shutdown.
    pub(crate) async fn run(
        mut self,
        config: &Config,
        shutdown: &CancellationToken,
    ) -> Result<(), WatchError> {
        let mut failures: u32 = 0;
        // Whether storage was caught up with since the broker went away.
        let mut synced_while_down = false;
        loop {
            let opened = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                r = tokio::time::timeout(RECONNECT.connect_timeout, self.open(config)) => r,
            };
            let reason = match opened {
                Err(_) => format!(
                    "no answer from the broker within {:?}",
                    RECONNECT.connect_timeout
                ),
                Ok(Err(e)) => chain(&e),
                Ok(Ok((conn, channel))) => {
                    let started = Instant::now();
                    synced_while_down = false;
                    tracing::info!(
                        broker = %config.amqp_url.redacted(),
                        dir = %self.syncer.dir.root().display(),
                        queue = %self.queue,
                        filters = ?self.filters.patterns(),
                        "connected; catching up with storage"
                    );
                    let ended = self.session(&channel, shutdown).await;
                    certfleet_common::amqp::close_channel(
                        &channel,
                        200,
                        "certfleet watch stopping",
                    )
                    .await;
                    certfleet_common::amqp::close(&conn, 200, "certfleet watch stopping").await;
                    match ended {
                        Ended::Shutdown => {
                            tracing::info!("stopped");
                            return Ok(());
                        }
                        Ended::Lost(reason) => {
                            // A session that lasted starts the backoff anew;
                            // one that drops at once keeps backing off (and
                            // does not catch up with storage every second).
                            if started.elapsed() >= RECONNECT.max_delay {
                                failures = 0;
                            }
                            reason
                        }
                    }
                }
            };
            failures = failures.saturating_add(1);
            let delay = RECONNECT.delay(failures);
            tracing::warn!(error = %reason, retry_in = ?delay, "broker unavailable; reconnecting");
            // Storage does not need the broker: a server that starts while
            // the broker is away still gets its certificates, and retries
            // and the periodic catch-up go on.
            if !synced_while_down {
                synced_while_down = true;
                if self.catch_up(shutdown).await.is_some() {
                    return Ok(());
                }
            }
            let until = Instant::now() + delay;
            loop {
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep_until(until.min(self.next_wake())) => {}
                }
                if Instant::now() >= until {
                    break;
                }
                if self.due(shutdown).await.is_some() {
                    return Ok(());
                }
            }
        }
    }

    async fn open(&self, config: &Config) -> Result<(Connection, Channel), BrokerError> {
        let conn = amqp::connect(&config.amqp_url, &amqp::connection_name(PROGRAM)).await?;
        let setup = async {
            topology::ensure_events(&conn).await?;
            let channel = conn.create_channel().await?;
            channel
                .basic_qos(PREFETCH, BasicQosOptions::default())
                .await?;
            topology::declare_watch_queue(&channel, &self.queue, self.filters.patterns()).await?;
            Ok::<_, lapin::Error>(channel)
        };
        match setup.await {
            Ok(channel) => Ok((conn, channel)),
            Err(e) => {
                certfleet_common::amqp::close(&conn, 200, "setup failed").await;
                Err(BrokerError::Channel(e))
            }
        }
    }

    /// Catch up, then consume until the connection is lost or shutdown.
    async fn session(&mut self, channel: &Channel, shutdown: &CancellationToken) -> Ended {
        if let Some(ended) = self.catch_up(shutdown).await {
            return ended;
        }
        let consumer = channel
            .basic_consume(
                self.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await;
        let mut consumer = match consumer {
            Ok(c) => c,
            Err(e) => return Ended::Lost(chain(&e)),
        };
        loop {
            let wake = self.next_wake();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    // Stop deliveries; the unacked ones go back to the queue
                    // when the channel closes.
                    let _ = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()).await;
                    return Ended::Shutdown;
                }
                () = tokio::time::sleep_until(wake) => {
                    if let Some(ended) = self.due(shutdown).await {
                        return ended;
                    }
                }
                delivery = consumer.next() => {
                    let delivery = match delivery {
                        None => return Ended::Lost("the broker cancelled the consumer (queue deleted?)".into()),
                        Some(Err(e)) => return Ended::Lost(chain(&e)),
                        Some(Ok(d)) => d,
                    };
                    if self.handle(&delivery.data, &delivery.routing_key.to_string(), shutdown).await.is_some() {
                        // Shutdown mid-event: not acked, redelivered next time.
                        return Ended::Shutdown;
                    }
                    if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                        return Ended::Lost(chain(&e));
                    }
                }
            }
        }
    }

    fn next_wake(&self) -> Instant {
        self.retries
            .values()
            .map(|r| r.at)
            .fold(self.next_resync, Instant::min)
    }

    /// Runs the retries that are due, or the periodic catch-up.
    async fn due(&mut self, shutdown: &CancellationToken) -> Option<Ended> {
        let now = Instant::now();
        if now >= self.next_resync {
            return self.catch_up(shutdown).await;
        }
        let due: Vec<(CertName, String)> = self
            .retries
            .iter()
            .filter(|(_, r)| r.at <= now)
            .map(|(n, r)| (n.clone(), r.event.clone()))
            .collect();
        for (name, event) in due {
            if self.sync(&name, &event, shutdown).await == Synced::Shutdown {
                return Some(Ended::Shutdown);
            }
        }
        None
    }

    /// Brings every followed name up to date. `Some` only on shutdown.
    async fn catch_up(&mut self, shutdown: &CancellationToken) -> Option<Ended> {
        let names = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Some(Ended::Shutdown),
            r = self.syncer.store.names() => r,
        };
        let names = match names {
            Ok(n) => n,
            Err(e) => {
                self.resync_failures = self.resync_failures.saturating_add(1);
                let delay = backoff(self.resync_failures, SYNC_RETRY_FIRST, SYNC_RETRY_MAX);
                self.next_resync = Instant::now() + delay;
                tracing::warn!(error = %chain(&e), retry_in = ?delay, "cannot list certificates in storage; consuming events meanwhile");
                return None;
            }
        };
        self.resync_failures = 0;
        let (mut written, mut unchanged, mut failed) = (0usize, 0usize, 0usize);
        let followed: Vec<CertName> = names
            .into_iter()
            .filter(|n| self.filters.follows(n))
            .collect();
        for name in &followed {
            match self.sync(name, "sync", shutdown).await {
                Synced::Written => written += 1,
                Synced::Unchanged => {
                    unchanged += 1;
                    // What this server holds (a version just written is
                    // reported once its hook ran).
                    self.syncer.report_held(name).await;
                }
                Synced::Missing => unchanged += 1,
                Synced::Failed => failed += 1,
                Synced::Shutdown => return Some(Ended::Shutdown),
            }
        }
        self.next_resync = Instant::now() + RESYNC_EVERY;
        tracing::info!(written, unchanged, failed, "caught up with storage");
        None
    }

    /// Makes the disk hold the name's current version; on failure, schedules
    /// a retry.
    async fn sync(&mut self, name: &CertName, event: &str, shutdown: &CancellationToken) -> Synced {
        self.sync_hinted(name, event, None, shutdown).await
    }

    /// [`Watcher::sync`] with the version an event announced (a hint: see
    /// `sync`).
    async fn sync_hinted(
        &mut self,
        name: &CertName,
        event: &str,
        hint: Option<&str>,
        shutdown: &CancellationToken,
    ) -> Synced {
        // Reading storage may be slow and is safe to abandon; writing is not
        // raced with shutdown (it is short and must not stop half-way).
        let fetched = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Synced::Shutdown,
            r = self.syncer.fetch_hinted(name, hint) => r,
        };
        let result = match fetched {
            Ok(Fetched::Missing) => {
                self.retries.remove(name);
                return Synced::Missing;
            }
            Ok(Fetched::Unchanged { version }) => {
                tracing::debug!(cert_name = %name, %version, "already current");
                self.retries.remove(name);
                self.syncer.observed(name, false);
                return Synced::Unchanged;
            }
            Ok(Fetched::New(material)) => {
                let (version, serial) = (material.version.clone(), material.serial.clone());
                self.syncer
                    .apply(material, event)
                    .await
                    .map(|path| (version, serial, path))
            }
            Err(e) => Err(e),
        };
        match result {
            Ok((version, serial, path)) => {
                self.retries.remove(name);
                self.syncer.observed(name, true);
                tracing::info!(cert_name = %name, %version, %serial, %event, path = %path.display(), "certificate written");
                Synced::Written
            }
            Err(e) => {
                let retry = self.retries.entry(name.clone()).or_insert_with(|| Retry {
                    event: event.to_string(),
                    failures: 0,
                    at: Instant::now(),
                });
                retry.failures = retry.failures.saturating_add(1);
                let delay = backoff(retry.failures, SYNC_RETRY_FIRST, SYNC_RETRY_MAX);
                retry.at = Instant::now() + delay;
                tracing::warn!(cert_name = %name, error = %chain(&e), attempt = retry.failures, retry_in = ?delay, "cannot update the certificate files");
                Synced::Failed
            }
        }
    }

    /// Handles one event. `Some` only on shutdown (then it is not acked).
    async fn handle(
        &mut self,
        body: &[u8],
        routing_key: &str,
        shutdown: &CancellationToken,
    ) -> Option<Ended> {
        let event = match Event::from_json(body) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(%routing_key, bytes = body.len(), error = %e, "undecodable event; dropped");
                return None;
            }
        };
        let key = event.routing_key();
        if !self.filters.matches_key(&key) {
            tracing::debug!(routing_key = %key, "event outside --filter (a binding left from an earlier run?); ignored");
            return None;
        }
        let name = &event.name;
        match event.kind {
            EventKind::Issued | EventKind::Renewed | EventKind::Resealed => {
                let hint = event.certificate.as_ref().map(|c| c.version.as_str());
                match self
                    .sync_hinted(name, event.kind.as_str(), hint, shutdown)
                    .await
                {
                    Synced::Shutdown => return Some(Ended::Shutdown),
                    Synced::Missing => {
                        tracing::warn!(cert_name = %name, kind = event.kind.as_str(), "event for a certificate storage does not hold; ignored")
                    }
                    Synced::Written | Synced::Unchanged | Synced::Failed => {}
                }
            }
            EventKind::Failed => {
                let (kind, detail) = event
                    .error
                    .as_ref()
                    .map(|f| (f.kind.as_str(), f.detail.as_str()))
                    .unwrap_or(("unknown", ""));
                tracing::warn!(cert_name = %name, job_id = %event.job_id, attempt = event.attempt, error_kind = kind, detail, "certificate job failed; files left as they are");
            }
            EventKind::Revoked => {
                let serial = event
                    .certificate
                    .as_ref()
                    .map(|c| c.serial.as_str())
                    .unwrap_or("");
                tracing::warn!(cert_name = %name, serial, "certificate revoked; files left as they are until a new one is issued");
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use certfleet_common::config::Sources;
    use certfleet_common::{Config, Store};

    use super::*;
    use crate::agent::files::CertDir;

    /// A watcher whose storage is unreachable (nothing listens on port 1).
    async fn watcher(dir: &std::path::Path, filters: &[&str]) -> Watcher {
        let env: HashMap<&str, &str> = HashMap::from([
            ("CERTFLEET_S3_ENDPOINT", "http://127.0.0.1:1"),
            ("CERTFLEET_S3_PATH_STYLE", "true"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
        ]);
        let config = Config::load(&Sources::new(&env)).expect("config");
        let syncer = Syncer {
            store: Store::from_config(&config).await,
            dir: CertDir::open(dir).expect("dir"),
            hooks: None,
            metrics: None,
            reporter: None,
        };
        let filters: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
        Watcher::new(syncer, Filters::parse(&filters).expect("filters"), "web-1")
    }

    fn event(kind: &str, name: &str) -> Vec<u8> {
        let mut v: serde_json::Value = serde_json::from_str(include_str!(
            "../../../common/tests/fixtures/event-issued-v1.json"
        ))
        .expect("fixture");
        v["kind"] = kind.into();
        v["name"] = name.into();
        if kind == "failed" {
            v["error"] = serde_json::json!({"kind": "acme", "detail": "unauthorized"});
        }
        serde_json::to_vec(&v).expect("json")
    }

    #[tokio::test]
    async fn events_that_need_no_storage_are_acked() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut w = watcher(tmp.path(), &["cert.*.#.example.com"]).await;
        let stop = CancellationToken::new();
        for body in [
            b"not json".to_vec(),
            br#"{"schema":"certfleet.event.v1","kind":"issued","name":"../etc"}"#.to_vec(),
            event("failed", "www.example.com"),
            event("revoked", "www.example.com"),
            event("issued", "www.example.org"), // outside the filter
        ] {
            assert!(
                w.handle(&body, "cert.x", &stop).await.is_none(),
                "must be acked"
            );
        }
        assert!(w.retries.is_empty());
        assert!(!tmp.path().join("www.example.org").exists());
    }

    #[tokio::test]
    async fn a_name_that_cannot_be_synced_is_acked_and_retried() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut w = watcher(tmp.path(), &[]).await;
        let stop = CancellationToken::new();
        let body = event("renewed", "www.example.com");
        assert!(
            w.handle(&body, "cert.renewed.www.example.com", &stop)
                .await
                .is_none()
        );
        let name = CertName::parse("www.example.com").expect("name");
        let retry = w.retries.get(&name).expect("retry scheduled");
        assert_eq!((retry.event.as_str(), retry.failures), ("renewed", 1));
        assert!(retry.at > Instant::now() && w.next_wake() == retry.at);
        // A second failure backs off further and keeps the first event.
        let first = retry.at;
        w.sync(&name, "sync", &stop).await;
        let retry = w.retries.get(&name).expect("still scheduled");
        assert_eq!((retry.event.as_str(), retry.failures), ("renewed", 2));
        assert!(retry.at > first);
    }

    #[tokio::test]
    async fn shutdown_interrupts_a_sync_without_acking() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut w = watcher(tmp.path(), &[]).await;
        let stop = CancellationToken::new();
        stop.cancel();
        let body = event("issued", "www.example.com");
        assert!(matches!(
            w.handle(&body, "cert.issued.www.example.com", &stop).await,
            Some(Ended::Shutdown)
        ));
    }
}
