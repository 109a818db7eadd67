//! `certfleet dashboard` with a fleet of [`CERTIFICATES`] certificates: how
//! long its first view takes in a browser (Debian's headless chromium,
//! driven by playwright-core: `tests/browser/first-view.mjs`).
//!
//! The slice's Redis holds the certificates (expiry index and validity
//! records) and two servers' reports on each; a release `certfleet
//! dashboard` serves them. Each run opens a fresh one-time URL in a page
//! of an already running browser and times navigation start → every
//! certificate's row in the table (the page's state fetched and rendered);
//! median of [`RUNS`] after one untimed run.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use certfleet_common::report::{HookState, REPORT_SCHEMA, Report, ReportKind};
use certfleet_common::state::State;
use certfleet_common::{CertName, ChallengeType};
use time::OffsetDateTime;

use crate::results::DashboardView;
use crate::stack::{Slice, Stack};
use crate::stats;

/// Certificates shown.
pub const CERTIFICATES: usize = 1000;
/// Timed runs.
pub const RUNS: usize = 5;

/// Runs it in a slice labelled `label`, with the release `certfleet` in
/// `bin_dir` and the repository's browser scripts under `repo`.
///
/// # Errors
/// Redis unavailable, the dashboard or the browser failing.
pub async fn run(
    stack: &Stack,
    label: &str,
    certificates: usize,
    bin_dir: &Path,
    repo: &Path,
) -> anyhow::Result<DashboardView> {
    let slice = Slice::create(stack, label, None).await?;
    let result = run_in(&slice, certificates, bin_dir, repo).await;
    slice.cleanup().await;
    result
}

async fn run_in(
    slice: &Slice,
    certificates: usize,
    bin_dir: &Path,
    repo: &Path,
) -> anyhow::Result<DashboardView> {
    let cfg = slice.config()?;
    let state = State::from_config(&cfg, 8)?;
    let now = OffsetDateTime::now_utc();
    let names: Vec<CertName> = (0..certificates)
        .map(|i| CertName::parse(&format!("d{i:05}.dash.{}", crate::names::SUFFIX)))
        .collect::<Result<_, _>>()?;
    let entries: Vec<(CertName, i64, ChallengeType)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let at = now.unix_timestamp() + 86_400 * (1 + i as i64 % 60);
            (n.clone(), at, ChallengeType::Http01)
        })
        .collect();
    state.index_replace(&entries).await?;
    let validity: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let nb = now - time::Duration::days(30 + i as i64 % 30);
            (n.clone(), nb, nb + time::Duration::days(90))
        })
        .collect();
    state.validity_put_many(&validity, true).await?;
    for server in ["web-1", "web-2"] {
        for (n, nb, _) in &validity {
            let version = format!(
                "{}-01",
                nb.format(time::macros::format_description!(
                    "[year][month][day]T[hour][minute][second]Z"
                ))?
            );
            state
                .record_report(&Report {
                    schema: REPORT_SCHEMA.into(),
                    kind: ReportKind::Loaded,
                    server: server.into(),
                    name: n.clone(),
                    version,
                    serial: "01".into(),
                    hook: HookState::none(),
                    at: now,
                })
                .await?;
        }
    }

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let certfleet = bin_dir.join("certfleet");
    let mut dashboard = tokio::process::Command::new(&certfleet)
        .args(["dashboard", "--listen", &format!("127.0.0.1:{port}")])
        .envs(slice.vars())
        .env("CERTFLEET_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", certfleet.display()))?;
    let result = async {
        let setup = tokio::process::Command::new(repo.join("tests/browser/setup.sh"))
            .output()
            .await?;
        anyhow::ensure!(
            setup.status.success(),
            "tests/browser/setup.sh: {}",
            String::from_utf8_lossy(&setup.stderr)
        );
        let browser_dir = String::from_utf8_lossy(&setup.stdout).trim().to_string();
        let mut urls = Vec::new();
        for _ in 0..=RUNS {
            let out = tokio::process::Command::new(&certfleet)
                .args(["dashboard", "token", "--ttl", "10m", "--url", &base])
                .envs(slice.vars())
                .output()
                .await?;
            anyhow::ensure!(out.status.success(), "dashboard token failed");
            urls.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let out = tokio::process::Command::new("node")
            .arg(repo.join("tests/browser/first-view.mjs"))
            .arg(certificates.to_string())
            .args(&urls)
            .env("BROWSER_DIR", browser_dir)
            .output()
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "first-view.mjs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ms: Vec<f64> = serde_json::from_slice(&out.stdout)?;
        // The first run warms the browser and the server up.
        let runs_ms: Vec<f64> = ms.into_iter().skip(1).collect();
        Ok(DashboardView {
            certificates,
            servers: 2,
            median_ms: stats::median(&runs_ms),
            runs_ms,
        })
    }
    .await;
    let _ = dashboard.start_kill();
    let _ = dashboard.wait().await;
    result
}
