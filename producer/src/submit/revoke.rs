//! `certfleet revoke NAME [--reason R]`: a revoke job for the name's
//! current certificate. The job names the serial it was asked for, so a
//! certificate renewed in between is not revoked by mistake; the worker
//! revokes it through the fleet's account, records the revocation in the
//! pointer, stops renewing the name and announces `cert.revoked.<name>`.

use std::time::Duration;

use certfleet_common::job::REVOCATION_REASONS;
use certfleet_common::{CertName, Config, Envelope, Job, JobKind, Store};
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::error::SubmitError;
use super::publish::submit_one;
use super::wait::DEFAULT_WAIT_TIMEOUT;
use crate::args::duration;

/// `certfleet revoke`.
#[derive(Debug, Clone, Args)]
pub struct RevokeArgs {
    /// The certificate whose current version is revoked.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// RFC 5280 reason: unspecified, keyCompromise, affiliationChanged,
    /// superseded, cessationOfOperation or privilegeWithdrawn.
    #[arg(long, value_name = "REASON", default_value = "unspecified",
          value_parser = clap::builder::PossibleValuesParser::new(REVOCATION_REASONS))]
    pub reason: String,
    /// Sign the revocation with the certificate's own private key (PEM) and
    /// send it to the CA from here, the proof CAs ask for with
    /// keyCompromise; the key goes nowhere else. The fleet then records it.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<std::path::PathBuf>,
    /// Renew first and revoke the old certificate only once the new one is
    /// stored, so webservers never go without a valid one (the name stays
    /// in the renewal schedule).
    #[arg(long)]
    pub reissue: bool,
    /// Wait until the CA accepted the revocation.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_WAIT_TIMEOUT, value_parser = duration)]
    pub timeout: Duration,
}

/// `certfleet revoke`: prints the job id.
///
/// # Errors
/// An unknown name (usage), storage or broker errors, and with `--wait` a
/// refused revocation or a timeout.
pub(crate) async fn revoke(
    config: &Config,
    args: &RevokeArgs,
    shutdown: CancellationToken,
) -> Result<(), SubmitError> {
    let name = CertName::parse(&args.name).map_err(SubmitError::Name)?;
    let store = Store::from_config(config).await;
    let storage = |source| SubmitError::Storage {
        name: name.clone(),
        source,
    };
    let unknown = || SubmitError::UnknownNames(vec![name.clone()]);
    let (pointer, _) = store
        .pointer(&name)
        .await
        .map_err(storage)?
        .ok_or_else(unknown)?;
    if let Some(file) = &args.key_file {
        let shown = file.display().to_string();
        let key = std::fs::read_to_string(file)
            .map(certfleet_common::Secret::new)
            .map_err(|source| SubmitError::Read {
                file: shown.clone(),
                source,
            })?;
        let (_, bundle) = store
            .current(&name)
            .await
            .map_err(storage)?
            .ok_or_else(unknown)?;
        super::revoke_key::revoke_with_key(
            &config.acme,
            &bundle.cert_pem,
            &key,
            &shown,
            reason_code(&args.reason),
        )
        .await?;
        eprintln!(
            "serial {} revoked at the CA with its own key; recording it in the fleet",
            certfleet_common::serial_display(&pointer.serial)
        );
    }
    let mut reason = format!("{} {}", args.reason, pointer.serial);
    if args.reissue {
        // The new certificate first, waited for: the old one is revoked
        // only once webservers can have its successor.
        let renewal = Envelope::renewal(
            name.clone(),
            pointer.challenge,
            "reissue before revocation",
            certfleet_common::now_ms(),
        );
        eprintln!(
            "renewing {name} before revoking serial {}",
            certfleet_common::serial_display(&pointer.serial)
        );
        submit_one(
            config,
            &renewal,
            "queued (certfleet revoke --reissue)",
            Some(args.timeout),
            shutdown.clone(),
        )
        .await?;
        reason.push_str(" reissued");
    }
    let envelope = Envelope::new(
        JobKind::Revoke,
        Job {
            name: name.clone(),
            domains: pointer.domains.clone(),
            key_type: pointer.key_type,
            challenge: pointer.challenge,
            reason,
            options: Default::default(),
        },
        certfleet_common::now_ms(),
    );
    submit_one(
        config,
        &envelope,
        "queued (certfleet revoke)",
        args.wait.then_some(args.timeout),
        shutdown,
    )
    .await
}

/// The RFC 5280 reason code of a reason name (`unspecified` for any other).
fn reason_code(name: &str) -> u8 {
    match name {
        "keyCompromise" => 1,
        "affiliationChanged" => 3,
        "superseded" => 4,
        "cessationOfOperation" => 5,
        "privilegeWithdrawn" => 9,
        _ => 0,
    }
}
