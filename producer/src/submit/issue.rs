//! `certfleet issue`: one certificate from the command line, its job id on
//! stdout once the broker confirmed it.

use std::time::Duration;

use certfleet_common::{ChallengeType, Config, Envelope, JobKind, KeyType};
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::error::SubmitError;
use super::publish::{REASON_CLI, submit_one};
use super::request::Request;
use super::wait::DEFAULT_WAIT_TIMEOUT;
use crate::args::duration;

/// `certfleet issue`.
#[derive(Debug, Clone, Args)]
pub struct IssueArgs {
    /// Domain names; the first one is the certificate's subject and default name.
    #[arg(required = true, value_name = "DOMAIN")]
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
    let request = Request::new(
        &args.domains,
        args.name.as_deref(),
        args.key_type,
        args.challenge,
    )?
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
