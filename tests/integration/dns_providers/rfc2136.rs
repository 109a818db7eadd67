//! RFC 2136 + TSIG provider against a real BIND 9 (tests/dns/start-bind.sh).

use std::sync::Arc;

use certfleet_tests::dns::*;
use certfleet_worker::dns01::{
    Dns01Provider, DnsError, RetryKind, Rfc2136Provider, TsigAlg, challenge_fqdn,
};

/// Apex and wildcard orders share `_acme-challenge.<domain>.`: both values live at once,
/// removing one keeps the other.
#[tokio::test]
async fn apex_and_wildcard_values_coexist() {
    let p = provider();
    let check = propagation();
    let fqdn = challenge_fqdn("multi.proto.test").unwrap();
    assert_eq!(fqdn, challenge_fqdn("*.multi.proto.test").unwrap());
    let zone = check.find_zone(&fqdn).await.unwrap();
    assert_eq!(zone, "proto.test.");

    let (apex, wild) = ("apex-value-0123456789", "wildcard-value-0123456789");
    p.present(&fqdn, &zone, apex).await.unwrap();
    p.present(&fqdn, &zone, wild).await.unwrap();
    check
        .wait_for_txt(&fqdn, &zone, apex, WAIT, INTERVAL)
        .await
        .unwrap();
    check
        .wait_for_txt(&fqdn, &zone, wild, WAIT, INTERVAL)
        .await
        .unwrap();
    assert_eq!(dig_txt(&fqdn), vec![apex.to_owned(), wild.to_owned()]);

    p.cleanup(&fqdn, &zone, apex).await.unwrap();
    assert_eq!(dig_txt(&fqdn), vec![wild.to_owned()]);
    check
        .wait_for_txt(&fqdn, &zone, wild, WAIT, INTERVAL)
        .await
        .unwrap();

    p.cleanup(&fqdn, &zone, wild).await.unwrap();
    assert!(dig_txt(&fqdn).is_empty());
    // Removing an absent value is Ok.
    p.cleanup(&fqdn, &zone, wild).await.unwrap();
}

/// Adding the same value twice keeps one RR (RFC 2136 duplicate rule).
#[tokio::test]
async fn present_is_idempotent() {
    let p = provider();
    let fqdn = "_acme-challenge.idem.proto.test.";
    p.present(fqdn, "proto.test.", "same").await.unwrap();
    p.present(fqdn, "proto.test.", "same").await.unwrap();
    assert_eq!(dig_txt(fqdn), vec!["same".to_owned()]);
    p.cleanup(fqdn, "proto.test.", "same").await.unwrap();
    assert!(dig_txt(fqdn).is_empty());
}

#[tokio::test]
async fn wrong_secret_is_refused_without_leaking_it() {
    ensure_bind();
    let wrong = "crgCXfUWdxgrmRxFnTdMiFrG9XoBD9/mZSQ3hsHzgTk=";
    let p = Rfc2136Provider::new(config_with(KEY_NAME, wrong, TsigAlg::HmacSha256)).unwrap();
    let fqdn = "_acme-challenge.badsig.proto.test.";
    let err = p.present(fqdn, "proto.test.", "v").await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DnsError::Refused(_)), "{err:?}");
    assert!(!err.is_retryable());
    assert_eq!(
        msg,
        format!("nameserver {BIND} refused the update for {fqdn}: NOTAUTH (TSIG BADSIG)")
    );
    let debug = format!("{err:?} {p:?}");
    for text in [&msg, &debug] {
        assert!(
            !text.contains(wrong) && !text.contains(SECRET_B64),
            "{text}"
        );
    }
    assert!(dig_txt(fqdn).is_empty());
}

#[tokio::test]
async fn unknown_key_name_is_refused_badkey() {
    ensure_bind();
    let p =
        Rfc2136Provider::new(config_with("no-such-key.", SECRET_B64, TsigAlg::HmacSha256)).unwrap();
    let fqdn = "_acme-challenge.badkey.proto.test.";
    let err = p.present(fqdn, "proto.test.", "v").await.unwrap_err();
    assert!(matches!(err, DnsError::Refused(_)), "{err:?}");
    assert!(err.to_string().ends_with("NOTAUTH (TSIG BADKEY)"), "{err}");
}

/// A key of the right name with the wrong algorithm is an unknown key to BIND.
#[tokio::test]
async fn wrong_algorithm_is_refused() {
    ensure_bind();
    let p = Rfc2136Provider::new(config_with(KEY_NAME, SECRET_B64, TsigAlg::HmacSha512)).unwrap();
    let err = p
        .present("_acme-challenge.badalg.proto.test.", "proto.test.", "v")
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::Refused(_)), "{err:?}");
    assert!(err.to_string().contains("TSIG BADKEY"), "{err}");
}

#[tokio::test]
async fn hmac_sha512_key_works() {
    ensure_bind();
    let p =
        Rfc2136Provider::new(config_with(KEY512_NAME, SECRET512_B64, TsigAlg::HmacSha512)).unwrap();
    let fqdn = "_acme-challenge.sha512.proto.test.";
    p.present(fqdn, "proto.test.", "sha512-value")
        .await
        .unwrap();
    assert_eq!(dig_txt(fqdn), vec!["sha512-value".to_owned()]);
    p.cleanup(fqdn, "proto.test.", "sha512-value")
        .await
        .unwrap();
    assert!(dig_txt(fqdn).is_empty());
}

/// An update for a zone the server does not serve fails at once (BIND: NOTAUTH).
#[tokio::test]
async fn zone_not_served_is_refused() {
    let p = provider();
    let err = p
        .present("_acme-challenge.nowhere.invalid.", "nowhere.invalid.", "v")
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::Refused(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(BIND) && msg.contains("NOTAUTH"), "{msg}");
    assert!(
        msg.contains("not authoritative for zone nowhere.invalid."),
        "{msg}"
    );
}

/// A valid key that the zone's allow-update does not list: REFUSED, at once.
#[tokio::test]
async fn key_not_allowed_on_zone_is_refused() {
    ensure_bind();
    let p =
        Rfc2136Provider::new(config_with(KEY512_NAME, SECRET512_B64, TsigAlg::HmacSha512)).unwrap();
    let fqdn = "_acme-challenge.policy.deleg.test.";
    let err = p.present(fqdn, "deleg.test.", "v").await.unwrap_err();
    assert!(matches!(err, DnsError::Refused(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("nameserver {BIND} refused the update for {fqdn}: REFUSED")
    );
}

#[tokio::test]
async fn unreachable_nameserver_is_retryable() {
    ensure_bind();
    let mut c = config_with(KEY_NAME, SECRET_B64, TsigAlg::HmacSha256);
    c.nameserver = "127.0.0.155:1".to_owned();
    c.timeout = std::time::Duration::from_millis(500);
    let p = Rfc2136Provider::new(c).unwrap();
    let err = p
        .present("_acme-challenge.x.proto.test.", "proto.test.", "v")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            DnsError::Retryable {
                kind: RetryKind::Network | RetryKind::Timeout,
                ..
            }
        ),
        "{err:?}"
    );
}

/// 20 concurrent present/wait/cleanup pairs of different values on one name: each task
/// still sees its own value after the others' cleanups, and nothing is left at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pairs_do_not_remove_each_other() {
    let p = Arc::new(provider());
    let check = Arc::new(propagation());
    let fqdn = "_acme-challenge.concurrent.proto.test.";
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (p, check) = (p.clone(), check.clone());
        tasks.push(tokio::spawn(async move {
            let value = format!("value-{i:02}-{}", "x".repeat(33));
            p.present(fqdn, "proto.test.", &value).await.unwrap();
            check
                .wait_for_txt(fqdn, "proto.test.", &value, WAIT, INTERVAL)
                .await
                .unwrap();
            p.cleanup(fqdn, "proto.test.", &value).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(dig_txt(fqdn).is_empty());
}

/// 20 values presented concurrently are all there (a 20-value TXT set is over 512 bytes:
/// checked with plain DNS, so over TCP after truncation); concurrent cleanups of half of
/// them leave exactly the other half.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cleanups_keep_the_others() {
    let p = Arc::new(provider());
    let fqdn = "_acme-challenge.halves.proto.test.";
    let values: Vec<String> = (0..20)
        .map(|i| format!("half-{i:02}-{}", "y".repeat(34)))
        .collect();
    let run = |remove: bool, which: Vec<String>| {
        let p = p.clone();
        async move {
            let tasks: Vec<_> = which
                .into_iter()
                .map(|v| {
                    let p = p.clone();
                    tokio::spawn(async move {
                        if remove {
                            p.cleanup(fqdn, "proto.test.", &v).await
                        } else {
                            p.present(fqdn, "proto.test.", &v).await
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap().unwrap();
            }
        }
    };
    run(false, values.clone()).await;
    let mut plain = propagation_config();
    plain.edns_payload = None;
    let check = certfleet_worker::dns01::Propagation::new(plain).unwrap();
    for v in &values {
        check
            .wait_for_txt(fqdn, "proto.test.", v, WAIT, INTERVAL)
            .await
            .unwrap();
    }
    assert_eq!(dig_txt(fqdn), values);

    let (evens, odds): (Vec<_>, Vec<_>) = values
        .iter()
        .cloned()
        .enumerate()
        .partition(|(i, _)| i % 2 == 0);
    let evens: Vec<String> = evens.into_iter().map(|(_, v)| v).collect();
    let odds: Vec<String> = odds.into_iter().map(|(_, v)| v).collect();
    run(true, evens).await;
    assert_eq!(dig_txt(fqdn), odds);
    run(true, odds).await;
    assert!(dig_txt(fqdn).is_empty());
}
