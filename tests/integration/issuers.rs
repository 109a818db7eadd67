//! Several CAs (issue 17, item 2): `CERTFLEET_ACME_ISSUERS` lists them in
//! order, `issue --ca` names one, and a CA that cannot be reached sends the
//! job to the next one at once, in the same attempt; each version records
//! its issuer.

use std::time::Duration;

use certfleet_common::event::EventKind;
use certfleet_common::job::OPTION_CA;
use certfleet_common::{CertName, ChallengeType};
use certfleet_tests::private::{Private, Service};
use certfleet_tests::{TestEnv, init_logging};

use crate::issue::{issue_job_with, metric};

#[tokio::test]
async fn a_stopped_ca_falls_back_to_the_next_and_ca_names_the_issuer() -> anyhow::Result<()> {
    init_logging();
    let first = Private::start(Service::Pebble, &[]).await?;
    let env = TestEnv::new("issuers").await?;
    let issuers = format!("first={},second={}", first.url(), env.stack.acme_directory);
    let first_ca = first
        .ca_path()
        .ok_or_else(|| anyhow::anyhow!("no CA file of the private Pebble"))?
        .display()
        .to_string();
    let worker = env
        .start_worker(&[
            ("CERTFLEET_ACME_ISSUERS", issuers.as_str()),
            ("CERTFLEET_ACME_ISSUER_FIRST_CA_CERTS", first_ca.as_str()),
        ])
        .await?;
    let mut events = env.events("cert.#").await?;
    let store = env.store().await;
    let issuer_of = |name: CertName| {
        let store = &store;
        async move {
            let (p, _) = store
                .pointer(&name)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no pointer for {name}"))?;
            anyhow::Ok((p.issuer, p.ca))
        }
    };

    // Both up: the first issues.
    let job = issue_job_with(&[first.domain(&env, "one").await?], ChallengeType::Http01)?;
    env.publish_job(&job).await?;
    let e = events.next(Duration::from_secs(60)).await?;
    assert_eq!(e.kind, EventKind::Issued, "{e:?}");
    assert_eq!(
        issuer_of(job.job.name.clone()).await?,
        (Some("first".into()), None)
    );

    // --ca second: the second issues while the first is up.
    let mut job = issue_job_with(&[first.domain(&env, "two").await?], ChallengeType::Http01)?;
    job.job.options.insert(OPTION_CA.into(), "second".into());
    env.publish_job(&job).await?;
    let e = events.next(Duration::from_secs(60)).await?;
    assert_eq!(e.kind, EventKind::Issued, "{e:?}");
    assert_eq!(
        issuer_of(job.job.name.clone()).await?,
        (Some("second".into()), Some("second".into()))
    );

    // The first stopped: each job falls back within its first attempt.
    let later = [
        first.domain(&env, "three").await?,
        first.domain(&env, "four").await?,
    ];
    first.stop().await?;
    let mut names = Vec::new();
    for domain in later {
        let job = issue_job_with(&[domain], ChallengeType::Http01)?;
        names.push(job.job.name.clone());
        env.publish_job(&job).await?;
    }
    let got = events.collect(2, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 2, "{got:?}");
    for e in &got {
        assert_eq!(e.kind, EventKind::Issued, "{e:?}");
        assert_eq!(
            e.attempt, 1,
            "fell back within the attempt, not on a retry: {e:?}"
        );
    }
    for n in names {
        assert_eq!(issuer_of(n).await?, (Some("second".into()), None));
    }
    let fallbacks = metric(&env, worker.metrics_addr, "certfleet_acme_fallbacks_total").await?;
    assert!(fallbacks >= 2.0, "{fallbacks}");

    // An issuer nobody configured: the job fails naming the ones there are.
    let mut job = issue_job_with(&[env.domain("nope").await?], ChallengeType::Http01)?;
    job.job.options.insert(OPTION_CA.into(), "nope".into());
    env.publish_job(&job).await?;
    let e = events.next(Duration::from_secs(60)).await?;
    assert_eq!(e.kind, EventKind::Failed, "{e:?}");
    let detail = e.error.map(|f| f.detail).unwrap_or_default();
    assert!(detail.contains("first, second"), "{detail}");
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}
