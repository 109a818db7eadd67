//! `certfleet keys`: identities for server groups, and re-encrypting stored
//! keys for the current recipients.
//!
//! - `keys identity [--out FILE]` makes an age X25519 identity: the secret
//!   line goes to FILE (created 0600, never overwritten) or stdout, the
//!   public recipient (`age1...`, what the recipients file lists) to stderr
//!   (and stdout when the secret went to a file).
//! - `keys reseal [NAME...|--all]` opens every stored version of each name
//!   (the current one and its history) with this machine's identity
//!   (`CERTFLEET_IDENTITY_FILE`: an administrator's identity listed for
//!   every name, or the workers' AES key for bundles of the earlier
//!   scheme), encrypts the key anew to the recipients the file
//!   (`CERTFLEET_RECIPIENTS_FILE`) names for it now, and replaces the
//!   bundle only if it is still the object read (`If-Match`): a bundle is
//!   otherwise immutable, and its certificate, version id and pointer stay
//!   as they are. A version already encrypted to exactly those recipients
//!   is left alone. For the current version a `cert.resealed.<name>` event
//!   follows: a webserver that could not open it installs it now; the
//!   others, holding that version already, change nothing.

use std::path::PathBuf;

use certfleet_common::amqp::{Outgoing, Publisher};
use certfleet_common::event::EVENT_SCHEMA;
use certfleet_common::seal::recipients;
use certfleet_common::storage::{Bundle, Condition, StorageError};
use certfleet_common::{CertName, Config, Event, EventKind, Store, topology};
use clap::Subcommand;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::broker::{close_broker, connect_broker};
use crate::output::out;

/// `certfleet keys ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum KeysCommand {
    /// Make an age identity for a server group: the secret to FILE (or
    /// stdout), the public recipient to list in the recipients file to
    /// stderr (and stdout with --out).
    Identity {
        /// Write the identity here (created with mode 0600; an existing
        /// file is never overwritten).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Encrypt stored keys anew for the recipients the recipients file
    /// names now (after a server group was added or removed, or an
    /// identity rotated).
    Reseal {
        /// Certificate names.
        #[arg(
            value_name = "NAME",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        names: Vec<String>,
        /// Every stored certificate.
        #[arg(long)]
        all: bool,
    },
}

/// Why `keys` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeysError {
    /// Bad arguments or settings (exit 64).
    #[error("{0}")]
    Usage(String),
    /// Writing the identity file.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Storage.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The broker (the resealed events).
    #[error(transparent)]
    Broker(#[from] certfleet_common::amqp::BrokerError),
    /// Some names could not be resealed (each was reported).
    #[error("{failed} of {total} certificates could not be resealed (see above)")]
    Incomplete {
        /// Names that failed.
        failed: usize,
        /// Names asked for.
        total: usize,
    },
}

impl KeysError {
    /// Whether this is bad usage (exit 64).
    pub fn is_usage(&self) -> bool {
        matches!(self, KeysError::Usage(_))
    }
}

/// Runs a `keys` command.
///
/// # Errors
/// See [`KeysError`].
pub(crate) async fn run(config: &Config, cmd: &KeysCommand) -> Result<(), KeysError> {
    match cmd {
        KeysCommand::Identity { out: path } => identity(path.as_deref()),
        KeysCommand::Reseal { names, all } => reseal(config, names, *all).await,
    }
}

fn identity(path: Option<&std::path::Path>) -> Result<(), KeysError> {
    let (secret, public) = recipients::generate();
    let created = OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let text = format!(
        "# created: {created}\n# public key: {public}\n{}\n",
        secret.expose()
    );
    match path {
        None => {
            out(text.trim_end());
            eprintln!("public key: {public}");
        }
        Some(p) => {
            crate::output::write_private(p, &text).map_err(|source| KeysError::Write {
                path: p.to_path_buf(),
                source,
            })?;
            eprintln!("identity written to {}; public key:", p.display());
            out(&public);
        }
    }
    Ok(())
}

/// What happened to one version.
enum Outcome {
    /// Encrypted to the current recipients already.
    Current,
    /// Encrypted anew.
    Resealed,
}

async fn reseal(config: &Config, names: &[String], all: bool) -> Result<(), KeysError> {
    let store = Store::from_config(config).await;
    if !store.sealer().has_recipients() {
        return Err(KeysError::Usage(
            "keys reseal needs CERTFLEET_RECIPIENTS_FILE (who may read which certificate) and an identity that opens the stored keys (CERTFLEET_IDENTITY_FILE)".into(),
        ));
    }
    let names: Vec<CertName> = if all {
        store.names().await?
    } else {
        names
            .iter()
            .map(|n| CertName::parse(n).map_err(|e| KeysError::Usage(format!("name {n:?}: {e}"))))
            .collect::<Result<_, _>>()?
    };
    // Every name's recipients first: a name no line covers is bad input,
    // found before anything is written.
    for n in &names {
        store
            .sealer()
            .recipients_for(n.as_str())
            .map_err(|e| KeysError::Usage(e.to_string()))?;
    }
    let conn = connect_broker(config).await?;
    let result = async {
        let publisher = Publisher::new(&conn).await?;
        let (mut resealed, mut current, mut failed) = (0usize, 0usize, 0usize);
        for name in &names {
            match reseal_name(&store, &publisher, name).await {
                Ok((r, c)) => {
                    resealed += r;
                    current += c;
                }
                Err(e) => {
                    failed += 1;
                    eprintln!("{name}: {}", certfleet_common::error::chain(&e));
                }
            }
        }
        out(format_args!(
            "{} certificates: {resealed} versions resealed, {current} already current, {failed} failed",
            names.len()
        ));
        if failed > 0 {
            return Err(KeysError::Incomplete {
                failed,
                total: names.len(),
            });
        }
        Ok(())
    }
    .await;
    close_broker(&conn).await;
    result
}

/// Reseals every stored version of `name`; returns (resealed, current).
async fn reseal_name(
    store: &Store,
    publisher: &Publisher,
    name: &CertName,
) -> Result<(usize, usize), KeysError> {
    let Some((pointer, _)) = store.pointer(name).await? else {
        return Err(KeysError::Usage(format!("{name}: no certificate stored")));
    };
    let (mut resealed, mut current) = (0, 0);
    let versions = std::iter::once(&pointer.version).chain(pointer.history.iter());
    for version in versions {
        let outcome = match reseal_version(store, name, version).await {
            Ok(o) => o,
            // A history version pruned meanwhile.
            Err(KeysError::Storage(StorageError::NotFound(_))) if *version != pointer.version => {
                continue;
            }
            Err(e) => return Err(e),
        };
        match outcome {
            Outcome::Current => current += 1,
            Outcome::Resealed => {
                resealed += 1;
                if *version == pointer.version {
                    announce(store, publisher, &pointer).await?;
                }
            }
        }
    }
    Ok((resealed, current))
}

async fn reseal_version(
    store: &Store,
    name: &CertName,
    version: &str,
) -> Result<Outcome, KeysError> {
    let key = store.keys().bundle(name, version);
    // A writer between our read and our write (another reseal): read again.
    for _ in 0..3 {
        let Some((mut bundle, etag)) = store.get_json::<Bundle>(&key, "bundle").await? else {
            return Err(StorageError::NotFound(key).into());
        };
        let want = store
            .sealer()
            .recipients_for(name.as_str())
            .map_err(StorageError::from)?
            .unwrap_or_default();
        // The operator holds the key (`issue --csr`): nothing to reseal.
        let Some(sealed) = &bundle.key else {
            return Ok(Outcome::Current);
        };
        if sealed.age_recipients() == want.as_slice() {
            return Ok(Outcome::Current);
        }
        // For the version, or for the name (the operator's key,
        // `--key-file`): sealed again for the same place.
        let context = bundle.key_context();
        // Plain keys too: resealing is how they get encrypted.
        let pem = store
            .sealer()
            .open(sealed, &context)
            .map_err(StorageError::from)?;
        bundle.key = Some(
            store
                .sealer()
                .seal_bundle(name.as_str(), pem.expose(), &context)
                .map_err(StorageError::from)?,
        );
        match store
            .put_json(&key, &bundle, Condition::Matches(&etag))
            .await
        {
            Ok(_) => return Ok(Outcome::Resealed),
            Err(StorageError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StorageError::Conflict(key).into())
}

/// `cert.resealed.<name>` for the current version.
async fn announce(
    store: &Store,
    publisher: &Publisher,
    pointer: &certfleet_common::Pointer,
) -> Result<(), KeysError> {
    let event = Event {
        schema: EVENT_SCHEMA.into(),
        kind: EventKind::Resealed,
        name: pointer.name.clone(),
        domains: pointer.domains.clone(),
        job_id: Uuid::now_v7(),
        attempt: 1,
        at: OffsetDateTime::now_utc(),
        certificate: Some(store.cert_info(pointer, None)),
        error: None,
    };
    let body = event
        .to_json()
        .map_err(|e| KeysError::Usage(format!("encoding the event for {}: {e}", pointer.name)))?;
    let job_id = event.job_id.to_string();
    publisher
        .publish(Outgoing::json(
            topology::EVENTS_EXCHANGE,
            &event.routing_key(),
            &body,
            Some(&job_id),
        ))
        .await?;
    Ok(())
}
