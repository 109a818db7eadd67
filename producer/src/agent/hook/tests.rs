//! Tests of the hook runner.

use std::fs;

use super::*;

fn pending(version: &str) -> Pending {
    Pending {
        event: "renewed".into(),
        version: version.into(),
        serial: format!("f{}", version.trim_start_matches('v')),
        since_ms: 1,
    }
}

fn fast(command: String, dir: CertDir, shutdown: CancellationToken) -> Hooks {
    Hooks::with_timing(
        command,
        HookEnv::default(),
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
        &HookEnv::default(),
        Duration::from_secs(10),
    )
    .await
    .expect("hook");
    assert_eq!(
        fs::read_to_string(&out).expect("out"),
        "www.example.com|/srv/certs/www.example.com|v7|F7|renewed"
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
        &HookEnv::default(),
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
        &HookEnv::default(),
        Duration::from_millis(100),
    )
    .await
    .expect_err("times out");
    assert!(slow.status.contains("killed"), "{slow:?}");
}

/// Processes (zombies aside) whose process group is `pgid`, from
/// `/proc/*/stat`.
fn group_members(pgid: u32) -> Vec<u32> {
    let mut members = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return members;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...; comm may contain spaces.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid)
            && fields.first() != Some(&"Z")
        {
            members.push(pid);
        }
    }
    members
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pids = tmp.path().join("pids");
    let name = CertName::parse("www.example.com").expect("name");
    // A background child, then the hook itself hangs.
    let cmd = format!("sleep 100 & echo $$ $! > {}; sleep 100", pids.display());
    let started = tokio::time::Instant::now();
    let f = run_once(
        &cmd,
        Path::new("/x"),
        &name,
        &pending("v1"),
        &HookEnv::default(),
        Duration::from_millis(300),
    )
    .await
    .expect_err("times out");
    assert!(f.status.contains("killed with its process group"), "{f:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let text = fs::read_to_string(&pids).expect("pids written");
    let ids: Vec<u32> = text
        .split_whitespace()
        .map(|p| p.parse().expect("pid"))
        .collect();
    assert_eq!(ids.len(), 2, "{text}");
    let group = ids[0];
    // The background sleep was reparented when the hook died; give its new
    // parent a moment to reap it.
    eventually("no process of the hook's group left", || {
        group_members(group).is_empty()
    })
    .await;
    assert!(group_members(group).is_empty());
}

#[tokio::test]
async fn hook_environment_is_clean() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("env.txt");
    let name = CertName::parse("www.example.com").expect("name");
    let parent: HashMap<&str, &str> = HashMap::from([
        ("PATH", "/usr/bin:/bin"),
        ("HOME", "/home/web"),
        ("TZ", "UTC"),
        ("SECRET_TOKEN", "hunter2"),
        ("AWS_SECRET_ACCESS_KEY", "s3cr3t"),
    ]);
    let env = HookEnv::from_lookup(&["TZ".into(), "NOT_SET".into()], |n| {
        parent.get(n).map(|v| v.into())
    });
    assert_eq!(format!("{env:?}"), r#"["PATH", "HOME", "TZ"]"#);
    run_once(
        &format!("env > {}", out.display()),
        Path::new("/srv/certs/www.example.com"),
        &name,
        &pending("v3"),
        &env,
        Duration::from_secs(10),
    )
    .await
    .expect("hook");
    let text = fs::read_to_string(&out).expect("env");
    let mut names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once('=').map(|(n, _)| n))
        .filter(|n| !["PWD", "SHLVL", "_", "OLDPWD"].contains(n))
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "CERTFLEET_CERT_DIR",
            "CERTFLEET_CERT_NAME",
            "CERTFLEET_CERT_SERIAL",
            "CERTFLEET_CERT_VERSION",
            "CERTFLEET_EVENT",
            "HOME",
            "PATH",
            "TZ"
        ],
        "{text}"
    );
    assert!(text.lines().any(|l| l == "TZ=UTC"), "{text}");
    assert!(
        !text.contains("hunter2") && !text.contains("s3cr3t"),
        "{text}"
    );
}

#[test]
fn hook_env_names_refuse_credentials() {
    for ok in ["TZ", "NGINX_PID_FILE", "_X", "http_proxy"] {
        assert!(HookEnv::check_name(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "1X",
        "A=B",
        "A B",
        "CERTFLEET_AMQP_URL",
        "CERTFLEET_ENCRYPTION_KEY",
        "certfleet_redis_url",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    ] {
        assert!(HookEnv::check_name(bad).is_err(), "{bad}");
    }
    // No PATH in certfleet's environment: the hook still gets one.
    let env = HookEnv::from_lookup(&[], |_| None);
    assert!(env.pairs().any(|(n, v)| n == "PATH" && v == DEFAULT_PATH));
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
