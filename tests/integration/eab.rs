//! Issue 17, item 1: External Account Binding against a Pebble that
//! requires it (`externalAccountBindingRequired` with a MAC key, through
//! `PEBBLE_EAB_KEYS`): the right key issues; a wrong key, or none, fails at
//! once with the CA's problem in the failure event, not after retries.

use std::time::Duration;

use base64::Engine as _;
use certfleet_common::event::EventKind;
use certfleet_tests::private::{self, Private, Service};
use certfleet_tests::{TestEnv, init_logging};

use crate::issue::issue_job;

/// Issues one certificate through a worker of `base` on `pebble` with
/// `vars`; returns the event.
async fn issue_with(
    base: &TestEnv,
    pebble: &Private,
    vars: &[(&str, &str)],
) -> anyhow::Result<certfleet_common::Event> {
    let env = private::env_for(base, &[pebble]).await?;
    let worker = env.start_worker(vars).await?;
    let mut events = env.events("cert.#").await?;
    let job = issue_job(&[env.domain("eab").await?])?;
    env.publish_job(&job).await?;
    let event = events.next(Duration::from_secs(60)).await;
    worker.stop().await;
    event
}

/// A `failed` event's detail and the CA's problem type.
fn failure(event: certfleet_common::Event) -> anyhow::Result<(String, String)> {
    anyhow::ensure!(event.kind == EventKind::Failed, "not a failure: {event:?}");
    let error = event.error.ok_or_else(|| anyhow::anyhow!("no error"))?;
    let problem = error
        .problem
        .as_ref()
        .and_then(|p| p["type"].as_str())
        .unwrap_or_default()
        .to_string();
    Ok((error.detail, problem))
}

#[tokio::test]
async fn eab_required_right_key_issues_wrong_key_fails_with_the_problem() -> anyhow::Result<()> {
    init_logging();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let key = b64.encode(uuid::Uuid::new_v4().as_bytes().repeat(2));
    let wrong = b64.encode(uuid::Uuid::new_v4().as_bytes().repeat(2));
    let keys = format!("kid-certfleet={key}");
    let pebble = Private::start(Service::Pebble, &[("PEBBLE_EAB_KEYS", keys.as_str())]).await?;

    // The right key: an account is bound and a certificate issued.
    let good = TestEnv::new("eab-good").await?;
    let event = issue_with(
        &good,
        &pebble,
        &[
            ("CERTFLEET_ACME_EAB_KID", "kid-certfleet"),
            ("CERTFLEET_ACME_EAB_HMAC_KEY", key.as_str()),
        ],
    )
    .await?;
    assert_eq!(event.kind, EventKind::Issued, "{event:?}");

    // A wrong MAC key (a fleet of its own: no account stored yet).
    let bad = TestEnv::new("eab-wrong").await?;
    let event = issue_with(
        &bad,
        &pebble,
        &[
            ("CERTFLEET_ACME_EAB_KID", "kid-certfleet"),
            ("CERTFLEET_ACME_EAB_HMAC_KEY", wrong.as_str()),
        ],
    )
    .await?;
    let (detail, problem) = failure(event)?;
    assert!(
        problem.starts_with("urn:ietf:params:acme:error:"),
        "the CA's problem: {detail}"
    );
    println!("wrong EAB key: {detail}");

    // No binding at all.
    let none = TestEnv::new("eab-none").await?;
    let event = issue_with(&none, &pebble, &[]).await?;
    let (detail, problem) = failure(event)?;
    assert_eq!(
        problem, "urn:ietf:params:acme:error:externalAccountRequired",
        "{detail}"
    );
    for env in [good, bad, none] {
        env.cleanup().await;
    }
    Ok(())
}
