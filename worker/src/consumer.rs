//! The consumer loop: connect, declare, consume, reconnect, drain.
//!
//! Each delivery becomes a task in a `TaskTracker`; AMQP prefetch
//! (= `CERTFLEET_CONCURRENCY`) bounds how many run at once. When the
//! connection drops, the loop reconnects with the fleet's one policy
//! ([`amqp::RECONNECT`]) and redeclares;
//! tasks still running finish their work, their acks fail, and the broker
//! redelivers those messages — the next delivery finds the stored order or
//! the stored certificate and resumes instead of starting over.
//!
//! Shutdown (STYLE §5): cancel the consumer (`basic.cancel`), let in-flight
//! jobs reach ack or requeue within the grace period, abandon the rest (they
//! stay unacked and are redelivered), close the channel and connection.

use std::sync::Arc;
use std::time::Duration;

use certfleet_common::amqp::{self, Publisher, RECONNECT};
use certfleet_common::topology;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::Ctx;
use crate::events::Outbox;
use crate::metrics::JobLabels;
use crate::process::{self, Action};

/// How often the session's connection and publishing channel are checked.
const HEALTH_CHECK: Duration = Duration::from_secs(1);
/// After the grace period, jobs still running get this long to notice the
/// hard stop and hand their deliveries back.
const HARD_STOP_GRACE: Duration = Duration::from_secs(5);

struct Session {
    conn: Connection,
    channel: Channel,
    consumer: Consumer,
    outbox: Outbox,
    tag: String,
}

async fn open(ctx: &Ctx) -> Result<Session, certfleet_common::amqp::BrokerError> {
    let conn = amqp::connect(&ctx.cfg.common.amqp_url, &ctx.connection_name).await?;
    let channel = conn.create_channel().await?;
    let prefetch = u16::try_from(ctx.cfg.worker.concurrency.get()).unwrap_or(u16::MAX);
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    topology::declare_work_queue(
        &channel,
        &ctx.cfg.worker.work_queue,
        &ctx.cfg.worker.bindings,
    )
    .await?;
    topology::declare_events(&channel).await?;
    let publisher = Publisher::new(&conn).await?;
    let tag = format!("{}-{}", ctx.worker_id, uuid::Uuid::new_v4().simple());
    let consumer = channel
        .basic_consume(
            ctx.cfg.worker.work_queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(Session {
        conn,
        channel,
        consumer,
        outbox: Outbox::new(publisher),
        tag,
    })
}

/// Runs until `shutdown`, then drains.
pub(crate) async fn run(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let hard_stop = CancellationToken::new();
    let mut last: Option<Session> = None;
    'connect: while !shutdown.is_cancelled() {
        let Some(mut session) = RECONNECT
            .session(&shutdown, "consumer", || open(&ctx))
            .await
        else {
            break 'connect;
        };
        ctx.metrics.service.broker_connects.inc();
        ctx.broker_ready.send_replace(true);
        info!(queue = %ctx.cfg.worker.work_queue, concurrency = ctx.cfg.worker.concurrency.get(), "consuming");
        // Cancelled by a job that found the publishing channel dead: the
        // session is over, and every delivery still held goes back to the
        // broker with the connection (none is requeued into a hot loop).
        let broken = CancellationToken::new();
        let mut health = tokio::time::interval(HEALTH_CHECK);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = tokio::select! {
                () = broken.cancelled() => {
                    warn!("the publishing channel is closed; reconnecting");
                    break;
                }
                _ = health.tick() => {
                    // A broker short of memory or disk blocks publishers:
                    // not ready while it lasts; a dead publishing channel
                    // ends the session.
                    let status = session.conn.status();
                    ctx.broker_ready.send_replace(status.connected() && !status.blocked());
                    if !session.outbox.is_open() {
                        broken.cancel();
                    }
                    continue;
                }
                _ = shutdown.cancelled() => {
                    if let Err(e) = session
                        .channel
                        .basic_cancel(session.tag.as_str().into(), BasicCancelOptions::default())
                        .await
                    {
                        warn!(error = %e, "basic.cancel failed");
                    }
                    ctx.broker_ready.send_replace(false);
                    last = Some(session);
                    break 'connect;
                }
                d = session.consumer.next() => d,
            };
            match next {
                Some(Ok(delivery)) => {
                    let ctx = ctx.clone();
                    let outbox = session.outbox.clone();
                    let hard_stop = hard_stop.clone();
                    let broken = broken.clone();
                    tracker.spawn(
                        async move {
                            let started = Instant::now();
                            ctx.metrics.jobs.in_flight.inc();
                            let handled = process::handle(&ctx, &outbox, &delivery, &hard_stop).await;
                            ctx.metrics.jobs.in_flight.dec();
                            let acked = match handled.action {
                                Action::Ack => delivery.ack(BasicAckOptions::default()).await,
                                // Requeued now, it would come straight back
                                // to this session and fail the same way: it
                                // stays unacked and returns to the broker
                                // when the session closes.
                                Action::Requeue if !outbox.is_open() => {
                                    broken.cancel();
                                    Ok(false)
                                }
                                Action::Requeue => {
                                    delivery
                                        .nack(BasicNackOptions {
                                            requeue: true,
                                            ..BasicNackOptions::default()
                                        })
                                        .await
                                }
                            };
                            if let Err(e) = acked {
                                // The channel is gone: the broker redelivers it.
                                warn!(error = %e, "could not settle the delivery; it will be redelivered");
                            }
                            let labels = JobLabels {
                                kind: handled.kind,
                                challenge: JobLabels::challenge_of(delivery.routing_key.as_str()),
                                outcome: handled.outcome,
                            };
                            ctx.metrics
                                .jobs
                                .handled(&labels, started.elapsed().as_secs_f64());
                        }
                        .instrument(info_span!("delivery")),
                    );
                }
                Some(Err(e)) => {
                    warn!(error = %e, "broker connection lost; reconnecting");
                    break;
                }
                None => {
                    warn!("consumer cancelled by the broker; reconnecting");
                    break;
                }
            }
        }
        ctx.broker_ready.send_replace(false);
        certfleet_common::amqp::close(&session.conn, 320, "reconnecting").await;
    }

    // Drain.
    tracker.close();
    let grace = ctx.cfg.worker.shutdown_grace;
    if !tracker.is_empty() {
        info!(
            in_flight = tracker.len(),
            ?grace,
            "waiting for in-flight jobs"
        );
    }
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!(
            in_flight = tracker.len(),
            "grace period over; handing the remaining jobs back to the broker"
        );
        hard_stop.cancel();
        let _ = tokio::time::timeout(HARD_STOP_GRACE, tracker.wait()).await;
    }
    if let Some(session) = last {
        certfleet_common::amqp::close_channel(&session.channel, 200, "shutdown").await;
        certfleet_common::amqp::close(&session.conn, 200, "shutdown").await;
    }
    info!("consumer stopped");
}
