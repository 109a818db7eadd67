//! The broker connection of the commands that talk to RabbitMQ from the
//! operator's side (`issue`, `submit`, `renew`, `dlq`): one attempt, named
//! `certfleet@<host>` and bounded by the fleet's connect timeout
//! ([`amqp::RECONNECT`]), and one way to close it. Long-running clients
//! (`watch`, `schedule`) reconnect with the same policy.

use certfleet_common::Config;
use certfleet_common::amqp::{self, BrokerError};

/// Connects to the broker once, naming the connection `certfleet@<host>`.
///
/// # Errors
/// [`BrokerError::Connect`], also when the broker does not answer within
/// the connect timeout.
pub(crate) async fn connect_broker(config: &Config) -> Result<lapin::Connection, BrokerError> {
    amqp::connect(&config.amqp_url, &amqp::connection_name("certfleet")).await
}

/// Closes a connection politely (flushes and tells the broker); errors do
/// not matter any more at this point.
pub(crate) async fn close_broker(conn: &lapin::Connection) {
    amqp::close(conn, 200, "bye").await;
}
