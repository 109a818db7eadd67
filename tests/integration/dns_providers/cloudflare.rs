//! Cloudflare provider against a fake API v4 (tests/dns/fake_cloudflare.rs) that
//! applies every record change to the test BIND.

use std::time::Duration;

use certfleet_tests::dns::fake_cloudflare::FakeCloudflare;
use certfleet_tests::dns::*;
use certfleet_worker::dns01::{
    ApiSecret, CloudflareConfig, CloudflareProvider, Dns01Provider, DnsError, RetryKind,
};
use serde_json::json;
use tokio::time::Instant;

const TOKEN: &str = "cf-test-token-YQSn-xWAQiiEh9qM58wZNnyQS7FUdoqGIUAbrh7T";

fn provider_for(base: &str, token: &str) -> CloudflareProvider {
    let mut c = CloudflareConfig::new(ApiSecret::new(token));
    c.api_base = base.to_owned();
    c.timeout = Duration::from_secs(5);
    CloudflareProvider::new(c).unwrap()
}

async fn fake() -> FakeCloudflare {
    FakeCloudflare::start(TOKEN, &["proto.test", "deleg.test"], bind_provider()).await
}

#[tokio::test]
async fn two_values_coexist_and_cleanup_keeps_the_other() {
    let api = fake().await;
    let p = provider_for(&api.base(), TOKEN);
    let check = propagation();
    let fqdn = format!("_acme-challenge.cf-two-{}.proto.test.", run_id());
    let (a, b) = (value43("cf-apex"), value43("cf-wildcard"));

    p.present(&fqdn, "proto.test.", &a).await.unwrap();
    p.present(&fqdn, "proto.test.", &b).await.unwrap();
    // Presenting again is not an error ("An identical record already exists").
    p.present(&fqdn, "proto.test.", &a).await.unwrap();
    for v in [&a, &b] {
        check
            .wait_for_txt(&fqdn, "proto.test.", v, WAIT, INTERVAL)
            .await
            .unwrap();
    }
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert_eq!(dig_txt(&fqdn), both);
    assert_eq!(api.values_at(&fqdn).await, both);
    {
        let st = api.state.lock().await;
        let rec = st.records.iter().find(|r| r.content.contains(&a)).unwrap();
        // Name without final dot, content quoted, TTL 120 (lego's shape).
        assert_eq!(rec.name, fqdn.trim_end_matches('.'));
        assert_eq!(rec.content, format!("\"{a}\""));
        assert_eq!(rec.ttl, 120);
    }

    p.cleanup(&fqdn, "proto.test.", &a).await.unwrap();
    assert_eq!(dig_txt(&fqdn), vec![b.clone()]);
    check
        .wait_for_txt(&fqdn, "proto.test.", &b, WAIT, INTERVAL)
        .await
        .unwrap();
    p.cleanup(&fqdn, "proto.test.", &b).await.unwrap();
    assert!(dig_txt(&fqdn).is_empty());
    p.cleanup(&fqdn, "proto.test.", &b).await.unwrap();
    assert!(api.values_at(&fqdn).await.is_empty());
}

/// Cleanup keeps no state: a fresh provider finds the record on the third page.
#[tokio::test]
async fn cleanup_by_a_new_instance_reads_every_page() {
    let api = fake().await;
    let fqdn = format!("_acme-challenge.cf-pages-{}.deleg.test.", run_id());
    let values: Vec<String> = (1..=5).map(|i| value43(&format!("cf-page-{i}"))).collect();
    {
        let first = provider_for(&api.base(), TOKEN);
        for v in &values {
            first.present(&fqdn, "deleg.test.", v).await.unwrap();
        }
    }
    let second = provider_for(&api.base(), TOKEN);
    second
        .cleanup(&fqdn, "deleg.test", &values[4])
        .await
        .unwrap();
    let mut left = values[..4].to_vec();
    left.sort();
    assert_eq!(dig_txt(&fqdn), left);
    for v in &values[..4] {
        second.cleanup(&fqdn, "deleg.test.", v).await.unwrap();
    }
    assert!(dig_txt(&fqdn).is_empty());
}

#[tokio::test]
async fn wrong_or_missing_token_is_refused_without_leaking_it() {
    let api = fake().await;
    let wrong = "cf-wrong-token-5y7Qk1pL0xE2";
    let p = provider_for(&api.base(), wrong);
    let started = Instant::now();
    let err = p
        .present("_acme-challenge.cf-bad.proto.test.", "proto.test.", "v")
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(matches!(err, DnsError::Refused(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("HTTP 403") && msg.contains("9109: Invalid access token"),
        "{msg}"
    );
    let all = format!("{msg} {err:?} {p:?}");
    assert!(!all.contains(wrong) && !all.contains(TOKEN), "{all}");

    // A token that is not a valid header value never leaves the process.
    let mut c = CloudflareConfig::new(ApiSecret::new("bad\ntoken"));
    c.api_base = api.base();
    let err = CloudflareProvider::new(c)
        .unwrap()
        .present("_acme-challenge.cf-bad.proto.test.", "proto.test.", "v")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DnsError::Config(m) if !m.contains("bad\ntoken")),
        "{err:?}"
    );
}

#[tokio::test]
async fn unknown_zone_is_unknown_zone() {
    let api = fake().await;
    let p = provider_for(&api.base(), TOKEN);
    for result in [
        p.present("_acme-challenge.x.nowhere.test.", "nowhere.test.", "v")
            .await,
        p.cleanup("_acme-challenge.x.nowhere.test.", "nowhere.test.", "v")
            .await,
    ] {
        let err = result.unwrap_err();
        assert!(
            matches!(&err, DnsError::UnknownZone(m) if m.contains("nowhere.test")),
            "{err:?}"
        );
        assert!(!err.is_retryable());
    }
}

/// Answers with `success:false`, auth codes under other statuses, rate limits, 5xx.
#[tokio::test]
async fn envelope_errors_are_classified() {
    let api = fake().await;
    let p = provider_for(&api.base(), TOKEN);
    let fqdn = "_acme-challenge.cf-env.proto.test.";
    // Warm the zone id cache so the injected answer hits the record call.
    p.cleanup(fqdn, "proto.test.", "warm").await.unwrap();
    let envelope = |code: i64, message: &str| {
        json!({ "success": false, "errors": [{ "code": code, "message": message }], "messages": [], "result": null })
            .to_string()
    };
    type Check = fn(&DnsError) -> bool;
    let cases: Vec<((u16, String), Check)> = vec![
        (
            (200, envelope(1004, "DNS Validation Error")),
            |e| matches!(e, DnsError::Rejected(m) if m.contains("1004: DNS Validation Error")),
        ),
        ((400, envelope(10000, "Authentication error")), |e| {
            matches!(e, DnsError::Refused(_))
        }),
        (
            (
                429,
                envelope(
                    971,
                    "Please wait and consider throttling your request speed",
                ),
            ),
            |e| {
                matches!(
                    e,
                    DnsError::Retryable {
                        kind: RetryKind::RateLimited,
                        ..
                    }
                )
            },
        ),
        ((502, "<html>bad gateway</html>".to_owned()), |e| {
            matches!(
                e,
                DnsError::Retryable {
                    kind: RetryKind::ServerFailure,
                    ..
                }
            )
        }),
        ((200, "not json".to_owned()), |e| {
            matches!(
                e,
                DnsError::Retryable {
                    kind: RetryKind::BadResponse,
                    ..
                }
            )
        }),
        (
            (
                400,
                envelope(7003, "Could not route to /zones/x/dns_records"),
            ),
            |e| matches!(e, DnsError::UnknownZone(_)),
        ),
    ];
    for (answer, check) in cases {
        api.state.lock().await.answer_next = Some(answer.clone());
        let err = p.present(fqdn, "proto.test.", "v").await.unwrap_err();
        assert!(check(&err), "{answer:?} -> {err:?}");
    }
    assert!(dig_txt(fqdn).is_empty());
}
