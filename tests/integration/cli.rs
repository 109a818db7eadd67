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
