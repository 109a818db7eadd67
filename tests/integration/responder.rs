//! Issue 11, item 7: the http-01 responder cannot starve the fleet. It
//! answers from a Redis pool of its own, serves a bounded number of
//! connections and answers each request within a deadline, so a flood of
//! requests for unknown tokens does not make the worker's leases lapse.

use std::time::Duration;

use certfleet_common::event::EventKind;
use certfleet_tests::{TestEnv, init_logging};

use crate::issue::issue_job;

/// 64 clients send 3,200 requests for unknown tokens while a worker whose
/// leases live 3 s runs an order: the certificate is issued once, no job
/// lost its lease, and the flood was answered (404s, not hangs).
#[tokio::test]
async fn unknown_token_flood_does_not_starve_leases() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("h01-flood").await?;
    let worker = env
        .start_worker(&[
            ("CERTFLEET_LEASE_TTL", "3s"),
            ("CERTFLEET_CONCURRENCY", "4"),
        ])
        .await?;
    let base = format!("http://{}:5002/.well-known/acme-challenge", env.ip);
    let flood: Vec<_> = (0..64)
        .map(|c| {
            let base = base.clone();
            tokio::spawn(async move {
                let http = certfleet_tests::Http::new(None)?;
                let mut answered = 0u32;
                for i in 0..50 {
                    let url = format!("{base}/unknown-token-{c:03}-{i:03}-abcdefghijklmnop");
                    if let Ok((status, _)) = http.send(::http::Method::GET, &url, None).await
                        && status == 404
                    {
                        answered += 1;
                    }
                }
                anyhow::Ok(answered)
            })
        })
        .collect();
    let mut events = env.events("cert.#").await?;
    let job = issue_job(&[env.domain("f").await?])?;
    env.publish_job(&job).await?;
    let event = events.next(Duration::from_secs(90)).await?;
    assert_eq!((event.kind, event.job_id), (EventKind::Issued, job.job_id));
    let mut answered = 0;
    for f in flood {
        answered += f.await??;
    }
    assert_eq!(answered, 3200, "every flood request got its 404");
    assert!(
        events.quiet_for(Duration::from_secs(2)).await.is_none(),
        "one event"
    );
    let versions =
        crate::faults::versions_per_name(&env, std::slice::from_ref(&job.job.name)).await?;
    assert_eq!(versions, vec![1]);
    // One handling of the one job: no attempt lost its lease and deferred.
    let handled =
        crate::issue::metric(&env, worker.metrics_addr, "certfleet_jobs_handled_total").await?;
    assert_eq!(handled, 1.0, "the job was handled once");
    println!(
        "http-01 flood: {answered} unknown-token requests answered; the job handled {handled} time(s)"
    );
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}

/// Redis loses its data while the CA validates (FLUSHALL after the order
/// was created, before Pebble's delayed validation): the worker that placed
/// the order still answers from memory, the lease loss is survived, and the
/// certificate is issued once instead of failing as `unauthorized`.
#[tokio::test]
async fn redis_data_loss_during_validation_is_survived() -> anyhow::Result<()> {
    use certfleet_tests::private::{self, PEBBLE_WITH_LONG_SLEEP, Private, Service};
    init_logging();
    let base = TestEnv::new("h01-flush").await?;
    let redis = Private::start(Service::Redis, &[]).await?;
    let pebble = Private::start(Service::Pebble, PEBBLE_WITH_LONG_SLEEP).await?;
    let env = private::env_for(&base, &[&redis, &pebble]).await?;
    let worker = env.start_worker(&[("CERTFLEET_LEASE_TTL", "3s")]).await?;
    let mut events = env.events("cert.#").await?;
    let job = issue_job(&[pebble.domain(&env, "fl").await?])?;
    env.publish_job(&job).await?;
    crate::issue::wait_for_order(&env, &job.job.name).await?;
    let state = env.state()?;
    let mut c = state.conn().await?;
    let _: () = deadpool_redis::redis::cmd("FLUSHALL")
        .query_async(&mut *c)
        .await?;
    drop(c);
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(150);
    while tokio::time::Instant::now() < deadline {
        let Ok(e) = events.next(Duration::from_secs(5)).await else {
            continue;
        };
        assert_ne!(e.kind, EventKind::Failed, "no failure: {e:?}");
        seen.push(e.kind);
        if e.kind == EventKind::Issued {
            break;
        }
    }
    assert!(
        seen.contains(&EventKind::Issued),
        "issued after the data loss: {seen:?}"
    );
    let versions =
        crate::faults::versions_per_name(&env, std::slice::from_ref(&job.job.name)).await?;
    assert_eq!(versions, vec![1], "one version");
    println!("redis data loss during validation: issued, versions {versions:?}");
    worker.stop().await;
    base.cleanup().await;
    Ok(())
}
