//! Tests of the hook runner.

use std::fs;

use super::*;

fn pending(version: &str) -> Pending {
    Pending {
        event: "renewed".into(),
        version: version.into(),
        serial: format!("s-{version}"),
        since_ms: 1,
    }
}

fn fast(command: String, dir: CertDir, shutdown: CancellationToken) -> Hooks {
    Hooks::with_timing(
        command,
        dir,
        shutdown,
        Duration::from_millis(20),
        Duration::from_millis(80),
        Duration::from_secs(10),
    )
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn backoff_doubles_and_caps() {
    let s = Duration::from_secs;
    let got: Vec<Duration> = (1..=8)
        .map(|n| backoff(n, RETRY_FIRST, RETRY_MAX))
        .collect();
    assert_eq!(got, [s(1), s(2), s(4), s(8), s(16), s(32), s(60), s(60)]);
    assert_eq!(backoff(u32::MAX, RETRY_FIRST, RETRY_MAX), s(60));
}

#[tokio::test]
async fn hook_sees_its_environment() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("env.txt");
    let name = CertName::parse("www.example.com").expect("name");
    let cmd = format!(
        "printf '%s|%s|%s|%s|%s' \"$CERTFLEET_CERT_NAME\" \"$CERTFLEET_CERT_DIR\" \"$CERTFLEET_CERT_VERSION\" \"$CERTFLEET_CERT_SERIAL\" \"$CERTFLEET_EVENT\" > {}",
        out.display()
    );
    run_once(
        &cmd,
        Path::new("/srv/certs/www.example.com"),
        &name,
        &pending("v7"),
        Duration::from_secs(10),
    )
    .await
    .expect("hook");
    assert_eq!(
        fs::read_to_string(&out).expect("out"),
        "www.example.com|/srv/certs/www.example.com|v7|s-v7|renewed"
    );
}

#[tokio::test]
async fn failure_reports_status_and_stderr() {
    let name = CertName::parse("www.example.com").expect("name");
    let f = run_once(
        "echo nginx: bad config >&2; exit 3",
        Path::new("/x"),
        &name,
        &pending("v1"),
        Duration::from_secs(10),
    )
    .await
    .expect_err("fails");
    assert!(f.status.contains('3'), "{f:?}");
    assert_eq!(f.stderr_tail, "nginx: bad config");
    let slow = run_once(
        "sleep 5",
        Path::new("/x"),
        &name,
        &pending("v1"),
        Duration::from_millis(100),
    )
    .await
    .expect_err("times out");
    assert!(slow.status.contains("killed"), "{slow:?}");
}

#[tokio::test]
async fn success_removes_the_marker() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = CertDir::open(tmp.path()).expect("dir");
    let name = CertName::parse("a.example.com").expect("name");
    let runs = tmp.path().join("runs");
    let shutdown = CancellationToken::new();
    let hooks = fast(
        format!("echo \"$CERTFLEET_CERT_VERSION\" >> {}", runs.display()),
        dir.clone(),
        shutdown.clone(),
    );
    let switched = hooks
        .record(&name, pending("v1"), || Ok("switched"))
        .await
        .expect("record");
    assert_eq!(switched, "switched");
    let marker = marker_path(&dir, &name);
    eventually("marker removed", || !marker.exists()).await;
    assert_eq!(fs::read_to_string(&runs).expect("runs"), "v1\n");
    shutdown.cancel();
    hooks.wait().await;
}

#[tokio::test]
async fn failing_hook_is_retried_and_keeps_its_marker() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = CertDir::open(tmp.path()).expect("dir");
    let name = CertName::parse("a.example.com").expect("name");
    let other = CertName::parse("b.example.com").expect("name");
    let attempts = tmp.path().join("attempts");
    let fixed = tmp.path().join("fixed");
    // Fails for a.example.com until `fixed` exists; b always works.
    let cmd = format!(
        "echo \"$CERTFLEET_CERT_NAME\" >> {a}; [ \"$CERTFLEET_CERT_NAME\" = b.example.com ] || [ -e {f} ] || {{ echo reload failed >&2; exit 1; }}",
        a = attempts.display(),
        f = fixed.display()
    );
    let shutdown = CancellationToken::new();
    let hooks = fast(cmd, dir.clone(), shutdown.clone());
    hooks
        .record(&name, pending("v1"), || Ok(()))
        .await
        .expect("record a");
    let count = |who: &str| {
        fs::read_to_string(&attempts)
            .unwrap_or_default()
            .lines()
            .filter(|l| *l == who)
            .count()
    };
    eventually("three failed attempts", || count("a.example.com") >= 3).await;
    assert!(
        marker_path(&dir, &name).exists(),
        "marker kept while failing"
    );
    // Another name is not held up by the failing one.
    hooks
        .record(&other, pending("v9"), || Ok(()))
        .await
        .expect("record b");
    eventually("b done", || !marker_path(&dir, &other).exists()).await;
    assert!(marker_path(&dir, &name).exists());
    // Fixed: the next retry succeeds and removes the marker.
    fs::write(&fixed, "").expect("fix");
    eventually("a done", || !marker_path(&dir, &name).exists()).await;
    shutdown.cancel();
    hooks.wait().await;
}

#[tokio::test]
async fn markers_survive_a_restart_and_are_resumed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = CertDir::open(tmp.path()).expect("dir");
    let name = CertName::parse("a.example.com").expect("name");
    let runs = tmp.path().join("runs");

    // First run: the hook fails; shut down with the marker in place.
    let shutdown = CancellationToken::new();
    let hooks = fast("exit 1".into(), dir.clone(), shutdown.clone());
    hooks
        .record(&name, pending("v2"), || Ok(()))
        .await
        .expect("record");
    tokio::time::sleep(Duration::from_millis(50)).await;
    shutdown.cancel();
    hooks.wait().await;
    assert!(marker_path(&dir, &name).exists());

    // Second run picks it up.
    let shutdown = CancellationToken::new();
    let hooks = fast(
        format!(
            "echo \"$CERTFLEET_EVENT $CERTFLEET_CERT_VERSION\" >> {}",
            runs.display()
        ),
        dir.clone(),
        shutdown.clone(),
    );
    assert_eq!(hooks.resume().await.expect("resume"), 1);
    eventually("resumed hook ran", || !marker_path(&dir, &name).exists()).await;
    assert_eq!(fs::read_to_string(&runs).expect("runs"), "renewed v2\n");
    shutdown.cancel();
    hooks.wait().await;
}

#[tokio::test]
async fn failed_switch_restores_the_marker() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = CertDir::open(tmp.path()).expect("dir");
    let name = CertName::parse("a.example.com").expect("name");
    let shutdown = CancellationToken::new();
    let hooks = fast("exit 0".into(), dir.clone(), shutdown.clone());
    let err = hooks
        .record(&name, pending("v1"), || -> Result<(), WatchError> {
            Err(WatchError::Occupied {
                path: PathBuf::from("/x"),
            })
        })
        .await
        .expect_err("switch fails");
    assert!(matches!(err, WatchError::Occupied { .. }));
    assert!(
        !marker_path(&dir, &name).exists(),
        "no hook for a change that did not happen"
    );
    shutdown.cancel();
    hooks.wait().await;
}
