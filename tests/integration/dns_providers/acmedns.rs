//! acme-dns provider against a fake acme-dns (tests/dns/fake_acmedns.rs) serving
//! accounts under deleg.test on the test BIND, reached through a CNAME from proto.test.

use std::time::Duration;

use certfleet_tests::dns::fake_acmedns::FakeAcmeDns;
use certfleet_tests::dns::*;
use certfleet_worker::dns01::acmedns::register;
use certfleet_worker::dns01::{
    AcmeDnsAccount, AcmeDnsConfig, AcmeDnsProvider, Dns01Provider, DnsError, challenge_fqdn,
};

/// The storage file lego keeps, for one domain.
fn storage_json(domain: &str, account: &AcmeDnsAccount, password: &str) -> String {
    serde_json::json!({
        domain: {
            "fulldomain": account.fulldomain,
            "subdomain": account.subdomain,
            "username": account.username,
            "password": password,
            "server_url": account.server_url,
        }
    })
    .to_string()
}

/// The registered account's password, read back from the fake (the type hides it).
async fn password_of(api: &FakeAcmeDns, account: &AcmeDnsAccount) -> String {
    let st = api.state.lock().await;
    st.users
        .iter()
        .find(|u| u.username == account.username)
        .unwrap()
        .password
        .clone()
}

#[tokio::test]
async fn cname_delegation_present_and_two_value_window() {
    let api = FakeAcmeDns::start("deleg.test", bind_provider()).await;
    let account = register(&api.base(), Duration::from_secs(5)).await.unwrap();
    assert!(account.fulldomain.ends_with(".deleg.test"), "{account:?}");
    let password = password_of(&api, &account).await;
    assert!(!format!("{account:?}").contains(&password));

    // The operator's one-time setup: _acme-challenge.<domain> CNAME <fulldomain>.
    let domain = format!("cname2-{}.proto.test", run_id());
    let challenge = challenge_fqdn(&domain).unwrap();
    nsupdate(&format!(
        "zone proto.test\nupdate add {challenge} 60 CNAME {}.",
        account.fulldomain
    ));
    let check = propagation();
    let target = check.follow_cnames(&challenge).await.unwrap();
    assert_eq!(target, format!("{}.", account.fulldomain));
    let zone = check.find_zone(&target).await.unwrap();
    assert_eq!(zone, "deleg.test.");

    let config =
        AcmeDnsConfig::from_storage_json(api.base(), &storage_json(&domain, &account, &password))
            .unwrap();
    let p = AcmeDnsProvider::new(config).unwrap();
    assert!(!format!("{p:?}").contains(&password));

    let (apex, wild, third) = (
        value43("acme-apex"),
        value43("acme-wild"),
        value43("acme-third"),
    );
    p.present(&target, &zone, &apex).await.unwrap();
    p.present(&target, &zone, &wild).await.unwrap();
    for v in [&apex, &wild] {
        check
            .wait_for_txt(&target, &zone, v, WAIT, INTERVAL)
            .await
            .unwrap();
    }
    let mut both = vec![apex.clone(), wild.clone()];
    both.sort();
    assert_eq!(dig_txt(&target), both);
    // (The authoritative-only BIND does not chase the CNAME into deleg.test; a CA's
    // resolver does, and lands on `target`.)

    // cleanup cannot delete with acme-dns: Ok, values stay.
    p.cleanup(&target, &zone, &apex).await.unwrap();
    assert_eq!(dig_txt(&target), both);

    // A third value replaces the oldest (acme-dns keeps two).
    p.present(&target, &zone, &third).await.unwrap();
    let mut newest = vec![wild.clone(), third.clone()];
    newest.sort();
    assert_eq!(dig_txt(&target), newest);

    // The same account is found whatever the case and final dot.
    p.present(&target.to_ascii_uppercase(), &zone, &third)
        .await
        .unwrap();

    nsupdate(&format!("zone proto.test\nupdate delete {challenge} CNAME"));
}

#[tokio::test]
async fn wrong_key_is_refused_without_leaking_it() {
    let api = FakeAcmeDns::start("deleg.test", bind_provider()).await;
    let account = register(&api.base(), Duration::from_secs(5)).await.unwrap();
    let real = password_of(&api, &account).await;
    let wrong = "WRONGwrongWRONGwrongWRONGwrongWRONGwrong";
    let config =
        AcmeDnsConfig::from_storage_json(api.base(), &storage_json("example.org", &account, wrong))
            .unwrap();
    let p = AcmeDnsProvider::new(config).unwrap();
    let err = p
        .present(&account.fulldomain, "deleg.test.", &value43("v"))
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::Refused(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("HTTP 401") && msg.contains("forbidden"),
        "{msg}"
    );
    let all = format!("{msg} {err:?} {p:?}");
    assert!(!all.contains(wrong) && !all.contains(&real), "{all}");
}

#[tokio::test]
async fn unregistered_name_and_bad_value() {
    let api = FakeAcmeDns::start("deleg.test", bind_provider()).await;
    let account = register(&api.base(), Duration::from_secs(5)).await.unwrap();
    let password = password_of(&api, &account).await;
    let config = AcmeDnsConfig::from_storage_json(
        api.base(),
        &storage_json("example.org", &account, &password),
    )
    .unwrap();
    let p = AcmeDnsProvider::new(config).unwrap();

    // No CNAME to acme-dns: the name is not any account's fulldomain.
    let fqdn = "_acme-challenge.not-delegated.proto.test.";
    let err = p
        .present(fqdn, "proto.test.", &value43("v"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DnsError::Config(m) if m.contains("_acme-challenge.not-delegated.proto.test") && m.contains("register")),
        "{err:?}"
    );
    assert!(!err.to_string().contains(&password));

    // acme-dns only takes 43-character values.
    let err = p
        .present(&account.fulldomain, "deleg.test.", "short")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DnsError::Rejected(m) if m.contains("HTTP 400") && m.contains("bad_txt")),
        "{err:?}"
    );
}
