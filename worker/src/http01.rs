//! The http-01 responder: `GET /.well-known/acme-challenge/<token>`
//! answered from Redis, so the CA may reach any worker of the fleet
//! (certmagic's `distributedSolver`). RFC 8555 §8.3.
//!
//! Each worker also keeps the answers it published itself in memory and
//! serves those first: a Redis blip while the CA validates then costs
//! nothing when the CA reaches the worker that placed the order (always,
//! with one worker), instead of a 503 that the CA would count as a failed
//! validation (`unauthorized`).

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use certfleet_common::state::State;
use deadpool_redis::redis::AsyncCommands;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tracing::warn;

use crate::metrics::ServiceMetrics;
use crate::serve::text;

/// The path prefix of challenges.
pub const CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

/// Key authorizations this worker published, by token.
#[derive(Debug, Default)]
pub(crate) struct LocalAnswers {
    answers: RwLock<HashMap<String, (String, Instant)>>,
}

impl LocalAnswers {
    /// Remembers an answer for `ttl`; forgets expired ones on the way.
    pub(crate) fn insert(&self, token: &str, key_auth: &str, ttl: Duration) {
        let now = Instant::now();
        if let Ok(mut map) = self.answers.write() {
            map.retain(|_, (_, until)| *until > now);
            map.insert(token.to_string(), (key_auth.to_string(), now + ttl));
        }
    }

    /// Forgets answers.
    pub(crate) fn remove(&self, tokens: &[String]) {
        if let Ok(mut map) = self.answers.write() {
            for t in tokens {
                map.remove(t);
            }
        }
    }

    /// An answer this worker published and that has not expired.
    pub(crate) fn get(&self, token: &str) -> Option<String> {
        let map = self.answers.read().ok()?;
        let (answer, until) = map.get(token)?;
        (*until > Instant::now()).then(|| answer.clone())
    }
}

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
    local: std::sync::Arc<LocalAnswers>,
    metrics: ServiceMetrics,
) -> Response<Full<Bytes>> {
    let count = |result: &'static str| {
        metrics.http01(result);
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
        if let Some(answer) = local.get(token) {
            return Ok(Some(answer));
        }
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
    fn local_answers_expire_and_are_removed() {
        let l = LocalAnswers::default();
        l.insert("tok", "tok.thumb", Duration::from_secs(60));
        l.insert("old", "old.thumb", Duration::ZERO);
        assert_eq!(l.get("tok").as_deref(), Some("tok.thumb"));
        assert_eq!(l.get("old"), None);
        l.remove(&["tok".to_string()]);
        assert_eq!(l.get("tok"), None);
    }

    #[test]
    fn tokens() {
        assert!(valid_token("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"));
        assert!(!valid_token("short"));
        assert!(!valid_token("../../etc/passwd-aaaaaaaaaaaa"));
        assert!(!valid_token(&"a".repeat(129)));
    }
}
