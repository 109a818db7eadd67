//! Issue 3, the webserver side: `certfleet watch` and `pull`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use certfleet::agent::{WatchOptions, watch};
use certfleet_common::CertName;
use certfleet_tests::{TestEnv, init_logging, pki};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::issue::issue_job;

/// Waits until `DIR/<name>/cert.pem` holds a certificate with `serial`.
pub(crate) async fn wait_for_serial(
    dir: &Path,
    name: &CertName,
    serial: &str,
) -> anyhow::Result<PathBuf> {
    let path = dir.join(name.as_str());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(pem) = std::fs::read_to_string(path.join("cert.pem"))
            && pki::serial(&pem).is_ok_and(|s| {
                certfleet_common::serial_display(&s) == certfleet_common::serial_display(serial)
            })
        {
            return Ok(path);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} never got serial {serial}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Watcher {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), certfleet::agent::WatchError>>,
}

impl Watcher {
    fn start(env: &TestEnv, dir: &Path, queue: &str, hook: Option<String>) -> anyhow::Result<Self> {
        Self::start_with_metrics(env, dir, queue, hook, None)
    }

    fn start_with_metrics(
        env: &TestEnv,
        dir: &Path,
        queue: &str,
        hook: Option<String>,
        metrics_listen: Option<std::net::SocketAddr>,
    ) -> anyhow::Result<Self> {
        let cfg = env.config()?;
        let stop = CancellationToken::new();
        let opts = WatchOptions {
            dir: dir.to_path_buf(),
            queue_id: queue.to_string(),
            filters: vec![],
            on_change: hook,
            hook_env: vec![],
            metrics_listen,
        };
        let token = stop.clone();
        let task = tokio::spawn(async move { watch(&cfg, opts, token).await });
        Ok(Self { stop, task })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await??;
        Ok(())
    }
}

/// issue → watch writes the files → chain verifies against Pebble's root,
/// the key matches, the SANs are the requested names, the hook ran.
#[tokio::test]
async fn full_flow_issue_to_webserver_files() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("watch-flow").await?;
    let worker = env.start_worker(&[]).await?;
    let dir = tempfile::tempdir()?;
    let hook_log = dir.path().join("hook.log");
    let metrics_addr: std::net::SocketAddr =
        format!("127.0.0.1:{}", certfleet_tests::private::free_port()?).parse()?;
    let watcher = Watcher::start_with_metrics(
        &env,
        &dir.path().join("certs"),
        "web1",
        Some(format!(
            "echo \"$CERTFLEET_EVENT $CERTFLEET_CERT_NAME $CERTFLEET_CERT_SERIAL\" >> {}",
            hook_log.display()
        )),
        Some(metrics_addr),
    )?;
    std::fs::create_dir_all(dir.path().join("certs"))?;
    let mut events = env.events("cert.#").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let domains = vec![env.domain("shop").await?, env.domain("www-shop").await?];
    let job = issue_job(&domains)?;
    env.publish_job(&job).await?;
    let event = events.next(Duration::from_secs(60)).await?;
    let serial = event.certificate.map(|c| c.serial).unwrap_or_default();
    let path = wait_for_serial(&dir.path().join("certs"), &job.job.name, &serial).await?;
    let read = |f: &str| std::fs::read_to_string(path.join(f));
    let (cert, chain, full, key) = (
        read("cert.pem")?,
        read("chain.pem")?,
        read("fullchain.pem")?,
        read("privkey.pem")?,
    );
    assert_eq!(full, format!("{cert}{chain}"));
    pki::verify_chain(&full, &env.pebble_root().await?, &domains[0])?;
    assert!(pki::key_matches(&key, &cert)?);
    let mut want = domains.clone();
    want.sort();
    assert_eq!(pki::sans(&cert)?, want);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path.join("privkey.pem"))?
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&hook_log).is_ok_and(|l| l.contains(&serial)) {
        anyhow::ensure!(Instant::now() < deadline, "hook did not run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // `--metrics-listen`: the expiry of the file on disk (the stored
    // certificate's notAfter), the install, and the hook's success.
    let (pointer, _) = env
        .store()
        .await
        .current(&job.job.name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no pointer"))?;
    let series = |m: &str| format!("{m}{{name=\"{}\"}}", job.job.name);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let hook_ok =
            crate::issue::metric(&env, metrics_addr, &series("certfleet_agent_hook_success"))
                .await?;
        if (hook_ok - 1.0).abs() < f64::EPSILON {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "hook success never reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let expiry = crate::issue::metric(
        &env,
        metrics_addr,
        &series("certfleet_agent_certificate_expiration_timestamp_seconds"),
    )
    .await?;
    #[allow(clippy::cast_precision_loss)]
    let not_after = pointer.not_after.unix_timestamp() as f64;
    assert!(
        (expiry - not_after).abs() < f64::EPSILON,
        "agent expiry {expiry}, notAfter {not_after}"
    );
    let installed = crate::issue::metric(
        &env,
        metrics_addr,
        &series("certfleet_agent_certificate_installed_timestamp_seconds"),
    )
    .await?;
    assert!(installed > 0.0, "install time {installed}");
    watcher.stop().await?;
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}

/// A watch started after issuance catches up from storage; a watch stopped
/// while an event is published gets it when it comes back.
#[tokio::test]
async fn watch_catches_up_and_keeps_events_while_down() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("watch-catchup").await?;
    let worker = env.start_worker(&[]).await?;
    let mut events = env.events("cert.#").await?;
    let certs = tempfile::tempdir()?;

    // Issued before any watch exists.
    let early = issue_job(&[env.domain("early").await?])?;
    env.publish_job(&early).await?;
    let e1 = events.next(Duration::from_secs(60)).await?;
    let s1 = e1.certificate.map(|c| c.serial).unwrap_or_default();
    let w = Watcher::start(&env, certs.path(), "web2", None)?;
    wait_for_serial(certs.path(), &early.job.name, &s1).await?;
    w.stop().await?;

    // Issued while the watch is down: its durable queue keeps the event.
    let late = issue_job(&[env.domain("late").await?])?;
    env.publish_job(&late).await?;
    let e2 = events.next(Duration::from_secs(60)).await?;
    let s2 = e2.certificate.map(|c| c.serial).unwrap_or_default();
    let queued = env
        .queue_len_settled(&certfleet_common::topology::watch_queue("web2"), 1)
        .await?;
    assert_eq!(queued, 1, "the event waits in the watch queue");
    let w = Watcher::start(&env, certs.path(), "web2", None)?;
    wait_for_serial(certs.path(), &late.job.name, &s2).await?;
    w.stop().await?;
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}
