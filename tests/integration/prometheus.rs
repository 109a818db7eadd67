//! Issue 14, items 2–4: a real Prometheus (Debian's) scrapes a worker,
//! `certfleet exporter` and a webserver's `certfleet watch`; its HTTP API
//! then reports the expiry of a certificate just issued exactly as the
//! certificate's notAfter (from the fleet and from the webserver), the
//! chart's alert rules load and evaluate, and every metric the Grafana
//! dashboard and the rules query exists. The exporter's summaries and
//! readiness conditions are checked against a fleet written into Redis.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use certfleet_common::event::EventKind;
use certfleet_tests::private::{self, Private, Service};
use certfleet_tests::{TestEnv, init_logging, repo_root};
use deadpool_redis::redis;
use serde_json::Value;
use tokio::time::Instant;

use crate::issue::issue_job;

/// `GET <prometheus>/api/v1/<path>`'s `data`.
async fn api(env: &TestEnv, prom: &Private, path: &str) -> anyhow::Result<Value> {
    let url = format!("{}/api/v1/{path}", prom.url());
    let (status, body) = env.http.send(http::Method::GET, &url, None).await?;
    anyhow::ensure!(status == 200, "{url}: {status} {body}");
    let v: Value = serde_json::from_str(&body).with_context(|| format!("{url}: {body}"))?;
    anyhow::ensure!(v["status"] == "success", "{url}: {body}");
    Ok(v["data"].clone())
}

/// The value of the instant query `q` once it has exactly one sample
/// (waits up to `within` for the scrapes to bring it).
async fn query_one(
    env: &TestEnv,
    prom: &Private,
    q: &str,
    within: Duration,
) -> anyhow::Result<f64> {
    let deadline = Instant::now() + within;
    let path = format!("query?query={}", urlencode(q));
    loop {
        let data = api(env, prom, &path).await?;
        if let Some([sample]) = data["result"].as_array().map(Vec::as_slice) {
            let v = sample["value"][1]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("{q}: no value in {sample}"))?;
            return Ok(v.parse()?);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{q}: not exactly one sample within {within:?}: {data}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every `certfleet_*` metric name in `text` (PromQL expressions).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("certfleet_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // `certfleet_` inside a longer word (e.g. a label value) is not a
        // metric: only names at a word start count.
        let at_start = i == 0
            || !rest[..i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '"');
        if at_start {
            out.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out
}

/// Every `expr` of the dashboard's panels.
fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "expr" {
                    if let Some(s) = v.as_str() {
                        out.push(s.to_string());
                    }
                } else {
                    dashboard_exprs(v, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn prometheus_scrapes_expiry_and_the_dashboard_metrics_exist() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("prom").await?;
    let prom = Private::start(Service::Prometheus, &[])
        .await
        .context("starting Prometheus")?;
    let worker = env.start_worker(&[]).await?;

    // A dead letter (garbage is undecodable), and a certificate, issued
    // for real through Pebble.
    env.publish_raw("job.issue.http-01", b"not a job").await?;
    let mut events = env.events("cert.#").await?;
    let job = issue_job(&[env.domain("prom").await?])?;
    env.publish_job(&job).await?;
    let event = events.next(Duration::from_secs(60)).await?;
    assert_eq!(event.kind, EventKind::Issued, "{event:?}");
    let name = job.job.name.to_string();
    let (pointer, _) = env
        .store()
        .await
        .current(&job.job.name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no pointer for {name}"))?;
    // The worker recorded its validity beside the expiry index; forgotten
    // here, so the exporter must fill it in from the pointer (as for a
    // certificate stored before validity was recorded).
    let state = env.state()?;
    let keys = state.keys().clone();
    let mut c = state.conn().await?;
    // The worker indexes a version right after its event is confirmed
    // (`Ctx::complete`): the record may land just after the event.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let recorded = loop {
        let recorded: Option<String> = redis::cmd("HGET")
            .arg(keys.validity())
            .arg(&name)
            .query_async(&mut *c)
            .await?;
        if recorded.is_some() || tokio::time::Instant::now() >= deadline {
            break recorded;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        recorded,
        Some(format!(
            "{} {}",
            pointer.not_before.unix_timestamp(),
            pointer.not_after.unix_timestamp()
        )),
        "validity recorded by the worker"
    );
    let _: () = redis::pipe()
        .hdel(keys.validity(), &name)
        .zrem(keys.not_after(), &name)
        .query_async(&mut *c)
        .await?;
    drop(c);

    let exporter_addr: SocketAddr = format!("127.0.0.1:{}", private::free_port()?).parse()?;
    let mut exporter = env
        .command("certfleet")?
        .args([
            "exporter",
            "--listen",
            &exporter_addr.to_string(),
            "--interval",
            "1s",
        ])
        .spawn()
        .context("starting certfleet exporter")?;
    // A webserver's agent, serving what it installed.
    let web_dir = tempfile::tempdir()?;
    let agent_addr: SocketAddr = format!("127.0.0.1:{}", private::free_port()?).parse()?;
    let mut agent = env
        .command("certfleet")?
        .args(["watch", "--queue", "prom-web1", "--on-change", "true"])
        .arg("--dir")
        .arg(web_dir.path())
        .args(["--metrics-listen", &agent_addr.to_string()])
        .spawn()
        .context("starting certfleet watch")?;
    prom.scrape(&env.id, &[worker.metrics_addr, exporter_addr, agent_addr])?;

    // Prometheus has it, as the certificate says.
    let sel = format!("{{name=\"{name}\",group=\"{}\"}}", env.id);
    let expiry = query_one(
        &env,
        &prom,
        &format!("certfleet_certificate_expiration_timestamp_seconds{sel}"),
        Duration::from_secs(60),
    )
    .await?;
    #[allow(clippy::cast_precision_loss)]
    let not_after = pointer.not_after.unix_timestamp() as f64;
    assert!(
        (expiry - not_after).abs() < f64::EPSILON,
        "Prometheus says {name} expires at {expiry}, the certificate at {not_after}"
    );
    #[allow(clippy::cast_precision_loss)]
    let not_before = pointer.not_before.unix_timestamp() as f64;
    let nb = query_one(
        &env,
        &prom,
        &format!("certfleet_certificate_not_before_timestamp_seconds{sel}"),
        Duration::from_secs(10),
    )
    .await?;
    assert!(
        (nb - not_before).abs() < f64::EPSILON,
        "{nb} vs {not_before}"
    );
    #[allow(clippy::cast_precision_loss)]
    let renew_at = pointer.renew_at.unix_timestamp() as f64;
    let renewal = query_one(
        &env,
        &prom,
        &format!("certfleet_certificate_renewal_timestamp_seconds{sel}"),
        Duration::from_secs(10),
    )
    .await?;
    assert!(
        (renewal - renew_at).abs() < f64::EPSILON,
        "{renewal} vs {renew_at}"
    );
    let ready = query_one(
        &env,
        &prom,
        &format!(
            "certfleet_certificate_ready_status{{name=\"{name}\",condition=\"True\",group=\"{}\"}}",
            env.id
        ),
        Duration::from_secs(10),
    )
    .await?;
    assert!((ready - 1.0).abs() < f64::EPSILON, "ready True is {ready}");
    // The worker's side: the stored job and the ACME requests behind it.
    let stored = query_one(
        &env,
        &prom,
        &format!(
            "sum(certfleet_jobs_handled_total{{outcome=\"stored\",group=\"{}\"}})",
            env.id
        ),
        Duration::from_secs(30),
    )
    .await?;
    assert!(stored >= 1.0, "stored jobs: {stored}");
    let new_orders = query_one(
        &env,
        &prom,
        &format!(
            "sum(certfleet_acme_client_requests_total{{action=\"new_order\",group=\"{}\"}})",
            env.id
        ),
        Duration::from_secs(10),
    )
    .await?;
    assert!(new_orders >= 1.0, "new-order requests: {new_orders}");
    // The webserver serves the stored version: its expiry equals the
    // fleet's, so the old-certificate alert has nothing to say.
    let served = query_one(
        &env,
        &prom,
        &format!("certfleet_agent_certificate_expiration_timestamp_seconds{sel}"),
        Duration::from_secs(30),
    )
    .await?;
    assert!(
        (served - not_after).abs() < f64::EPSILON,
        "{served} vs {not_after}"
    );
    let hook_ok = query_one(
        &env,
        &prom,
        &format!("certfleet_agent_hook_success{sel}"),
        Duration::from_secs(30),
    )
    .await?;
    assert!(
        (hook_ok - 1.0).abs() < f64::EPSILON,
        "hook success {hook_ok}"
    );
    let dead = query_one(
        &env,
        &prom,
        &format!("certfleet_dead_letter_messages{{group=\"{}\"}}", env.id),
        Duration::from_secs(30),
    )
    .await?;
    assert!((dead - 1.0).abs() < f64::EPSILON, "dead letters: {dead}");
    let worker_ready = query_one(
        &env,
        &prom,
        &format!("certfleet_worker_ready{{group=\"{}\"}}", env.id),
        Duration::from_secs(10),
    )
    .await?;
    assert!(
        (worker_ready - 1.0).abs() < f64::EPSILON,
        "worker ready {worker_ready}"
    );

    // The chart's rules are loaded and evaluate without error.
    let rules = api(&env, &prom, "rules").await?;
    let mut loaded = Vec::new();
    for g in rules["groups"].as_array().into_iter().flatten() {
        for r in g["rules"].as_array().into_iter().flatten() {
            assert_eq!(r["health"], "ok", "rule {} unhealthy: {r}", r["name"]);
            loaded.push(r["name"].as_str().unwrap_or_default().to_string());
        }
    }
    assert!(
        loaded.len() >= 8 && loaded.iter().any(|n| n == "CertfleetRenewalOverdue"),
        "rules loaded: {loaded:?}"
    );

    // Every metric the dashboard and the rules query exists in Prometheus
    // (histograms by their _bucket series).
    let names: BTreeSet<String> = api(&env, &prom, "label/__name__/values")
        .await?
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    let root = repo_root();
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(
        root.join("helm/certfleet/dashboards/certfleet.json"),
    )?)?;
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "dashboard queries: {exprs:?}");
    let rules_file =
        std::fs::read_to_string(root.join("helm/certfleet/rules/certfleet.rules.yml"))?;
    let rule_exprs: Vec<&str> = rules_file
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .collect();
    let mut wanted = BTreeSet::new();
    for e in exprs.iter().map(String::as_str).chain(rule_exprs) {
        wanted.extend(metric_names(e));
    }
    let missing: Vec<&String> = wanted.iter().filter(|m| !names.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "queried but not in Prometheus: {missing:?} (of {wanted:?})"
    );
    println!(
        "prometheus: {name} expires {expiry} = notAfter; {} metrics queried by the dashboard and rules, all present",
        wanted.len()
    );

    prom.scrape(&env.id, &[])?;
    for child in [&mut exporter, &mut agent] {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}

/// The value of the sample `series` (exact name and labels) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Three names in the index, written the way workers write them: a 2-day
/// certificate overdue for renewal by 2 h, a 20-day one whose last job
/// failed, and one without validity (storage has no pointer for it
/// either). One refresh gives every summary and condition.
#[tokio::test]
async fn exporter_summaries_and_conditions() -> anyhow::Result<()> {
    use certfleet_common::ChallengeType::Http01;
    use certfleet_common::exporter::CertMetrics;
    use time::Duration as D;

    init_logging();
    let env = TestEnv::new("exporter").await?;
    let state = env.state()?;
    let store = env.store().await;
    let now = time::OffsetDateTime::now_utc();
    let name = |l: &str| certfleet_common::CertName::parse(&format!("{l}.{}.example.test", env.id));
    let (a, b, c) = (name("a")?, name("b")?, name("c")?);
    state.index_put(&a, now - D::hours(2), Http01).await?;
    state.index_put(&b, now + D::days(10), Http01).await?;
    state.index_put(&c, now - D::minutes(10), Http01).await?;
    let mut conn = state.conn().await?;
    let mut pipe = redis::pipe();
    state.validity_put_into(&mut pipe, &a, now - D::days(88), now + D::days(2));
    state.validity_put_into(&mut pipe, &b, now - D::days(70), now + D::days(20));
    let _: () = pipe.query_async(&mut *conn).await?;
    drop(conn);
    state.mark_failed(&b, now).await?;

    let reg = prometheus::Registry::new();
    let m = CertMetrics::register(&reg)?;
    let summary = m
        .refresh(&state, Some(&store), now, D::hours(1), true)
        .await?;
    assert_eq!(
        (
            summary.certificates,
            summary.overdue,
            summary.failed,
            summary.backfilled
        ),
        (3, 1, 1, 0),
        "{summary:?}"
    );
    let text = m.encode(&reg)?;
    for (series, want) in [
        ("certfleet_fleet_certificates", 3.0),
        (
            "certfleet_fleet_certificates_expiring{within_days=\"0\"}",
            0.0,
        ),
        (
            "certfleet_fleet_certificates_expiring{within_days=\"3\"}",
            1.0,
        ),
        (
            "certfleet_fleet_certificates_expiring{within_days=\"14\"}",
            1.0,
        ),
        (
            "certfleet_fleet_certificates_expiring{within_days=\"30\"}",
            2.0,
        ),
        ("certfleet_fleet_renewals_overdue", 1.0),
        ("certfleet_fleet_renewal_oldest_overdue_seconds", 7200.0),
        ("certfleet_fleet_certificates_failed", 1.0),
    ] {
        assert_eq!(sample(&text, series), Some(want), "{series} in:\n{text}");
    }
    #[allow(clippy::cast_precision_loss)]
    let a_expiry = (now + D::days(2)).unix_timestamp() as f64;
    assert_eq!(
        sample(
            &text,
            &format!("certfleet_certificate_expiration_timestamp_seconds{{name=\"{a}\"}}")
        ),
        Some(a_expiry)
    );
    for (n, cond) in [(&a, "True"), (&b, "False"), (&c, "Unknown")] {
        for other in ["True", "False", "Unknown"] {
            let series =
                format!("certfleet_certificate_ready_status{{condition=\"{other}\",name=\"{n}\"}}");
            let want = if other == cond { 1.0 } else { 0.0 };
            assert_eq!(sample(&text, &series), Some(want), "{series} in:\n{text}");
        }
    }
    // Summary only: the per-name series are gone, the counts stay.
    m.refresh(&state, None, now, D::hours(1), false).await?;
    let text = m.encode(&reg)?;
    assert!(
        !text.contains("certfleet_certificate_ready_status{"),
        "{text}"
    );
    assert_eq!(sample(&text, "certfleet_fleet_certificates"), Some(3.0));
    // A stored version clears the failure mark.
    let mut conn = state.conn().await?;
    let mut pipe = redis::pipe();
    state.validity_put_into(&mut pipe, &b, now, now + D::days(90));
    let _: () = pipe.query_async(&mut *conn).await?;
    drop(conn);
    let summary = m.refresh(&state, None, now, D::hours(1), true).await?;
    assert_eq!(summary.failed, 0);
    env.cleanup().await;
    Ok(())
}

#[test]
fn metric_names_in_expressions() {
    let got = metric_names(
        "sum by (le) (rate(certfleet_jobs_duration_seconds_bucket{x=\"certfleet_no\"}[5m])) / certfleet_a",
    );
    let want: BTreeSet<String> = ["certfleet_jobs_duration_seconds_bucket", "certfleet_a"]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
    assert_eq!(got, want);
}
