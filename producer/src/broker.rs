//! The broker connection of the commands that talk to RabbitMQ from the
//! operator's side (`issue`, `submit`, `renew`, `dlq`, `schedule`): one way
//! to open it, named and bounded in time, and one way to close it.
//!
//! `watch` keeps its own connection loop (`agent::run`), with its own
//! timeout and reconnects.

use std::time::Duration;

use certfleet_common::Config;
use certfleet_common::amqp::{self, BrokerError};
use certfleet_common::config;

/// How long connecting to the broker may take before the command gives up
/// (a blackholed address would otherwise hang for the TCP timeout).
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Connects to the broker, naming the connection `certfleet@<host>`, within
/// [`CONNECT_TIMEOUT`].
///
/// # Errors
/// [`BrokerError::Connect`], also on timeout.
pub(crate) async fn connect_broker(config: &Config) -> Result<lapin::Connection, BrokerError> {
    let name = amqp::connection_name("certfleet");
    match tokio::time::timeout(CONNECT_TIMEOUT, amqp::connect(&config.amqp_url, &name)).await {
        Ok(result) => result,
        Err(_) => Err(BrokerError::Connect {
            url: config.amqp_url.redacted(),
            source: lapin::Error::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no answer within {}",
                    config::parse::format_duration(CONNECT_TIMEOUT)
                ),
            )),
        }),
    }
}

/// Closes a connection politely (flushes and tells the broker); errors do
/// not matter any more at this point.
pub(crate) async fn close_broker(conn: &lapin::Connection) {
    amqp::close(conn, 200, "bye").await;
}
