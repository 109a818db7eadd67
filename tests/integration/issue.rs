//! Issue 3: a certificate end to end.

use std::time::Duration;

use certfleet_common::event::EventKind;
use certfleet_common::{CertName, ChallengeType, Envelope, Job, JobKind, KeyType, now_ms};
use certfleet_tests::{TestEnv, init_logging, pki};

fn issue_job(domains: &[String]) -> anyhow::Result<Envelope> {
    Ok(Envelope::new(
        JobKind::Issue,
        Job {
            name: CertName::from_domain(&domains[0])?,
            domains: domains.to_vec(),
            key_type: KeyType::EcdsaP256,
            challenge: ChallengeType::Http01,
            reason: "test".into(),
        },
        now_ms(),
    ))
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
    assert_eq!(cert.serial, pointer.serial);
    let key = store.open_key(&bundle)?;
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
