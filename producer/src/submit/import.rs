//! `certfleet import --from lego|certbot DIR`: certificates obtained by the
//! tools people use today, brought into the fleet.
//!
//! Each certificate found is checked here first (it parses, its key is its
//! key, it has not expired, it is newer than what storage holds), then
//! staged in storage with its key sealed as configured
//! ([`Store::stage_import`]) and handed to the workers as an `import` job:
//! a worker takes the name's lease and stores it through the same fenced
//! path as a certificate it issued, indexes it for renewal and announces
//! it (`issued`), so `watch` installs it. What was skipped is reported with
//! the reason. Running it twice imports nothing new: a certificate whose
//! serial is already current (or older than the current one) is skipped.
//!
//! Layouts read:
//! - lego (`--path`, default `.lego`): `DIR/certificates/<domain>.crt`
//!   (leaf, then issuer, as lego writes it) and `<domain>.key`; the
//!   `.issuer.crt` and `.json` files beside them are not needed.
//! - certbot (`/etc/letsencrypt`): `DIR/live/<lineage>/cert.pem`,
//!   `chain.pem` and `privkey.pem` (links into `archive/`).
//!
//! Either may also be given the `certificates/` or `live/` directory
//! itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use certfleet_common::domain::{self, CertName};
use certfleet_common::secret::Secret;
use certfleet_common::storage::{BUNDLE_SCHEMA, Bundle, split_certificates, version_id};
use certfleet_common::submit::{Dedup, Outcome, Submission};
use certfleet_common::{ChallengeType, Config, Envelope, Job, JobKind, KeyType, Store};
use clap::{Args, ValueEnum};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use x509_parser::prelude::{GeneralName, ParsedExtension, X509Certificate};
use x509_parser::public_key::PublicKey;

use super::error::SubmitError;
use super::publish::{open_submitter, state_or_warn};
use super::wait::{DEFAULT_WAIT_TIMEOUT, EventWaiter};
use crate::args::duration;
use crate::broker::close_broker;
use crate::output::out;

/// The `reason` of import jobs.
const REASON_IMPORT: &str = "import";

/// Where the certificates come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImportSource {
    /// A lego `--path` directory (`.lego`).
    Lego,
    /// A certbot configuration directory (`/etc/letsencrypt`).
    Certbot,
}

/// `certfleet import`.
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// The tool whose directory DIR is: lego or certbot.
    #[arg(long, value_name = "TOOL")]
    pub from: ImportSource,
    /// lego's --path (e.g. ./.lego) or certbot's config dir (/etc/letsencrypt).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// How the imported certificates are renewed: http-01, dns-01 or
    /// tls-alpn-01 (wildcards need dns-01).
    #[arg(long, value_name = "TYPE", default_value = "http-01")]
    pub challenge: ChallengeType,
    /// Only report what would be imported and skipped.
    #[arg(long)]
    pub dry_run: bool,
    /// Wait until every imported certificate is stored.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_WAIT_TIMEOUT, value_parser = duration)]
    pub timeout: Duration,
}

/// One certificate found on disk, read but not yet checked.
struct Found {
    /// Where it was found (for the report).
    path: PathBuf,
    /// The certificate file's PEM: the leaf first.
    cert_pem: String,
    /// The issuer chain (may be empty when the leaf file carries it).
    chain_pem: String,
    key_pem: Secret<String>,
}

/// A certificate ready to import.
struct Checked {
    path: PathBuf,
    name: CertName,
    domains: Vec<String>,
    key_type: KeyType,
    serial: String,
    version: String,
    not_after: OffsetDateTime,
    leaf_pem: String,
    chain_pem: String,
    key_pem: Secret<String>,
}

/// Something left out, and why.
type Skip = (PathBuf, String);

/// Reads every certificate of `dir`; what cannot be read is a skip with
/// its reason.
fn scan(from: ImportSource, dir: &Path) -> Result<(Vec<Found>, Vec<Skip>), SubmitError> {
    let usage = |what: String| SubmitError::Usage(format!("{}: {what}", dir.display()));
    if !dir.is_dir() {
        return Err(usage("is not a directory".into()));
    }
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    match from {
        ImportSource::Lego => {
            let certs = if dir.join("certificates").is_dir() {
                dir.join("certificates")
            } else {
                dir.to_path_buf()
            };
            let entries = std::fs::read_dir(&certs).map_err(|e| usage(e.to_string()))?;
            let mut files: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.ends_with(".crt") && !n.ends_with(".issuer.crt"))
                })
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(usage(format!(
                    "no lego certificates (<domain>.crt) in {}",
                    certs.display()
                )));
            }
            for crt in files {
                let key = crt.with_extension("key");
                match (read(&crt), read(&key)) {
                    (Ok(cert_pem), Ok(key_pem)) => found.push(Found {
                        path: crt,
                        cert_pem,
                        chain_pem: String::new(),
                        key_pem: Secret::new(key_pem),
                    }),
                    (Err(e), _) | (_, Err(e)) => skipped.push((crt, format!("unreadable: {e}"))),
                }
            }
        }
        ImportSource::Certbot => {
            let live = if dir.join("live").is_dir() {
                dir.join("live")
            } else {
                dir.to_path_buf()
            };
            let entries = std::fs::read_dir(&live).map_err(|e| usage(e.to_string()))?;
            let mut lineages: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect();
            lineages.sort();
            if lineages.is_empty() {
                return Err(usage(format!(
                    "no certbot lineages (live/<name>/) in {}",
                    live.display()
                )));
            }
            for l in lineages {
                let files = (
                    read(&l.join("cert.pem")),
                    read(&l.join("chain.pem")),
                    read(&l.join("privkey.pem")),
                );
                match files {
                    (Ok(cert_pem), Ok(chain_pem), Ok(key_pem)) => found.push(Found {
                        path: l,
                        cert_pem,
                        chain_pem,
                        key_pem: Secret::new(key_pem),
                    }),
                    (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                        skipped.push((l, format!("unreadable: {e}")));
                    }
                }
            }
        }
    }
    Ok((found, skipped))
}

/// The DNS names of a certificate: its SANs, else its CN.
fn names_of(leaf: &X509Certificate<'_>) -> Vec<String> {
    let mut names = Vec::new();
    for ext in leaf.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for n in &san.general_names {
                if let GeneralName::DNSName(d) = n {
                    names.push((*d).to_string());
                }
            }
        }
    }
    if names.is_empty()
        && let Some(cn) = leaf
            .subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
    {
        names.push(cn.to_string());
    }
    names
}

/// The key type of a certificate's public key, if certfleet renews with it.
fn key_type_of(leaf: &X509Certificate<'_>) -> Result<KeyType, String> {
    match leaf.public_key().parsed() {
        Ok(PublicKey::EC(ec)) => match ec.key_size() {
            256 => Ok(KeyType::EcdsaP256),
            384 => Ok(KeyType::EcdsaP384),
            bits => Err(format!(
                "an EC key of {bits} bits (certfleet renews P-256 and P-384)"
            )),
        },
        Ok(PublicKey::RSA(rsa)) => match rsa.key_size() {
            2048 => Ok(KeyType::Rsa2048),
            3072 => Ok(KeyType::Rsa3072),
            4096 => Ok(KeyType::Rsa4096),
            bits => Err(format!(
                "an RSA key of {bits} bits (certfleet renews 2048, 3072 and 4096)"
            )),
        },
        Ok(_) => Err("a key type certfleet does not renew".into()),
        Err(e) => Err(format!("its public key does not parse: {e}")),
    }
}

/// Checks one certificate: parses, not expired, key matches, names valid
/// for `challenge`.
fn check(f: Found, challenge: ChallengeType, now: OffsetDateTime) -> Result<Checked, Skip> {
    let path = f.path.clone();
    let fail = |why: String| (path.clone(), why);
    let mut blocks = split_certificates(&f.cert_pem);
    if blocks.is_empty() {
        return Err(fail("unreadable: no certificate in the file".into()));
    }
    let leaf_pem = blocks.remove(0);
    let chain_pem = if f.chain_pem.trim().is_empty() {
        blocks.concat()
    } else {
        split_certificates(&f.chain_pem).concat()
    };
    let (_, pem) = x509_parser::pem::parse_x509_pem(leaf_pem.as_bytes())
        .map_err(|e| fail(format!("unreadable: {e}")))?;
    let leaf = pem
        .parse_x509()
        .map_err(|e| fail(format!("unreadable: {e}")))?;
    let not_before = leaf.validity().not_before.to_datetime();
    let not_after = leaf.validity().not_after.to_datetime();
    if not_after <= now {
        return Err(fail(format!("expired (not after {not_after})")));
    }
    crate::agent::check_key(&leaf, &f.key_pem).map_err(|e| fail(format!("key mismatch: {e}")))?;
    let key_type = key_type_of(&leaf).map_err(fail)?;
    let mut domains = Vec::new();
    for n in names_of(&leaf) {
        let d = domain::normalize_domain(&n).map_err(|e| fail(format!("name {n:?}: {e}")))?;
        if domain::is_wildcard(&d) && challenge != ChallengeType::Dns01 {
            return Err(fail(format!(
                "{d} is a wildcard: renewing it needs --challenge dns-01"
            )));
        }
        if !domains.contains(&d) {
            domains.push(d);
        }
    }
    let first = domains
        .first()
        .ok_or_else(|| fail("the certificate names no domain".into()))?;
    let name = CertName::from_domain(first).map_err(|e| fail(e.to_string()))?;
    let serial = certfleet_common::serial_stored(leaf.raw_serial());
    Ok(Checked {
        path: f.path,
        name,
        version: version_id(not_before, &serial),
        domains,
        key_type,
        serial,
        not_after,
        leaf_pem,
        chain_pem,
        key_pem: f.key_pem,
    })
}

/// Why storage makes an import pointless, if it does.
async fn superseded(store: &Store, c: &Checked) -> Result<Option<String>, SubmitError> {
    let current = store
        .pointer(&c.name)
        .await
        .map_err(|source| SubmitError::Storage {
            name: c.name.clone(),
            source,
        })?;
    Ok(match current {
        Some((p, _)) if p.serial == c.serial => Some(format!(
            "already imported: serial {} is current for {}",
            certfleet_common::serial_display(&p.serial),
            c.name
        )),
        Some((p, _)) if p.not_after >= c.not_after => Some(format!(
            "storage holds a certificate for {} valid as long or longer (serial {})",
            c.name,
            certfleet_common::serial_display(&p.serial)
        )),
        _ => None,
    })
}

/// `certfleet import --from lego|certbot DIR`.
///
/// # Errors
/// DIR unusable (usage), storage or broker errors, jobs not accepted, and
/// with `--wait` failed jobs or a timeout. Skipped certificates are not
/// errors: they are reported with their reason.
pub(crate) async fn import(
    config: &Config,
    args: &ImportArgs,
    shutdown: CancellationToken,
) -> Result<(), SubmitError> {
    // Import stores keys as a worker does: not in the clear unless told.
    if let Some(warning) = config
        .storage
        .check_for_worker()
        .map_err(|e| SubmitError::Usage(e.to_string()))?
    {
        tracing::warn!("{warning}");
    }
    let (found, mut skipped) = scan(args.from, &args.dir)?;
    let now = OffsetDateTime::now_utc();
    let store = Store::from_config(config).await;
    let mut ready: Vec<Checked> = Vec::new();
    for f in found {
        match check(f, args.challenge, now) {
            Ok(c) => match superseded(&store, &c).await? {
                Some(why) => skipped.push((c.path, why)),
                None if ready.iter().any(|r| r.name == c.name) => {
                    skipped.push((
                        c.path,
                        format!("another certificate of {} is imported", c.name),
                    ));
                }
                None => ready.push(c),
            },
            Err(skip) => skipped.push(skip),
        }
    }
    for (path, why) in &skipped {
        eprintln!("skipped {}: {why}", path.display());
    }
    if args.dry_run || ready.is_empty() {
        for c in &ready {
            out(format_args!(
                "would import {} from {}",
                c.name,
                c.path.display()
            ));
        }
        out(format_args!(
            "{} to import, {} skipped{}",
            ready.len(),
            skipped.len(),
            if args.dry_run { " (dry run)" } else { "" }
        ));
        return Ok(());
    }
    let envelopes: Vec<Envelope> = ready
        .iter()
        .map(|c| {
            Envelope::new(
                JobKind::Import,
                Job {
                    name: c.name.clone(),
                    domains: c.domains.clone(),
                    key_type: c.key_type,
                    challenge: args.challenge,
                    reason: REASON_IMPORT.into(),
                    options: Default::default(),
                },
                certfleet_common::now_ms(),
            )
        })
        .collect();
    // Staged first: a job never comes before its bundle.
    for (c, e) in ready.iter().zip(&envelopes) {
        let key = store
            .sealer()
            .seal_bundle(
                c.name.as_str(),
                c.key_pem.expose(),
                &Bundle::seal_context(&c.name, &c.version),
            )
            .map_err(|e| SubmitError::Usage(format!("sealing the key of {}: {e}", c.name)))?;
        let bundle = Bundle {
            schema: BUNDLE_SCHEMA.into(),
            name: c.name.clone(),
            version: c.version.clone(),
            cert_pem: c.leaf_pem.clone(),
            chain_pem: c.chain_pem.clone(),
            key: Some(key),
            key_scope: Default::default(),
            job_id: Some(e.job_id),
            issuer: None,
            revoked: None,
        };
        store
            .stage_import(&e.job_id, &bundle)
            .await
            .map_err(|source| SubmitError::Storage {
                name: c.name.clone(),
                source,
            })?;
    }
    let (conn, submitter) = open_submitter(config, state_or_warn(config)).await?;
    let result = async {
        let names: Vec<&CertName> = ready.iter().map(|c| &c.name).collect();
        let waiter = if args.wait {
            Some(EventWaiter::open(&conn, &names).await?)
        } else {
            None
        };
        let subs: Vec<Submission<'_>> = envelopes.iter().map(Submission::new).collect();
        let outcomes = submitter
            .submit(&subs, Dedup::Off, "queued (certfleet import)")
            .await?;
        let mut jobs: HashMap<Uuid, CertName> = HashMap::new();
        let mut failed = 0;
        for ((c, e), outcome) in ready.iter().zip(&envelopes).zip(outcomes) {
            match outcome {
                Outcome::Queued => {
                    out(format_args!(
                        "importing {} from {} (job {})",
                        c.name,
                        c.path.display(),
                        e.job_id
                    ));
                    jobs.insert(e.job_id, c.name.clone());
                }
                Outcome::NotAccepted(err) => {
                    failed += 1;
                    eprintln!(
                        "{}: not accepted: {}",
                        c.name,
                        certfleet_common::error::chain(&err)
                    );
                }
                Outcome::AlreadyQueued { .. } => {}
            }
        }
        out(format_args!(
            "{} importing, {} skipped",
            jobs.len(),
            skipped.len()
        ));
        let wait_result = match waiter {
            Some(w) if !jobs.is_empty() => w.wait(jobs, args.timeout, shutdown).await,
            _ => Ok(()),
        };
        if failed > 0 {
            return Err(SubmitError::Incomplete {
                failed,
                total: envelopes.len(),
                what: "import jobs were not accepted by the broker",
            });
        }
        wait_result
    }
    .await;
    close_broker(&conn).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_blocks_split() {
        let one = "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n";
        let two = format!("{one}\n{one}");
        assert_eq!(split_certificates(one).len(), 1);
        assert_eq!(split_certificates(&two).len(), 2);
        assert!(split_certificates("nothing").is_empty());
    }

    #[test]
    fn a_directory_without_certificates_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        for from in [ImportSource::Lego, ImportSource::Certbot] {
            let err = scan(from, dir.path()).map(|_| ()).expect_err("empty");
            assert!(err.is_usage(), "{err}");
        }
        let err = scan(ImportSource::Lego, &dir.path().join("missing"))
            .map(|_| ())
            .expect_err("missing");
        assert!(err.to_string().contains("is not a directory"), "{err}");
        Ok(())
    }

    #[test]
    fn expired_mismatched_and_good_certificates() -> Result<(), Box<dyn std::error::Error>> {
        let now = OffsetDateTime::now_utc();
        let make = |days_left: i64| -> Result<(String, String), rcgen::Error> {
            let mut p = rcgen::CertificateParams::new(vec![
                "a.example.com".to_string(),
                "b.example.com".to_string(),
            ])?;
            p.not_before = now - time::Duration::days(30);
            p.not_after = now + time::Duration::days(days_left);
            let key = rcgen::KeyPair::generate()?;
            Ok((p.self_signed(&key)?.pem(), key.serialize_pem()))
        };
        let found = |(cert, key): (String, String)| Found {
            path: PathBuf::from("x.crt"),
            cert_pem: cert,
            chain_pem: String::new(),
            key_pem: Secret::new(key),
        };
        let good = check(found(make(60)?), ChallengeType::Http01, now).map_err(|e| e.1)?;
        assert_eq!(good.name.as_str(), "a.example.com");
        assert_eq!(good.domains, ["a.example.com", "b.example.com"]);
        assert_eq!(good.key_type, KeyType::EcdsaP256);
        let expired = check(found(make(-1)?), ChallengeType::Http01, now)
            .map(|_| ())
            .expect_err("expired");
        assert!(expired.1.starts_with("expired"), "{}", expired.1);
        let (cert, _) = make(60)?;
        let (_, other_key) = make(60)?;
        let mismatch = check(found((cert, other_key)), ChallengeType::Http01, now)
            .map(|_| ())
            .expect_err("mismatch");
        assert!(mismatch.1.starts_with("key mismatch"), "{}", mismatch.1);
        Ok(())
    }
}
