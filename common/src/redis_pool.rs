//! Redis connections: one server (`redis://`) or a primary found through
//! Sentinel (`redis+sentinel://`), behind one pool type.
//!
//! A Sentinel pool asks the sentinels for the primary each time it opens a
//! connection (deadpool-redis's sentinel manager checks the answer with
//! `ROLE`), so a connection lost with a killed primary is replaced by one
//! to the promoted replica. A primary that is demoted while it stays up (a
//! planned failover, a partition) keeps its connections open, and writes on
//! them would go to a replica or be lost: a watch polls the sentinels every
//! [`WATCH_EVERY`] and, when the primary's address changes, drops idle
//! connections and refuses to reuse any opened before the change.
//! Data a failover loses (replication is asynchronous) is handled as any
//! Redis data loss: leases lapse, fences are raised from the stored
//! pointer, the expiry index is rebuilt from storage.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use deadpool::managed;
use deadpool_redis::redis::aio::{ConnectionLike, MultiplexedConnection};
use deadpool_redis::redis::{self, RedisError};
use deadpool_redis::sentinel::{self, SentinelNodeConnectionInfo, SentinelServerType};
use deadpool_redis::{
    ConnectionAddr, ConnectionInfo, HookError, PoolConfig, PoolError, ProtocolVersion,
    RedisConnectionInfo, Runtime,
};

use crate::secret::{Secret, SecretUrl};

/// Port of a sentinel whose address names none.
pub const DEFAULT_SENTINEL_PORT: u16 = 26379;
/// How often a Sentinel pool asks the sentinels where the primary is.
pub const WATCH_EVERY: Duration = Duration::from_millis(500);
/// How long a connection may lie unused in the pool before a checkout
/// PINGs it first (see [`Quick`]).
pub const CHECK_IDLE_AFTER: Duration = Duration::from_secs(2);

/// Where Redis is: `CERTFLEET_REDIS_URL`.
#[derive(Clone)]
pub enum RedisTarget {
    /// One server: `redis://[:PASSWORD@]HOST:PORT/DB`.
    Url(SecretUrl),
    /// A primary watched by sentinels.
    Sentinel(SentinelUrl),
}

impl RedisTarget {
    /// Parses `redis://…`, `rediss://…` or `redis+sentinel://…`;
    /// `sentinel_password` is the sentinels' own (`requirepass`),
    /// from `CERTFLEET_REDIS_SENTINEL_PASSWORD`.
    ///
    /// # Errors
    /// What is wrong with the URL, never quoting it (it may hold a password).
    pub fn parse(s: &str, sentinel_password: Option<Secret<String>>) -> Result<Self, String> {
        let s = s.trim();
        if s.starts_with("redis+sentinel://") {
            let mut u = SentinelUrl::parse(s)?;
            u.sentinel_password = sentinel_password;
            return Ok(Self::Sentinel(u));
        }
        if s.starts_with("rediss+sentinel://") {
            return Err(
                "TLS to Sentinel (rediss+sentinel) is not supported yet; use redis+sentinel".into(),
            );
        }
        let url = crate::config::parse::parse_url(s, &["redis", "rediss"])
            .map_err(|e| format!("{e} (or redis+sentinel)"))?;
        Ok(Self::Url(SecretUrl::new(url)))
    }

    /// Whether it is reached over TLS (`rediss://`).
    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Url(u) if u.url().scheme() == "rediss")
    }

    /// The URL with passwords hidden.
    pub fn redacted(&self) -> String {
        match self {
            Self::Url(u) => u.redacted(),
            Self::Sentinel(u) => u.redacted(),
        }
    }
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// `redis+sentinel://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/SERVICE[/DB]`.
/// The password is the data nodes' (primary and replicas); the sentinels'
/// own comes from `CERTFLEET_REDIS_SENTINEL_PASSWORD`.
#[derive(Clone)]
pub struct SentinelUrl {
    /// Sentinel addresses, in the order given.
    pub sentinels: Vec<(String, u16)>,
    /// The monitored service's (master's) name.
    pub service: String,
    /// Database number on the primary.
    pub db: i64,
    /// ACL user of the data nodes.
    pub username: Option<String>,
    /// Password of the data nodes.
    pub password: Option<Secret<String>>,
    /// Password of the sentinels.
    pub sentinel_password: Option<Secret<String>>,
}

impl fmt::Debug for SentinelUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let byte = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("bad percent-encoding")?;
            out.push(byte);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 after percent-decoding".into())
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl SentinelUrl {
    /// Parses the URL (`url::Url` cannot: a list of hosts is no authority).
    ///
    /// # Errors
    /// What is wrong, naming the part (never the password).
    pub fn parse(input: &str) -> Result<Self, String> {
        let rest = input
            .strip_prefix("redis+sentinel://")
            .ok_or("the scheme must be redis+sentinel")?;
        if rest.contains('?') || rest.contains('#') {
            return Err("a query or fragment is not supported (the sentinels' password goes in CERTFLEET_REDIS_SENTINEL_PASSWORD)".into());
        }
        let (authority, path) = rest
            .split_once('/')
            .ok_or("missing /SERVICE (the name sentinels monitor)")?;
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((user, pw)) => (
                    non_empty(percent_decode(user)?),
                    non_empty(percent_decode(pw)?),
                ),
                None => (None, non_empty(percent_decode(u)?)),
            },
        };
        let mut sentinels = Vec::new();
        for (i, h) in hosts.split(',').enumerate() {
            let bad = |what: &str| format!("sentinel {} ({h:?}): {what}", i + 1);
            let (host, port) = if let Some(v6) = h.strip_prefix('[') {
                let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
                let port = match after.strip_prefix(':') {
                    Some(p) => p.parse().map_err(|_| bad("bad port"))?,
                    None if after.is_empty() => DEFAULT_SENTINEL_PORT,
                    None => return Err(bad("bad address")),
                };
                (host.to_string(), port)
            } else {
                match h.rsplit_once(':') {
                    Some((host, p)) => (host.to_string(), p.parse().map_err(|_| bad("bad port"))?),
                    None => (h.to_string(), DEFAULT_SENTINEL_PORT),
                }
            };
            if host.is_empty() || port == 0 {
                return Err(bad("no host or port 0"));
            }
            sentinels.push((host, port));
        }
        let mut segments = path.split('/');
        let service = percent_decode(segments.next().unwrap_or_default())?;
        if service.is_empty() {
            return Err("missing SERVICE (the name sentinels monitor)".into());
        }
        let db = match segments.next() {
            None | Some("") => 0,
            Some(d) => d
                .parse::<i64>()
                .ok()
                .filter(|d| *d >= 0)
                .ok_or_else(|| format!("database {d:?} is not a number"))?,
        };
        if segments.any(|s| !s.is_empty()) {
            return Err("the path must be /SERVICE[/DB]".into());
        }
        Ok(Self {
            sentinels,
            service,
            db,
            username,
            password: password.map(Secret::new),
            sentinel_password: None,
        })
    }

    /// The URL with the password hidden.
    pub fn redacted(&self) -> String {
        let user = match (&self.username, &self.password) {
            (Some(u), Some(_)) => format!("{u}:***@"),
            (None, Some(_)) => ":***@".to_string(),
            (Some(u), None) => format!("{u}@"),
            (None, None) => String::new(),
        };
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|(h, p)| {
                if h.contains(':') {
                    format!("[{h}]:{p}")
                } else {
                    format!("{h}:{p}")
                }
            })
            .collect();
        format!(
            "redis+sentinel://{user}{}/{}/{}",
            hosts.join(","),
            self.service,
            self.db
        )
    }

    fn sentinel_infos(&self) -> Vec<ConnectionInfo> {
        self.sentinels
            .iter()
            .map(|(host, port)| ConnectionInfo {
                addr: ConnectionAddr::Tcp(host.clone(), *port),
                // Sentinels have no databases: db stays 0.
                redis: RedisConnectionInfo {
                    db: 0,
                    username: None,
                    password: self.sentinel_password.as_ref().map(|p| p.expose().clone()),
                    protocol: ProtocolVersion::RESP2,
                },
            })
            .collect()
    }
}

/// A pool of Redis connections, either kind. Cheap to clone.
#[derive(Clone)]
pub enum RedisPool {
    /// One server.
    Plain(managed::Pool<Quick<deadpool_redis::Manager>>),
    /// The primary found through Sentinel.
    Sentinel(managed::Pool<Quick<sentinel::Manager>>),
}

/// A pooled connection of either kind. Derefs to the multiplexed
/// connection, so `query_async(&mut *c)` works with both.
pub enum RedisConn {
    /// From a plain pool.
    Plain(managed::Object<Quick<deadpool_redis::Manager>>),
    /// From a Sentinel pool.
    Sentinel(managed::Object<Quick<sentinel::Manager>>),
}

/// A pooled connection, and whether a command on it found it broken.
pub struct Tracked {
    conn: MultiplexedConnection,
    broken: bool,
}

/// Whether an error leaves a connection unfit for the next command: it was
/// dropped, an I/O error, or no answer in time (a late answer would come on
/// a multiplexed connection nobody waits on any more).
fn breaks_connection(e: &RedisError) -> bool {
    e.is_connection_dropped() || e.is_io_error() || e.is_timeout() || e.is_unrecoverable_error()
}

impl ConnectionLike for Tracked {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            let r = self.conn.req_packed_command(cmd).await;
            if let Err(e) = &r {
                self.broken |= breaks_connection(e);
            }
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(async move {
            let r = self.conn.req_packed_commands(cmd, offset, count).await;
            if let Err(e) = &r {
                self.broken |= breaks_connection(e);
            }
            r
        })
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

/// deadpool-redis's managers (plain and Sentinel) without their PING at
/// every checkout. Each Redis command used to cost two round trips, the
/// recycle's `UNWATCH`+`PING` and its own: at 128 jobs in flight on two
/// cores, a round trip took 5 to 10 ms. Here a connection is checked only
/// when it lay unused for [`CHECK_IDLE_AFTER`] (an idle socket may have
/// died unnoticed); a connection on which a command failed in a way that
/// breaks it ([`breaks_connection`]) is never handed out again, so a
/// broken connection fails at most one command more than before (the one
/// that finds it broken), and the pool opens a new one.
pub struct Quick<M>(M);

impl<M> managed::Manager for Quick<M>
where
    M: managed::Manager<Type = MultiplexedConnection, Error = RedisError>,
{
    type Type = Tracked;
    type Error = RedisError;

    async fn create(&self) -> Result<Tracked, RedisError> {
        Ok(Tracked {
            conn: self.0.create().await?,
            broken: false,
        })
    }

    async fn recycle(
        &self,
        t: &mut Tracked,
        metrics: &managed::Metrics,
    ) -> managed::RecycleResult<RedisError> {
        if t.broken {
            return Err(managed::RecycleError::message(
                "a command found the connection broken",
            ));
        }
        if metrics.last_used() < CHECK_IDLE_AFTER {
            return Ok(());
        }
        self.0.recycle(&mut t.conn, metrics).await
    }
}

impl RedisPool {
    /// A pool of up to `max_size` connections (at least 4) to `target`.
    /// Opens no connection. A Sentinel pool starts its watch when built
    /// inside a Tokio runtime.
    ///
    /// # Errors
    /// An unusable target (already validated by the configuration).
    pub fn new(
        target: &RedisTarget,
        tls: &crate::config::tls::TlsFiles,
        max_size: usize,
    ) -> Result<Self, String> {
        let mut pc = PoolConfig::new(max_size.max(4));
        pc.timeouts.wait = Some(Duration::from_secs(5));
        // For a Sentinel pool this includes asking the sentinels.
        pc.timeouts.create = Some(Duration::from_secs(3));
        pc.timeouts.recycle = Some(Duration::from_secs(2));
        match target {
            RedisTarget::Url(url) if url.url().scheme() == "rediss" => {
                // The TLS parameters (CA, client certificate) travel in the
                // connection info the pool's manager connects with.
                let certs = deadpool_redis::redis::TlsCertificates {
                    client_tls: tls.client.as_ref().map(|(cert, key)| {
                        deadpool_redis::redis::ClientTlsConfig {
                            client_cert: cert.clone().into_bytes(),
                            client_key: key.expose().clone().into_bytes(),
                        }
                    }),
                    root_cert: tls.ca_pem.clone().map(String::into_bytes),
                };
                let client = deadpool_redis::redis::Client::build_with_tls(url.expose(), certs)
                    .map_err(|e| format!("TLS settings of {}: {e}", url.redacted()))?;
                let manager = deadpool_redis::Manager::new(client.get_connection_info().clone())
                    .map_err(|e| e.to_string())?;
                managed::Pool::builder(Quick(manager))
                    .config(pc)
                    .runtime(Runtime::Tokio1)
                    .build()
                    .map(Self::Plain)
                    .map_err(|e| e.to_string())
            }
            RedisTarget::Url(url) => {
                let manager = deadpool_redis::Manager::new(url.expose())
                    .map_err(|e| format!("{}: {e}", url.redacted()))?;
                managed::Pool::builder(Quick(manager))
                    .config(pc)
                    .runtime(Runtime::Tokio1)
                    .build()
                    .map(Self::Plain)
                    .map_err(|e| e.to_string())
            }
            RedisTarget::Sentinel(u) => sentinel_pool(u, pc).map(Self::Sentinel),
        }
    }

    /// A connection from the pool.
    ///
    /// # Errors
    /// None could be opened or recycled in time.
    pub async fn get(&self) -> Result<RedisConn, PoolError> {
        Ok(match self {
            Self::Plain(p) => RedisConn::Plain(p.get().await?),
            Self::Sentinel(p) => RedisConn::Sentinel(p.get().await?),
        })
    }

    /// The pool's size and idle count.
    pub fn status(&self) -> deadpool_redis::Status {
        match self {
            Self::Plain(p) => p.status(),
            Self::Sentinel(p) => p.status(),
        }
    }
}

fn sentinel_pool(
    u: &SentinelUrl,
    pc: PoolConfig,
) -> Result<managed::Pool<Quick<sentinel::Manager>>, String> {
    let node = SentinelNodeConnectionInfo {
        tls_mode: None,
        redis_connection_info: Some(RedisConnectionInfo {
            db: u.db,
            username: u.username.clone(),
            password: u.password.as_ref().map(|p| p.expose().clone()),
            protocol: ProtocolVersion::RESP2,
        }),
    };
    let manager = sentinel::Manager::new(
        u.sentinel_infos(),
        u.service.clone(),
        Some(node),
        SentinelServerType::Master,
    )
    .map_err(|e| e.to_string())?;
    // Connections opened before the last change of primary are not reused.
    let cutoff: Arc<Mutex<Option<Instant>>> = Arc::default();
    let hook_cutoff = cutoff.clone();
    let pool = managed::Pool::builder(Quick(manager))
        .config(pc)
        .runtime(Runtime::Tokio1)
        .pre_recycle(managed::Hook::sync_fn(move |_, m| {
            match *hook_cutoff.lock().unwrap_or_else(PoisonError::into_inner) {
                Some(t) if m.created <= t => {
                    Err(HookError::message("opened before the primary changed"))
                }
                _ => Ok(()),
            }
        }))
        .build()
        .map_err(|e| e.to_string())?;
    if tokio::runtime::Handle::try_current().is_ok() {
        let weak = pool.weak();
        // Drops idle connections opened before `t` (none for `None`); `None`
        // once the pool is gone, which ends the watch.
        let drop_older = move |t: Option<Instant>| {
            let p = weak.upgrade()?;
            Some(t.map_or(0, |t| p.retain(|_, m| m.created > t).removed.len()))
        };
        tokio::spawn(watch_primary(u.clone(), drop_older, cutoff));
    }
    Ok(pool)
}

/// Asks the sentinels where the primary is every [`WATCH_EVERY`]; when the
/// answer changes, moves the cutoff to now and drops idle connections.
/// Ends when the pool is dropped.
async fn watch_primary(
    u: SentinelUrl,
    drop_older: impl Fn(Option<Instant>) -> Option<usize> + Send + 'static,
    cutoff: Arc<Mutex<Option<Instant>>>,
) {
    let infos = u.sentinel_infos();
    let mut conns: Vec<Option<MultiplexedConnection>> = vec![None; infos.len()];
    let mut last: Option<(String, u16)> = None;
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        if drop_older(None).is_none() {
            return;
        }
        // The first sentinel that answers says where the primary is.
        let mut now_at = None;
        for (i, info) in infos.iter().enumerate() {
            let asked = tokio::time::timeout(WATCH_EVERY, async {
                if conns[i].is_none() {
                    let client = redis::Client::open(info.clone())?;
                    conns[i] = Some(client.get_multiplexed_async_connection().await?);
                }
                match conns[i].as_mut() {
                    Some(c) => {
                        redis::cmd("SENTINEL")
                            .arg("get-master-addr-by-name")
                            .arg(&u.service)
                            .query_async::<Option<(String, u16)>>(c)
                            .await
                    }
                    None => Ok(None),
                }
            })
            .await;
            match asked {
                Ok(Ok(Some(addr))) => {
                    now_at = Some(addr);
                    break;
                }
                _ => conns[i] = None,
            }
        }
        let Some(addr) = now_at else { continue };
        if last.as_ref().is_some_and(|l| *l != addr) {
            // deadpool's connection metrics use std's clock.
            #[allow(clippy::disallowed_methods)]
            let now = Instant::now();
            *cutoff.lock().unwrap_or_else(PoisonError::into_inner) = Some(now);
            let dropped = drop_older(Some(now)).unwrap_or(0);
            tracing::warn!(
                primary = %format!("{}:{}", addr.0, addr.1),
                dropped,
                "the Redis primary changed; connections to the old one are closed"
            );
        }
        last = Some(addr);
    }
}

impl Deref for RedisConn {
    type Target = Tracked;
    fn deref(&self) -> &Tracked {
        match self {
            Self::Plain(c) => c,
            Self::Sentinel(c) => c,
        }
    }
}

impl DerefMut for RedisConn {
    fn deref_mut(&mut self) -> &mut Tracked {
        match self {
            Self::Plain(c) => c,
            Self::Sentinel(c) => c,
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        (**self).req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        (**self).req_packed_commands(cmd, offset, count)
    }

    fn get_db(&self) -> i64 {
        (**self).get_db()
    }
}

/// Whether an error from Redis means the connection talks to a node that
/// is no longer the primary (or is gone).
pub fn is_failover_error(e: &RedisError) -> bool {
    use deadpool_redis::redis::{ErrorKind, ServerErrorKind};
    matches!(
        e.kind(),
        ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
    ) || e.is_connection_dropped()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_parse() -> Result<(), String> {
        let u = SentinelUrl::parse(
            "redis+sentinel://:p%40ss@10.0.0.1:26379,s2:26380,[::1]:5,s4/certfleet/3",
        )?;
        assert_eq!(
            u.sentinels,
            vec![
                ("10.0.0.1".into(), 26379),
                ("s2".into(), 26380),
                ("::1".into(), 5),
                ("s4".into(), DEFAULT_SENTINEL_PORT)
            ]
        );
        assert_eq!((u.service.as_str(), u.db), ("certfleet", 3));
        assert_eq!(
            u.password.as_ref().map(|p| p.expose().as_str()),
            Some("p@ss")
        );
        assert_eq!(
            u.redacted(),
            "redis+sentinel://:***@10.0.0.1:26379,s2:26380,[::1]:5,s4:26379/certfleet/3"
        );
        assert!(!format!("{u:?}").contains("p@ss"));
        let u = SentinelUrl::parse("redis+sentinel://h1,h2:1/svc")?;
        assert_eq!(u.db, 0);
        for bad in [
            "redis+sentinel://h:1/",
            "redis+sentinel://h:1",
            "redis+sentinel://h:x/s",
            "redis+sentinel://h:1,/s",
            "redis+sentinel://h:1/s/x",
            "redis+sentinel://h:1/s/1/2",
            "redis+sentinel://h:1/s?sentinel_password=x",
            "redis://h:1/s",
        ] {
            assert!(SentinelUrl::parse(bad).is_err(), "{bad}");
        }
        Ok(())
    }

    #[test]
    fn targets_by_scheme() -> Result<(), String> {
        assert!(matches!(
            RedisTarget::parse("redis://h:1/0", None)?,
            RedisTarget::Url(_)
        ));
        let t = RedisTarget::parse(
            "redis+sentinel://:pw@h:1/s",
            Some(Secret::new("spw".into())),
        )?;
        let RedisTarget::Sentinel(u) = &t else {
            return Err("not sentinel".into());
        };
        assert_eq!(
            u.sentinel_password.as_ref().map(|p| p.expose().as_str()),
            Some("spw")
        );
        assert!(!t.redacted().contains("pw@"));
        assert!(RedisTarget::parse("rediss+sentinel://h:1/s", None).is_err());
        assert!(RedisTarget::parse("http://h:1/s", None).is_err());
        Ok(())
    }
}
