//! `certfleet-worker`: consumes certificate jobs, runs the ACME orders,
//! answers http-01, stores bundles, publishes events, serves metrics.
//!
//! # Layout
//! - [`consumer`]: the AMQP loop — connect, declare, consume, reconnect, drain.
//! - `process`: one job from delivery to acknowledgement, and what an error
//!   means for it (retry, defer, fail, stop).
//! - `unwind`: a panic in one job becomes that job's dead letter.
//! - `lease`: one order per name fleet-wide (Redis lease + fencing token).
//! - `acme`: the fleet's account, the HTTP client, resumable orders.
//! - `keys`: private keys, CSRs, parsing what the CA returns.
//! - `store`: bundle first, then the fenced pointer flip.
//! - `events`: events, retries and dead letters, all confirmed.
//! - `ratelimit`: CA limits counted fleet-wide in Redis.
//! - `ari`: the CA's renewal windows read again on its schedule.
//! - [`http01`] and `serve`: the challenge responder and the metrics server.
//! - `tlsalpn01`: the tls-alpn-01 responder (RFC 8737), answers from Redis.
//! - [`dns01`]: the dns-01 providers (RFC 2136, DigitalOcean, Cloudflare,
//!   Route 53, acme-dns, exec), the propagation check and the solver.
//! - [`config`]: the worker's own configuration sections (ACME, process).
//! - [`objects`]: the writes to the bucket (only workers write).
//! - [`renewal`]: when a certificate is due (the rule behind the expiry
//!   index).
//! - [`metrics`].
//!
//! With `--schedule-every`, the renewal scheduler of
//! [`certfleet_common::schedule`] runs beside the consumer on its own
//! broker connection.
//!
//! [`start`] binds the listeners and spawns everything; tests call it
//! in-process with port 0 and drive the worker as the CA and the broker
//! would.

pub(crate) mod acme;
pub(crate) mod ari;
pub mod config;
pub mod consumer;
pub mod dns01;
pub(crate) mod error;
pub(crate) mod events;
pub mod http01;
pub(crate) mod keys;
pub(crate) mod lease;
pub mod metrics;
pub mod objects;
pub(crate) mod process;
pub(crate) mod ratelimit;
pub mod renewal;
mod reports;
pub(crate) mod tlsalpn01;
pub(crate) use certfleet_common::serve;
pub(crate) mod store;
pub(crate) mod unwind;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::Settings;
use bytes::Bytes;
use certfleet_common::state::State;
use certfleet_common::storage::Store;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

pub use error::JobError;
use metrics::Metrics;

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Which listener.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The ACME client could not be set up (bad CA certificates file).
    #[error(transparent)]
    Client(#[from] acme::client::ClientError),
    /// The Redis pool could not be built.
    #[error(transparent)]
    State(#[from] certfleet_common::state::StateError),
    /// The bucket is missing, not writable, or its endpoint ignores
    /// conditional writes.
    #[error(transparent)]
    Storage(#[from] objects::StorageCheckError),
    /// A dns-01 provider could not be set up.
    #[error("dns-01: {0}")]
    Dns01(#[from] dns01::DnsError),
    /// The metrics could not be registered (a bug: a name twice).
    #[error("metrics: {0}")]
    Metrics(#[from] metrics::RegisterError),
}

impl StartError {
    /// Whether the configuration is at fault (exit 64) rather than the
    /// environment (exit 1).
    pub fn is_config(&self) -> bool {
        matches!(self, StartError::Client(_) | StartError::Dns01(_))
    }
}

/// Redis connections of the http-01 responder (separate from the pool
/// that keeps leases and orders going).
const HTTP01_REDIS_POOL: usize = 4;
/// Connections the http-01 responder serves at once.
const HTTP01_MAX_CONNECTIONS: usize = 256;
/// Connections the metrics and health endpoint serves at once.
const METRICS_MAX_CONNECTIONS: usize = 16;

/// Shared by every task of a worker.
pub(crate) struct Ctx {
    pub(crate) cfg: Settings,
    pub(crate) issuers: acme::Issuers,
    pub(crate) store: Store,
    pub(crate) state: State,
    pub(crate) metrics: Metrics,
    /// `hostname-pid-random`: names leases and consumer tags.
    pub(crate) worker_id: String,
    pub(crate) connection_name: String,
    /// Whether the consumer is connected (for `/readyz` and [`Running::ready`]).
    pub(crate) broker_ready: tokio::sync::watch::Sender<bool>,
    /// Set when this worker's encryption key did not open what the fleet
    /// sealed: `/readyz` answers 503 with it until a restart (the key is
    /// configuration), and jobs meeting it are deferred, not dead-lettered.
    pub(crate) key_fault: std::sync::Mutex<Option<String>>,
}

/// A running worker.
pub struct Running {
    /// Where the http-01 responder listens.
    pub http01_addr: SocketAddr,
    /// Where the tls-alpn-01 responder listens, if it does.
    pub tlsalpn01_addr: Option<SocketAddr>,
    /// Where `/metrics`, `/healthz`, `/readyz` are served.
    pub metrics_addr: SocketAddr,
    ready: tokio::sync::watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl Running {
    /// Waits until the worker consumes from the broker (its queue is
    /// declared and bound). Returns false if it did not within `timeout`.
    pub async fn ready(&self, timeout: std::time::Duration) -> bool {
        let mut rx = self.ready.clone();
        tokio::time::timeout(timeout, rx.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits until the worker has shut down (after the token is cancelled).
    pub async fn wait(self) {
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "worker task panicked");
        }
    }
}

/// Binds with `SO_REUSEPORT`, so several workers on one host (or a worker
/// and its replacement during a rolling restart) can all answer http-01 on
/// the same address: any of them can, since the answers live in Redis.
fn bind_shared(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn worker_id() -> String {
    let host = certfleet_common::amqp::connection_name("w")
        .trim_start_matches("w@")
        .to_string();
    let suffix: u32 = rand::random::<u32>() % 0x10000;
    format!("{host}-{}-{suffix:04x}", std::process::id())
}

/// Binds the listeners, builds the clients and spawns the worker. Returns
/// once everything is listening; the worker runs until `shutdown`.
///
/// # Errors
/// A listener that cannot be bound, an unreadable CA file.
pub async fn start(
    cfg: Settings,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<Running, StartError> {
    let http01 = bind_shared(cfg.worker.http01_listen).map_err(|source| StartError::Bind {
        addr: cfg.worker.http01_listen,
        what: "http-01",
        source,
    })?;
    let tlsalpn01 = match cfg.worker.tlsalpn01_listen {
        Some(addr) => {
            let bind = |source| StartError::Bind {
                addr,
                what: "tls-alpn-01",
                source,
            };
            let listener = bind_shared(addr).map_err(bind)?;
            let local = listener.local_addr().map_err(bind)?;
            Some((listener, local))
        }
        None => None,
    };
    let tlsalpn01_addr = tlsalpn01.as_ref().map(|(_, a)| *a);
    let metrics_listener =
        TcpListener::bind(cfg.worker.metrics_listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: cfg.worker.metrics_listen,
                what: "metrics",
                source,
            })?;
    let http01_addr = http01.local_addr().map_err(|source| StartError::Bind {
        addr: cfg.worker.http01_listen,
        what: "http-01",
        source,
    })?;
    let metrics_addr = metrics_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: cfg.worker.metrics_listen,
            what: "metrics",
            source,
        })?;

    let metrics = Metrics::register(&registry)?;
    let registry = Arc::new(registry);
    let pool_size = (cfg.worker.concurrency.get() as usize / 2).clamp(8, 64);
    let state = State::from_config(&cfg.common, pool_size)?;
    let store = Store::from_config(&cfg.common).await;
    let id = worker_id();
    {
        use objects::ObjectWrites as _;
        store.check(&store.keys().probe(&id)).await?;
    }
    let local_answers = Arc::new(http01::LocalAnswers::default());
    let dns01 = dns01::Solver::new(&cfg.dns01).await?.map(Arc::new);
    let mut list = Vec::with_capacity(cfg.issuers.len());
    for issuer in &cfg.issuers {
        list.push(
            acme::Acme::new(
                issuer.clone(),
                store.clone(),
                state.clone(),
                metrics.clone(),
                local_answers.clone(),
                dns01.clone(),
            )?
            .serving_tlsalpn01(tlsalpn01.is_some()),
        );
    }
    let issuers = acme::Issuers::new(list, cfg.fallback_after);
    let ctx = Arc::new(Ctx {
        connection_name: certfleet_common::amqp::connection_name("certfleet-worker"),
        cfg,
        issuers,
        store,
        state,
        metrics,
        worker_id: id.clone(),
        broker_ready: tokio::sync::watch::Sender::new(false),
        key_fault: std::sync::Mutex::new(None),
    });
    let ready = ctx.broker_ready.subscribe();
    {
        // certfleet_worker_ready follows the consumer's state.
        let mut rx = ctx.broker_ready.subscribe();
        let gauge = ctx.metrics.service.ready.clone();
        tokio::spawn(async move {
            loop {
                gauge.set(i64::from(*rx.borrow_and_update()));
                if rx.changed().await.is_err() {
                    gauge.set(0);
                    break;
                }
            }
        });
    }
    if let Ok(Some(warning)) = ctx.cfg.common.storage.check_for_worker() {
        warn!("{warning}");
    }
    info!(
        worker = %id,
        http01 = %http01_addr,
        tlsalpn01 = ?tlsalpn01_addr,
        metrics = %metrics_addr,
        ca = ctx.issuers.primary().ca(),
        issuers = ?ctx.issuers.names(),
        "worker starting"
    );

    let servers = CancellationToken::new();
    let alpn_local = local_answers.clone();
    let h01 = {
        // The responder's own small Redis pool: a flood of requests for
        // unknown tokens waits on it, never on the pool that keeps leases
        // alive.
        let state = State::from_config(&ctx.cfg.common, HTTP01_REDIS_POOL)?;
        let m = ctx.metrics.service.clone();
        tokio::spawn(serve::serve(
            http01,
            "http01",
            HTTP01_MAX_CONNECTIONS,
            move |req| http01::respond(req, state.clone(), local_answers.clone(), m.clone()),
            servers.clone(),
        ))
    };
    let alpn = match tlsalpn01 {
        Some((listener, _)) => {
            let state = State::from_config(&ctx.cfg.common, HTTP01_REDIS_POOL)?;
            Some(tokio::spawn(tlsalpn01::serve(
                listener,
                state,
                alpn_local,
                ctx.metrics.service.clone(),
                servers.clone(),
            )))
        }
        None => None,
    };
    let mh = {
        let ctx = ctx.clone();
        tokio::spawn(serve::serve(
            metrics_listener,
            "metrics",
            METRICS_MAX_CONNECTIONS,
            move |req| {
                let ctx = ctx.clone();
                let registry = registry.clone();
                async move { ops(req.uri().path(), &ctx, &registry).await }
            },
            servers.clone(),
        ))
    };
    let schedule = ctx.cfg.worker.schedule_every.map(|every| {
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            certfleet_common::schedule::run(
                &ctx.cfg.common.amqp_url,
                &certfleet_common::amqp::connection_name("certfleet-scheduler"),
                &ctx.state,
                &ctx.store,
                every,
                time::Duration::ZERO,
                shutdown,
            )
            .await;
        })
    });
    // Webservers' reports into Redis (`certfleet rollout`).
    let reports = tokio::spawn(reports::run(ctx.clone(), shutdown.clone()));
    // ARI windows read again when the CA says (any worker; claimed in Redis).
    let ari = tokio::spawn(ari::run(ctx.clone(), shutdown.clone()));
    let task = tokio::spawn(
        async move {
            consumer::run(ctx, shutdown).await;
            if let Some(s) = schedule {
                let _ = s.await;
            }
            let _ = reports.await;
            let _ = ari.await;
            // The responder stays up until the jobs are drained: a job in
            // its grace period may still be validating.
            servers.cancel();
            let _ = h01.await;
            if let Some(a) = alpn {
                let _ = a.await;
            }
            let _ = mh.await;
        }
        .instrument(info_span!("worker")),
    );
    Ok(Running {
        http01_addr,
        tlsalpn01_addr,
        metrics_addr,
        ready,
        task,
    })
}

/// Runs until `shutdown` and the drain are complete.
///
/// # Errors
/// As [`start`].
pub async fn run(
    cfg: Settings,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    start(cfg, registry, shutdown).await?.wait().await;
    Ok(())
}

async fn ops(path: &str, ctx: &Ctx, registry: &Registry) -> Response<Full<Bytes>> {
    match path {
        "/metrics" => serve::metrics(metrics::encode(registry)),
        "/healthz" => serve::text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if !*ctx.broker_ready.borrow() {
                return serve::text(StatusCode::SERVICE_UNAVAILABLE, "broker not connected\n");
            }
            let key_fault = ctx
                .key_fault
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            if let Some(reason) = key_fault {
                return serve::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "encryption key: {reason} (fix CERTFLEET_ENCRYPTION_KEY and restart; jobs are deferred, none is failed)\n"
                    ),
                );
            }
            match ctx.state.ping().await {
                Ok(()) => serve::text(StatusCode::OK, "ready\n"),
                Err(e) => serve::text(StatusCode::SERVICE_UNAVAILABLE, format!("redis: {e}\n")),
            }
        }
        _ => serve::text(StatusCode::NOT_FOUND, "not found\n"),
    }
}
