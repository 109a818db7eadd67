//! Propagation look-ups (CNAME following, SOA walk, NS servers, TXT wait) against a real,
//! authoritative-only BIND 9 used as the "resolver" (tests/dns/start-bind.sh).

use std::time::Duration;

use certfleet_tests::dns::*;
use certfleet_worker::dns01::{Dns01Provider, DnsError, Propagation, RetryKind, challenge_fqdn};
use tokio::time::Instant;

#[tokio::test]
async fn find_zone_walks_up_to_the_apex() {
    let check = propagation();
    for name in [
        "_acme-challenge.a.b.proto.test.",
        "_acme-challenge.proto.test.",
        // A CNAME owner belongs to the zone holding the alias, not its target's.
        "_acme-challenge.cname.proto.test.",
        "ns1.proto.test.",
        "proto.test.",
        "PROTO.Test",
    ] {
        assert_eq!(
            check.find_zone(name).await.unwrap(),
            "proto.test.",
            "{name}"
        );
    }
    assert_eq!(
        check.find_zone("abc.deleg.test.").await.unwrap(),
        "deleg.test."
    );
}

/// Names outside the server's zones are REFUSED at every level: an unknown zone naming the
/// name, not a retry.
#[tokio::test]
async fn unknown_zone_is_not_retryable() {
    let check = propagation();
    let err = check
        .find_zone("_acme-challenge.x.nowhere.invalid.")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DnsError::UnknownZone(m) if m.contains("_acme-challenge.x.nowhere.invalid.")),
        "{err:?}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn no_cname_returns_the_name() {
    let check = propagation();
    let fqdn = "_acme-challenge.plain.proto.test.";
    assert_eq!(check.follow_cnames(fqdn).await.unwrap(), fqdn);
    // Outside every zone (REFUSED): the name itself, find_zone reports the problem.
    let out = "_acme-challenge.nowhere.invalid.";
    assert_eq!(check.follow_cnames(out).await.unwrap(), out);
}

/// `_acme-challenge.cname.proto.test.` is a CNAME to `abc.deleg.test.`: the value is written
/// there, in zone deleg.test., and found there.
#[tokio::test]
async fn cname_delegation_lands_in_the_other_zone() {
    let p = provider();
    let check = propagation();
    let fqdn = challenge_fqdn("cname.proto.test").unwrap();
    let target = check.follow_cnames(&fqdn).await.unwrap();
    assert_eq!(target, "abc.deleg.test.");
    let zone = check.find_zone(&target).await.unwrap();
    assert_eq!(zone, "deleg.test.");

    p.present(&target, &zone, "delegated-value").await.unwrap();
    check
        .wait_for_txt(&target, &zone, "delegated-value", WAIT, INTERVAL)
        .await
        .unwrap();
    assert_eq!(
        dig_txt("abc.deleg.test."),
        vec!["delegated-value".to_owned()]
    );
    p.cleanup(&target, &zone, "delegated-value").await.unwrap();
    assert!(dig_txt("abc.deleg.test.").is_empty());
}

#[tokio::test]
async fn cname_chain_and_loop() {
    let check = propagation();
    let end = check
        .follow_cnames("_acme-challenge.chain.proto.test.")
        .await
        .unwrap();
    assert_eq!(end, "hop2.deleg.test.");
    let err = check
        .follow_cnames("_acme-challenge.loop.proto.test.")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DnsError::Config(m) if m.contains("loop")),
        "{err:?}"
    );
}

#[tokio::test]
async fn authoritative_servers_of_the_zones() {
    let check = propagation();
    let servers = check.authoritative_servers("proto.test.").await.unwrap();
    let mut names: Vec<_> = servers.iter().map(|s| s.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["ns1.proto.test.", "ns2.proto.test."]);
    assert!(servers.iter().all(|s| s.addr == bind_addr()));
    // Out-of-zone NS name, resolved through the resolver.
    let servers = check.authoritative_servers("deleg.test.").await.unwrap();
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0].name, "ns1.proto.test.");

    let mut other_port = propagation_config();
    other_port.nameserver_port = 5353;
    let servers = Propagation::new(other_port)
        .unwrap()
        .authoritative_servers("proto.test.")
        .await
        .unwrap();
    assert!(
        servers
            .iter()
            .all(|s| s.addr == "127.0.0.155:5353".parse().unwrap())
    );

    let err = check
        .authoritative_servers("nowhere.invalid.")
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::UnknownZone(_)), "{err:?}");
}

/// An absent value: a retryable NotPropagated error within about the timeout, naming every
/// server that lacks it.
#[tokio::test]
async fn wait_for_absent_value_times_out() {
    let check = propagation();
    let started = Instant::now();
    let err = check
        .wait_for_txt(
            "_acme-challenge.absent.proto.test.",
            "proto.test.",
            "never-presented",
            Duration::from_secs(1),
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(4),
        "{elapsed:?}"
    );
    assert!(
        matches!(
            &err,
            DnsError::Retryable {
                kind: RetryKind::NotPropagated,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    for part in [
        "ns1.proto.test. (127.0.0.155:53)",
        "ns2.proto.test. (127.0.0.155:53)",
        "NXDOMAIN",
    ] {
        assert!(msg.contains(part), "{msg}");
    }
}

/// A value that appears while waiting is found.
#[tokio::test]
async fn wait_sees_a_late_value() {
    let p = provider();
    let check = propagation();
    let fqdn = "_acme-challenge.late.proto.test.";
    let waiter = {
        let check = check.clone();
        tokio::spawn(async move {
            check
                .wait_for_txt(fqdn, "proto.test.", "late-value", WAIT, INTERVAL)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    p.present(fqdn, "proto.test.", "late-value").await.unwrap();
    waiter.await.unwrap().unwrap();
    p.cleanup(fqdn, "proto.test.", "late-value").await.unwrap();
}

/// Present another value: the wait for a different one still times out and says what the
/// servers have.
#[tokio::test]
async fn wait_ignores_other_values() {
    let p = provider();
    let check = propagation();
    let fqdn = "_acme-challenge.other.proto.test.";
    p.present(fqdn, "proto.test.", "someone-elses")
        .await
        .unwrap();
    let err = check
        .wait_for_txt(
            fqdn,
            "proto.test.",
            "mine",
            Duration::from_millis(500),
            INTERVAL,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("1 other TXT value(s)"), "{err}");
    p.cleanup(fqdn, "proto.test.", "someone-elses")
        .await
        .unwrap();
}
