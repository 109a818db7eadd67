//! Issue 13: private keys only where they belong. Certificate keys are
//! encrypted to the server groups allowed to read them (age recipients
//! chosen by name); each webserver opens only its own; `keys reseal`
//! brings a new group in.

use std::collections::HashMap;
use std::time::Duration;

use certfleet_common::config::Sources;
use certfleet_common::seal::SealError;
use certfleet_common::storage::StorageError;
use certfleet_common::{CertName, Config, Store};
use certfleet_tests::{Group, TestEnv, init_logging, run_ok};

use crate::agent_checks::{spawn_watch, wait_for_text};
use crate::secrets::{assert_no_secret, pem_body, stored_outputs};
use crate::watch::wait_for_serial;

/// Two server groups (A: `*.ga.…`, B: `*.gb.…`) and an administrator
/// listed for every name. Webserver A's identity installs A's certificate
/// and refuses B's; storage and Redis hold no key in the clear; a worker's
/// configuration (no identity) opens no bundle. Then group C is added to
/// A's line and `keys reseal --all` runs with the administrator's
/// identity: C's running watcher installs A's certificate, while A's
/// watcher, which has that version already, changes nothing (no hook run).
#[tokio::test]
async fn groups_open_only_their_own_and_reseal_brings_a_new_group_in() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("keys-groups").await?;
    let work = tempfile::tempdir()?;
    let (a, b, c, admin) = (
        Group::new(work.path(), "a")?,
        Group::new(work.path(), "b")?,
        Group::new(work.path(), "c")?,
        Group::new(work.path(), "admin")?,
    );
    let name_a = CertName::from_domain(&env.domain("www.ga").await?)?;
    let name_b = CertName::from_domain(&env.domain("www.gb").await?)?;
    let zone = |g: &str| format!("*.{g}.{}.certfleet.test", env.id);
    let recipients = work.path().join("recipients");
    let write_rules = |a_line: &str| {
        std::fs::write(
            &recipients,
            format!(
                "# who reads what\n{} {a_line}\n{} {}\n* {}\n",
                zone("ga"),
                zone("gb"),
                b.recipient,
                admin.recipient
            ),
        )
    };
    write_rules(&a.recipient)?;
    let recipients_var = recipients.display().to_string();
    let worker = env
        .start_worker(&[("CERTFLEET_RECIPIENTS_FILE", &recipients_var)])
        .await?;
    for n in [&name_a, &name_b] {
        env.certfleet(&["issue", n.as_str(), "--wait", "--timeout", "90s"])
            .await?;
    }

    // Each bundle names its recipients: its group and the administrator.
    let as_admin = |g: &Group| -> anyhow::Result<Config> {
        env.config_with(&[
            (
                "CERTFLEET_IDENTITY_FILE",
                &g.identity_file.display().to_string(),
            ),
            ("CERTFLEET_RECIPIENTS_FILE", &recipients_var),
        ])
    };
    let admin_store = Store::from_config(&as_admin(&admin)?).await;
    let (pointer_a, bundle_a) = admin_store
        .current(&name_a)
        .await?
        .ok_or_else(|| anyhow::anyhow!("{name_a} not stored"))?;
    let (_, bundle_b) = admin_store
        .current(&name_b)
        .await?
        .ok_or_else(|| anyhow::anyhow!("{name_b} not stored"))?;
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(
        bundle_a
            .key
            .as_ref()
            .map(|k| k.age_recipients())
            .unwrap_or_default(),
        sorted(vec![a.recipient.clone(), admin.recipient.clone()]).as_slice()
    );
    assert_eq!(
        bundle_b
            .key
            .as_ref()
            .map(|k| k.age_recipients())
            .unwrap_or_default(),
        sorted(vec![b.recipient.clone(), admin.recipient.clone()]).as_slice()
    );
    let key_a = admin_store
        .open_key(&bundle_a)?
        .ok_or_else(|| anyhow::anyhow!("no key"))?;
    let key_b = admin_store
        .open_key(&bundle_b)?
        .ok_or_else(|| anyhow::anyhow!("no key"))?;

    // Webserver A: its own certificate, not B's.
    let pull_a = work.path().join("pull-a");
    let out = env
        .command("certfleet")?
        .args(["pull", "--dir"])
        .arg(&pull_a)
        .args([name_a.as_str(), name_b.as_str()])
        .env("CERTFLEET_IDENTITY_FILE", &a.identity_file)
        .output()
        .await?;
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(pull_a.join(name_a.as_str()).join("privkey.pem").exists());
    assert!(!pull_a.join(name_b.as_str()).exists(), "{report}");
    assert!(
        report
            .lines()
            .any(|l| l.starts_with(&format!("{name_b}: failed:"))
                && l.contains("not encrypted to this server's identity")),
        "{report}"
    );
    assert_eq!(
        std::fs::read_to_string(pull_a.join(name_a.as_str()).join("privkey.pem"))?,
        *key_a.expose()
    );

    // A worker's configuration has recipients, no identity: it opens none.
    let mut worker_vars: HashMap<String, String> = env.vars.clone();
    worker_vars.remove("CERTFLEET_IDENTITY_FILE");
    worker_vars.insert("CERTFLEET_RECIPIENTS_FILE".into(), recipients_var.clone());
    let worker_store = Store::from_config(&Config::load(&Sources::new(&worker_vars))?).await;
    match worker_store.open_key(&bundle_a) {
        Err(StorageError::Seal(SealError::NoIdentity { .. })) => {}
        other => anyhow::bail!("a worker opened a bundle: {:?}", other.map(|_| "key")),
    }

    // No key in the clear anywhere in S3 or Redis.
    let outputs = stored_outputs(&env, &admin_store).await?;
    anyhow::ensure!(outputs.len() > 4, "S3 objects and Redis were read");
    let secrets = [
        ("private key of A", pem_body(key_a.expose())),
        ("private key of B", pem_body(key_b.expose())),
        ("identity of A", a.identity.clone()),
        ("identity of the administrator", admin.identity.clone()),
    ];
    assert_no_secret(&outputs, &secrets);

    // Watchers of groups A and C, each with a hook that counts its runs.
    let watch = |g: &Group, label: &str| {
        let certs = work.path().join(format!("certs-{label}"));
        let runs = work.path().join(format!("runs-{label}"));
        let hook = format!("echo run >> {}", runs.display());
        let identity = g.identity_file.display().to_string();
        spawn_watch(
            &env,
            work.path(),
            &certs,
            &format!("keys-{label}"),
            &hook,
            &[("CERTFLEET_IDENTITY_FILE", &identity)],
            &[],
        )
        .map(|w| (w, certs, runs))
    };
    let (watch_a, certs_a, runs_a) = watch(&a, "a")?;
    let (watch_c, certs_c, runs_c) = watch(&c, "c")?;
    wait_for_serial(&certs_a, &name_a, &pointer_a.serial).await?;
    wait_for_text(
        &watch_c.log,
        &[name_a.as_str(), "not encrypted to this server's identity"],
    )
    .await?;
    assert!(!certs_c.join(name_a.as_str()).exists());
    let hook_runs = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    // A's hook ran once for its certificate (the catch-up).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while hook_runs(&runs_a) < 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(hook_runs(&runs_a), 1);

    // Group C joins A's line; reseal with the administrator's identity.
    write_rules(&format!("{} {}", a.recipient, c.recipient))?;
    let report = run_ok(
        env.command("certfleet")?
            .args(["keys", "reseal", "--all"])
            .env("CERTFLEET_IDENTITY_FILE", &admin.identity_file)
            .env("CERTFLEET_RECIPIENTS_FILE", &recipients),
    )
    .await?;
    println!("keys reseal --all: {}", report.trim());
    assert!(
        report.contains("2 certificates: 1 versions resealed, 1 already current, 0 failed"),
        "{report}"
    );
    wait_for_serial(&certs_c, &name_a, &pointer_a.serial).await?;
    assert_eq!(
        std::fs::read_to_string(certs_c.join(name_a.as_str()).join("privkey.pem"))?,
        *key_a.expose()
    );
    let (pointer_after, bundle_after) = admin_store
        .current(&name_a)
        .await?
        .ok_or_else(|| anyhow::anyhow!("{name_a} gone"))?;
    assert_eq!(pointer_after, pointer_a, "the pointer is not rewritten");
    assert_eq!(
        bundle_after
            .key
            .as_ref()
            .map(|k| k.age_recipients())
            .unwrap_or_default(),
        sorted(vec![
            a.recipient.clone(),
            c.recipient.clone(),
            admin.recipient.clone()
        ])
        .as_slice()
    );
    // A's watcher got the event too and changed nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(hook_runs(&runs_a), 1, "A's hook ran again");
    assert_eq!(hook_runs(&runs_c), 1, "C's hook ran once");
    assert!(!certs_c.join(name_b.as_str()).exists());
    // A second reseal has nothing to do.
    let again = run_ok(
        env.command("certfleet")?
            .args(["keys", "reseal", name_a.as_str()])
            .env("CERTFLEET_IDENTITY_FILE", &admin.identity_file)
            .env("CERTFLEET_RECIPIENTS_FILE", &recipients),
    )
    .await?;
    assert!(
        again.contains("1 certificates: 0 versions resealed, 1 already current"),
        "{again}"
    );
    // Without an identity that opens them, reseal names what failed and
    // writes nothing.
    std::fs::write(
        &recipients,
        format!(
            "{} {}\n{} {} {}\n* {}\n",
            zone("ga"),
            a.recipient,
            zone("gb"),
            b.recipient,
            c.recipient,
            admin.recipient
        ),
    )?;
    let refused = env
        .command("certfleet")?
        .args(["keys", "reseal", name_b.as_str()])
        .env("CERTFLEET_IDENTITY_FILE", &c.identity_file)
        .env("CERTFLEET_RECIPIENTS_FILE", &recipients)
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(name_b.as_str())
            && stderr.contains("not encrypted to this server's identity"),
        "{stderr}"
    );
    let (_, b_after) = admin_store
        .current(&name_b)
        .await?
        .ok_or_else(|| anyhow::anyhow!("{name_b} gone"))?;
    assert_eq!(b_after.key, bundle_b.key, "B's bundle was not touched");
    for w in [watch_a, watch_c] {
        w.stop().await?;
    }
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}
