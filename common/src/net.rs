//! The TCP under every HTTP client certfleet builds (the CA, S3 with a
//! private CA, DNS providers' APIs, RabbitMQ's management API, the CLI's
//! revocation by certificate key, the tests' and the benchmark's clients).

use hyper_util::client::legacy::connect::HttpConnector;

/// A TCP connector for a hyper client under a TLS layer: `TCP_NODELAY` on,
/// any URL scheme (the TLS connector above it decides which it allows).
///
/// hyper's own default leaves Nagle's algorithm on. A request written as
/// two segments (HTTP/2 HEADERS then DATA, HTTP/1 headers then the body)
/// then holds its second segment until the peer acknowledges the first,
/// and a peer waiting for the rest delays that ACK (40 ms on Linux): one
/// stall per exchange with a CA whose every request is a POST. The AWS
/// SDK's own client turns it off too.
#[must_use]
pub fn tcp_connector() -> HttpConnector {
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.enforce_http(false);
    tcp
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_service::Service as _;

    /// The socket a client gets has Nagle's algorithm off: a request's
    /// second segment leaves without waiting for the first one's ACK.
    #[tokio::test]
    async fn connections_have_nodelay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let uri: http::Uri = format!("https://{addr}/").parse().unwrap();
        let conn = tcp_connector().call(uri.clone()).await.unwrap();
        assert!(conn.inner().nodelay().unwrap(), "TCP_NODELAY off");
        // hyper's own default, for contrast: the setting is what makes it.
        let mut plain = HttpConnector::new();
        plain.enforce_http(false);
        let plain = plain.call(uri).await.unwrap();
        assert!(!plain.inner().nodelay().unwrap());
        drop(listener);
    }
}
