//! The test fixtures themselves: the ACME proxy (ARI, injected rate
//! limits) and private service instances (stop, kill, restart).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use certfleet_common::event::EventKind;
use certfleet_tests::acme_proxy::AcmeProxy;
use certfleet_tests::private::{self, PEBBLE_WITH_SLEEP, Private, Service};
use certfleet_tests::{TestEnv, init_logging};
use certfleet_worker::objects::Condition;
use deadpool_redis::redis;
use instant_acme::{
    Account, BodyWrapper, BytesResponse, CertificateIdentifier, HttpClient, Identifier, NewAccount,
    NewOrder,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, Der};
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::issue::issue_job;

async fn account(builder: instant_acme::AccountBuilder, dir: String) -> anyhow::Result<Account> {
    let (account, _) = builder
        .create(
            &NewAccount {
                contact: &[],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            dir,
            None,
        )
        .await?;
    Ok(account)
}

fn window_at(start_days: i64) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    (
        now + time::Duration::days(start_days),
        now + time::Duration::days(start_days + 1),
    )
}

/// Through the proxy, instant-acme sees only proxy URLs and Pebble accepts
/// its JWS (signed for proxy URLs); ARI answers with the configured window,
/// and a `replaces` order goes through, reflected and recorded.
#[tokio::test]
async fn acme_proxy_forwards_with_ari() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("fx-proxy").await?;
    let first = window_at(-1);
    let proxy = AcmeProxy::start(&env).await?.with_ari(Some(first));
    let base = proxy.base_url().to_string();
    let acct = account(
        Account::builder_with_root(proxy.ca_path())?,
        proxy.directory_url(),
    )
    .await?;
    assert!(acct.id().starts_with(&base), "{}", acct.id());

    let domain = env.domain("px").await?;
    let ids = [Identifier::Dns(domain.clone())];
    let mut order = acct.new_order(&NewOrder::new(&ids)).await?;
    assert!(order.url().starts_with(&base), "{}", order.url());
    assert!(order.state().finalize.starts_with(&base));
    // POST-as-GET of each authorization: Pebble checks the JWS url (a
    // proxy URL) against the Host it was given.
    let mut authzs = order.authorizations();
    let mut n = 0;
    while let Some(authz) = authzs.next().await {
        let authz = authz?;
        assert!(authz.url().starts_with(&base), "{}", authz.url());
        assert!(!authz.challenges.is_empty());
        for ch in &authz.challenges {
            assert!(ch.url.starts_with(&base), "{}", ch.url);
        }
        n += 1;
    }
    assert_eq!(n, 1);

    // ARI: the configured window, Retry-After 3600, the certID recorded.
    let id = CertificateIdentifier::new(
        Der::from_slice(b"fixture-aki"),
        Der::from_slice(&[0x01, 0x02, 0x03]),
    );
    let (info, retry) = acct.renewal_info(&id).await?;
    assert_eq!(info.suggested_window.start, first.0);
    assert_eq!(info.suggested_window.end, first.1);
    assert!(retry > Duration::from_secs(3500), "{retry:?}");
    assert_eq!(proxy.renewal_info_seen(), vec![id.to_string()]);
    let later = window_at(30);
    proxy.set_ari_window(Some(later));
    let (info, _) = acct.renewal_info(&id).await?;
    assert_eq!(info.suggested_window.start, later.0);

    // Pebble 2.4 ignores the unknown `replaces`; the proxy reflects it, in
    // the newOrder answer (instant-acme checks) and in later fetches.
    let domain2 = env.domain("px2").await?;
    let ids2 = [Identifier::Dns(domain2.clone())];
    let mut replacing = acct
        .new_order(&NewOrder::new(&ids2).replaces(id.clone()))
        .await?;
    assert_eq!(replacing.state().replaces.as_ref(), Some(&id));
    let mut again = acct.order(replacing.url().to_string()).await?;
    assert_eq!(again.state().replaces.as_ref(), Some(&id));
    assert_eq!(proxy.replaces_seen(), vec![id.to_string()]);
    assert_eq!(proxy.new_orders_forwarded(), 2);
    let seen = proxy.new_orders();
    assert_eq!(seen[0].identifiers, vec![domain]);
    assert_eq!(seen[1].identifiers, vec![domain2]);
    env.cleanup().await;
    Ok(())
}

/// Status, `Retry-After` and whether a `Replay-Nonce` came, per response.
type Seen = Arc<Mutex<Vec<(u16, Option<String>, bool)>>>;

/// Records status, Retry-After and Replay-Nonce of every response.
struct Recorder {
    inner: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        BodyWrapper<Bytes>,
    >,
    seen: Seen,
}

impl HttpClient for Recorder {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let fut = HttpClient::request(&self.inner, req);
        let seen = self.seen.clone();
        Box::pin(async move {
            let rsp = fut.await?;
            let h = &rsp.parts.headers;
            let retry_after = h
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let entry = (
                rsp.parts.status.as_u16(),
                retry_after,
                h.contains_key("replay-nonce"),
            );
            seen.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
            Ok(rsp)
        })
    }
}

fn recorder(ca: &std::path::Path) -> anyhow::Result<Recorder> {
    let connector = certfleet_tests::http::connector(Some(ca), true)?;
    Ok(Recorder {
        inner: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector),
        seen: Arc::default(),
    })
}

/// `reject_new_orders`: a 429 rateLimited problem with Retry-After and a
/// fresh nonce on the wire; the next newOrder goes through.
#[tokio::test]
async fn acme_proxy_injects_rate_limits() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("fx-ratelimit").await?;
    let proxy = AcmeProxy::start(&env).await?;
    let rec = recorder(proxy.ca_path())?;
    let seen = rec.seen.clone();
    let acct = account(
        Account::builder_with_http(Box::new(rec)),
        proxy.directory_url(),
    )
    .await?;
    let ids = [Identifier::Dns(env.domain("rl").await?)];

    proxy.reject_new_orders(1, 7);
    let err = acct
        .new_order(&NewOrder::new(&ids))
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("the newOrder was not rejected"))?;
    let instant_acme::Error::Api(problem) = err else {
        anyhow::bail!("not an ACME problem: {err:?}");
    };
    assert_eq!(
        problem.r#type.as_deref(),
        Some("urn:ietf:params:acme:error:rateLimited")
    );
    assert_eq!(problem.status, Some(429));
    let last = seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .last()
        .cloned();
    assert_eq!(last, Some((429, Some("7".to_string()), true)));

    let order = acct.new_order(&NewOrder::new(&ids)).await?;
    assert!(order.url().starts_with(proxy.base_url()));
    assert_eq!(proxy.new_orders_rejected(), 1);
    assert_eq!(proxy.new_orders_forwarded(), 1);
    let log = proxy.new_orders();
    assert!(log[0].rejected && !log[1].rejected, "{log:?}");
    env.cleanup().await;
    Ok(())
}

/// A worker issues through the proxy (every URL rewritten, certificate
/// download included); ARI without a fixed window derives it from the
/// certificate Pebble issued.
#[tokio::test]
async fn worker_issues_through_acme_proxy() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("fx-proxy-worker").await?;
    let proxy = AcmeProxy::start(&env).await?.with_ari(None);
    let vars = proxy.vars();
    let worker = env.start_worker(&private::pairs(&vars)).await?;
    let mut events = env.events("cert.#").await?;
    let job = issue_job(&[env.domain("pw").await?])?;
    env.publish_job(&job).await?;
    let event = events.next(Duration::from_secs(90)).await?;
    assert_eq!(event.kind, EventKind::Issued, "{event:?}");
    assert_eq!(proxy.new_orders_forwarded(), 1);

    let (_, bundle) = env
        .store()
        .await
        .current(&job.job.name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no pointer"))?;
    let der = CertificateDer::from_pem_slice(bundle.cert_pem.as_bytes())?;
    let id = CertificateIdentifier::try_from(&der).map_err(|e| anyhow::anyhow!(e))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)?;
    let nb = cert.validity().not_before.timestamp();
    let life = cert.validity().not_after.timestamp() - nb;
    let acct = account(
        Account::builder_with_root(proxy.ca_path())?,
        proxy.directory_url(),
    )
    .await?;
    let (info, _) = acct.renewal_info(&id).await?;
    assert_eq!(
        info.suggested_window.start.unix_timestamp(),
        nb + life * 2 / 3
    );
    assert_eq!(
        info.suggested_window.end.unix_timestamp(),
        nb + life * 3 / 4
    );
    let unknown = CertificateIdentifier::new(Der::from_slice(b"x"), Der::from_slice(&[0x7f; 8]));
    assert!(acct.renewal_info(&unknown).await.is_err());
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}

/// Runs `f`, prints and returns how long it took.
async fn timed<T>(
    what: &str,
    f: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(T, Duration)> {
    let t = Instant::now();
    let out = f.await?;
    let took = t.elapsed();
    eprintln!("[timing] {what}: {took:.2?}");
    Ok((out, took))
}

#[tokio::test]
async fn private_redis_stop_kill_restart() -> anyhow::Result<()> {
    init_logging();
    let shared = TestEnv::new("fx-priv-redis").await?;
    let (redis_p, _) = timed(
        "redis start",
        Private::start(Service::Redis, &[("REDIS_APPENDONLY", "yes")]),
    )
    .await?;
    let env = private::env_for(&shared, &[&redis_p]).await?;
    let cfg = env.config()?;
    assert_eq!(cfg.redis.url.redacted(), redis_p.url());
    let client = redis::Client::open(redis_p.url())?;
    let mut c = client.get_multiplexed_async_connection().await?;
    let () = redis::cmd("SET")
        .arg("k")
        .arg("v1")
        .query_async(&mut c)
        .await?;

    timed("redis stop", redis_p.stop()).await?;
    assert!(!redis_p.is_up().await);
    assert!(client.get_multiplexed_async_connection().await.is_err());
    timed("redis start_again", redis_p.start_again()).await?;
    let mut c = client.get_multiplexed_async_connection().await?;
    let v: Option<String> = redis::cmd("GET").arg("k").query_async(&mut c).await?;
    assert_eq!(v.as_deref(), Some("v1"), "AOF keeps data across a stop");

    let () = redis::cmd("SET")
        .arg("k")
        .arg("v2")
        .query_async(&mut c)
        .await?;
    timed("redis kill", redis_p.kill()).await?;
    assert!(client.get_multiplexed_async_connection().await.is_err());
    timed("redis start_again after kill", redis_p.start_again()).await?;
    timed("redis restart", redis_p.restart()).await?;
    // The shared Redis is untouched; the private one answers through State.
    let state = env.state()?;
    let mut c = state.conn().await?;
    let v: Option<String> = redis::cmd("GET").arg("k").query_async(&mut *c).await?;
    // Redis write(2)s the AOF before it replies, so SIGKILL loses nothing.
    assert_eq!(
        v.as_deref(),
        Some("v2"),
        "the write before the kill survived"
    );
    shared.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn private_rabbitmq_stop_kill_restart() -> anyhow::Result<()> {
    use certfleet_common::amqp::{Outgoing, Publisher};
    use lapin::options::QueueDeclareOptions;
    use lapin::types::FieldTable;
    init_logging();
    let shared = TestEnv::new("fx-priv-amqp").await?;
    let (broker, _) = timed("rabbitmq start", Private::start(Service::RabbitMq, &[])).await?;
    let env = private::env_for(&shared, &[&broker]).await?;
    assert!(env.vars["CERTFLEET_AMQP_URL"].contains(&format!(":{}/", broker.port())));
    let conn = env.connect().await?;
    let publisher = Publisher::new(&conn).await?;
    publisher
        .channel()
        .queue_declare(
            "fx-probe".into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    publisher
        .publish(Outgoing {
            exchange: "",
            routing_key: "fx-probe",
            body: b"persistent",
            content_type: "text/plain",
            message_id: None,
            headers: None,
            mandatory: true,
        })
        .await?;
    assert_eq!(env.queue_len("fx-probe").await?, 1);
    // The shared broker has no such queue in this vhost.
    assert!(shared.queue_len("fx-probe").await.is_err());

    timed("rabbitmq stop", broker.stop()).await?;
    assert!(env.connect().await.is_err());
    timed("rabbitmq start_again", broker.start_again()).await?;
    assert_eq!(env.queue_len("fx-probe").await?, 1, "durable + persistent");
    timed("rabbitmq kill", broker.kill()).await?;
    assert!(env.connect().await.is_err());
    timed("rabbitmq start_again after kill", broker.start_again()).await?;
    assert_eq!(
        env.queue_len("fx-probe").await?,
        1,
        "confirmed survives kill -9"
    );
    timed("rabbitmq restart", broker.restart()).await?;
    assert_eq!(env.queue_len("fx-probe").await?, 1);
    timed("rabbitmq drop (stop)", async {
        drop(broker);
        Ok(())
    })
    .await?;
    shared.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn private_s3_stop_kill_restart() -> anyhow::Result<()> {
    init_logging();
    let shared = TestEnv::new("fx-priv-s3").await?;
    let (s3, _) = timed("s3 start", Private::start(Service::S3, &[])).await?;
    let env = private::env_for(&shared, &[&s3]).await?;
    let store = env.store().await;
    let key = format!("t/{}/probe.json", env.id);
    store
        .put_json(&key, &serde_json::json!({"v": 1}), Condition::None)
        .await?;
    let got: Option<(serde_json::Value, _)> = store.get_json(&key, "probe").await?;
    assert!(got.is_some());
    assert!(
        shared
            .store()
            .await
            .get_json::<serde_json::Value>(&key, "probe")
            .await?
            .is_none(),
        "written to the private S3, not the shared one"
    );

    timed("s3 stop", s3.stop()).await?;
    let down = tokio::time::timeout(
        Duration::from_secs(60),
        store.put_json(&key, &2, Condition::None),
    )
    .await;
    assert!(!matches!(down, Ok(Ok(_))), "a write while S3 is down fails");
    timed("s3 start_again", s3.start_again()).await?;
    // SeaweedFS keeps its data: the object written before the stop is back.
    let got: Option<(serde_json::Value, _)> = store.get_json(&key, "probe").await?;
    assert_eq!(got.map(|(v, _)| v), Some(serde_json::json!({"v": 1})));
    store.put_json(&key, &3, Condition::None).await?;
    timed("s3 kill", s3.kill()).await?;
    timed("s3 start_again after kill", s3.start_again()).await?;
    let got: Option<(serde_json::Value, _)> = store.get_json(&key, "probe").await?;
    assert_eq!(
        got.map(|(v, _)| v),
        Some(serde_json::json!(3)),
        "a write acknowledged before a kill -9 survives it"
    );
    timed("s3 restart", s3.restart()).await?;
    store.put_json(&key, &4, Condition::None).await?;
    shared.cleanup().await;
    Ok(())
}

/// Pebble's `Sleeping for Ns seconds before validating` lines.
fn pebble_sleeps(p: &Private) -> Vec<u64> {
    let log = std::fs::read_to_string(p.dir().join("pebble/pebble.log")).unwrap_or_default();
    log.lines()
        .filter_map(|l| {
            let rest = l.split("Sleeping for ").nth(1)?;
            rest.split('s').next()?.parse().ok()
        })
        .collect()
}

#[tokio::test]
async fn private_pebble_with_sleep_kill_restart() -> anyhow::Result<()> {
    init_logging();
    let shared = TestEnv::new("fx-priv-pebble").await?;
    let (pebble, _) = timed(
        "pebble start",
        Private::start(Service::Pebble, PEBBLE_WITH_SLEEP),
    )
    .await?;
    let env = private::env_for(&shared, &[&pebble]).await?;
    assert_eq!(
        env.worker_settings(&[])?.acme.directory.as_str(),
        pebble.url()
    );
    let worker = env.start_worker(&[]).await?;
    let mut events = env.events("cert.#").await?;

    let job = issue_job(&[env.domain("pp").await?])?;
    let (event, took) = timed("issue via private pebble (VA sleep on)", async {
        env.publish_job(&job).await?;
        events.next(Duration::from_secs(120)).await
    })
    .await?;
    assert_eq!(event.kind, EventKind::Issued, "{event:?}");
    let sleeps = pebble_sleeps(&pebble);
    eprintln!("[pebble] VA sleeps (s): {sleeps:?}, issuance took {took:.1?}");
    assert!(
        !sleeps.is_empty(),
        "PEBBLE_VA_NOSLEEP=0 leaves the sleep on"
    );

    timed("pebble kill", pebble.kill()).await?;
    let dir = pebble.url();
    assert!(env.http.send(http::Method::GET, &dir, None).await.is_err());
    timed("pebble start_again after kill", pebble.start_again()).await?;
    let (status, _) = env.http.send(http::Method::GET, &dir, None).await?;
    assert_eq!(status, 200);
    timed("pebble stop", pebble.stop()).await?;
    timed("pebble start_again", pebble.start_again()).await?;
    timed("pebble restart", pebble.restart()).await?;

    // env_for points the stack at the private Pebble, so a proxy built from
    // it fronts the private one.
    let proxy = AcmeProxy::start(&env).await?;
    let http = certfleet_tests::Http::new(Some(proxy.ca_path()))?;
    let (status, dir) = http
        .send(http::Method::GET, &proxy.directory_url(), None)
        .await?;
    assert_eq!(status, 200);
    assert!(
        dir.contains(&format!("{}/order-plz", proxy.base_url())),
        "{dir}"
    );

    // Pebble forgot the account; its DNS default (env.ip) was restored, so
    // the worker can issue again after re-registering.
    let job = issue_job(&[env.domain("pp2").await?])?;
    env.publish_job(&job).await?;
    let event = events.next(Duration::from_secs(120)).await?;
    assert_eq!(event.kind, EventKind::Issued, "{event:?}");
    worker.stop().await;
    shared.cleanup().await;
    Ok(())
}
