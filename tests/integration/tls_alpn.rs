//! tls-alpn-01 (RFC 8737): Pebble validates against the worker's TLS port,
//! answered from Redis like http-01.

use std::time::Duration;

use certfleet_common::ChallengeType;
use certfleet_common::event::EventKind;
use certfleet_tests::{TestEnv, init_logging, pki};

use crate::issue::{issue_job_with, metric};

/// `openssl s_client` against the responder: what it printed.
async fn s_client(addr: &str, sni: &str, alpn: Option<&str>) -> anyhow::Result<String> {
    let mut cmd = tokio::process::Command::new("openssl");
    cmd.args(["s_client", "-connect", addr, "-servername", sni]);
    if let Some(a) = alpn {
        cmd.args(["-alpn", a]);
    }
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        cmd.stdin(std::process::Stdio::null()).output(),
    )
    .await??;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// Two names proven over tls-alpn-01 by Pebble's real validation: the
/// certificate names both, the pointer keeps the challenge (so renewals
/// use it), every validation was a TLS handshake on the responder (none an
/// HTTP request), the answers are gone from Redis afterwards; a handshake
/// without `acme-tls/1` or for a name with no answer gets no certificate.
#[tokio::test]
async fn tls_alpn_01_validated_by_pebble_answered_from_redis() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("tls-alpn").await?;
    let listen = format!("{}:5001", env.ip);
    let worker = env
        .start_worker(&[("CERTFLEET_TLSALPN01_LISTEN", listen.as_str())])
        .await?;
    let domains = vec![env.domain("alpn").await?, env.domain("www-alpn").await?];
    let mut events = env.events("cert.#").await?;
    let job = issue_job_with(&domains, ChallengeType::TlsAlpn01)?;
    env.publish_job(&job).await?;
    let event = events.next(Duration::from_secs(60)).await?;
    assert_eq!(event.kind, EventKind::Issued, "{event:?}");

    let store = env.store().await;
    let (pointer, bundle) = store
        .current(&job.job.name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no pointer"))?;
    let mut want = domains.clone();
    want.sort();
    assert_eq!(pki::sans(&bundle.cert_pem)?, want);
    assert_eq!(pointer.challenge, ChallengeType::TlsAlpn01);

    let hit = r#"certfleet_tlsalpn01_handshakes_total{result="hit"}"#;
    let hits = metric(&env, worker.metrics_addr, hit).await?;
    assert!(
        hits >= 2.0,
        "{hits} tls-alpn-01 handshakes answered, want one per name"
    );
    let http = metric(&env, worker.metrics_addr, "certfleet_http01_requests_total").await?;
    assert_eq!(http, 0.0, "Pebble asked over HTTP");

    let state = env.state()?;
    let mut c = state.conn().await?;
    for d in &domains {
        let left: Option<String> = deadpool_redis::redis::cmd("GET")
            .arg(state.keys().tlsalpn01(d))
            .query_async(&mut *c)
            .await?;
        assert_eq!(left, None, "the answer for {d} is still in Redis");
    }

    // Not a challenge handshake: no certificate.
    let refused = r#"certfleet_tlsalpn01_handshakes_total{result="refused"}"#;
    let plain = s_client(&listen, &domains[0], None).await?;
    assert!(!plain.contains("BEGIN CERTIFICATE"), "{plain}");
    assert!(metric(&env, worker.metrics_addr, refused).await? >= 1.0);
    // acme-tls/1 for a name nobody asked about: no certificate either.
    let miss = r#"certfleet_tlsalpn01_handshakes_total{result="miss"}"#;
    let unknown = s_client(&listen, "unknown.example.test", Some("acme-tls/1")).await?;
    assert!(!unknown.contains("BEGIN CERTIFICATE"), "{unknown}");
    assert!(metric(&env, worker.metrics_addr, miss).await? >= 1.0);

    worker.stop().await;
    env.cleanup().await;
    Ok(())
}

/// A worker that does not answer tls-alpn-01 fails such a job at once with
/// a reason naming the setting, before any order is placed.
#[tokio::test]
async fn tls_alpn_01_without_a_listener_fails_naming_the_setting() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("tls-alpn-off").await?;
    let worker = env.start_worker(&[]).await?;
    let mut events = env.events("cert.#").await?;
    let job = issue_job_with(&[env.domain("alpn-off").await?], ChallengeType::TlsAlpn01)?;
    env.publish_job(&job).await?;
    let event = events.next(Duration::from_secs(60)).await?;
    assert_eq!(event.kind, EventKind::Failed, "{event:?}");
    let reason = event
        .error
        .as_ref()
        .map(|e| e.detail.clone())
        .unwrap_or_default();
    assert!(reason.contains("CERTFLEET_TLSALPN01_LISTEN"), "{reason}");
    let created = metric(
        &env,
        worker.metrics_addr,
        "certfleet_acme_orders_created_total",
    )
    .await?;
    assert_eq!(created, 0.0, "an order was placed");
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}
