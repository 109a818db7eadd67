//! The dead-letter queue itself: opening it, reading it without losing a
//! message, and purging it.
//!
//! AMQP 0-9-1 has no way to peek at a queue, so reading is done by taking
//! the messages with `basic.get` *without* acknowledging them, and giving
//! them all back at the end with one `basic.nack(multiple, requeue)`, which
//! keeps their order. If anything goes wrong in between (or the process
//! dies), the broker requeues every unacknowledged message when the channel
//! closes: reading never loses a message. While a listing runs, the
//! messages are invisible to other readers of the queue.

use certfleet_common::Config;
use certfleet_common::amqp::BrokerError;
use certfleet_common::topology::{self, DEAD_QUEUE};
use lapin::Channel;
use lapin::options::{BasicGetOptions, BasicNackOptions, QueuePurgeOptions};

use super::error::{DlqError, queue_error};
use super::message::DeadMessage;
use crate::broker::{close_broker, connect_broker};
use crate::output::out;

/// Connects and opens a reading channel, declaring the job topology (which
/// includes the dead-letter queue) so that a fresh broker works too.
pub(super) async fn open(config: &Config) -> Result<(lapin::Connection, Channel), DlqError> {
    let conn = connect_broker(config).await?;
    let channel = conn.create_channel().await.map_err(BrokerError::from)?;
    topology::declare_jobs(&channel)
        .await
        .map_err(queue_error("declare"))?;
    Ok((conn, channel))
}

/// Takes every message with `basic.get`, unacknowledged, until the queue
/// is empty.
///
/// Always the whole queue: a quorum queue puts messages given back at its
/// end, so giving back all of them, in order, restores the original order,
/// where giving back only the first few would move them behind the rest.
pub(super) async fn fetch(channel: &Channel) -> Result<Vec<DeadMessage>, DlqError> {
    let mut messages = Vec::new();
    loop {
        let got = channel
            .basic_get(DEAD_QUEUE.into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(queue_error("read"))?;
        let Some(got) = got else {
            break;
        };
        messages.push(DeadMessage::from_delivery(&got.delivery));
        if got.message_count == 0 {
            break;
        }
    }
    Ok(messages)
}

/// Gives back every message still unacknowledged, up to `last_tag`, in one
/// `basic.nack(multiple, requeue)`.
pub(super) async fn requeue(channel: &Channel, last_tag: Option<u64>) -> Result<(), DlqError> {
    if let Some(tag) = last_tag {
        channel
            .basic_nack(
                tag,
                BasicNackOptions {
                    multiple: true,
                    requeue: true,
                },
            )
            .await
            .map_err(queue_error("give back the messages to"))?;
    }
    Ok(())
}

/// Reads messages, runs `f` on them, then requeues them whatever `f`
/// returned and closes the connection.
pub(super) async fn with_messages<T>(
    config: &Config,
    f: impl FnOnce(&[DeadMessage]) -> T,
) -> Result<T, DlqError> {
    let (conn, channel) = open(config).await?;
    let result = async {
        let messages = fetch(&channel).await?;
        let value = f(&messages);
        requeue(&channel, messages.last().map(|m| m.tag)).await?;
        Ok(value)
    }
    .await;
    // Closing the channel also requeues anything still unacknowledged.
    certfleet_common::amqp::close_channel(&channel, 200, "done").await;
    close_broker(&conn).await;
    result
}

/// `certfleet dlq purge --yes`.
///
/// # Errors
/// Without `--yes` (usage), or broker errors.
pub(crate) async fn purge(config: &Config, yes: bool) -> Result<(), DlqError> {
    if !yes {
        return Err(DlqError::NeedsYes);
    }
    let (conn, channel) = open(config).await?;
    let result = channel
        .queue_purge(DEAD_QUEUE.into(), QueuePurgeOptions::default())
        .await
        .map_err(queue_error("purge"));
    close_broker(&conn).await;
    let n = result?;
    out(format_args!("purged {n} messages from {DEAD_QUEUE}"));
    Ok(())
}
