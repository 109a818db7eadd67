//! Issue 5: never lose a job, never issue twice — under faults.

use std::collections::HashSet;
use std::time::Duration;

use certfleet_common::CertName;
use certfleet_common::event::EventKind;
use certfleet_tests::{TestEnv, init_logging};
use tokio::time::Instant;

use crate::issue::{issue_job, publish_issues, wait_for_order};

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

/// How many of `names` have a stored certificate now.
pub(crate) async fn stored_count(env: &TestEnv, names: &[CertName]) -> anyhow::Result<usize> {
    let store = env.store().await;
    let mut n = 0;
    for name in names {
        if store.pointer(name).await?.is_some() {
            n += 1;
        }
    }
    Ok(n)
}

/// Waits until at least `n` of `names` are stored.
pub(crate) async fn wait_stored(
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
pub(crate) async fn assert_once_each(
    env: &TestEnv,
    names: &[CertName],
) -> anyhow::Result<Vec<usize>> {
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

/// Shutdown during orders: the worker stops within its grace period, and
/// the jobs it had not finished are done by the next worker — none lost,
/// none twice.
#[tokio::test]
async fn shutdown_mid_run_loses_nothing_duplicates_nothing() -> anyhow::Result<()> {
    init_logging();
    let base = TestEnv::new("fault-shutdown").await?;
    // Validations that take 0–14 s: when the first certificate is out, the
    // others are still in flight (with instant validation all 40 finish
    // within the grace period and the shutdown would hit nothing).
    let pebble = Private::start(Service::Pebble, PEBBLE_WITH_LONG_SLEEP).await?;
    let env = private::env_for(&base, &[&pebble]).await?;
    let grace = Duration::from_secs(3);
    let first = env
        .start_worker(&[
            ("CERTFLEET_CONCURRENCY", "40"),
            ("CERTFLEET_SHUTDOWN_GRACE", "3s"),
        ])
        .await?;
    let mut events = env.events("cert.#").await?;
    let names = publish_issues(&env, "s", 40).await?;
    // Stop as soon as the first certificate is out: the rest are in flight.
    let first_event = events.next(Duration::from_secs(60)).await?;
    let stopping = Instant::now();
    first.stop().await;
    let took = stopping.elapsed();
    // The shutdown hit work in flight.
    let stored_before = stored_count(&env, &names).await?;
    assert!(
        stored_before < 40,
        "jobs were in flight: {stored_before} of 40 stored"
    );
    assert!(
        took < grace + Duration::from_secs(7),
        "shutdown took {took:?}"
    );
    let second = env.start_worker(&[("CERTFLEET_CONCURRENCY", "40")]).await?;
    // Up to 240 s: a job whose challenge Pebble validated while no worker
    // answered (between the two) fails that validation, which the worker
    // sees only at its next poll (seen once: 60 s after the stop), then
    // orders again after 10 s and waits for Pebble's 0-14 s delay. The
    // first worker's issued events may come again from the second (the
    // outbox is at least once): names are counted, not events.
    let (mut seen, all) = events
        .distinct_names(&[EventKind::Issued], 39, Duration::from_secs(240))
        .await;
    seen.insert(first_event.name.to_string());
    let failed: Vec<_> = all.iter().filter(|e| e.kind != EventKind::Issued).collect();
    assert!(failed.is_empty(), "no job failed: {failed:?}");
    assert_eq!(
        seen.len(),
        40,
        "every job ends in a certificate ({} events)",
        all.len()
    );
    let versions = versions_per_name(&env, &names).await?;
    assert!(
        versions.iter().all(|v| *v == 1),
        "one version each: {versions:?}"
    );
    let resumed = crate::issue::metric(
        &env,
        second.metrics_addr,
        "certfleet_acme_orders_resumed_total",
    )
    .await?;
    assert!(
        resumed > 0.0,
        "the second worker resumed orders of the first"
    );
    println!(
        "shutdown: stopped in {took:?} with {stored_before} of 40 stored; the next worker resumed {resumed} order(s); 40 certificates, versions {versions:?}"
    );
    second.stop().await;
    base.cleanup().await;
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
    env.wait_for_work_queue().await?;
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

use certfleet_tests::acme_proxy::AcmeProxy;
use certfleet_tests::private::{self, PEBBLE_WITH_LONG_SLEEP, PEBBLE_WITH_SLEEP, Private, Service};

/// kill -9 of a worker after its order was created and before finalize:
/// another worker resumes the same order; one version, one event.
#[tokio::test]
async fn kill_9_mid_order_resumes_same_order() -> anyhow::Result<()> {
    init_logging();
    let base = TestEnv::new("fault-kill9").await?;
    // Pebble that takes its time validating, so the order is mid-flight.
    let pebble = Private::start(Service::Pebble, PEBBLE_WITH_LONG_SLEEP).await?;
    let env = private::env_for(&base, &[&pebble]).await?;
    let mut events = env.events("cert.#").await?;
    let mut a = env
        .command("certfleet-worker")?
        .env("CERTFLEET_LEASE_TTL", "3s")
        .spawn()?;
    env.wait_for_work_queue().await?;
    let job = issue_job(&[env.domain("k").await?])?;
    env.publish_job(&job).await?;
    // Wait for the order record: the order exists at the CA.
    wait_for_order(&env, &job.job.name).await?;
    let pid = a.id().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()?;
    let _ = a.wait().await;
    assert!(
        env.store().await.pointer(&job.job.name).await?.is_none(),
        "killed before storing"
    );

    let b = env.start_worker(&[("CERTFLEET_LEASE_TTL", "3s")]).await?;
    let event = events.next(Duration::from_secs(90)).await?;
    assert_eq!(event.job_id, job.job_id);
    assert!(
        events.quiet_for(Duration::from_secs(2)).await.is_none(),
        "one event"
    );
    let versions = versions_per_name(&env, std::slice::from_ref(&job.job.name)).await?;
    assert_eq!(versions, vec![1]);
    let resumed =
        crate::issue::metric(&env, b.metrics_addr, "certfleet_acme_orders_resumed_total").await?;
    let created =
        crate::issue::metric(&env, b.metrics_addr, "certfleet_acme_orders_created_total").await?;
    println!("kill -9: worker B resumed {resumed} order(s), created {created}");
    assert_eq!(
        (resumed, created),
        (1.0, 0.0),
        "B resumed A's order instead of opening another"
    );
    b.stop().await;
    base.cleanup().await;
    Ok(())
}

/// 50 jobs across 2 workers while RabbitMQ restarts mid-run: all issued,
/// none twice.
#[tokio::test]
async fn broker_restart_mid_run() -> anyhow::Result<()> {
    init_logging();
    let base = TestEnv::new("fault-broker").await?;
    let broker = Private::start(Service::RabbitMq, &[]).await?;
    let pebble = Private::start(Service::Pebble, PEBBLE_WITH_SLEEP).await?;
    let env = private::env_for(&base, &[&broker, &pebble]).await?;
    let a = env.start_worker(&[("CERTFLEET_CONCURRENCY", "8")]).await?;
    let b = env.start_worker(&[("CERTFLEET_CONCURRENCY", "8")]).await?;
    let names = publish_issues(&env, "b", 50).await?;
    let store = env.store().await;
    let stored = |store: &certfleet_common::Store, names: &[CertName]| {
        let store = store.clone();
        let names = names.to_vec();
        async move {
            let mut n = 0;
            for name in &names {
                if store.pointer(name).await.ok().flatten().is_some() {
                    n += 1;
                }
            }
            n
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while stored(&store, &names).await < 5 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "nothing issued before the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = stored(&store, &names).await;
    assert!(
        before < 50,
        "the restart hit jobs in flight: {before} of 50 stored"
    );
    broker.restart().await?;
    let deadline = Instant::now() + Duration::from_secs(240);
    while stored(&store, &names).await < 50 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of 50 issued after the restart",
            stored(&store, &names).await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let versions = versions_per_name(&env, &names).await?;
    println!("broker restart: {before} stored before the restart, 50 after; versions {versions:?}");
    assert!(versions.iter().all(|v| *v == 1), "none twice: {versions:?}");
    assert_eq!(
        env.queue_len_settled(certfleet_common::topology::DEAD_QUEUE, 0)
            .await?,
        0
    );
    a.stop().await;
    b.stop().await;
    base.cleanup().await;
    Ok(())
}

/// Redis stopped for 10 s mid-run: no duplicate versions; everything is
/// issued after it returns (with its data lost). The worker says so on
/// `/readyz` (503 while Redis is gone, 200 again after) and stays alive
/// (`/healthz` 200 throughout). Every step names itself in its error.
#[tokio::test]
async fn redis_outage_mid_run() -> anyhow::Result<()> {
    use anyhow::Context as _;

    use crate::silent_broker::{probe, wait_probe};
    init_logging();
    let base = TestEnv::new("fault-redis").await.context("test env")?;
    let redis = Private::start(Service::Redis, &[])
        .await
        .context("starting the private Redis")?;
    let pebble = Private::start(Service::Pebble, PEBBLE_WITH_SLEEP)
        .await
        .context("starting the private Pebble")?;
    let env = private::env_for(&base, &[&redis, &pebble])
        .await
        .context("private env")?;
    let worker = env
        .start_worker(&[
            ("CERTFLEET_CONCURRENCY", "8"),
            ("CERTFLEET_LEASE_TTL", "6s"),
        ])
        .await
        .context("starting the worker")?;
    wait_probe(
        &env,
        worker.metrics_addr,
        "/readyz",
        200,
        Duration::from_secs(30),
    )
    .await
    .context("ready before the outage")?;
    let mut events = env.events("cert.#").await.context("event consumer")?;
    let names = publish_issues(&env, "r", 20).await.context("publishing")?;
    let first = events
        .next(Duration::from_secs(120))
        .await
        .context("the first event (before the outage)")?;
    let stored_before = stored_count(&env, &names)
        .await
        .context("counting stored certificates")?;
    redis.stop().await.context("stopping Redis")?;
    assert!(
        stored_before < 20,
        "the outage hit jobs in flight: {stored_before} of 20 stored"
    );
    let noticed = wait_probe(
        &env,
        worker.metrics_addr,
        "/readyz",
        503,
        Duration::from_secs(10),
    )
    .await
    .context("not ready while Redis is down")?;
    assert_eq!(
        probe(&env, worker.metrics_addr, "/healthz").await,
        200,
        "alive while Redis is down"
    );
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(noticed)).await;
    redis.start_again().await.context("starting Redis again")?;
    wait_probe(
        &env,
        worker.metrics_addr,
        "/readyz",
        200,
        Duration::from_secs(30),
    )
    .await
    .context("ready again after Redis returned")?;
    let mut seen: HashSet<String> = HashSet::from([first.name.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(240);
    while seen.len() < 20 && Instant::now() < deadline {
        if let Ok(e) = events.next(Duration::from_secs(5)).await {
            assert_eq!(e.kind, certfleet_common::EventKind::Issued, "{e:?}");
            seen.insert(e.name.to_string());
        }
    }
    assert_eq!(seen.len(), 20, "all issued after Redis returned");
    let versions = versions_per_name(&env, &names)
        .await
        .context("counting versions")?;
    println!(
        "redis outage: {stored_before} of 20 stored when Redis stopped; /readyz 503 after {noticed:?}; 20 issued; versions {versions:?}"
    );
    assert!(
        versions.iter().all(|v| *v == 1),
        "no duplicate versions: {versions:?}"
    );
    worker.stop().await;
    base.cleanup().await;
    Ok(())
}

/// S3 unavailable: no event before the bundle is stored; the jobs complete
/// once it returns.
#[tokio::test]
async fn s3_outage_delays_without_early_events() -> anyhow::Result<()> {
    init_logging();
    let base = TestEnv::new("fault-s3").await?;
    let s3 = Private::start(Service::S3, &[]).await?;
    let env = private::env_for(&base, &[&s3]).await?;
    let worker = env.start_worker(&[]).await?;
    let mut events = env.events("cert.#").await?;
    s3.stop().await?;
    let names = publish_issues(&env, "o", 5).await?;
    assert!(
        events.quiet_for(Duration::from_secs(6)).await.is_none(),
        "no event while storage is down"
    );
    s3.start_again().await?;
    let store = env.store().await;
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(150);
    while seen.len() < 5 && Instant::now() < deadline {
        if let Ok(e) = events.next(Duration::from_secs(5)).await {
            // The bundle the event names is in storage when the event arrives.
            let cert = e
                .certificate
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("no cert"))?;
            store.bundle(&cert.location.bundle_key).await?;
            seen.insert(e.name.to_string());
        }
    }
    assert_eq!(seen.len(), 5, "all complete once storage returns");
    let versions = versions_per_name(&env, &names).await?;
    println!(
        "s3 outage: 0 events in 6 s while down; {} issued after it returned, each bundle stored before its event; versions {versions:?}",
        seen.len()
    );
    assert!(versions.iter().all(|v| *v == 1), "{versions:?}");
    worker.stop().await;
    base.cleanup().await;
    Ok(())
}

/// A `rateLimited` answer delays the job by its Retry-After instead of
/// burning attempts.
#[tokio::test]
async fn rate_limited_waits_retry_after_without_burning_attempts() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("fault-ratelimit").await?;
    let proxy = AcmeProxy::start(&env).await?;
    let vars = proxy.vars();
    let worker = env
        .start_worker(&[private::pairs(&vars), vec![("CERTFLEET_MAX_ATTEMPTS", "1")]].concat())
        .await?;
    let mut events = env.events("cert.#").await?;
    proxy.reject_new_orders(2, 3);
    let job = issue_job(&[env.domain("rl").await?])?;
    let started = Instant::now();
    env.publish_job(&job).await?;
    let event = events.next(Duration::from_secs(90)).await?;
    let took = started.elapsed();
    // With one attempt allowed, a counted retry would have failed the job.
    assert_eq!(event.kind, certfleet_common::EventKind::Issued, "{event:?}");
    assert_eq!(event.attempt, 1);
    assert_eq!(proxy.new_orders_rejected(), 2);
    assert!(
        took >= Duration::from_secs(6),
        "waited the Retry-After twice: {took:?}"
    );
    println!("rate limited twice (Retry-After 3 s): issued after {took:?}, attempt 1");
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}

/// A new-order request whose answer never came (the CA created the order,
/// the connection was cut): the retry finds that order in the account's
/// orders list and finishes it, instead of creating another.
#[tokio::test]
async fn unanswered_new_order_is_found_not_repeated() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("fault-lost-order").await?;
    let proxy = AcmeProxy::start(&env).await?;
    let vars = proxy.vars();
    let worker = env.start_worker(&private::pairs(&vars)).await?;
    let mut events = env.events("cert.#").await?;
    // Another certificate first, so the orders list holds more than ours.
    let other = issue_job(&[env.domain("lost-other").await?])?;
    env.publish_job(&other).await?;
    let first = events.next(Duration::from_secs(90)).await?;
    assert_eq!(first.kind, certfleet_common::EventKind::Issued, "{first:?}");

    proxy.lose_new_order_answers(1);
    let job = issue_job(&[env.domain("lost").await?])?;
    env.publish_job(&job).await?;
    let event = events.next(Duration::from_secs(90)).await?;
    assert_eq!(event.job_id, job.job_id);
    assert_eq!(event.kind, certfleet_common::EventKind::Issued, "{event:?}");
    let seen: Vec<_> = proxy
        .new_orders()
        .into_iter()
        .filter(|o| o.identifiers == job.job.domains)
        .collect();
    assert_eq!(
        seen.len(),
        1,
        "one new-order for the name, its answer lost: {seen:?}"
    );
    assert!(seen[0].answer_lost);
    let found = crate::issue::metric(
        &env,
        worker.metrics_addr,
        "certfleet_acme_orders_found_total",
    )
    .await?;
    let created = crate::issue::metric(
        &env,
        worker.metrics_addr,
        "certfleet_acme_orders_created_total",
    )
    .await?;
    assert_eq!(found, 1.0, "the retry adopted the order it found");
    assert_eq!(
        created, 1.0,
        "only the other certificate's order counts as created"
    );
    let versions = versions_per_name(&env, std::slice::from_ref(&job.job.name)).await?;
    assert_eq!(versions, vec![1]);
    println!(
        "new-order answer lost: 1 new-order for the name at the CA, found in the orders list on attempt {}, issued; orders created {created}, found {found}",
        event.attempt
    );
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}

/// Fencing: a worker whose lease was overtaken (here: a newer writer put a
/// pointer with a higher fencing token while the order ran) never replaces
/// that pointer.
#[tokio::test]
async fn stale_writer_never_replaces_a_newer_pointer() -> anyhow::Result<()> {
    use certfleet_common::storage::POINTER_SCHEMA;
    use certfleet_worker::objects::Condition;
    init_logging();
    let base = TestEnv::new("fault-fence").await?;
    let pebble = Private::start(Service::Pebble, PEBBLE_WITH_SLEEP).await?;
    let env = private::env_for(&base, &[&pebble]).await?;
    let worker = env.start_worker(&[]).await?;
    let mut events = env.events("cert.#").await?;
    let job = issue_job(&[env.domain("fence").await?])?;
    env.publish_job(&job).await?;
    // Once the order exists, a newer writer takes the name over.
    wait_for_order(&env, &job.job.name).await?;
    let store = env.store().await;
    let now = time::OffsetDateTime::now_utc();
    let newer = certfleet_common::Pointer {
        schema: POINTER_SCHEMA.into(),
        name: job.job.name.clone(),
        version: "99990101T000000Z-newer".into(),
        bundle_key: store.keys().bundle(&job.job.name, "99990101T000000Z-newer"),
        serial: "newer".into(),
        domains: job.job.domains.clone(),
        key_type: job.job.key_type,
        not_before: now,
        not_after: now + time::Duration::days(90),
        renew_at: now + time::Duration::days(60),
        job_id: uuid::Uuid::new_v4(),
        fence: 1_000_000_000,
        history: vec![],
        updated_at: now,
        challenge: certfleet_common::ChallengeType::Http01,
        ari_id: None,
        profile: None,
        issuer: None,
        csr: None,
        ca: None,
        revoked: None,
    };
    store
        .put_json(
            &store.keys().pointer(&job.job.name),
            &newer,
            Condition::None,
        )
        .await?;
    // The job ends (it finds the name already served) without replacing it.
    let event = events.next(Duration::from_secs(90)).await?;
    assert_eq!(event.job_id, job.job_id);
    let (after, _) = store
        .pointer(&job.job.name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("pointer gone"))?;
    assert_eq!(
        after.serial, "newer",
        "the stale writer replaced a newer pointer"
    );
    assert_eq!(after.fence, 1_000_000_000);
    worker.stop().await;
    base.cleanup().await;
    Ok(())
}

/// A job that fails for good is announced (`cert.failed`) and parked with
/// its reason; `certfleet dlq` lists, shows, replays and purges.
#[tokio::test]
async fn dead_letters_are_visible_and_replayable() -> anyhow::Result<()> {
    use certfleet_common::{Envelope, now_ms};
    init_logging();
    let env = TestEnv::new("fault-dlq").await?;
    let worker = env.start_worker(&[]).await?;
    let mut events = env.events("cert.#").await?;
    // Renewing a name that has no certificate cannot succeed.
    let domain = env.domain("later").await?;
    let name = CertName::from_domain(&domain)?;
    let renew = Envelope::renewal(
        name.clone(),
        certfleet_common::ChallengeType::Http01,
        "test",
        now_ms(),
    );
    env.publish_job(&renew).await?;
    let failed = events.next(Duration::from_secs(30)).await?;
    assert_eq!(failed.kind, certfleet_common::EventKind::Failed);
    let reason = failed.error.map(|e| e.detail).unwrap_or_default();
    assert!(reason.contains("no certificate named"), "{reason}");
    env.publish_raw("job.issue.http-01", b"garbage").await?;

    let run = |args: Vec<String>| {
        let cmd = env.command("certfleet");
        async move {
            let out = cmd?.args(&args).output().await?;
            anyhow::Ok((
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ))
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let listing = loop {
        let (code, out, err) = run(vec!["dlq".into(), "list".into()]).await?;
        assert_eq!(code, Some(0), "{err}");
        if out.contains("undecodable") && out.contains(&renew.job_id.to_string()) {
            break out;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "dlq list never showed both: {out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(listing.contains(name.as_str()), "{listing}");
    let (code, shown, _) = run(vec!["dlq".into(), "show".into(), renew.job_id.to_string()]).await?;
    assert_eq!(code, Some(0));
    assert!(shown.contains("no certificate named"), "{shown}");
    // Listing twice lost nothing.
    assert_eq!(
        env.queue_len_settled(certfleet_common::topology::DEAD_QUEUE, 2)
            .await?,
        2
    );

    // Fix the cause (issue the certificate), then replay the job.
    let issue = issue_job(std::slice::from_ref(&domain))?;
    env.publish_job(&issue).await?;
    let issued = events.next(Duration::from_secs(60)).await?;
    assert_eq!(issued.kind, certfleet_common::EventKind::Issued);
    let (code, _, err) = run(vec![
        "dlq".into(),
        "replay".into(),
        renew.job_id.to_string(),
    ])
    .await?;
    assert_eq!(code, Some(0), "{err}");
    let renewed = events.next(Duration::from_secs(60)).await?;
    assert_eq!(renewed.kind, certfleet_common::EventKind::Renewed);
    assert_eq!(
        renewed.job_id, renew.job_id,
        "the replayed job keeps its id"
    );
    assert_eq!(
        env.queue_len_settled(certfleet_common::topology::DEAD_QUEUE, 1)
            .await?,
        1
    );

    let (code, _, _) = run(vec!["dlq".into(), "purge".into()]).await?;
    assert_eq!(code, Some(64), "purge wants --yes");
    let (code, _, err) = run(vec!["dlq".into(), "purge".into(), "--yes".into()]).await?;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        env.queue_len(certfleet_common::topology::DEAD_QUEUE)
            .await?,
        0
    );
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}

/// A transient failure that never clears is retried through the delay
/// queues and, after `max_attempts`, reported with the CA's problem and
/// parked as `exhausted`.
#[tokio::test]
async fn attempts_exhausted_are_dead_lettered_with_the_problem() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("fault-exhaust").await?;
    let worker = env.start_worker(&[("CERTFLEET_MAX_ATTEMPTS", "2")]).await?;
    let mut events = env.events("cert.#").await?;
    // Resolves to an address where nobody answers http-01.
    let domain = format!("nobody.{}.certfleet.test", env.id);
    let body = serde_json::json!({"host": domain, "addresses": ["127.254.254.254"]});
    env.http
        .send(
            http::Method::POST,
            &format!("{}/add-a", env.stack.challtestsrv),
            Some(body.to_string()),
        )
        .await?;
    let job = issue_job(&[domain])?;
    let started = Instant::now();
    env.publish_job(&job).await?;
    let event = events.next(Duration::from_secs(60)).await?;
    assert_eq!(event.kind, certfleet_common::EventKind::Failed);
    assert_eq!(event.attempt, 2, "failed on the last attempt");
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "waited the first backoff step"
    );
    let error = event.error.ok_or_else(|| anyhow::anyhow!("no error"))?;
    assert_eq!(error.kind, "exhausted");
    assert!(
        error.problem.is_some(),
        "the CA's problem document travels with it"
    );
    let dead = crate::issue::dead_letters(&env, 1).await?;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, "exhausted");
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}

/// A worker started with another `CERTFLEET_ENCRYPTION_KEY` than the one
/// the fleet's ACME account was sealed with: its jobs are deferred, none
/// fails or is dead-lettered, `/readyz` answers 503 naming the key ids; a
/// worker with the fleet's key then issues the deferred job.
#[tokio::test]
async fn a_worker_with_another_encryption_key_defers_jobs_and_is_not_ready() -> anyhow::Result<()> {
    use base64::Engine as _;

    use crate::silent_broker::wait_probe;
    init_logging();
    let env = TestEnv::new("key-fault").await?;
    let mut events = env.events("cert.#").await?;
    // The fleet's account, sealed with the fleet's key.
    let first = issue_job(&[env.domain("kf0").await?])?;
    issued_with_the_fleets_key(&env, &mut events, &first, true).await?;

    let mut other = [0u8; 32];
    other[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    other[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    let other = base64::engine::general_purpose::STANDARD.encode(other);
    let bad = env
        .start_worker(&[("CERTFLEET_ENCRYPTION_KEY", &other)])
        .await?;
    let job = issue_job(&[env.domain("kf1").await?])?;
    env.publish_job(&job).await?;
    wait_probe(
        &env,
        bad.metrics_addr,
        "/readyz",
        503,
        Duration::from_secs(30),
    )
    .await?;
    let (_, why) = env
        .http
        .send(
            ::http::Method::GET,
            &format!("http://{}/readyz", bad.metrics_addr),
            None,
        )
        .await?;
    assert!(why.contains("key id"), "{why}");
    // Deferred, not failed: no event, nothing dead-lettered (10 s: the
    // job came back from its delay queue and was deferred again).
    let quiet = events.quiet_for(Duration::from_secs(12)).await;
    assert!(quiet.is_none(), "an event with the wrong key: {quiet:?}");
    assert_eq!(
        env.queue_len(certfleet_common::topology::DEAD_QUEUE)
            .await?,
        0
    );
    bad.stop().await;

    issued_with_the_fleets_key(&env, &mut events, &job, false).await?;
    env.cleanup().await;
    Ok(())
}

/// Starts a worker with the test's (the fleet's) key, publishes `job` if
/// asked (else it waits in the queue), waits for its `issued` event, and
/// stops the worker.
async fn issued_with_the_fleets_key(
    env: &TestEnv,
    events: &mut certfleet_tests::Events,
    job: &certfleet_common::Envelope,
    publish: bool,
) -> anyhow::Result<()> {
    let worker = env.start_worker(&[]).await?;
    if publish {
        env.publish_job(job).await?;
    }
    let ev = events.next(Duration::from_secs(60)).await?;
    assert_eq!(
        (ev.kind, &ev.name),
        (EventKind::Issued, &job.job.name),
        "{:?}",
        ev.error
    );
    worker.stop().await;
    Ok(())
}
