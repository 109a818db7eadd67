//! Test harness: real RabbitMQ, Redis, S3 (SeaweedFS) and Pebble, as started by
//! `scripts/stack.sh`, shared by every test but isolated per test.
//!
//! Each [`TestEnv`] gets its own RabbitMQ vhost, Redis key prefix, S3 key
//! prefix, and loopback address for its workers' http-01 responders. Its
//! domains resolve (through pebble-challtestsrv's DNS, which Pebble uses) to
//! that address, so Pebble's real http-01 validation reaches this test's
//! workers and no other test's. Tests therefore run in parallel.
//!
//! The stack's addresses come from the environment `scripts/stack.sh env`
//! prints, with the same defaults as the script.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use certfleet_common::config::Sources;
use certfleet_common::state::State;
use certfleet_common::storage::Store;
use certfleet_common::submit::{Dedup, Outcome, Submission, Submitter};
use certfleet_common::{Config, Envelope, Event, amqp, topology};
use certfleet_worker::config::Settings;
use certfleet_worker::objects::ObjectWrites as _;
use futures_util::StreamExt;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;

pub use crate::http::Http;

pub mod acme_proxy;
pub mod dns;
pub mod http;
pub mod pki;
pub mod private;

/// The environment variable `name`, or `default` when unset or empty.
pub fn var(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Where the shared stack listens.
#[derive(Debug, Clone)]
pub struct Stack {
    /// AMQP URL without vhost, e.g. `amqp://guest:guest@127.0.0.1:5672`.
    pub amqp_base: String,
    /// RabbitMQ management API with credentials.
    pub rabbitmq_mgmt: url::Url,
    /// Redis URL.
    pub redis_url: String,
    /// S3 endpoint.
    pub s3_endpoint: String,
    /// Bucket.
    pub bucket: String,
    /// ACME directory.
    pub acme_directory: String,
    /// Pebble's CA certificate (for its TLS).
    pub ca_certs: PathBuf,
    /// Pebble's management API.
    pub pebble_mgmt: String,
    /// pebble-challtestsrv's management API.
    pub challtestsrv: String,
    /// The stack's state directory.
    pub stack_dir: PathBuf,
    /// BIND 9, authoritative for `dns01.test`, `dns02.test`, `acmedns.test`
    /// (Pebble resolves through it).
    pub bind: String,
    /// Its TSIG key name (hmac-sha256).
    pub tsig_key: String,
    /// The file holding that key's secret (base64).
    pub tsig_secret_file: PathBuf,
}

impl Stack {
    /// Reads the stack's addresses from the environment.
    pub fn from_env() -> Self {
        let stack_dir = PathBuf::from(var(
            "CERTFLEET_TEST_STACK_DIR",
            &repo_root().join(".stack").display().to_string(),
        ));
        let amqp = var(
            "CERTFLEET_AMQP_URL",
            "amqp://guest:guest@127.0.0.1:5672/%2f",
        );
        let amqp_base = match amqp.rfind('/') {
            Some(i) if i > "amqp://".len() => amqp[..i].to_string(),
            _ => amqp.clone(),
        };
        Self {
            amqp_base,
            rabbitmq_mgmt: url::Url::parse(&var(
                "CERTFLEET_TEST_RABBITMQ_MGMT_URL",
                "http://guest:guest@127.0.0.1:15672",
            ))
            .unwrap_or_else(|_| {
                url::Url::parse("http://guest:guest@127.0.0.1:15672").expect("static URL")
            }),
            redis_url: var("CERTFLEET_REDIS_URL", "redis://127.0.0.1:6379/0"),
            s3_endpoint: var("CERTFLEET_S3_ENDPOINT", "http://127.0.0.1:9000"),
            bucket: var("CERTFLEET_S3_BUCKET", "certfleet"),
            acme_directory: var("CERTFLEET_ACME_DIRECTORY", "https://127.0.0.1:14000/dir"),
            ca_certs: PathBuf::from(var(
                "CERTFLEET_ACME_CA_CERTS",
                &stack_dir.join("pebble/ca.pem").display().to_string(),
            )),
            pebble_mgmt: var("CERTFLEET_TEST_PEBBLE_MGMT_URL", "https://127.0.0.1:15000"),
            challtestsrv: var("CERTFLEET_TEST_CHALLTESTSRV_URL", "http://127.0.0.1:8055"),
            bind: var("CERTFLEET_TEST_BIND_ADDR", "127.0.0.153:53"),
            tsig_key: var("CERTFLEET_RFC2136_TSIG_KEY", "certfleet-test."),
            tsig_secret_file: PathBuf::from(var(
                "CERTFLEET_RFC2136_TSIG_SECRET_FILE",
                &stack_dir.join("bind/tsig.secret").display().to_string(),
            )),
            stack_dir,
        }
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// An age identity of a server group, in a file of its own.
#[derive(Debug, Clone)]
pub struct Group {
    /// The identity file (`CERTFLEET_IDENTITY_FILE`).
    pub identity_file: PathBuf,
    /// Its secret line (to look for in outputs).
    pub identity: String,
    /// The public recipient (`age1...`).
    pub recipient: String,
}

impl Group {
    /// A new identity, written under `dir` as `<label>.identity`.
    pub fn new(dir: &std::path::Path, label: &str) -> anyhow::Result<Self> {
        let (secret, recipient) = certfleet_common::seal::recipients::generate();
        let identity_file = dir.join(format!("{label}.identity"));
        std::fs::write(&identity_file, format!("{}\n", secret.expose()))?;
        Ok(Self {
            identity_file,
            identity: secret.expose().clone(),
            recipient,
        })
    }
}

/// Every test's keys, as the documented deployment has them: workers hold
/// a recipients file (`* <the fleet group>`) and their own AES key; pullers
/// and watchers hold the group's identity. One set per test process.
#[derive(Debug)]
pub struct FleetKeys {
    /// Where the files are.
    pub dir: PathBuf,
    /// The group every name is encrypted to.
    pub group: Group,
    /// `CERTFLEET_RECIPIENTS_FILE`.
    pub recipients_file: PathBuf,
    /// `CERTFLEET_ENCRYPTION_KEY` (base64).
    pub encryption_key: String,
}

/// The process's [`FleetKeys`].
pub fn fleet_keys() -> &'static FleetKeys {
    static KEYS: std::sync::OnceLock<FleetKeys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let made = (|| -> anyhow::Result<FleetKeys> {
            let dir = std::env::temp_dir().join(format!(
                "certfleet-test-keys-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ));
            std::fs::create_dir_all(&dir)?;
            let group = Group::new(&dir, "fleet")?;
            let recipients_file = dir.join("recipients");
            std::fs::write(&recipients_file, format!("* {}\n", group.recipient))?;
            let encryption_key = certfleet_common::seal::new_encryption_key()?
                .expose()
                .clone();
            Ok(FleetKeys {
                dir,
                group,
                recipients_file,
                encryption_key,
            })
        })();
        match made {
            Ok(k) => k,
            Err(e) => panic!("cannot write the test keys: {e:#}"),
        }
    })
}

/// One test's isolated slice of the stack.
#[derive(Clone)]
pub struct TestEnv {
    /// Short unique id.
    pub id: String,
    /// The stack.
    pub stack: Stack,
    /// This test's vhost.
    pub vhost: String,
    /// Loopback address of this test's http-01 responders.
    pub ip: Ipv4Addr,
    /// The environment a process of this test runs with.
    pub vars: HashMap<String, String>,
    /// Management client.
    pub http: Http,
}

impl TestEnv {
    /// Creates the vhost and picks the prefixes and address.
    pub async fn new(name: &str) -> anyhow::Result<Self> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let stack = Stack::from_env();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let short = format!("{:x}{:x}", pid % 0xffff, n);
        let id = format!("{}-{short}", name.replace('_', "-"));
        let ip = Ipv4Addr::new(
            127,
            10 + (pid % 200) as u8,
            (n / 250) as u8,
            (n % 250 + 2) as u8,
        );
        let vhost = format!("cf-{id}");
        let http = Http::new(Some(&stack.ca_certs))?;
        http.create_vhost(stack.rabbitmq_mgmt.as_str(), &vhost)
            .await?;
        let mut vars = HashMap::new();
        let set = |vars: &mut HashMap<String, String>, k: &str, v: String| {
            vars.insert(k.to_string(), v);
        };
        set(
            &mut vars,
            "CERTFLEET_AMQP_URL",
            format!("{}/{vhost}", stack.amqp_base),
        );
        set(&mut vars, "CERTFLEET_REDIS_URL", stack.redis_url.clone());
        set(&mut vars, "CERTFLEET_REDIS_PREFIX", format!("t:{id}:"));
        set(&mut vars, "CERTFLEET_S3_BUCKET", stack.bucket.clone());
        set(
            &mut vars,
            "CERTFLEET_S3_ENDPOINT",
            stack.s3_endpoint.clone(),
        );
        set(&mut vars, "CERTFLEET_S3_REGION", "us-east-1".into());
        set(&mut vars, "CERTFLEET_S3_PATH_STYLE", "true".into());
        set(&mut vars, "CERTFLEET_S3_PREFIX", format!("t/{id}/"));
        set(
            &mut vars,
            "AWS_ACCESS_KEY_ID",
            var("AWS_ACCESS_KEY_ID", "test"),
        );
        set(
            &mut vars,
            "AWS_SECRET_ACCESS_KEY",
            var("AWS_SECRET_ACCESS_KEY", "test"),
        );
        set(
            &mut vars,
            "CERTFLEET_ACME_DIRECTORY",
            stack.acme_directory.clone(),
        );
        set(
            &mut vars,
            "CERTFLEET_ACME_CA_CERTS",
            stack.ca_certs.display().to_string(),
        );
        set(
            &mut vars,
            "CERTFLEET_ACME_EMAIL",
            "test@example.test".into(),
        );
        set(&mut vars, "CERTFLEET_HTTP01_LISTEN", format!("{ip}:5002"));
        set(&mut vars, "CERTFLEET_METRICS_LISTEN", "127.0.0.1:0".into());
        set(&mut vars, "CERTFLEET_SHUTDOWN_GRACE", "10s".into());
        let keys = fleet_keys();
        set(
            &mut vars,
            "CERTFLEET_RECIPIENTS_FILE",
            keys.recipients_file.display().to_string(),
        );
        set(
            &mut vars,
            "CERTFLEET_IDENTITY_FILE",
            keys.group.identity_file.display().to_string(),
        );
        set(
            &mut vars,
            "CERTFLEET_ENCRYPTION_KEY",
            keys.encryption_key.clone(),
        );
        let env = Self {
            id,
            stack,
            vhost,
            ip,
            vars,
            http,
        };
        env.store().await.ensure_bucket().await?;
        Ok(env)
    }

    /// The configuration of this test, with `extra` variables on top.
    pub fn config_with(&self, extra: &[(&str, &str)]) -> anyhow::Result<Config> {
        let mut vars = self.vars.clone();
        for (k, v) in extra {
            vars.insert((*k).to_string(), (*v).to_string());
        }
        Ok(Config::load(&Sources::new(&vars))?)
    }

    /// The configuration of this test.
    pub fn config(&self) -> anyhow::Result<Config> {
        self.config_with(&[])
    }

    /// A worker's settings in this test, with `extra` variables on top.
    pub fn worker_settings(&self, extra: &[(&str, &str)]) -> anyhow::Result<Settings> {
        let mut vars = self.vars.clone();
        for (k, v) in extra {
            vars.insert((*k).to_string(), (*v).to_string());
        }
        Ok(Settings::load(&Sources::new(&vars))?)
    }

    /// A fresh domain of this test, resolving to its responder address.
    pub async fn domain(&self, label: &str) -> anyhow::Result<String> {
        let domain = format!("{label}.{}.certfleet.test", self.id);
        self.point_dns(&domain).await?;
        Ok(domain)
    }

    /// A fresh name of this test in the stack's dns-01 zone
    /// (`<label>.<id>.dns01.test`): dns-01 needs no address for it.
    pub fn dns_domain(&self, label: &str) -> String {
        format!("{label}.{}.dns01.test", self.id)
    }

    /// The worker variables of the `rfc2136` provider on the stack's BIND,
    /// with `extra` on top (later entries win).
    pub fn rfc2136_vars(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = [
            ("CERTFLEET_DNS01_PROVIDER", "rfc2136".to_string()),
            ("CERTFLEET_RFC2136_NAMESERVER", self.stack.bind.clone()),
            ("CERTFLEET_RFC2136_TSIG_KEY", self.stack.tsig_key.clone()),
            (
                "CERTFLEET_RFC2136_TSIG_SECRET_FILE",
                self.stack.tsig_secret_file.display().to_string(),
            ),
            ("CERTFLEET_DNS01_RESOLVERS", self.stack.bind.clone()),
            ("CERTFLEET_DNS01_PROPAGATION_TIMEOUT", "30s".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        vars.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string())),
        );
        vars
    }

    /// The TXT values at `fqdn` on the stack's BIND (asked directly).
    pub async fn dig_txt(&self, fqdn: &str) -> anyhow::Result<Vec<String>> {
        let (host, port) = self
            .stack
            .bind
            .rsplit_once(':')
            .ok_or_else(|| anyhow!("bad BIND address {}", self.stack.bind))?;
        let out = tokio::process::Command::new("dig")
            .args([
                "+short",
                "+norec",
                "-p",
                port,
                &format!("@{host}"),
                fqdn,
                "TXT",
            ])
            .output()
            .await
            .context("dig")?;
        anyhow::ensure!(out.status.success(), "dig {fqdn} failed");
        let mut values: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.trim().starts_with('"'))
            .map(|l| l.trim().trim_matches('"').to_string())
            .collect();
        values.sort();
        Ok(values)
    }

    /// Makes `domain` resolve to this test's responder address.
    pub async fn point_dns(&self, domain: &str) -> anyhow::Result<()> {
        let body = serde_json::json!({"host": domain, "addresses": [self.ip.to_string()]});
        let (status, text) = self
            .http
            .send(
                ::http::Method::POST,
                &format!("{}/add-a", self.stack.challtestsrv),
                Some(body.to_string()),
            )
            .await
            .context("pebble-challtestsrv add-a")?;
        if status >= 300 {
            bail!("add-a {domain}: {status} {text}");
        }
        Ok(())
    }

    /// The store of this test.
    pub async fn store(&self) -> Store {
        match self.config() {
            Ok(cfg) => Store::from_config(&cfg).await,
            Err(e) => panic!("test configuration is invalid: {e}"),
        }
    }

    /// Redis state of this test.
    pub fn state(&self) -> anyhow::Result<State> {
        Ok(State::from_config(&self.config()?, 4)?)
    }

    /// Starts a worker in-process with owned extra variables.
    pub async fn start_worker_with(
        &self,
        extra: &[(String, String)],
    ) -> anyhow::Result<WorkerHandle> {
        let extra: Vec<(&str, &str)> = extra
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.start_worker(&extra).await
    }

    /// Starts a worker in-process.
    pub async fn start_worker(&self, extra: &[(&str, &str)]) -> anyhow::Result<WorkerHandle> {
        let cfg = self.worker_settings(extra)?;
        let shutdown = CancellationToken::new();
        let running = certfleet_worker::start(
            cfg,
            certfleet_worker::metrics::Registry::new(),
            shutdown.clone(),
        )
        .await?;
        if !running.ready(Duration::from_secs(20)).await {
            bail!("the worker did not connect to the broker within 20 s");
        }
        Ok(WorkerHandle {
            metrics_addr: running.metrics_addr,
            running: Some(running),
            shutdown,
        })
    }

    /// A broker connection to this test's vhost.
    pub async fn connect(&self) -> anyhow::Result<lapin::Connection> {
        let cfg = self.config()?;
        Ok(amqp::connect(&cfg.amqp_url, "certfleet-test").await?)
    }

    /// Subscribes to events matching `pattern` (exclusive queue).
    pub async fn events(&self, pattern: &str) -> anyhow::Result<Events> {
        let conn = self.connect().await?;
        let ch = conn.create_channel().await?;
        let consumer = topology::subscribe_events(&ch, &[pattern.to_string()]).await?;
        Ok(Events {
            _conn: conn,
            consumer,
        })
    }

    /// Submits a job envelope the way `certfleet issue` does (the one
    /// [`Submitter`]: confirmed, mandatory), without a status record.
    pub async fn publish_job(&self, envelope: &Envelope) -> anyhow::Result<()> {
        let conn = self.connect().await?;
        let result = async {
            let submitter = Submitter::open(&conn, None).await?;
            let mut outcomes = submitter
                .submit(&[Submission::new(envelope)], Dedup::Off, "queued (test)")
                .await?;
            match outcomes.pop() {
                Some(Outcome::Queued) => Ok(()),
                Some(Outcome::NotAccepted(e)) => Err(e.into()),
                other => Err(anyhow!("job not queued: {other:?}")),
            }
        }
        .await;
        amqp::close(&conn, 200, "done").await;
        result
    }

    /// Publishes raw bytes to the jobs exchange.
    pub async fn publish_raw(&self, routing_key: &str, body: &[u8]) -> anyhow::Result<()> {
        let conn = self.connect().await?;
        let publisher = amqp::Publisher::new(&conn).await?;
        topology::declare_jobs(publisher.channel()).await?;
        publisher
            .publish(amqp::Outgoing::job(routing_key, body, None))
            .await?;
        amqp::close(&conn, 200, "done").await;
        Ok(())
    }

    /// Waits until a worker process of this test consumes: its work queue
    /// exists (a worker binary declares it once connected).
    ///
    /// # Errors
    /// The queue did not appear within 20 s.
    pub async fn wait_for_work_queue(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.queue_len(topology::WORK_QUEUE).await.is_err() {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "no worker declared {} within 20 s",
                topology::WORK_QUEUE
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Message count of a queue in this vhost (management API).
    pub async fn queue_len(&self, queue: &str) -> anyhow::Result<u64> {
        // A passive declare is exact (the management API's counts lag by
        // up to a few seconds).
        let conn = self.connect().await?;
        let ch = conn.create_channel().await?;
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        amqp::close(&conn, 200, "done").await;
        Ok(u64::from(q.message_count()))
    }

    /// The message count of `queue` once it equals `want`, or the last
    /// count read after 5 s. A quorum queue's count (declare-ok) can trail
    /// a confirmed publish, an ack or a delete by a moment.
    pub async fn queue_len_settled(&self, queue: &str, want: u64) -> anyhow::Result<u64> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let n = self.queue_len(queue).await?;
            if n == want || tokio::time::Instant::now() >= deadline {
                return Ok(n);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Pebble's issuing root (PEM), from its management API.
    pub async fn pebble_root(&self) -> anyhow::Result<String> {
        let (status, body) = self
            .http
            .send(
                ::http::Method::GET,
                &format!("{}/roots/0", self.stack.pebble_mgmt),
                None,
            )
            .await?;
        if status != 200 {
            bail!("pebble /roots/0: {status}");
        }
        Ok(body)
    }

    /// The path of a binary of the workspace (built by `cargo build --bins`).
    pub fn bin(&self, name: &str) -> anyhow::Result<PathBuf> {
        let exe = std::env::current_exe()?;
        let dir = exe
            .parent()
            .and_then(|p| p.parent())
            .ok_or_else(|| anyhow!("no target dir"))?;
        let path = dir.join(name);
        if !path.exists() {
            bail!(
                "{} is missing: run `cargo build --bins` first",
                path.display()
            );
        }
        Ok(path)
    }

    /// Runs `certfleet ARGS...` with this test's environment and returns
    /// its standard output; any exit other than 0 is an error carrying the
    /// exit code and standard error.
    pub async fn certfleet(&self, args: &[&str]) -> anyhow::Result<String> {
        run_ok(self.command("certfleet")?.args(args)).await
    }

    /// A command for a workspace binary with this test's environment.
    pub fn command(&self, name: &str) -> anyhow::Result<tokio::process::Command> {
        let mut cmd = tokio::process::Command::new(self.bin(name)?);
        cmd.env_clear()
            .envs(&self.vars)
            .env("PATH", var("PATH", "/usr/bin:/bin"))
            .env("CERTFLEET_LOG", var("CERTFLEET_TEST_CHILD_LOG", "warn"))
            .kill_on_drop(true);
        Ok(cmd)
    }

    /// Deletes the vhost.
    pub async fn cleanup(self) {
        let _ = self
            .http
            .delete_vhost(self.stack.rabbitmq_mgmt.as_str(), &self.vhost)
            .await;
    }
}

/// An in-process worker.
pub struct WorkerHandle {
    /// Where its metrics are served.
    pub metrics_addr: std::net::SocketAddr,
    running: Option<certfleet_worker::Running>,
    shutdown: CancellationToken,
}

impl WorkerHandle {
    /// Signals shutdown and waits for the drain.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(r) = self.running.take() {
            r.wait().await;
        }
    }

    /// Its shutdown token.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A stream of events.
pub struct Events {
    _conn: lapin::Connection,
    consumer: lapin::Consumer,
}

impl Events {
    /// The next event, or an error after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> anyhow::Result<Event> {
        Ok(Event::from_json(&self.next_raw(timeout).await?)?)
    }

    /// The next event's body as published.
    pub async fn next_raw(&mut self, timeout: Duration) -> anyhow::Result<Vec<u8>> {
        let d = tokio::time::timeout(timeout, self.consumer.next())
            .await
            .context("no event in time")?
            .ok_or_else(|| anyhow!("event consumer ended"))??;
        Ok(d.data)
    }

    /// Collects events until `n` arrived or `timeout` passed.
    pub async fn collect(&mut self, n: usize, timeout: Duration) -> Vec<Event> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Ok(e) => out.push(e),
                Err(_) => break,
            }
        }
        out
    }

    /// Collects events until `n` distinct names have one of `kinds`, or
    /// `timeout` passed. Events are delivered at least once (an outbox a
    /// second worker recovers publishes again), so counting events is not
    /// counting names. Returns the names and every event seen.
    pub async fn distinct_names(
        &mut self,
        kinds: &[certfleet_common::event::EventKind],
        n: usize,
        timeout: Duration,
    ) -> (std::collections::BTreeSet<String>, Vec<Event>) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut names = std::collections::BTreeSet::new();
        let mut all = Vec::new();
        while names.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Ok(e) => {
                    if kinds.contains(&e.kind) {
                        names.insert(e.name.to_string());
                    }
                    all.push(e);
                }
                Err(_) => break,
            }
        }
        (names, all)
    }

    /// Whether another event arrives within `wait`.
    pub async fn quiet_for(&mut self, wait: Duration) -> Option<Event> {
        self.next(wait).await.ok()
    }
}

/// Initializes test logging once (`RUST_LOG` or warnings).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Runs `cmd` and returns its standard output; any exit other than 0, or
/// no exit within 4 minutes (a hung command fails its test instead of
/// hanging the suite), is an error carrying the exit code and standard
/// error.
pub async fn run_ok(cmd: &mut tokio::process::Command) -> anyhow::Result<String> {
    let program = cmd.as_std().get_program().to_owned();
    let out = tokio::time::timeout(Duration::from_secs(240), cmd.kill_on_drop(true).output())
        .await
        .map_err(|_| anyhow!("{program:?} did not finish within 240 s"))??;
    if !out.status.success() {
        bail!(
            "{program:?} exited with {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
