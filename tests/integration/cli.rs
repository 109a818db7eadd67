//! The command line as operators and scripts use it: exit codes, messages,
//! nothing published on bad input.

use std::time::Duration;

use certfleet_common::topology;
use certfleet_tests::{TestEnv, init_logging, run_ok};
use tokio::net::TcpListener;

/// A bad `CERTFLEET_*` value of a setting the binary uses: one line naming
/// it, exit 64, and no connection attempt (a listener posing as the broker
/// sees nobody). Each binary validates its own settings: the worker its
/// concurrency, the CLI the shared ones (S3, logs).
#[tokio::test]
async fn bad_config_value_exits_64_without_connecting() -> anyhow::Result<()> {
    let env = TestEnv::new("cli-config").await?;
    let trap = TcpListener::bind("127.0.0.1:0").await?;
    let amqp = format!("amqp://guest:guest@{}/%2f", trap.local_addr()?);
    for (bin, args, var) in [
        ("certfleet-worker", vec![], "CERTFLEET_CONCURRENCY"),
        (
            "certfleet",
            vec!["issue", "a.example.com"],
            "CERTFLEET_S3_PATH_STYLE",
        ),
        ("certfleet", vec!["list"], "CERTFLEET_LOG_FORMAT"),
    ] {
        let out = env
            .command(bin)?
            .args(&args)
            .env("CERTFLEET_AMQP_URL", &amqp)
            .env(var, "lots")
            .output()
            .await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{bin} {args:?}: {stderr}");
        assert!(stderr.contains(&format!("{var}=\"lots\"")), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
    // An unknown flag: 64 from both binaries; --help: 0.
    for bin in ["certfleet-worker", "certfleet"] {
        let out = env.command(bin)?.arg("--frobnicate").output().await?;
        assert_eq!(
            out.status.code(),
            Some(64),
            "{bin} --frobnicate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = env.command(bin)?.arg("--help").output().await?;
        assert_eq!(out.status.code(), Some(0), "{bin} --help");
    }
    let accepted = tokio::time::timeout(Duration::from_millis(200), trap.accept()).await;
    assert!(accepted.is_err(), "a connection was attempted");
    env.cleanup().await;
    Ok(())
}

/// Bad input to `certfleet issue` and `submit`: exit 64, a message naming
/// the input, nothing published. Good input: the job id, one message queued.
#[tokio::test]
async fn bad_input_is_refused_and_nothing_published() -> anyhow::Result<()> {
    let env = TestEnv::new("cli-input").await?;
    let conn = env.connect().await?;
    let ch = conn.create_channel().await?;
    topology::declare_work_queue(&ch, topology::WORK_QUEUE, &["job.#".to_string()]).await?;
    let long_label = format!("{}.example.com", "a".repeat(64));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["issue", "exa mple.com"], "exa mple.com"),
        (vec!["issue", "10.0.0.1"], "IP address"),
        (vec!["issue", "a.*.example.com"], "wildcard"),
        (vec!["issue", "*.example.com"], "dns-01"),
        (vec!["issue", &long_label], "longer than 63"),
        (vec!["issue", "localhost"], "localhost"),
        (
            vec!["issue", "ok.example.com", "--key-type", "rsa-1024"],
            "rsa-1024",
        ),
        (
            vec!["issue", "ok.example.com", "--name", "../etc"],
            "../etc",
        ),
        (vec!["issue", "ok.example.com", "--timeout", "10"], "10"),
        (vec!["issue"], "DOMAIN"),
    ];
    for (args, needle) in &cases {
        let out = env.command("certfleet")?.args(args).output().await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?} should mention {needle:?}: {stderr}"
        );
    }
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("bulk.txt");
    std::fs::write(
        &file,
        "good.example.com\nbad..example.com\n# comment\nalso-good.example.com key=rsa-2048\n",
    )?;
    let out = env
        .command("certfleet")?
        .arg("submit")
        .arg(&file)
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("bulk.txt:2"), "names the line: {stderr}");
    assert_eq!(
        env.queue_len(topology::WORK_QUEUE).await?,
        0,
        "nothing was published"
    );

    let out = env
        .certfleet(&[
            "issue",
            "Bücher.Example.com",
            "www.bücher.example.com",
            "bücher.example.com",
        ])
        .await?;
    let id = out.trim().to_string();
    assert!(
        uuid::Uuid::parse_str(&id).is_ok(),
        "prints the job id: {id:?}"
    );
    assert_eq!(env.queue_len_settled(topology::WORK_QUEUE, 1).await?, 1);
    let status = env.state()?.status(&uuid::Uuid::parse_str(&id)?).await?;
    let status = status.ok_or_else(|| anyhow::anyhow!("no status record"))?;
    assert_eq!(status.name.as_str(), "xn--bcher-kva.example.com");
    certfleet_common::amqp::close(&conn, 200, "done").await;
    env.cleanup().await;
    Ok(())
}

/// `certfleet issue --wait` returns 0 once the certificate is stored, and
/// `status` / `pull` see it.
#[tokio::test]
async fn issue_wait_status_pull() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("cli-wait").await?;
    let worker = env.start_worker(&[]).await?;
    let a = env.domain("a").await?;
    let b = env.domain("b").await?;
    env.certfleet(&["issue", &a, &b, "--wait", "--timeout", "60s"])
        .await?;
    let text = env.certfleet(&["status", &a]).await?;
    assert!(text.contains(&b), "status lists the domains: {text}");
    // The same as JSON for scripts, and `list` with its filters.
    let v: serde_json::Value =
        serde_json::from_str(&env.certfleet(&["status", &a, "--json"]).await?)?;
    assert_eq!(v["name"], a.as_str(), "{v}");
    assert!(
        v["certificate"]["domains"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x == b.as_str())),
        "{v}"
    );
    let days = v["certificate"]["days_left"].as_i64().unwrap_or(-1);
    assert!(days > 30, "Pebble's certificates last years: {v}");
    assert!(v["last_job_failed_at"].is_null(), "{v}");
    let names_of = |json: &str| -> anyhow::Result<Vec<String>> {
        let v: serde_json::Value = serde_json::from_str(json)?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["name"].as_str().map(String::from))
            .collect())
    };
    let all = names_of(&env.certfleet(&["list", "--json"]).await?)?;
    assert_eq!(all, vec![a.clone()], "list: {all:?}");
    let soon = names_of(
        &env.certfleet(&["list", "--json", "--expiring-within", "30d"])
            .await?,
    )?;
    assert!(soon.is_empty(), "nothing expires within 30 days: {soon:?}");
    let later = format!("{}d", days + 1);
    let within = names_of(
        &env.certfleet(&["list", "--json", "--expiring-within", &later])
            .await?,
    )?;
    assert_eq!(within, vec![a.clone()]);
    assert!(names_of(&env.certfleet(&["list", "--json", "--failed"]).await?)?.is_empty());
    let state = env.state()?;
    let name = certfleet_common::CertName::parse(&a)?;
    state
        .mark_failed(&name, time::OffsetDateTime::now_utc())
        .await?;
    assert_eq!(
        names_of(&env.certfleet(&["list", "--json", "--failed"]).await?)?,
        vec![a.clone()]
    );
    let table = env.certfleet(&["list"]).await?;
    assert!(
        table
            .lines()
            .next()
            .is_some_and(|h| h.contains("DAYS LEFT") && h.contains("RENEWAL")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(a.as_str()) && l.contains(" failed ")),
        "{table}"
    );
    let text = env.certfleet(&["status", &a]).await?;
    assert!(text.contains("last job:    failed"), "{text}");
    let dead: serde_json::Value =
        serde_json::from_str(&env.certfleet(&["dlq", "list", "--json"]).await?)?;
    assert!(dead.is_array(), "{dead}");
    let dir = tempfile::tempdir()?;
    run_ok(
        env.command("certfleet")?
            .args(["pull", "--dir"])
            .arg(dir.path()),
    )
    .await?;
    assert!(dir.path().join(&a).join("fullchain.pem").exists());
    // A name that has no certificate: exit 1.
    let out = env
        .command("certfleet")?
        .args(["pull", "--dir"])
        .arg(dir.path())
        .arg("missing.example.com")
        .output()
        .await?;
    assert_eq!(out.status.code(), Some(1));
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}

/// With the broker down, `certfleet issue` fails (exit 1), never succeeds.
#[tokio::test]
async fn broker_down_is_an_error() -> anyhow::Result<()> {
    let env = TestEnv::new("cli-down").await?;
    let closed = TcpListener::bind("127.0.0.1:0").await?;
    let addr = closed.local_addr()?;
    drop(closed);
    let out = env
        .command("certfleet")?
        .args(["issue", "a.example.com"])
        .env(
            "CERTFLEET_AMQP_URL",
            format!("amqp://guest:guest@{addr}/%2f"),
        )
        .output()
        .await?;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "no job id printed");
    env.cleanup().await;
    Ok(())
}

/// Issue 14: `submit FILE --wait` over 200 names shows a progress bar with
/// the rate and ETA in a terminal (a pseudo-terminal from util-linux's
/// `script`), and piped prints nothing but the summary line.
///
/// 200 orders at once are the load under which Pebble 2.4's store can
/// deadlock (see `bench/src/stall.rs`), so this test has a Pebble of its
/// own and restarts it if no certificate arrives for 20 s: the fleet
/// recovers from a lost CA on its own, which this then also shows.
#[tokio::test]
async fn submit_wait_progress_bar_in_a_terminal_summary_in_a_pipe() -> anyhow::Result<()> {
    use certfleet_tests::private::{self, Private, Service};
    init_logging();
    let base = TestEnv::new("cli-progress").await?;
    let pebble = Private::start(Service::Pebble, &[]).await?;
    let env = private::env_for(&base, &[&pebble]).await?;
    // 8 orders at a time: Pebble's deadlock grows likelier with more in
    // flight (16 stalled it three times in one run), and every stall costs
    // the orders in flight a retry (10 s, then 1 m, then 5 m).
    let worker = env.start_worker(&[("CERTFLEET_CONCURRENCY", "8")]).await?;
    let dir = tempfile::tempdir()?;
    let mut names = String::new();
    for i in 0..200 {
        names.push_str(&env.domain(&format!("p{i}")).await?);
        names.push('\n');
    }
    let file = dir.path().join("names.txt");
    std::fs::write(&file, names)?;
    let certfleet = env.bin("certfleet")?;
    let command = format!(
        "{} submit {} --wait --timeout 8m",
        certfleet.display(),
        file.display()
    );
    let mut events = env.events("cert.#").await?;
    let mut child = tokio::process::Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env_clear()
        .envs(&env.vars)
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
        )
        .env("CERTFLEET_LOG", "warn")
        .env("TERM", "xterm")
        .env("COLUMNS", "120")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let screen = tokio::spawn(async move {
        use tokio::io::AsyncReadExt as _;
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out).await;
        out
    });
    let (mut stored, mut restarts) = (0, 0);
    let mut quiet_since = tokio::time::Instant::now();
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            e = events.next(Duration::from_secs(5)) => {
                if e.is_ok() {
                    stored += 1;
                    quiet_since = tokio::time::Instant::now();
                } else if quiet_since.elapsed() > Duration::from_secs(20) && restarts < 6 {
                    println!("no certificate for 20 s after {stored}: restarting the private Pebble");
                    pebble.restart().await?;
                    restarts += 1;
                    quiet_since = tokio::time::Instant::now();
                }
            }
        }
    };
    let screen = String::from_utf8_lossy(&screen.await?).to_string();
    assert!(status.success(), "exit {:?}: {screen}", status.code());
    assert!(
        screen.contains("/200 done") && screen.contains("ETA") && screen.contains("/s"),
        "no progress bar with rate and ETA on the terminal: {screen}"
    );
    assert!(
        screen.contains("200 stored, 0 failed of 200 in"),
        "no summary: {screen}"
    );
    println!("progress bar: 200 stored ({restarts} Pebble restarts)");

    // Piped: the summary line on stdout, nothing on stderr.
    let mut names = String::new();
    for i in 0..20 {
        names.push_str(&env.domain(&format!("q{i}")).await?);
        names.push('\n');
    }
    std::fs::write(&file, names)?;
    let out = env
        .command("certfleet")?
        .arg("submit")
        .arg(&file)
        .args(["--wait", "--timeout", "5m"])
        .output()
        .await?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stdout}");
    assert!(
        lines[0].starts_with("20 stored, 0 failed of 20 in"),
        "{stdout}"
    );
    assert!(stderr.trim().is_empty(), "nothing on stderr: {stderr}");
    worker.stop().await;
    base.cleanup().await;
    Ok(())
}
