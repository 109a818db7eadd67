//! Issue 11, item 3: every network wait has a deadline. A broker that stops
//! answering (paused with SIGSTOP: its sockets stay open, nothing comes
//! back) is noticed through the AMQP heartbeat: the worker reports not ready
//! (`/readyz` 503) while it cannot consume or publish, and recovers when
//! the broker returns, with no job lost and none stored twice.

use std::collections::HashSet;
use std::time::Duration;

use certfleet_tests::private::{self, Private, Service};
use certfleet_tests::{TestEnv, init_logging};
use tokio::time::Instant;

use crate::faults::{stored_count, versions_per_name, wait_stored};
use crate::issue::publish_issues;

/// The status `path` of a worker's metrics server answers (0: none).
pub(crate) async fn probe(env: &TestEnv, addr: std::net::SocketAddr, path: &str) -> u16 {
    env.http
        .send(::http::Method::GET, &format!("http://{addr}{path}"), None)
        .await
        .map_or(0, |(status, _)| status)
}

async fn readyz(env: &TestEnv, addr: std::net::SocketAddr) -> u16 {
    probe(env, addr, "/readyz").await
}

/// Waits until `path` answers `want`; how long that took.
pub(crate) async fn wait_probe(
    env: &TestEnv,
    addr: std::net::SocketAddr,
    path: &str,
    want: u16,
    within: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let got = probe(env, addr, path).await;
        if got == want {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < within,
            "{path} never answered {want} within {within:?} (last: {got})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_readyz(
    env: &TestEnv,
    addr: std::net::SocketAddr,
    want: u16,
    within: Duration,
) -> anyhow::Result<Duration> {
    wait_probe(env, addr, "/readyz", want, within).await
}

#[tokio::test]
async fn paused_broker_not_ready_then_recovers() -> anyhow::Result<()> {
    init_logging();
    let base = TestEnv::new("fault-silent").await?;
    let broker = Private::start(Service::RabbitMq, &[]).await?;
    let mut env = private::env_for(&base, &[&broker]).await?;
    // A short heartbeat, so the test does not wait for the default's 20 s.
    let url = env.vars["CERTFLEET_AMQP_URL"].clone();
    env.vars
        .insert("CERTFLEET_AMQP_URL".into(), format!("{url}?heartbeat=2"));
    let worker = env.start_worker(&[("CERTFLEET_CONCURRENCY", "8")]).await?;
    wait_readyz(&env, worker.metrics_addr, 200, Duration::from_secs(10)).await?;
    let names = publish_issues(&env, "p", 10).await?;
    let store = env.store().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while stored_count(&env, &names).await? < 2 {
        anyhow::ensure!(Instant::now() < deadline, "nothing stored before the pause");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    broker.pause().await?;
    let noticed = wait_readyz(&env, worker.metrics_addr, 503, Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        readyz(&env, worker.metrics_addr).await,
        503,
        "still not ready while paused"
    );
    broker.resume().await?;
    let recovered = wait_readyz(&env, worker.metrics_addr, 200, Duration::from_secs(60)).await?;
    wait_stored(&env, &names, names.len(), Duration::from_secs(120)).await?;
    let versions = versions_per_name(&env, &names).await?;
    assert!(versions.iter().all(|v| *v == 1), "none twice: {versions:?}");
    let unique: HashSet<_> = names.iter().collect();
    assert_eq!(unique.len(), 10);
    drop(store);
    println!(
        "silent broker: not ready {noticed:?} after the pause; ready again {recovered:?} after it returned; 10 stored, versions {versions:?}"
    );
    worker.stop().await;
    base.cleanup().await;
    Ok(())
}

/// Issue 11, item 4: a dead publishing channel heals. The events exchange
/// is deleted under a running worker: its next event publish kills the
/// channel (404), the worker reconnects and redeclares instead of requeueing
/// the job in a hot loop, and the job completes without a dead letter.
#[tokio::test]
async fn deleted_events_exchange_heals() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("fault-exchange").await?;
    let worker = env.start_worker(&[]).await?;
    let conn = env.connect().await?;
    let ch = conn.create_channel().await?;
    ch.exchange_delete(
        certfleet_common::topology::EVENTS_EXCHANGE.into(),
        lapin::options::ExchangeDeleteOptions::default(),
    )
    .await?;
    certfleet_common::amqp::close(&conn, 200, "done").await;
    let job = crate::issue::issue_job(&[env.domain("x").await?])?;
    env.publish_job(&job).await?;
    let state = env.state()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = state.status(&job.job_id).await?
            && s.state == certfleet_common::state::JobState::Done
        {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the job never completed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let handled =
        crate::issue::metric(&env, worker.metrics_addr, "certfleet_jobs_handled_total").await?;
    let connects =
        crate::issue::metric(&env, worker.metrics_addr, "certfleet_broker_connects_total").await?;
    assert!(connects >= 2.0, "the worker reconnected: {connects}");
    assert!(
        handled <= 3.0,
        "no hot loop of requeues: handled {handled} times"
    );
    assert_eq!(
        env.queue_len_settled(certfleet_common::topology::DEAD_QUEUE, 0)
            .await?,
        0
    );
    println!(
        "deleted events exchange: job done after {connects} connects, handled {handled} time(s)"
    );
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}

/// Issue 11, item 3: a broker short of memory blocks its publishers
/// (`connection.blocked`). The worker reports not ready while its
/// connection is blocked, a CLI publish turns into a retryable error
/// (`no publisher confirm ... within 30s`) instead of hanging, and once the
/// alarm clears the worker is ready again and every job completes once.
#[tokio::test]
async fn blocked_broker_not_ready_and_confirms_time_out() -> anyhow::Result<()> {
    init_logging();
    let base = TestEnv::new("fault-blocked").await?;
    let broker = Private::start(Service::RabbitMq, &[]).await?;
    let env = private::env_for(&base, &[&broker]).await?;
    // A first worker declares the work queue, so that jobs can be queued
    // before the alarm and wait there.
    env.start_worker(&[]).await?.stop().await;
    let names = publish_issues(&env, "b", 6).await?;
    broker
        .rabbitmqctl(&["set_vm_memory_high_watermark", "0.0000001"])
        .await?;
    let worker = env.start_worker(&[("CERTFLEET_CONCURRENCY", "4")]).await?;
    // The worker takes jobs (deliveries still flow) and its first event
    // publish makes the broker block the connection.
    let blocked = wait_readyz(&env, worker.metrics_addr, 503, Duration::from_secs(30)).await?;
    let cli_started = Instant::now();
    let domain = env.domain("blocked-cli").await?;
    let out = env
        .command("certfleet")?
        .args(["issue", &domain])
        .output()
        .await?;
    let cli_took = cli_started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "issue must fail while blocked");
    assert!(
        stderr.contains("no publisher confirm"),
        "the error names the missing confirm: {stderr}"
    );
    assert!(
        cli_took < Duration::from_secs(60),
        "bounded: the CLI gave up after {cli_took:?}"
    );
    assert_eq!(
        readyz(&env, worker.metrics_addr).await,
        503,
        "still not ready while the alarm lasts"
    );
    broker
        .rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"])
        .await?;
    let recovered = wait_readyz(&env, worker.metrics_addr, 200, Duration::from_secs(60)).await?;
    wait_stored(&env, &names, names.len(), Duration::from_secs(120)).await?;
    let versions = versions_per_name(&env, &names).await?;
    assert!(versions.iter().all(|v| *v == 1), "none twice: {versions:?}");
    assert_eq!(
        env.queue_len_settled(certfleet_common::topology::DEAD_QUEUE, 0)
            .await?,
        0,
        "nothing dead-lettered"
    );
    println!(
        "blocked broker: not ready {blocked:?} after the worker started under the alarm; `certfleet issue` failed after {cli_took:?}; ready again {recovered:?} after the alarm cleared; 6 stored, versions {versions:?}"
    );
    worker.stop().await;
    base.cleanup().await;
    Ok(())
}
