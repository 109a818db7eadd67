//! `certfleet exporter`: serves the fleet's certificate metrics
//! ([`certfleet_common::exporter`], named like cert-manager's) on
//! `/metrics`, with `/healthz` and `/readyz`, for one Prometheus job per
//! fleet.
//!
//! Redis is read every `--interval` in the background, not per scrape, so
//! a scrape costs an encode and many Prometheus servers (or an impatient
//! operator with curl) cost Redis nothing. `/readyz` answers 200 while the
//! last successful refresh is at most three intervals old.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use certfleet_common::amqp;
use certfleet_common::exporter::CertMetrics;
use certfleet_common::serve::{self, Reply, StatusCode};
use certfleet_common::state::{State, StateError};
use certfleet_common::topology::DEAD_QUEUE;
use certfleet_common::{Config, Store};
use clap::Args;
use prometheus::Registry;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::args::duration;

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;

/// `certfleet exporter`.
#[derive(Debug, Clone, Args)]
pub struct ExporterArgs {
    /// Where to serve /metrics, /healthz and /readyz (e.g. 0.0.0.0:9403).
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// How often to re-read the fleet from Redis (at least 1s).
    #[arg(long, value_name = "DURATION", value_parser = duration, default_value = "30s")]
    pub interval: Duration,
    /// A renewal counts as overdue this long after its time.
    #[arg(long, value_name = "DURATION", value_parser = duration, default_value = "1h")]
    pub overdue_after: Duration,
    /// Only the fleet summaries: no series per certificate (for fleets
    /// too large to chart one by one).
    #[arg(long)]
    pub summary_only: bool,
}

/// Why `exporter` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExporterError {
    /// Bad arguments found after parsing.
    #[error("{0}")]
    Usage(String),
    /// Redis configuration unusable.
    #[error(transparent)]
    State(#[from] StateError),
    /// The listen address cannot be bound.
    #[error("--listen {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A metric registered twice (a bug).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl ExporterError {
    /// Whether this is bad usage (exit 64).
    pub fn is_usage(&self) -> bool {
        matches!(self, ExporterError::Usage(_))
    }
}

/// Runs the exporter until `shutdown`. Redis being down is logged and
/// retried each interval (and `/readyz` says so); it does not end the
/// exporter.
///
/// # Errors
/// Bad arguments, an unusable Redis configuration, or an address that
/// cannot be bound.
pub(crate) async fn run(
    config: &Config,
    args: &ExporterArgs,
    shutdown: CancellationToken,
) -> Result<(), ExporterError> {
    if args.interval < Duration::from_secs(1) {
        return Err(ExporterError::Usage(
            "--interval must be at least 1s".into(),
        ));
    }
    let grace = time::Duration::try_from(args.overdue_after)
        .map_err(|_| ExporterError::Usage("--overdue-after is too long".into()))?;
    let state = State::from_config(config, 2)?;
    let store = Store::from_config(config).await;
    let registry = Registry::new();
    let metrics = Arc::new(CertMetrics::register(&registry)?);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| ExporterError::Bind {
            addr: args.listen,
            source,
        })?;
    let addr = listener.local_addr().unwrap_or(args.listen);
    // Unix s of the last successful refresh (0: none yet).
    let refreshed = Arc::new(AtomicI64::new(0));
    let stale_after = i64::try_from(args.interval.as_secs().saturating_mul(3)).unwrap_or(i64::MAX);
    let server = {
        let metrics = metrics.clone();
        let refreshed = refreshed.clone();
        tokio::spawn(serve::serve(
            listener,
            "exporter",
            MAX_CONNECTIONS,
            move |req| {
                let reply = answer(
                    req.uri().path(),
                    &metrics,
                    &registry,
                    refreshed.load(Ordering::Relaxed),
                    stale_after,
                );
                async move { reply }
            },
            shutdown.clone(),
        ))
    };
    tracing::info!(%addr, interval = ?args.interval, per_name = !args.summary_only, "exporter serving /metrics");
    let mut failing = false;
    let mut dead = DeadLetters::default();
    while !shutdown.is_cancelled() {
        let now = OffsetDateTime::now_utc();
        match metrics
            .refresh(&state, Some(&store), now, grace, !args.summary_only)
            .await
        {
            Ok(summary) => {
                refreshed.store(now.unix_timestamp(), Ordering::Relaxed);
                if failing {
                    tracing::info!("exporter: Redis answers again");
                }
                failing = false;
                tracing::debug!(?summary, "certificate metrics refreshed");
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "exporter: cannot read the fleet from Redis; the metrics keep their last values");
                }
                failing = true;
            }
        }
        match dead.count(config).await {
            Ok(n) => metrics.set_dead_letters(n),
            Err(e) => tracing::debug!(error = %e, "exporter: cannot count the dead-letter queue"),
        }
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(args.interval) => {}
        }
    }
    dead.close().await;
    let _ = server.await;
    Ok(())
}

/// Counts the dead-letter queue with a passive declare on a connection
/// kept between refreshes (reopened after any failure).
#[derive(Default)]
struct DeadLetters {
    open: Option<(lapin::Connection, lapin::Channel)>,
}

impl DeadLetters {
    async fn count(&mut self, config: &Config) -> Result<u32, amqp::BrokerError> {
        if self.open.is_none() {
            let conn = amqp::connect(
                &config.amqp_url,
                &amqp::connection_name("certfleet-exporter"),
            )
            .await?;
            match conn.create_channel().await {
                Ok(ch) => self.open = Some((conn, ch)),
                Err(e) => {
                    amqp::close(&conn, 320, "channel failed").await;
                    return Err(e.into());
                }
            }
        }
        let Some((_, ch)) = &self.open else {
            return Ok(0);
        };
        let passive = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        match ch
            .queue_declare(
                DEAD_QUEUE.into(),
                passive,
                lapin::types::FieldTable::default(),
            )
            .await
        {
            Ok(q) => Ok(q.message_count()),
            Err(e) => {
                // A failed passive declare closes the channel: start over.
                self.close().await;
                Err(e.into())
            }
        }
    }

    async fn close(&mut self) {
        if let Some((conn, _)) = self.open.take() {
            amqp::close(&conn, 200, "exporter stopping").await;
        }
    }
}

fn answer(
    path: &str,
    metrics: &CertMetrics,
    registry: &Registry,
    refreshed: i64,
    stale_after: i64,
) -> Reply {
    match path {
        "/metrics" => serve::metrics(metrics.encode(registry)),
        "/healthz" => serve::text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            let age = OffsetDateTime::now_utc().unix_timestamp() - refreshed;
            if refreshed > 0 && age <= stale_after {
                serve::text(StatusCode::OK, "ready\n")
            } else if refreshed == 0 {
                serve::text(StatusCode::SERVICE_UNAVAILABLE, "not refreshed yet\n")
            } else {
                serve::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("last refresh {age}s ago\n"),
                )
            }
        }
        _ => serve::text(StatusCode::NOT_FOUND, "not found\n"),
    }
}
