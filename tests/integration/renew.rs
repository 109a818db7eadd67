//! Issue 4: renewal at fleet scale.

use std::collections::BTreeSet;
use std::time::Duration;

use certfleet_common::event::EventKind;
use certfleet_common::{CertName, topology};
use certfleet_tests::acme_proxy::AcmeProxy;
use certfleet_tests::private::{self, Private, Service};
use certfleet_tests::{TestEnv, init_logging, run_ok};
use time::OffsetDateTime;

use crate::issue::issue_job;

/// Issues one certificate through `env`'s worker; returns its name, the
/// store and its pointer.
async fn issue_one(
    env: &TestEnv,
    label: &str,
) -> anyhow::Result<(CertName, certfleet_common::Store, certfleet_common::Pointer)> {
    let name = issue_all(env, &[label]).await?.remove(0);
    let store = env.store().await;
    let (pointer, _) = store
        .pointer(&name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no pointer for {name}"))?;
    Ok((name, store, pointer))
}

/// Issues one certificate per label through `env`'s worker; returns names.
async fn issue_all(env: &TestEnv, labels: &[&str]) -> anyhow::Result<Vec<CertName>> {
    let mut events = env.events("cert.issued.#").await?;
    let mut names = Vec::new();
    for l in labels {
        let job = issue_job(&[env.domain(l).await?])?;
        names.push(job.job.name.clone());
        env.publish_job(&job).await?;
    }
    let got = events.collect(labels.len(), Duration::from_secs(90)).await;
    anyhow::ensure!(
        got.len() == labels.len(),
        "issued {} of {}",
        got.len(),
        labels.len()
    );
    Ok(names)
}

/// `certfleet renew NAME --wait` gives a new serial, keeps history, and a
/// watching webserver swaps its files and runs its hook.
#[tokio::test]
async fn renew_name_wait_new_serial_and_watch_swaps() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("renew-name").await?;
    let worker = env.start_worker(&[]).await?;
    let (name, store, before) = issue_one(&env, "r").await?;
    let name = &name;

    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs)?;
    let hook_log = dir.path().join("hook.log");
    let mut watch = env
        .command("certfleet")?
        .args(["watch", "--queue", "renew-web", "--dir"])
        .arg(&certs)
        .arg("--on-change")
        .arg(format!(
            "echo \"$CERTFLEET_EVENT $CERTFLEET_CERT_SERIAL\" >> {}",
            hook_log.display()
        ))
        .spawn()?;
    crate::watch::wait_for_serial(&certs, name, &before.serial).await?;

    let mut events = env.events("cert.renewed.#").await?;
    env.certfleet(&["renew", name.as_str(), "--wait", "--timeout", "60s"])
        .await?;
    let event = events.next(Duration::from_secs(10)).await?;
    assert_eq!(event.kind, EventKind::Renewed);
    let cert = event
        .certificate
        .ok_or_else(|| anyhow::anyhow!("no cert"))?;
    let shown = |s: &str| certfleet_common::serial_display(s);
    assert_eq!(cert.previous_serial, Some(shown(&before.serial)));
    assert_ne!(cert.serial, shown(&before.serial));
    let (after, _) = store
        .pointer(name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no pointer"))?;
    assert_eq!(shown(&after.serial), cert.serial);
    assert_eq!(
        after.history,
        vec![before.version.clone()],
        "the old version is kept"
    );
    assert_eq!(store.list(&store.keys().versions(name)).await?.len(), 2);
    crate::watch::wait_for_serial(&certs, name, &cert.serial).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&hook_log).is_ok_and(|l| l.contains(&cert.serial)) {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "hook did not run for the renewal"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &watch.id().unwrap_or(0).to_string()])
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(10), watch.wait()).await;
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}

/// History is capped: with `CERTFLEET_HISTORY=1`, three renewals leave the
/// current version and one earlier one.
#[tokio::test]
async fn history_is_capped() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("renew-history").await?;
    let worker = env.start_worker(&[("CERTFLEET_HISTORY", "1")]).await?;
    let names = issue_all(&env, &["h"]).await?;
    for _ in 0..3 {
        run_ok(
            env.command("certfleet")?
                .env("CERTFLEET_HISTORY", "1")
                .args(["renew", names[0].as_str(), "--wait", "--timeout", "60s"]),
        )
        .await?;
    }
    let store = env.store().await;
    let versions = store.list(&store.keys().versions(&names[0])).await?;
    assert_eq!(versions.len(), 2, "{versions:?}");
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}

/// Published renew jobs, read back from the work queue: names.
async fn queued_names(env: &TestEnv) -> anyhow::Result<Vec<String>> {
    use lapin::options::{BasicAckOptions, BasicGetOptions};
    let conn = env.connect().await?;
    let ch = conn.create_channel().await?;
    let mut names = Vec::new();
    while let Some(msg) = ch
        .basic_get(topology::WORK_QUEUE.into(), BasicGetOptions::default())
        .await?
    {
        let envelope = certfleet_common::Envelope::decode(&msg.delivery.data)?;
        assert_eq!(envelope.kind, certfleet_common::JobKind::Renew);
        names.push(envelope.job.name.to_string());
        msg.delivery.ack(BasicAckOptions::default()).await?;
    }
    certfleet_common::amqp::close(&conn, 200, "done").await;
    names.sort();
    Ok(names)
}

/// A `--within` (whole hours) that covers the renewal time of every one
/// of `names`.
async fn window_covering(env: &TestEnv, names: &[CertName]) -> anyhow::Result<String> {
    let store = env.store().await;
    let mut latest = OffsetDateTime::now_utc();
    for n in names {
        let (p, _) = store
            .pointer(n)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no pointer"))?;
        latest = latest.max(p.renew_at);
    }
    Ok(format!(
        "{}h",
        (latest - OffsetDateTime::now_utc()).whole_hours() + 2
    ))
}

/// `renew --due --within` queues exactly the certificates due in that
/// window; two scans at once publish each name once; a second scan while
/// the jobs wait publishes nothing.
#[tokio::test]
async fn due_scan_exact_and_deduplicated() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("renew-due").await?;
    let worker = env.start_worker(&[]).await?;
    let names = issue_all(&env, &["d1", "d2", "d3"]).await?;
    worker.stop().await;
    // Nothing is due now; everything is due within the last renewal time.
    let text = env.certfleet(&["renew", "--due", "--dry-run"]).await?;
    for n in &names {
        assert!(!text.contains(n.as_str()), "{n} is not due yet: {text}");
    }
    let within = window_covering(&env, &names).await?;
    let due = ["renew", "--due", "--within", &within];
    let (a, b) = tokio::join!(env.certfleet(&due), env.certfleet(&due));
    a?;
    b?;
    let mut want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    want.sort();
    assert_eq!(
        queued_names(&env).await?,
        want,
        "each due name exactly once"
    );
    env.certfleet(&due).await?;
    assert!(
        queued_names(&env).await?.is_empty(),
        "already-queued names are not queued again"
    );
    env.cleanup().await;
    Ok(())
}

/// `renew --due --wait` waits for the renewals its scan queued: each name
/// gets a second version, and stdout is one summary line.
#[tokio::test]
async fn due_scan_waits_for_its_renewals() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("renew-due-wait").await?;
    let worker = env.start_worker(&[]).await?;
    let names = issue_all(&env, &["w1", "w2"]).await?;
    let within = window_covering(&env, &names).await?;
    let store = env.store().await;
    let out = env
        .certfleet(&[
            "renew",
            "--due",
            "--within",
            &within,
            "--wait",
            "--timeout",
            "60s",
        ])
        .await?;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(lines[0].starts_with("2 stored, 0 failed of 2 in"), "{out}");
    for n in &names {
        assert_eq!(
            store.list(&store.keys().versions(n)).await?.len(),
            2,
            "{n} renewed"
        );
    }
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}

/// Redis loses everything (FLUSHALL on a private Redis): `index rebuild`
/// restores the same due list from S3, and a due-scan alone notices the
/// lost index and rebuilds it.
#[tokio::test]
async fn flushall_then_rebuild_restores_due_list() -> anyhow::Result<()> {
    init_logging();
    let base = TestEnv::new("renew-flush").await?;
    let redis = Private::start(Service::Redis, &[]).await?;
    let env = private::env_for(&base, &[&redis]).await?;
    let worker = env.start_worker(&[]).await?;
    let names = issue_all(&env, &["f1", "f2", "f3"]).await?;
    worker.stop().await;
    let state = env.state()?;
    let far = OffsetDateTime::now_utc() + time::Duration::days(3650);
    let before: BTreeSet<(String, i64)> = state
        .index_due(far)
        .await?
        .into_iter()
        .map(|e| (e.name.to_string(), e.renew_at))
        .collect();
    assert_eq!(before.len(), names.len());
    let flush = || async {
        let mut c = state.conn().await?;
        let _: () = deadpool_redis::redis::cmd("FLUSHALL")
            .query_async(&mut *c)
            .await?;
        anyhow::Ok(())
    };
    flush().await?;
    assert!(state.index_due(far).await?.is_empty());
    env.certfleet(&["index", "rebuild"]).await?;
    let after: BTreeSet<(String, i64)> = state
        .index_due(far)
        .await?
        .into_iter()
        .map(|e| (e.name.to_string(), e.renew_at))
        .collect();
    assert_eq!(after, before);

    flush().await?;
    let text = env
        .certfleet(&["renew", "--due", "--dry-run", "--within", "3650d"])
        .await?;
    for n in &names {
        assert!(text.contains(n.as_str()), "{n} missing from {text}");
    }
    assert_eq!(
        state.index_due(far).await?.len(),
        names.len(),
        "the scan rebuilt the index"
    );
    env.cleanup().await;
    Ok(())
}

/// Plain Pebble has no ARI: the renewal time is when a third of the
/// lifetime remains, and renewals carry no `replaces`.
#[tokio::test]
async fn without_ari_renewal_time_is_two_thirds_of_lifetime() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("renew-noari").await?;
    let worker = env.start_worker(&[]).await?;
    let names = issue_all(&env, &["n"]).await?;
    let store = env.store().await;
    let (p, _) = store
        .pointer(&names[0])
        .await?
        .ok_or_else(|| anyhow::anyhow!("no pointer"))?;
    let expected = certfleet_worker::renewal::renewal_time(p.not_before, p.not_after, None, 0.0);
    assert_eq!(p.renew_at, expected);
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}

/// With ARI (a fixture in front of Pebble), the CA's window sets the
/// renewal time, and the renewal order says `replaces`.
#[tokio::test]
async fn ari_window_drives_renewal_and_replaces_is_sent() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("renew-ari").await?;
    let start = OffsetDateTime::now_utc() + time::Duration::days(20);
    let end = start + time::Duration::days(2);
    let proxy = AcmeProxy::start(&env).await?.with_ari(Some((start, end)));
    let vars = proxy.vars();
    let worker = env.start_worker(&private::pairs(&vars)).await?;
    let names = issue_all(&env, &["a"]).await?;
    let store = env.store().await;
    let (first, _) = store
        .pointer(&names[0])
        .await?
        .ok_or_else(|| anyhow::anyhow!("no pointer"))?;
    let start_s = start.unix_timestamp();
    let end_s = end.unix_timestamp();
    let got = first.renew_at.unix_timestamp();
    assert!(
        (start_s - 1..=end_s + 1).contains(&got),
        "renew_at {} outside the ARI window {start}..{end}",
        first.renew_at
    );
    let ari_id = first
        .ari_id
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no ARI id stored"))?;
    assert!(proxy.renewal_info_seen().contains(&ari_id));
    run_ok(env.command("certfleet")?.envs(vars.iter().cloned()).args([
        "renew",
        names[0].as_str(),
        "--wait",
        "--timeout",
        "60s",
    ]))
    .await?;
    assert_eq!(
        proxy.replaces_seen(),
        vec![ari_id],
        "the renewal order replaces the old certificate"
    );
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}

/// ARI followed over time: the window first suggested is weeks away; the
/// CA then moves it into the past (a mass revocation) and asks clients to
/// look again after 1 s. The worker reads it again on that schedule, moves
/// the renewal time into the new window, and the due-scan renews the
/// certificate, with `replaces`, within seconds, not weeks.
#[tokio::test]
async fn ari_window_moved_by_the_ca_is_followed() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("renew-ari-moved").await?;
    let start = OffsetDateTime::now_utc() + time::Duration::days(30);
    let proxy = AcmeProxy::start(&env)
        .await?
        .with_ari(Some((start, start + time::Duration::days(2))));
    proxy.set_ari_retry_after(1);
    let mut vars = proxy.vars();
    vars.push(("CERTFLEET_SCHEDULE_EVERY".into(), "1s".into()));
    vars.push(("CERTFLEET_ARI_RECHECK_MIN".into(), "1s".into()));
    let worker = env.start_worker(&private::pairs(&vars)).await?;
    let names = issue_all(&env, &["moved"]).await?;
    let store = env.store().await;
    let (first, _) = store
        .pointer(&names[0])
        .await?
        .ok_or_else(|| anyhow::anyhow!("no pointer"))?;
    assert!(
        first.renew_at >= start,
        "renew_at {} before the window",
        first.renew_at
    );
    let ari_id = first
        .ari_id
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no ARI id stored"))?;
    // Quiet for a few re-checks: the window did not move, nothing renews.
    let mut renewed = env.events("cert.renewed.#").await?;
    assert!(renewed.quiet_for(Duration::from_secs(3)).await.is_none());
    let asked = proxy
        .renewal_info_seen()
        .iter()
        .filter(|id| **id == ari_id)
        .count();
    assert!(
        asked >= 2,
        "the window was read {asked} times in 3 s at Retry-After: 1"
    );

    let now = OffsetDateTime::now_utc();
    proxy.set_ari_window(Some((
        now - time::Duration::hours(2),
        now - time::Duration::hours(1),
    )));
    let event = renewed.next(Duration::from_secs(30)).await?;
    assert_eq!(event.name, names[0]);
    assert_eq!(
        proxy.replaces_seen(),
        vec![ari_id],
        "the renewal replaces the old certificate"
    );
    let moved = crate::issue::metric(
        &env,
        worker.metrics_addr,
        "certfleet_ari_windows_moved_total",
    )
    .await?;
    assert!(moved >= 1.0, "{moved}");
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}

/// `certfleet-worker --schedule-every`: a certificate whose renewal time
/// has come is renewed without anyone running `renew`.
#[tokio::test]
async fn worker_scheduler_renews_what_is_due() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("renew-sched").await?;
    let worker = env
        .start_worker(&[("CERTFLEET_SCHEDULE_EVERY", "1s")])
        .await?;
    let names = issue_all(&env, &["s"]).await?;
    let mut events = env.events("cert.renewed.#").await?;
    // Make it due now.
    let state = env.state()?;
    state
        .index_put(
            &names[0],
            OffsetDateTime::now_utc() - time::Duration::minutes(1),
            certfleet_common::ChallengeType::Http01,
        )
        .await?;
    let event = events.next(Duration::from_secs(30)).await?;
    assert_eq!(event.name, names[0]);
    assert_eq!(event.kind, EventKind::Renewed);
    // Renewed once: the new renewal time is in the future again.
    assert!(events.quiet_for(Duration::from_secs(3)).await.is_none());
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}

/// The expiry index keeps each name's challenge type through puts, a
/// replace (rebuild) and a due-scan, and removes names cleanly.
#[tokio::test]
async fn expiry_index_round_trip() -> anyhow::Result<()> {
    use certfleet_common::ChallengeType::{Dns01, Http01};
    let env = TestEnv::new("renew-index").await?;
    let state = env.state()?;
    let now = OffsetDateTime::now_utc();
    let a = CertName::parse("a.example.com")?;
    let b = CertName::parse("b.example.com")?;
    state
        .index_put(&a, now - time::Duration::hours(1), Http01)
        .await?;
    state
        .index_put(&b, now - time::Duration::hours(2), Dns01)
        .await?;
    let due = state.index_due(now).await?;
    assert_eq!(due.len(), 2);
    assert_eq!(
        (due[0].name.clone(), due[0].challenge),
        (b.clone(), Dns01),
        "soonest first"
    );
    assert_eq!(due[1].challenge, Http01);
    // b switches to http-01; a is not due yet.
    state
        .index_put(&b, now - time::Duration::hours(2), Http01)
        .await?;
    state
        .index_put(&a, now + time::Duration::hours(1), Dns01)
        .await?;
    let due = state.index_due(now).await?;
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].challenge, Http01);
    let t = now.unix_timestamp();
    state
        .index_replace(&[(a.clone(), t - 5, Dns01), (b.clone(), t - 10, Http01)])
        .await?;
    let due = state.index_due(now).await?;
    assert_eq!(
        due.iter()
            .map(|d| (d.name.as_str(), d.challenge))
            .collect::<Vec<_>>(),
        vec![("b.example.com", Http01), ("a.example.com", Dns01)]
    );
    state.index_remove(&a).await?;
    state.index_replace(&[]).await?;
    assert!(
        state
            .index_due(now + time::Duration::days(1))
            .await?
            .is_empty()
    );
    assert!(
        !state.index_lost().await?,
        "an empty but built index is not lost"
    );
    env.cleanup().await;
    Ok(())
}

/// What Pebble's management API says of a serial: `Valid` or `Revoked`.
async fn pebble_status(env: &TestEnv, serial: String) -> anyhow::Result<String> {
    let (status, body) = env
        .http
        .send(
            http::Method::GET,
            &format!("{}/cert-status-by-serial/{serial}", env.stack.pebble_mgmt),
            None,
        )
        .await?;
    anyhow::ensure!(status == 200, "Pebble: {status} {body}");
    let v: serde_json::Value = serde_json::from_str(&body)?;
    Ok(v["Status"].as_str().unwrap_or_default().to_string())
}

/// Issue 17, item 4: `certfleet revoke NAME --reason keyCompromise
/// --key-file KEY` signs the revocation with the certificate's own key and
/// sends it from the CLI: with no worker running, Pebble reports the serial
/// revoked; a key that is not the certificate's is refused naming the file
/// (exit 64, nothing revoked); the queued revoke job, once a worker runs,
/// records it (`alreadyRevoked` at the CA) and announces it.
#[tokio::test]
async fn revoke_signed_with_the_certificate_key() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("revoke-key").await?;
    let worker = env.start_worker(&[]).await?;
    let (name, store, before) = issue_one(&env, "rk").await?;
    worker.stop().await;
    let (_, bundle) = store
        .current(&name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no bundle"))?;
    let dir = tempfile::tempdir()?;
    let key_file = dir.path().join("privkey.pem");
    std::fs::write(
        &key_file,
        store
            .open_key(&bundle)?
            .ok_or_else(|| anyhow::anyhow!("no key"))?
            .expose(),
    )?;
    let wrong_file = dir.path().join("wrong.pem");
    let wrong = tokio::process::Command::new("openssl")
        .args(["ecparam", "-genkey", "-name", "prime256v1", "-noout"])
        .output()
        .await?;
    std::fs::write(&wrong_file, &wrong.stdout)?;

    let revoke = |file: &std::path::Path| -> anyhow::Result<tokio::process::Command> {
        let mut cmd = env.command("certfleet")?;
        cmd.args([
            "revoke",
            name.as_str(),
            "--reason",
            "keyCompromise",
            "--key-file",
        ])
        .arg(file);
        Ok(cmd)
    };
    let out = revoke(&wrong_file)?.output().await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("wrong.pem") && stderr.contains("does not match"),
        "{stderr}"
    );
    assert_eq!(pebble_status(&env, before.serial.clone()).await?, "Valid");

    let out = revoke(&key_file)?.output().await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("with its own key"), "{stderr}");
    assert_eq!(
        pebble_status(&env, before.serial.clone()).await?,
        "Revoked",
        "revoked by the CLI, no worker running"
    );

    let mut events = env.events("cert.revoked.#").await?;
    let worker = env.start_worker(&[]).await?;
    let event = events.next(Duration::from_secs(30)).await?;
    assert_eq!(event.kind, EventKind::Revoked, "{event:?}");
    let (after, _) = store
        .pointer(&name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no pointer"))?;
    assert_eq!(
        after.revoked.map(|r| r.reason),
        Some("keyCompromise".to_string())
    );
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}

/// Issue 17, item 4: `certfleet revoke NAME --reissue --wait` renews first,
/// then revokes the superseded serial at the CA: Pebble reports the old
/// serial revoked and the new one valid, the pointer names the new
/// version (not revoked), the old bundle is marked revoked, the event
/// names the old serial, and the name stays in the renewal schedule.
#[tokio::test]
async fn revoke_reissue_renews_first_then_revokes_the_old() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("revoke-reissue").await?;
    let worker = env.start_worker(&[]).await?;
    let (name, store, before) = issue_one(&env, "rr").await?;
    let name = &name;
    let mut events = env.events("cert.revoked.#").await?;
    env.certfleet(&[
        "revoke",
        name.as_str(),
        "--reissue",
        "--reason",
        "superseded",
        "--wait",
        "--timeout",
        "90s",
    ])
    .await?;
    let (after, _) = store
        .pointer(name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no pointer"))?;
    assert_ne!(after.serial, before.serial, "renewed first");
    assert!(after.revoked.is_none(), "the new version is not revoked");
    assert!(
        after.history.contains(&before.version),
        "{:?}",
        after.history
    );
    assert_eq!(pebble_status(&env, before.serial.clone()).await?, "Revoked");
    assert_eq!(pebble_status(&env, after.serial.clone()).await?, "Valid");
    let old = store
        .bundle(&store.keys().bundle(name, &before.version))
        .await?;
    assert_eq!(
        old.revoked.map(|r| r.reason),
        Some("superseded".to_string())
    );
    let event = events.next(Duration::from_secs(10)).await?;
    assert_eq!(event.kind, EventKind::Revoked, "{event:?}");
    assert_eq!(
        event.certificate.map(|c| (c.serial, c.version)),
        Some((
            certfleet_common::serial_display(&before.serial),
            before.version.clone()
        ))
    );
    let due = env
        .state()?
        .index_due(OffsetDateTime::now_utc() + time::Duration::days(3650))
        .await?;
    assert!(due.iter().any(|d| &d.name == name), "still renewed");
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}

/// Issue 17, item 4: `certfleet revoke NAME --reason keyCompromise --wait`
/// revokes the current certificate through the CA (Pebble then reports its
/// serial revoked), records it in the pointer, announces
/// `cert.revoked.<name>` and takes the name out of the renewal index.
#[tokio::test]
async fn revoke_at_the_ca_recorded_and_announced() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("revoke").await?;
    let worker = env.start_worker(&[]).await?;
    let (name, store, before) = issue_one(&env, "rv").await?;
    let name = &name;
    let status_of = |serial: String| pebble_status(&env, serial);
    assert_eq!(status_of(before.serial.clone()).await?, "Valid");
    let mut events = env.events("cert.revoked.#").await?;
    env.certfleet(&[
        "revoke",
        name.as_str(),
        "--reason",
        "keyCompromise",
        "--wait",
        "--timeout",
        "60s",
    ])
    .await?;
    let event = events.next(Duration::from_secs(10)).await?;
    assert_eq!(event.kind, EventKind::Revoked, "{event:?}");
    assert_eq!(
        event.certificate.map(|c| c.serial),
        Some(certfleet_common::serial_display(&before.serial))
    );
    assert_eq!(status_of(before.serial.clone()).await?, "Revoked");
    let (after, _) = store
        .pointer(name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no pointer"))?;
    let revoked = after
        .revoked
        .ok_or_else(|| anyhow::anyhow!("not recorded"))?;
    assert_eq!(revoked.reason, "keyCompromise");
    assert_eq!(after.serial, before.serial);
    let due = env
        .state()?
        .index_due(OffsetDateTime::now_utc() + time::Duration::days(3650))
        .await?;
    assert!(!due.iter().any(|d| &d.name == name), "no longer renewed");
    // Again: the CA says it is revoked already; nothing breaks.
    env.certfleet(&["revoke", name.as_str(), "--wait", "--timeout", "60s"])
        .await?;
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}
