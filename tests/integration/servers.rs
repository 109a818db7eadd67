//! Issue 13: per-server broker credentials. A user from `certfleet server
//! add` follows its own names' events and nothing else; the broker, not
//! certfleet, enforces it.

use std::time::Duration;

use certfleet_common::amqp::{self, BrokerUrls, Outgoing, Publisher};
use certfleet_common::{CertName, SecretUrl, topology};
use certfleet_tests::{TestEnv, init_logging};

use crate::agent_checks::spawn_watch;
use crate::watch::wait_for_serial;

/// A server user for `*.mine.…`: binding its queue to its names works, to
/// another name's events is refused; publishing to `certfleet.events` or
/// `certfleet.jobs` and declaring an exchange are refused; its queue gets
/// the events of its names only; `watch` with it installs its certificate
/// and not the other; `server list` shows it, `server remove` ends it.
#[tokio::test]
async fn server_user_follows_only_its_names() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("server-user").await?;
    let worker = env.start_worker(&[]).await?;
    let mine = CertName::from_domain(&env.domain("www.mine").await?)?;
    let other = CertName::from_domain(&env.domain("www.other").await?)?;
    let zone = format!("*.mine.{}.certfleet.test", env.id);
    let id = format!("web-{}", env.id);
    let creds: serde_json::Value = serde_json::from_str(
        &env.certfleet(&["server", "add", &id, "--names", &zone, "--json"])
            .await?,
    )?;
    let filter = format!("cert.*.*.#.mine.{}.certfleet.test", env.id);
    assert_eq!(creds["filters"], serde_json::json!([filter]), "{creds}");
    assert_eq!(creds["user"], format!("certfleet-server-{id}"));
    let amqp_url = creds["amqp_url"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no amqp_url: {creds}"))?
        .to_string();
    let policy = creds["s3_policy"].to_string();
    assert!(
        policy.contains(&format!("certs/{zone}/*")) && !policy.contains("certs/*/"),
        "{policy}"
    );
    let listed: serde_json::Value =
        serde_json::from_str(&env.certfleet(&["server", "list", "--json"]).await?)?;
    assert!(
        listed
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["id"] == id.as_str() && s["names"] == serde_json::json!([zone])),
        "{listed}"
    );

    // What the broker allows and refuses this user.
    let urls = BrokerUrls::single(SecretUrl::new(url::Url::parse(&amqp_url)?));
    let conn = amqp::connect(&urls, "server-user-test").await?;
    let queue = topology::watch_queue(&id);
    let ch = conn.create_channel().await?;
    topology::declare_watch_queue(&ch, &queue, std::slice::from_ref(&filter)).await?;
    let refused = |what: &str, r: Result<(), String>| match r {
        Err(e) if e.contains("ACCESS_REFUSED") || e.contains("access") => Ok(()),
        Err(e) => Err(anyhow::anyhow!("{what}: refused, but not for access: {e}")),
        Ok(()) => Err(anyhow::anyhow!("{what}: allowed")),
    };
    let ch = conn.create_channel().await?;
    let bind_other = topology::declare_watch_queue(&ch, &queue, &[format!("cert.*.{other}")])
        .await
        .map_err(|e| e.to_string());
    refused("binding to another name's events", bind_other)?;
    let ch = conn.create_channel().await?;
    let bind_all = topology::declare_watch_queue(&ch, &queue, &["cert.#".to_string()])
        .await
        .map_err(|e| e.to_string());
    refused("binding to every event", bind_all)?;
    // One publish as this user, on a fresh confirm channel (a refusal
    // closes the channel).
    let publish = |exchange: &'static str, key: String, body: String| {
        let conn = &conn;
        async move {
            let publisher = Publisher::new(conn)
                .await
                .map_err(|e| certfleet_common::error::chain(&e))?;
            publisher
                .publish(Outgoing::json(exchange, &key, body.as_bytes(), None))
                .await
                .map_err(|e| certfleet_common::error::chain(&e))
        }
    };
    for exchange in [topology::EVENTS_EXCHANGE, topology::JOBS_EXCHANGE] {
        let sent = publish(exchange, format!("cert.issued.{mine}"), "{}".into()).await;
        refused(&format!("publishing to {exchange}"), sent)?;
    }
    // Reports: on its own names only.
    let report = |name: &CertName| {
        format!(
            r#"{{"schema":"certfleet.report.v1","kind":"holds","server":"{id}","name":"{name}","version":"20261203T000000Z-01","serial":"01","hook":{{"outcome":"none"}},"at":"2026-12-03T00:00:00Z"}}"#
        )
    };
    for (n, allowed) in [(&mine, true), (&other, false)] {
        let sent = publish(
            topology::REPORTS_EXCHANGE,
            format!("server.holds.{n}"),
            report(n),
        )
        .await;
        if allowed {
            sent.map_err(|e| anyhow::anyhow!("its own report refused: {e}"))?;
        } else {
            refused(&format!("a report on {other}"), sent)?;
        }
    }
    let ch = conn.create_channel().await?;
    let declared = ch
        .exchange_declare(
            "certfleet.server-made".into(),
            lapin::ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string());
    refused("declaring an exchange", declared)?;
    amqp::close(&conn, 200, "bye").await;

    // Its queue gets its names' events only.
    for n in [&mine, &other] {
        env.certfleet(&["issue", n.as_str(), "--wait", "--timeout", "90s"])
            .await?;
    }
    let queued = env.queue_len_settled(&queue, 1).await?;
    assert_eq!(queued, 1, "events in {queue}: only {mine}'s");

    // watch as this user installs its certificate, not the other one.
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    let watch = spawn_watch(
        &env,
        work.path(),
        &certs,
        &id,
        "true",
        &[("CERTFLEET_AMQP_URL", &amqp_url)],
        &["--filter", &filter],
    )?;
    let (pointer, _) = env
        .store()
        .await
        .pointer(&mine)
        .await?
        .ok_or_else(|| anyhow::anyhow!("{mine} not stored"))?;
    wait_for_serial(&certs, &mine, &pointer.serial).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!certs.join(other.as_str()).exists());
    let log = std::fs::read_to_string(&watch.log)?;
    assert!(!log.contains("ACCESS_REFUSED"), "{log}");
    // Its watch reported, as that user, what it loaded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r: serde_json::Value =
            serde_json::from_str(&env.certfleet(&["rollout", mine.as_str(), "--json"]).await?)?;
        let reported = r["servers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["server"] == id.as_str() && s["current"] == true);
        if reported {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no report from {id}: {r}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    watch.stop().await?;

    // Removed: the user no longer connects.
    let removed = env.certfleet(&["server", "remove", &id]).await?;
    assert!(removed.contains("removed"), "{removed}");
    anyhow::ensure!(
        amqp::connect(&urls, "server-user-gone").await.is_err(),
        "the removed user still connects"
    );
    let listed = env.certfleet(&["server", "list", "--json"]).await?;
    assert!(!listed.contains(&id), "{listed}");
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}
