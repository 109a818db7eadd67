//! An ACME fixture in front of Pebble: ARI and rate-limit injection.
//!
//! Pebble 2.4 (Debian) implements neither ACME Renewal Information (RFC
//! 9773) nor rate limits. [`AcmeProxy`] is an HTTPS reverse proxy on
//! `127.0.0.1:0` that forwards every request to a Pebble and adds both:
//!
//! - **ARI** ([`AcmeProxy::with_ari`]): the directory gains
//!   `"renewalInfo": "<proxy>/renewal-info"`, and
//!   `GET /renewal-info/<certID>` answers with a suggested window (fixed, or
//!   derived from the certificate) and `Retry-After: 3600`. A `newOrder`
//!   that carries `replaces` is forwarded as is (Pebble ignores unknown
//!   fields) and the proxy reflects `replaces` in the order objects it
//!   returns, as RFC 9773 §5 requires and instant-acme checks.
//! - **Rate limits** ([`AcmeProxy::reject_new_orders`]): the next `n`
//!   `newOrder` requests get `429 rateLimited` with `Retry-After` and a
//!   fresh `Replay-Nonce`.
//! - **Lost answers** ([`AcmeProxy::lose_new_order_answers`]): the next `n`
//!   `newOrder` requests are forwarded (Pebble creates the order) and the
//!   connection is then closed without an answer, as a timeout or a cut
//!   connection leaves a client.
//! - **Hostile headers** ([`AcmeProxy::retry_after_on_orders`]): the next
//!   `n` order objects (an order polled by its URL) carry a `Retry-After` of
//!   the test's choosing, e.g. one that overflows the clock.
//!
//! # How the JWS `url` check passes through a proxy
//!
//! Every ACME POST is a JWS whose protected header carries the `url` the
//! client posted to, here the proxy's URL. Pebble's `verifyJWS`
//! (`wfe/wfe.go`) compares it with
//! `https://` + `request.Host` + `request.RequestURI`, and builds every URL it
//! returns (directory, `Location`, `Link`, order, authorization, challenge
//! and certificate URLs, and the `kid` prefix that `lookupJWK` accepts) from
//! `request.Host` too (`relativeEndpoint`). So the proxy forwards the path
//! and query unchanged with the client's own `Host` header
//! (`127.0.0.1:<proxy port>`): Pebble then expects exactly the URL the client
//! signed and speaks only in proxy URLs. As a safety net, any
//! `https://127.0.0.1:14000` (the upstream base) left in a body or in a
//! `Location`/`Link` header is rewritten to the proxy's base as well.
//!
//! # Example
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! use certfleet_tests::{TestEnv, acme_proxy::AcmeProxy, private::pairs};
//! let env = TestEnv::new("renew-ari").await?;
//! let proxy = AcmeProxy::start(&env).await?.with_ari(None);
//! let vars = proxy.vars();
//! let worker = env.start_worker(&pairs(&vars)).await?;
//! // ... issue, then renew ...
//! proxy.reject_new_orders(1, 30);
//! // ... the worker must wait 30 s before its next newOrder ...
//! assert_eq!(proxy.new_orders_rejected(), 1);
//! # worker.stop().await; Ok(()) }
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderName, HeaderValue, LINK, LOCATION};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::TestEnv;

/// Path of the ARI endpoint on the proxy (`<base>/renewal-info/<certID>`).
pub const RENEWAL_INFO_PATH: &str = "/renewal-info";

/// `Retry-After` of renewal-info answers (seconds), as Let's Encrypt sends.
pub const ARI_RETRY_AFTER_SECS: u64 = 3600;

/// Upper bound of one forwarded request. Pebble answers in milliseconds;
/// this only keeps a broken upstream from hanging a test forever.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

type Upstream = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One `newOrder` request the proxy saw.
#[derive(Debug, Clone)]
pub struct NewOrderSeen {
    /// When it arrived (tokio time, so paused-time tests can compare).
    pub at: tokio::time::Instant,
    /// The identifier values of the order.
    pub identifiers: Vec<String>,
    /// Its `replaces` field (ARI certificate ID), if any.
    pub replaces: Option<String>,
    /// Its `profile` field (ACME profiles), if any.
    pub profile: Option<String>,
    /// Whether the proxy answered 429 instead of forwarding it.
    pub rejected: bool,
    /// Whether it was forwarded and its answer then withheld.
    pub answer_lost: bool,
}

/// The ARI window the proxy suggests.
#[derive(Debug, Clone, Copy)]
enum Window {
    /// Always this window, whatever the certificate.
    Fixed(OffsetDateTime, OffsetDateTime),
    /// Derived from the certificate (looked up in Pebble by serial).
    Derived,
}

#[derive(Debug, Default)]
struct State {
    /// ARI mode; `None` = off.
    ari: Option<Window>,
    /// `Retry-After` of renewal-info answers; 0 = [`ARI_RETRY_AFTER_SECS`].
    ari_retry_after: u64,
    /// Profiles the directory's `meta.profiles` offers (name → description).
    profiles: Option<serde_json::Map<String, Value>>,
    renewal_info_seen: Vec<String>,
    new_orders: Vec<NewOrderSeen>,
    reject_remaining: usize,
    reject_retry_after: u64,
    lose_remaining: usize,
    /// Order answers still to get `order_retry_after`, and the value.
    order_retry_after_remaining: usize,
    order_retry_after: String,
    order_retry_after_sent: usize,
    forwarded: usize,
    rejected: usize,
    /// Order id (last path segment of its URL) → `replaces` of its newOrder,
    /// to reflect it in later order objects as RFC 9773 §5 asks.
    replaces_by_order: HashMap<String, String>,
}

struct Shared {
    client: Upstream,
    /// e.g. `https://127.0.0.1:14000`.
    upstream_base: String,
    /// Pebble's management API, for certificates by serial (derived ARI).
    upstream_mgmt: Option<String>,
    /// e.g. `https://127.0.0.1:40123`.
    base: String,
    /// `host:port` of the proxy, the Host header when a client sent none.
    authority: String,
    directory_path: String,
    new_order_path: String,
    new_nonce_path: String,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An HTTPS reverse proxy in front of Pebble with ARI and injected rate
/// limits. Stops when dropped (or on [`AcmeProxy::shutdown`]). All settings
/// can change while clients use it (`&self` methods, `Send + Sync`).
pub struct AcmeProxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    ca_path: PathBuf,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl AcmeProxy {
    /// A proxy in front of the shared stack's Pebble.
    ///
    /// # Errors
    /// Pebble's directory cannot be read, or the listener/TLS setup fails.
    pub async fn start(env: &TestEnv) -> anyhow::Result<Self> {
        Self::start_upstream(
            &env.stack.acme_directory,
            &env.stack.ca_certs,
            Some(&env.stack.pebble_mgmt),
        )
        .await
    }

    /// A proxy in front of any Pebble: its directory URL, the PEM file that
    /// verifies its TLS certificate, and optionally its management API
    /// (needed only for ARI windows derived from the certificate).
    ///
    /// # Errors
    /// Pebble's directory cannot be read, or the listener/TLS setup fails.
    pub async fn start_upstream(
        directory: &str,
        ca_certs: &Path,
        pebble_mgmt: Option<&str>,
    ) -> anyhow::Result<Self> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir_url = url::Url::parse(directory).context("upstream directory URL")?;
        let upstream_base = dir_url.origin().ascii_serialization();
        let client = upstream_client(ca_certs)?;

        // The endpoints the proxy treats specially, from Pebble's directory.
        let rsp = tokio::time::timeout(
            UPSTREAM_TIMEOUT,
            client.get(directory.parse::<http::Uri>()?),
        )
        .await
        .context("upstream directory timed out")?
        .with_context(|| format!("GET {directory}"))?;
        let body = rsp.into_body().collect().await?.to_bytes();
        let dir: Value = serde_json::from_slice(&body).context("upstream directory JSON")?;
        let path_of = |key: &str| -> anyhow::Result<String> {
            let u = dir
                .get(key)
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow!("upstream directory has no {key}"))?;
            Ok(url::Url::parse(u)?.path().to_string())
        };
        let new_order_path = path_of("newOrder")?;
        let new_nonce_path = path_of("newNonce")?;

        let dir = tempfile::Builder::new()
            .prefix("cf-acme-proxy-")
            .tempdir()?;
        let (tls, ca_pem) = server_tls()?;
        // The proxy's CA first: instant-acme's `builder_with_root` reads
        // only the first certificate of the file; the worker reads all.
        let upstream_ca = std::fs::read_to_string(ca_certs).unwrap_or_default();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, format!("{ca_pem}{upstream_ca}"))?;

        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            client,
            upstream_base,
            upstream_mgmt: pebble_mgmt.map(|s| s.trim_end_matches('/').to_string()),
            base: format!("https://{addr}"),
            authority: addr.to_string(),
            directory_path: dir_url.path().to_string(),
            new_order_path,
            new_nonce_path,
            state: Mutex::new(State::default()),
        });
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(
            listener,
            tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
            shared.clone(),
            shutdown.clone(),
        ));
        Ok(Self {
            shared,
            addr,
            ca_path,
            shutdown,
            _dir: dir,
        })
    }

    /// Turns ARI on: the directory offers `renewalInfo`, and renewal-info
    /// requests get `window`. `None` derives the window from the
    /// certificate (looked up in Pebble by serial): from ⅔ to ¾ of its
    /// lifetime, roughly what Let's Encrypt suggests; an unknown certificate
    /// gets 404. Clients read the directory once, so turn ARI on before a
    /// client starts.
    #[must_use]
    pub fn with_ari(self, window: Option<(OffsetDateTime, OffsetDateTime)>) -> Self {
        self.set_ari_window(window);
        self
    }

    /// Changes the suggested window at runtime (turns ARI on if it was off).
    pub fn set_ari_window(&self, window: Option<(OffsetDateTime, OffsetDateTime)>) {
        self.shared.state().ari = Some(match window {
            Some((start, end)) => Window::Fixed(start, end),
            None => Window::Derived,
        });
    }

    /// The directory offers these ACME profiles (`meta.profiles`, name →
    /// description), as Let's Encrypt does; newOrder's `profile` is
    /// forwarded (Pebble 2.4 ignores it) and recorded in
    /// [`NewOrderSeen::profile`]. Clients read the directory once.
    #[must_use]
    pub fn with_profiles(self, profiles: &[(&str, &str)]) -> Self {
        self.shared.state().profiles = Some(
            profiles
                .iter()
                .map(|(n, d)| ((*n).to_string(), Value::String((*d).to_string())))
                .collect(),
        );
        self
    }

    /// The `Retry-After` (seconds) of renewal-info answers from now on,
    /// instead of [`ARI_RETRY_AFTER_SECS`]: how soon the CA asks clients to
    /// look again.
    pub fn set_ari_retry_after(&self, secs: u64) {
        self.shared.state().ari_retry_after = secs;
    }

    /// Turns ARI off again: the directory no longer offers `renewalInfo` to
    /// clients that read it from now on, and renewal-info requests go to
    /// Pebble, which answers 404 (an ARI outage for clients that cached the
    /// directory).
    pub fn disable_ari(&self) {
        self.shared.state().ari = None;
    }

    /// The next `n` newOrder requests are answered with `429 rateLimited`
    /// and `Retry-After: retry_after_secs` (replacing any earlier setting).
    pub fn reject_new_orders(&self, n: usize, retry_after_secs: u64) {
        let mut st = self.shared.state();
        st.reject_remaining = n;
        st.reject_retry_after = retry_after_secs;
    }

    /// The next `n` newOrder requests are forwarded to Pebble, which
    /// creates the order, and the client's connection is then closed
    /// without an answer (replacing any earlier setting).
    pub fn lose_new_order_answers(&self, n: usize) {
        self.shared.state().lose_remaining = n;
    }

    /// The next `n` order objects answered to a poll of an order's URL
    /// carry `Retry-After: value` (replacing any earlier setting).
    pub fn retry_after_on_orders(&self, n: usize, value: &str) {
        let mut st = self.shared.state();
        st.order_retry_after_remaining = n;
        st.order_retry_after = value.to_string();
    }

    /// Order answers that got the `Retry-After` of
    /// [`AcmeProxy::retry_after_on_orders`].
    pub fn order_retry_afters_sent(&self) -> usize {
        self.shared.state().order_retry_after_sent
    }

    /// newOrder requests forwarded to Pebble.
    pub fn new_orders_forwarded(&self) -> usize {
        self.shared.state().forwarded
    }

    /// newOrder requests answered with an injected 429.
    pub fn new_orders_rejected(&self) -> usize {
        self.shared.state().rejected
    }

    /// Every newOrder request seen, forwarded or rejected, in order.
    pub fn new_orders(&self) -> Vec<NewOrderSeen> {
        self.shared.state().new_orders.clone()
    }

    /// The `replaces` field of every newOrder that had one (forwarded or
    /// rejected), in order.
    pub fn replaces_seen(&self) -> Vec<String> {
        self.new_orders()
            .into_iter()
            .filter_map(|o| o.replaces)
            .collect()
    }

    /// The certificate IDs of every renewal-info request, in order.
    pub fn renewal_info_seen(&self) -> Vec<String> {
        self.shared.state().renewal_info_seen.clone()
    }

    /// `https://127.0.0.1:PORT/dir` (Pebble's directory path).
    pub fn directory_url(&self) -> String {
        format!("{}{}", self.shared.base, self.shared.directory_path)
    }

    /// `https://127.0.0.1:PORT`.
    pub fn base_url(&self) -> &str {
        &self.shared.base
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// PEM file to trust: the proxy's CA first, then the upstream's TLS CA.
    /// Point `CERTFLEET_ACME_CA_CERTS` (or `Account::builder_with_root`)
    /// at it.
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// `CERTFLEET_ACME_DIRECTORY` and `CERTFLEET_ACME_CA_CERTS` for a worker
    /// that should go through the proxy.
    pub fn vars(&self) -> Vec<(String, String)> {
        vec![
            ("CERTFLEET_ACME_DIRECTORY".into(), self.directory_url()),
            (
                "CERTFLEET_ACME_CA_CERTS".into(),
                self.ca_path.display().to_string(),
            ),
        ]
    }

    /// Stops accepting and drops open connections (also done on drop).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for AcmeProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A client that trusts only the certificates of `ca_certs`.
fn upstream_client(ca_certs: &Path) -> anyhow::Result<Upstream> {
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(crate::http::connector(Some(ca_certs), false)?))
}

/// A fresh CA and a `localhost`/`127.0.0.1` server certificate it signed;
/// returns the server config and the CA's PEM.
fn server_tls() -> anyhow::Result<(rustls::ServerConfig, String)> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "certfleet test ACME proxy CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".into()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &ca)?;

    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone(), ca.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )?;
    // HTTP/1.1 only (the hyper server below); clients offering h2 fall back.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((cfg, ca.pem()))
}

/// The accept loop; every connection races the shutdown token.
async fn serve(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((tcp, _)) = accepted else {
            // e.g. EMFILE: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    _ => return,
                };
            let svc = service_fn(move |req| handle(shared.clone(), req));
            let conn =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc);
            tokio::select! {
                () = shutdown.cancelled() => {}
                _ = conn => {}
            }
        });
    }
}

/// Headers that belong to one connection, not to the message.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// The answer withheld from the client: hyper closes the connection.
#[derive(Debug)]
struct AnswerWithheld;

impl std::fmt::Display for AnswerWithheld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("acme proxy: answer withheld")
    }
}

impl std::error::Error for AnswerWithheld {}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, AnswerWithheld> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Ok(problem(
                StatusCode::BAD_REQUEST,
                "malformed",
                &e.to_string(),
            ));
        }
    };
    let host = parts
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or(&shared.authority)
        .to_string();
    let path = parts.uri.path().to_string();

    if let Some(cert_id) = path
        .strip_prefix(RENEWAL_INFO_PATH)
        .and_then(|p| p.strip_prefix('/'))
    {
        let ari = shared.state().ari;
        if let Some(window) = ari
            && (parts.method == Method::GET || parts.method == Method::HEAD)
        {
            return Ok(renewal_info(&shared, cert_id, window).await);
        }
    }

    let mut order_replaces = None;
    let mut withhold = false;
    if parts.method == Method::POST && path == shared.new_order_path {
        let (identifiers, replaces, profile) = new_order_fields(&body);
        order_replaces = replaces.clone();
        let retry_after = {
            let mut st = shared.state();
            let reject = st.reject_remaining > 0;
            if reject {
                st.reject_remaining -= 1;
                st.rejected += 1;
            } else {
                st.forwarded += 1;
                withhold = st.lose_remaining > 0;
                if withhold {
                    st.lose_remaining -= 1;
                }
            }
            st.new_orders.push(NewOrderSeen {
                at: tokio::time::Instant::now(),
                identifiers,
                replaces,
                profile,
                rejected: reject,
                answer_lost: withhold,
            });
            reject.then_some(st.reject_retry_after)
        };
        if let Some(secs) = retry_after {
            return Ok(rate_limited(&shared, &host, secs).await);
        }
    }

    let (mut rparts, rbody) = match forward(&shared, &parts, &host, body).await {
        Ok(rsp) => rsp,
        Err(e) => {
            return Ok(problem(
                StatusCode::BAD_GATEWAY,
                "serverInternal",
                &format!("acme proxy: upstream: {e:#}"),
            ));
        }
    };
    if withhold {
        return Err(AnswerWithheld);
    }
    let rbody = adjust(&shared, &parts, order_replaces, &mut rparts, &rbody);
    Ok(Response::from_parts(rparts, Full::new(Bytes::from(rbody))))
}

/// Sends the request on to Pebble with the same method, path, query, headers
/// (the client's `Host` included) and body.
async fn forward(
    shared: &Shared,
    parts: &http::request::Parts,
    host: &str,
    body: Bytes,
) -> anyhow::Result<(http::response::Parts, Bytes)> {
    let pq = parts.uri.path_and_query().map_or_else(
        || parts.uri.path().to_string(),
        |pq| pq.as_str().to_string(),
    );
    let mut req = Request::builder()
        .method(parts.method.clone())
        .uri(format!("{}{pq}", shared.upstream_base));
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) && name != HOST {
            req = req.header(name, value);
        }
    }
    // Pebble builds the URL it checks against the JWS `url`, and every URL
    // it returns, from the Host header: keep the client's.
    let req = req.header(HOST, host).body(Full::new(body))?;
    let rsp = tokio::time::timeout(UPSTREAM_TIMEOUT, shared.client.request(req))
        .await
        .context("timed out")??;
    let (mut rparts, rbody) = rsp.into_parts();
    let rbody = rbody.collect().await?.to_bytes();
    let names: Vec<HeaderName> = rparts.headers.keys().cloned().collect();
    for name in names {
        if hop_by_hop(&name) || name == CONTENT_LENGTH {
            rparts.headers.remove(&name);
        }
    }
    Ok((rparts, rbody))
}

/// Rewrites upstream URLs, adds `renewalInfo` to the directory and reflects
/// `replaces` in order objects.
fn adjust(
    shared: &Shared,
    req: &http::request::Parts,
    order_replaces: Option<String>,
    rsp: &mut http::response::Parts,
    body: &[u8],
) -> Vec<u8> {
    for name in [LOCATION, LINK] {
        let values: Vec<HeaderValue> = rsp
            .headers
            .get_all(&name)
            .iter()
            .filter_map(|v| {
                let s = v.to_str().ok()?;
                HeaderValue::from_str(&s.replace(&shared.upstream_base, &shared.base)).ok()
            })
            .collect();
        if !values.is_empty() {
            rsp.headers.remove(&name);
            for v in values {
                rsp.headers.append(&name, v);
            }
        }
    }
    let mut body = replace_bytes(
        body,
        shared.upstream_base.as_bytes(),
        shared.base.as_bytes(),
    );

    let status = rsp.status;
    let path = req.uri.path();
    let (ari, profiles) = {
        let st = shared.state();
        (st.ari.is_some(), st.profiles.clone())
    };
    let mut json = None;
    if (ari || profiles.is_some()) && path == shared.directory_path && status == StatusCode::OK {
        if let Ok(Value::Object(mut dir)) = serde_json::from_slice::<Value>(&body) {
            if ari {
                dir.insert(
                    "renewalInfo".into(),
                    Value::String(format!("{}{RENEWAL_INFO_PATH}", shared.base)),
                );
            }
            if let Some(profiles) = profiles
                && let Some(Value::Object(meta)) = dir.get_mut("meta")
            {
                meta.insert("profiles".into(), Value::Object(profiles));
            }
            json = Some(Value::Object(dir));
        }
    } else if status.is_success() {
        // The order's id is the last segment of its URL; the finalize URL
        // ends with the same id.
        let replaces = if path == shared.new_order_path {
            order_replaces.inspect(|r| {
                if let Some(id) = rsp
                    .headers
                    .get(LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| l.rsplit('/').next())
                {
                    shared
                        .state()
                        .replaces_by_order
                        .insert(id.to_string(), r.clone());
                }
            })
        } else {
            path.rsplit('/')
                .next()
                .and_then(|id| shared.state().replaces_by_order.get(id).cloned())
        };
        if let Some(replaces) = replaces
            && let Ok(Value::Object(mut order)) = serde_json::from_slice::<Value>(&body)
            && order.contains_key("finalize")
        {
            order.insert("replaces".into(), Value::String(replaces));
            json = Some(Value::Object(order));
        }
        // An order polled by its URL (instant-acme reads Retry-After there).
        if path != shared.new_order_path && body.windows(10).any(|w| w == b"\"finalize\"") {
            let mut st = shared.state();
            if st.order_retry_after_remaining > 0
                && let Ok(value) = HeaderValue::from_str(&st.order_retry_after)
            {
                st.order_retry_after_remaining -= 1;
                st.order_retry_after_sent += 1;
                rsp.headers.insert(http::header::RETRY_AFTER, value);
            }
        }
    }
    if let Some(v) = json {
        body = serde_json::to_vec_pretty(&v).unwrap_or(body);
    }
    body
}

fn replace_bytes(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    if from.is_empty() {
        return hay.to_vec();
    }
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

/// The identifiers and `replaces` of a newOrder JWS (flattened JSON
/// serialization; the payload is base64url JSON).
fn new_order_fields(jws: &[u8]) -> (Vec<String>, Option<String>, Option<String>) {
    let payload = serde_json::from_slice::<Value>(jws)
        .ok()
        .and_then(|v| v.get("payload")?.as_str().map(str::to_string))
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p.trim_end_matches('='))
                .ok()
        })
        .and_then(|p| serde_json::from_slice::<Value>(&p).ok());
    let Some(payload) = payload else {
        return (Vec::new(), None, None);
    };
    let identifiers = payload
        .get("identifiers")
        .and_then(Value::as_array)
        .map(|ids| {
            ids.iter()
                .filter_map(|i| i.get("value")?.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let field = |name: &str| {
        payload
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    (identifiers, field("replaces"), field("profile"))
}

/// An ACME problem document (RFC 8555 §6.7) with the given status.
fn problem(status: StatusCode, kind: &str, detail: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "type": format!("urn:ietf:params:acme:error:{kind}"),
        "detail": detail,
        "status": status.as_u16(),
    });
    let mut rsp = Response::new(Full::new(Bytes::from(body.to_string())));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    rsp
}

/// The injected `429 rateLimited`, with a fresh nonce from Pebble so that
/// the client's next request is not refused as badNonce.
async fn rate_limited(shared: &Shared, host: &str, secs: u64) -> Response<Full<Bytes>> {
    let mut rsp = problem(
        StatusCode::TOO_MANY_REQUESTS,
        "rateLimited",
        "too many new orders (injected)",
    );
    let h = rsp.headers_mut();
    h.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "<{}{}>;rel=\"index\"",
        shared.base, shared.directory_path
    )) {
        h.insert(LINK, v);
    }
    if let Ok(nonce) = fresh_nonce(shared, host).await {
        h.insert("replay-nonce", nonce);
    }
    rsp
}

async fn fresh_nonce(shared: &Shared, host: &str) -> anyhow::Result<HeaderValue> {
    let req = Request::builder()
        .method(Method::HEAD)
        .uri(format!("{}{}", shared.upstream_base, shared.new_nonce_path))
        .header(HOST, host)
        .body(Full::new(Bytes::new()))?;
    let rsp = tokio::time::timeout(UPSTREAM_TIMEOUT, shared.client.request(req)).await??;
    rsp.headers()
        .get("replay-nonce")
        .cloned()
        .ok_or_else(|| anyhow!("no Replay-Nonce from {}", shared.new_nonce_path))
}

/// `GET /renewal-info/<certID>` (RFC 9773 §4.2).
async fn renewal_info(shared: &Shared, cert_id: &str, window: Window) -> Response<Full<Bytes>> {
    let retry_after = {
        let mut st = shared.state();
        st.renewal_info_seen.push(cert_id.to_string());
        match st.ari_retry_after {
            0 => ARI_RETRY_AFTER_SECS,
            n => n,
        }
    };
    let window = match window {
        Window::Fixed(start, end) => Ok((start, end)),
        Window::Derived => derived_window(shared, cert_id).await,
    };
    let (start, end) = match window {
        Ok(w) => w,
        Err(e) => {
            return problem(
                StatusCode::NOT_FOUND,
                "malformed",
                &format!("no renewal information for {cert_id}: {e:#}"),
            );
        }
    };
    let fmt = |t: OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
    let body = serde_json::json!({
        "suggestedWindow": {"start": fmt(start), "end": fmt(end)},
    });
    let mut rsp = Response::new(Full::new(Bytes::from(body.to_string())));
    let h = rsp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(http::header::RETRY_AFTER, HeaderValue::from(retry_after));
    rsp
}

/// ⅔ to ¾ of the lifetime of the certificate `cert_id` names
/// (`base64url(AKI).base64url(serial)`), looked up in Pebble by serial.
async fn derived_window(
    shared: &Shared,
    cert_id: &str,
) -> anyhow::Result<(OffsetDateTime, OffsetDateTime)> {
    let mgmt = shared
        .upstream_mgmt
        .as_deref()
        .ok_or_else(|| anyhow!("no Pebble management URL to look the certificate up"))?;
    let (_, serial) = cert_id
        .split_once('.')
        .ok_or_else(|| anyhow!("certID without '.'"))?;
    let serial = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(serial.trim_end_matches('='))
        .context("certID serial")?;
    let hex: String = serial.iter().map(|b| format!("{b:02x}")).collect();
    let uri: http::Uri = format!("{mgmt}/cert-status-by-serial/{hex}").parse()?;
    let rsp = tokio::time::timeout(UPSTREAM_TIMEOUT, shared.client.get(uri)).await??;
    if rsp.status() != StatusCode::OK {
        bail!("Pebble does not know serial {hex} ({})", rsp.status());
    }
    let body = rsp.into_body().collect().await?.to_bytes();
    let status: Value = serde_json::from_slice(&body)?;
    let pem = status
        .get("Certificate")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("no Certificate in Pebble's answer"))?;
    let der = CertificateDer::from_pem_slice(pem.as_bytes())?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)?;
    let nb = cert.validity().not_before.timestamp();
    let na = cert.validity().not_after.timestamp();
    let life = na - nb;
    Ok((
        OffsetDateTime::from_unix_timestamp(nb + life * 2 / 3)?,
        OffsetDateTime::from_unix_timestamp(nb + life * 3 / 4)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_send_sync() {
        fn is<T: Send + Sync>() {}
        is::<AcmeProxy>();
        is::<crate::private::Private>();
    }

    #[test]
    fn replaces_every_occurrence() {
        let out = replace_bytes(
            b"a https://x:1/a and https://x:1/b",
            b"https://x:1",
            b"https://y:2",
        );
        assert_eq!(out, b"a https://y:2/a and https://y:2/b");
    }

    #[test]
    fn reads_new_order_payload() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"identifiers":[{"type":"dns","value":"a.test"}],"replaces":"AKI.SER"}"#);
        let jws = serde_json::json!({"protected": "x", "payload": payload, "signature": "y"});
        let (ids, replaces, _) = new_order_fields(jws.to_string().as_bytes());
        assert_eq!(ids, vec!["a.test".to_string()]);
        assert_eq!(replaces.as_deref(), Some("AKI.SER"));
    }
}
