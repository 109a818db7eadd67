//! Each service's client setup, as the rest of certfleet uses it.

use std::time::Duration;

use certfleet_common::amqp::{Outgoing, Publisher};
use certfleet_common::storage::StorageError;
use certfleet_common::topology;
use certfleet_tests::TestEnv;
use certfleet_worker::objects::Condition;
use deadpool_redis::redis;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

#[tokio::test]
async fn rabbitmq_topic_publish_confirm_consume() -> anyhow::Result<()> {
    let env = TestEnv::new("svc-amqp").await?;
    let conn = env.connect().await?;
    // Small frames unless the URL asks otherwise (lapin's buffers are 32
    // frames each, zeroed up front).
    assert_eq!(
        conn.configuration().frame_max(),
        certfleet_common::amqp::FRAME_MAX
    );
    let publisher = Publisher::new(&conn).await?;
    topology::declare_events(publisher.channel()).await?;
    let ch = conn.create_channel().await?;
    ch.queue_declare(
        "probe".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        "probe".into(),
        topology::EVENTS_EXCHANGE.into(),
        "cert.*.#.example.com".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    for key in ["cert.issued.www.example.com", "cert.issued.www.example.org"] {
        publisher
            .publish(Outgoing {
                exchange: topology::EVENTS_EXCHANGE,
                routing_key: key,
                body: key.as_bytes(),
                content_type: "text/plain",
                message_id: None,
                headers: None,
                mandatory: false,
            })
            .await?;
    }
    // A mandatory message nobody is bound for comes back as an error.
    let unroutable = publisher
        .publish(Outgoing {
            exchange: topology::EVENTS_EXCHANGE,
            routing_key: "nobody.listens",
            body: b"x",
            content_type: "text/plain",
            message_id: None,
            headers: None,
            mandatory: true,
        })
        .await;
    assert!(
        matches!(
            unroutable,
            Err(certfleet_common::amqp::BrokerError::Unroutable { .. })
        ),
        "{unroutable:?}"
    );
    let mut consumer = ch
        .basic_consume(
            "probe".into(),
            "t".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let d = tokio::time::timeout(Duration::from_secs(5), consumer.next())
        .await?
        .ok_or_else(|| anyhow::anyhow!("no delivery"))??;
    assert_eq!(d.data, b"cert.issued.www.example.com");
    d.ack(BasicAckOptions::default()).await?;
    // A message of many frames arrives whole.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    publisher
        .publish(Outgoing {
            exchange: topology::EVENTS_EXCHANGE,
            routing_key: "cert.issued.big.example.com",
            body: &big,
            content_type: "application/octet-stream",
            message_id: None,
            headers: None,
            mandatory: true,
        })
        .await?;
    let d = tokio::time::timeout(Duration::from_secs(5), consumer.next())
        .await?
        .ok_or_else(|| anyhow::anyhow!("no delivery of the large message"))??;
    assert!(
        d.data == big,
        "the large message arrived changed ({} bytes)",
        d.data.len()
    );
    d.ack(BasicAckOptions::default()).await?;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), consumer.next())
            .await
            .is_err(),
        "the .org event must not match the .example.com binding"
    );
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn redis_lock_with_expiry() -> anyhow::Result<()> {
    let env = TestEnv::new("svc-redis").await?;
    let state = env.state()?;
    let mut c = state.conn().await?;
    let key = format!("{}probe-lock", state.keys().prefix());
    let first: Option<String> = redis::cmd("SET")
        .arg(&key)
        .arg("a")
        .arg("NX")
        .arg("PX")
        .arg(300)
        .query_async(&mut *c)
        .await?;
    let second: Option<String> = redis::cmd("SET")
        .arg(&key)
        .arg("b")
        .arg("NX")
        .arg("PX")
        .arg(300)
        .query_async(&mut *c)
        .await?;
    assert!(
        first.is_some() && second.is_none(),
        "NX must refuse a held lock"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let third: Option<String> = redis::cmd("SET")
        .arg(&key)
        .arg("c")
        .arg("NX")
        .arg("PX")
        .arg(300)
        .query_async(&mut *c)
        .await?;
    assert!(third.is_some(), "an expired lock can be taken");
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn s3_put_get_list_conditional() -> anyhow::Result<()> {
    let env = TestEnv::new("svc-s3").await?;
    let store = env.store().await;
    let prefix = format!("t/{}/probe/", env.id);
    let key = format!("{prefix}a.json");
    let etag = store
        .put_json(&key, &serde_json::json!({"v": 1}), Condition::Absent)
        .await?;
    let again = store
        .put_json(&key, &serde_json::json!({"v": 2}), Condition::Absent)
        .await;
    assert!(matches!(again, Err(StorageError::Conflict(_))), "{again:?}");
    let (v, read_etag): (serde_json::Value, _) = store
        .get_json(&key, "probe")
        .await?
        .ok_or_else(|| anyhow::anyhow!("missing"))?;
    assert_eq!(v["v"], 1);
    assert_eq!(read_etag, etag);
    store
        .put_json(
            &key,
            &serde_json::json!({"v": 3}),
            Condition::Matches(&etag),
        )
        .await?;
    let stale = store
        .put_json(
            &key,
            &serde_json::json!({"v": 4}),
            Condition::Matches(&etag),
        )
        .await;
    assert!(
        matches!(stale, Err(StorageError::Conflict(_))),
        "If-Match must refuse a stale ETag: {stale:?}"
    );
    store
        .put_json(&format!("{prefix}b.json"), &1, Condition::None)
        .await?;
    let listed = store.list(&prefix).await?;
    assert_eq!(listed, vec![key.clone(), format!("{prefix}b.json")]);
    env.cleanup().await;
    Ok(())
}

/// A retry goes to its own delay queue only. (The delay header used to
/// start with `x-`, which RabbitMQ's headers exchange ignores when
/// matching: every retry was copied into all six delay queues, and under
/// faults each copy came back as one more try, found by the soak as
/// hundreds of thousands of messages.) Also: a binding left by that
/// release is removed when the topology is declared again.
#[tokio::test]
async fn a_retry_lands_in_its_delay_queue_only() -> anyhow::Result<()> {
    let env = TestEnv::new("retry-tier").await?;
    let conn = env.connect().await?;
    let publisher = Publisher::new(&conn).await?;
    // The binding of the old release, on every tier, then the current
    // declaration, which must remove it.
    topology::declare_jobs(publisher.channel()).await?;
    for (label, _) in topology::RETRY_DELAYS {
        let mut args = FieldTable::default();
        args.insert(
            "x-match".into(),
            lapin::types::AMQPValue::LongString("all".into()),
        );
        args.insert(
            "x-certfleet-delay".into(),
            lapin::types::AMQPValue::LongString(label.into()),
        );
        publisher
            .channel()
            .queue_bind(
                topology::retry_queue(label).as_str().into(),
                topology::RETRY_EXCHANGE.into(),
                "".into(),
                QueueBindOptions::default(),
                args,
            )
            .await?;
    }
    topology::declare_jobs(publisher.channel()).await?;
    for (label, _) in topology::RETRY_DELAYS {
        let headers = topology::headers(&[(topology::HDR_DELAY, label)], &[]);
        let mut out = Outgoing::job("job.issue.http-01", b"x", None);
        out.exchange = topology::RETRY_EXCHANGE;
        out.headers = Some(headers);
        publisher.publish(out).await?;
    }
    let mut counts = Vec::new();
    for (label, _) in topology::RETRY_DELAYS {
        // The 10 s tier may already have sent its message on: count both.
        counts.push((label, env.queue_len(&topology::retry_queue(label)).await?));
    }
    println!("delay queues after one retry each: {counts:?}");
    for (label, n) in &counts {
        if *label != "10s" {
            assert_eq!(*n, 1, "one message in {label}: {counts:?}");
        }
    }
    certfleet_common::amqp::close(&conn, 200, "done").await;
    env.cleanup().await;
    Ok(())
}

/// Calls of a Redis command so far (`INFO commandstats`).
async fn calls(state: &certfleet_common::state::State, command: &str) -> anyhow::Result<u64> {
    let mut c = state.conn().await?;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut *c)
        .await?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

/// A pooled Redis connection costs one round trip per command: no PING
/// at each checkout (deadpool-redis's manager sent `UNWATCH`+`PING` every
/// time), only after it lay unused for `CHECK_IDLE_AFTER`; and a connection
/// a restart of Redis broke is replaced after the one command that found
/// it broken.
#[tokio::test]
async fn redis_checkouts_do_not_ping_and_broken_connections_are_replaced() -> anyhow::Result<()> {
    use certfleet_tests::private::{self, Private, Service};
    let base = TestEnv::new("svc-redis-pool").await?;
    let redis_server = Private::start(Service::Redis, &[]).await?;
    let env = private::env_for(&base, &[&redis_server]).await?;
    let state = env.state()?;
    let key = format!("{}probe", state.keys().prefix());
    let pings_before = calls(&state, "ping").await?;
    let gets_before = calls(&state, "get").await?;
    for _ in 0..200 {
        let mut c = state.conn().await?;
        let _: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut *c).await?;
    }
    let pings = calls(&state, "ping").await? - pings_before;
    let gets = calls(&state, "get").await? - gets_before;
    println!("200 checkouts, each one GET: {gets} GET and {pings} PING at Redis");
    assert_eq!(gets, 200);
    assert!(pings <= 1, "{pings} PINGs for 200 checkouts");

    // Unused for longer than CHECK_IDLE_AFTER: the next checkout checks
    // (its PING comes before the INFO that counts it).
    let before = calls(&state, "ping").await?;
    tokio::time::sleep(certfleet_common::redis_pool::CHECK_IDLE_AFTER + Duration::from_millis(300))
        .await;
    assert!(
        calls(&state, "ping").await? > before,
        "an idle connection is PINGed before it is used"
    );

    // Redis restarts under a pooled connection: one command may fail, the
    // next one gets a new connection and works.
    redis_server.stop().await?;
    redis_server.start_again().await?;
    let mut failed = 0;
    let mut ok = false;
    for _ in 0..3 {
        let r: Result<Option<String>, _> = async {
            let mut c = state.conn().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok::<_, anyhow::Error>(redis::cmd("GET").arg(&key).query_async(&mut *c).await?)
        }
        .await;
        match r {
            Ok(_) => {
                ok = true;
                break;
            }
            Err(_) => failed += 1,
        }
    }
    println!("after a Redis restart: {failed} command(s) failed before one succeeded");
    assert!(ok && failed <= 1, "failed {failed} times");
    redis_server.stop().await?;
    base.cleanup().await;
    Ok(())
}
