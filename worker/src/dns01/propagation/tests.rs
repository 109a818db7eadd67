//! Unit tests of the propagation module's pure parts.

use std::net::Ipv4Addr;

use hickory_proto::op::OpCode;
use hickory_proto::rr::Record;
use hickory_proto::rr::rdata::{A, CNAME, NS, SOA, TXT};

use super::*;

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn soa(owner: &str) -> Record {
    let data = SOA::new(name("ns1.x."), name("admin.x."), 1, 3600, 600, 86400, 60);
    Record::from_rdata(name(owner), 60, RData::SOA(data))
}

fn response(code: ResponseCode) -> Message {
    let mut m = Message::response(1, OpCode::Query);
    m.metadata.response_code = code;
    m
}

#[test]
fn challenge_names() {
    assert_eq!(
        challenge_fqdn("example.com").unwrap(),
        "_acme-challenge.example.com."
    );
    assert_eq!(
        challenge_fqdn("example.com.").unwrap(),
        "_acme-challenge.example.com."
    );
    assert_eq!(
        challenge_fqdn("*.example.com").unwrap(),
        "_acme-challenge.example.com."
    );
    assert_eq!(
        challenge_fqdn("Sub.Example.COM").unwrap(),
        "_acme-challenge.sub.example.com."
    );
    assert_eq!(
        challenge_fqdn("bücher.example").unwrap(),
        "_acme-challenge.xn--bcher-kva.example."
    );
    assert!(challenge_fqdn("").is_err());
    assert!(challenge_fqdn("*.").is_err());
    assert!(challenge_fqdn("a.*.example.com").is_err());
    assert!(matches!(challenge_fqdn("a..b"), Err(DnsError::Config(_))));
}

#[test]
fn apex_and_wildcard_share_a_name() {
    assert_eq!(
        challenge_fqdn("proto.test").unwrap(),
        challenge_fqdn("*.proto.test").unwrap()
    );
}

#[test]
fn resolv_conf() {
    let text = "# comment\nsearch example.com\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\n\
                nameserver ::1\noptions ndots:5\nnameserver bogus\n";
    let got = parse_resolv_conf(text);
    assert_eq!(
        got,
        vec![
            "10.0.0.2:53".parse().unwrap(),
            "[fe80::1]:53".parse().unwrap(),
            "[::1]:53".parse().unwrap(),
        ]
    );
}

#[test]
fn no_resolvers_is_config_error() {
    assert!(matches!(
        Propagation::new(PropagationConfig::new(Vec::new())),
        Err(DnsError::Config(_))
    ));
}

#[test]
fn zone_from_positive_soa() {
    let mut m = response(ResponseCode::NoError);
    m.add_answer(soa("proto.test."));
    assert_eq!(
        zone_from_soa_answer(&m, &name("proto.test.")),
        Some(name("proto.test."))
    );
}

#[test]
fn zone_from_negative_answer_authority() {
    let mut m = response(ResponseCode::NXDomain);
    m.add_authority(soa("proto.test."));
    let candidate = name("_acme-challenge.a.proto.test.");
    assert_eq!(
        zone_from_soa_answer(&m, &candidate),
        Some(name("proto.test."))
    );
    // An SOA that does not enclose the name is ignored.
    assert_eq!(zone_from_soa_answer(&m, &name("other.test.")), None);
}

#[test]
fn root_soa_is_not_a_zone() {
    let mut m = response(ResponseCode::NXDomain);
    m.add_authority(soa("."));
    assert_eq!(zone_from_soa_answer(&m, &name("x.nowhere.invalid.")), None);
}

#[test]
fn referral_names_the_child_zone() {
    let mut m = response(ResponseCode::NoError);
    m.add_authority(Record::from_rdata(
        name("child.proto.test."),
        60,
        RData::NS(NS(name("ns1.proto.test."))),
    ));
    let candidate = name("_acme-challenge.child.proto.test.");
    assert_eq!(
        zone_from_soa_answer(&m, &candidate),
        Some(name("child.proto.test."))
    );
}

#[test]
fn alias_is_not_a_zone_apex() {
    let mut m = response(ResponseCode::NoError);
    let candidate = name("www.proto.test.");
    m.add_answer(Record::from_rdata(
        candidate.clone(),
        60,
        RData::CNAME(CNAME(name("proto.test."))),
    ));
    m.add_answer(soa("proto.test."));
    assert_eq!(zone_from_soa_answer(&m, &candidate), None);
}

#[test]
fn empty_or_refused_answers_name_no_zone() {
    assert_eq!(
        zone_from_soa_answer(&response(ResponseCode::NoError), &name("a.test.")),
        None
    );
    assert_eq!(
        zone_from_soa_answer(&response(ResponseCode::Refused), &name("a.test.")),
        None
    );
}

#[test]
fn txt_values_join_strings_and_match_names() {
    let fqdn = name("_acme-challenge.proto.test.");
    let mut m = response(ResponseCode::NoError);
    m.add_answer(Record::from_rdata(
        fqdn.clone(),
        60,
        RData::TXT(TXT::new(vec!["abc".into(), "def".into()])),
    ));
    m.add_answer(Record::from_rdata(
        name("_ACME-challenge.PROTO.test."),
        60,
        RData::TXT(TXT::new(vec!["second".into()])),
    ));
    m.add_answer(Record::from_rdata(
        name("elsewhere.proto.test."),
        60,
        RData::TXT(TXT::new(vec!["nope".into()])),
    ));
    m.add_answer(Record::from_rdata(
        fqdn.clone(),
        60,
        RData::A(A(Ipv4Addr::LOCALHOST)),
    ));
    assert_eq!(
        txt_values(&m, &fqdn),
        vec!["abcdef".to_owned(), "second".to_owned()]
    );
}

#[test]
fn ip_of_records() {
    assert_eq!(
        ip_of(&RData::A(A(Ipv4Addr::LOCALHOST))),
        Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
    );
    assert_eq!(ip_of(&RData::TXT(TXT::new(vec![]))), None);
}
