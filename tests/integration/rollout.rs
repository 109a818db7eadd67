//! Issue 16: which servers loaded it. Watchers report what they switched
//! in and how their hooks went; `certfleet rollout` and `servers` show it.

use std::time::Duration;

use certfleet_common::CertName;
use certfleet_tests::{TestEnv, init_logging};

use crate::agent_checks::spawn_watch;

/// `certfleet rollout NAME --json`, parsed.
async fn rollout(env: &TestEnv, name: &CertName) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(
        &env.certfleet(&["rollout", name.as_str(), "--json"]).await?,
    )?)
}

/// The row of `server` in a rollout.
fn row<'a>(r: &'a serde_json::Value, server: &str) -> Option<&'a serde_json::Value> {
    r["servers"]
        .as_array()?
        .iter()
        .find(|s| s["server"] == server)
}

/// Three watchers on one name, the third's hook failing (exit 7): rollout
/// shows two current with hook ok and the third with the failed hook and
/// its exit code; `rollout --wait` exits 1 naming it; once its hook is
/// fixed and the name renewed, `rollout --wait` exits 0 and `servers`
/// shows nobody behind; a watcher that starts again reports what it holds,
/// `pull --server-id` reports, and `servers forget` removes a server's
/// reports (its queue still makes it known, with no report).
#[tokio::test]
async fn rollout_shows_each_server_and_waits_for_all() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("rollout").await?;
    let worker = env.start_worker(&[]).await?;
    let domain = env.domain("ro").await?;
    let name = CertName::from_domain(&domain)?;
    env.certfleet(&["issue", &domain, "--wait", "--timeout", "90s"])
        .await?;
    let work = tempfile::tempdir()?;
    let fixed = work.path().join("fixed");
    let ids: Vec<String> = (1..=3).map(|i| format!("ro{i}-{}", env.id)).collect();
    let mut watchers = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let hook = if i == 2 {
            format!("test -e {} || exit 7", fixed.display())
        } else {
            "true".to_string()
        };
        let certs = work.path().join(id);
        watchers.push(spawn_watch(&env, work.path(), &certs, id, &hook, &[], &[])?);
    }

    // All three have reported: two loaded, one with its hook failing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let r = loop {
        let r = rollout(&env, &name).await?;
        let failing = row(&r, &ids[2]).is_some_and(|s| s["hook"] == "failed");
        let ok = ids[..2]
            .iter()
            .all(|id| row(&r, id).is_some_and(|s| s["current"] == true));
        if failing && ok {
            break r;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "reports never arrived: {r}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    println!("rollout: {r}");
    assert_eq!(r["total"], 3, "{r}");
    assert_eq!(r["current"], 2, "{r}");
    for id in &ids[..2] {
        let s = row(&r, id).ok_or_else(|| anyhow::anyhow!("{id} missing"))?;
        assert_eq!(s["hook"], "ok", "{s}");
        assert_eq!(s["serial"], r["serial"], "{s}");
    }
    let bad = row(&r, &ids[2]).ok_or_else(|| anyhow::anyhow!("{} missing", ids[2]))?;
    assert_eq!(bad["hook_exit_code"], 7, "{bad}");
    assert_eq!(bad["current"], false, "{bad}");
    assert_eq!(
        bad["behind"], false,
        "its files are the current version: {bad}"
    );

    // --wait gives up naming the laggard.
    let out = env
        .command("certfleet")?
        .args(["rollout", name.as_str(), "--wait", "--timeout", "3s"])
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(ids[2].as_str()) && stderr.contains("exit 7"),
        "{stderr}"
    );
    assert!(!stderr.contains(ids[0].as_str()), "{stderr}");

    // Fixed and renewed: every server serves the new version.
    std::fs::write(&fixed, b"")?;
    env.certfleet(&["renew", name.as_str(), "--wait", "--timeout", "90s"])
        .await?;
    let waited = env
        .command("certfleet")?
        .args(["rollout", name.as_str(), "--wait", "--timeout", "60s"])
        .output()
        .await?;
    assert_eq!(
        waited.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&waited.stdout),
        String::from_utf8_lossy(&waited.stderr)
    );
    let after = rollout(&env, &name).await?;
    assert_eq!(after["current"], 3, "{after}");
    assert_ne!(after["serial"], r["serial"], "renewed: {after}");
    let servers: serde_json::Value =
        serde_json::from_str(&env.certfleet(&["servers", "--json"]).await?)?;
    for id in &ids {
        let s = servers
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["id"] == id.as_str())
            .ok_or_else(|| anyhow::anyhow!("{id} not in {servers}"))?;
        assert_eq!(s["behind"], serde_json::json!([]), "{s}");
    }
    // A watcher that starts again reports what it holds; `pull
    // --server-id` reports too.
    let mut watchers = watchers.into_iter();
    if let Some(first) = watchers.next() {
        first.stop().await?;
    }
    let restarted = spawn_watch(
        &env,
        work.path(),
        &work.path().join(&ids[0]),
        &ids[0],
        "true",
        &[],
        &[],
    )?;
    let pulled = work.path().join("pulled");
    env.command("certfleet")?
        .args(["pull", "--server-id", "puller-1", "--dir"])
        .arg(&pulled)
        .arg(name.as_str())
        .status()
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = rollout(&env, &name).await?;
        let holds =
            row(&r, &ids[0]).is_some_and(|s| s["report"] == "holds" && s["current"] == true);
        let puller =
            row(&r, "puller-1").is_some_and(|s| s["current"] == true && s["hook"] == "none");
        if holds && puller {
            assert_eq!(r["total"], 4, "{r}");
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no holds report from {} or none from puller-1: {r}",
            ids[0]
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Forgotten (once stopped): gone from the rollout.
    restarted.stop().await?;
    env.certfleet(&["servers", "forget", &ids[0]]).await?;
    let forgotten = rollout(&env, &name).await?;
    assert_eq!(forgotten["total"], 3, "{forgotten}");
    // Still known from its queue, with no report.
    let servers: serde_json::Value =
        serde_json::from_str(&env.certfleet(&["servers", "--json"]).await?)?;
    let by_queue = servers
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["id"] == ids[0].as_str())
        .ok_or_else(|| anyhow::anyhow!("{} (its queue remains) not in {servers}", ids[0]))?;
    assert!(by_queue["last_report"].is_null(), "{by_queue}");
    assert_eq!(by_queue["names"], 0, "{by_queue}");
    for w in watchers {
        w.stop().await?;
    }
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}
