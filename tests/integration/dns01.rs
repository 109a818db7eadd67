//! Issue 10: dns-01 end to end. Pebble validates through the stack's BIND
//! 9 (authoritative for `dns01.test`, `dns02.test` and `acmedns.test`),
//! where each provider puts its TXT values: RFC 2136 updates signed with
//! TSIG, and the DigitalOcean, Cloudflare and acme-dns APIs through local
//! servers that implement them and apply every change to that BIND
//! (`certfleet_tests::dns`), and an operator's `exec` hook running
//! `nsupdate`.

use std::time::Duration;

use certfleet_common::event::EventKind;
use certfleet_common::{CertName, ChallengeType, Envelope};
use certfleet_tests::{TestEnv, init_logging, pki};

/// A dns-01 issue job for `domains` (the name is the first one's).
pub(crate) fn dns_job(domains: &[String]) -> anyhow::Result<Envelope> {
    crate::issue::issue_job_with(domains, ChallengeType::Dns01)
}

/// `_acme-challenge.<domain>` without a wildcard label.
pub(crate) fn challenge_name(domain: &str) -> String {
    format!("_acme-challenge.{}", domain.trim_start_matches("*."))
}

/// The stored certificate of `job` chains to Pebble's root, its key
/// matches, and it names exactly `domains`.
async fn assert_stored(env: &TestEnv, job: &Envelope, domains: &[String]) -> anyhow::Result<()> {
    let store = env.store().await;
    let (_, bundle) = store
        .current(&job.job.name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no pointer for {}", job.job.name))?;
    let key = store
        .open_key(&bundle)?
        .ok_or_else(|| anyhow::anyhow!("the bundle holds no key"))?;
    assert!(pki::key_matches(key.expose(), &bundle.cert_pem)?);
    let mut want = domains.to_vec();
    want.sort();
    assert_eq!(pki::sans(&bundle.cert_pem)?, want);
    let root = env.pebble_root().await?;
    let plain = domains
        .iter()
        .find(|d| !d.starts_with("*."))
        .unwrap_or(&domains[0]);
    pki::verify_chain(
        &format!("{}{}", bundle.cert_pem, bundle.chain_pem),
        &root,
        plain,
    )?;
    Ok(())
}

/// Apex and wildcard in one certificate: both TXT values live at
/// `_acme-challenge.<apex>` at once (single values added, never the set
/// replaced), Pebble validates both through BIND, the chain verifies, both
/// names are in the SANs, and no value is left afterwards.
#[tokio::test]
async fn rfc2136_apex_and_wildcard_in_one_certificate() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("dns-wild").await?;
    let worker = env.start_worker_with(&env.rfc2136_vars(&[])).await?;
    let apex = env.dns_domain("site");
    let domains = vec![apex.clone(), format!("*.{apex}")];
    let mut events = env.events("cert.#").await?;
    let job = dns_job(&domains)?;
    env.publish_job(&job).await?;
    let event = events.next(Duration::from_secs(90)).await?;
    assert_eq!(event.kind, EventKind::Issued, "{event:?}");
    assert_stored(&env, &job, &domains).await?;
    assert_eq!(
        env.dig_txt(&challenge_name(&apex)).await?,
        Vec::<String>::new(),
        "every TXT value removed"
    );
    // The propagation wait and the job are measured with their challenge.
    let waits = crate::issue::metric(
        &env,
        worker.metrics_addr,
        "certfleet_dns01_propagation_seconds_count{provider=\"rfc2136\"}",
    )
    .await?;
    assert!(
        (waits - 1.0).abs() < f64::EPSILON,
        "propagation waits: {waits}"
    );
    let stored = crate::issue::metric(
        &env,
        worker.metrics_addr,
        "certfleet_jobs_handled_total{challenge=\"dns-01\",kind=\"issue\",outcome=\"stored\"}",
    )
    .await?;
    assert!(
        (stored - 1.0).abs() < f64::EPSILON,
        "stored dns-01 jobs: {stored}"
    );
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}

/// The worker variables of the `exec` provider running
/// `tests/dns/nsupdate-hook.sh` against the stack's BIND; `sleep` makes the
/// hook linger after presenting.
pub(crate) fn exec_vars(
    env: &TestEnv,
    sleep: Option<&str>,
) -> anyhow::Result<Vec<(String, String)>> {
    let secret = std::fs::read_to_string(&env.stack.tsig_secret_file)?;
    let server = env.stack.bind.replace(':', " ");
    let mut vars = vec![
        ("CERTFLEET_DNS01_PROVIDER".to_string(), "exec".to_string()),
        (
            "CERTFLEET_DNS01_EXEC".into(),
            certfleet_tests::dns::nsupdate_hook(),
        ),
        (
            "CERTFLEET_DNS01_EXEC_ENV".into(),
            "NSUPDATE_KEY NSUPDATE_SERVER NSUPDATE_KEYNAME HOOK_SLEEP".into(),
        ),
        ("NSUPDATE_KEY".into(), secret.trim().to_string()),
        ("NSUPDATE_SERVER".into(), server),
        ("NSUPDATE_KEYNAME".into(), env.stack.tsig_key.clone()),
        ("CERTFLEET_DNS01_RESOLVERS".into(), env.stack.bind.clone()),
        ("CERTFLEET_DNS01_PROPAGATION_TIMEOUT".into(), "30s".into()),
    ];
    if let Some(s) = sleep {
        vars.push(("HOOK_SLEEP".into(), s.to_string()));
    }
    Ok(vars)
}

/// Issues `domains` with a worker of `vars`: the certificate is stored and
/// verifies, and no TXT value is left at any challenge name.
async fn issue_through(
    env: &TestEnv,
    vars: &[(String, String)],
    domains: &[String],
) -> anyhow::Result<()> {
    let worker = env.start_worker_with(vars).await?;
    let mut events = env.events("cert.#").await?;
    let job = dns_job(domains)?;
    env.publish_job(&job).await?;
    let event = events.next(Duration::from_secs(90)).await?;
    assert_eq!(event.kind, EventKind::Issued, "{event:?}");
    assert_stored(env, &job, domains).await?;
    for d in domains {
        assert_eq!(
            env.dig_txt(&challenge_name(d)).await?,
            Vec::<String>::new(),
            "value left at {}",
            challenge_name(d)
        );
    }
    worker.stop().await;
    Ok(())
}

/// Issues `<label>` and its wildcard through a provider whose API is a
/// local server (`provider` holds its variables); returns the challenge
/// name, absolute, to ask that server what it still holds.
async fn issue_through_api(
    env: &TestEnv,
    label: &str,
    provider: &[(&str, &str)],
) -> anyhow::Result<String> {
    let apex = env.dns_domain(label);
    issue_through(
        env,
        &env.rfc2136_vars(provider),
        &[apex.clone(), format!("*.{apex}")],
    )
    .await?;
    Ok(format!("{}.", challenge_name(&apex)))
}

/// 20 names of one zone at once, two workers: every order validates (none
/// fails because another order removed its value), one version each, and
/// every value is removed.
#[tokio::test]
async fn twenty_names_of_one_zone_two_workers() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("dns-twenty").await?;
    let vars = env.rfc2136_vars(&[("CERTFLEET_CONCURRENCY", "10")]);
    let a = env.start_worker_with(&vars).await?;
    let b = env.start_worker_with(&vars).await?;
    let mut events = env.events("cert.#").await?;
    let mut names = Vec::new();
    let mut domains = Vec::new();
    for i in 0..20 {
        let d = env.dns_domain(&format!("n{i}"));
        let job = dns_job(std::slice::from_ref(&d))?;
        names.push(job.job.name.clone());
        domains.push(d);
        env.publish_job(&job).await?;
    }
    let got = events.collect(20, Duration::from_secs(120)).await;
    let issued = got.iter().filter(|e| e.kind == EventKind::Issued).count();
    assert_eq!(issued, 20, "every order validated: {got:?}");
    let versions = crate::faults::versions_per_name(&env, &names).await?;
    assert!(
        versions.iter().all(|v| *v == 1),
        "one version each: {versions:?}"
    );
    for d in &domains {
        assert!(
            env.dig_txt(&challenge_name(d)).await?.is_empty(),
            "value left for {d}"
        );
    }
    assert_eq!(
        env.queue_len_settled(certfleet_common::topology::DEAD_QUEUE, 0)
            .await?,
        0
    );
    println!("dns-01: 20 names, 2 workers: {issued} issued, versions {versions:?}, 0 values left");
    a.stop().await;
    b.stop().await;
    env.cleanup().await;
    Ok(())
}

/// A worker killed (kill -9) after presenting its TXT value and before the
/// CA validated: the job resumes on another worker, the certificate is
/// issued, and the value the dead worker left is removed.
#[tokio::test]
async fn kill_9_after_presenting_resumes_and_cleans_up() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("dns-kill9").await?;
    let mut a = env
        .command("certfleet-worker")?
        .envs(exec_vars(&env, Some("60"))?)
        .env("CERTFLEET_LEASE_TTL", "3s")
        .env("CERTFLEET_HTTP01_LISTEN", "127.0.0.1:0")
        .spawn()?;
    env.wait_for_work_queue().await?;
    let mut events = env.events("cert.#").await?;
    let domain = env.dns_domain("k");
    let job = dns_job(std::slice::from_ref(&domain))?;
    env.publish_job(&job).await?;
    // A's hook has presented the value (and now sleeps): kill A.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let left = loop {
        let values = env.dig_txt(&challenge_name(&domain)).await?;
        if !values.is_empty() {
            break values;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "A never presented");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let pid = a.id().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()?;
    let _ = a.wait().await;
    assert!(
        env.store().await.pointer(&job.job.name).await?.is_none(),
        "killed before storing"
    );
    let state = env.state()?;
    let mut c = state.conn().await?;
    let recorded: Vec<String> = deadpool_redis::redis::cmd("SMEMBERS")
        .arg(state.keys().dns01(&job.job.name))
        .query_async(&mut *c)
        .await?;
    assert_eq!(
        recorded.len(),
        1,
        "A recorded its value before presenting: {recorded:?}"
    );

    let mut vars = exec_vars(&env, None)?;
    vars.push(("CERTFLEET_LEASE_TTL".into(), "3s".into()));
    let b = env.start_worker_with(&vars).await?;
    let event = events.next(Duration::from_secs(90)).await?;
    assert_eq!((event.kind, event.job_id), (EventKind::Issued, job.job_id));
    assert_stored(&env, &job, std::slice::from_ref(&domain)).await?;
    assert!(
        env.dig_txt(&challenge_name(&domain)).await?.is_empty(),
        "the value A left ({left:?}) is gone"
    );
    let recorded: Vec<String> = deadpool_redis::redis::cmd("SMEMBERS")
        .arg(state.keys().dns01(&job.job.name))
        .query_async(&mut *c)
        .await?;
    assert!(recorded.is_empty(), "record cleared: {recorded:?}");
    println!("dns-01 kill -9: A left {left:?}; B issued and removed it");
    b.stop().await;
    env.cleanup().await;
    Ok(())
}

/// A wrong TSIG secret: `issue --wait` exits 1 within a minute with the
/// nameserver's refusal in its message, the job is dead-lettered with it at
/// its first attempt (no retry), and the secret appears nowhere.
#[tokio::test]
async fn wrong_tsig_secret_fails_at_once_with_the_refusal() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("dns-badsig").await?;
    // A valid base64 secret that is not the server's.
    let wrong = "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldC0wMTIzNDU2Nzg5";
    let worker = env
        .start_worker_with(&env.rfc2136_vars(&[
            ("CERTFLEET_RFC2136_TSIG_SECRET", wrong),
            ("CERTFLEET_RFC2136_TSIG_SECRET_FILE", ""),
        ]))
        .await?;
    let domain = env.dns_domain("bad");
    let started = tokio::time::Instant::now();
    let out = env
        .command("certfleet")?
        .args([
            "issue",
            &domain,
            "--challenge",
            "dns-01",
            "--wait",
            "--timeout",
            "60s",
        ])
        .output()
        .await?;
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert!(
        stderr.contains("BADSIG"),
        "the refusal is in the message: {stderr}"
    );
    assert!(!stderr.contains(wrong), "{stderr}");
    assert_eq!(
        env.queue_len_settled(certfleet_common::topology::DEAD_QUEUE, 1)
            .await?,
        1,
        "dead-lettered"
    );
    let dlq = env.certfleet(&["dlq", "list"]).await?;
    assert!(dlq.contains("BADSIG") && dlq.contains("permanent"), "{dlq}");
    assert!(!dlq.contains(wrong));
    println!(
        "dns-01 wrong TSIG: exit 1 after {took:?}: {}",
        stderr.trim()
    );
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}

/// DigitalOcean's API path (lego's `DO_AUTH_TOKEN` name): Pebble validates
/// the records the provider created through the API.
#[tokio::test]
async fn digitalocean_api_path_validated_by_pebble() -> anyhow::Result<()> {
    use certfleet_tests::dns::fake_do::FakeDo;
    init_logging();
    let env = TestEnv::new("dns-do").await?;
    let token = "dop_v1_e2e-token";
    let fake = FakeDo::start(
        token,
        &["dns01.test"],
        2,
        certfleet_tests::dns::stack_bind_provider(&env.stack)?,
    )
    .await;
    let at = issue_through_api(
        &env,
        "do",
        &[
            ("CERTFLEET_DNS01_PROVIDER", "digitalocean"),
            ("DO_AUTH_TOKEN", token),
            ("CERTFLEET_DIGITALOCEAN_API_URL", &fake.base()),
        ],
    )
    .await?;
    assert!(
        fake.values_at(&at).await.is_empty(),
        "the API holds no value"
    );
    env.cleanup().await;
    Ok(())
}

/// Cloudflare's API path (lego's `CLOUDFLARE_DNS_API_TOKEN` name).
#[tokio::test]
async fn cloudflare_api_path_validated_by_pebble() -> anyhow::Result<()> {
    use certfleet_tests::dns::fake_cloudflare::FakeCloudflare;
    init_logging();
    let env = TestEnv::new("dns-cf").await?;
    let token = "cf-e2e-token-0123456789";
    let fake = FakeCloudflare::start(
        token,
        &["dns01.test"],
        certfleet_tests::dns::stack_bind_provider(&env.stack)?,
    )
    .await;
    let at = issue_through_api(
        &env,
        "cf",
        &[
            ("CERTFLEET_DNS01_PROVIDER", "cloudflare"),
            ("CLOUDFLARE_DNS_API_TOKEN", token),
            ("CERTFLEET_CLOUDFLARE_API_URL", &fake.base()),
        ],
    )
    .await?;
    assert!(
        fake.values_at(&at).await.is_empty(),
        "the API holds no value"
    );
    env.cleanup().await;
    Ok(())
}

/// acme-dns by CNAME delegation: `_acme-challenge.<name>` is a CNAME to the
/// account's `fulldomain` under `acmedns.test`; the worker follows it,
/// updates acme-dns, and Pebble follows the same CNAME to validate.
#[tokio::test]
async fn acmedns_delegation_validated_by_pebble() -> anyhow::Result<()> {
    use certfleet_tests::dns::fake_acmedns::FakeAcmeDns;
    init_logging();
    let env = TestEnv::new("dns-acmedns").await?;
    let bind = certfleet_tests::dns::stack_bind_provider(&env.stack)?;
    let fake = FakeAcmeDns::start("acmedns.test", bind).await;
    let account =
        certfleet_worker::dns01::acmedns::register(&fake.base(), Duration::from_secs(5)).await?;
    let password = {
        let state = fake.state.lock().await;
        state
            .users
            .iter()
            .find(|u| u.username == account.username)
            .map(|u| u.password.clone())
            .ok_or_else(|| anyhow::anyhow!("registered user not found"))?
    };
    let domain = env.dns_domain("delegated");
    // The one-time delegation an operator sets up in their zone.
    let secret = std::fs::read_to_string(&env.stack.tsig_secret_file)?;
    let (host, port) = env
        .stack
        .bind
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("bind addr"))?;
    let script = format!(
        "server {host} {port}\nupdate add {}. 60 CNAME {}.\nsend\n",
        challenge_name(&domain),
        account.fulldomain
    );
    let mut child = tokio::process::Command::new("nsupdate")
        .args([
            "-y",
            &format!("hmac-sha256:{}:{}", env.stack.tsig_key, secret.trim()),
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    {
        use tokio::io::AsyncWriteExt as _;
        let mut stdin = child.stdin.take().ok_or_else(|| anyhow::anyhow!("stdin"))?;
        stdin.write_all(script.as_bytes()).await?;
    }
    assert!(child.wait().await?.success(), "nsupdate CNAME");
    let dir = tempfile::tempdir()?;
    let storage = dir.path().join("acme-dns.json");
    std::fs::write(
        &storage,
        serde_json::json!({ &domain: {
            "username": account.username,
            "password": password,
            "fulldomain": account.fulldomain,
            "subdomain": account.subdomain,
        }})
        .to_string(),
    )?;
    let storage = storage.display().to_string();
    let vars = env.rfc2136_vars(&[
        ("CERTFLEET_DNS01_PROVIDER", "acme-dns"),
        ("CERTFLEET_ACMEDNS_API_URL", &fake.base()),
        ("CERTFLEET_ACMEDNS_STORAGE", &storage),
    ]);
    let worker = env.start_worker_with(&vars).await?;
    let mut events = env.events("cert.#").await?;
    let job = dns_job(std::slice::from_ref(&domain))?;
    env.publish_job(&job).await?;
    let event = events.next(Duration::from_secs(90)).await?;
    assert_eq!(event.kind, EventKind::Issued, "{event:?}");
    assert_stored(&env, &job, std::slice::from_ref(&domain)).await?;
    let updates = fake
        .state
        .lock()
        .await
        .users
        .iter()
        .map(|u| u.values.len())
        .sum::<usize>();
    assert!(updates >= 1, "the value went through acme-dns's /update");
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}

/// The `exec` provider: an operator's hook (`nsupdate`) presents and
/// removes the values; Pebble validates them.
#[tokio::test]
async fn exec_hook_validated_by_pebble() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("dns-exec").await?;
    let apex = env.dns_domain("ex");
    issue_through(
        &env,
        &exec_vars(&env, None)?,
        &[apex.clone(), format!("*.{apex}")],
    )
    .await?;
    env.cleanup().await;
    Ok(())
}

/// A fleet whose zones live at different DNS hosts, served by one worker:
/// `dns01.test` through RFC 2136 (the default provider), `dns02.test`
/// through the exec hook (`CERTFLEET_DNS01_ZONES`); one certificate names
/// both.
#[tokio::test]
async fn two_providers_by_zone_in_one_worker() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("dns-zones").await?;
    let mut vars = exec_vars(&env, None)?;
    vars.retain(|(k, _)| k != "CERTFLEET_DNS01_PROVIDER");
    vars.extend(env.rfc2136_vars(&[("CERTFLEET_DNS01_ZONES", "dns02.test=exec")]));
    let one = env.dns_domain("one");
    let two = format!("two.{}.dns02.test", env.id);
    issue_through(&env, &vars, &[one, two]).await?;
    env.cleanup().await;
    Ok(())
}

/// A renewal keeps the stored certificate's challenge: `renew NAME` routes
/// it as `job.renew.dns-01`, so a worker pool bound to dns-01 jobs only
/// (`CERTFLEET_WORKER_BINDINGS`) renews it through the DNS again.
#[tokio::test]
async fn renewal_keeps_dns01_and_its_routing() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("dns-renew").await?;
    let worker = env
        .start_worker_with(&env.rfc2136_vars(&[
            ("CERTFLEET_WORKER_BINDINGS", "job.*.dns-01"),
            ("CERTFLEET_WORK_QUEUE", "certfleet.work.dns"),
        ]))
        .await?;
    let apex = env.dns_domain("renewed");
    let domains = [apex.clone(), format!("*.{apex}")];
    env.certfleet(&[
        "issue",
        &domains[0],
        &domains[1],
        "--challenge",
        "dns-01",
        "--wait",
        "--timeout",
        "90s",
    ])
    .await?;
    let name = CertName::parse(&apex)?;
    let store = env.store().await;
    let (first, _) = store
        .pointer(&name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("not stored"))?;
    assert_eq!(first.challenge, ChallengeType::Dns01);
    env.certfleet(&["renew", &apex, "--wait", "--timeout", "90s"])
        .await?;
    let (second, _) = store
        .pointer(&name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("gone"))?;
    assert_ne!(second.serial, first.serial, "renewed");
    assert_eq!(
        second.challenge,
        ChallengeType::Dns01,
        "the challenge is kept"
    );
    assert!(env.dig_txt(&challenge_name(&apex)).await?.is_empty());
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}
