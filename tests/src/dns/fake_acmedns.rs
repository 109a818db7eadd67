//! Fake acme-dns (joohoi/acme-dns API, <https://github.com/joohoi/acme-dns#api>):
//!
//! - `POST /register` → 201 `{"username":<uuid>,"password":<40 chars>,"fulldomain":
//!   "<uuid>.<zone>","subdomain":<uuid>,"allowfrom":[]}`;
//! - `POST /update` with `X-Api-User` (a UUID) and `X-Api-Key` (40 characters) and
//!   `{"subdomain","txt"}`: unknown user, wrong key or another account's subdomain → 401
//!   `{"error": "forbidden"}`; a txt that is not 43 characters of the base64url alphabet →
//!   400 `{"error": "bad_txt"}`; else 200 `{"txt": "<value>"}`.
//! - Like acme-dns, each subdomain keeps its two most recent values: an update replaces
//!   the older one. Adds and removals are applied to the test BIND.

use std::collections::VecDeque;
use std::sync::Arc;

use certfleet_worker::dns01::{Dns01Provider, Rfc2136Provider};
use http::Method;
use serde_json::json;
use tokio::sync::Mutex;

use super::fake_http::{FakeAnswer, FakeRequest, FakeServer, serve};

pub struct AcmeDnsUser {
    pub username: String,
    pub password: String,
    pub subdomain: String,
    pub values: VecDeque<String>,
}

pub struct AcmeDnsState {
    pub zone: String,
    pub users: Vec<AcmeDnsUser>,
}

pub struct FakeAcmeDns {
    pub server: FakeServer,
    pub state: Arc<Mutex<AcmeDnsState>>,
}

impl FakeAcmeDns {
    /// Serve accounts under `zone` (e.g. `deleg.test`).
    pub async fn start(zone: &str, bind: Arc<Rfc2136Provider>) -> Self {
        let state = Arc::new(Mutex::new(AcmeDnsState {
            zone: zone.trim_end_matches('.').to_owned(),
            users: Vec::new(),
        }));
        let handler_state = state.clone();
        let server = serve(Arc::new(move |req| {
            let state = handler_state.clone();
            let bind = bind.clone();
            Box::pin(async move { handle(&mut *state.lock().await, &bind, req).await })
        }))
        .await;
        Self { server, state }
    }

    pub fn base(&self) -> String {
        self.server.base()
    }
}

fn error(status: u16, text: &str) -> FakeAnswer {
    (status, json!({ "error": text }).to_string())
}

fn valid_txt(value: &str) -> bool {
    value.len() == 43
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

async fn handle(st: &mut AcmeDnsState, bind: &Rfc2136Provider, req: FakeRequest) -> FakeAnswer {
    match (req.method.clone(), req.segs().as_slice()) {
        (Method::POST, ["register"]) => {
            let subdomain = uuid::Uuid::new_v4().to_string();
            let username = uuid::Uuid::new_v4().to_string();
            let password: String = format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            )
            .chars()
            .take(40)
            .collect();
            let answer = json!({
                "username": username, "password": password,
                "fulldomain": format!("{subdomain}.{}", st.zone),
                "subdomain": subdomain, "allowfrom": []
            });
            st.users.push(AcmeDnsUser {
                username,
                password,
                subdomain,
                values: VecDeque::new(),
            });
            (201, answer.to_string())
        }
        (Method::POST, ["update"]) => update(st, bind, &req).await,
        _ => (404, "404 page not found".to_owned()),
    }
}

async fn update(st: &mut AcmeDnsState, bind: &Rfc2136Provider, req: &FakeRequest) -> FakeAnswer {
    let user = req.header("x-api-user").unwrap_or("");
    let key = req.header("x-api-key").unwrap_or("");
    let body = req.json().unwrap_or_default();
    let zone = st.zone.clone();
    let Some(account) = st.users.iter_mut().find(|u| {
        uuid::Uuid::parse_str(user).is_ok()
            && u.username == user
            && key.len() == 40
            && u.password == key
            && body["subdomain"].as_str() == Some(u.subdomain.as_str())
    }) else {
        return error(401, "forbidden");
    };
    let Some(value) = body["txt"].as_str().filter(|v| valid_txt(v)) else {
        return error(400, "bad_txt");
    };
    let fqdn = format!("{}.{zone}.", account.subdomain);
    if let Err(e) = bind.present(&fqdn, &zone, value).await {
        return error(500, &format!("db_error: {e}"));
    }
    account.values.push_back(value.to_owned());
    if account.values.len() > 2
        && let Some(old) = account.values.pop_front()
        && !account.values.contains(&old)
        && let Err(e) = bind.cleanup(&fqdn, &zone, &old).await
    {
        return error(500, &format!("db_error: {e}"));
    }
    (200, json!({ "txt": value }).to_string())
}
