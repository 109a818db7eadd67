//! Private service instances for fault tests.
//!
//! A fault test stops, kills and restarts a broker, Redis, S3 or the CA.
//! Doing that to the shared stack would break every test running beside
//! it, so [`Private::start`] runs a second, independent instance of one
//! service through `scripts/stack.sh` itself: its own `STACK_DIR` (a temp
//! dir), its own ports and, for RabbitMQ, its own node name. The instance
//! is killed and its directory removed when the [`Private`] is dropped.
//!
//! [`env_for`] turns a [`TestEnv`] into one whose configuration, helpers
//! (`connect`, `events`, `store`, `state`, `start_worker`, `domain`, ...)
//! and child processes use the private instances instead of the shared ones.
//!
//! # Example
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! use certfleet_tests::TestEnv;
//! use certfleet_tests::private::{self, Private, Service};
//! let shared = TestEnv::new("fault-broker").await?;
//! let broker = Private::start(Service::RabbitMq, &[]).await?;
//! let env = private::env_for(&shared, &[&broker]).await?;
//! let worker = env.start_worker(&[]).await?;   // consumes from the private broker
//! broker.kill().await?;                        // SIGKILL, no clean shutdown
//! broker.start_again().await?;                 // same dir: durable queues survive
//! # worker.stop().await; Ok(()) }
//! ```
//!
//! # Services
//!
//! | service | [`Private::url`] | survives a restart |
//! |---|---|---|
//! | RabbitMQ | `amqp://guest:guest@127.0.0.1:PORT/%2f` | durable queues and messages, vhosts |
//! | Redis | `redis://127.0.0.1:PORT/0` | nothing, unless started with `REDIS_APPENDONLY=yes` |
//! | S3 (SeaweedFS) | `http://127.0.0.1:PORT` | every bucket and object |
//! | Pebble | `https://127.0.0.1:PORT/dir` | nothing: accounts, orders and the issuing roots are new |
//!
//! A private Pebble comes with its own pebble-challtestsrv (`stack.sh`
//! always starts the pair and points Pebble's `-dnsserver` at its own), so
//! the shared challtestsrv's records do not apply to it. [`env_for`] makes
//! every name resolve to the test's responder address there
//! (`/set-default-ipv4`), [`Private::add_a`] adds single records, and both
//! are re-applied after the pair restarts. Pebble's validation sleep is on
//! only with `PEBBLE_VA_NOSLEEP=0` ([`PEBBLE_WITH_SLEEP`]); see that constant.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};

use crate::{Http, TestEnv, repo_root};

/// Extra environment for [`Private::start`] that turns Pebble's random
/// validation sleep on (it is off in the shared stack), at Pebble's
/// default length.
///
/// Pebble's VA (`va/va.go`, `New`) disables the sleep only when
/// `PEBBLE_VA_NOSLEEP` is exactly `1`, `true`, `True` or `TRUE`; any other
/// value, `0` included, leaves it on. Unset does not work here, because
/// `stack.sh` defaults it to `1`. Each of the VA's three concurrent
/// validation requests per challenge then first sleeps
/// `rand.Intn(PEBBLE_VA_SLEEPTIME)` whole seconds. Pebble 2.4's default for
/// that is 5 (0–4 s; measured), although its README still says "from 0 to
/// 15"; [`PEBBLE_WITH_LONG_SLEEP`] gives the documented 0–14 s.
pub const PEBBLE_WITH_SLEEP: &[(&str, &str)] = &[("PEBBLE_VA_NOSLEEP", "0")];

/// Like [`PEBBLE_WITH_SLEEP`], with `PEBBLE_VA_SLEEPTIME=15`: each
/// validation waits 0–14 s, an authorization up to 14 s.
pub const PEBBLE_WITH_LONG_SLEEP: &[(&str, &str)] =
    &[("PEBBLE_VA_NOSLEEP", "0"), ("PEBBLE_VA_SLEEPTIME", "15")];

/// Ports of private instances come from here: below Linux's ephemeral
/// range (32768–60999), so no outgoing connection takes one while its
/// service is down for a restart, and far from the shared stack's ports.
/// RabbitMQ's CLI tools use `dist port + 10000..=10010`, still below 65536.
const PORT_RANGE: std::ops::Range<u16> = 20000..32000;

/// How long `stack.sh` may wait for a service to become ready.
const STACK_TIMEOUT_SECS: u64 = 120;

/// One service of `scripts/stack.sh`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// RabbitMQ with the management plugin.
    RabbitMq,
    /// Redis.
    Redis,
    /// SeaweedFS (S3); its data survives a kill and a restart.
    S3,
    /// Pebble and its pebble-challtestsrv.
    Pebble,
    /// A Redis primary, a replica and three sentinels (service
    /// `certfleet`): [`Private::kill_member`] kills one of them.
    Sentinel,
    /// Three clustered RabbitMQ nodes (`node1`…`node3`, each with the
    /// management plugin): [`Private::kill_member`] kills one,
    /// [`Private::start_again`] starts the ones that are down.
    RabbitCluster,
    /// Prometheus scraping what [`Private::scrape`] lists, every second,
    /// with the chart's alert rules loaded.
    Prometheus,
}

impl Service {
    /// The name `stack.sh` knows it by.
    pub fn name(self) -> &'static str {
        match self {
            Self::RabbitMq => "rabbitmq",
            Self::Redis => "redis",
            Self::S3 => "s3",
            Self::Pebble => "pebble",
            Self::Sentinel => "sentinel",
            Self::RabbitCluster => "rabbitmq-cluster",
            Self::Prometheus => "prometheus",
        }
    }

    /// Pid files (relative to `STACK_DIR`) of the processes [`Private::kill`]
    /// kills: the main process of the service (and RabbitMQ's launcher
    /// script). Pebble's challtestsrv is left running: a killed CA, not a
    /// killed DNS.
    fn pid_files(self) -> &'static [&'static str] {
        match self {
            Self::RabbitMq => &["rabbitmq/rabbitmq.pid", "rabbitmq/launcher.pid"],
            Self::Redis => &["redis/redis.pid"],
            Self::S3 => &["s3/weed.pid"],
            Self::Pebble => &["pebble/pebble.pid"],
            Self::Sentinel => &["sentinel/primary.pid"],
            Self::Prometheus => &["prometheus/prometheus.pid"],
            Self::RabbitCluster => &[
                "rabbitmq-cluster/node1/rabbitmq.pid",
                "rabbitmq-cluster/node2/rabbitmq.pid",
                "rabbitmq-cluster/node3/rabbitmq.pid",
                "rabbitmq-cluster/node1/launcher.pid",
                "rabbitmq-cluster/node2/launcher.pid",
                "rabbitmq-cluster/node3/launcher.pid",
            ],
        }
    }
}

/// DNS records of a private challtestsrv, re-applied after it restarts.
#[derive(Debug, Default)]
struct Dns {
    default_ip: Option<Ipv4Addr>,
    records: BTreeMap<String, Ipv4Addr>,
}

/// One private instance of a service. Killed (blocking) on drop.
pub struct Private {
    kind: Service,
    dir: tempfile::TempDir,
    /// `stack.sh`'s environment for this instance (ports, dirs, extras).
    env: Vec<(String, String)>,
    port: u16,
    mgmt_port: Option<u16>,
    challtestsrv_port: Option<u16>,
    bucket: String,
    dns: Mutex<Dns>,
    /// Sentinel only: member name → port.
    members: Vec<(&'static str, u16)>,
}

/// `extra_env` for [`Private::start`]: Redis, RabbitMQ or S3 serves only
/// TLS (`stack.sh`'s `STACK_TLS=1`); the instance's URL and variables
/// follow.
pub const TLS_ONLY: (&str, &str) = ("STACK_TLS", "1");

/// With [`TLS_ONLY`]: the service also requires a client certificate
/// (`STACK_TLS_CLIENT_CERTS=1`); [`Private::vars`] names the one `stack.sh`
/// made.
pub const TLS_CLIENT_CERTS: (&str, &str) = ("STACK_TLS_CLIENT_CERTS", "1");

/// Members of a [`Service::Sentinel`] instance, as `stack.sh` names them.
pub const SENTINEL_MEMBERS: [&str; 5] = ["primary", "replica", "s1", "s2", "s3"];

impl std::fmt::Debug for Private {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Private")
            .field("kind", &self.kind)
            .field("dir", &self.dir.path())
            .field("url", &self.url())
            .finish()
    }
}

impl Private {
    /// Starts a private instance of `kind` on free ports and waits until it
    /// is ready. `extra_env` goes to `stack.sh` (and so to the service),
    /// e.g. `REDIS_APPENDONLY=yes`, [`PEBBLE_WITH_SLEEP`] or
    /// `PEBBLE_AUTHZREUSE=0`; it applies to every later start too.
    ///
    /// # Errors
    /// No free port, or `stack.sh up` failed (its output is in the error).
    pub async fn start(kind: Service, extra_env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("cf-private-{}-", kind.name()))
            .tempdir()?;
        let mut env: Vec<(String, String)> = vec![
            ("STACK_DIR".into(), dir.path().display().to_string()),
            ("STACK_TIMEOUT".into(), STACK_TIMEOUT_SECS.to_string()),
        ];
        let mut set = |k: &str, v: String| env.push((k.to_string(), v));
        let port;
        let mut mgmt_port = None;
        let mut challtestsrv_port = None;
        let mut bucket = "certfleet".to_string();
        let mut members = Vec::new();
        match kind {
            Service::RabbitCluster => {
                let mut lists: [Vec<String>; 3] = Default::default();
                for i in 1..=3 {
                    let amqp = alloc_port(false)?;
                    let mgmt = alloc_port(false)?;
                    let dist = alloc_port(false)?;
                    members.push((["node1", "node2", "node3"][i - 1], amqp));
                    members.push((["mgmt1", "mgmt2", "mgmt3"][i - 1], mgmt));
                    lists[0].push(amqp.to_string());
                    lists[1].push(mgmt.to_string());
                    lists[2].push(dist.to_string());
                }
                port = members[0].1;
                mgmt_port = Some(members[1].1);
                set("RABBITMQ_CLUSTER_PORTS", lists[0].join(" "));
                set("RABBITMQ_CLUSTER_MGMT_PORTS", lists[1].join(" "));
                set("RABBITMQ_CLUSTER_DIST_PORTS", lists[2].join(" "));
                set(
                    "RABBITMQ_CLUSTER_NAME",
                    format!("cf-private-{}-{port}-", std::process::id()),
                );
            }
            Service::Sentinel => {
                for m in SENTINEL_MEMBERS {
                    members.push((m, alloc_port(false)?));
                }
                let ports = |ms: &[(&str, u16)]| {
                    ms.iter()
                        .map(|(_, p)| p.to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                set("REDIS_HA_PORTS", ports(&members[..2]));
                set("SENTINEL_PORTS", ports(&members[2..]));
                port = members[2].1;
            }
            Service::RabbitMq => {
                port = alloc_port(false)?;
                let mgmt = alloc_port(false)?;
                mgmt_port = Some(mgmt);
                set("RABBITMQ_PORT", port.to_string());
                set("RABBITMQ_MGMT_PORT", mgmt.to_string());
                set("RABBITMQ_DIST_PORT", alloc_port(false)?.to_string());
                set(
                    "RABBITMQ_NODENAME",
                    format!("cf-private-{}-{port}@localhost", std::process::id()),
                );
            }
            Service::Prometheus => {
                port = alloc_port(false)?;
                set("PROMETHEUS_PORT", port.to_string());
            }
            Service::Redis => {
                port = alloc_port(false)?;
                set("REDIS_PORT", port.to_string());
            }
            Service::S3 => {
                port = alloc_port(false)?;
                set("S3_PORT", port.to_string());
                for k in [
                    "S3_GRPC_PORT",
                    "WEED_MASTER_PORT",
                    "WEED_MASTER_GRPC_PORT",
                    "WEED_VOLUME_PORT",
                    "WEED_VOLUME_GRPC_PORT",
                    "WEED_FILER_PORT",
                    "WEED_FILER_GRPC_PORT",
                ] {
                    set(k, alloc_port(false)?.to_string());
                }
                if let Some((_, b)) = extra_env.iter().find(|(k, _)| *k == "S3_BUCKET") {
                    bucket = (*b).to_string();
                }
            }
            Service::Pebble => {
                port = alloc_port(false)?;
                let mgmt = alloc_port(false)?;
                let cts = alloc_port(false)?;
                mgmt_port = Some(mgmt);
                challtestsrv_port = Some(cts);
                set("PEBBLE_PORT", port.to_string());
                set("PEBBLE_MGMT_PORT", mgmt.to_string());
                set("CHALLTESTSRV_MGMT_PORT", cts.to_string());
                // DNS listens on UDP and TCP.
                set("CHALLTESTSRV_DNS_PORT", alloc_port(true)?.to_string());
                // Workers of tests listen on <their ip>:5002 (see TestEnv).
                set("PEBBLE_HTTP_PORT", "5002".into());
            }
        }
        for (k, v) in extra_env {
            env.push(((*k).to_string(), (*v).to_string()));
        }
        let private = Self {
            kind,
            dir,
            env,
            port,
            mgmt_port,
            challtestsrv_port,
            bucket,
            dns: Mutex::new(Dns::default()),
            members,
        };
        private.stack("up").await?;
        Ok(private)
    }

    /// Stops the service cleanly (`stack.sh stop`); its data dir stays.
    ///
    /// # Errors
    /// `stack.sh stop` failed.
    pub async fn stop(&self) -> anyhow::Result<()> {
        self.stack("stop").await
    }

    /// SIGKILLs the service's main process (see the pid files in
    /// `stack.sh`) and waits until it is gone: no clean shutdown, no flush.
    /// For Pebble only `pebble` dies; its challtestsrv keeps answering.
    ///
    /// # Errors
    /// The service is not running, or it did not die within 10 s.
    pub async fn kill(&self) -> anyhow::Result<()> {
        let pids = self.pids(false);
        if pids.is_empty() {
            bail!(
                "{}: not running (no live pid in its pid files)",
                self.kind.name()
            );
        }
        kill_and_wait(&pids)
            .await
            .with_context(|| self.kind.name().to_string())
    }

    /// The pids in the instance's pid files: those [`Private::kill`] kills,
    /// or (`all`) every process `stack.sh` started for it.
    fn pids(&self, all: bool) -> Vec<u32> {
        let mut files = self.kind.pid_files().to_vec();
        if all && self.kind == Service::Pebble {
            files.push("pebble/challtestsrv.pid");
        }
        if all && self.kind == Service::Sentinel {
            files = SENTINEL_MEMBERS
                .iter()
                .map(|m| match *m {
                    "primary" => "sentinel/primary.pid",
                    "replica" => "sentinel/replica.pid",
                    "s1" => "sentinel/s1.pid",
                    "s2" => "sentinel/s2.pid",
                    _ => "sentinel/s3.pid",
                })
                .collect();
        }
        files
            .iter()
            .filter_map(|f| std::fs::read_to_string(self.dir.path().join(f)).ok())
            .filter_map(|t| t.trim().parse::<u32>().ok())
            .filter(|p| alive(*p))
            .collect()
    }

    /// Freezes the service (SIGSTOP): it keeps its sockets and answers
    /// nothing, like a hung or blackholed peer. [`Private::resume`] thaws it.
    ///
    /// # Errors
    /// The service is not running.
    pub async fn pause(&self) -> anyhow::Result<()> {
        self.signal("-STOP").await
    }

    /// Thaws a [`Private::pause`]d service (SIGCONT).
    ///
    /// # Errors
    /// The service is not running.
    pub async fn resume(&self) -> anyhow::Result<()> {
        self.signal("-CONT").await
    }

    async fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let pids = self.pids(false);
        if pids.is_empty() {
            bail!("{}: not running", self.kind.name());
        }
        tokio::process::Command::new("kill")
            .arg(sig)
            .args(pids.iter().map(u32::to_string))
            .stderr(Stdio::null())
            .status()
            .await?;
        Ok(())
    }

    /// Starts it again after [`Private::stop`] or [`Private::kill`] (same
    /// ports and data dir) and waits until it is ready. Pebble's DNS
    /// records set through this handle are restored.
    ///
    /// # Errors
    /// `stack.sh up` failed.
    pub async fn start_again(&self) -> anyhow::Result<()> {
        self.stack("up").await?;
        self.restore_dns().await
    }

    /// Clean stop, then start (`stack.sh restart`).
    ///
    /// # Errors
    /// `stack.sh restart` failed.
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.stack("restart").await?;
        self.restore_dns().await
    }

    /// Prometheus: scrapes `targets` (host:port) as job `certfleet` with
    /// the label `group="<group>"` from now on (a file_sd file it picks up
    /// within a second); an empty list stops scraping them.
    ///
    /// # Errors
    /// Not a Prometheus, or the file cannot be written.
    pub fn scrape(&self, group: &str, targets: &[std::net::SocketAddr]) -> anyhow::Result<()> {
        anyhow::ensure!(self.kind == Service::Prometheus, "scrape: not a Prometheus");
        let dir = self.dir.path().join("prometheus/targets");
        let list = serde_json::json!([{
            "targets": targets.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "labels": {"group": group},
        }]);
        // Written aside and renamed: Prometheus never reads half a file.
        let tmp = dir.join(format!(".{group}.json.tmp"));
        std::fs::write(&tmp, serde_json::to_vec(&list)?)?;
        std::fs::rename(&tmp, dir.join(format!("{group}.json")))?;
        Ok(())
    }

    /// Whether it is up and ready (`stack.sh status`).
    pub async fn is_up(&self) -> bool {
        self.stack("status").await.is_ok()
    }

    /// Which service this is.
    pub fn kind(&self) -> Service {
        self.kind
    }

    /// Its main port (AMQP, Redis, S3 or ACME).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its `STACK_DIR` (logs and pid files are in `<dir>/<service>/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The URL a client uses: `amqp://guest:guest@127.0.0.1:PORT/%2f`,
    /// `redis://127.0.0.1:PORT/0`, `http://127.0.0.1:PORT` (S3) or
    /// `https://127.0.0.1:PORT/dir` (Pebble).
    pub fn url(&self) -> String {
        let p = self.port;
        match self.kind {
            Service::RabbitMq if self.tls() => format!("amqps://guest:guest@127.0.0.1:{p}/%2f"),
            Service::RabbitMq => format!("amqp://guest:guest@127.0.0.1:{p}/%2f"),
            Service::Redis if self.tls() => format!("rediss://127.0.0.1:{p}/0"),
            Service::Redis => format!("redis://127.0.0.1:{p}/0"),
            Service::S3 if self.tls() => format!("https://127.0.0.1:{p}"),
            Service::S3 => format!("http://127.0.0.1:{p}"),
            Service::Pebble => format!("https://127.0.0.1:{p}/dir"),
            Service::Prometheus => format!("http://127.0.0.1:{p}"),
            Service::RabbitCluster => self
                .node_ports()
                .iter()
                .map(|p| format!("amqp://guest:guest@127.0.0.1:{p}/%2f"))
                .collect::<Vec<_>>()
                .join(","),
            Service::Sentinel => {
                let sentinels: Vec<String> = self.members[2..]
                    .iter()
                    .map(|(_, p)| format!("127.0.0.1:{p}"))
                    .collect();
                format!("redis+sentinel://{}/certfleet/0", sentinels.join(","))
            }
        }
    }

    /// Whether it serves only TLS ([`TLS_ONLY`]).
    pub fn tls(&self) -> bool {
        self.env
            .iter()
            .any(|(k, v)| k == TLS_ONLY.0 && v == TLS_ONLY.1)
    }

    /// The local CA of a [`TLS_ONLY`] instance.
    pub fn tls_ca(&self) -> PathBuf {
        self.dir.path().join("tls/ca.pem")
    }

    /// RabbitCluster: the AMQP ports of the nodes, node 1 first.
    pub fn node_ports(&self) -> Vec<u16> {
        self.members
            .iter()
            .filter(|(m, _)| m.starts_with("node"))
            .map(|(_, p)| *p)
            .collect()
    }

    /// RabbitCluster: the management API of node `i` (1…3), with
    /// credentials.
    pub fn node_mgmt_url(&self, i: usize) -> Option<String> {
        let p = self.member_port(&format!("mgmt{i}"))?;
        Some(format!("http://guest:guest@127.0.0.1:{p}"))
    }

    /// RabbitCluster: the Erlang node name of node `i` (1…3).
    pub fn node_name(&self, i: usize) -> String {
        format!(
            "cf-private-{}-{}-{i}@localhost",
            std::process::id(),
            self.port
        )
    }

    /// Sentinel: the port of a member (`primary`, `replica`, `s1`…`s3`);
    /// RabbitCluster: of `node1`…`node3` (AMQP) or `mgmt1`…`mgmt3`.
    pub fn member_port(&self, member: &str) -> Option<u16> {
        self.members
            .iter()
            .find(|(m, _)| *m == member)
            .map(|(_, p)| *p)
    }

    /// Sentinel: the port of the primary, as the first sentinel that
    /// answers says.
    ///
    /// # Errors
    /// No sentinel answered.
    pub async fn primary_port(&self) -> anyhow::Result<u16> {
        use deadpool_redis::redis;
        for (_, port) in self.members.iter().skip(2) {
            let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
                continue;
            };
            let Ok(mut c) = client.get_multiplexed_async_connection().await else {
                continue;
            };
            let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg("certfleet")
                .query_async(&mut c)
                .await
                .unwrap_or(None);
            if let Some((_, p)) = addr {
                return Ok(p);
            }
        }
        bail!("no sentinel of {} answered", self.dir.path().display())
    }

    /// SIGKILLs one member and waits until it is gone: for Sentinel
    /// `primary`, `replica`, `s1`…`s3` (as started); for RabbitCluster
    /// `node1`…`node3` (its Erlang VM and launcher script).
    ///
    /// # Errors
    /// Not running, or still alive after 10 s.
    pub async fn kill_member(&self, member: &str) -> anyhow::Result<()> {
        let dir = self.dir.path().join(self.kind.name());
        let files = match self.kind {
            Service::RabbitCluster => vec![
                dir.join(format!("{member}/rabbitmq.pid")),
                dir.join(format!("{member}/launcher.pid")),
            ],
            _ => vec![dir.join(format!("{member}.pid"))],
        };
        let pids: Vec<u32> = files
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .filter_map(|t| t.trim().parse::<u32>().ok())
            .filter(|p| alive(*p))
            .collect();
        anyhow::ensure!(!pids.is_empty(), "{member}: not running");
        kill_and_wait(&pids).await
    }

    /// RabbitMQ's management API (with credentials) or Pebble's.
    pub fn mgmt_url(&self) -> Option<String> {
        let m = self.mgmt_port?;
        match self.kind {
            Service::RabbitMq | Service::RabbitCluster => {
                Some(format!("http://guest:guest@127.0.0.1:{m}"))
            }
            Service::Pebble => Some(format!("https://127.0.0.1:{m}")),
            _ => None,
        }
    }

    /// The private pebble-challtestsrv's management API (Pebble only).
    pub fn challtestsrv_url(&self) -> Option<String> {
        self.challtestsrv_port
            .map(|p| format!("http://127.0.0.1:{p}"))
    }

    /// The CA that signed a private Pebble's TLS certificate (kept across
    /// restarts); `CERTFLEET_ACME_CA_CERTS`.
    pub fn ca_path(&self) -> Option<PathBuf> {
        (self.kind == Service::Pebble).then(|| self.dir.path().join("pebble/ca.pem"))
    }

    /// The S3 bucket `stack.sh` creates (`S3_BUCKET`, default `certfleet`).
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The `CERTFLEET_*` variables that point a configuration at this
    /// instance (plus `CERTFLEET_TEST_*` management URLs). For RabbitMQ the
    /// vhost is `/`; [`env_for`] uses the test's own vhost instead.
    pub fn vars(&self) -> Vec<(String, String)> {
        let mut v = Vec::new();
        let mut set = |k: &str, val: String| v.push((k.to_string(), val));
        match self.kind {
            Service::RabbitMq | Service::RabbitCluster => {
                set("CERTFLEET_AMQP_URL", self.url());
                if let Some(m) = self.mgmt_url() {
                    set("CERTFLEET_TEST_RABBITMQ_MGMT_URL", m);
                }
            }
            Service::Redis | Service::Sentinel => set("CERTFLEET_REDIS_URL", self.url()),
            _ => {}
        }
        if self.tls() {
            let prefix = match self.kind {
                Service::RabbitMq => "CERTFLEET_AMQP",
                Service::Redis => "CERTFLEET_REDIS",
                Service::S3 => "CERTFLEET_S3",
                _ => "",
            };
            if !prefix.is_empty() {
                let file = |f: &str| self.dir.path().join("tls").join(f).display().to_string();
                set(&format!("{prefix}_CA_FILE"), file("ca.pem"));
                set(&format!("{prefix}_CLIENT_CERT_FILE"), file("client.pem"));
                set(&format!("{prefix}_CLIENT_KEY_FILE"), file("client.key"));
            }
        }
        match self.kind {
            Service::RabbitMq | Service::RabbitCluster | Service::Redis | Service::Sentinel => {}
            Service::S3 => {
                set("CERTFLEET_S3_ENDPOINT", self.url());
                set("CERTFLEET_S3_BUCKET", self.bucket.clone());
            }
            Service::Pebble => {
                set("CERTFLEET_ACME_DIRECTORY", self.url());
                if let Some(ca) = self.ca_path() {
                    set("CERTFLEET_ACME_CA_CERTS", ca.display().to_string());
                }
                if let Some(m) = self.mgmt_url() {
                    set("CERTFLEET_TEST_PEBBLE_MGMT_URL", m);
                }
                if let Some(c) = self.challtestsrv_url() {
                    set("CERTFLEET_TEST_CHALLTESTSRV_URL", c);
                }
            }
            // Nothing of certfleet's configuration points at Prometheus.
            Service::Prometheus => {}
        }
        v
    }

    /// Makes every name without its own record resolve to `ip` in a private
    /// Pebble's DNS (kept across restarts).
    ///
    /// # Errors
    /// Not a Pebble, or challtestsrv refused.
    pub async fn set_default_ip(&self, ip: Ipv4Addr) -> anyhow::Result<()> {
        self.challtestsrv(
            "set-default-ipv4",
            serde_json::json!({"ip": ip.to_string()}),
        )
        .await?;
        self.dns().default_ip = Some(ip);
        Ok(())
    }

    /// Adds an A record to a private Pebble's DNS (kept across restarts).
    ///
    /// # Errors
    /// Not a Pebble, or challtestsrv refused.
    pub async fn add_a(&self, domain: &str, ip: Ipv4Addr) -> anyhow::Result<()> {
        self.challtestsrv(
            "add-a",
            serde_json::json!({"host": domain, "addresses": [ip.to_string()]}),
        )
        .await?;
        self.dns().records.insert(domain.to_string(), ip);
        Ok(())
    }

    /// A fresh domain of `env` that resolves to its responder address both
    /// in the shared DNS and in this private Pebble's.
    ///
    /// # Errors
    /// Either challtestsrv refused.
    pub async fn domain(&self, env: &TestEnv, label: &str) -> anyhow::Result<String> {
        let domain = env.domain(label).await?;
        self.add_a(&domain, env.ip).await?;
        Ok(domain)
    }

    fn dns(&self) -> std::sync::MutexGuard<'_, Dns> {
        self.dns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn restore_dns(&self) -> anyhow::Result<()> {
        if self.kind != Service::Pebble {
            return Ok(());
        }
        let (default_ip, records) = {
            let dns = self.dns();
            (dns.default_ip, dns.records.clone())
        };
        if let Some(ip) = default_ip {
            self.set_default_ip(ip).await?;
        }
        for (domain, ip) in records {
            self.add_a(&domain, ip).await?;
        }
        Ok(())
    }

    async fn challtestsrv(&self, path: &str, body: serde_json::Value) -> anyhow::Result<()> {
        let base = self
            .challtestsrv_url()
            .ok_or_else(|| anyhow!("{} has no challtestsrv", self.kind.name()))?;
        let http = Http::new(None)?;
        let (status, text) = http
            .send(
                http::Method::POST,
                &format!("{base}/{path}"),
                Some(body.to_string()),
            )
            .await
            .with_context(|| format!("challtestsrv {path}"))?;
        if status >= 300 {
            bail!("challtestsrv {path}: {status} {text}");
        }
        Ok(())
    }

    /// The command line of `stack.sh CMD SERVICE` for this instance:
    /// nothing of the caller's environment but `PATH`, `HOME`, the locale
    /// and `STACK_VENV`, so a shared-stack setting cannot leak in.
    /// `stack.sh ARGS...` with this instance's environment, output to `log`.
    fn command(&self, args: &[&str], log: &Path) -> anyhow::Result<std::process::Command> {
        let mut c = std::process::Command::new(repo_root().join("scripts/stack.sh"));
        c.args(args).env_clear();
        for k in ["PATH", "HOME", "LANG", "LC_ALL", "STACK_VENV"] {
            if let Ok(v) = std::env::var(k) {
                c.env(k, v);
            }
        }
        if std::env::var_os("PATH").is_none() {
            c.env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin");
        }
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        c.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        Ok(c)
    }

    async fn stack(&self, cmd: &str) -> anyhow::Result<()> {
        self.stack_args(&[cmd, self.kind.name()]).await
    }

    /// Runs `rabbitmqctl ARGS...` against this private RabbitMQ node (e.g.
    /// `set_vm_memory_high_watermark 0.000001` raises a memory alarm, which
    /// blocks every publishing connection).
    ///
    /// # Errors
    /// Not a RabbitMQ, or `rabbitmqctl` failed (its output is in the error).
    pub async fn rabbitmqctl(&self, args: &[&str]) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.kind == Service::RabbitMq,
            "rabbitmqctl: not a RabbitMQ"
        );
        let mut all = vec!["rabbitmqctl"];
        all.extend_from_slice(args);
        self.stack_args(&all).await
    }

    async fn stack_args(&self, args: &[&str]) -> anyhow::Result<()> {
        let cmd = args.join(" ");
        // Output goes to a file, not a pipe: a service that inherited the
        // pipe would keep us waiting for EOF.
        let log = self.dir.path().join("stack-sh.log");
        let before = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let mut c = tokio::process::Command::from(self.command(args, &log)?);
        c.kill_on_drop(true);
        let status = tokio::time::timeout(Duration::from_secs(STACK_TIMEOUT_SECS + 60), c.status())
            .await
            .with_context(|| format!("stack.sh {cmd} timed out"))??;
        if !status.success() {
            let out = std::fs::read(&log).unwrap_or_default();
            let start = usize::try_from(before).unwrap_or(0).min(out.len());
            bail!(
                "stack.sh {cmd} ({}): {status}\n{}",
                self.dir.path().display(),
                String::from_utf8_lossy(&out[start..])
            );
        }
        Ok(())
    }
}

/// SIGKILLs `pids` and waits (10 s at most) until they are gone.
async fn kill_and_wait(pids: &[u32]) -> anyhow::Result<()> {
    // Its exit status is ignored: a launcher that already exited is fine.
    tokio::process::Command::new("kill")
        .arg("-KILL")
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status()
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|p| alive(*p)) {
        if tokio::time::Instant::now() > deadline {
            bail!("pids {pids:?} still alive after SIGKILL");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

impl Drop for Private {
    /// SIGKILLs every process of the instance (its data dir is deleted right
    /// after, so a clean stop would only cost time: ~7 s for RabbitMQ), then
    /// lets `stack.sh stop` clean up pid files.
    fn drop(&mut self) {
        let pids = self.pids(true);
        if !pids.is_empty() {
            let _ = std::process::Command::new("kill")
                .arg("-KILL")
                .args(pids.iter().map(u32::to_string))
                .stderr(Stdio::null())
                .status();
        }
        let log = self.dir.path().join("stack-sh.log");
        if let Ok(mut c) = self.command(&["stop", self.kind.name()], &log) {
            let _ = c.status();
        }
    }
}

/// Whether `pid` exists and is not a zombie (PID 1 here may not reap).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) STATE ..."; comm may contain spaces and parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

static NEXT_PORT: AtomicU32 = AtomicU32::new(0);

/// A port of [`PORT_RANGE`] that is free now on 127.0.0.1 (TCP, and UDP
/// too if `udp`). Different test processes start at different offsets; a
/// race with another process is possible and accepted (`stack.sh` then
/// refuses the busy port and the test fails loudly).
fn alloc_port(udp: bool) -> anyhow::Result<u16> {
    let len = u32::from(PORT_RANGE.end - PORT_RANGE.start);
    let offset = std::process::id().wrapping_mul(7919);
    for _ in 0..len {
        let n = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        let port =
            PORT_RANGE.start + u16::try_from(offset.wrapping_add(n) % len).unwrap_or_default();
        let tcp_free = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok();
        if tcp_free && (!udp || UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok()) {
            return Ok(port);
        }
    }
    bail!("no free port in {PORT_RANGE:?}")
}

/// A free TCP port on 127.0.0.1 for a server a test starts itself (from
/// the same range as private instances').
///
/// # Errors
/// None free.
pub fn free_port() -> anyhow::Result<u16> {
    alloc_port(false)
}

/// `[(String, String)]` as the `[(&str, &str)]` that `TestEnv` methods take.
pub fn pairs(vars: &[(String, String)]) -> Vec<(&str, &str)> {
    vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// `env`'s variables with the `private` instances' on top, then `extra`.
/// RabbitMQ's URL keeps the default vhost `/` (nothing else uses a private
/// broker); [`env_for`] creates and uses the test's vhost instead.
pub fn vars_for(
    env: &TestEnv,
    private: &[&Private],
    extra: &[(&str, &str)],
) -> HashMap<String, String> {
    let mut vars = env.vars.clone();
    for p in private {
        vars.extend(p.vars());
    }
    for (k, v) in extra {
        vars.insert((*k).to_string(), (*v).to_string());
    }
    vars
}

/// A copy of `env` (same id, prefixes, responder address) whose stack and
/// variables point at the `private` instances, so that all of `TestEnv`'s
/// helpers and `env.command(..)` children use them. On a private RabbitMQ
/// it creates `env.vhost`; on a private Pebble it makes every name resolve
/// to `env.ip` (so `domain()` needs no records there).
///
/// # Errors
/// The vhost or the DNS default could not be set.
pub async fn env_for(env: &TestEnv, private: &[&Private]) -> anyhow::Result<TestEnv> {
    let mut stack = env.stack.clone();
    let mut vars = env.vars.clone();
    let mut http = env.http.clone();
    for p in private {
        let port = p.port();
        match p.kind() {
            Service::RabbitMq => {
                let scheme = if p.tls() { "amqps" } else { "amqp" };
                stack.amqp_base = format!("{scheme}://guest:guest@127.0.0.1:{port}");
                if p.tls() {
                    vars.extend(p.vars().into_iter().filter(|(k, _)| k.ends_with("_FILE")));
                }
                if let Some(m) = p.mgmt_url() {
                    stack.rabbitmq_mgmt = url::Url::parse(&m)?;
                }
                create_vhost(env, &stack.rabbitmq_mgmt, &env.vhost).await?;
                vars.insert(
                    "CERTFLEET_AMQP_URL".into(),
                    format!("{}/{}", stack.amqp_base, env.vhost),
                );
            }
            Service::RabbitCluster => {
                stack.amqp_base = format!("amqp://guest:guest@127.0.0.1:{port}");
                if let Some(m) = p.mgmt_url() {
                    stack.rabbitmq_mgmt = url::Url::parse(&m)?;
                }
                create_vhost(env, &stack.rabbitmq_mgmt, &env.vhost).await?;
                let urls: Vec<String> = p
                    .node_ports()
                    .iter()
                    .map(|n| format!("amqp://guest:guest@127.0.0.1:{n}/{}", env.vhost))
                    .collect();
                vars.insert("CERTFLEET_AMQP_URL".into(), urls.join(","));
            }
            Service::Redis | Service::Sentinel => {
                stack.redis_url = p.url();
                vars.extend(p.vars());
            }
            Service::S3 => {
                stack.s3_endpoint = p.url();
                stack.bucket = p.bucket().to_string();
                vars.extend(p.vars());
            }
            Service::Prometheus => {}
            Service::Pebble => {
                stack.acme_directory = p.url();
                if let Some(ca) = p.ca_path() {
                    http = Http::new(Some(&ca))?;
                    stack.ca_certs = ca;
                }
                if let Some(m) = p.mgmt_url() {
                    stack.pebble_mgmt = m;
                }
                if let Some(c) = p.challtestsrv_url() {
                    stack.challtestsrv = c;
                }
                p.set_default_ip(env.ip).await?;
                vars.extend(
                    p.vars()
                        .into_iter()
                        .filter(|(k, _)| !k.starts_with("CERTFLEET_TEST_")),
                );
            }
        }
    }
    Ok(TestEnv {
        id: env.id.clone(),
        stack,
        vhost: env.vhost.clone(),
        ip: env.ip,
        vars,
        http,
    })
}

/// Creates `vhost` with full permissions for the management user.
async fn create_vhost(env: &TestEnv, mgmt: &url::Url, vhost: &str) -> anyhow::Result<()> {
    let base = mgmt.as_str().trim_end_matches('/');
    let user = if mgmt.username().is_empty() {
        "guest"
    } else {
        mgmt.username()
    };
    let (status, body) = env
        .http
        .send(
            http::Method::PUT,
            &format!("{base}/api/vhosts/{vhost}"),
            None,
        )
        .await
        .context("creating the vhost on the private broker")?;
    if status >= 300 {
        bail!("creating vhost {vhost}: {status} {body}");
    }
    let (status, body) = env
        .http
        .send(
            http::Method::PUT,
            &format!("{base}/api/permissions/{vhost}/{user}"),
            Some(r#"{"configure":".*","write":".*","read":".*"}"#.into()),
        )
        .await?;
    if status >= 300 {
        bail!("granting permissions on {vhost}: {status} {body}");
    }
    Ok(())
}
