//! Issue 12: certfleet on clustered services, each fault hitting jobs in
//! flight. Every test starts (and drops) its own cluster processes.

use std::time::Duration;

use certfleet_common::CertName;
use certfleet_tests::private::{self, PEBBLE_WITH_SLEEP, Private, Service};
use certfleet_tests::{TestEnv, init_logging};
use tokio::time::Instant;

use crate::faults::{stored_count, versions_per_name};
use crate::issue::publish_issues;

/// Waits until at least `n` of `names` are stored.
async fn wait_stored(
    env: &TestEnv,
    names: &[CertName],
    n: usize,
    within: Duration,
) -> anyhow::Result<usize> {
    let deadline = Instant::now() + within;
    loop {
        let stored = stored_count(env, names).await?;
        if stored >= n {
            return Ok(stored);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {stored} of {} stored within {within:?} (waiting for {n})",
            names.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One version per name, nothing dead-lettered.
async fn assert_once_each(env: &TestEnv, names: &[CertName]) -> anyhow::Result<Vec<usize>> {
    let versions = versions_per_name(env, names).await?;
    assert!(
        versions.iter().all(|v| *v == 1),
        "one version per name: {versions:?}"
    );
    assert_eq!(
        env.queue_len_settled(certfleet_common::topology::DEAD_QUEUE, 0)
            .await?,
        0,
        "no job dead-lettered"
    );
    Ok(versions)
}

/// The Redis primary is killed mid-run; Sentinel promotes the replica and
/// the worker's pool follows it: every job completes, one version per
/// name, none dead-lettered.
#[tokio::test]
async fn redis_primary_killed_sentinel_promotes_replica() -> anyhow::Result<()> {
    init_logging();
    let base = TestEnv::new("ha-sentinel").await?;
    let sentinel = Private::start(Service::Sentinel, &[]).await?;
    let pebble = Private::start(Service::Pebble, PEBBLE_WITH_SLEEP).await?;
    let env = private::env_for(&base, &[&sentinel, &pebble]).await?;
    let worker = env
        .start_worker(&[
            ("CERTFLEET_CONCURRENCY", "8"),
            ("CERTFLEET_LEASE_TTL", "6s"),
        ])
        .await?;
    let total = 30;
    let names = publish_issues(&env, "s", total).await?;
    wait_stored(&env, &names, 3, Duration::from_secs(60)).await?;
    let before = stored_count(&env, &names).await?;
    let primary = sentinel.member_port("primary");
    assert_eq!(Some(sentinel.primary_port().await?), primary);
    sentinel.kill_member("primary").await?;
    assert!(
        before < total,
        "the failover hit jobs in flight: {before} of {total} stored"
    );
    let killed = Instant::now();
    let replica = sentinel.member_port("replica");
    while Some(sentinel.primary_port().await?) != replica {
        anyhow::ensure!(
            killed.elapsed() < Duration::from_secs(30),
            "sentinel promoted no replica"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let promoted = killed.elapsed();
    wait_stored(&env, &names, total, Duration::from_secs(240)).await?;
    let took = killed.elapsed();
    let versions = assert_once_each(&env, &names).await?;
    println!(
        "sentinel failover: {before} of {total} stored when the primary was killed; replica promoted after {promoted:?}; all {total} stored {took:?} after the kill; versions {versions:?}"
    );
    worker.stop().await;
    base.cleanup().await;
    Ok(())
}
