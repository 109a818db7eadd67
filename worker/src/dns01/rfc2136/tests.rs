//! Unit tests of the RFC 2136 provider's pure parts: configuration parsing, message
//! building, signing and answer classification.

use super::*;
use hickory_proto::rr::rdata::tsig::{TSIG, make_tsig_record};

const SECRET_B64: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXh5eno=";

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn server() -> SocketAddr {
    "127.0.0.153:53".parse().unwrap()
}

fn answer(rcode: ResponseCode, tsig_error: Option<TsigError>) -> Message {
    let mut m = Message::response(7, OpCode::Update);
    m.metadata.response_code = rcode;
    let tsig = TSIG::new(
        TsigAlgorithm::HmacSha256,
        1_700_000_000,
        300,
        if tsig_error.is_some() {
            Vec::new()
        } else {
            vec![1; 32]
        },
        7,
        tsig_error,
        Vec::new(),
    );
    m.set_signature(Box::new(make_tsig_record(name("certfleet-test."), tsig)));
    m
}

fn classify(m: &Message) -> Result<(), DnsError> {
    classify_answer(
        server(),
        &name("_acme-challenge.x.dns01.test."),
        &name("dns01.test."),
        m,
    )
}

#[test]
fn secret_never_printed() {
    let secret = TsigSecret::from_base64(SECRET_B64).unwrap();
    assert_eq!(format!("{secret:?}"), "TsigSecret(***)");
    let config = Rfc2136Config::new("127.0.0.1", "k.", secret);
    let debug = format!("{config:?}");
    assert!(!debug.contains("secret-secret"), "{debug}");
    assert!(!debug.contains(SECRET_B64), "{debug}");
    let provider = Rfc2136Provider::new(config).unwrap();
    let debug = format!("{provider:?}");
    assert!(
        debug.contains("***") && !debug.contains(SECRET_B64),
        "{debug}"
    );
    // A bad secret's error does not quote it.
    let err = TsigSecret::from_base64("not*base64/secret!").unwrap_err();
    assert!(!err.to_string().contains("secret!"), "{err}");
    assert!(matches!(err, DnsError::Config(_)));
    assert!(TsigSecret::from_base64("").is_err());
}

#[test]
fn algorithms() {
    assert_eq!(
        "hmac-sha256".parse::<TsigAlg>().unwrap(),
        TsigAlg::HmacSha256
    );
    assert_eq!(
        "HMAC-SHA512.".parse::<TsigAlg>().unwrap(),
        TsigAlg::HmacSha512
    );
    assert_eq!(
        "hmac-sha384".parse::<TsigAlg>().unwrap(),
        TsigAlg::HmacSha384
    );
    assert!(matches!(
        "hmac-sha1".parse::<TsigAlg>(),
        Err(DnsError::Config(_))
    ));
    assert!("hmac-md5".parse::<TsigAlg>().is_err());
}

#[test]
fn nameserver_forms() {
    let p = |s: &str| Nameserver::parse(s);
    assert_eq!(
        p("127.0.0.1").unwrap(),
        Nameserver::Addr("127.0.0.1:53".parse().unwrap())
    );
    assert_eq!(
        p("127.0.0.1:5353").unwrap(),
        Nameserver::Addr("127.0.0.1:5353".parse().unwrap())
    );
    assert_eq!(
        p("[::1]:54").unwrap(),
        Nameserver::Addr("[::1]:54".parse().unwrap())
    );
    assert_eq!(
        p("::1").unwrap(),
        Nameserver::Addr("[::1]:53".parse().unwrap())
    );
    assert_eq!(
        p("ns1.example.com").unwrap(),
        Nameserver::Host("ns1.example.com".into(), 53)
    );
    assert_eq!(
        p("ns1.example.com:8053").unwrap(),
        Nameserver::Host("ns1.example.com".into(), 8053)
    );
    assert!(p("ns1.example.com:x").is_err());
    assert!(p("").is_err());
}

#[test]
fn add_message() {
    let fqdn = name("_acme-challenge.x.dns01.test.");
    let m = build_update(Op::Add, &fqdn, &name("dns01.test."), "abc", 60).unwrap();
    assert_eq!(m.metadata.op_code, OpCode::Update);
    assert!(!m.metadata.recursion_desired);
    assert_eq!(m.queries.len(), 1, "zone section");
    assert_eq!(m.queries[0].name(), &name("dns01.test."));
    assert_eq!(m.queries[0].query_type(), RecordType::SOA);
    assert_eq!(m.queries[0].query_class(), DNSClass::IN);
    assert!(m.answers.is_empty(), "no prerequisites");
    let [rr] = m.authorities.as_slice() else {
        panic!("one update RR")
    };
    assert_eq!(rr.name, fqdn);
    assert_eq!(rr.dns_class, DNSClass::IN);
    assert_eq!(rr.ttl, 60);
    let RData::TXT(txt) = &rr.data else {
        panic!("TXT")
    };
    assert_eq!(&*txt.txt_data, &[b"abc".to_vec().into_boxed_slice()]);
    // It round-trips through the wire format.
    let back = Message::from_vec(&m.to_vec().unwrap()).unwrap();
    assert_eq!(back.authorities.len(), 1);
}

#[test]
fn delete_message_is_class_none_ttl_zero() {
    let fqdn = name("_acme-challenge.dns01.test.");
    let m = build_update(Op::Delete, &fqdn, &name("dns01.test."), "abc", 60).unwrap();
    let [rr] = m.authorities.as_slice() else {
        panic!("one update RR")
    };
    assert_eq!(rr.dns_class, DNSClass::NONE);
    assert_eq!(rr.ttl, 0);
    assert!(matches!(&rr.data, RData::TXT(_)));
}

#[test]
fn bad_update_inputs() {
    let other_zone = build_update(
        Op::Add,
        &name("_acme-challenge.a.test."),
        &name("b.test."),
        "v",
        60,
    );
    assert!(matches!(other_zone, Err(DnsError::Config(m)) if m.contains("not inside zone")));
    assert!(build_update(Op::Add, &name("a.test."), &name("test."), "", 60).is_err());
    assert!(parse_fqdn("a..b", "zone").is_err());
    assert_eq!(
        parse_fqdn("Example.com", "zone").unwrap().to_ascii(),
        "example.com."
    );
}

#[test]
fn long_values_are_split() {
    let value = "v".repeat(300);
    let txt = txt_rdata(&value);
    assert_eq!(txt.txt_data.len(), 2);
    assert_eq!(txt.txt_data[0].len(), 255);
    assert_eq!(txt.txt_data[1].len(), 45);
}

#[test]
fn signing_round_trip() {
    let secret = TsigSecret::from_base64(SECRET_B64).unwrap();
    let signer =
        TSigner::new(secret.0.clone(), TsigAlgorithm::HmacSha256, name("k."), 300).unwrap();
    let mut m = build_update(Op::Add, &name("a.z.test."), &name("z.test."), "v", 60).unwrap();
    let verifier = m.finalize(&signer, 1_700_000_000).unwrap();
    assert!(verifier.is_some());
    let bytes = m.to_vec().unwrap();
    signer.verify_message_byte(&bytes, None, true).unwrap();
    let other = TSigner::new(
        b"other".to_vec(),
        TsigAlgorithm::HmacSha256,
        name("k."),
        300,
    )
    .unwrap();
    assert!(other.verify_message_byte(&bytes, None, true).is_err());
}

#[test]
fn classification() {
    assert!(classify(&answer(ResponseCode::NoError, None)).is_ok());

    let mut unsigned = answer(ResponseCode::NoError, None);
    unsigned.signature = None;
    assert!(classify(&unsigned).unwrap_err().is_retryable());

    let err = classify(&answer(ResponseCode::NotAuth, Some(TsigError::BadSig))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "nameserver 127.0.0.153:53 refused the update for _acme-challenge.x.dns01.test.: NOTAUTH (TSIG BADSIG)"
    );
    assert!(!err.is_retryable());
    for tsig in [TsigError::BadKey, TsigError::BadTime] {
        let err = classify(&answer(ResponseCode::NotAuth, Some(tsig))).unwrap_err();
        assert!(matches!(err, DnsError::Refused(_)), "{err:?}");
    }
    let err = classify(&answer(ResponseCode::NotAuth, Some(TsigError::BadTime))).unwrap_err();
    assert!(err.to_string().ends_with("NOTAUTH (TSIG BADTIME)"), "{err}");
    let mut plain_notauth = answer(ResponseCode::NotAuth, None);
    plain_notauth.signature = None;
    let err = classify(&plain_notauth).unwrap_err();
    assert!(
        matches!(&err, DnsError::Refused(m) if m.ends_with("NOTAUTH (not authoritative for zone dns01.test.)")),
        "{err:?}"
    );
    let err = classify(&answer(ResponseCode::Refused, None)).unwrap_err();
    assert!(
        matches!(&err, DnsError::Refused(m) if m.ends_with(": REFUSED")),
        "{err:?}"
    );
    let err = classify(&answer(ResponseCode::NotZone, None)).unwrap_err();
    assert!(
        matches!(&err, DnsError::UnknownZone(m) if m.contains("dns01.test.")),
        "{err:?}"
    );
    let err = classify(&answer(ResponseCode::ServFail, None)).unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    let err = classify(&answer(ResponseCode::FormErr, None)).unwrap_err();
    assert!(
        matches!(&err, DnsError::Rejected(m) if m.ends_with("FORMERR")),
        "{err:?}"
    );
}

/// How the fake server signs its NOERROR answer.
#[derive(Clone, Copy)]
enum Signing {
    Good,
    WrongKey,
    Unsigned,
}

/// A one-shot UDP "nameserver" on 127.0.0.1 answering NOERROR to one update.
async fn fake_server(signing: Signing) -> SocketAddr {
    use hickory_proto::rr::TSigResponseContext;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        let (n, peer) = socket.recv_from(&mut buf).await.unwrap();
        let request = Message::from_vec(&buf[..n]).unwrap();
        let request_mac = request.signature().unwrap().data.mac.clone();
        let mut response = Message::response(request.metadata.id, OpCode::Update);
        response.add_queries(request.queries.clone());
        let unsigned = response.to_vec().unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let key = match signing {
            Signing::Good => TsigSecret::from_base64(SECRET_B64).unwrap().0,
            Signing::WrongKey => b"wrong".to_vec(),
            Signing::Unsigned => Vec::new(),
        };
        if !key.is_empty() {
            let signer = TSigner::new(key, TsigAlgorithm::HmacSha256, name("k."), 300).unwrap();
            let ctx = TSigResponseContext::new(request.metadata.id, now, signer, request_mac, None);
            response.set_signature(ctx.sign(&unsigned).unwrap());
        }
        socket
            .send_to(&response.to_vec().unwrap(), peer)
            .await
            .unwrap();
    });
    addr
}

async fn present_via(signing: Signing) -> Result<(), DnsError> {
    let addr = fake_server(signing).await;
    let secret = TsigSecret::from_base64(SECRET_B64).unwrap();
    let mut config = Rfc2136Config::new(addr.to_string(), "k.", secret);
    config.timeout = Duration::from_secs(2);
    let provider = Rfc2136Provider::new(config).unwrap();
    provider
        .present("_acme-challenge.a.z.test.", "z.test.", "value")
        .await
}

#[tokio::test]
async fn answer_signature_is_verified() {
    present_via(Signing::Good).await.unwrap();
    let err = present_via(Signing::WrongKey).await.unwrap_err();
    assert!(
        matches!(&err, DnsError::Retryable { kind: RetryKind::BadResponse, message } if message.contains("TSIG verification")),
        "{err:?}"
    );
    let err = present_via(Signing::Unsigned).await.unwrap_err();
    assert!(
        matches!(&err, DnsError::Retryable { kind: RetryKind::BadResponse, message } if message.contains("not TSIG-signed")),
        "{err:?}"
    );
}
