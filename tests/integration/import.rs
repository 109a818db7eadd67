//! Issue 14, item 6: certificates that the real lego and certbot (Debian's)
//! obtained from Pebble are imported (`certfleet import`), reported with
//! what was skipped and why, imported once however often the command runs,
//! renewed by certfleet like any other, and installed by `watch`.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use certfleet_common::CertName;
use certfleet_common::event::EventKind;
use certfleet_tests::{TestEnv, init_logging, pki, run_ok};

/// Runs a tool to completion; its output is in the error if it fails.
async fn tool(cmd: &mut tokio::process::Command, what: &str) -> anyhow::Result<()> {
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .with_context(|| format!("{what} took more than 120 s"))??;
    anyhow::ensure!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `lego run` for `domain` against the test's Pebble, answering http-01 on
/// the test's responder address; certificates under `path`.
async fn lego(env: &TestEnv, path: &Path, domain: &str) -> anyhow::Result<()> {
    tool(
        tokio::process::Command::new("lego")
            .env("LEGO_CA_CERTIFICATES", &env.vars["CERTFLEET_ACME_CA_CERTS"])
            .args(["--server", &env.stack.acme_directory])
            .args(["--accept-tos", "--email", "admin@example.test"])
            .args(["--key-type", "ec256", "--domains", domain])
            .args(["--http", "--http.port", &format!("{}:5002", env.ip)])
            .arg("--path")
            .arg(path)
            .arg("run"),
        "lego",
    )
    .await
}

/// `certbot certonly --standalone` for `domain` against the test's Pebble,
/// its configuration under `dir`.
async fn certbot(env: &TestEnv, dir: &Path, domain: &str) -> anyhow::Result<()> {
    tool(
        tokio::process::Command::new("certbot")
            .env("REQUESTS_CA_BUNDLE", &env.vars["CERTFLEET_ACME_CA_CERTS"])
            .args([
                "certonly",
                "--standalone",
                "--non-interactive",
                "--agree-tos",
            ])
            .args(["-m", "admin@example.test", "--no-eff-email"])
            .args(["--server", &env.stack.acme_directory])
            .arg("--config-dir")
            .arg(dir.join("config"))
            .arg("--work-dir")
            .arg(dir.join("work"))
            .arg("--logs-dir")
            .arg(dir.join("logs"))
            .args(["--http-01-address", &env.ip.to_string()])
            .args(["--http-01-port", "5002", "-d", domain]),
        "certbot",
    )
    .await
}

#[tokio::test]
async fn lego_and_certbot_directories_imported_renewed_installed() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("import").await?;
    let tmp = tempfile::tempdir()?;
    let lego_dir = tmp.path().join(".lego");
    let certbot_dir = tmp.path().join("letsencrypt");
    // The tools listen on the responder address: before the worker does.
    let from_lego = env.domain("lego").await?;
    let from_certbot = env.domain("certbot").await?;
    lego(&env, &lego_dir, &from_lego).await?;
    certbot(&env, &certbot_dir, &from_certbot).await?;
    // Something to skip: a key that is not the certificate's.
    let crt = lego_dir
        .join("certificates")
        .join(format!("{from_lego}.crt"));
    let bad = lego_dir
        .join("certificates")
        .join("mismatch.example.test.crt");
    std::fs::copy(&crt, &bad)?;
    std::fs::write(
        bad.with_extension("key"),
        rcgen::KeyPair::generate()?.serialize_pem(),
    )?;
    let lego_serial = pki::serial(&std::fs::read_to_string(&crt)?)?;

    let worker = env.start_worker(&[]).await?;
    let mut events = env.events("cert.#").await?;
    let import = |from: &str, dir: &Path| {
        let mut cmd = env.command("certfleet")?;
        cmd.args(["import", "--from", from, "--wait", "--timeout", "60s"])
            .arg(dir);
        anyhow::Ok(cmd)
    };
    let out = import("lego", &lego_dir)?.output().await?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("importing {from_lego} from")),
        "{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("mismatch.example.test.crt: key mismatch"),
        "the skip and its reason: {stderr}"
    );
    let text = run_ok(&mut import("certbot", &certbot_dir.join("config"))?).await?;
    assert!(
        text.contains(&format!("importing {from_certbot} from")),
        "{text}"
    );
    for _ in 0..2 {
        let e = events.next(Duration::from_secs(60)).await?;
        assert_eq!(e.kind, EventKind::Issued, "{e:?}");
    }

    // Stored as versions with their keys, indexed for renewal.
    let store = env.store().await;
    let state = env.state()?;
    let lego_name = CertName::parse(&from_lego)?;
    let certbot_name = CertName::parse(&from_certbot)?;
    for name in [&lego_name, &certbot_name] {
        let (pointer, bundle) = store
            .current(name)
            .await?
            .ok_or_else(|| anyhow::anyhow!("{name} not stored"))?;
        let key = store
            .open_key(&bundle)?
            .ok_or_else(|| anyhow::anyhow!("the bundle holds no key"))?;
        assert!(pki::key_matches(key.expose(), &bundle.cert_pem)?, "{name}");
        assert!(!bundle.chain_pem.trim().is_empty(), "{name}: chain kept");
        let due = state
            .index_due(pointer.renew_at + time::Duration::seconds(1))
            .await?;
        assert!(due.iter().any(|d| &d.name == name), "{name} indexed");
    }
    let (p, _) = store
        .pointer(&lego_name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no pointer"))?;
    assert_eq!(p.serial, lego_serial, "lego's certificate, not a new one");

    // Twice: nothing new.
    let again = run_ok(&mut import("lego", &lego_dir)?).await?;
    assert!(again.contains("0 to import"), "{again}");
    assert_eq!(
        store.list(&store.keys().versions(&lego_name)).await?.len(),
        1,
        "one version"
    );

    // Renewed by certfleet, installed by watch.
    let web = tmp.path().join("web");
    let mut watch = env
        .command("certfleet")?
        .args(["watch", "--queue", "import-web"])
        .arg("--dir")
        .arg(&web)
        .spawn()?;
    crate::watch::wait_for_serial(&web, &lego_name, &lego_serial).await?;
    env.certfleet(&["renew", from_lego.as_str(), "--wait", "--timeout", "60s"])
        .await?;
    let (renewed, _) = store
        .pointer(&lego_name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no pointer"))?;
    assert_ne!(renewed.serial, lego_serial, "a new certificate");
    assert_eq!(renewed.domains, vec![from_lego.clone()]);
    crate::watch::wait_for_serial(&web, &lego_name, &renewed.serial).await?;
    let _ = watch.start_kill();
    let _ = watch.wait().await;
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}
