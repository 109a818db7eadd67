//! `certfleet dashboard`: one read-only web page with the fleet, updated
//! live.
//!
//! - `dashboard --listen ADDR` serves the page (HTML, CSS and script
//!   embedded in the binary: no CDN), `/api/state` (certificates with days
//!   left, planned renewal, last job, rollout per server; jobs queued and
//!   dead-lettered; recent events) and `/events`, a Server-Sent Events
//!   stream of every event (`cert.#`) and server report (`server.#`), read
//!   from a queue of its own on the broker.
//! - `dashboard token --ttl 15m` stores a one-time token in Redis with that
//!   TTL and prints the page's URL with it. Opening the URL exchanges the
//!   token (GETDEL: a second use fails) for a session of the token's
//!   remaining lifetime, kept in Redis; the page passes the session id in
//!   the query of its API and stream requests (no cookies, as WebSocket and
//!   EventSource clients authenticate in production). No token, a used or
//!   expired one, no session or an expired one: 401. The stream ends when
//!   its session expires.
//!
//! Nothing here writes to the fleet: the dashboard cannot issue, renew or
//! revoke.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use certfleet_common::amqp::{self, RECONNECT};
use certfleet_common::serve::{self, StatusCode};
use certfleet_common::state::State;
use certfleet_common::{Config, topology};
use clap::{Args, Subcommand};
use deadpool_redis::redis::{self, AsyncCommands as _};
use futures_util::StreamExt as _;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Body, Frame, SizeHint};
use hyper::{Request, Response};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use time::OffsetDateTime;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::args::duration;
use crate::output::out;

/// The page.
const PAGE: &str = include_str!("dashboard/page.html");
/// Default address of `--listen` and of the URL `token` prints.
const DEFAULT_ADDR: &str = "127.0.0.1:9700";
/// Recent events kept for a page that opens.
const RECENT: usize = 50;
/// A comment on the event stream this often keeps proxies from closing it.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// How often the queue depths are counted.
const DEPTHS_EVERY: Duration = Duration::from_secs(5);
/// Longest token lifetime.
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// `certfleet dashboard`.
#[derive(Debug, Clone, Args)]
pub struct DashboardArgs {
    /// Where to serve the page.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_ADDR)]
    pub listen: SocketAddr,
    /// `token`: a one-time URL.
    #[command(subcommand)]
    pub command: Option<DashboardCommand>,
}

/// `certfleet dashboard token`.
#[derive(Debug, Clone, Subcommand)]
pub enum DashboardCommand {
    /// Print a URL with a one-time token; opening it starts a session that
    /// ends when the token's lifetime does.
    Token {
        /// Lifetime of the token and of the session it opens (at most 24h).
        #[arg(long, value_name = "DURATION", value_parser = duration, default_value = "15m")]
        ttl: Duration,
        /// The dashboard's base URL, as the browser reaches it.
        #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:9700")]
        url: String,
    },
}

/// Why the dashboard failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DashboardError {
    /// Bad arguments (exit 64).
    #[error("{0}")]
    Usage(String),
    /// Redis.
    #[error(transparent)]
    State(#[from] certfleet_common::state::StateError),
    /// Binding the address.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

impl DashboardError {
    /// Whether this is bad usage (exit 64).
    pub fn is_usage(&self) -> bool {
        matches!(self, DashboardError::Usage(_))
    }
}

/// A response body: whole, or the event stream.
pub(crate) struct DashBody(BoxBody<Bytes, Infallible>);

impl From<Full<Bytes>> for DashBody {
    fn from(full: Full<Bytes>) -> Self {
        Self(full.boxed())
    }
}

impl Body for DashBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

/// Runs a `dashboard` command.
///
/// # Errors
/// See [`DashboardError`].
pub(crate) async fn run(
    config: &Config,
    args: &DashboardArgs,
    shutdown: CancellationToken,
) -> Result<(), DashboardError> {
    let state = State::from_config(config, 8)?;
    match &args.command {
        Some(DashboardCommand::Token { ttl, url }) => token(&state, *ttl, url).await,
        None => serve_page(config, state, args.listen, shutdown).await,
    }
}

fn random_id() -> Result<String, DashboardError> {
    certfleet_common::secret::random_token(24)
        .ok_or_else(|| DashboardError::Usage("the system random source failed".into()))
}

fn token_key(state: &State, token: &str) -> String {
    format!("{}dashboard:token:{token}", state.keys().prefix())
}

fn session_key(state: &State, session: &str) -> String {
    format!("{}dashboard:session:{session}", state.keys().prefix())
}

async fn token(state: &State, ttl: Duration, url: &str) -> Result<(), DashboardError> {
    if ttl < Duration::from_secs(1) || ttl > MAX_TTL {
        return Err(DashboardError::Usage(
            "--ttl must be between 1s and 24h".into(),
        ));
    }
    let parsed = url::Url::parse(url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| DashboardError::Usage(format!("--url {url:?} is not an http(s) URL")))?;
    let token = random_id()?;
    let mut c = state.conn().await?;
    let _: () = c
        .set_ex(token_key(state, &token), ttl.as_secs(), ttl.as_secs())
        .await
        .map_err(certfleet_common::state::StateError::from)?;
    out(format_args!(
        "{}/?token={token}",
        parsed.as_str().trim_end_matches('/')
    ));
    eprintln!(
        "one use, valid for {}s; the session it opens ends with it",
        ttl.as_secs()
    );
    Ok(())
}

/// What the page server shares.
struct Shared {
    config: Config,
    state: State,
    recent: Mutex<VecDeque<serde_json::Value>>,
    /// Jobs in the work queue and the dead-letter queue, as last counted
    /// (`None`: unknown), refreshed every [`DEPTHS_EVERY`].
    depths: Mutex<(Option<u32>, Option<u32>)>,
    stream: broadcast::Sender<Bytes>,
    shutdown: CancellationToken,
}

async fn serve_page(
    config: &Config,
    state: State,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> Result<(), DashboardError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| DashboardError::Listen { addr, source })?;
    let (tx, _) = broadcast::channel(256);
    let shared = Arc::new(Shared {
        config: config.clone(),
        state,
        recent: Mutex::new(VecDeque::new()),
        depths: Mutex::new((None, None)),
        stream: tx,
        shutdown: shutdown.clone(),
    });
    let follower = tokio::spawn(follow(shared.clone()));
    let counter = tokio::spawn(count_depths(shared.clone()));
    tracing::info!(%addr, "dashboard serving (certfleet dashboard token prints a URL)");
    let handler = {
        let shared = shared.clone();
        move |req: Request<hyper::body::Incoming>| {
            let shared = shared.clone();
            async move { answer(&shared, req).await }
        }
    };
    serve::serve(listener, "dashboard", 64, handler, shutdown).await;
    let _ = follower.await;
    let _ = counter.await;
    Ok(())
}

/// Follows events and reports into the recent list and the live streams.
async fn follow(shared: Arc<Shared>) {
    let name = amqp::connection_name("certfleet-dashboard");
    while !shared.shutdown.is_cancelled() {
        let open = || async {
            let conn = amqp::connect(&shared.config.amqp_url, &name).await?;
            topology::ensure_events(&conn).await?;
            topology::ensure_exchange(&conn, topology::REPORTS_EXCHANGE).await?;
            let ch = conn.create_channel().await?;
            let consumer = topology::subscribe(
                &ch,
                &[
                    (topology::EVENTS_EXCHANGE, "cert.#"),
                    (topology::REPORTS_EXCHANGE, "server.#"),
                ],
            )
            .await?;
            Ok::<_, amqp::BrokerError>((conn, consumer))
        };
        let Some((conn, mut consumer)) =
            RECONNECT.session(&shared.shutdown, "dashboard", open).await
        else {
            return;
        };
        loop {
            let next = tokio::select! {
                () = shared.shutdown.cancelled() => break,
                d = consumer.next() => d,
            };
            let Some(Ok(delivery)) = next else {
                tracing::warn!("dashboard lost the broker; reconnecting");
                break;
            };
            // Only JSON objects go on (events and reports are; anything
            // else on these exchanges is dropped).
            let Ok(serde_json::Value::Object(mut body)) =
                serde_json::from_slice::<serde_json::Value>(&delivery.data)
            else {
                continue;
            };
            body.insert(
                "routing_key".into(),
                serde_json::Value::String(delivery.routing_key.to_string()),
            );
            let value = serde_json::Value::Object(body);
            {
                let mut recent = shared
                    .recent
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                recent.push_front(value.clone());
                recent.truncate(RECENT);
            }
            let _ = shared
                .stream
                .send(Bytes::from(format!("data: {value}\n\n")));
        }
        amqp::close(&conn, 200, "bye").await;
    }
}

fn query<'a>(req: &'a Request<hyper::body::Incoming>, key: &str) -> Option<String> {
    let q: &'a str = req.uri().query()?;
    url::form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<DashBody> {
    let mut rsp = serve::text(status, body).map(DashBody::from);
    set_headers(&mut rsp, content_type);
    rsp
}

/// Every answer's headers: its content type, never cached, no referrer.
fn set_headers(rsp: &mut Response<DashBody>, content_type: &'static str) {
    let h = rsp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    h.insert(
        http::header::REFERRER_POLICY,
        http::HeaderValue::from_static("no-referrer"),
    );
}

fn unauthorized(why: &str) -> Response<DashBody> {
    reply(
        StatusCode::UNAUTHORIZED,
        "text/plain; charset=utf-8",
        format!("401: {why}; ask for a new URL with `certfleet dashboard token`\n"),
    )
}

/// The session's remaining lifetime, if it is valid.
async fn session_left(shared: &Shared, session: Option<String>) -> Option<Duration> {
    let session = session.filter(|s| s.len() <= 64)?;
    let mut c = shared.state.conn().await.ok()?;
    let ms: i64 = redis::cmd("PTTL")
        .arg(session_key(&shared.state, &session))
        .query_async(&mut *c)
        .await
        .ok()?;
    u64::try_from(ms)
        .ok()
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
}

async fn answer(shared: &Arc<Shared>, req: Request<hyper::body::Incoming>) -> Response<DashBody> {
    if req.method() != http::Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "read-only\n",
        );
    }
    match req.uri().path() {
        "/" => open_page(shared, query(&req, "token")).await,
        "/api/state" => match session_left(shared, query(&req, "session")).await {
            None => unauthorized("no session, or it expired"),
            Some(_) => state_json(shared).await,
        },
        "/events" => match session_left(shared, query(&req, "session")).await {
            None => unauthorized("no session, or it expired"),
            Some(left) => event_stream(shared, left),
        },
        "/healthz" => reply(StatusCode::OK, "text/plain; charset=utf-8", "ok\n"),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n",
        ),
    }
}

/// Exchanges a one-time token for a session and serves the page with it.
async fn open_page(shared: &Shared, token: Option<String>) -> Response<DashBody> {
    let Some(token) = token.filter(|t| t.len() <= 64) else {
        return unauthorized("no token");
    };
    let exchanged = async {
        let mut c = shared.state.conn().await.ok()?;
        let key = token_key(&shared.state, &token);
        let ttl: Option<u64> = redis::cmd("GETDEL")
            .arg(&key)
            .query_async(&mut *c)
            .await
            .ok()?;
        let ttl = ttl?;
        let session = random_id().ok()?;
        let _: () = c
            .set_ex(session_key(&shared.state, &session), "1", ttl)
            .await
            .ok()?;
        Some((session, ttl))
    }
    .await;
    let Some((session, ttl)) = exchanged else {
        return unauthorized("the token was used already, or expired");
    };
    let expires = OffsetDateTime::now_utc().unix_timestamp() + i64::try_from(ttl).unwrap_or(0);
    let page = PAGE
        .replace("__SESSION__", &session)
        .replace("__EXPIRES__", &expires.to_string());
    reply(StatusCode::OK, "text/html; charset=utf-8", page)
}

async fn state_json(shared: &Shared) -> Response<DashBody> {
    let now = OffsetDateTime::now_utc();
    let certificates = match certfleet_common::exporter::fleet_view(&shared.state, now).await {
        Ok(c) => c,
        Err(e) => {
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                format!("redis: {e}\n"),
            );
        }
    };
    let (queued, dead) = *shared
        .depths
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let recent: Vec<serde_json::Value> = shared
        .recent
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .cloned()
        .collect();
    let body = serde_json::json!({
        "now": now.unix_timestamp(),
        "certificates": certificates,
        "jobs": { "queued": queued, "dead": dead },
        "events": recent,
    });
    reply(StatusCode::OK, "application/json", body.to_string())
}

/// Counts the work queue and the dead-letter queue every [`DEPTHS_EVERY`]
/// on a connection kept open (reopened after a failure), for `/api/state`.
async fn count_depths(shared: Arc<Shared>) {
    let name = amqp::connection_name("certfleet-dashboard-depths");
    while !shared.shutdown.is_cancelled() {
        let open = || amqp::connect(&shared.config.amqp_url, &name);
        let Some(conn) = RECONNECT.session(&shared.shutdown, "dashboard", open).await else {
            return;
        };
        while conn.status().connected() {
            let mut depths = [None, None];
            for (i, queue) in [topology::WORK_QUEUE, topology::DEAD_QUEUE]
                .iter()
                .enumerate()
            {
                // A failed passive declare closes its channel: one each.
                if let Ok(ch) = conn.create_channel().await {
                    if let Ok(q) = ch
                        .queue_declare(
                            (*queue).into(),
                            QueueDeclareOptions {
                                passive: true,
                                ..QueueDeclareOptions::default()
                            },
                            FieldTable::default(),
                        )
                        .await
                    {
                        depths[i] = Some(q.message_count());
                    }
                    let _ = ch.close(200, "ok".into()).await;
                }
            }
            *shared
                .depths
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = (depths[0], depths[1]);
            tokio::select! {
                () = shared.shutdown.cancelled() => break,
                () = tokio::time::sleep(DEPTHS_EVERY) => {}
            }
        }
        amqp::close(&conn, 200, "bye").await;
    }
}

/// The live stream: events and reports as they come, a keep-alive comment
/// every [`KEEPALIVE`], ended when the session expires.
fn event_stream(shared: &Arc<Shared>, left: Duration) -> Response<DashBody> {
    let rx = shared.stream.subscribe();
    let deadline = tokio::time::Instant::now() + left;
    let stop = shared.shutdown.clone();
    let stream = futures_util::stream::unfold(
        (rx, deadline, stop, true),
        |(mut rx, deadline, stop, first)| async move {
            if first {
                let hello = Bytes::from_static(b": certfleet dashboard stream\n\n");
                return Some((Ok(Frame::data(hello)), (rx, deadline, stop, false)));
            }
            let frame = tokio::select! {
                () = tokio::time::sleep_until(deadline) => return None,
                () = stop.cancelled() => return None,
                () = tokio::time::sleep(KEEPALIVE) => Bytes::from_static(b": keep-alive\n\n"),
                m = rx.recv() => match m {
                    Ok(b) => b,
                    // Fell behind: tell the page to reload its state.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        Bytes::from_static(b"data: {\"kind\":\"lagged\"}\n\n")
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            };
            Some((
                Ok::<_, Infallible>(Frame::data(frame)),
                (rx, deadline, stop, false),
            ))
        },
    );
    let mut rsp = Response::new(DashBody(http_body_util::BodyExt::boxed(StreamBody::new(
        stream,
    ))));
    set_headers(&mut rsp, "text/event-stream");
    rsp
}
