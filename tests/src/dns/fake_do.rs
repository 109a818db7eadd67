//! Fake DigitalOcean API v2 (domain records), after
//! <https://docs.digitalocean.com/reference/api/digitalocean/#tag/Domain-Records>:
//!
//! - `Authorization: Bearer <token>` checked; else 401 `{"id":"unauthorized","message":
//!   "Unable to authenticate you"}`.
//! - `GET /v2/domains/{d}/records?type=&name=<fqdn>&page=&per_page=` with `per_page`
//!   capped at [`FakeDo::page_size`] (small, so clients must paginate) and
//!   `links.pages.{first,prev,next,last}` as absolute URLs; records carry relative names.
//! - `POST /v2/domains/{d}/records` → 201 `{"domain_record":{..}}` (name relative, `@`, or
//!   an FQDN with final dot inside the domain).
//! - `DELETE /v2/domains/{d}/records/{id}` → 204; unknown → 404 `not_found`.
//!
//! Every TXT change is applied to the test BIND through the RFC 2136 provider.

use std::sync::Arc;

use certfleet_worker::dns01::{Dns01Provider, Rfc2136Provider};
use http::Method;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::fake_http::{FakeAnswer, FakeRequest, FakeServer, serve};

#[derive(Debug, Clone)]
pub struct DoRecord {
    pub id: u64,
    pub domain: String,
    pub rtype: String,
    pub name: String,
    pub data: String,
    pub ttl: u64,
}

impl DoRecord {
    fn fqdn(&self) -> String {
        if self.name == "@" {
            self.domain.clone()
        } else {
            format!("{}.{}", self.name, self.domain)
        }
    }

    fn json(&self) -> Value {
        json!({
            "id": self.id, "type": self.rtype, "name": self.name, "data": self.data,
            "priority": null, "port": null, "ttl": self.ttl, "weight": null,
            "flags": null, "tag": null
        })
    }
}

pub struct DoState {
    pub token: String,
    pub domains: Vec<String>,
    pub records: Vec<DoRecord>,
    pub next_id: u64,
    pub page_size: usize,
    /// `METHOD path?query` of every request.
    pub requests: Vec<String>,
    /// Status to answer the next request with, whatever it is.
    pub fail_next: Option<u16>,
    base: String,
}

pub struct FakeDo {
    pub server: FakeServer,
    pub state: Arc<Mutex<DoState>>,
}

impl FakeDo {
    pub async fn start(
        token: &str,
        domains: &[&str],
        page_size: usize,
        bind: Arc<Rfc2136Provider>,
    ) -> Self {
        let state = Arc::new(Mutex::new(DoState {
            token: token.to_owned(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            records: Vec::new(),
            next_id: 3_352_896,
            page_size,
            requests: Vec::new(),
            fail_next: None,
            base: String::new(),
        }));
        let handler_state = state.clone();
        let server = serve(Arc::new(move |req| {
            let state = handler_state.clone();
            let bind = bind.clone();
            Box::pin(async move { handle(&mut *state.lock().await, &bind, req).await })
        }))
        .await;
        state.lock().await.base = server.base();
        Self { server, state }
    }

    pub fn base(&self) -> String {
        self.server.base()
    }

    /// Data of the records at `fqdn` (no final dot), sorted.
    pub async fn values_at(&self, fqdn: &str) -> Vec<String> {
        let st = self.state.lock().await;
        let mut v: Vec<String> = st
            .records
            .iter()
            .filter(|r| r.fqdn().eq_ignore_ascii_case(fqdn.trim_end_matches('.')))
            .map(|r| r.data.clone())
            .collect();
        v.sort();
        v
    }
}

fn error(status: u16, id: &str, message: &str) -> FakeAnswer {
    (status, json!({ "id": id, "message": message }).to_string())
}

async fn handle(st: &mut DoState, bind: &Rfc2136Provider, req: FakeRequest) -> FakeAnswer {
    let query: Vec<String> = req.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    st.requests.push(format!(
        "{} /{}?{}",
        req.method,
        req.segments.join("/"),
        query.join("&")
    ));
    if req.header("authorization") != Some(&format!("Bearer {}", st.token)) {
        return error(401, "unauthorized", "Unable to authenticate you");
    }
    if let Some(status) = st.fail_next.take() {
        return error(
            status,
            "server_error",
            "Server was unable to give you a response.",
        );
    }
    let segs = req.segs();
    let (domain, id) = match segs.as_slice() {
        ["v2", "domains", d, "records"] => (d.to_ascii_lowercase(), None),
        ["v2", "domains", d, "records", id] => (d.to_ascii_lowercase(), Some(id.to_string())),
        _ => {
            return error(
                404,
                "not_found",
                "The resource you were accessing could not be found.",
            );
        }
    };
    if !st.domains.contains(&domain) {
        return error(
            404,
            "not_found",
            "The resource you were accessing could not be found.",
        );
    }
    match (req.method.clone(), id) {
        (Method::GET, None) => list(st, &domain, &req),
        (Method::POST, None) => create(st, bind, &domain, &req).await,
        (Method::DELETE, Some(id)) => {
            let Some(pos) = st
                .records
                .iter()
                .position(|r| r.domain == domain && r.id.to_string() == id)
            else {
                return error(
                    404,
                    "not_found",
                    "The resource you were accessing could not be found.",
                );
            };
            let rec = st.records[pos].clone();
            if rec.rtype == "TXT"
                && !st
                    .records
                    .iter()
                    .any(|r| r.id != rec.id && r.fqdn() == rec.fqdn() && r.data == rec.data)
                && let Err(e) = bind.cleanup(&rec.fqdn(), &domain, &rec.data).await
            {
                return error(500, "server_error", &e.to_string());
            }
            st.records.remove(pos);
            (204, String::new())
        }
        _ => error(405, "method_not_allowed", "method not allowed"),
    }
}

fn list(st: &DoState, domain: &str, req: &FakeRequest) -> FakeAnswer {
    let rtype = req.query.get("type").cloned();
    let name = req
        .query
        .get("name")
        .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
    let matching: Vec<&DoRecord> = st
        .records
        .iter()
        .filter(|r| r.domain == domain)
        .filter(|r| {
            rtype
                .as_ref()
                .is_none_or(|t| r.rtype.eq_ignore_ascii_case(t))
        })
        .filter(|r| {
            name.as_ref()
                .is_none_or(|n| r.fqdn().eq_ignore_ascii_case(n))
        })
        .collect();
    let per_page = req
        .query
        .get("per_page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(20)
        .clamp(1, st.page_size);
    let page = req
        .query
        .get("page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let last = matching.len().div_ceil(per_page).max(1);
    let items: Vec<Value> = matching
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|r| r.json())
        .collect();
    let mut extra = String::new();
    if let Some(t) = &rtype {
        extra.push_str(&format!("&type={t}"));
    }
    if let Some(n) = &name {
        extra.push_str(&format!("&name={n}"));
    }
    let url = |p: usize| {
        format!(
            "{}/v2/domains/{domain}/records?page={p}&per_page={per_page}{extra}",
            st.base
        )
    };
    let mut pages = serde_json::Map::new();
    if page > 1 {
        pages.insert("first".into(), url(1).into());
        pages.insert("prev".into(), url(page - 1).into());
    }
    if page < last {
        pages.insert("next".into(), url(page + 1).into());
        pages.insert("last".into(), url(last).into());
    }
    let links = if pages.is_empty() {
        json!({})
    } else {
        json!({ "pages": pages })
    };
    (
        200,
        json!({ "domain_records": items, "links": links, "meta": { "total": matching.len() } })
            .to_string(),
    )
}

async fn create(
    st: &mut DoState,
    bind: &Rfc2136Provider,
    domain: &str,
    req: &FakeRequest,
) -> FakeAnswer {
    let Some(body) = req.json() else {
        return error(400, "bad_request", "unable to parse the request body");
    };
    let (Some(rtype), Some(name), Some(data)) = (
        body["type"].as_str(),
        body["name"].as_str(),
        body["data"].as_str(),
    ) else {
        return error(
            422,
            "unprocessable_entity",
            "type, name and data are required",
        );
    };
    let lower = name.to_ascii_lowercase();
    let relative = if let Some(abs) = lower.strip_suffix('.') {
        if abs == domain {
            "@".to_owned()
        } else if let Some(rel) = abs.strip_suffix(&format!(".{domain}")) {
            rel.to_owned()
        } else {
            return error(422, "unprocessable_entity", "Name is not within the domain");
        }
    } else {
        lower
    };
    let rec = DoRecord {
        id: st.next_id,
        domain: domain.to_owned(),
        rtype: rtype.to_ascii_uppercase(),
        name: relative,
        data: data.to_owned(),
        ttl: body["ttl"].as_u64().unwrap_or(1800),
    };
    if rec.rtype == "TXT"
        && let Err(e) = bind.present(&rec.fqdn(), domain, &rec.data).await
    {
        return error(500, "server_error", &e.to_string());
    }
    st.next_id += 1;
    let answer = json!({ "domain_record": rec.json() }).to_string();
    st.records.push(rec);
    (201, answer)
}
