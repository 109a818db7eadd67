//! The http-01 responder: `GET /.well-known/acme-challenge/<token>`
//! answered from Redis, so the CA may reach any worker of the fleet
//! (certmagic's `distributedSolver`). RFC 8555 §8.3.

use bytes::Bytes;
use certfleet_common::state::State;
use deadpool_redis::redis::AsyncCommands;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tracing::warn;

use crate::metrics::{Http01Labels, ServiceMetrics};
use crate::serve::text;

/// The path prefix of challenges.
pub const CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

/// Tokens are base64url (RFC 8555 §8.1); anything else is not ours.
fn valid_token(token: &str) -> bool {
    (16..=128).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Answers one request.
pub(crate) async fn respond(
    req: Request<Incoming>,
    state: State,
    metrics: ServiceMetrics,
) -> Response<Full<Bytes>> {
    let count = |result: &'static str| {
        metrics.http01.get_or_create(&Http01Labels { result }).inc();
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "");
    }
    let Some(token) = req.uri().path().strip_prefix(CHALLENGE_PATH) else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    if !valid_token(token) {
        count("miss");
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    let key = state.keys().http01(token);
    let found: Result<Option<String>, _> = async {
        let mut c = state.conn().await?;
        Ok::<_, certfleet_common::state::StateError>(c.get(&key).await?)
    }
    .await;
    match found {
        Ok(Some(key_auth)) => {
            count("hit");
            let mut rsp = text(StatusCode::OK, key_auth);
            rsp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/octet-stream"),
            );
            rsp
        }
        Ok(None) => {
            count("miss");
            text(StatusCode::NOT_FOUND, "not found\n")
        }
        Err(e) => {
            count("error");
            warn!(error = %e, "http-01 lookup failed");
            text(StatusCode::SERVICE_UNAVAILABLE, "unavailable\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert!(valid_token("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"));
        assert!(!valid_token("short"));
        assert!(!valid_token("../../etc/passwd-aaaaaaaaaaaa"));
        assert!(!valid_token(&"a".repeat(129)));
    }
}
