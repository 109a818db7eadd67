//! Issue 5: never lose a job, never issue twice — under faults.

use std::collections::HashSet;
use std::time::Duration;

use certfleet_common::CertName;
use certfleet_tests::{TestEnv, init_logging};
use tokio::time::Instant;

use crate::issue::issue_job;

/// Counts stored versions per name; panics on a missing one.
pub(crate) async fn versions_per_name(
    env: &TestEnv,
    names: &[CertName],
) -> anyhow::Result<Vec<usize>> {
    let store = env.store().await;
    let mut out = Vec::new();
    for n in names {
        out.push(store.list(&store.keys().versions(n)).await?.len());
    }
    Ok(out)
}

/// Shutdown during orders: the worker stops within its grace period, and
/// the jobs it had not finished are done by the next worker — none lost,
/// none twice.
#[tokio::test]
async fn shutdown_mid_run_loses_nothing_duplicates_nothing() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("fault-shutdown").await?;
    let grace = Duration::from_secs(3);
    let first = env
        .start_worker(&[
            ("CERTFLEET_CONCURRENCY", "40"),
            ("CERTFLEET_SHUTDOWN_GRACE", "3s"),
        ])
        .await?;
    let mut events = env.events("cert.#").await?;
    let mut names = Vec::new();
    for i in 0..40 {
        let job = issue_job(&[env.domain(&format!("s{i}")).await?])?;
        names.push(job.job.name.clone());
        env.publish_job(&job).await?;
    }
    // Stop as soon as the first certificate is out: the rest are in flight.
    let first_event = events.next(Duration::from_secs(60)).await?;
    let stopping = Instant::now();
    first.stop().await;
    let took = stopping.elapsed();
    assert!(
        took < grace + Duration::from_secs(7),
        "shutdown took {took:?}"
    );
    let second = env.start_worker(&[("CERTFLEET_CONCURRENCY", "40")]).await?;
    let mut seen: HashSet<String> = HashSet::from([first_event.name.to_string()]);
    for e in events.collect(39, Duration::from_secs(120)).await {
        seen.insert(e.name.to_string());
    }
    assert_eq!(seen.len(), 40, "every job ends in a certificate");
    let versions = versions_per_name(&env, &names).await?;
    assert!(
        versions.iter().all(|v| *v == 1),
        "one version each: {versions:?}"
    );
    println!("shutdown: stopped in {took:?}; 40 jobs, 40 certificates, versions {versions:?}");
    second.stop().await;
    env.cleanup().await;
    Ok(())
}

/// The worker binary exits 0 on SIGTERM, within its grace period.
#[tokio::test]
async fn sigterm_exits_zero_within_grace() -> anyhow::Result<()> {
    let env = TestEnv::new("fault-sigterm").await?;
    let mut child = env
        .command("certfleet-worker")?
        .env("CERTFLEET_SHUTDOWN_GRACE", "2s")
        .env("CERTFLEET_HTTP01_LISTEN", "127.0.0.1:0")
        .spawn()?;
    let pid = child.id().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    // Wait until it consumes: its queue exists.
    let deadline = Instant::now() + Duration::from_secs(20);
    while env
        .queue_len(certfleet_common::topology::WORK_QUEUE)
        .await
        .is_err()
    {
        anyhow::ensure!(Instant::now() < deadline, "worker never declared its queue");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait()).await??;
    assert_eq!(exit.code(), Some(0), "exit status {exit:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    env.cleanup().await;
    Ok(())
}
