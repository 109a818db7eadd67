//! Issue 12: certfleet on clustered services, each fault hitting jobs in
//! flight. Every test starts (and drops) its own cluster processes.

use std::time::Duration;

use certfleet_common::CertName;
use certfleet_tests::private::{self, PEBBLE_WITH_SLEEP, Private, Service};
use certfleet_tests::{TestEnv, init_logging};
use certfleet_worker::objects::ObjectWrites as _;
use tokio::time::Instant;

use crate::faults::{assert_once_each, stored_count, wait_stored};
use crate::issue::publish_issues;

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

/// A management API of `cluster` that answers, trying node 1 to 3.
async fn cluster_get(
    env: &TestEnv,
    cluster: &Private,
    path: &str,
) -> anyhow::Result<serde_json::Value> {
    let mut last = None;
    for i in 1..=3 {
        let Some(base) = cluster.node_mgmt_url(i) else {
            continue;
        };
        match env.http.get_ok(&format!("{base}{path}")).await {
            Ok(body) => return Ok(serde_json::from_str(&body)?),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no node answered {path}")))
}

/// Which node (1…3) holds the worker's connection in `env`'s vhost.
async fn worker_node(env: &TestEnv, cluster: &Private) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let conns = cluster_get(env, cluster, "/api/connections").await?;
        let node = conns.as_array().into_iter().flatten().find_map(|c| {
            let name = c["client_properties"]["connection_name"].as_str()?;
            (c["vhost"] == env.vhost.as_str() && name.starts_with("certfleet-worker"))
                .then(|| c["node"].as_str().map(str::to_string))?
        });
        if let Some(node) = node {
            return node_index(cluster, &node);
        }
        anyhow::ensure!(Instant::now() < deadline, "no worker connection listed");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Which node (1…3) leads the work queue.
async fn queue_leader(env: &TestEnv, cluster: &Private) -> anyhow::Result<usize> {
    let q = cluster_get(
        env,
        cluster,
        &format!(
            "/api/queues/{}/{}",
            env.vhost,
            certfleet_common::topology::WORK_QUEUE
        ),
    )
    .await?;
    let members = q["members"].as_array().map_or(0, Vec::len);
    assert_eq!(
        members, 3,
        "the work queue is replicated on all three nodes: {q}"
    );
    let leader = q["leader"]
        .as_str()
        .or_else(|| q["node"].as_str())
        .ok_or_else(|| anyhow::anyhow!("no leader in {q}"))?;
    node_index(cluster, leader)
}

fn node_index(cluster: &Private, node: &str) -> anyhow::Result<usize> {
    (1..=3)
        .find(|i| cluster.node_name(*i) == node)
        .ok_or_else(|| anyhow::anyhow!("{node} is not a node of the cluster"))
}

/// A three-node RabbitMQ cluster loses, in turn, the node the worker is
/// connected to and the node leading the work queue, with jobs in flight
/// each time: the worker moves to another node, `certfleet issue` succeeds
/// against the surviving nodes, every job is stored once, none is
/// dead-lettered.
#[tokio::test]
async fn rabbitmq_cluster_nodes_killed() -> anyhow::Result<()> {
    init_logging();
    let base = TestEnv::new("ha-rabbit").await?;
    let cluster = Private::start(Service::RabbitCluster, &[]).await?;
    let pebble = Private::start(Service::Pebble, PEBBLE_WITH_SLEEP).await?;
    let env = private::env_for(&base, &[&cluster, &pebble]).await?;
    let worker = env.start_worker(&[("CERTFLEET_CONCURRENCY", "8")]).await?;
    let total = 30;
    let mut names = publish_issues(&env, "c", total).await?;
    let leader = queue_leader(&env, &cluster).await?;

    // 1. The worker's own node.
    wait_stored(&env, &names, 3, Duration::from_secs(60)).await?;
    let connected = worker_node(&env, &cluster).await?;
    let before_first = stored_count(&env, &names).await?;
    cluster.kill_member(&format!("node{connected}")).await?;
    assert!(
        before_first < total,
        "the first kill hit jobs in flight: {before_first} of {total} stored"
    );
    // The CLI during the outage: accepted by a surviving node.
    let domain = env.domain("c-during").await?;
    env.certfleet(&["issue", &domain]).await?;
    names.push(CertName::from_domain(&domain)?);
    let moved_to = worker_node(&env, &cluster).await?;
    assert_ne!(moved_to, connected, "the worker moved to another node");
    wait_stored(&env, &names, before_first + 3, Duration::from_secs(120)).await?;
    cluster.start_again().await?;

    // 2. The work queue's leader, with a fresh batch in flight (the first
    // may be done by the time the node is back).
    let second = publish_issues(&env, "d", total).await?;
    wait_stored(&env, &second, 2, Duration::from_secs(60)).await?;
    let leader_now = queue_leader(&env, &cluster).await?;
    let before_second = stored_count(&env, &second).await?;
    cluster.kill_member(&format!("node{leader_now}")).await?;
    assert!(
        before_second < second.len(),
        "the second kill hit jobs in flight: {before_second} of {} stored",
        second.len()
    );
    names.extend(second);
    wait_stored(&env, &names, names.len(), Duration::from_secs(240)).await?;
    cluster.start_again().await?;
    let versions = assert_once_each(&env, &names).await?;
    println!(
        "rabbitmq cluster: leader at start node{leader}; killed node{connected} (the worker's) with {before_first} of {total} stored, worker moved to node{moved_to}, `certfleet issue` accepted during the outage; killed node{leader_now} (work queue leader) with {before_second} of a second batch of {total} stored; all {} stored, versions {versions:?}",
        names.len()
    );
    worker.stop().await;
    base.cleanup().await;
    Ok(())
}

/// The S3 server (SeaweedFS) is killed (-9) mid-run and started again on
/// its data: every job completes, one version per name, none
/// dead-lettered, and what was stored before the kill is still there.
#[tokio::test]
async fn s3_server_killed_and_restarted_mid_run() -> anyhow::Result<()> {
    init_logging();
    let base = TestEnv::new("ha-s3").await?;
    let s3 = Private::start(Service::S3, &[]).await?;
    let pebble = Private::start(Service::Pebble, PEBBLE_WITH_SLEEP).await?;
    let env = private::env_for(&base, &[&s3, &pebble]).await?;
    env.store().await.ensure_bucket().await?;
    let worker = env.start_worker(&[("CERTFLEET_CONCURRENCY", "8")]).await?;
    let total = 30;
    let names = publish_issues(&env, "w", total).await?;
    wait_stored(&env, &names, 3, Duration::from_secs(60)).await?;
    let before = stored_count(&env, &names).await?;
    s3.kill().await?;
    assert!(
        before < total,
        "the kill hit jobs in flight: {before} of {total} stored"
    );
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    s3.start_again().await?;
    let back = killed.elapsed();
    let after_restart = stored_count(&env, &names).await?;
    assert!(
        after_restart >= before,
        "nothing stored before the kill is gone: {after_restart} < {before}"
    );
    wait_stored(&env, &names, total, Duration::from_secs(240)).await?;
    let versions = assert_once_each(&env, &names).await?;
    println!(
        "s3 kill -9: {before} of {total} stored at the kill, {after_restart} readable after the restart ({back:?} down); all {total} stored, versions {versions:?}"
    );
    worker.stop().await;
    base.cleanup().await;
    Ok(())
}
