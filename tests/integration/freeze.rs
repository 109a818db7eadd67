//! Issue 11, item 8: fences. A worker frozen (SIGSTOP) mid-order for
//! longer than its lease loses the name to another worker, which resumes
//! the order and stores the certificate; when the frozen worker wakes
//! (SIGCONT) it cannot undo that: the pointer's fence only grows, each job
//! stores at most one version, and every announced version was current.
//!
//! The order is a dns-01 one through the `exec` hook, which lingers after
//! presenting: the frozen worker is then reliably mid-order, and the CA's
//! validation does not depend on which worker process answers.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certfleet_common::event::EventKind;
use certfleet_tests::{TestEnv, init_logging};
use tokio::time::Instant;

use crate::dns01::{challenge_name, dns_job, exec_vars};

fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()?
        .success();
    anyhow::ensure!(ok, "kill {sig} {pid}");
    Ok(())
}

#[tokio::test]
async fn sigstop_longer_than_the_lease_then_sigcont() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("fault-freeze").await?;
    let mut events = env.events("cert.#").await?;
    let a_metrics: std::net::SocketAddr =
        format!("127.0.0.1:{}", certfleet_tests::private::free_port()?).parse()?;
    let mut a = env
        .command("certfleet-worker")?
        .envs(exec_vars(&env, Some("30"))?)
        .env("CERTFLEET_LEASE_TTL", "3s")
        .env("CERTFLEET_METRICS_LISTEN", a_metrics.to_string())
        // Prefetch 1: the frozen A holds its one job, and the broker hands
        // the next one to B.
        .env("CERTFLEET_CONCURRENCY", "1")
        .env("CERTFLEET_HTTP01_LISTEN", "127.0.0.1:0")
        .spawn()?;
    let pid = a.id().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    env.wait_for_work_queue().await?;
    let domain = env.dns_domain("fz");
    let first = dns_job(std::slice::from_ref(&domain))?;
    let name = first.job.name.clone();
    env.publish_job(&first).await?;
    // A presented its value (its hook now lingers): A is mid-order.
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.dig_txt(&challenge_name(&domain)).await?.is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "A never presented");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Watch the pointer from now on: (fence, version) as seen.
    let store = env.store().await;
    let seen: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
    let watcher = {
        let (store, seen, name) = (store.clone(), seen.clone(), name.clone());
        tokio::spawn(async move {
            loop {
                if let Ok(Some((p, _))) = store.pointer(&name).await {
                    let mut s = seen
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if s.last().map(|(f, v)| (*f, v.as_str()))
                        != Some((p.fence, p.version.as_str()))
                    {
                        s.push((p.fence, p.version.clone()));
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // A freezes mid-order for longer than its lease (3 s).
    signal(pid, "-STOP")?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    // B takes the name over with a job of its own and resumes A's order.
    let mut vars = exec_vars(&env, None)?;
    vars.push(("CERTFLEET_LEASE_TTL".into(), "3s".into()));
    let b = env.start_worker_with(&vars).await?;
    let second = dns_job(std::slice::from_ref(&domain))?;
    env.publish_job(&second).await?;
    let by_b = events.next(Duration::from_secs(90)).await?;
    assert_eq!((by_b.kind, by_b.job_id), (EventKind::Issued, second.job_id));
    // A wakes up.
    signal(pid, "-CONT")?;
    // A's job ends too (it lost its lease; its retry finds the certificate
    // stored): every event names a version.
    let mut announced = vec![by_b];
    announced.extend(events.collect(1, Duration::from_secs(60)).await);
    announced.extend(events.collect(5, Duration::from_secs(3)).await);
    watcher.abort();
    // A counted the lease it lost.
    let lost = crate::issue::metric(&env, a_metrics, "certfleet_leases_lost_total").await?;
    assert!(
        lost >= 1.0,
        "worker A's certfleet_leases_lost_total: {lost}"
    );

    let seen = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    assert!(!seen.is_empty(), "the pointer was seen");
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "the fence only grows: {seen:?}"
    );
    let current: BTreeSet<&str> = seen.iter().map(|(_, v)| v.as_str()).collect();
    for e in &announced {
        let v = e
            .certificate
            .as_ref()
            .map(|c| c.version.as_str())
            .ok_or_else(|| anyhow::anyhow!("event without certificate: {e:?}"))?;
        assert!(
            current.contains(v),
            "announced {v} was current at some point: {seen:?}"
        );
    }
    let (pointer, _) = store
        .pointer(&name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no pointer"))?;
    let versions = store.list(&store.keys().versions(&name)).await?;
    let jobs: BTreeSet<uuid::Uuid> = announced.iter().map(|e| e.job_id).collect();
    assert!(
        versions.len() <= jobs.len() && versions.len() <= 2,
        "at most one version per job: {versions:?} for jobs {jobs:?}"
    );
    println!(
        "freeze: pointer fences seen {:?}; {} event(s) for {} job(s); {} version(s); final fence {}",
        seen.iter().map(|(f, _)| *f).collect::<Vec<_>>(),
        announced.len(),
        jobs.len(),
        versions.len(),
        pointer.fence
    );
    b.stop().await;
    let _ = a.kill().await;
    env.cleanup().await;
    Ok(())
}

/// Issue 11, item 8: a job that comes back through a delay queue (a
/// deferral after a lost lease carries an `x-certfleet-not-before` header,
/// but it is neither a redelivery nor a counted attempt) adopts the bundle
/// an earlier try of it stored but never made current: it orders nothing
/// new and stores no second version.
#[tokio::test]
async fn deferred_job_adopts_its_orphaned_bundle() -> anyhow::Result<()> {
    use certfleet_common::{amqp, topology};
    init_logging();
    let env = TestEnv::new("orphan-deferred").await?;
    let worker = env.start_worker(&[]).await?;
    let job = crate::issue::issue_job(&[env.domain("o").await?])?;
    let name = job.job.name.clone();
    env.publish_job(&job).await?;
    let store = env.store().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        if let Some((p, _)) = store.pointer(&name).await? {
            break p;
        }
        anyhow::ensure!(Instant::now() < deadline, "the job never stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // What a try that lost its lease between the bundle write and the
    // pointer flip leaves: the job's bundle, no pointer to it.
    store
        .client()
        .delete_object()
        .bucket(store.bucket())
        .key(store.keys().pointer(&name))
        .send()
        .await?;
    // The same job again, as a deferral publishes it (due now).
    let body = job.encode()?;
    let routing_key = job.routing_key();
    let id = job.job_id.to_string();
    let conn = env.connect().await?;
    let publisher = amqp::Publisher::new(&conn).await?;
    let mut out = amqp::Outgoing::job(&routing_key, &body, Some(&id));
    out.headers = Some(topology::headers(
        &[],
        &[(topology::HDR_NOT_BEFORE, certfleet_common::now_ms() - 1000)],
    ));
    publisher.publish(out).await?;
    amqp::close(&conn, 200, "done").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let again = loop {
        if let Some((p, _)) = store.pointer(&name).await? {
            break p;
        }
        anyhow::ensure!(Instant::now() < deadline, "the deferred job never stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let versions = store.list(&store.keys().versions(&name)).await?;
    assert_eq!(
        again.serial, first.serial,
        "the deferred try adopted the stored bundle instead of ordering anew"
    );
    assert_eq!(again.bundle_key, first.bundle_key);
    assert_eq!(versions.len(), 1, "one version per job: {versions:?}");
    println!(
        "deferred job: adopted serial {} (no new order), {} version stored",
        again.serial,
        versions.len()
    );
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}
