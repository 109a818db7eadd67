//! Issue 10: dns-01 end to end. Pebble validates through the stack's BIND
//! 9 (authoritative for `dns01.test`, `dns02.test` and `acmedns.test`),
//! where each provider puts its TXT values: RFC 2136 updates signed with
//! TSIG, and the DigitalOcean, Cloudflare and acme-dns APIs through local
//! servers that implement them and apply every change to that BIND
//! (`certfleet_tests::dns`), and an operator's `exec` hook running
//! `nsupdate`.

use std::time::Duration;

use certfleet_common::event::EventKind;
use certfleet_common::{CertName, ChallengeType, Envelope, Job, JobKind, KeyType, now_ms};
use certfleet_tests::{TestEnv, init_logging, pki};

/// A dns-01 issue job for `domains` (the name is the first one's).
pub(crate) fn dns_job(domains: &[String]) -> anyhow::Result<Envelope> {
    Ok(Envelope::new(
        JobKind::Issue,
        Job {
            name: CertName::from_domain(&domains[0])?,
            domains: domains.to_vec(),
            key_type: KeyType::EcdsaP256,
            challenge: ChallengeType::Dns01,
            reason: "test".into(),
        },
        now_ms(),
    ))
}

/// `_acme-challenge.<domain>` without a wildcard label.
fn challenge_name(domain: &str) -> String {
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
    let key = store.open_key(&bundle)?;
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
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}
