//! A small HTTP/1.1 server for the worker's http-01 responder and
//! metrics endpoint, and for `certfleet exporter`. The accept loop races
//! the shutdown token, so no server can hold up shutdown (linkerd2-proxy `serve.rs`); open connections get a second
//! to finish. What a client can cost is bounded: at most `max_connections`
//! at once (further connections wait in the listen backlog: mini-redis's
//! `limit_connections`), 10 s to send the request head, and each answer
//! within [`RESPONSE_TIMEOUT`] (else 503).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, warn};

/// Longest time one answer may take (a Redis look-up, a metrics encode);
/// after it the client gets 503 and the work is dropped.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

pub use http::StatusCode;

/// What a handler answers.
pub type Reply = Response<Full<Bytes>>;

/// The answer to a `/metrics` scrape: the encoded registry in the text
/// exposition format, or 500 when encoding failed.
pub fn metrics(encoded: Result<String, prometheus::Error>) -> Reply {
    match encoded {
        Ok(out) => {
            let mut rsp = text(StatusCode::OK, out);
            rsp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(prometheus::TEXT_FORMAT),
            );
            rsp
        }
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n"),
    }
}

/// A response with a short text body.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(body.into()));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}

/// Serves `handler` on `listener` until `shutdown`. Answers are whole
/// bodies (`Full`), or any body a `Full` converts into (a streamed one, for
/// `certfleet dashboard`'s event stream: [`RESPONSE_TIMEOUT`] bounds the
/// time to the response head, not the stream).
pub async fn serve<H, Fut, B>(
    listener: TcpListener,
    name: &'static str,
    max_connections: usize,
    handler: H,
    shutdown: CancellationToken,
) where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + From<Full<Bytes>> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stop = shutdown.clone();
    accept_each(
        listener,
        name,
        max_connections,
        stop,
        move |stream, peer| {
            let handler = handler.clone();
            let shutdown = shutdown.clone();
            async move {
                let service = service_fn(move |req| {
                    let handler = handler.clone();
                    async move {
                        let rsp = tokio::time::timeout(RESPONSE_TIMEOUT, handler(req))
                            .await
                            .unwrap_or_else(|_| {
                                text(StatusCode::SERVICE_UNAVAILABLE, "timed out\n").map(B::from)
                            });
                        Ok::<_, Infallible>(rsp)
                    }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .keep_alive(true)
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            debug!(error = %e, "connection ended");
                        }
                    }
                    _ = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
                    }
                }
            }
            .instrument(tracing::debug_span!("http", server = name, %peer))
        },
    )
    .await;
}

/// Accepts connections on `listener` until `shutdown` and runs `handle`
/// for each in its own task: at most `max_connections` at once (further
/// connections wait in the listen backlog: mini-redis's
/// `limit_connections`), the accept loop racing the shutdown token, and a
/// failed accept (EMFILE and friends) backed off instead of spun on. The
/// HTTP servers above and the worker's tls-alpn-01 responder share it.
pub async fn accept_each<H, Fut>(
    listener: TcpListener,
    name: &'static str,
    max_connections: usize,
    shutdown: CancellationToken,
    handle: H,
) where
    H: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(max_connections.max(1)));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(server = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let connection = handle(stream, peer);
        tokio::spawn(async move {
            let _permit = permit;
            connection.await;
        });
    }
}
