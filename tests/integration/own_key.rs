//! Issue 17, item 3: certificates for the operator's own CSR or key.

use std::path::Path;

use certfleet_common::csr::Csr;
use certfleet_common::storage::KeyScope;
use certfleet_common::{CertName, Pointer, Store};
use certfleet_tests::{TestEnv, init_logging, run_ok};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

/// The SubjectPublicKeyInfo of a PEM certificate.
fn cert_spki(cert_pem: &str) -> anyhow::Result<Vec<u8>> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())?;
    Ok(cert.public_key().raw.to_vec())
}

/// Runs openssl with `args`; its stdout.
async fn openssl(args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let out = tokio::process::Command::new("openssl")
        .args(args)
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

async fn current(
    store: &Store,
    name: &CertName,
) -> anyhow::Result<(Pointer, certfleet_common::Bundle)> {
    store
        .current(name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no certificate for {name}"))
}

/// Runs `cmd`, which must be refused as bad usage (exit 64) with a message
/// holding every one of `needles`.
async fn refused(cmd: &mut tokio::process::Command, needles: &[&str]) -> anyhow::Result<()> {
    let out = cmd.output().await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(
        out.status.code() == Some(64),
        "exit {:?}: {stderr}",
        out.status.code()
    );
    for n in needles {
        anyhow::ensure!(stderr.contains(n), "{n:?} not in: {stderr}");
    }
    Ok(())
}

/// `certfleet pull` into a new directory; the name's directory.
async fn pull(env: &TestEnv, name: &CertName, dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    run_ok(
        env.command("certfleet")?
            .args(["pull", "--dir"])
            .arg(dir)
            .arg(name.as_str()),
    )
    .await?;
    Ok(dir.join(name.as_str()))
}

/// `issue --csr FILE`: the CSR's names and key are the certificate's; the
/// bundle holds no key and `pull` writes no privkey.pem; a renewal sends
/// the same CSR (same public key, new serial). A CSR whose names differ
/// from the DOMAIN arguments, or a file that is no CSR, is refused naming
/// the file (exit 64).
#[tokio::test]
async fn issue_with_the_operators_csr_stores_no_key_and_renews_with_it() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("own-csr").await?;
    let worker = env.start_worker(&[]).await?;
    let dir = tempfile::tempdir()?;
    let a = env.domain("csr-a").await?;
    let b = env.domain("csr-b").await?;
    let key = dir.path().join("operator.key");
    std::fs::write(
        &key,
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
        ])
        .await?,
    )?;
    let csr_file = dir.path().join("request.csr");
    openssl(&[
        "req",
        "-new",
        "-key",
        &key.display().to_string(),
        "-subj",
        &format!("/CN={a}"),
        "-addext",
        &format!("subjectAltName=DNS:{a},DNS:{b}"),
        "-out",
        &csr_file.display().to_string(),
    ])
    .await?;
    let csr = Csr::from_pem_or_der(&std::fs::read(&csr_file)?).map_err(anyhow::Error::msg)?;

    // Refusals first: nothing is queued.
    refused(
        env.command("certfleet")?
            .args(["issue", "other.example.com", "--csr"])
            .arg(&csr_file),
        &["request.csr", "the CSR names"],
    )
    .await?;
    refused(
        env.command("certfleet")?.args(["issue", "--csr"]).arg(&key),
        &["operator.key", "not a CERTIFICATE REQUEST"],
    )
    .await?;

    run_ok(
        env.command("certfleet")?
            .args(["issue", "--wait", "--timeout", "90s", "--csr"])
            .arg(&csr_file),
    )
    .await?;
    let name = CertName::from_domain(&a)?;
    let store = env.store().await;
    let (pointer, bundle) = current(&store, &name).await?;
    assert_eq!(pointer.domains, [a.clone(), b.clone()]);
    assert_eq!(pointer.key_type, certfleet_common::KeyType::EcdsaP384);
    assert_eq!(pointer.csr.as_deref(), Some(csr.encode().as_str()));
    assert!(bundle.key.is_none(), "the bundle holds no key");
    assert_eq!(cert_spki(&bundle.cert_pem)?, csr.spki, "the CSR's key");
    let pulled = pull(&env, &name, &dir.path().join("certs")).await?;
    assert!(pulled.join("fullchain.pem").is_file());
    assert!(!pulled.join("privkey.pem").exists(), "no key written");

    env.certfleet(&["renew", name.as_str(), "--wait", "--timeout", "90s"])
        .await?;
    let (renewed, bundle) = current(&store, &name).await?;
    assert_ne!(renewed.serial, pointer.serial, "a new certificate");
    assert_eq!(cert_spki(&bundle.cert_pem)?, csr.spki, "the same key");
    assert_eq!(renewed.csr, pointer.csr, "the CSR kept");
    assert!(bundle.key.is_none());
    // The agent installs the renewal too, still without a key file.
    let pulled = pull(&env, &name, &dir.path().join("certs")).await?;
    let on_disk = std::fs::read_to_string(pulled.join("cert.pem"))?;
    assert_eq!(cert_spki(&on_disk)?, csr.spki);
    assert_eq!(on_disk.trim(), bundle.cert_pem.trim());
    assert!(!pulled.join("privkey.pem").exists());
    println!(
        "--csr: {} and {} issued with the operator's P-384 key, serial {} then {} on renewal; no key stored or written",
        a, b, pointer.serial, renewed.serial
    );
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}

/// `issue --key-file FILE`: the operator's key (SEC 1 PEM, as `openssl
/// ecparam` writes it) is the certificate's, stored sealed for the name
/// (it opens for every version with the webserver's identity and equals
/// the file), written by `pull` as privkey.pem (0600), and kept by the
/// renewal. Without encryption configured the CLI refuses the file.
#[tokio::test]
async fn issue_with_the_operators_key_file_seals_it_and_keeps_it() -> anyhow::Result<()> {
    init_logging();
    let env = TestEnv::new("own-key").await?;
    let worker = env.start_worker(&[]).await?;
    let dir = tempfile::tempdir()?;
    let a = env.domain("keyfile").await?;
    let key_file = dir.path().join("existing.key");
    let key_pem = String::from_utf8(
        openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout"]).await?,
    )?;
    assert!(key_pem.contains("BEGIN EC PRIVATE KEY"), "{key_pem}");
    std::fs::write(&key_file, &key_pem)?;
    let public = openssl(&[
        "pkey",
        "-in",
        &key_file.display().to_string(),
        "-pubout",
        "-outform",
        "DER",
    ])
    .await?;

    run_ok(
        env.command("certfleet")?
            .args(["issue", &a, "--wait", "--timeout", "90s", "--key-file"])
            .arg(&key_file),
    )
    .await?;
    let name = CertName::from_domain(&a)?;
    let store = env.store().await;
    let (pointer, bundle) = current(&store, &name).await?;
    assert!(pointer.csr.is_some());
    assert_eq!(bundle.key_scope, KeyScope::Name);
    assert!(
        !bundle
            .key
            .as_ref()
            .map(|k| k.age_recipients().is_empty())
            .unwrap_or(true),
        "encrypted to the recipients"
    );
    assert_eq!(cert_spki(&bundle.cert_pem)?, public, "the file's key");
    let opened = store
        .open_key(&bundle)?
        .ok_or_else(|| anyhow::anyhow!("no key"))?;
    assert_eq!(opened.expose(), &key_pem);
    let pulled = pull(&env, &name, &dir.path().join("certs")).await?;
    assert_eq!(
        std::fs::read_to_string(pulled.join("privkey.pem"))?,
        key_pem
    );
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(pulled.join("privkey.pem"))?
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    env.certfleet(&["renew", name.as_str(), "--wait", "--timeout", "90s"])
        .await?;
    let (renewed, bundle) = current(&store, &name).await?;
    assert_ne!(renewed.serial, pointer.serial);
    assert_eq!(cert_spki(&bundle.cert_pem)?, public, "the same key renewed");
    let opened = store
        .open_key(&bundle)?
        .ok_or_else(|| anyhow::anyhow!("no key"))?;
    assert_eq!(opened.expose(), &key_pem, "the same key in the new version");
    let pulled = pull(&env, &name, &dir.path().join("certs")).await?;
    assert_eq!(
        std::fs::read_to_string(pulled.join("privkey.pem"))?,
        key_pem
    );
    assert_eq!(
        std::fs::read_to_string(pulled.join("cert.pem"))?.trim(),
        bundle.cert_pem.trim()
    );

    // Without any encryption configured the CLI refuses, naming the file.
    refused(
        env.command("certfleet")?
            .env_remove("CERTFLEET_RECIPIENTS_FILE")
            .env_remove("CERTFLEET_ENCRYPTION_KEY")
            .args(["issue", &a, "--key-file"])
            .arg(&key_file),
        &["existing.key", "in the clear"],
    )
    .await?;
    println!(
        "--key-file: {a} issued with the operator's SEC 1 P-256 key (serial {}), renewed with it (serial {}); sealed to {} recipient(s) for the name, pulled as privkey.pem 0600",
        pointer.serial,
        renewed.serial,
        bundle.key.as_ref().map_or(0, |k| k.age_recipients().len())
    );
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}
