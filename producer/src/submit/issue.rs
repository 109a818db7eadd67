//! `certfleet issue`: one certificate from the command line, its job id on
//! stdout once the broker confirmed it.

use std::path::PathBuf;
use std::time::Duration;

use certfleet_common::{ChallengeType, Config, Envelope, JobKind, KeyType};
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::error::SubmitError;
use super::own_key;
use super::publish::{REASON_CLI, submit_one};
use super::request::Request;
use super::wait::DEFAULT_WAIT_TIMEOUT;
use crate::args::duration;

/// `certfleet issue`.
#[derive(Debug, Clone, Args)]
pub struct IssueArgs {
    /// Domain names; the first one is the certificate's subject and default
    /// name. With --csr, the CSR's names (given here, they must be the same).
    #[arg(required_unless_present = "csr", value_name = "DOMAIN")]
    pub domains: Vec<String>,
    /// Certificate name (default: the first domain, `*.` written `_wildcard.`).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Key type: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072 or rsa-4096.
    #[arg(long, value_name = "TYPE", default_value = "ecdsa-p256")]
    pub key_type: KeyType,
    /// Challenge type: http-01, dns-01 or tls-alpn-01 (wildcards: dns-01).
    #[arg(long, value_name = "TYPE", default_value = "http-01")]
    pub challenge: ChallengeType,
    /// The issuer to ask first (a name of the workers'
    /// CERTFLEET_ACME_ISSUERS); the others remain fallbacks. Renewals keep it.
    #[arg(long, value_name = "NAME")]
    pub ca: Option<String>,
    /// ACME profile to order (e.g. `shortlived`, `tlsserver`: the CA's
    /// directory lists its profiles); renewals keep it.
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Order with your own CSR (PEM or DER): its names and key are the
    /// certificate's, no private key is made or stored, and `watch` writes
    /// no privkey.pem (the key stays with you). Renewals send it again.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["key_file", "key_type"])]
    pub csr: Option<PathBuf>,
    /// Order with an existing private key (PEM: PKCS#8, SEC 1 or PKCS#1;
    /// ECDSA P-256/P-384 or RSA 2048/3072/4096) instead of a new one. It is
    /// stored encrypted as the fleet's keys are (CERTFLEET_RECIPIENTS_FILE,
    /// or CERTFLEET_ENCRYPTION_KEY), and renewals keep it.
    #[arg(long, value_name = "FILE", conflicts_with = "key_type")]
    pub key_file: Option<PathBuf>,
    /// Wait until the certificate is stored (exit 0) or the job failed (exit 1).
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_WAIT_TIMEOUT, value_parser = duration)]
    pub timeout: Duration,
}

/// `certfleet issue`.
///
/// # Errors
/// Usage errors (before any connection), broker errors, and with `--wait`
/// a failed job, a timeout or an interruption.
pub(crate) async fn issue(
    config: &Config,
    args: &IssueArgs,
    shutdown: CancellationToken,
) -> Result<(), SubmitError> {
    let csr = args.csr.as_deref().map(own_key::read_csr).transpose()?;
    let domains = match &csr {
        Some(csr) if args.domains.is_empty() => csr.domains.clone(),
        _ => args.domains.clone(),
    };
    let mut request = Request::new(
        &domains,
        args.name.as_deref(),
        args.key_type,
        args.challenge,
    )?;
    if let (Some(csr), Some(path)) = (&csr, &args.csr) {
        request = request
            .with_csr(csr, None)
            .map_err(|e| SubmitError::Usage(format!("--csr {}: {e}", path.display())))?;
    }
    if let Some(path) = &args.key_file {
        let (csr, sealed) =
            own_key::from_key_file(path, &request.domains, &request.name, &config.storage)?;
        request = request
            .with_csr(&csr, Some(&sealed))
            .map_err(|e| SubmitError::Usage(format!("--key-file {}: {e}", path.display())))?;
    }
    let request = request
        .with_profile(args.profile.as_deref())
        .map_err(|e| SubmitError::Usage(format!("--profile: {e}")))?
        .with_ca(args.ca.as_deref())
        .map_err(|e| SubmitError::Usage(format!("--ca: {e}")))?;
    let envelope = Envelope::new(
        JobKind::Issue,
        request.job(REASON_CLI),
        certfleet_common::now_ms(),
    );
    submit_one(
        config,
        &envelope,
        "queued (certfleet issue)",
        args.wait.then_some(args.timeout),
        shutdown,
    )
    .await
}
