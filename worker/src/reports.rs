//! Webservers' reports into Redis: a consumer of `certfleet.reports`
//! beside the job consumer, with a connection of its own (a broker outage
//! ends both; each reconnects on the fleet's one policy). Each report is
//! checked ([`Report::from_json`]), recorded (newest per server and name
//! wins: at least once is enough) and acked; a malformed one is logged and
//! dropped; with Redis down it is requeued after a pause, never lost.

use std::sync::Arc;
use std::time::Duration;

use certfleet_common::amqp::{self, RECONNECT};
use certfleet_common::report::Report;
use certfleet_common::topology;
use futures_util::StreamExt as _;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::Ctx;

/// Reports handled at once.
const PREFETCH: u16 = 64;
/// Pause before a report that could not be recorded goes back.
const REDIS_PAUSE: Duration = Duration::from_secs(2);

/// Runs until `shutdown`.
pub(crate) async fn run(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    let name = format!("{}-reports", ctx.connection_name);
    while !shutdown.is_cancelled() {
        let open = || async {
            let conn = amqp::connect(&ctx.cfg.common.amqp_url, &name).await?;
            let ch = conn.create_channel().await?;
            ch.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
            topology::declare_reports(&ch).await?;
            let consumer = ch
                .basic_consume(
                    topology::REPORTS_QUEUE.into(),
                    format!("{}-reports", ctx.worker_id).as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, amqp::BrokerError>((conn, consumer))
        };
        let Some((conn, mut consumer)) = RECONNECT.session(&shutdown, "reports", open).await else {
            return;
        };
        loop {
            let delivery = tokio::select! {
                () = shutdown.cancelled() => break,
                d = consumer.next() => d,
            };
            let Some(Ok(delivery)) = delivery else {
                warn!("reports consumer lost its connection; reconnecting");
                break;
            };
            let settled = match Report::from_json(&delivery.data) {
                Err(e) => {
                    warn!(routing_key = %delivery.routing_key, bytes = delivery.data.len(), error = %e, "malformed server report; dropped");
                    delivery.ack(BasicAckOptions::default()).await
                }
                Ok(report) => match ctx.state.record_report(&report).await {
                    Ok(recorded) => {
                        debug!(server = %report.server, cert_name = %report.name, version = %report.version, recorded, "server report");
                        delivery.ack(BasicAckOptions::default()).await
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot record a server report; it goes back");
                        tokio::time::sleep(REDIS_PAUSE).await;
                        delivery
                            .nack(BasicNackOptions {
                                requeue: true,
                                ..BasicNackOptions::default()
                            })
                            .await
                    }
                },
            };
            if let Err(e) = settled {
                warn!(error = %e, "could not settle a report; it will be redelivered");
            }
        }
        amqp::close(&conn, 200, "bye").await;
    }
}
