//! `--schedule-every`: the renewal due-scan inside the worker.
//!
//! `common::schedule::run_scheduler` does the work (one instance fleet-wide
//! per period, through a Redis lease); this module gives it a broker
//! connection of its own and a new one whenever that connection drops.

use std::sync::Arc;
use std::time::Duration;

use certfleet_common::amqp::{self, Publisher};
use certfleet_common::{schedule, topology};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Ctx;

/// How often the connection's health is checked while the scheduler runs.
const CHECK: Duration = Duration::from_secs(1);

/// Runs the scheduler every `every` until `shutdown`.
pub(crate) async fn run(ctx: Arc<Ctx>, every: Duration, shutdown: CancellationToken) {
    let name = amqp::connection_name("certfleet-scheduler");
    let mut delay = Duration::from_millis(500);
    while !shutdown.is_cancelled() {
        let opened = async {
            let conn = amqp::connect(&ctx.cfg.amqp_url, &name).await?;
            let publisher = Publisher::new(&conn).await?;
            topology::declare_jobs(publisher.channel()).await?;
            Ok::<_, amqp::BrokerError>((conn, publisher))
        }
        .await;
        let (conn, publisher) = match opened {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, retry_in = ?delay, "scheduler: broker unavailable");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        delay = Duration::from_millis(500);
        info!(?every, "renewal scheduler running in this worker");
        let lost = async {
            loop {
                tokio::time::sleep(CHECK).await;
                if !publisher.channel().status().connected() {
                    return;
                }
            }
        };
        tokio::select! {
            _ = schedule::run_scheduler(&ctx.state, &ctx.store, &publisher, every, shutdown.clone()) => {}
            _ = lost => warn!("scheduler: broker connection lost; reconnecting"),
        }
        certfleet_common::amqp::close(&conn, 200, "scheduler stopping").await;
    }
}
