//! Route 53 provider against moto (AWS API double; no DNS, so nothing is checked on BIND).
//!
//! moto: the test stack's moto service, which serves the Route 53 API on the
//! same port. Each test uses its own hosted zone, named after the run.

use std::time::Duration;

use aws_sdk_route53::Client;
use aws_sdk_route53::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_route53::types::RrType;
use certfleet_tests::dns::{run_id, value43};
use certfleet_worker::dns01::{
    ApiSecret, AwsStaticCredentials, Dns01Provider, DnsError, Route53Config, Route53Provider,
};

/// moto of the test stack (`scripts/stack.sh`'s `moto` service, which
/// serves every AWS API on its one port, Route 53 included).
fn moto() -> String {
    certfleet_tests::var("CERTFLEET_TEST_MOTO_URL", "http://127.0.0.1:9010")
}

fn sdk_client() -> Client {
    let conf = aws_sdk_route53::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .endpoint_url(moto())
        .build();
    Client::from_conf(conf)
}

/// A fresh hosted zone `<label>-<run>.r53.test.`; returns (zone, id).
async fn hosted_zone(client: &Client, label: &str) -> (String, String) {
    let zone = format!("{label}-{}.r53.test.", run_id());
    let out = client
        .create_hosted_zone()
        .name(&zone)
        .caller_reference(format!("{zone}{}", uuid::Uuid::new_v4()))
        .send()
        .await
        .unwrap();
    let id = out
        .hosted_zone()
        .unwrap()
        .id()
        .trim_start_matches("/hostedzone/")
        .to_owned();
    (zone, id)
}

fn config() -> Route53Config {
    let mut c = Route53Config::new();
    c.endpoint_url = Some(moto());
    c.credentials = Some(AwsStaticCredentials {
        access_key_id: "test".into(),
        secret_access_key: ApiSecret::new("test"),
        session_token: None,
    });
    c.timeout = Duration::from_secs(10);
    c.sync_timeout = Duration::from_secs(10);
    c
}

/// The TXT values at `name` (raw, as Route 53 stores them), sorted; None without a set.
async fn txt_values(client: &Client, zone_id: &str, name: &str) -> Option<(i64, Vec<String>)> {
    let out = client
        .list_resource_record_sets()
        .hosted_zone_id(zone_id)
        .send()
        .await
        .unwrap();
    out.resource_record_sets()
        .iter()
        .find(|s| {
            *s.r#type() == RrType::Txt
                && s.name().trim_end_matches('.') == name.trim_end_matches('.')
        })
        .map(|s| {
            let mut v: Vec<String> = s
                .resource_records()
                .iter()
                .map(|r| r.value().to_owned())
                .collect();
            v.sort();
            (s.ttl().unwrap_or_default(), v)
        })
}

fn quoted(v: &str) -> String {
    format!("\"{v}\"")
}

#[tokio::test]
async fn present_two_values_then_cleanup_one_by_one() {
    let client = sdk_client();
    let (zone, zone_id) = hosted_zone(&client, "two").await;
    let p = Route53Provider::new(config()).await.unwrap();
    let fqdn = format!("_acme-challenge.www.{zone}");
    let (a, b) = (value43("r53-apex"), value43("r53-wild"));

    p.present(&fqdn, &zone, &a).await.unwrap();
    p.present(&fqdn, &zone, &b).await.unwrap();
    p.present(&fqdn, &zone, &a).await.unwrap(); // already there: no change
    let mut both = vec![quoted(&a), quoted(&b)];
    both.sort();
    assert_eq!(txt_values(&client, &zone_id, &fqdn).await, Some((10, both)));

    p.cleanup(&fqdn, &zone, &a).await.unwrap();
    assert_eq!(
        txt_values(&client, &zone_id, &fqdn).await,
        Some((10, vec![quoted(&b)]))
    );
    p.cleanup(&fqdn, &zone, &a).await.unwrap(); // absent: Ok
    p.cleanup(&fqdn, &zone, &b).await.unwrap();
    assert_eq!(txt_values(&client, &zone_id, &fqdn).await, None);
    p.cleanup(&fqdn, &zone, &b).await.unwrap();
}

/// Presents racing inside one provider are serialized per name: no value is lost.
#[tokio::test]
async fn concurrent_presents_in_one_provider_keep_every_value() {
    let client = sdk_client();
    let (zone, zone_id) = hosted_zone(&client, "race").await;
    let mut c = config();
    c.hosted_zone_id = Some(format!("/hostedzone/{zone_id}"));
    let p = Route53Provider::new(c).await.unwrap();
    let fqdn = format!("_acme-challenge.{zone}");
    let values: Vec<String> = (0..4).map(|i| value43(&format!("r53-race-{i}"))).collect();
    let (r0, r1, r2, r3) = tokio::join!(
        p.present(&fqdn, &zone, &values[0]),
        p.present(&fqdn, &zone, &values[1]),
        p.present(&fqdn, &zone, &values[2]),
        p.present(&fqdn, &zone, &values[3]),
    );
    for r in [r0, r1, r2, r3] {
        r.unwrap();
    }
    let mut want: Vec<String> = values.iter().map(|v| quoted(v)).collect();
    want.sort();
    assert_eq!(
        txt_values(&client, &zone_id, &fqdn).await.map(|(_, v)| v),
        Some(want)
    );
    let (c0, c1) = tokio::join!(
        p.cleanup(&fqdn, &zone, &values[0]),
        p.cleanup(&fqdn, &zone, &values[1])
    );
    c0.unwrap();
    c1.unwrap();
    let mut left = vec![quoted(&values[2]), quoted(&values[3])];
    left.sort();
    assert_eq!(
        txt_values(&client, &zone_id, &fqdn).await.map(|(_, v)| v),
        Some(left)
    );
}

#[tokio::test]
async fn wrong_hosted_zone_id_is_unknown_zone() {
    let client = sdk_client();
    let (zone, _) = hosted_zone(&client, "wrongid").await;
    let mut c = config();
    c.hosted_zone_id = Some("ZNOSUCHZONE0000".into());
    let p = Route53Provider::new(c).await.unwrap();
    let err = p
        .present(&format!("_acme-challenge.{zone}"), &zone, "v")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DnsError::UnknownZone(m) if m.contains("NoSuchHostedZone")),
        "{err:?}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn unknown_zone_name_is_unknown_zone() {
    let p = Route53Provider::new(config()).await.unwrap();
    let zone = format!("absent-{}.r53.test.", run_id());
    let err = p
        .cleanup(&format!("_acme-challenge.{zone}"), &zone, "v")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DnsError::UnknownZone(m) if m.contains(&zone)),
        "{err:?}"
    );
}
