//! Issue 13: TLS to every service. Redis, RabbitMQ and S3 serve only TLS
//! (their plain listeners closed), each with a local CA the clients are
//! given as `CERTFLEET_*_CA_FILE`; issue → watch works end to end.

use std::time::Duration;

use certfleet_common::CertName;
use certfleet_tests::private::{self, Private, Service, TLS_CLIENT_CERTS, TLS_ONLY};
use certfleet_tests::{TestEnv, init_logging};

use crate::agent_checks::spawn_watch;
use crate::watch::wait_for_serial;

/// A private Redis, RabbitMQ and SeaweedFS serving only TLS and requiring
/// a client certificate: a plain connection to each is refused, and so is
/// a TLS one without the client certificate; the worker, `certfleet issue --wait` and
/// `certfleet watch` reach them over rediss://, amqps:// and https:// (the
/// local CA in CERTFLEET_REDIS_CA_FILE, _AMQP_CA_FILE, _S3_CA_FILE, the
/// client certificate in their _CLIENT_CERT_FILE and _CLIENT_KEY_FILE),
/// and the certificate reaches the watcher's directory.
#[tokio::test]
async fn issue_and_watch_with_every_service_over_tls() -> anyhow::Result<()> {
    init_logging();
    let base = TestEnv::new("tls-only").await?;
    let (redis, rabbit, s3) = tokio::try_join!(
        Private::start(Service::Redis, &[TLS_ONLY, TLS_CLIENT_CERTS]),
        Private::start(Service::RabbitMq, &[TLS_ONLY, TLS_CLIENT_CERTS]),
        Private::start(Service::S3, &[TLS_ONLY, TLS_CLIENT_CERTS]),
    )?;
    let env = private::env_for(&base, &[&redis, &rabbit, &s3]).await?;
    for (var, scheme) in [
        ("CERTFLEET_REDIS_URL", "rediss://"),
        ("CERTFLEET_AMQP_URL", "amqps://"),
        ("CERTFLEET_S3_ENDPOINT", "https://"),
    ] {
        assert!(env.vars[var].starts_with(scheme), "{var}={}", env.vars[var]);
    }

    // The plain protocols are refused on those ports.
    let plain_redis =
        deadpool_redis::redis::Client::open(redis.url().replace("rediss://", "redis://"))?;
    let ping = tokio::time::timeout(Duration::from_secs(5), async {
        let mut c = plain_redis.get_multiplexed_async_connection().await?;
        deadpool_redis::redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
    })
    .await;
    assert!(!matches!(ping, Ok(Ok(_))), "plain Redis answered: {ping:?}");
    let plain_amqp = certfleet_common::amqp::BrokerUrls::single(certfleet_common::SecretUrl::new(
        url::Url::parse(&rabbit.url().replace("amqps://", "amqp://"))?,
    ));
    assert!(
        certfleet_common::amqp::connect(&plain_amqp, "plain")
            .await
            .is_err(),
        "plain AMQP was accepted"
    );
    let plain_s3 = reqwest_free_get(&s3.url().replace("https://", "http://")).await;
    assert!(
        !plain_s3.contains("200"),
        "plain HTTP to S3 answered: {plain_s3}"
    );

    // TLS with the right CA but no client certificate: refused by each.
    let mut no_cert = env.vars.clone();
    no_cert.retain(|k, _| !k.contains("_CLIENT_"));
    let cfg = certfleet_common::Config::load(&certfleet_common::config::Sources::new(&no_cert))?;
    let redis_ping = tokio::time::timeout(Duration::from_secs(10), async {
        let state = certfleet_common::state::State::from_config(&cfg, 1)?;
        let mut c = state.conn().await?;
        let pong: String = deadpool_redis::redis::cmd("PING")
            .query_async(&mut *c)
            .await?;
        anyhow::Ok(pong)
    })
    .await;
    assert!(
        !matches!(redis_ping, Ok(Ok(_))),
        "Redis answered a client without a certificate"
    );
    assert!(
        certfleet_common::amqp::connect(&cfg.amqp_url, "no-cert")
            .await
            .is_err(),
        "RabbitMQ accepted a client without a certificate"
    );
    let listed = tokio::time::timeout(
        Duration::from_secs(20),
        certfleet_common::Store::from_config(&cfg).await.list("t/"),
    )
    .await;
    assert!(
        !matches!(listed, Ok(Ok(_))),
        "S3 answered a client without a certificate"
    );

    let worker = env.start_worker(&[]).await?;
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    let watch = spawn_watch(&env, work.path(), &certs, "tls-web", "true", &[], &[])?;
    let domain = env.domain("tls").await?;
    let name = CertName::from_domain(&domain)?;
    let job = env
        .certfleet(&["issue", &domain, "--wait", "--timeout", "90s"])
        .await?;
    let status = env.certfleet(&["status", job.trim()]).await?;
    assert!(status.contains(name.as_str()), "{status}");
    let (pointer, _) = env
        .store()
        .await
        .pointer(&name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("{name} not stored"))?;
    wait_for_serial(&certs, &name, &pointer.serial).await?;
    let log = std::fs::read_to_string(&watch.log)?;
    assert!(!log.contains("ERROR"), "{log}");
    println!(
        "over TLS only: {} stored and installed (serial {})",
        name, pointer.serial
    );
    watch.stop().await?;
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}

/// The status line of a plain HTTP GET (or the error), without an HTTP
/// client library: one request over a TCP socket.
async fn reqwest_free_get(url: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(u) = url::Url::parse(url) else {
        return format!("bad URL {url}");
    };
    let addr = format!(
        "{}:{}",
        u.host_str().unwrap_or("127.0.0.1"),
        u.port().unwrap_or(80)
    );
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(&addr).await?;
        s.write_all(b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(
            String::from_utf8_lossy(&buf)
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
        )
    };
    match tokio::time::timeout(Duration::from_secs(5), exchange).await {
        Ok(Ok(line)) => line,
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => "no answer".into(),
    }
}
