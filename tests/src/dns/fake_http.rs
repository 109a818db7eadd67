//! A tiny HTTP/1.1 server for the fake provider APIs: one task per connection on
//! 127.0.0.1 (random port), every request collected and handed to an async handler that
//! answers with a status and a body. Dropping the [`FakeServer`] stops it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Response};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A request as the fakes see it.
#[derive(Debug, Clone)]
pub struct FakeRequest {
    pub method: Method,
    /// Path segments, percent-decoded (`/v2/domains/x` → `["v2", "domains", "x"]`).
    pub segments: Vec<String>,
    /// Query parameters, percent-decoded (last one wins).
    pub query: HashMap<String, String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl FakeRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    pub fn segs(&self) -> Vec<&str> {
        self.segments.iter().map(String::as_str).collect()
    }
}

/// What a handler answers: status and body (JSON text, or empty).
pub type FakeAnswer = (u16, String);

pub type Handler =
    Arc<dyn Fn(FakeRequest) -> Pin<Box<dyn Future<Output = FakeAnswer> + Send>> + Send + Sync>;

/// A running fake; stops when dropped.
pub struct FakeServer {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl FakeServer {
    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Start serving `handler` on a fresh loopback port.
pub async fn serve(handler: Handler) -> FakeServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            connections.spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let handler = handler.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let request = FakeRequest {
                            method: parts.method,
                            segments: parts
                                .uri
                                .path()
                                .split('/')
                                .filter(|s| !s.is_empty())
                                .map(decode)
                                .collect(),
                            query: parse_query(parts.uri.query().unwrap_or("")),
                            headers: parts.headers,
                            body,
                        };
                        let (status, text) = handler(request).await;
                        let mut rsp = Response::builder().status(status);
                        if !text.is_empty() {
                            rsp = rsp.header("content-type", "application/json");
                        }
                        Ok::<_, Infallible>(rsp.body(Full::new(Bytes::from(text))).unwrap())
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    FakeServer { addr, task }
}

pub fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Percent-decoding (and `+` as space, as in forms).
pub fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A server that accepts connections and never answers (for timeout tests).
pub async fn silent_server() -> FakeServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    FakeServer { addr, task }
}
