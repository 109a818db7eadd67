//! Issue 3: a certificate end to end.

use std::time::Duration;

use certfleet_common::event::EventKind;
use certfleet_common::{CertName, ChallengeType, Envelope, Job, JobKind, KeyType, now_ms};
use certfleet_tests::{TestEnv, init_logging, pki};

pub(crate) fn issue_job(domains: &[String]) -> anyhow::Result<Envelope> {
    issue_job_with(domains, ChallengeType::Http01)
}

/// An issue job for `domains` proven by `challenge` (the name is the first
/// domain's).
pub(crate) fn issue_job_with(
    domains: &[String],
    challenge: ChallengeType,
) -> anyhow::Result<Envelope> {
    Ok(Envelope::new(
        JobKind::Issue,
        Job {
            name: CertName::from_domain(&domains[0])?,
            domains: domains.to_vec(),
            key_type: KeyType::EcdsaP256,
            challenge,
            reason: "test".into(),
            options: Default::default(),
        },
        now_ms(),
    ))
}

/// Publishes `n` issue jobs for fresh names `<prefix><i>`; returns their names.
pub(crate) async fn publish_issues(
    env: &TestEnv,
    prefix: &str,
    n: usize,
) -> anyhow::Result<Vec<CertName>> {
    let mut names = Vec::with_capacity(n);
    for i in 0..n {
        let job = issue_job(&[env.domain(&format!("{prefix}{i}")).await?])?;
        names.push(job.job.name.clone());
        env.publish_job(&job).await?;
    }
    Ok(names)
}

/// Waits until the worker stored an order record with the order's URL for
/// `name` (the order exists at the CA).
pub(crate) async fn wait_for_order(env: &TestEnv, name: &CertName) -> anyhow::Result<()> {
    let state = env.state()?;
    let key = state.keys().order(name);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut c = state.conn().await?;
        let record: Option<String> = deadpool_redis::redis::cmd("GET")
            .arg(&key)
            .query_async(&mut *c)
            .await?;
        // The record is written before the new-order request, and gets the
        // order's URL once the CA has answered.
        let has_url = record
            .and_then(|r| serde_json::from_str::<serde_json::Value>(&r).ok())
            .is_some_and(|r| r["url"].is_string());
        if has_url {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no order was created for {name}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Worker + Pebble with real http-01 validation: the bundle in S3 chains
/// to Pebble's root, the key matches, the SANs are the requested names.
#[tokio::test]
async fn worker_issues_with_real_http01() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("issue-basic").await?;
    let worker = env.start_worker(&[]).await?;
    let domains = vec![env.domain("www").await?, env.domain("api").await?];
    let mut events = env.events("cert.#").await?;
    let job = issue_job(&domains)?;
    env.publish_job(&job).await?;
    let event = events.next(Duration::from_secs(60)).await?;
    assert_eq!(event.kind, EventKind::Issued, "{event:?}");
    assert_eq!(event.job_id, job.job_id);
    let store = env.store().await;
    let (pointer, bundle) = store
        .current(&job.job.name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no pointer"))?;
    let cert = event
        .certificate
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no cert info"))?;
    // Events carry the serial as the certificate encodes it (openssl's
    // `-serial`): whole bytes, upper case.
    assert_eq!(
        cert.serial,
        certfleet_common::serial_display(&pointer.serial)
    );
    assert_eq!(
        cert.serial,
        certfleet_common::serial_display(&pki::serial(&bundle.cert_pem)?)
    );
    assert!(
        cert.serial.len() % 2 == 0 && !cert.serial.chars().any(|c| c.is_ascii_lowercase()),
        "{}",
        cert.serial
    );
    // The same as openssl prints it.
    let mut openssl = tokio::process::Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = openssl.stdin.take() {
        use tokio::io::AsyncWriteExt as _;
        stdin.write_all(bundle.cert_pem.as_bytes()).await?;
    }
    let printed = String::from_utf8(openssl.wait_with_output().await?.stdout)?;
    assert_eq!(printed.trim(), format!("serial={}", cert.serial));
    let key = store
        .open_key(&bundle)?
        .ok_or_else(|| anyhow::anyhow!("the bundle holds no key"))?;
    assert!(pki::key_matches(key.expose(), &bundle.cert_pem)?);
    let mut want = domains.clone();
    want.sort();
    assert_eq!(pki::sans(&bundle.cert_pem)?, want);
    let root = env.pebble_root().await?;
    pki::verify_chain(
        &format!("{}{}", bundle.cert_pem, bundle.chain_pem),
        &root,
        &domains[1],
    )?;
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}

/// Two workers on one queue, ten certificates: each issued exactly once
/// (one version in S3, one event).
#[tokio::test]
async fn two_workers_ten_certificates_each_once() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("issue-ten").await?;
    let a = env.start_worker(&[("CERTFLEET_CONCURRENCY", "4")]).await?;
    let b = env.start_worker(&[("CERTFLEET_CONCURRENCY", "4")]).await?;
    let mut events = env.events("cert.#").await?;
    let names = publish_issues(&env, "h", 10).await?;
    let got = events.collect(10, Duration::from_secs(120)).await;
    assert_eq!(got.len(), 10, "events: {got:?}");
    assert!(got.iter().all(|e| e.kind == EventKind::Issued));
    let mut seen: Vec<String> = got.iter().map(|e| e.name.to_string()).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 10, "one event per certificate");
    assert!(
        events.quiet_for(Duration::from_secs(2)).await.is_none(),
        "no extra event"
    );
    let store = env.store().await;
    for name in &names {
        let versions = store.list(&store.keys().versions(name)).await?;
        assert_eq!(versions.len(), 1, "{name}: {versions:?}");
    }
    // Both workers took part (prefetch 4 each, ten jobs).
    let ma = metric(&env, a.metrics_addr, "certfleet_jobs_handled_total").await?;
    let mb = metric(&env, b.metrics_addr, "certfleet_jobs_handled_total").await?;
    assert!(ma > 0.0 && mb > 0.0, "worker a handled {ma}, worker b {mb}");
    a.stop().await;
    b.stop().await;
    env.cleanup().await;
    Ok(())
}

/// Sums a metric family from a worker's /metrics.
pub(crate) async fn metric(
    env: &TestEnv,
    addr: std::net::SocketAddr,
    name: &str,
) -> anyhow::Result<f64> {
    let (_, body) = env
        .http
        .send(http::Method::GET, &format!("http://{addr}/metrics"), None)
        .await?;
    Ok(body
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Garbage and an envelope from the future are dead-lettered with a
/// reason; the next valid job still succeeds.
#[tokio::test]
async fn garbage_is_dead_lettered_and_work_goes_on() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("issue-garbage").await?;
    let worker = env.start_worker(&[]).await?;
    let mut events = env.events("cert.#").await?;
    env.publish_raw("job.issue.http-01", b"\x00\xffnot a job")
        .await?;
    let mut future = issue_job(&[env.domain("future").await?])?.encode()?;
    future[0] = 9;
    env.publish_raw("job.issue.http-01", &future).await?;
    let job = issue_job(&[env.domain("valid").await?])?;
    env.publish_job(&job).await?;
    let event = events.next(Duration::from_secs(60)).await?;
    assert_eq!(event.job_id, job.job_id);
    assert_eq!(event.kind, EventKind::Issued);
    let dead = dead_letters(&env, 2).await?;
    assert_eq!(dead.len(), 2);
    assert!(
        dead.iter().all(|(kind, _)| kind == "undecodable"),
        "{dead:?}"
    );
    assert!(
        dead.iter()
            .any(|(_, reason)| reason.contains("unknown envelope version 9")),
        "{dead:?}"
    );
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}

/// Reads (and acknowledges) up to `n` messages of the dead-letter queue:
/// (error kind, reason) headers.
pub(crate) async fn dead_letters(env: &TestEnv, n: usize) -> anyhow::Result<Vec<(String, String)>> {
    use certfleet_common::topology::{DEAD_QUEUE, HDR_ERROR_KIND, HDR_REASON, header_str};
    use lapin::options::{BasicAckOptions, BasicGetOptions};
    let conn = env.connect().await?;
    let ch = conn.create_channel().await?;
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while out.len() < n && tokio::time::Instant::now() < deadline {
        match ch
            .basic_get(DEAD_QUEUE.into(), BasicGetOptions::default())
            .await?
        {
            Some(msg) => {
                let h = msg.delivery.properties.headers().as_ref();
                out.push((
                    header_str(h, HDR_ERROR_KIND).unwrap_or_default(),
                    header_str(h, HDR_REASON).unwrap_or_default(),
                ));
                msg.delivery.ack(BasicAckOptions::default()).await?;
            }
            None => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    certfleet_common::amqp::close(&conn, 200, "done").await;
    Ok(out)
}

/// The documented Python subscriber parses a real event (docs/events.md).
#[tokio::test]
async fn python_subscriber_parses_a_real_event() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("issue-python").await?;
    let worker = env.start_worker(&[]).await?;
    let mut events = env.events("cert.#").await?;
    let job = issue_job(&[env.domain("py").await?])?;
    env.publish_job(&job).await?;
    let raw = events.next_raw(Duration::from_secs(60)).await?;
    worker.stop().await;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("event.json");
    std::fs::write(&path, &raw)?;
    let examples = certfleet_tests::repo_root().join("docs/examples");
    let script = "import sys, json\n\
        sys.path.insert(0, sys.argv[1])\n\
        from subscriber import parse_event\n\
        e = parse_event(open(sys.argv[2], 'rb').read())\n\
        print(json.dumps({'name': e['name'], 'kind': e['kind'], 'serial': e['certificate']['serial']}))\n";
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&examples)
        .arg(&path)
        .output()
        .await?;
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let event = certfleet_common::Event::from_json(&raw)?;
    assert_eq!(parsed["name"], event.name.as_str());
    assert_eq!(parsed["kind"], "issued");
    assert_eq!(
        parsed["serial"],
        event
            .certificate
            .as_ref()
            .map(|c| c.serial.clone())
            .unwrap_or_default()
    );
    env.cleanup().await;
    Ok(())
}
