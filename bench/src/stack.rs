//! Where things listen, and the bench's own slice of the shared services.
//!
//! RabbitMQ, Redis and S3 are the shared stack (`scripts/stack.sh env`
//! exports their addresses, as for the integration tests). The CA is a
//! private Pebble (+ challtestsrv) that `bench/run.sh` starts with its own
//! `STACK_DIR` and ports, once per validation mode, so the shared Pebble is
//! never restarted. Each step works in a [`Slice`]: its own vhost, Redis
//! prefix and S3 prefix, and its domains resolve (through the private
//! challtestsrv) to the bench's own loopback address, so nothing collides
//! with tests running at the same time. In dns-01 mode ([`Mode::Dns01`])
//! that Pebble resolves through a BIND of the bench's own ([`Dns`]: the
//! same STACK_DIR, its own loopback address), whose zone holds the step's
//! names and the clients' TXT records.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use certfleet_common::config::Sources;
use certfleet_common::{ChallengeType, Config};
use deadpool_redis::redis;
use serde::{Deserialize, Serialize};

use certfleet_tests::http::Http;
use certfleet_tests::var;

/// The port Pebble's VA connects to for http-01 (RFC 8555 §8.3: 80; Pebble
/// uses its `httpPort`, 5002 in `scripts/stack.sh`).
pub const HTTP01_PORT: u16 = 5002;

/// The loopback address the bench's domains resolve to by default: outside
/// 127.10.0.0–127.209.255.255, the range the test harness draws its
/// per-test addresses from.
pub const DEFAULT_IP: Ipv4Addr = Ipv4Addr::new(127, 240, 0, 2);

/// The shared stack's addresses, from the variables `scripts/stack.sh env`
/// prints (with the script's defaults).
#[derive(Debug, Clone)]
pub struct Stack {
    /// AMQP URL without the vhost.
    pub amqp_base: String,
    /// RabbitMQ management API, with credentials.
    pub rabbitmq_mgmt: String,
    /// Redis URL.
    pub redis_url: String,
    /// S3 endpoint.
    pub s3_endpoint: String,
    /// Bucket.
    pub bucket: String,
    /// S3 credentials.
    pub aws_key: String,
    /// S3 credentials.
    pub aws_secret: String,
    /// The shared stack's state directory (pid files).
    pub dir: PathBuf,
    /// Which S3 server the endpoint is (`BENCH_S3_SERVER`: `SeaweedFS`, the
    /// stack's S3, or `moto`), for CPU accounting and the report.
    pub s3_server: String,
}

impl Stack {
    /// Reads the environment (the same variables, with the same defaults,
    /// as the integration tests' stack).
    pub fn from_env() -> Self {
        let shared = certfleet_tests::Stack::from_env();
        Self {
            amqp_base: shared.amqp_base,
            rabbitmq_mgmt: shared
                .rabbitmq_mgmt
                .as_str()
                .trim_end_matches('/')
                .to_string(),
            redis_url: shared.redis_url,
            s3_endpoint: shared.s3_endpoint,
            bucket: shared.bucket,
            aws_key: var("AWS_ACCESS_KEY_ID", "test"),
            aws_secret: var("AWS_SECRET_ACCESS_KEY", "test"),
            dir: shared.stack_dir,
            s3_server: var("BENCH_S3_SERVER", "SeaweedFS"),
        }
    }

    /// Pid files of the shared services, for CPU accounting.
    pub fn service_pid_files(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("rabbitmq", self.dir.join("rabbitmq/rabbitmq.pid")),
            ("redis", self.dir.join("redis/redis.pid")),
            (
                "s3",
                if self.s3_server == "moto" {
                    self.dir.join("moto/moto.pid")
                } else {
                    self.dir.join("s3/weed.pid")
                },
            ),
        ]
    }
}

/// How the CA validates.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `PEBBLE_VA_NOSLEEP=1 PEBBLE_VA_ALWAYS_VALID=1`: no request to the
    /// client at all.
    Instant,
    /// `PEBBLE_VA_NOSLEEP=1`: real http-01 requests, no artificial delay.
    Http01,
    /// Pebble's default: each of the VA's three validation requests waits
    /// 0–4 s first (`PEBBLE_VA_SLEEPTIME`, default 5).
    Delay,
    /// `PEBBLE_VA_NOSLEEP=1` with Pebble resolving through the bench's own
    /// BIND: real dns-01 validation, the clients' TXT records written there
    /// with TSIG-signed RFC 2136 updates.
    Dns01,
}

impl Mode {
    /// Short name used in file names and domains.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Instant => "instant",
            Mode::Http01 => "http01",
            Mode::Delay => "delay",
            Mode::Dns01 => "dns01",
        }
    }

    /// A line for the report.
    pub fn describe(self) -> &'static str {
        match self {
            Mode::Instant => "instant validation (PEBBLE_VA_NOSLEEP=1 PEBBLE_VA_ALWAYS_VALID=1)",
            Mode::Http01 => "real http-01 validation (PEBBLE_VA_NOSLEEP=1)",
            Mode::Delay => "Pebble's default validation delay (0-4 s per VA request)",
            Mode::Dns01 => {
                "real dns-01 validation through the bench's BIND (PEBBLE_VA_NOSLEEP=1; RFC 2136 with TSIG)"
            }
        }
    }

    /// All modes, in report order.
    pub const ALL: [Mode; 4] = [Mode::Instant, Mode::Http01, Mode::Delay, Mode::Dns01];

    /// The challenge the clients answer in this mode.
    pub fn challenge(self) -> ChallengeType {
        match self {
            Mode::Dns01 => ChallengeType::Dns01,
            Mode::Instant | Mode::Http01 | Mode::Delay => ChallengeType::Http01,
        }
    }
}

/// The private CA a step runs against (flags set by `bench/run.sh`).
#[derive(Debug, Clone, clap::Args)]
pub struct Ca {
    /// Validation mode the private Pebble was started in.
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// The private Pebble's directory URL.
    #[arg(long)]
    pub directory: String,
    /// PEM file trusted for the private Pebble's TLS.
    #[arg(long)]
    pub ca_certs: PathBuf,
    /// The private pebble-challtestsrv's management API.
    #[arg(long)]
    pub challtestsrv: String,
    /// The private Pebble's pid file (CPU accounting).
    #[arg(long)]
    pub pebble_pid_file: PathBuf,
    /// Loopback address the bench's domains resolve to; the http-01
    /// responder of the step listens on it, port 5002.
    #[arg(long, default_value_t = DEFAULT_IP)]
    pub ip: Ipv4Addr,
    /// The parent domain of the step's names (`--mode dns01`: a zone of the
    /// bench's BIND).
    #[arg(long, default_value = crate::names::SUFFIX)]
    pub zone: String,
    /// The bench's BIND (`--mode dns01`).
    #[command(flatten)]
    pub dns: Dns,
}

/// The bench's own BIND for `--mode dns01` (`scripts/stack.sh up bind` in
/// the private Pebble's STACK_DIR, on its own loopback address): where the
/// clients write their TXT records and look zones up.
#[derive(Debug, Clone, clap::Args)]
pub struct Dns {
    /// The RFC 2136 server (the zone's primary).
    #[arg(long, default_value = "127.0.0.154:53")]
    pub rfc2136_nameserver: SocketAddr,
    /// TSIG key name.
    #[arg(long, default_value = "certfleet-test.")]
    pub tsig_key: String,
    /// TSIG algorithm.
    #[arg(long, default_value = "hmac-sha256")]
    pub tsig_algorithm: String,
    /// File holding the key's base64 secret (`$STACK_DIR/bind/tsig.secret`).
    #[arg(long)]
    pub tsig_secret_file: Option<PathBuf>,
    /// Recursive resolver for zone and NS look-ups (default: the RFC 2136
    /// server, which answers for its zones).
    #[arg(long)]
    pub dns_resolvers: Option<SocketAddr>,
    /// A resolv.conf naming only that BIND (`$STACK_DIR/bind/resolv.conf`),
    /// bind-mounted over /etc/resolv.conf for every lego process (lego looks
    /// the zone's NS names up through the system resolver).
    #[arg(long)]
    pub resolv_conf: Option<PathBuf>,
    /// BIND's pid file (CPU accounting).
    #[arg(long)]
    pub bind_pid_file: Option<PathBuf>,
}

impl Dns {
    /// The resolver for zone and NS look-ups.
    pub fn resolver(&self) -> SocketAddr {
        self.dns_resolvers.unwrap_or(self.rfc2136_nameserver)
    }

    /// The TSIG secret file, which dns-01 needs.
    ///
    /// # Errors
    /// Not given, or not readable.
    pub fn secret_file(&self) -> anyhow::Result<&Path> {
        let f = self
            .tsig_secret_file
            .as_deref()
            .context("--mode dns01 needs --tsig-secret-file")?;
        anyhow::ensure!(
            std::fs::metadata(f).is_ok_and(|m| m.len() > 0),
            "the TSIG secret file {} is missing or empty",
            f.display()
        );
        Ok(f)
    }
}

impl Ca {
    /// Makes every name resolve to the bench's address (challtestsrv
    /// `/add-a`). Needed only when Pebble really validates, harmless
    /// otherwise.
    ///
    /// # Errors
    /// challtestsrv unreachable or refusing.
    pub async fn point_dns(&self, http: &Http, names: &[String]) -> anyhow::Result<()> {
        // dns-01: the names are in the BIND's zone (wildcard A), and only
        // their TXT records are looked up.
        if matches!(self.mode, Mode::Instant | Mode::Dns01) {
            return Ok(());
        }
        let url = format!("{}/add-a", self.challtestsrv.trim_end_matches('/'));
        for name in names {
            let body = serde_json::json!({"host": name, "addresses": [self.ip.to_string()]});
            let (status, text) = http
                .send(http::Method::POST, &url, Some(body.to_string()))
                .await
                .context("pebble-challtestsrv add-a")?;
            if status >= 300 {
                bail!("add-a {name}: {status} {text}");
            }
        }
        Ok(())
    }

    /// The http-01 listen address of this step's responder.
    pub fn http01_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, HTTP01_PORT))
    }

    /// `n` names of `label` in this CA's zone.
    pub fn names(&self, label: &str, n: usize) -> Vec<String> {
        crate::names::list(label, n, &self.zone)
    }

    /// A name outside the measured set, in this CA's zone.
    pub fn warmup_name(&self, label: &str, who: &str) -> String {
        crate::names::warmup(label, who, &self.zone)
    }

    /// Pid files for CPU accounting: the shared services', Pebble's and,
    /// in dns-01 mode, the bench's BIND.
    pub fn pid_files(&self, stack: &Stack) -> Vec<(&'static str, PathBuf)> {
        let mut v = stack.service_pid_files();
        v.push(("pebble", self.pebble_pid_file.clone()));
        if self.mode == Mode::Dns01
            && let Some(f) = &self.dns.bind_pid_file
        {
            v.push(("bind", f.clone()));
        }
        v
    }

    /// The worker's dns-01 settings in dns-01 mode (the `rfc2136` provider
    /// on the bench's BIND), none otherwise.
    ///
    /// # Errors
    /// dns-01 mode without a readable TSIG secret file.
    pub fn dns01_vars(&self) -> anyhow::Result<Vec<(&'static str, String)>> {
        if self.mode != Mode::Dns01 {
            return Ok(Vec::new());
        }
        let d = &self.dns;
        Ok(vec![
            ("CERTFLEET_DNS01_PROVIDER", "rfc2136".into()),
            (
                "CERTFLEET_RFC2136_NAMESERVER",
                d.rfc2136_nameserver.to_string(),
            ),
            ("CERTFLEET_RFC2136_TSIG_KEY", d.tsig_key.clone()),
            ("CERTFLEET_RFC2136_TSIG_ALGORITHM", d.tsig_algorithm.clone()),
            (
                "CERTFLEET_RFC2136_TSIG_SECRET_FILE",
                d.secret_file()?.display().to_string(),
            ),
            ("CERTFLEET_DNS01_RESOLVERS", d.resolver().to_string()),
        ])
    }
}

/// One step's own vhost, Redis prefix and S3 prefix, and the `CERTFLEET_*`
/// environment of a worker or subscriber working in it.
pub struct Slice {
    /// Unique id (`<step>-<run>`).
    pub id: String,
    /// The vhost.
    pub vhost: String,
    vars: HashMap<String, String>,
    stack: Stack,
    http: Http,
}

impl Slice {
    /// Creates the vhost and picks the prefixes. With a CA, the worker
    /// settings for it are included.
    ///
    /// # Errors
    /// The management API refuses or cannot be reached.
    pub async fn create(stack: &Stack, id: &str, ca: Option<&Ca>) -> anyhow::Result<Self> {
        let http = Http::new(None)?;
        let vhost = format!("cf-bench-{id}");
        http.create_vhost(&stack.rabbitmq_mgmt, &vhost).await?;

        let mut vars: HashMap<String, String> = [
            ("CERTFLEET_AMQP_URL", format!("{}/{vhost}", stack.amqp_base)),
            ("CERTFLEET_REDIS_URL", stack.redis_url.clone()),
            ("CERTFLEET_REDIS_PREFIX", format!("bench:{id}:")),
            ("CERTFLEET_S3_BUCKET", stack.bucket.clone()),
            ("CERTFLEET_S3_ENDPOINT", stack.s3_endpoint.clone()),
            ("CERTFLEET_S3_REGION", "us-east-1".into()),
            ("CERTFLEET_S3_PATH_STYLE", "true".into()),
            ("CERTFLEET_S3_PREFIX", format!("bench/{id}/")),
            ("AWS_ACCESS_KEY_ID", stack.aws_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", stack.aws_secret.clone()),
            ("CERTFLEET_ACME_EMAIL", "bench@example.test".into()),
            ("CERTFLEET_SHUTDOWN_GRACE", "5s".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        // Keys as the documented deployment stores them: encrypted to a
        // server group's recipient (the subscribers hold its identity), the
        // workers' own key for account and order keys.
        // Kept per slice: a step run again on a restarted CA (same label,
        // same slice) must open what its first try stored (the ACME
        // account, order records) with the same workers' key.
        let keys = std::env::temp_dir().join(format!("certfleet-bench-keys-{id}"));
        std::fs::create_dir_all(&keys)?;
        if !keys.join("encryption-key").exists() {
            let (identity, recipient) = certfleet_common::seal::recipients::generate();
            std::fs::write(keys.join("identity"), format!("{}\n", identity.expose()))?;
            std::fs::write(keys.join("recipients"), format!("* {recipient}\n"))?;
            std::fs::write(
                keys.join("encryption-key"),
                certfleet_common::seal::new_encryption_key()?.expose(),
            )?;
            use std::os::unix::fs::PermissionsExt as _;
            for f in ["identity", "encryption-key"] {
                std::fs::set_permissions(keys.join(f), std::fs::Permissions::from_mode(0o600))?;
            }
        }
        for (k, v) in [
            (
                "CERTFLEET_IDENTITY_FILE",
                keys.join("identity").display().to_string(),
            ),
            (
                "CERTFLEET_RECIPIENTS_FILE",
                keys.join("recipients").display().to_string(),
            ),
            (
                "CERTFLEET_ENCRYPTION_KEY",
                std::fs::read_to_string(keys.join("encryption-key"))?,
            ),
        ] {
            vars.insert(k.into(), v);
        }
        if let Some(ca) = ca {
            vars.insert("CERTFLEET_ACME_DIRECTORY".into(), ca.directory.clone());
            vars.insert(
                "CERTFLEET_ACME_CA_CERTS".into(),
                ca.ca_certs.display().to_string(),
            );
            vars.insert(
                "CERTFLEET_HTTP01_LISTEN".into(),
                ca.http01_addr().to_string(),
            );
            for (k, v) in ca.dns01_vars()? {
                vars.insert(k.into(), v);
            }
        }
        let slice = Self {
            id: id.to_string(),
            vhost,
            vars,
            stack: stack.clone(),
            http,
        };
        certfleet_worker::objects::ObjectWrites::ensure_bucket(
            &certfleet_common::Store::from_config(&slice.config()?).await,
        )
        .await?;
        Ok(slice)
    }

    /// The `CERTFLEET_*` variables.
    pub fn vars(&self) -> &HashMap<String, String> {
        &self.vars
    }

    /// The configuration, with `extra` variables on top.
    ///
    /// # Errors
    /// An invalid value (a bug in the bench).
    pub fn config_with(&self, extra: &[(&str, String)]) -> anyhow::Result<Config> {
        let mut vars = self.vars.clone();
        for (k, v) in extra {
            vars.insert((*k).to_string(), v.clone());
        }
        Ok(Config::load(&Sources::new(&vars))?)
    }

    /// The configuration.
    ///
    /// # Errors
    /// As [`Slice::config_with`].
    pub fn config(&self) -> anyhow::Result<Config> {
        self.config_with(&[])
    }

    /// Deletes the vhost (and every queue in it) and the Redis keys under
    /// the prefix. S3 objects stay (on the S3 server's disk until the
    /// stack restarts; they are a few KiB per certificate).
    pub async fn cleanup(self) {
        if let Err(e) = self
            .http
            .delete_vhost(&self.stack.rabbitmq_mgmt, &self.vhost)
            .await
        {
            tracing::warn!(error = %e, vhost = %self.vhost, "could not delete the vhost");
        }
        if let Err(e) =
            delete_redis_prefix(&self.stack.redis_url, &format!("bench:{}:", self.id)).await
        {
            tracing::warn!(error = %e, "could not delete the bench's Redis keys");
        }
    }
}

/// Deletes every key under `prefix` (SCAN + UNLINK).
async fn delete_redis_prefix(url: &str, prefix: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(5000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            let _: () = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut conn)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}
