//! DigitalOcean provider against a fake API (tests/dns/fake_do.rs) that applies every
//! record change to the test BIND; plus the shared HTTP client's failure paths.

use std::time::Duration;

use certfleet_tests::dns::fake_do::FakeDo;
use certfleet_tests::dns::fake_http::silent_server;
use certfleet_tests::dns::*;
use certfleet_worker::dns01::{
    ApiSecret, DigitalOceanConfig, DigitalOceanProvider, Dns01Provider, DnsError, RetryKind,
};
use tokio::time::Instant;

const TOKEN: &str = "dop_v1_test-token-0123456789abcdef";

fn provider_for(base: &str, token: &str) -> DigitalOceanProvider {
    let mut c = DigitalOceanConfig::new(ApiSecret::new(token));
    c.api_base = base.to_owned();
    c.timeout = Duration::from_secs(5);
    DigitalOceanProvider::new(c).unwrap()
}

async fn fake() -> FakeDo {
    FakeDo::start(TOKEN, &["proto.test"], 2, bind_provider()).await
}

#[tokio::test]
async fn two_values_coexist_and_cleanup_keeps_the_other() {
    let api = fake().await;
    let p = provider_for(&api.base(), TOKEN);
    let check = propagation();
    let fqdn = format!("_acme-challenge.do-two-{}.proto.test.", run_id());
    let (a, b) = (value43("do-apex"), value43("do-wildcard"));

    p.present(&fqdn, "proto.test.", &a).await.unwrap();
    p.present(&fqdn, "proto.test.", &b).await.unwrap();
    for v in [&a, &b] {
        check
            .wait_for_txt(&fqdn, "proto.test.", v, WAIT, INTERVAL)
            .await
            .unwrap();
    }
    assert_eq!(dig_txt(&fqdn), sorted([&a, &b]));
    assert_eq!(api.values_at(&fqdn).await, sorted([&a, &b]));
    {
        // lego's request shape: FQDN with its final dot as the name, stored relative.
        let st = api.state.lock().await;
        let rec = st.records.iter().find(|r| r.data == a).unwrap();
        assert_eq!(rec.name, format!("_acme-challenge.do-two-{}", run_id()));
        assert_eq!(rec.ttl, 30);
    }

    p.cleanup(&fqdn, "proto.test.", &a).await.unwrap();
    assert_eq!(dig_txt(&fqdn), vec![b.clone()]);
    check
        .wait_for_txt(&fqdn, "proto.test.", &b, WAIT, INTERVAL)
        .await
        .unwrap();
    p.cleanup(&fqdn, "proto.test.", &b).await.unwrap();
    assert!(dig_txt(&fqdn).is_empty());
    // Absent is Ok.
    p.cleanup(&fqdn, "proto.test.", &b).await.unwrap();
    assert!(api.values_at(&fqdn).await.is_empty());
}

/// A new provider instance (another process after a crash) has no record ids: cleanup
/// lists the records, following `links.pages.next` (2 records a page here).
#[tokio::test]
async fn cleanup_after_restart_lists_all_pages() {
    let api = fake().await;
    let first = provider_for(&api.base(), TOKEN);
    let fqdn = format!("_acme-challenge.do-crash-{}.proto.test.", run_id());
    let other = format!("_acme-challenge.do-other-{}.proto.test.", run_id());
    let values: Vec<String> = (1..=5).map(|i| value43(&format!("do-crash-{i}"))).collect();
    for v in &values {
        first.present(&fqdn, "proto.test.", v).await.unwrap();
    }
    first
        .present(&other, "proto.test.", &values[4])
        .await
        .unwrap();
    drop(first);

    let second = provider_for(&api.base(), TOKEN);
    api.state.lock().await.requests.clear();
    second
        .cleanup(&fqdn, "proto.test.", &values[4])
        .await
        .unwrap();
    let lists: Vec<String> = api
        .state
        .lock()
        .await
        .requests
        .iter()
        .filter(|r| r.starts_with("GET "))
        .cloned()
        .collect();
    assert_eq!(lists.len(), 3, "5 records at 2 a page: {lists:?}");
    assert!(lists.iter().all(|r| r.contains("type=TXT")), "{lists:?}");
    let mut left = values[..4].to_vec();
    left.sort();
    assert_eq!(api.values_at(&fqdn).await, left);
    assert_eq!(dig_txt(&fqdn), left);
    // The same value at another name is untouched.
    assert_eq!(dig_txt(&other), vec![values[4].clone()]);

    for v in &values[..4] {
        second.cleanup(&fqdn, "proto.test.", v).await.unwrap();
    }
    second
        .cleanup(&other, "proto.test.", &values[4])
        .await
        .unwrap();
    assert!(dig_txt(&fqdn).is_empty() && dig_txt(&other).is_empty());
}

#[tokio::test]
async fn wrong_token_is_refused_quickly_without_leaking_it() {
    let api = fake().await;
    let wrong = "dop_v1_wrong-token-fedcba9876543210";
    let p = provider_for(&api.base(), wrong);
    let started = Instant::now();
    let fqdn = "_acme-challenge.do-badtoken.proto.test.";
    let err = p
        .present(fqdn, "proto.test.", &value43("v"))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(matches!(err, DnsError::Refused(_)), "{err:?}");
    assert!(!err.is_retryable());
    let msg = err.to_string();
    assert!(
        msg.contains("HTTP 401") && msg.contains("unauthorized: Unable to authenticate you"),
        "{msg}"
    );
    let all = format!("{msg} {err:?} {p:?}");
    assert!(!all.contains(wrong) && !all.contains(TOKEN), "{all}");
    let err = p
        .cleanup(fqdn, "proto.test.", &value43("v"))
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::Refused(_)), "{err:?}");
}

#[tokio::test]
async fn unknown_domain_is_unknown_zone() {
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
            matches!(&err, DnsError::UnknownZone(m) if m.contains("nowhere.test") && m.contains("not_found")),
            "{err:?}"
        );
    }
    // A name outside the zone is a configuration error, nothing is sent.
    let err = p
        .present("_acme-challenge.x.other.test.", "proto.test.", "v")
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::Config(_)), "{err:?}");
}

#[tokio::test]
async fn server_errors_and_transport_failures_are_retryable() {
    let api = fake().await;
    let p = provider_for(&api.base(), TOKEN);
    let fqdn = "_acme-challenge.do-5xx.proto.test.";
    for (status, kind) in [
        (503, RetryKind::ServerFailure),
        (429, RetryKind::RateLimited),
    ] {
        api.state.lock().await.fail_next = Some(status);
        let err = p.present(fqdn, "proto.test.", "v").await.unwrap_err();
        assert!(
            matches!(err, DnsError::Retryable { kind: k, .. } if k == kind),
            "{err:?}"
        );
    }
    assert!(api.values_at(fqdn).await.is_empty());

    // Nothing listening.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let err = provider_for(&format!("http://{closed}"), TOKEN)
        .present(fqdn, "proto.test.", "v")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            DnsError::Retryable {
                kind: RetryKind::Network,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.to_string().contains(TOKEN));

    // Accepts and never answers: the request timeout fires.
    let silent = silent_server().await;
    let mut c = DigitalOceanConfig::new(ApiSecret::new(TOKEN));
    c.api_base = silent.base();
    c.timeout = Duration::from_millis(300);
    let started = Instant::now();
    let err = DigitalOceanProvider::new(c)
        .unwrap()
        .present(fqdn, "proto.test.", "v")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            DnsError::Retryable {
                kind: RetryKind::Timeout,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

fn sorted<'a>(values: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let mut v: Vec<String> = values.into_iter().cloned().collect();
    v.sort();
    v
}
