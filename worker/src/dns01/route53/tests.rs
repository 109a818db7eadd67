use super::errors::classify_code;
use super::*;

#[test]
fn service_codes_are_classified() {
    let m = || "x".to_owned();
    for code in [
        "AccessDenied",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
    ] {
        assert!(
            matches!(
                classify_code(Some(code), Some(403), m(), "z."),
                DnsError::Refused(_)
            ),
            "{code}"
        );
    }
    assert!(matches!(
        classify_code(Some("NoSuchHostedZone"), Some(404), m(), "example.com."),
        DnsError::UnknownZone(s) if s.starts_with("example.com.")
    ));
    for code in [
        "Throttling",
        "PriorRequestNotComplete",
        "ServiceUnavailable",
    ] {
        assert!(
            classify_code(Some(code), Some(400), m(), "").is_retryable(),
            "{code}"
        );
    }
    assert!(classify_code(None, Some(502), m(), "").is_retryable());
    assert!(matches!(
        classify_code(Some("InvalidChangeBatch"), Some(400), m(), ""),
        DnsError::Rejected(_)
    ));
    assert!(matches!(
        classify_code(None, Some(403), m(), ""),
        DnsError::Refused(_)
    ));
}

#[test]
fn debug_hides_static_keys() {
    let mut c = Route53Config::new();
    c.credentials = Some(AwsStaticCredentials {
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG"),
        session_token: Some(Secret::new("session-tok")),
    });
    let debug = format!("{c:?}");
    assert!(
        !debug.contains("wJalrXUtnFEMI") && !debug.contains("session-tok"),
        "{debug}"
    );
}
