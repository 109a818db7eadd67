//! ACME profiles and short-lived certificates (issue 17, item 5). Pebble
//! 2.4 has no profiles: the ACME proxy offers them in the directory and
//! records each newOrder's `profile`. It does issue short certificates
//! (`certificateValidityPeriod`, through PEBBLE_CERT_VALIDITY_SECS).

use certfleet_common::CertName;
use certfleet_tests::acme_proxy::AcmeProxy;
use certfleet_tests::private::{self, Private, Service};
use certfleet_tests::{TestEnv, init_logging, run_ok};

/// `issue --profile shortlived` orders with that profile and stores it;
/// `renew` orders the same profile again; a profile the CA does not offer
/// fails the job with the CA's list; a name that is no profile name is a
/// usage error before anything is queued.
#[tokio::test]
async fn profile_ordered_stored_and_kept_on_renewal() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("profiles").await?;
    let proxy = AcmeProxy::start(&env).await?.with_profiles(&[
        ("classic", "The same profile you're accustomed to"),
        ("shortlived", "Six-day certificates"),
    ]);
    let vars = proxy.vars();
    let worker = env.start_worker(&private::pairs(&vars)).await?;
    let domain = env.domain("prof").await?;
    let cli = |args: &[&str]| -> anyhow::Result<tokio::process::Command> {
        let mut cmd = env.command("certfleet")?;
        cmd.envs(vars.iter().cloned()).args(args);
        Ok(cmd)
    };
    run_ok(&mut cli(&[
        "issue",
        &domain,
        "--profile",
        "shortlived",
        "--wait",
        "--timeout",
        "60s",
    ])?)
    .await?;
    let seen = proxy.new_orders();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].profile.as_deref(), Some("shortlived"));
    let name = CertName::from_domain(&domain)?;
    let store = env.store().await;
    let (pointer, _) = store
        .pointer(&name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no pointer"))?;
    assert_eq!(pointer.profile.as_deref(), Some("shortlived"));
    let status = run_ok(&mut cli(&["status", &domain])?).await?;
    assert!(
        status.contains("shortlived"),
        "status shows the profile: {status}"
    );

    run_ok(&mut cli(&["renew", &domain, "--wait", "--timeout", "60s"])?).await?;
    let seen = proxy.new_orders();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        seen[1].profile.as_deref(),
        Some("shortlived"),
        "the renewal keeps it"
    );

    // Not offered: the job fails, naming what the CA offers.
    let other = env.domain("prof-other").await?;
    let out = cli(&[
        "issue",
        &other,
        "--profile",
        "tlsserver",
        "--wait",
        "--timeout",
        "60s",
    ])?
    .output()
    .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("tlsserver") && stderr.contains("classic, shortlived"),
        "{stderr}"
    );
    assert_eq!(
        proxy.new_orders().len(),
        2,
        "no order for a profile the CA lacks"
    );

    // Not a profile name at all: refused before anything is queued.
    let out = cli(&["issue", &other, "--profile", "short lived"])?
        .output()
        .await?;
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--profile"));
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}

/// A CA issuing 6-day certificates: the certificate lasts 6 days and its
/// renewal is planned at half its life (3 days before expiry), in the
/// pointer and in the index the due-scan reads: due within 3 days and an
/// hour, not within 2 days and 23 hours.
#[tokio::test]
async fn six_day_certificates_renew_at_half_their_life() -> anyhow::Result<()> {
    init_logging();
    let pebble =
        Private::start(Service::Pebble, &[("PEBBLE_CERT_VALIDITY_SECS", "518400")]).await?;
    let base = TestEnv::new("short-lived").await?;
    let env = private::env_for(&base, &[&pebble]).await?;
    let worker = env.start_worker(&[]).await?;
    let domain = env.domain("six").await?;
    env.certfleet(&["issue", &domain, "--wait", "--timeout", "60s"])
        .await?;
    worker.stop().await;
    let name = CertName::from_domain(&domain)?;
    let (p, _) = env
        .store()
        .await
        .pointer(&name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no pointer"))?;
    let lifetime = p.not_after - p.not_before;
    assert!(
        (lifetime - time::Duration::days(6)).abs() <= time::Duration::seconds(2),
        "lifetime {lifetime}"
    );
    let half: time::OffsetDateTime = p.not_after - lifetime / 2;
    let off: time::Duration = p.renew_at - half;
    assert!(
        off.abs() <= time::Duration::seconds(1),
        "renew_at {} is not half-life {half}",
        p.renew_at
    );
    let due = |within: &'static str| {
        let env = &env;
        async move {
            env.certfleet(&["renew", "--due", "--dry-run", "--within", within])
                .await
        }
    };
    let text = due("73h").await?;
    assert!(text.contains(name.as_str()), "due within 3d1h: {text}");
    let text = due("71h").await?;
    assert!(
        !text.contains(name.as_str()),
        "not due within 2d23h: {text}"
    );
    env.cleanup().await;
    base.cleanup().await;
    Ok(())
}
