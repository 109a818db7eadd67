//! Broker connections and confirmed publishing.
//!
//! Every certfleet client connects and reconnects the same way: one attempt
//! is bounded by [`Reconnect::connect_timeout`] ([`connect`]), and a client
//! that must stay connected (the worker's consumer, the scheduler, `watch`)
//! retries with the one backoff policy [`RECONNECT`]
//! ([`Reconnect::session`]).
//!
//! A message counts as sent only once the broker confirmed it (lapin's
//! `publisher_confirms` example): jobs are published with `mandatory`, so a
//! routing key that reaches no queue comes back as an error instead of
//! vanishing; events are not (a fleet with no subscriber yet is normal).

use std::time::Duration;

use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use crate::error::{Classify, Disposition, chain};
use crate::secret::SecretUrl;
use tokio_util::sync::CancellationToken;

/// Delivery mode 2: the broker writes the message to disk.
pub const PERSISTENT: u8 = 2;
/// Content type of jobs.
pub const CONTENT_TYPE_JOB: &str = "application/x-certfleet-job";

/// A broker failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// Could not connect.
    #[error("cannot connect to the broker at {url}: {source}")]
    Connect {
        /// URL without password.
        url: String,
        /// Cause.
        #[source]
        source: lapin::Error,
    },
    /// A channel operation failed.
    #[error("broker: {0}")]
    Channel(#[from] lapin::Error),
    /// A mandatory message matched no queue.
    #[error(
        "no queue is bound for routing key {routing_key:?} on {exchange}; start a worker (which declares its queue) or check CERTFLEET_WORKER_BINDINGS"
    )]
    Unroutable {
        /// Exchange.
        exchange: String,
        /// Routing key.
        routing_key: String,
    },
    /// No confirm came in time (a blocked or blackholed broker).
    #[error("no publisher confirm from the broker within {}s for {routing_key:?}", .after.as_secs())]
    ConfirmTimeout {
        /// Routing key of the first unconfirmed message.
        routing_key: String,
        /// How long we waited.
        after: Duration,
    },
    /// The broker refused the message (nack).
    #[error("the broker refused the message for {routing_key:?} on {exchange} (nack)")]
    Nacked {
        /// Exchange.
        exchange: String,
        /// Routing key.
        routing_key: String,
    },
}

impl Classify for BrokerError {
    fn disposition(&self) -> Disposition {
        match self {
            BrokerError::Connect { .. } | BrokerError::Channel(_) => Disposition::Stop,
            BrokerError::Unroutable { .. }
            | BrokerError::Nacked { .. }
            | BrokerError::ConfirmTimeout { .. } => Disposition::Retry { after: None },
        }
    }
}

/// How a client connects to the broker and reconnects after losing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnect {
    /// Wait after the first failed attempt; doubled after each further one.
    pub first_delay: Duration,
    /// Longest wait between attempts.
    pub max_delay: Duration,
    /// How long one attempt (TCP connect, TLS, AMQP handshake) may take: a
    /// blackholed address would otherwise hang for the kernel's TCP
    /// timeout.
    pub connect_timeout: Duration,
}

/// The reconnect policy of every certfleet client: quick first retries (a
/// broker restart takes seconds), then at most one attempt every 30 s, so a
/// fleet of workers and webservers does not hammer a broker that is coming
/// back.
pub const RECONNECT: Reconnect = Reconnect {
    first_delay: Duration::from_millis(500),
    max_delay: Duration::from_secs(30),
    connect_timeout: Duration::from_secs(15),
};

impl Reconnect {
    /// The wait after the `failures`-th failed attempt in a row (1 for the
    /// first): [`Reconnect::first_delay`] doubled for each further one, at
    /// most [`Reconnect::max_delay`].
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.first_delay
            .saturating_mul(1u32 << doublings)
            .min(self.max_delay)
    }

    /// Runs `open` (connect and set up a session) until it succeeds,
    /// waiting with exponential backoff between failures, each logged with
    /// `what` and the next delay. Returns `None` once `shutdown` is
    /// cancelled.
    pub async fn session<T, E, F, Fut>(
        &self,
        shutdown: &CancellationToken,
        what: &str,
        mut open: F,
    ) -> Option<T>
    where
        E: std::error::Error + 'static,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut failures: u32 = 0;
        loop {
            let attempt = tokio::select! {
                () = shutdown.cancelled() => return None,
                r = open() => r,
            };
            match attempt {
                Ok(session) => return Some(session),
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let delay = self.delay(failures);
                    tracing::warn!(error = %chain(&e), retry_in = ?delay, "{what}: broker unavailable");
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

/// AMQP heartbeat asked for when the URL names none (`?heartbeat=N`): a
/// broker that goes silent (paused, blackholed) is noticed within about
/// two intervals, instead of RabbitMQ's default of a minute or more.
pub const HEARTBEAT_SECS: u16 = 10;

/// Largest AMQP frame asked for when the URL names none (`?frame_max=N`).
/// lapin keeps a receive and a send buffer of 32 frames per connection,
/// zeroed up front: with RabbitMQ's default of 128 KiB that is 8 MiB
/// resident per connection whether used or not, 16 MiB of a worker's two
/// (its idle RSS was 35 MiB). certfleet's messages are a few KiB (jobs,
/// events; a larger report is sent as several body frames), so 16 KiB
/// frames cost nothing and the buffers take 1 MiB per connection.
pub const FRAME_MAX: u32 = 16 * 1024;

/// `url` with `heartbeat=HEARTBEAT_SECS` and `frame_max=FRAME_MAX` added,
/// each unless it has one.
fn with_defaults(url: &str) -> String {
    let mut out = url.to_string();
    for (key, value) in [
        ("heartbeat", HEARTBEAT_SECS.to_string()),
        ("frame_max", FRAME_MAX.to_string()),
    ] {
        if !out.contains(&format!("{key}=")) {
            let sep = if out.contains('?') { '&' } else { '?' };
            out = format!("{out}{sep}{key}={value}");
        }
    }
    out
}

/// The broker's nodes: `CERTFLEET_AMQP_URL`, one URL or a comma-separated
/// list of a cluster's nodes. [`connect`] tries them in turn, starting with
/// the node that answered last, so a client stays on its node while it
/// lives and moves to the next one that answers when it goes away. Clones
/// share that memory. Printed, passwords are hidden.
#[derive(Clone)]
pub struct BrokerUrls {
    urls: std::sync::Arc<[SecretUrl]>,
    /// Index of the node that answered last.
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// CA and client certificate for `amqps://` nodes.
    tls: std::sync::Arc<crate::config::tls::TlsFiles>,
}

impl BrokerUrls {
    /// The nodes, in the order given.
    ///
    /// # Panics
    /// Never: an empty list is replaced by nothing and must not be passed
    /// (the configuration refuses it); [`BrokerUrls::first`] then panics.
    pub fn new(urls: Vec<SecretUrl>) -> Self {
        Self {
            urls: urls.into(),
            current: std::sync::Arc::default(),
            tls: std::sync::Arc::default(),
        }
    }

    /// With a CA file and client certificate for `amqps://` nodes.
    #[must_use]
    pub fn with_tls(mut self, tls: crate::config::tls::TlsFiles) -> Self {
        self.tls = std::sync::Arc::new(tls);
        self
    }

    /// One node.
    pub fn single(url: SecretUrl) -> Self {
        Self::new(vec![url])
    }

    /// Every node, in the configured order.
    pub fn nodes(&self) -> &[SecretUrl] {
        &self.urls
    }

    /// The node a client last connected to (at first, the first one).
    pub fn current(&self) -> Option<&SecretUrl> {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        self.urls.get(i).or_else(|| self.urls.first())
    }

    /// All nodes, comma separated, with passwords hidden.
    pub fn redacted(&self) -> String {
        self.urls
            .iter()
            .map(SecretUrl::redacted)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl std::fmt::Debug for BrokerUrls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::fmt::Display for BrokerUrls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Connects to the first node of `urls` that answers, starting with the
/// one that answered last, naming the connection (shown in the RabbitMQ
/// UI). Each node gets [`RECONNECT`]'s connect timeout; a node that is down
/// refuses at once, so moving past it costs nothing.
///
/// # Errors
/// [`BrokerError::Connect`] of the last node tried when none answered.
pub async fn connect(urls: &BrokerUrls, connection_name: &str) -> Result<Connection, BrokerError> {
    let n = urls.urls.len();
    let start = urls.current.load(std::sync::atomic::Ordering::Relaxed);
    let mut last = None;
    for i in 0..n {
        let at = (start + i) % n;
        match connect_node(&urls.urls[at], &urls.tls, connection_name).await {
            Ok(conn) => {
                if at != start {
                    if let Some(e) = &last {
                        tracing::warn!(node = %urls.urls[at], skipped = %chain(e), "connected to another broker node");
                    }
                    urls.current.store(at, std::sync::atomic::Ordering::Relaxed);
                }
                return Ok(conn);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| BrokerError::Connect {
        url: String::new(),
        source: lapin::Error::from(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "no broker URL is configured",
        )),
    }))
}

/// Connects once to one node within [`RECONNECT`]'s connect timeout.
async fn connect_node(
    url: &SecretUrl,
    tls: &crate::config::tls::TlsFiles,
    connection_name: &str,
) -> Result<Connection, BrokerError> {
    let props = ConnectionProperties::default()
        .with_connection_name(LongString::from(connection_name.as_bytes().to_vec()));
    let timeout = RECONNECT.connect_timeout;
    let uri = with_defaults(url.expose());
    let connect = async {
        if !tls.is_set() {
            return Connection::connect(&uri, props).await;
        }
        // amqps:// with a private CA (added to the public roots) and/or a
        // client certificate.
        let config = lapin::tcp::OwnedTLSConfig {
            identity: tls
                .client
                .as_ref()
                .map(|(cert, key)| lapin::tcp::OwnedIdentity::PKCS8 {
                    pem: cert.clone().into_bytes(),
                    key: key.expose().clone().into_bytes(),
                }),
            cert_chain: tls.ca_pem.clone(),
        };
        Connection::connect_with_config(&uri, props, config, lapin::runtime::default_runtime()?)
            .await
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(result) => result.map_err(|source| BrokerError::Connect {
            url: url.redacted(),
            source,
        }),
        Err(_) => Err(BrokerError::Connect {
            url: url.redacted(),
            source: lapin::Error::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no answer within {}",
                    crate::config::parse::format_duration(timeout)
                ),
            )),
        }),
    }
}

/// How long a publish may wait for the broker's confirm (a broker that is
/// blocked for lack of memory or disk, or gone silent, answers no confirm):
/// then the message counts as not accepted, a retryable error.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a polite close (close, then the broker's close-ok) may take;
/// after it the connection is dropped anyway.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Closes `conn` politely, giving up after [`CLOSE_TIMEOUT`]. A close never
/// holds a caller up for longer: lapin's close future has been seen never
/// to resolve when the broker's close-ok and the end of the socket cross
/// (a `renew --wait` hung after its job was done). Errors do not matter
/// here: the connection is going away either way.
pub async fn close(conn: &Connection, code: u16, reason: &str) {
    if !conn.status().connected() {
        return;
    }
    let closing = conn.close(code, ShortString::from(reason));
    if tokio::time::timeout(CLOSE_TIMEOUT, closing).await.is_err() {
        tracing::debug!(
            reason,
            "no close-ok from the broker in time; dropping the connection"
        );
    }
}

/// Closes `channel` politely, giving up after [`CLOSE_TIMEOUT`] (see
/// [`close`]).
pub async fn close_channel(channel: &Channel, code: u16, reason: &str) {
    let closing = channel.close(code, ShortString::from(reason));
    if tokio::time::timeout(CLOSE_TIMEOUT, closing).await.is_err() {
        tracing::debug!(reason, "no close-ok for the channel in time; dropping it");
    }
}

/// `certfleet-worker@<hostname>` and the like.
pub fn connection_name(program: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into());
    format!("{program}@{host}")
}

/// A message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    /// Exchange.
    pub exchange: &'a str,
    /// Routing key.
    pub routing_key: &'a str,
    /// Body.
    pub body: &'a [u8],
    /// Content type.
    pub content_type: &'a str,
    /// Message id (the job id).
    pub message_id: Option<&'a str>,
    /// Headers.
    pub headers: Option<FieldTable>,
    /// Return the message if no queue matches.
    pub mandatory: bool,
}

impl<'a> Outgoing<'a> {
    /// A job for the jobs exchange: persistent, mandatory (refused when no
    /// queue is bound), the job id as message id.
    pub fn job(routing_key: &'a str, body: &'a [u8], job_id: Option<&'a str>) -> Self {
        Self {
            exchange: crate::topology::JOBS_EXCHANGE,
            routing_key,
            body,
            content_type: CONTENT_TYPE_JOB,
            message_id: job_id,
            headers: None,
            mandatory: true,
        }
    }

    /// A JSON message (an event, a server report): not mandatory, as a
    /// message nobody follows is fine.
    pub fn json(
        exchange: &'a str,
        routing_key: &'a str,
        body: &'a [u8],
        message_id: Option<&'a str>,
    ) -> Self {
        Self {
            exchange,
            routing_key,
            body,
            content_type: crate::event::CONTENT_TYPE_JSON,
            message_id,
            headers: None,
            mandatory: false,
        }
    }

    fn properties(&self) -> BasicProperties {
        let mut p = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type(ShortString::from(self.content_type));
        if let Some(id) = self.message_id {
            p = p.with_message_id(ShortString::from(id));
        }
        if let Some(h) = &self.headers {
            p = p.with_headers(h.clone());
        }
        p
    }
}

/// A channel in confirm mode.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("channel", &self.channel.id())
            .finish()
    }
}

fn check(confirmation: Confirmation, exchange: &str, routing_key: &str) -> Result<(), BrokerError> {
    match confirmation {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => Err(BrokerError::Unroutable {
            exchange: exchange.to_string(),
            routing_key: routing_key.to_string(),
        }),
        Confirmation::Nack(_) => Err(BrokerError::Nacked {
            exchange: exchange.to_string(),
            routing_key: routing_key.to_string(),
        }),
    }
}

impl Publisher {
    /// Opens a channel on `conn` and turns on publisher confirms.
    ///
    /// # Errors
    /// Broker errors.
    pub async fn new(conn: &Connection) -> Result<Self, BrokerError> {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self { channel })
    }

    /// The underlying channel (for declarations).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Sends one message; the returned future resolves to its confirm.
    async fn start(&self, msg: &Outgoing<'_>) -> lapin::Result<lapin::PublisherConfirm> {
        self.channel
            .basic_publish(
                msg.exchange.into(),
                msg.routing_key.into(),
                BasicPublishOptions {
                    mandatory: msg.mandatory,
                    ..BasicPublishOptions::default()
                },
                msg.body,
                msg.properties(),
            )
            .await
    }

    /// Publishes one message and waits for its confirm.
    ///
    /// # Errors
    /// Broker errors, unroutable (mandatory) or refused messages.
    pub async fn publish(&self, msg: Outgoing<'_>) -> Result<(), BrokerError> {
        let confirmed = async {
            let confirm = self.start(&msg).await?;
            check(confirm.await?, msg.exchange, msg.routing_key)
        };
        tokio::time::timeout(CONFIRM_TIMEOUT, confirmed)
            .await
            .unwrap_or_else(|_| {
                Err(BrokerError::ConfirmTimeout {
                    routing_key: msg.routing_key.to_string(),
                    after: CONFIRM_TIMEOUT,
                })
            })
    }

    /// Publishes many messages, pipelined, then waits for every confirm.
    /// Returns one result per message, in order: a caller can report which
    /// ones were accepted.
    ///
    /// # Errors
    /// A broker error before anything could be sent.
    pub async fn publish_many(
        &self,
        msgs: &[Outgoing<'_>],
    ) -> Result<Vec<Result<(), BrokerError>>, BrokerError> {
        // One deadline for the whole batch: every message not confirmed by
        // then is reported as such (never counted as accepted).
        let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
        let mut pending = Vec::with_capacity(msgs.len());
        for msg in msgs {
            match tokio::time::timeout_at(deadline, self.start(msg)).await {
                Ok(started) => pending.push(Some(started)),
                Err(_) => pending.push(None),
            }
        }
        let mut results = Vec::with_capacity(msgs.len());
        for (msg, confirm) in msgs.iter().zip(pending) {
            let timed_out = || BrokerError::ConfirmTimeout {
                routing_key: msg.routing_key.to_string(),
                after: CONFIRM_TIMEOUT,
            };
            let result = match confirm {
                Some(Ok(c)) => match tokio::time::timeout_at(deadline, c).await {
                    Ok(Ok(conf)) => check(conf, msg.exchange, msg.routing_key),
                    Ok(Err(e)) => Err(BrokerError::Channel(e)),
                    Err(_) => Err(timed_out()),
                },
                Some(Err(e)) => Err(BrokerError::Channel(e)),
                None => Err(timed_out()),
            };
            results.push(result);
        }
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_and_frame_max_are_asked_for_unless_given() {
        assert_eq!(
            with_defaults("amqp://u:p@h:5672/%2f"),
            "amqp://u:p@h:5672/%2f?heartbeat=10&frame_max=16384"
        );
        assert_eq!(
            with_defaults("amqp://h/v?frame_max=8192"),
            "amqp://h/v?frame_max=8192&heartbeat=10"
        );
        assert_eq!(
            with_defaults("amqp://h/v?heartbeat=3"),
            "amqp://h/v?heartbeat=3&frame_max=16384"
        );
        assert_eq!(
            with_defaults("amqp://h/v?heartbeat=3&frame_max=131072"),
            "amqp://h/v?heartbeat=3&frame_max=131072"
        );
    }

    #[test]
    fn reconnect_delays_double_up_to_the_cap() {
        let d: Vec<Duration> = [1, 2, 3, 7, 8, 100, u32::MAX]
            .iter()
            .map(|&n| RECONNECT.delay(n))
            .collect();
        assert_eq!(
            d,
            [
                Duration::from_millis(500),
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_secs(30),
                Duration::from_secs(30),
                Duration::from_secs(30),
                Duration::from_secs(30),
            ]
        );
        assert_eq!(RECONNECT.delay(0), RECONNECT.first_delay);
    }
}
