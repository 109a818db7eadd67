//! Issue 11, item 9: storage problems are named, at start and later. A
//! worker refuses to start on a bucket it cannot use (missing, or an
//! endpoint that ignores conditional writes), naming bucket and endpoint;
//! a bucket that goes away later makes jobs retry with a reason naming it,
//! never fail for good.

use std::time::Duration;

use certfleet_common::event::EventKind;
use certfleet_common::state::JobState;
use certfleet_tests::{TestEnv, init_logging};
use certfleet_worker::objects::ObjectWrites as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use crate::issue::issue_job;

/// Runs the worker binary with `vars` and returns its exit code and stderr
/// (it must exit by itself within 60 s).
async fn worker_exit(
    env: &TestEnv,
    vars: &[(&str, &str)],
) -> anyhow::Result<(Option<i32>, String)> {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        env.command("certfleet-worker")?
            .envs(vars.iter().copied())
            .env("CERTFLEET_HTTP01_LISTEN", "127.0.0.1:0")
            .env("CERTFLEET_METRICS_LISTEN", "127.0.0.1:0")
            .output(),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the worker did not exit"))??;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A missing bucket: the worker exits 1 at start with a message naming the
/// bucket and the endpoint (before, it started and dead-lettered the first
/// job as `accounts/<hash>.json does not exist`).
#[tokio::test]
async fn missing_bucket_stops_the_worker_at_start() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("s3-missing").await?;
    let bucket = format!("cf-missing-{}", env.id);
    let (code, stderr) = worker_exit(&env, &[("CERTFLEET_S3_BUCKET", &bucket)]).await?;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&bucket), "names the bucket: {stderr}");
    assert!(
        stderr.contains(&env.stack.s3_endpoint),
        "names the endpoint: {stderr}"
    );
    env.cleanup().await;
    Ok(())
}

/// An "S3" endpoint that accepts every write (it honours neither
/// `If-None-Match` nor `If-Match`): the pointer fencing cannot work on it,
/// so the worker refuses to start and says why.
#[tokio::test]
async fn endpoint_without_conditional_writes_is_refused() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("s3-nocond").await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                // One request per connection is enough for the SDK's
                // small PUTs; answer 200 with an ETag whatever was asked.
                let _ = sock.read(&mut buf).await;
                let _ = sock
                    .write_all(b"HTTP/1.1 200 OK\r\nETag: \"0123456789abcdef0123456789abcdef\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    let endpoint = format!("http://{addr}");
    let (code, stderr) = worker_exit(&env, &[("CERTFLEET_S3_ENDPOINT", &endpoint)]).await?;
    server.abort();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("If-None-Match"), "says why: {stderr}");
    assert!(stderr.contains(&endpoint), "names the endpoint: {stderr}");
    env.cleanup().await;
    Ok(())
}

/// The bucket disappears after the worker started: the job is retried (not
/// dead-lettered) with a reason naming the bucket, and completes once the
/// bucket is back.
#[tokio::test]
async fn bucket_gone_later_retries_then_completes() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("s3-gone").await?;
    let bucket = format!("cf-gone-{}", env.id);
    let cfg = env.config_with(&[("CERTFLEET_S3_BUCKET", &bucket)])?;
    let store = certfleet_common::Store::from_config(&cfg).await;
    store.ensure_bucket().await?;
    let worker = env
        .start_worker(&[("CERTFLEET_S3_BUCKET", &bucket)])
        .await?;
    // The start-up probe is deleted again: the bucket is empty.
    store
        .client()
        .delete_bucket()
        .bucket(&bucket)
        .send()
        .await?;
    let mut events = env.events("cert.#").await?;
    let job = issue_job(&[env.domain("g").await?])?;
    env.publish_job(&job).await?;
    let state = env.state()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = state.status(&job.job_id).await?
            && s.state == JobState::Retrying
        {
            break s;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the job was never retried"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        status.detail.contains(&bucket),
        "the reason names the bucket: {}",
        status.detail
    );
    assert_eq!(
        env.queue_len_settled(certfleet_common::topology::DEAD_QUEUE, 0)
            .await?,
        0,
        "not dead-lettered"
    );
    store.ensure_bucket().await?;
    let event = events.next(Duration::from_secs(60)).await?;
    assert_eq!((event.kind, event.job_id), (EventKind::Issued, job.job_id));
    println!(
        "bucket gone: retried with {:?}, issued after it came back",
        status.detail
    );
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}

/// A bundle that never became current and is older than the grace period
/// (a day) is pruned when a retried job of the name lists its versions; the
/// current version stays.
#[tokio::test]
async fn old_never_current_bundles_are_pruned() -> anyhow::Result<()> {
    use certfleet_worker::objects::Condition;
    init_logging();
    let env = TestEnv::new("s3-prune").await?;
    let worker = env.start_worker(&[]).await?;
    let mut events = env.events("cert.#").await?;
    let mut job = issue_job(&[env.domain("pr").await?])?;
    let name = job.job.name.clone();
    let store = env.store().await;
    let stale = store.keys().bundle(&name, "20200101T000000Z-0bad");
    store
        .put_json(
            &stale,
            &serde_json::json!({"left": "by a lost try"}),
            Condition::None,
        )
        .await?;
    // A second attempt: it looks for what earlier tries left behind.
    job.attempt = 2;
    env.publish_job(&job).await?;
    let event = events.next(Duration::from_secs(60)).await?;
    assert_eq!((event.kind, event.job_id), (EventKind::Issued, job.job_id));
    let keys = store.list(&store.keys().versions(&name)).await?;
    assert!(
        !keys.contains(&stale),
        "the stale bundle is pruned: {keys:?}"
    );
    assert_eq!(keys.len(), 1, "the current version stays: {keys:?}");
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}

/// Issue 12: the property the pointer fencing relies on, on the stack's S3
/// server (SeaweedFS). 8 writers race on one key for 10 rounds: in each,
/// all read the current ETag and write `If-Match` it; exactly one wins, the
/// others get a conflict. Then 10 rounds of 8 `If-None-Match: *` writes of
/// a fresh key: exactly one creates it. (SeaweedFS checks the condition
/// under a filer lock whose waiters retry every second: 8 writers on one
/// key take about 3 s a round, 32 about 10 s.)
#[tokio::test]
async fn concurrent_conditional_writers_one_wins_each_round() -> anyhow::Result<()> {
    use certfleet_common::storage::StorageError;
    use certfleet_worker::objects::Condition;
    init_logging();
    let env = TestEnv::new("s3-race").await?;
    let store = env.store().await;
    let writers = 8;
    let rounds = 10;
    let key = format!("t/{}/race/pointer.json", env.id);
    // Created as the worker creates a pointer (If-None-Match), with a value
    // no writer writes: the ETag is the MD5 of the body, so a writer that
    // wrote the bytes the key already held would leave the ETag as it was
    // and let a second writer's If-Match pass, on any S3 server (as every
    // real pointer carries its own fence, job and time, that never happens
    // in the worker).
    store.put_json(&key, &-1, Condition::Absent).await?;
    let count = |results: Vec<Result<_, StorageError>>| -> anyhow::Result<usize> {
        let mut wins = 0;
        for r in results {
            match r {
                Ok(_) => wins += 1,
                Err(StorageError::Conflict(_)) => {}
                Err(e) => anyhow::bail!("neither a win nor a conflict: {e}"),
            }
        }
        Ok(wins)
    };
    let mut if_match = Vec::new();
    for round in 0..rounds {
        let (_, etag) = store
            .get_json::<serde_json::Value>(&key, "race")
            .await?
            .ok_or_else(|| anyhow::anyhow!("the key is gone"))?;
        let tries = (0..writers).map(|w| {
            let (store, key, etag) = (store.clone(), key.clone(), etag.clone());
            async move {
                store
                    .put_json(&key, &(round * 100 + w), Condition::Matches(&etag))
                    .await
            }
        });
        if_match.push(count(futures_util::future::join_all(tries).await)?);
    }
    let mut if_none_match = Vec::new();
    for round in 0..rounds {
        let fresh = format!("t/{}/race/new-{round}.json", env.id);
        let tries = (0..writers).map(|w| {
            let (store, fresh) = (store.clone(), fresh.clone());
            async move { store.put_json(&fresh, &w, Condition::Absent).await }
        });
        if_none_match.push(count(futures_util::future::join_all(tries).await)?);
    }
    println!(
        "conditional writes, {writers} writers x {rounds} rounds: If-Match winners {if_match:?}; If-None-Match winners {if_none_match:?}"
    );
    assert!(
        if_match.iter().all(|w| *w == 1),
        "one If-Match winner per round: {if_match:?}"
    );
    assert!(
        if_none_match.iter().all(|w| *w == 1),
        "one creator per key: {if_none_match:?}"
    );
    env.cleanup().await;
    Ok(())
}
