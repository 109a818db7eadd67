//! The webserver agent installs only what is genuine, and its hook gets a
//! clean environment. Versions are written straight into storage here (as
//! the worker would, through `ObjectWrites`), from certificates made with
//! rcgen, so each test controls exactly what is stored and announced.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, anyhow};
use base64::Engine as _;
use certfleet::agent::{PullOutcome, pull};
use certfleet_common::event::{CertInfo, EVENT_SCHEMA};
use certfleet_common::seal::Sealer;
use certfleet_common::storage::{BUNDLE_SCHEMA, POINTER_SCHEMA, version_id};
use certfleet_common::{
    Bundle, CertName, ChallengeType, Event, EventKind, KeyType, Pointer, Secret, Store, amqp,
    topology,
};
use certfleet_tests::{TestEnv, init_logging};
use certfleet_worker::objects::Condition;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SerialNumber,
};
use time::OffsetDateTime;
use tokio::time::Instant;
use uuid::Uuid;

use crate::watch::wait_for_serial;

/// A certificate made here: leaf, chain, key, and its version id.
struct Made {
    cert_pem: String,
    chain_pem: String,
    key_pem: String,
    serial: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    version: String,
}

fn test_ca() -> anyhow::Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "certfleet agent-checks CA");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

/// A leaf for `domains`, valid from `age` ago for 90 days, signed by `ca`.
/// With `matching_key` false, the key stored beside it is another one.
fn make(
    ca: &CertifiedIssuer<'static, KeyPair>,
    domains: &[String],
    age: time::Duration,
    matching_key: bool,
) -> anyhow::Result<Made> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(domains.to_vec())?;
    let not_before = (OffsetDateTime::now_utc() - age).replace_nanosecond(0)?;
    let not_after = not_before + time::Duration::days(90);
    params.not_before = not_before;
    params.not_after = not_after;
    // 16 random bytes, minimal DER (no leading zero byte), positive.
    let mut serial = *Uuid::new_v4().as_bytes();
    serial[0] = (serial[0] & 0x7f) | 0x10;
    params.serial_number = Some(SerialNumber::from(serial.to_vec()));
    let cert = params.signed_by(&key, ca)?;
    let serial: String = serial.iter().map(|b| format!("{b:02x}")).collect();
    let key_pem = if matching_key {
        key.serialize_pem()
    } else {
        KeyPair::generate()?.serialize_pem()
    };
    Ok(Made {
        cert_pem: cert.pem(),
        chain_pem: ca.pem(),
        key_pem,
        version: version_id(not_before, &serial),
        serial,
        not_before,
        not_after,
    })
}

/// Stores `m` as a version of `name` the way the worker does: the bundle
/// under its own key (`If-None-Match: *`), its key sealed with `sealer`;
/// with `fence`, the pointer is then made to name it.
async fn store(
    store: &Store,
    sealer: &Sealer,
    name: &CertName,
    domains: &[String],
    m: &Made,
    fence: Option<u64>,
) -> anyhow::Result<()> {
    let job_id = Uuid::new_v4();
    let bundle = Bundle {
        schema: BUNDLE_SCHEMA.into(),
        name: name.clone(),
        version: m.version.clone(),
        cert_pem: m.cert_pem.clone(),
        chain_pem: m.chain_pem.clone(),
        key: Some(sealer.seal_bundle(
            name.as_str(),
            &m.key_pem,
            &Bundle::seal_context(name, &m.version),
        )?),
        key_scope: Default::default(),
        job_id: Some(job_id),
        issuer: None,
        revoked: None,
    };
    let bundle_key = store.keys().bundle(name, &m.version);
    store
        .put_json(&bundle_key, &bundle, Condition::Absent)
        .await?;
    let Some(fence) = fence else {
        return Ok(());
    };
    let pointer = Pointer {
        schema: POINTER_SCHEMA.into(),
        name: name.clone(),
        version: m.version.clone(),
        bundle_key,
        serial: m.serial.clone(),
        domains: domains.to_vec(),
        key_type: KeyType::EcdsaP256,
        not_before: m.not_before,
        not_after: m.not_after,
        renew_at: m.not_after - time::Duration::days(30),
        job_id,
        fence,
        history: vec![],
        updated_at: OffsetDateTime::now_utc(),
        challenge: ChallengeType::Http01,
        ari_id: None,
        profile: None,
        issuer: None,
        csr: None,
        ca: None,
        revoked: None,
    };
    store
        .put_json(&store.keys().pointer(name), &pointer, Condition::None)
        .await?;
    Ok(())
}

/// Publishes a `renewed` event announcing `m` for `name` to the events
/// exchange, as anyone allowed to publish there could (mandatory: a watch
/// queue must be bound).
async fn announce(
    env: &TestEnv,
    name: &CertName,
    domains: &[String],
    m: &Made,
) -> anyhow::Result<()> {
    let event = Event {
        schema: EVENT_SCHEMA.into(),
        kind: EventKind::Renewed,
        name: name.clone(),
        domains: domains.to_vec(),
        job_id: Uuid::new_v4(),
        attempt: 1,
        at: OffsetDateTime::now_utc(),
        certificate: Some(CertInfo {
            serial: m.serial.clone(),
            not_before: m.not_before,
            not_after: m.not_after,
            renew_at: m.not_after - time::Duration::days(30),
            version: m.version.clone(),
            location: env.store().await.location(name, &m.version),
            previous_serial: None,
        }),
        error: None,
    };
    let body = event.to_json()?;
    let key = event.routing_key();
    let conn = env.connect().await?;
    let publisher = amqp::Publisher::new(&conn).await?;
    let result = publisher
        .publish(amqp::Outgoing {
            exchange: topology::EVENTS_EXCHANGE,
            routing_key: &key,
            body: &body,
            content_type: certfleet_common::event::CONTENT_TYPE_JSON,
            message_id: None,
            headers: None,
            mandatory: true,
        })
        .await;
    amqp::close(&conn, 200, "done").await;
    Ok(result?)
}

/// Waits until `file` contains every one of `needles` (a log line).
pub(crate) async fn wait_for_text(file: &Path, needles: &[&str]) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return Ok(line.to_string());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} never logged {needles:?}; it logged:\n{text}",
            file.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for_file(path: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The bytes of the four files of `DIR/<name>`.
fn files_of(dir: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    ["cert.pem", "chain.pem", "fullchain.pem", "privkey.pem"]
        .iter()
        .map(|f| std::fs::read(dir.join(f)).with_context(|| format!("{}/{f}", dir.display())))
        .collect()
}

/// A `certfleet watch` binary with its stderr in a file.
pub(crate) struct WatchProcess {
    child: tokio::process::Child,
    pub(crate) log: PathBuf,
}

impl WatchProcess {
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await;
        Ok(())
    }
}

pub(crate) fn spawn_watch(
    env: &TestEnv,
    work: &Path,
    certs: &Path,
    queue: &str,
    hook: &str,
    extra: &[(&str, &str)],
    args: &[&str],
) -> anyhow::Result<WatchProcess> {
    let log = work.join(format!("{queue}.stderr"));
    let stderr = std::fs::File::create(&log)?;
    let mut cmd = env.command("certfleet")?;
    cmd.args(["watch", "--queue", queue, "--dir"])
        .arg(certs)
        .arg("--on-change")
        .arg(hook)
        .args(args)
        .env("CERTFLEET_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr));
    for (k, v) in extra {
        cmd.env(k, v);
    }
    Ok(WatchProcess {
        child: cmd.spawn()?,
        log,
    })
}

/// Storage holds a version announced by a forged event (its bundle exists,
/// the pointer never named it), then a current version whose key is not
/// its certificate's: `watch` keeps the previous files byte for byte, runs
/// no hook for either and logs why; `pull` reports the refusal. A genuine
/// version after that is installed as usual.
#[tokio::test]
async fn agent_installs_only_genuine_versions() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("agent-genuine").await?;
    let ca = test_ca()?;
    let domains = vec![env.domain("gen").await?];
    let name = CertName::from_domain(&domains[0])?;
    let st = env.store().await;
    // Sealed as workers seal: to the fleet's recipients.
    let sealer = st.sealer().clone();
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    let markers = work.path().join("markers");
    std::fs::create_dir_all(&certs)?;
    std::fs::create_dir_all(&markers)?;

    let v1 = make(&ca, &domains, time::Duration::hours(3), true)?;
    store(&st, &sealer, &name, &domains, &v1, Some(1)).await?;
    let hook = format!("touch {}/\"$CERTFLEET_CERT_VERSION\"", markers.display());
    let watch = spawn_watch(&env, work.path(), &certs, "agent-web", &hook, &[], &[])?;
    let link = wait_for_serial(&certs, &name, &v1.serial).await?;
    wait_for_file(&markers.join(&v1.version)).await?;
    let before = files_of(&link)?;

    // 1. A forged event: the bundle is in storage (a real certificate with
    // its key), but the pointer never named it.
    let forged = make(&ca, &domains, time::Duration::hours(2), true)?;
    store(&st, &sealer, &name, &domains, &forged, None).await?;
    announce(&env, &name, &domains, &forged).await?;
    let line = wait_for_text(&watch.log, &[&forged.version, "pointer does not name"]).await?;
    println!("forged event: {line}");

    // 2. The pointer names a version whose key is another certificate's.
    let mismatched = make(&ca, &domains, time::Duration::hours(1), false)?;
    store(&st, &sealer, &name, &domains, &mismatched, Some(2)).await?;
    announce(&env, &name, &domains, &mismatched).await?;
    let line = wait_for_text(
        &watch.log,
        &[
            &mismatched.version,
            "the private key does not match the certificate",
        ],
    )
    .await?;
    println!("mismatched key: {line}");

    assert_eq!(files_of(&link)?, before, "the previous files must stay");
    for v in [&forged.version, &mismatched.version] {
        assert!(
            !markers.join(v).exists(),
            "the hook ran for refused version {v}"
        );
    }
    let pulled = work.path().join("pulled");
    std::fs::create_dir_all(&pulled)?;
    let report = pull(&env.config()?, &pulled, std::slice::from_ref(&name)).await?;
    match &report.entries()[0].1 {
        PullOutcome::Failed { reason } => assert!(
            reason.contains("the private key does not match the certificate"),
            "{reason}"
        ),
        other => panic!("pull installed a refused version: {other:?}"),
    }
    assert!(!pulled.join(name.as_str()).exists());
    assert_eq!(files_of(&link)?, before);

    // 3. A genuine version still goes through, hook and all.
    let v4 = make(&ca, &domains, time::Duration::minutes(30), true)?;
    store(&st, &sealer, &name, &domains, &v4, Some(3)).await?;
    announce(&env, &name, &domains, &v4).await?;
    wait_for_serial(&certs, &name, &v4.serial).await?;
    wait_for_file(&markers.join(&v4.version)).await?;
    assert!(!markers.join(&mismatched.version).exists());
    watch.stop().await?;
    env.cleanup().await;
    Ok(())
}

/// `certfleet watch` runs with the broker URL (password included), S3
/// credentials and the encryption key in its environment; its hook sees
/// none of them, only PATH, HOME, LANG, its CERTFLEET_CERT_* and
/// CERTFLEET_EVENT, and what `--hook-env` allowed. With the encryption key
/// set, a bundle whose key is stored in the clear is refused.
#[tokio::test]
async fn hook_gets_a_clean_environment() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("agent-hookenv").await?;
    let ca = test_ca()?;
    let key_bytes = *Uuid::new_v4().as_bytes();
    let key: [u8; 32] = [key_bytes, *Uuid::new_v4().as_bytes()]
        .concat()
        .try_into()
        .map_err(|_| anyhow!("key length"))?;
    let key_b64 = base64::engine::general_purpose::STANDARD.encode(key);
    // The S3 server's real credentials (SeaweedFS refuses others).
    let aws_secret = env
        .vars
        .get("AWS_SECRET_ACCESS_KEY")
        .cloned()
        .unwrap_or_default();
    let aws_key_id = env
        .vars
        .get("AWS_ACCESS_KEY_ID")
        .cloned()
        .unwrap_or_default();
    anyhow::ensure!(
        aws_secret.len() >= 8 && aws_key_id.len() >= 8,
        "S3 credentials"
    );
    let amqp_url = env
        .vars
        .get("CERTFLEET_AMQP_URL")
        .cloned()
        .unwrap_or_default();
    anyhow::ensure!(amqp_url.contains(":guest@"), "{amqp_url}");
    let sealed = Sealer::new(Some(Secret::new(key)));
    let st = env.store().await;

    let domains = vec![env.domain("env").await?];
    let name = CertName::from_domain(&domains[0])?;
    let v1 = make(&ca, &domains, time::Duration::hours(1), true)?;
    store(&st, &sealed, &name, &domains, &v1, Some(1)).await?;
    // Another name whose key is stored in the clear.
    let plain_domains = vec![env.domain("plain").await?];
    let plain_name = CertName::from_domain(&plain_domains[0])?;
    let p1 = make(&ca, &plain_domains, time::Duration::hours(1), true)?;
    store(
        &st,
        &Sealer::new(None),
        &plain_name,
        &plain_domains,
        &p1,
        Some(1),
    )
    .await?;

    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    std::fs::create_dir_all(&certs)?;
    let dump = work.path().join("hook-env.txt");
    let hook = format!("env > {}.tmp && mv {0}.tmp {0}", dump.display());
    let watch = spawn_watch(
        &env,
        work.path(),
        &certs,
        "hookenv-web",
        &hook,
        &[
            ("CERTFLEET_ENCRYPTION_KEY", &key_b64),
            ("AWS_SECRET_ACCESS_KEY", &aws_secret),
            ("AWS_ACCESS_KEY_ID", &aws_key_id),
            ("HOME", "/home/web"),
            ("TZ", "Europe/Paris"),
            ("UNLISTED_VAR", "do-not-pass"),
        ],
        &["--hook-env", "TZ"],
    )?;
    wait_for_serial(&certs, &name, &v1.serial).await?;
    wait_for_file(&dump).await?;
    let line = wait_for_text(&watch.log, &[plain_name.as_str(), "stored in the clear"]).await?;
    println!("plaintext key: {line}");
    assert!(!certs.join(plain_name.as_str()).exists());
    let text = std::fs::read_to_string(&dump)?;
    watch.stop().await?;

    let vars: Vec<(&str, &str)> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let get = |n: &str| vars.iter().find(|(k, _)| *k == n).map(|(_, v)| *v);
    assert_eq!(get("CERTFLEET_CERT_NAME"), Some(name.as_str()), "{text}");
    assert_eq!(
        get("CERTFLEET_CERT_SERIAL"),
        Some(certfleet_common::serial_display(&v1.serial).as_str()),
        "{text}"
    );
    assert_eq!(
        get("CERTFLEET_CERT_VERSION"),
        Some(v1.version.as_str()),
        "{text}"
    );
    assert_eq!(get("CERTFLEET_EVENT"), Some("sync"), "{text}");
    assert!(get("CERTFLEET_CERT_DIR").is_some(), "{text}");
    assert!(get("PATH").is_some_and(|p| !p.is_empty()), "{text}");
    assert_eq!(get("HOME"), Some("/home/web"), "{text}");
    assert_eq!(get("TZ"), Some("Europe/Paris"), "{text}");
    for (k, _) in &vars {
        let own = k.starts_with("CERTFLEET_CERT_") || *k == "CERTFLEET_EVENT";
        let refused = k.starts_with("AWS_") || k.starts_with("CERTFLEET_");
        assert!(own || !refused, "{k} reached the hook:\n{text}");
    }
    assert!(get("UNLISTED_VAR").is_none(), "{text}");
    for secret in [
        aws_secret.as_str(),
        aws_key_id.as_str(),
        key_b64.as_str(),
        amqp_url.as_str(),
        ":guest@",
    ] {
        assert!(
            !text.contains(secret),
            "{secret:?} reached the hook:\n{text}"
        );
    }
    env.cleanup().await;
    Ok(())
}
