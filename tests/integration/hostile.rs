//! Hostile input: nothing a message or the CA sends may stop a worker.
//!
//! Bodies whose length prefixes claim huge strings or lists, a body of many
//! MiB, an unknown envelope version and valid envelopes with junk in them
//! are dead-lettered with a reason, beside a real job that completes, while
//! the worker process (the real binary) stays up. Headers and `Retry-After`
//! values that used to overflow (a panic in debug builds, which left the
//! delivery unsettled) are taken as the longest wait or ignored.

use std::time::Duration;

use anyhow::{Context, anyhow, bail, ensure};
use certfleet_common::event::EventKind;
use certfleet_common::job::MAX_BODY_LEN;
use certfleet_common::topology::{self, DEAD_QUEUE, HDR_NOT_BEFORE, WORK_QUEUE};
use certfleet_common::{CertName, Envelope, amqp};
use certfleet_tests::acme_proxy::AcmeProxy;
use certfleet_tests::{TestEnv, init_logging, private};
use tokio::time::Instant;

use crate::issue::{issue_job, metric};

const ROUTING_KEY: &str = "job.issue.http-01";

/// `envelope` encoded, with the varint length prefix that starts at the
/// first occurrence of `field` (its bytes as encoded) replaced by the
/// 9-byte varint of `claim` (0xfd, then the u64 little-endian).
fn claiming(envelope: &Envelope, field: &[u8], claim: u64) -> anyhow::Result<Vec<u8>> {
    let bytes = envelope.encode()?;
    let at = bytes
        .windows(field.len())
        .position(|w| w == field)
        .ok_or_else(|| anyhow!("field not in the encoding"))?;
    let mut out = bytes[..at].to_vec();
    out.push(0xfd);
    out.extend_from_slice(&claim.to_le_bytes());
    out.extend_from_slice(&bytes[at + 1..]);
    Ok(out)
}

/// A job for `name` with `domains` as given (no validation: the point).
fn junk_job(name: &str, domains: Vec<String>) -> anyhow::Result<Envelope> {
    let mut e = issue_job(&["placeholder.example.com".to_string()])?;
    e.job.name = CertName::parse(name)?;
    e.job.domains = domains;
    Ok(e)
}

/// Fails as soon as the child exits; otherwise the result of `body`.
async fn while_alive<T>(
    child: &mut tokio::process::Child,
    body: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::select! {
        status = child.wait() => bail!("the worker exited: {status:?}"),
        r = body => r,
    }
}

/// Hostile bodies beside a real job, against the real worker binary: each
/// hostile message ends in `certfleet.dead` with a reason, the real job is
/// issued, `certfleet dlq list` reads them all, and the worker never exits.
/// Before bounded decoding, the first body (a name claiming 1 TiB) aborted
/// the process with an allocation failure.
#[tokio::test]
async fn hostile_jobs_are_dead_lettered_and_the_worker_lives() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("hostile").await?;
    let mut worker = env
        .command("certfleet-worker")?
        .env("CERTFLEET_CONCURRENCY", "4")
        .spawn()?;
    let pid = worker.id().ok_or_else(|| anyhow!("no pid"))?;
    let result = while_alive(&mut worker, async {
        let deadline = Instant::now() + Duration::from_secs(20);
        while env.queue_len(WORK_QUEUE).await.is_err() {
            ensure!(
                Instant::now() < deadline,
                "the worker never declared its queue"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut events = env.events("cert.#").await?;

        // (a) Length prefixes that claim huge allocations: the certificate
        // name's string (1 TiB) and the domain list (2^63 entries). The
        // envelope: version, job id, kind, created at, attempt, then the
        // name (length 9, "hostile-a") and the domains (1 entry, length 15).
        let base = junk_job("hostile-a", vec!["www.example.com".into()])?;
        let huge_string = claiming(&base, b"\x09hostile-a", 1 << 40)?;
        let huge_list = claiming(&base, b"\x01\x0fwww.example.com", u64::MAX / 2)?;
        // (b) 20 MiB, starting like a version-1 envelope.
        let mut big = vec![0x01u8];
        big.resize(20 << 20, b'x');
        // (c) An envelope version this build does not read.
        let mut future = issue_job(&["future.example.com".to_string()])?.encode()?;
        future[0] = 7;
        // (d) Valid envelopes with junk inside.
        let not_a_domain = junk_job("junk1", vec!["not a domain!!".into()])?;
        let ip = junk_job("junk2", vec!["192.0.2.7".into()])?;
        let too_many = junk_job(
            "junk3",
            (0..101).map(|i| format!("h{i}.example.com")).collect(),
        )?;
        for body in [&huge_string, &huge_list, &big, &future] {
            env.publish_raw(ROUTING_KEY, body).await?;
        }
        for junk in [&not_a_domain, &ip, &too_many] {
            env.publish_raw(ROUTING_KEY, &junk.encode()?).await?;
        }
        let real = issue_job(&[env.domain("real").await?])?;
        env.publish_job(&real).await?;

        // The real job completes; the junk jobs fail with kind "input".
        let mut failed = Vec::new();
        let until = Instant::now() + Duration::from_secs(120);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let event = events
                .next(left)
                .await
                .context("waiting for the real job")?;
            if event.job_id == real.job_id {
                ensure!(event.kind == EventKind::Issued, "{event:?}");
                break;
            }
            ensure!(event.kind == EventKind::Failed, "{event:?}");
            failed.push(event);
        }
        let missing = 3usize.saturating_sub(failed.len());
        failed.extend(events.collect(missing, Duration::from_secs(20)).await);
        let mut failed_ids: Vec<_> = failed.iter().map(|e| e.job_id).collect();
        failed_ids.sort();
        let mut junk_ids = vec![not_a_domain.job_id, ip.job_id, too_many.job_id];
        junk_ids.sort();
        assert_eq!(failed_ids, junk_ids, "{failed:?}");
        assert!(
            failed
                .iter()
                .all(|e| e.error.as_ref().is_some_and(|f| f.kind == "input")),
            "{failed:?}"
        );

        // Every hostile message is parked, and `dlq list` reads them all.
        let parked = env.queue_len_settled(DEAD_QUEUE, 7).await?;
        assert_eq!(parked, 7, "dead letters");
        let listing = env.certfleet(&["dlq", "list"]).await?;
        println!("{listing}");
        let lines: Vec<&str> = listing.lines().skip(1).collect();
        assert_eq!(lines.len(), 7, "{listing}");
        let line_of = |needle: &str| {
            lines
                .iter()
                .find(|l| l.contains(needle))
                .copied()
                .unwrap_or_default()
        };
        for (job, why) in [
            (&not_a_domain, "contains ' '"),
            (&ip, "IP address"),
            (&too_many, "101 names given"),
        ] {
            let line = line_of(&job.job_id.to_string());
            assert!(line.contains("permanent"), "{listing}");
            assert!(line.contains("invalid job:"), "{listing}");
            assert!(line.contains(why), "{why}: {listing}");
        }
        let undecodable: Vec<&&str> = lines
            .iter()
            .filter(|l| l.contains("(undecodable)"))
            .collect();
        assert_eq!(undecodable.len(), 4, "{listing}");
        assert!(
            undecodable
                .iter()
                .all(|l| l.contains("undecodable job body")
                    || l.contains("unknown envelope version")),
            "{listing}"
        );
        assert!(
            line_of(&format!(
                "{} bytes, more than the limit of {MAX_BODY_LEN}",
                20 << 20
            ))
            .contains("undecodable"),
            "{listing}"
        );
        assert!(
            !line_of("unknown envelope version 7").is_empty(),
            "{listing}"
        );
        // The string claim is refused by the decode limit before any
        // allocation (the list's length only bounds a loop that runs out
        // of input).
        assert_eq!(
            undecodable
                .iter()
                .filter(|l| l.contains("LimitExceeded"))
                .count(),
            1,
            "the 1 TiB string: {listing}"
        );
        Ok(())
    })
    .await;
    let alive = std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .status()?
        .success();
    let exited = worker.try_wait()?;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(20), worker.wait()).await;
    env.cleanup().await;
    result?;
    assert!(
        alive && exited.is_none(),
        "the worker is still running: {exited:?}"
    );
    Ok(())
}

/// A job whose `x-certfleet-not-before` header holds an extreme value: in
/// the past (`i64::MIN`) it runs at once, in the future (`i64::MAX`) it waits
/// in the longest delay queue with a not-before at most
/// `topology::MAX_DELAY` away. `i64::MIN - now` used to overflow (a panic
/// in debug builds that left the delivery unsettled, the job never done).
#[tokio::test]
async fn extreme_not_before_headers() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("hostile-nbf").await?;
    let worker = env.start_worker(&[]).await?;
    let mut events = env.events("cert.#").await?;
    let past = issue_job(&[env.domain("past").await?])?;
    let future = issue_job(&[env.domain("future").await?])?;
    let conn = env.connect().await?;
    let publisher = amqp::Publisher::new(&conn).await?;
    for (job, not_before) in [(&past, i64::MIN), (&future, i64::MAX)] {
        let body = job.encode()?;
        let id = job.job_id.to_string();
        let mut out = amqp::Outgoing::job(ROUTING_KEY, &body, Some(&id));
        out.headers = Some(topology::headers(&[], &[(HDR_NOT_BEFORE, not_before)]));
        publisher.publish(out).await?;
    }
    amqp::close(&conn, 200, "done").await;
    let event = events.next(Duration::from_secs(60)).await?;
    assert_eq!(
        (event.job_id, event.kind),
        (past.job_id, EventKind::Issued),
        "{event:?}"
    );
    let longest = topology::retry_queue(topology::RETRY_DELAYS[topology::RETRY_DELAYS.len() - 1].0);
    assert_eq!(
        env.queue_len_settled(&longest, 1).await?,
        1,
        "the future job waits"
    );
    let not_before = delayed_not_before(&env, &longest).await?;
    let latest = certfleet_common::now_ms() + topology::MAX_DELAY.as_millis() as i64;
    assert!(
        not_before <= latest && not_before > latest - 60_000,
        "not-before {not_before}, at most {latest}"
    );
    let panicked = metric(&env, worker.metrics_addr, "certfleet_jobs_panicked_total").await?;
    assert_eq!(panicked, 0.0);
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}

/// The `x-certfleet-not-before` of the message waiting in `queue`
/// (read and given back).
async fn delayed_not_before(env: &TestEnv, queue: &str) -> anyhow::Result<i64> {
    use lapin::options::{BasicGetOptions, BasicNackOptions};
    let conn = env.connect().await?;
    let ch = conn.create_channel().await?;
    let got = ch
        .basic_get(queue.into(), BasicGetOptions::default())
        .await?
        .ok_or_else(|| anyhow!("{queue} is empty"))?;
    let not_before =
        topology::header_i64(got.delivery.properties.headers().as_ref(), HDR_NOT_BEFORE);
    got.delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        })
        .await?;
    amqp::close(&conn, 200, "done").await;
    not_before.ok_or_else(|| anyhow!("no not-before header"))
}

/// `429 rateLimited` with `Retry-After: 18446744073709551615` (u64::MAX
/// seconds): the job is deferred for `topology::MAX_DELAY` instead of
/// panicking on `now + u64::MAX s`, and the worker goes on with the next job.
#[tokio::test]
async fn absurd_retry_after_defers_for_the_longest_delay() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("hostile-retry").await?;
    let proxy = AcmeProxy::start(&env).await?;
    let vars = proxy.vars();
    let worker = env
        .start_worker(&[private::pairs(&vars), vec![("CERTFLEET_CONCURRENCY", "1")]].concat())
        .await?;
    let mut events = env.events("cert.#").await?;
    proxy.reject_new_orders(1, u64::MAX);
    let limited = issue_job(&[env.domain("limited").await?])?;
    env.publish_job(&limited).await?;
    let next = issue_job(&[env.domain("next").await?])?;
    env.publish_job(&next).await?;
    // With one job at a time, the next job runs only once the first one
    // was settled.
    let event = events.next(Duration::from_secs(60)).await?;
    assert_eq!((event.job_id, event.kind), (next.job_id, EventKind::Issued));
    assert_eq!(proxy.new_orders_rejected(), 1);
    let longest = topology::retry_queue(topology::RETRY_DELAYS[topology::RETRY_DELAYS.len() - 1].0);
    assert_eq!(env.queue_len_settled(&longest, 1).await?, 1, "deferred");
    let not_before = delayed_not_before(&env, &longest).await?;
    let latest = certfleet_common::now_ms() + topology::MAX_DELAY.as_millis() as i64;
    assert!(
        not_before <= latest && not_before > latest - 120_000,
        "not-before {not_before}, at most {latest}"
    );
    let panicked = metric(&env, worker.metrics_addr, "certfleet_jobs_panicked_total").await?;
    assert_eq!(panicked, 0.0);
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}

/// An order polled with `Retry-After: 18446744073709551615`: instant-acme
/// adds it to the clock unchecked (a panic that left the delivery
/// unsettled, the job never done); the worker's client caps it first, and
/// the job is issued.
#[tokio::test]
async fn absurd_retry_after_on_an_order_poll() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("hostile-poll").await?;
    let proxy = AcmeProxy::start(&env).await?;
    let vars = proxy.vars();
    let worker = env.start_worker(&private::pairs(&vars)).await?;
    let mut events = env.events("cert.#").await?;
    proxy.retry_after_on_orders(1, &u64::MAX.to_string());
    let job = issue_job(&[env.domain("poll").await?])?;
    env.publish_job(&job).await?;
    let event = events.next(Duration::from_secs(90)).await?;
    assert_eq!((event.job_id, event.kind), (job.job_id, EventKind::Issued));
    assert_eq!(proxy.order_retry_afters_sent(), 1);
    let panicked = metric(&env, worker.metrics_addr, "certfleet_jobs_panicked_total").await?;
    assert_eq!(panicked, 0.0);
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}
