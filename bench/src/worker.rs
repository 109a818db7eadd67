//! A release `certfleet-worker` process, as an operator runs it: default
//! logging (info, text) to a file, configuration from `CERTFLEET_*`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::prom::Scrape;
use certfleet_tests::http::Http;

/// How long a stopping worker may drain before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A free TCP port on 127.0.0.1 (bound and released; the worker binds it
/// right after).
///
/// # Errors
/// No port could be bound.
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The release binaries' directory (`target/release` next to the bench).
pub fn default_bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|p| p.join("target/release"))
        .unwrap_or_else(|| PathBuf::from("target/release"))
}

/// The release `certfleet-worker` (the default of `--worker-bin`).
pub fn default_worker_bin() -> PathBuf {
    default_bin_dir().join("certfleet-worker")
}

/// A running worker process.
pub struct WorkerProcess {
    child: Child,
    pid: u32,
    metrics: SocketAddr,
    http: Http,
}

impl WorkerProcess {
    /// Starts `bin` with `vars` (and nothing else from the environment but
    /// `PATH`), `concurrency` orders in flight, metrics on a free port, its
    /// log in `log`.
    ///
    /// # Errors
    /// The binary cannot be started.
    pub fn spawn(
        bin: &Path,
        vars: &HashMap<String, String>,
        concurrency: u32,
        log: &Path,
    ) -> anyhow::Result<Self> {
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = Command::new(bin)
            .env_clear()
            .envs(vars)
            .env(
                "PATH",
                std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
            )
            .env("CERTFLEET_CONCURRENCY", concurrency.to_string())
            .env("CERTFLEET_METRICS_LISTEN", metrics.to_string())
            .env("CERTFLEET_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow::anyhow!("the worker exited at once"))?;
        Ok(Self {
            child,
            pid,
            metrics,
            http: Http::new(None)?,
        })
    }

    /// Waits until `/readyz` answers 200 (consuming, Redis answers).
    ///
    /// # Errors
    /// Not ready within `timeout`, or the process exited.
    pub async fn ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let url = format!("http://{}/readyz", self.metrics);
        loop {
            if let Ok((200, _)) = self.http.send(http::Method::GET, &url, None).await {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("the worker exited during startup ({status})");
            }
            if Instant::now() >= deadline {
                bail!("the worker was not ready within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `http://<metrics address>`.
    pub fn metrics_url(&self) -> String {
        format!("http://{}", self.metrics)
    }

    /// Scrapes `/metrics`.
    ///
    /// # Errors
    /// The worker does not answer.
    pub async fn metrics(&self) -> anyhow::Result<Scrape> {
        Ok(Scrape::parse(&self.metrics_text().await?))
    }

    /// `/metrics` as text.
    ///
    /// # Errors
    /// The worker does not answer.
    pub async fn metrics_text(&self) -> anyhow::Result<String> {
        self.http
            .get_ok(&format!("http://{}/metrics", self.metrics))
            .await
    }

    /// SIGTERM, then waits for the drain (SIGKILL after `STOP_TIMEOUT`, 20 s).
    pub async fn stop(mut self) {
        signal(self.pid, "TERM").await;
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(
                    pid = self.pid,
                    "the worker did not stop in time; killing it"
                );
                let _ = self.child.kill().await;
            }
        }
    }
}

/// Sends a signal with kill(1) (keeps the bench free of `unsafe`).
pub async fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
}
