//! Route 53 error mapping: SDK errors to [`DnsError`]s, with the service's error code kept
//! for the callers that react to one (`InvalidChangeBatch`).

use std::future::Future;
use std::time::Duration;

use aws_sdk_route53::error::{BuildError, DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::dns01::http::{Secret, scrub};
use crate::dns01::provider::{DnsError, RetryKind};

/// A failed call: the error and the service's error code, if it sent one.
#[derive(Debug)]
pub(crate) struct AwsFailure {
    pub(crate) error: DnsError,
    pub(crate) code: Option<String>,
}

impl From<DnsError> for AwsFailure {
    fn from(error: DnsError) -> Self {
        Self { error, code: None }
    }
}

impl From<AwsFailure> for DnsError {
    fn from(failure: AwsFailure) -> Self {
        failure.error
    }
}

/// Credentials or permissions problems.
const REFUSED_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "InvalidAccessKeyId",
    "MissingAuthenticationToken",
    "IncompleteSignature",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidSignatureException",
];

/// Transient service conditions.
const RETRY_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "PriorRequestNotComplete",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "ServiceUnavailable",
    "InternalFailure",
];

/// Run one SDK call with a timeout and map its error. `zone` names the zone in
/// UnknownZone messages.
pub(crate) async fn call<T, E>(
    timeout: Duration,
    what: &str,
    zone: &str,
    secrets: &[&Secret],
    request: impl Future<Output = Result<T, SdkError<E>>>,
) -> Result<T, AwsFailure>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(timeout, request).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(classify(&e, what, zone, secrets)),
        Err(_) => Err(DnsError::retryable(
            RetryKind::Timeout,
            format!("{what}: no answer within {timeout:?}"),
        )
        .into()),
    }
}

/// A request the SDK would not build (a bug or a bad name).
pub(crate) fn build_error(e: BuildError) -> AwsFailure {
    DnsError::Config(format!("Route 53 request: {e}")).into()
}

fn classify<E>(err: &SdkError<E>, what: &str, zone: &str, secrets: &[&Secret]) -> AwsFailure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let code = err.code().map(str::to_owned);
    let status = err.raw_response().map(|r| r.status().as_u16());
    let detail = match (err.code(), err.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_owned(),
        _ => DisplayErrorContext(err).to_string(),
    };
    let message = scrub(&format!("{what}: {detail}"), secrets);
    let error = match err {
        SdkError::TimeoutError(_) => DnsError::retryable(RetryKind::Timeout, message),
        SdkError::DispatchFailure(failure) if failure.is_timeout() => {
            DnsError::retryable(RetryKind::Timeout, message)
        }
        SdkError::DispatchFailure(failure) if failure.is_user() => DnsError::Config(message),
        SdkError::DispatchFailure(_) => DnsError::retryable(RetryKind::Network, message),
        SdkError::ConstructionFailure(_) => DnsError::Config(message),
        SdkError::ResponseError(_) => DnsError::retryable(RetryKind::BadResponse, message),
        _ => classify_code(code.as_deref(), status, message, zone),
    };
    AwsFailure { error, code }
}

/// Map a service error by its code, else by its HTTP status.
pub(crate) fn classify_code(
    code: Option<&str>,
    status: Option<u16>,
    message: String,
    zone: &str,
) -> DnsError {
    match code {
        Some(c) if REFUSED_CODES.contains(&c) => DnsError::Refused(message),
        Some("NoSuchHostedZone") => DnsError::UnknownZone(if zone.is_empty() {
            message
        } else {
            format!("{zone}: {message}")
        }),
        Some(
            "Throttling"
            | "ThrottlingException"
            | "RequestLimitExceeded"
            | "TooManyRequestsException",
        ) => DnsError::retryable(RetryKind::RateLimited, message),
        Some(c) if RETRY_CODES.contains(&c) => {
            DnsError::retryable(RetryKind::ServerFailure, message)
        }
        _ => match status {
            Some(401 | 403) => DnsError::Refused(message),
            Some(429) => DnsError::retryable(RetryKind::RateLimited, message),
            Some(500..=599) => DnsError::retryable(RetryKind::ServerFailure, message),
            Some(_) => DnsError::Rejected(message),
            None => DnsError::retryable(RetryKind::BadResponse, message),
        },
    }
}
