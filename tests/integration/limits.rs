//! The CA's limits on certificates, counted fleet-wide: per registered
//! domain (Public Suffix List) and per exact set of names; a job over a
//! limit is deferred with the time in its status; `certfleet limits`.

use std::time::Duration;

use certfleet_common::event::EventKind;
use certfleet_common::{CertName, ChallengeType, Envelope, Job, JobKind, KeyType, now_ms};
use certfleet_tests::{TestEnv, init_logging};

/// An issue job for `domains` under `name`.
fn issue(name: &str, domains: &[&str]) -> anyhow::Result<Envelope> {
    Ok(Envelope::new(
        JobKind::Issue,
        Job {
            name: CertName::parse(name)?,
            domains: domains.iter().map(|d| d.to_string()).collect(),
            key_type: KeyType::EcdsaP256,
            challenge: ChallengeType::Http01,
            reason: "test".into(),
            options: Default::default(),
        },
        now_ms(),
    ))
}

/// Waits until the job's status message says it was deferred; returns it.
async fn deferred(env: &TestEnv, job: &Envelope) -> anyhow::Result<String> {
    let id = job.job_id.to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let v: serde_json::Value =
            serde_json::from_str(&env.certfleet(&["status", &id, "--json"]).await?)?;
        let text = v.to_string();
        if text.contains("deferred until") {
            return Ok(text);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "job {id} was not deferred: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Limits of 2 certificates per registered domain and 1 per set of names
/// an hour: the same names again under another certificate name is
/// deferred (duplicate), a third name of the domain is deferred (per
/// domain); each status names the limit and the time; neither is issued;
/// `certfleet limits` shows both windows full with their next slot.
#[tokio::test]
async fn over_a_limit_is_deferred_with_its_time_and_limits_shows_the_budgets() -> anyhow::Result<()>
{
    init_logging();
    let env = TestEnv::new("limits").await?;
    let worker = env
        .start_worker(&[
            ("CERTFLEET_RATE_CERTS_PER_DOMAIN", "2/1h"),
            ("CERTFLEET_RATE_DUPLICATES", "1/1h"),
        ])
        .await?;
    let mut events = env.events("cert.#").await?;
    let (a, b, c) = (
        env.domain("a").await?,
        env.domain("b").await?,
        env.domain("c").await?,
    );
    // Test names end in certfleet.test: .test is not in the list, so the
    // registered domain is certfleet.test (the list's default rule).
    let first = issue(&a, &[&a])?;
    env.publish_job(&first).await?;
    let e = events.next(Duration::from_secs(60)).await?;
    assert_eq!(e.kind, EventKind::Issued, "{e:?}");

    let again = issue(&format!("again-{a}"), &[&a])?;
    env.publish_job(&again).await?;
    let status = deferred(&env, &again).await?;
    assert!(status.contains("duplicate certificates for"), "{status}");

    let second = issue(&b, &[&b])?;
    env.publish_job(&second).await?;
    let e = events.next(Duration::from_secs(60)).await?;
    assert_eq!(e.kind, EventKind::Issued, "{e:?}");
    assert_eq!(e.name.as_str(), b);

    let third = issue(&c, &[&c])?;
    env.publish_job(&third).await?;
    let status = deferred(&env, &third).await?;
    assert!(
        status.contains("certificates per registered domain certfleet.test"),
        "{status}"
    );
    assert!(
        events.quiet_for(Duration::from_secs(2)).await.is_none(),
        "a deferred job was issued"
    );

    let table = env.certfleet(&["limits"]).await?;
    eprintln!("certfleet limits:\n{table}");
    let row = |what: &str, subject: &str| {
        table
            .lines()
            .find(|l| l.starts_with(what) && l.contains(subject))
            .map(str::to_string)
            .unwrap_or_default()
    };
    let dup = row("duplicate certificates", &a);
    assert!(
        dup.contains(&a) && dup.contains(" 1/1 ") && dup.contains("1h"),
        "{table}"
    );
    assert!(
        !dup.ends_with("now"),
        "a full window has a next slot: {table}"
    );
    let per_domain = row("certificates per registered domain", "certfleet.test");
    assert!(
        per_domain.contains("certfleet.test") && per_domain.contains(" 2/2 "),
        "{table}"
    );
    assert!(!per_domain.ends_with("now"), "{table}");
    let json: serde_json::Value =
        serde_json::from_str(&env.certfleet(&["limits", "--json"]).await?)?;
    let kinds: Vec<&str> = json
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"certs") && kinds.contains(&"duplicate"),
        "{json}"
    );
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}
