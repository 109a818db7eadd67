//! One small parser per value type, each with its own tests (linkerd2-proxy
//! `env/types.rs`). They return a reason; the caller adds the variable name.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use base64::Engine as _;

/// Parses a duration such as `30s`, `5m`, `1h30m`, `250ms` or `7d`.
///
/// A unit is required: a bare `30` is ambiguous and rejected.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration (expected e.g. 30s, 5m, 1h30m)".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "{s:?} is not a duration (expected e.g. 30s, 5m, 1h30m)"
            ));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{s:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86_400)),
            "" => return Err(format!("{s:?}: missing unit (ms, s, m, h or d)")),
            other => return Err(format!("{s:?}: unknown unit {other:?} (ms, s, m, h or d)")),
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

/// Formats a duration the way [`parse_duration`] reads it (`1h30m`, `250ms`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

/// Parses `true/false/1/0/yes/no/on/off`.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("{s:?} is not a boolean (true or false)")),
    }
}

/// Parses `host:port` with an IP address (`0.0.0.0:8080`, `[::1]:9090`).
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an address to listen on (expected e.g. 0.0.0.0:8080)"))
}

/// Parses a whole number at least 1 and at most `max`.
pub fn parse_count(s: &str, max: u32) -> Result<NonZeroU32, String> {
    NonZeroU32::new(parse_u32(s, max)?).ok_or_else(|| "must be at least 1".to_string())
}

/// Parses a whole number (zero allowed) up to `max`.
pub fn parse_u32(s: &str, max: u32) -> Result<u32, String> {
    let n: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number"))?;
    if n > max {
        return Err(format!("{n} is more than the maximum {max}"));
    }
    Ok(n)
}

/// Parses a URL whose scheme is one of `schemes`.
pub fn parse_url(s: &str, schemes: &[&str]) -> Result<url::Url, String> {
    let url = url::Url::parse(s.trim()).map_err(|e| format!("not a URL: {e}"))?;
    if !schemes.contains(&url.scheme()) {
        return Err(format!(
            "scheme {:?} is not one of {}",
            url.scheme(),
            schemes.join(", ")
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".into());
    }
    Ok(url)
}

/// Parses a 256-bit key given as base64 (standard or URL-safe, padded or not).
pub fn parse_key256(s: &str) -> Result<[u8; 32], String> {
    let s = s.trim();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(s))
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(s))
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s))
        .map_err(|_| "not base64 (expected 32 random bytes, e.g. `openssl rand -base64 32`)")?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        format!(
            "decodes to {} bytes, expected 32 (e.g. `openssl rand -base64 32`)",
            b.len()
        )
    })
}

/// Parses a key prefix for Redis or S3: printable ASCII without spaces.
pub fn parse_prefix(s: &str) -> Result<String, String> {
    if s.len() > 200 {
        return Err("longer than 200 characters".into());
    }
    if let Some(c) = s.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "contains {c:?}; use printable ASCII without spaces"
        ));
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_every_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration(" 0s "), Ok(Duration::ZERO));
    }

    #[test]
    fn durations_invalid() {
        for bad in [
            "",
            "30",
            "s",
            "5 m",
            "1.5h",
            "-3s",
            "3w",
            "h1",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(parse_duration("30").unwrap_err().contains("missing unit"));
    }

    #[test]
    fn durations_round_trip() {
        for s in ["1h30m", "250ms", "7d", "45s", "0s", "1d2h3m4s"] {
            let d = parse_duration(s).expect("valid");
            assert_eq!(format_duration(d), s);
        }
    }

    #[test]
    fn bools() {
        assert_eq!(parse_bool("TRUE"), Ok(true));
        assert_eq!(parse_bool("off"), Ok(false));
        assert!(parse_bool("maybe").is_err());
    }

    #[test]
    fn listen_addresses() {
        assert!(parse_listen("0.0.0.0:8080").is_ok());
        assert!(parse_listen("[::1]:9090").is_ok());
        assert!(parse_listen("localhost:80").is_err());
        assert!(parse_listen("8080").is_err());
    }

    #[test]
    fn counts() {
        assert_eq!(parse_count("32", 1000).map(NonZeroU32::get), Ok(32));
        assert!(parse_count("0", 1000).unwrap_err().contains("at least 1"));
        assert!(parse_count("1001", 1000).is_err());
        assert!(parse_count("-1", 1000).is_err());
        assert!(parse_count("abc", 1000).is_err());
        assert_eq!(parse_u32("0", 10), Ok(0));
        assert!(parse_u32("11", 10).is_err());
    }

    #[test]
    fn urls() {
        assert!(parse_url("amqp://u:p@h:5672/%2f", &["amqp", "amqps"]).is_ok());
        assert!(parse_url("http://h:5672", &["amqp", "amqps"]).is_err());
        assert!(parse_url("not a url", &["https"]).is_err());
        assert!(parse_url("redis:///0", &["redis"]).is_err());
    }

    #[test]
    fn keys() {
        let k = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        assert_eq!(parse_key256(k).map(|k| k[31]), Ok(31));
        assert!(parse_key256("AAEC").unwrap_err().contains("3 bytes"));
        assert!(parse_key256("!!!").is_err());
    }

    #[test]
    fn prefixes() {
        assert_eq!(parse_prefix("certfleet:"), Ok("certfleet:".into()));
        assert!(parse_prefix("a b").is_err());
    }
}
