//! Fake Cloudflare API v4 (zones list, DNS records), after
//! <https://developers.cloudflare.com/api/resources/dns/subresources/records/>:
//!
//! - every answer is the envelope `{"success","errors","messages","result"[,"result_info"]}`;
//! - `Authorization: Bearer <token>`: missing or malformed → 400 code 6003 with error_chain
//!   6111; another token → 403 code 9109 "Invalid access token";
//! - `GET /client/v4/zones?name=` (exact name), `GET .../zones/{id}/dns_records?type=&name=
//!   &content=&page=&per_page=` (per_page capped at [`PAGE_CAP`] so clients paginate),
//!   `POST .../dns_records` (identical type/name/content → 400 code 81058),
//!   `DELETE .../dns_records/{id}` (unknown → 404 code 81044); an unknown zone id → 400
//!   code 7003.
//!
//! TXT content is stored as sent (quoted); its unquoted value is applied to the test BIND.

use std::sync::Arc;

use certfleet_worker::dns01::{Dns01Provider, Rfc2136Provider};
use http::Method;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::fake_http::{FakeAnswer, FakeRequest, FakeServer, serve};

pub const PAGE_CAP: usize = 2;

#[derive(Debug, Clone)]
pub struct CfRecord {
    pub id: String,
    pub zone_id: String,
    pub name: String,
    pub rtype: String,
    pub content: String,
    pub ttl: u64,
}

pub struct CfState {
    pub token: String,
    /// (id, name)
    pub zones: Vec<(String, String)>,
    pub records: Vec<CfRecord>,
    /// Answer the next authenticated request with this instead.
    pub answer_next: Option<FakeAnswer>,
}

pub struct FakeCloudflare {
    pub server: FakeServer,
    pub state: Arc<Mutex<CfState>>,
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// `"a" "b"` → `ab`; unquoted content as is.
pub fn unquote(content: &str) -> String {
    if !content.starts_with('"') {
        return content.to_owned();
    }
    content
        .split('"')
        .skip(1)
        .step_by(2)
        .collect::<Vec<_>>()
        .concat()
}

impl FakeCloudflare {
    pub async fn start(token: &str, zones: &[&str], bind: Arc<Rfc2136Provider>) -> Self {
        let state = Arc::new(Mutex::new(CfState {
            token: token.to_owned(),
            zones: zones.iter().map(|z| (new_id(), z.to_string())).collect(),
            records: Vec::new(),
            answer_next: None,
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
        format!("{}/client/v4", self.server.base())
    }

    /// Unquoted TXT values at `fqdn`, sorted.
    pub async fn values_at(&self, fqdn: &str) -> Vec<String> {
        let st = self.state.lock().await;
        let mut v: Vec<String> = st
            .records
            .iter()
            .filter(|r| r.name.eq_ignore_ascii_case(fqdn.trim_end_matches('.')))
            .map(|r| unquote(&r.content))
            .collect();
        v.sort();
        v
    }
}

fn envelope_error(status: u16, errors: Value) -> FakeAnswer {
    (
        status,
        json!({ "success": false, "errors": errors, "messages": [], "result": null }).to_string(),
    )
}

fn ok(result: Value, info: Option<Value>) -> FakeAnswer {
    let mut body = json!({ "success": true, "errors": [], "messages": [], "result": result });
    if let Some(info) = info {
        body["result_info"] = info;
    }
    (200, body.to_string())
}

fn record_json(r: &CfRecord, zone_name: &str) -> Value {
    json!({
        "id": r.id, "zone_id": r.zone_id, "zone_name": zone_name, "name": r.name,
        "type": r.rtype, "content": r.content, "proxiable": false, "proxied": false,
        "ttl": r.ttl, "settings": {}, "meta": {}, "comment": null, "tags": [],
        "created_on": "2024-01-01T00:00:00.000000Z", "modified_on": "2024-01-01T00:00:00.000000Z"
    })
}

async fn handle(st: &mut CfState, bind: &Rfc2136Provider, req: FakeRequest) -> FakeAnswer {
    let Some(token) = req
        .header("authorization")
        .and_then(|h| h.strip_prefix("Bearer "))
    else {
        return envelope_error(
            400,
            json!([{ "code": 6003, "message": "Invalid request headers",
            "error_chain": [{ "code": 6111, "message": "Invalid format for Authorization header" }] }]),
        );
    };
    if token != st.token {
        return envelope_error(
            403,
            json!([{ "code": 9109, "message": "Invalid access token" }]),
        );
    }
    if let Some(answer) = st.answer_next.take() {
        return answer;
    }
    let segs = req.segs();
    match (req.method.clone(), segs.as_slice()) {
        (Method::GET, ["client", "v4", "zones"]) => {
            let name = req.query.get("name").map(|n| n.to_ascii_lowercase());
            let zones: Vec<Value> = st
                .zones
                .iter()
                .filter(|(_, n)| name.as_ref().is_none_or(|want| n == want))
                .map(|(id, n)| json!({ "id": id, "name": n, "status": "active", "paused": false, "type": "full" }))
                .collect();
            let count = zones.len();
            ok(
                json!(zones),
                Some(
                    json!({ "page": 1, "per_page": 50, "count": count, "total_count": count, "total_pages": 1 }),
                ),
            )
        }
        (method, ["client", "v4", "zones", zone_id, "dns_records", rest @ ..]) => {
            let Some(zone_name) = st
                .zones
                .iter()
                .find(|(id, _)| id == zone_id)
                .map(|(_, n)| n.clone())
            else {
                return envelope_error(
                    400,
                    json!([{ "code": 7003, "message": format!("Could not route to /zones/{zone_id}/dns_records, perhaps your object identifier is invalid?") },
                    { "code": 7000, "message": "No route for that URI" }]),
                );
            };
            match (method, rest) {
                (Method::GET, []) => list(st, zone_id, &zone_name, &req),
                (Method::POST, []) => create(st, bind, zone_id, &zone_name, &req).await,
                (Method::DELETE, [record_id]) => delete(st, bind, &zone_name, record_id).await,
                _ => envelope_error(
                    405,
                    json!([{ "code": 10000, "message": "method not allowed" }]),
                ),
            }
        }
        _ => envelope_error(
            400,
            json!([{ "code": 7000, "message": "No route for that URI" }]),
        ),
    }
}

fn list(st: &CfState, zone_id: &str, zone_name: &str, req: &FakeRequest) -> FakeAnswer {
    let q = |k: &str| req.query.get(k).cloned();
    let name = q("name")
        .or_else(|| q("name.exact"))
        .map(|n| n.to_ascii_lowercase());
    let matching: Vec<&CfRecord> = st
        .records
        .iter()
        .filter(|r| r.zone_id == zone_id)
        .filter(|r| q("type").is_none_or(|t| r.rtype == t))
        .filter(|r| name.as_ref().is_none_or(|n| &r.name == n))
        .filter(|r| q("content").is_none_or(|c| r.content == c))
        .collect();
    let per_page = q("per_page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(100)
        .clamp(1, PAGE_CAP);
    let page = q("page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let items: Vec<Value> = matching
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|r| record_json(r, zone_name))
        .collect();
    let info = json!({ "page": page, "per_page": per_page, "count": items.len(),
        "total_count": matching.len(), "total_pages": matching.len().div_ceil(per_page) });
    ok(json!(items), Some(info))
}

async fn create(
    st: &mut CfState,
    bind: &Rfc2136Provider,
    zone_id: &str,
    zone_name: &str,
    req: &FakeRequest,
) -> FakeAnswer {
    let Some(body) = req.json() else {
        return envelope_error(
            400,
            json!([{ "code": 9207, "message": "Request body is invalid." }]),
        );
    };
    let (Some(rtype), Some(name), Some(content)) = (
        body["type"].as_str(),
        body["name"].as_str(),
        body["content"].as_str(),
    ) else {
        return envelope_error(
            400,
            json!([{ "code": 9000, "message": "DNS name, type and content are required" }]),
        );
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let name = if name == zone_name || name.ends_with(&format!(".{zone_name}")) {
        name
    } else {
        format!("{name}.{zone_name}")
    };
    if st
        .records
        .iter()
        .any(|r| r.zone_id == zone_id && r.name == name && r.rtype == rtype && r.content == content)
    {
        return envelope_error(
            400,
            json!([{ "code": 81058, "message": "An identical record already exists." }]),
        );
    }
    let rec = CfRecord {
        id: new_id(),
        zone_id: zone_id.to_owned(),
        name,
        rtype: rtype.to_owned(),
        content: content.to_owned(),
        ttl: body["ttl"].as_u64().unwrap_or(1),
    };
    if rec.rtype == "TXT"
        && let Err(e) = bind
            .present(&rec.name, zone_name, &unquote(&rec.content))
            .await
    {
        return envelope_error(500, json!([{ "code": 1000, "message": e.to_string() }]));
    }
    let answer = ok(record_json(&rec, zone_name), None);
    st.records.push(rec);
    answer
}

async fn delete(
    st: &mut CfState,
    bind: &Rfc2136Provider,
    zone_name: &str,
    record_id: &str,
) -> FakeAnswer {
    let Some(pos) = st.records.iter().position(|r| r.id == record_id) else {
        return (404, json!({ "success": false, "errors": [{ "code": 81044, "message": "Record does not exist." }], "messages": [], "result": null }).to_string());
    };
    let rec = st.records[pos].clone();
    if rec.rtype == "TXT"
        && let Err(e) = bind
            .cleanup(&rec.name, zone_name, &unquote(&rec.content))
            .await
    {
        return envelope_error(500, json!([{ "code": 1000, "message": e.to_string() }]));
    }
    st.records.remove(pos);
    ok(json!({ "id": rec.id }), None)
}
