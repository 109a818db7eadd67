//! Tests of the checks, on certificates made here (rcgen).

use certfleet_common::seal::SealedKey;
use certfleet_common::storage::{BUNDLE_SCHEMA, POINTER_SCHEMA};
use certfleet_common::{CertName, ChallengeType, KeyType};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SerialNumber,
};
use time::OffsetDateTime;
use uuid::Uuid;

use super::*;

fn ca(label: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, label);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca")
}

/// One stored version: pointer, bundle and the opened key.
struct Version {
    pointer: Pointer,
    bundle: Bundle,
    key: Secret<String>,
}

struct Spec<'a> {
    domains: &'a [&'a str],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    key: KeyPair,
}

impl Default for Spec<'_> {
    fn default() -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            domains: &["www.example.com", "example.com"],
            not_before: now - time::Duration::hours(1),
            not_after: now + time::Duration::days(90),
            key: KeyPair::generate().expect("key"),
        }
    }
}

fn version(spec: Spec<'_>, issuer: &CertifiedIssuer<'static, KeyPair>) -> Version {
    let names: Vec<String> = spec.domains.iter().map(|d| d.to_string()).collect();
    let mut params = CertificateParams::new(names.clone()).expect("params");
    params.not_before = spec.not_before;
    params.not_after = spec.not_after;
    params.serial_number = Some(SerialNumber::from(vec![0x3f, 0x1a, 0x9c]));
    let cert = params.signed_by(&spec.key, issuer).expect("leaf");
    let cert_pem = cert.pem();
    let serial = "3f1a9c".to_string();
    // rcgen keeps the second; the version id is built from it.
    let not_before = spec.not_before.replace_nanosecond(0).expect("ns");
    let version = version_id(not_before, &serial);
    let name = CertName::from_domain(spec.domains[0]).expect("name");
    let job_id = Uuid::new_v4();
    let key_pem = spec.key.serialize_pem();
    Version {
        pointer: Pointer {
            schema: POINTER_SCHEMA.into(),
            name: name.clone(),
            version: version.clone(),
            bundle_key: format!("certs/{name}/versions/{version}.json"),
            serial,
            domains: names,
            key_type: KeyType::EcdsaP256,
            not_before,
            not_after: spec.not_after,
            renew_at: spec.not_after - time::Duration::days(30),
            job_id,
            fence: 7,
            history: vec![],
            updated_at: OffsetDateTime::now_utc(),
            challenge: ChallengeType::Http01,
            ari_id: None,
            profile: None,
            issuer: None,
            ca: None,
            revoked: None,
            csr: None,
        },
        bundle: Bundle {
            schema: BUNDLE_SCHEMA.into(),
            name,
            version,
            cert_pem,
            chain_pem: issuer.pem(),
            key: Some(SealedKey::Plain {
                pem: key_pem.clone(),
            }),
            key_scope: Default::default(),
            job_id: Some(job_id),
            issuer: None,
            revoked: None,
        },
        key: Secret::new(key_pem),
    }
}

#[test]
fn no_key_passes_only_for_a_certificate_of_the_operators_csr() {
    let ca = ca("test CA");
    let mut v = version(Spec::default(), &ca);
    let now = OffsetDateTime::now_utc();
    let refused = check(&v.pointer, &v.bundle, None, now).expect_err("accepted");
    assert!(refused.contains("holds no private key"), "{refused}");
    v.pointer.csr = Some("MIIB".into());
    assert!(check(&v.pointer, &v.bundle, None, now).is_ok());
}

fn run(v: &Version) -> Result<Checked, String> {
    check(
        &v.pointer,
        &v.bundle,
        Some(&v.key),
        OffsetDateTime::now_utc(),
    )
}

fn refused(v: &Version, needle: &str) {
    match run(v) {
        Ok(c) => panic!("accepted ({c:?}), expected a refusal with {needle:?}"),
        Err(reason) => assert!(reason.contains(needle), "{reason:?} lacks {needle:?}"),
    }
}

#[test]
fn a_genuine_version_passes_and_gives_its_serial() {
    let ca = ca("test CA");
    let v = version(Spec::default(), &ca);
    assert_eq!(
        run(&v),
        Ok(Checked {
            serial: "3f1a9c".into()
        })
    );
    // P-384, Ed25519 and RSA keys too.
    for alg in [
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_ED25519,
        &rcgen::PKCS_RSA_SHA256,
    ] {
        let key = if alg == &rcgen::PKCS_RSA_SHA256 {
            KeyPair::generate_rsa_for(alg, rcgen::RsaKeySize::_2048)
        } else {
            KeyPair::generate_for(alg)
        }
        .expect("key");
        let v = version(
            Spec {
                key,
                ..Spec::default()
            },
            &ca,
        );
        assert!(run(&v).is_ok(), "{alg:?}: {:?}", run(&v));
    }
    // A wildcard covers its one label.
    let v = version(
        Spec {
            domains: &["*.example.com", "example.com"],
            ..Spec::default()
        },
        &ca,
    );
    assert!(run(&v).is_ok(), "{:?}", run(&v));
}

#[test]
fn a_key_of_another_certificate_is_refused() {
    let ca = ca("test CA");
    let mut v = version(Spec::default(), &ca);
    let other = KeyPair::generate().expect("key").serialize_pem();
    v.key = Secret::new(other);
    refused(&v, "the private key does not match the certificate");
    v.key = Secret::new("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into());
    refused(&v, "the private key cannot be read");
    v.key = Secret::new("not a key".into());
    refused(&v, "the private key is not PEM");
}

#[test]
fn dates_outside_the_validity_are_refused() {
    let ca = ca("test CA");
    let now = OffsetDateTime::now_utc();
    let expired = version(
        Spec {
            not_before: now - time::Duration::days(91),
            not_after: now - time::Duration::days(1),
            ..Spec::default()
        },
        &ca,
    );
    refused(&expired, "has expired");
    let future = version(
        Spec {
            not_before: now + time::Duration::hours(1),
            ..Spec::default()
        },
        &ca,
    );
    refused(&future, "not valid yet");
    // A minute ahead is clock skew, not a reason.
    let skewed = version(
        Spec {
            not_before: now + time::Duration::minutes(1),
            ..Spec::default()
        },
        &ca,
    );
    assert!(run(&skewed).is_ok(), "{:?}", run(&skewed));
}

#[test]
fn uncovered_domains_are_refused() {
    let ca = ca("test CA");
    let mut v = version(Spec::default(), &ca);
    v.pointer.domains.push("shop.example.com".into());
    refused(&v, "does not cover shop.example.com");
    v.pointer.domains.clear();
    refused(&v, "lists no domains");
}

#[test]
fn a_chain_that_does_not_verify_is_refused() {
    let ca = ca("test CA");
    let other = ca_other();
    let mut v = version(Spec::default(), &ca);
    v.bundle.chain_pem = other.pem();
    refused(&v, "the chain does not verify");
    // An intermediate that is not signed by the next one.
    let mut v = version(Spec::default(), &ca);
    v.bundle.chain_pem = format!("{}{}", ca.pem(), other.pem());
    refused(&v, "chain certificate 1");
    // A correct two-level chain passes.
    let mut v = version(Spec::default(), &ca);
    v.bundle.chain_pem = format!("{}{}", ca.pem(), ca.pem());
    assert!(run(&v).is_ok(), "{:?}", run(&v));
    // Garbage instead of a chain.
    let mut v = version(Spec::default(), &ca);
    v.bundle.chain_pem = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into();
    refused(&v, "holds a \"PRIVATE KEY\" block");
}

fn ca_other() -> CertifiedIssuer<'static, KeyPair> {
    ca("another CA")
}

#[test]
fn pointer_and_bundle_must_agree() {
    let ca = ca("test CA");
    let mut v = version(Spec::default(), &ca);
    v.pointer.serial = "ffff".into();
    refused(&v, "the pointer says serial ffff");

    let mut v = version(Spec::default(), &ca);
    v.bundle.job_id = Some(Uuid::new_v4());
    refused(&v, "stored by job");
    // Bundles of older releases record no job: accepted.
    v.bundle.job_id = None;
    assert!(run(&v).is_ok(), "{:?}", run(&v));

    // Another version's certificate under this version's key.
    let mut v = version(Spec::default(), &ca);
    let other = version(
        Spec {
            not_before: OffsetDateTime::now_utc() - time::Duration::hours(2),
            ..Spec::default()
        },
        &ca,
    );
    v.bundle.cert_pem = other.bundle.cert_pem;
    v.key = other.key;
    refused(&v, &format!("is version {}", other.pointer.version));

    let mut v = version(Spec::default(), &ca);
    v.bundle.version = "20200101T000000Z-1".into();
    refused(&v, "but its bundle holds");

    let mut v = version(Spec::default(), &ca);
    v.bundle.cert_pem = String::new();
    refused(&v, "holds no certificate");
}

#[test]
fn wildcards_cover_one_label() {
    assert!(covers("*.example.com", "www.example.com"));
    assert!(covers("*.EXAMPLE.com", "WWW.example.com"));
    assert!(covers("*.example.com", "*.example.com"));
    assert!(!covers("*.example.com", "example.com"));
    assert!(!covers("*.example.com", "a.b.example.com"));
    assert!(!covers("www.example.com", "api.example.com"));
}
