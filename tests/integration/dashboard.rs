//! Issue 16: the live dashboard, in a real browser (Debian's headless
//! chromium driven by playwright-core, `tests/browser/`).

use std::process::Stdio;
use std::time::Duration;

use certfleet_common::CertName;
use certfleet_tests::{TestEnv, init_logging, repo_root, run_ok};
use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::agent_checks::spawn_watch;

/// A plain HTTP GET's status code (the dashboard is on loopback).
async fn status_of(url: &str) -> anyhow::Result<u16> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let u = url::Url::parse(url)?;
    let mut s = tokio::net::TcpStream::connect((
        u.host_str().unwrap_or("127.0.0.1"),
        u.port().unwrap_or(80),
    ))
    .await?;
    let target = match u.query() {
        Some(q) => format!("{}?{q}", u.path()),
        None => u.path().to_string(),
    };
    s.write_all(format!("GET {target} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let head = String::from_utf8_lossy(&buf);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status line: {head}"))
}

/// The dashboard opened with a one-time token shows a certificate issued
/// while it is open, without reloading, and its rollout (a watcher
/// reported it loaded); a screenshot is taken. Once the token's lifetime
/// is over, the same URL and the page's session both get 401.
#[tokio::test]
async fn dashboard_shows_new_certificates_live_and_tokens_expire() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("dashboard").await?;
    let setup = run_ok(&mut tokio::process::Command::new(
        repo_root().join("tests/browser/setup.sh"),
    ))
    .await?;
    let browser_dir = setup.trim().to_string();
    let worker = env.start_worker(&[]).await?;
    let work = tempfile::tempdir()?;
    let watch = spawn_watch(
        &env,
        work.path(),
        &work.path().join("certs"),
        &format!("dash-{}", env.id),
        "true",
        &[],
        &[],
    )?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let base = format!("http://127.0.0.1:{port}");
    let mut dashboard = env
        .command("certfleet")?
        .args(["dashboard", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while status_of(&format!("{base}/healthz")).await.ok() != Some(200) {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "dashboard not up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status_of(&format!("{base}/")).await?, 401, "no token");
    assert_eq!(
        status_of(&format!("{base}/api/state?session=nope")).await?,
        401
    );
    let ttl = Duration::from_secs(25);
    let url = env
        .certfleet(&["dashboard", "token", "--ttl", "25s", "--url", &base])
        .await?
        .trim()
        .to_string();
    let minted = tokio::time::Instant::now();

    let domain = env.domain("live").await?;
    let name = CertName::from_domain(&domain)?;
    let shot = work.path().join("dashboard.png");
    let mut node = tokio::process::Command::new("node")
        .arg(repo_root().join("tests/browser/dashboard.mjs"))
        .args([url.as_str(), name.as_str()])
        .arg(&shot)
        .env("BROWSER_DIR", &browser_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = node
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    let drive = async {
        while let Some(line) = lines.next_line().await? {
            seen.push(line.clone());
            if line == "ready" {
                // Issued while the page is open.
                env.certfleet(&["issue", &domain, "--wait", "--timeout", "60s"])
                    .await?;
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(120), drive)
        .await
        .map_err(|_| anyhow::anyhow!("the browser did not finish: {seen:?}"))??;
    let out = node.wait_with_output().await?;
    assert!(
        out.status.success() && seen.iter().any(|l| l == "done"),
        "browser: {seen:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::metadata(&shot)?.len();
    assert!(png > 10_000, "screenshot of {png} bytes");
    println!("dashboard screenshot: {} ({png} bytes)", shot.display());
    if let Ok(to) = std::env::var("CERTFLEET_TEST_DASHBOARD_SCREENSHOT") {
        std::fs::copy(&shot, to)?;
    }

    // The token's lifetime over: the URL, and the session it opened, 401.
    assert_eq!(status_of(&url).await?, 401, "a used token");
    tokio::time::sleep_until(minted + ttl + Duration::from_secs(1)).await;
    assert_eq!(status_of(&url).await?, 401, "an expired token");
    let fresh = env
        .certfleet(&["dashboard", "token", "--ttl", "1s", "--url", &base])
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        status_of(fresh.trim()).await?,
        401,
        "an expired, unused token"
    );
    let _ = dashboard.start_kill();
    let _ = dashboard.wait().await;
    watch.stop().await?;
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}
