//! Issue 13, item 5: no secret in any output. A full issue → renew →
//! watch cycle runs with `trace` logging in every process (worker, CLI,
//! watch), a broker password of its own and encryption at rest on; then
//! every log line, event, dead letter, Redis value and S3 object is scanned
//! for private key material (PEM blocks and the actual keys' bytes: the
//! certificate's and the ACME account's), the broker password, the S3
//! secret key and the encryption key.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use certfleet_common::CertName;
use deadpool_redis::redis;
use tokio::time::Instant;

use certfleet_tests::{TestEnv, init_logging};

/// A child process of `env` logging at `trace` into `log`.
fn traced(
    env: &TestEnv,
    bin: &str,
    vars: &HashMap<String, String>,
    log: &Path,
) -> anyhow::Result<tokio::process::Command> {
    let mut cmd = env.command(bin)?;
    cmd.envs(vars)
        .env("CERTFLEET_LOG", "trace")
        .stdout(std::fs::File::create(log.with_extension("out"))?)
        .stderr(std::fs::File::create(log)?);
    Ok(cmd)
}

/// Every value under the test's Redis prefix, as text.
async fn redis_dump(env: &TestEnv) -> anyhow::Result<String> {
    let state = env.state()?;
    let mut c = state.conn().await?;
    let pattern = format!("{}*", state.keys().prefix());
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut *c)
        .await?;
    let mut out = String::new();
    for k in keys {
        let kind: String = redis::cmd("TYPE").arg(&k).query_async(&mut *c).await?;
        let value: Vec<String> = match kind.as_str() {
            "string" => vec![redis::cmd("GET").arg(&k).query_async(&mut *c).await?],
            "hash" => redis::cmd("HGETALL").arg(&k).query_async(&mut *c).await?,
            "zset" => {
                redis::cmd("ZRANGE")
                    .arg(&k)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .query_async(&mut *c)
                    .await?
            }
            "set" => redis::cmd("SMEMBERS").arg(&k).query_async(&mut *c).await?,
            "list" => {
                redis::cmd("LRANGE")
                    .arg(&k)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut *c)
                    .await?
            }
            _ => Vec::new(),
        };
        out.push_str(&format!("{k} ({kind}): {}\n", value.join(" ")));
    }
    Ok(out)
}

/// The base64 body of a PEM block, without line breaks.
/// Every value under the test's Redis prefix (one output) and every object
/// under its S3 prefix (one output each), as text.
pub(crate) async fn stored_outputs(
    env: &TestEnv,
    store: &certfleet_common::Store,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut outputs = vec![("redis".to_string(), redis_dump(env).await?)];
    for key in store.list(&env.vars["CERTFLEET_S3_PREFIX"]).await? {
        if let Some((v, _)) = store.get_json::<serde_json::Value>(&key, "object").await? {
            outputs.push((format!("s3 {key}"), v.to_string()));
        }
    }
    Ok(outputs)
}

/// Panics, showing where, if an output holds a PEM private key or a piece
/// of one of the secrets.
pub(crate) fn assert_no_secret(outputs: &[(String, String)], secrets: &[(&str, String)]) {
    for (what, text) in outputs {
        assert!(!text.contains("PRIVATE KEY"), "a PEM private key in {what}");
        for (secret, value) in secrets {
            // A 40-character piece of a key is as telling as all of it.
            let needle = if value.len() > 40 {
                &value[..40]
            } else {
                value.as_str()
            };
            if let Some(at) = text.find(needle) {
                let from = (0..=at.saturating_sub(200))
                    .rev()
                    .find(|i| text.is_char_boundary(*i))
                    .unwrap_or(0);
                panic!(
                    "the {secret} appears in {what}: …{}<SECRET>…",
                    &text[from..at]
                );
            }
        }
    }
}

/// The base64 body of a PEM block (what a leak would show).
pub(crate) fn pem_body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

#[tokio::test]
async fn no_secret_in_logs_events_redis_or_storage() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("secrets").await?;
    // A broker user and password of this test's own.
    let password = format!("pw{}", uuid::Uuid::new_v4().simple());
    let user = format!("u-{}", env.id);
    let mgmt = env.stack.rabbitmq_mgmt.as_str().trim_end_matches('/');
    for (path, body) in [
        (
            format!("{mgmt}/api/users/{user}"),
            format!(r#"{{"password":"{password}","tags":""}}"#),
        ),
        (
            format!("{mgmt}/api/permissions/{}/{user}", env.vhost),
            r#"{"configure":".*","write":".*","read":".*"}"#.to_string(),
        ),
    ] {
        let (status, text) = env.http.send(http::Method::PUT, &path, Some(body)).await?;
        anyhow::ensure!(status < 300, "{path}: {status} {text}");
    }
    let mut amqp = url::Url::parse(&env.vars["CERTFLEET_AMQP_URL"])?;
    amqp.set_username(&user)
        .map_err(|()| anyhow::anyhow!("amqp url"))?;
    amqp.set_password(Some(&password))
        .map_err(|()| anyhow::anyhow!("amqp url"))?;
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    let encryption_key = base64::engine::general_purpose::STANDARD.encode(key);
    let vars: HashMap<String, String> = [
        ("CERTFLEET_AMQP_URL".to_string(), amqp.to_string()),
        (
            "CERTFLEET_ENCRYPTION_KEY".to_string(),
            encryption_key.clone(),
        ),
    ]
    .into();
    let s3_secret = env.vars["AWS_SECRET_ACCESS_KEY"].clone();

    let logs = tempfile::tempdir()?;
    let web = logs.path().join("web");
    let mut worker = traced(
        &env,
        "certfleet-worker",
        &vars,
        &logs.path().join("worker.log"),
    )?
    .spawn()
    .context("worker")?;
    env.wait_for_work_queue().await?;
    let mut watch = traced(&env, "certfleet", &vars, &logs.path().join("watch.log"))?
        .args(["watch", "--queue", "secrets-web", "--on-change", "true"])
        .arg("--dir")
        .arg(&web)
        .spawn()
        .context("watch")?;
    let mut events = env.events("cert.#").await?;
    let domain = env.domain("s").await?;
    let name = CertName::parse(&domain)?;
    for (i, args) in [
        vec!["issue", domain.as_str(), "--wait", "--timeout", "60s"],
        vec!["renew", domain.as_str(), "--wait", "--timeout", "60s"],
        vec!["status", domain.as_str(), "--json"],
        vec!["list", "--json"],
        vec!["dlq", "list", "--json"],
    ]
    .into_iter()
    .enumerate()
    {
        let status = traced(
            &env,
            "certfleet",
            &vars,
            &logs.path().join(format!("cli{i}.log")),
        )?
        .args(&args)
        .status()
        .await?;
        anyhow::ensure!(status.success(), "certfleet {args:?}: {status}");
    }
    let mut bodies = String::new();
    for _ in 0..2 {
        let raw = events.next_raw(Duration::from_secs(30)).await?;
        bodies.push_str(&String::from_utf8_lossy(&raw));
        bodies.push('\n');
    }
    // The renewed certificate reaches the webserver.
    let store = certfleet_common::Store::from_config(&env.config_with(&[(
        "CERTFLEET_ENCRYPTION_KEY",
        &vars["CERTFLEET_ENCRYPTION_KEY"],
    )])?)
    .await;
    let (pointer, bundle) = store
        .current(&name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no certificate"))?;
    crate::watch::wait_for_serial(&web, &name, &pointer.serial).await?;
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for child in [&mut watch, &mut worker] {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }

    // The secrets: the certificate's key, the account's key, the password,
    // the S3 secret key, the encryption key.
    let cert_key = store
        .open_key(&bundle)?
        .ok_or_else(|| anyhow::anyhow!("the bundle holds no key"))?;
    let mut secrets: Vec<(&str, String)> = vec![
        ("broker password", password.clone()),
        ("S3 secret key", s3_secret),
        ("encryption key", encryption_key),
        (
            "webserver identity",
            certfleet_tests::fleet_keys().group.identity.clone(),
        ),
        ("certificate private key", pem_body(cert_key.expose())),
    ];
    let accounts = store
        .list(&format!("{}accounts/", env.vars["CERTFLEET_S3_PREFIX"]))
        .await?;
    anyhow::ensure!(!accounts.is_empty(), "no account record in storage");
    for a in &accounts {
        let (record, _) = store
            .get_json::<serde_json::Value>(a, "account")
            .await?
            .ok_or_else(|| anyhow::anyhow!("{a} gone"))?;
        let sealed: certfleet_common::seal::SealedKey =
            serde_json::from_value(record["credentials"].clone())?;
        let creds = store
            .sealer()
            .open(
                &sealed,
                &format!("account:{}", env.vars["CERTFLEET_ACME_DIRECTORY"]),
            )
            .with_context(|| format!("opening {a}"))?;
        let v: serde_json::Value = serde_json::from_str(creds.expose())?;
        let k = v["key_pkcs8"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("{a}: no key_pkcs8 in the credentials"))?;
        secrets.push(("account key", k.to_string()));
    }

    // Everything written: logs, events, dead letters, Redis, S3.
    let mut outputs: Vec<(String, String)> = Vec::new();
    for entry in std::fs::read_dir(logs.path())? {
        let path = entry?.path();
        if path.is_file() {
            outputs.push((path.display().to_string(), std::fs::read_to_string(&path)?));
        }
    }
    let log_bytes: usize = outputs.iter().map(|(_, t)| t.len()).sum();
    outputs.push(("events".into(), bodies));
    let stored = stored_outputs(&env, &store).await?;
    let objects = stored.len() - 1;
    outputs.extend(stored);
    anyhow::ensure!(
        log_bytes > 100_000,
        "trace logs were written ({log_bytes} bytes)"
    );
    assert_no_secret(&outputs, &secrets);
    println!(
        "secret scan: {} secrets, {} outputs ({log_bytes} bytes of trace logs, {objects} S3 objects): nothing found",
        secrets.len(),
        outputs.len()
    );
    env.cleanup().await;
    Ok(())
}
