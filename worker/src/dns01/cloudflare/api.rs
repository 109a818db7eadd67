//! Cloudflare API v4 answers: the envelope `{"success","errors","result","result_info"}`
//! and the mapping of failed answers to [`DnsError`]s (see the parent module's
//! documentation for the rules).

use serde::Deserialize;

use crate::dns01::http::{ApiResponse, Secret, excerpt};
use crate::dns01::provider::{DnsError, RetryKind};

/// "An identical record already exists."
pub(super) const CODE_IDENTICAL_RECORD: i64 = 81058;
/// Rate limited ("Please wait and consider throttling your request speed").
const CODE_RATE_LIMITED: i64 = 971;

/// "Invalid zone identifier", "Could not route to /zones/…": an unknown zone id.
const UNKNOWN_ZONE_CODES: [i64; 2] = [1001, 7003];

/// A failed call: the error and the API's error codes.
pub(super) struct Failure {
    pub(super) error: DnsError,
    pub(super) codes: Vec<i64>,
}

impl From<DnsError> for Failure {
    fn from(error: DnsError) -> Self {
        Self {
            error,
            codes: Vec::new(),
        }
    }
}

impl From<Failure> for DnsError {
    fn from(failure: Failure) -> Self {
        failure.error
    }
}

/// The v4 envelope.
#[derive(Deserialize)]
pub(super) struct Envelope<T> {
    #[serde(default)]
    pub(super) success: bool,
    #[serde(default)]
    pub(super) errors: Vec<ApiMessage>,
    pub(super) result: Option<T>,
    pub(super) result_info: Option<ResultInfo>,
}

#[derive(Deserialize)]
pub(super) struct ApiMessage {
    #[serde(default)]
    pub(super) code: i64,
    #[serde(default)]
    pub(super) message: String,
    #[serde(default)]
    pub(super) error_chain: Vec<ApiMessage>,
}

#[derive(Deserialize)]
pub(super) struct ResultInfo {
    #[serde(default)]
    pub(super) total_pages: u32,
}

#[derive(Deserialize)]
pub(super) struct Zone {
    pub(super) id: String,
    pub(super) name: String,
}

#[derive(Deserialize)]
pub(super) struct Record {
    pub(super) id: String,
    #[serde(default)]
    pub(super) name: String,
    #[serde(default, rename = "type")]
    pub(super) rtype: String,
    #[serde(default)]
    pub(super) content: String,
}

/// The failure for an answer that is not a successful envelope.
pub(super) fn failure(
    response: &ApiResponse,
    errors: &[ApiMessage],
    what: &str,
    zone: &str,
    secrets: &[&Secret],
) -> Failure {
    let codes: Vec<i64> = errors
        .iter()
        .flat_map(|e| std::iter::once(e.code).chain(e.error_chain.iter().map(|c| c.code)))
        .collect();
    let error = classify(response, errors, &codes, what, zone, secrets);
    Failure { error, codes }
}

fn classify(
    response: &ApiResponse,
    errors: &[ApiMessage],
    codes: &[i64],
    what: &str,
    zone: &str,
    secrets: &[&Secret],
) -> DnsError {
    let text = if errors.is_empty() {
        excerpt(&response.body, secrets)
    } else {
        excerpt(describe(errors).as_bytes(), secrets)
    };
    let message = format!("{what}: HTTP {}: {text}", response.status);
    if codes.iter().any(|c| is_auth_code(*c)) {
        DnsError::Refused(message)
    } else if codes.contains(&CODE_RATE_LIMITED) {
        DnsError::retryable(RetryKind::RateLimited, message)
    } else if response.is_success() {
        DnsError::Rejected(message)
    } else if response.status == 404 || codes.iter().any(|c| UNKNOWN_ZONE_CODES.contains(c)) {
        DnsError::UnknownZone(format!("{zone}: {message}"))
    } else {
        DnsError::from_http_status(response.status, what, &text)
    }
}

/// Authentication and authorization failures (bad or missing headers, invalid or
/// location-restricted token, authentication error).
fn is_auth_code(code: i64) -> bool {
    matches!(
        code,
        6003 | 6100..=6199 | 9103 | 9106 | 9107 | 9109 | 10000 | 10001
    )
}

/// `code: message; chained code: message` for each error.
fn describe(errors: &[ApiMessage]) -> String {
    errors
        .iter()
        .map(|e| {
            let mut text = format!("{}: {}", e.code, e.message);
            for link in &e.error_chain {
                text.push_str(&format!("; {}: {}", link.code, link.message));
            }
            text
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_codes() {
        for code in [6003, 6111, 9109, 10000] {
            assert!(is_auth_code(code), "{code}");
        }
        assert!(!is_auth_code(CODE_IDENTICAL_RECORD));
        assert!(!is_auth_code(7003));
    }
}
