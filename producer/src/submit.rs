//! Submitting jobs: `certfleet issue`, `submit` (bulk) and `renew`, and
//! `--wait` for their outcome.
//!
//! Every request is validated completely before the first connection is
//! opened (bad input is exit 64 and nothing is published). A job counts as
//! accepted only once the broker confirmed it; only then is its id printed
//! on stdout (scripts capture it) and its `queued` status record written
//! (best effort: Redis being down does not un-accept a job).
//!
//! - `request`: validating a request ([`Request`]) and parsing bulk files
//!   ([`parse_file`]).
//! - `renew`: `renew NAME...` with dedup, and `renew --due`.
//! - `wait`: `--wait` subscribes to the certificate events *before*
//!   publishing (a server-named, exclusive, auto-delete queue bound to
//!   `cert.*.NAME`), so an event that follows the job quickly cannot be
//!   missed, then waits for the events whose `job_id` is one of ours.

mod renew;
mod request;
mod wait;

use std::collections::HashMap;
use std::path::Path;

use certfleet_common::amqp::{BrokerError, Outgoing, Publisher};
use certfleet_common::domain::DomainError;
use certfleet_common::error::chain;
use certfleet_common::job::CodecError;
use certfleet_common::schedule::ScheduleError;
use certfleet_common::state::{JobState, JobStatus, State, StateError};
use certfleet_common::storage::StorageError;
use certfleet_common::{CertName, Config, Envelope, JobKind, topology};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use renew::renew;
pub use request::{LineError, Request, RequestError, parse_file, parse_line};

use crate::cli::{IssueArgs, SubmitArgs, close_broker, connect_broker, out};
use request::format_line_errors;
use wait::EventWaiter;

/// Whether a DNS provider exists for dns-01 (none yet): until then dns-01
/// requests are refused up front instead of failing at the worker.
pub const DNS01_SUPPORTED: bool = false;

/// `reason` of jobs from `issue` and `renew NAME`.
pub const REASON_CLI: &str = "cli";
/// `reason` of jobs from `submit`.
pub const REASON_BULK: &str = "bulk";

/// Status records written at once after a bulk publish.
const STATUS_CONCURRENCY: usize = 16;

/// Why `issue`, `submit` or `renew` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// A bad request on the command line.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// A bad certificate name on the command line.
    #[error(transparent)]
    Name(DomainError),
    /// Bad lines in a bulk file (all of them are listed).
    #[error("{}", format_line_errors(.0))]
    Lines(Vec<LineError>),
    /// A bulk file with no certificate in it.
    #[error(
        "{0}: no certificate lines (one per line: DOMAIN [DOMAIN...] [name=NAME] [key=TYPE] [challenge=TYPE])"
    )]
    EmptyFile(String),
    /// The bulk file cannot be read.
    #[error("cannot read {file}")]
    Read {
        /// The file.
        file: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// `renew` of names that have no certificate.
    #[error("no certificate named {} (use certfleet issue)", join(.0))]
    UnknownNames(Vec<CertName>),
    /// Another bad argument.
    #[error("{0}")]
    Usage(String),
    /// The broker.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// Declaring the job topology failed.
    #[error("cannot declare the job exchanges and queues")]
    Topology(#[source] lapin::Error),
    /// Subscribing to events for `--wait` failed.
    #[error("cannot subscribe to certificate events for --wait")]
    Subscribe(#[source] lapin::Error),
    /// Reading pointers failed.
    #[error("cannot read certificate {name} from storage")]
    Storage {
        /// The certificate.
        name: CertName,
        /// Cause.
        #[source]
        source: StorageError,
    },
    /// Redis failed where it is needed (dedup claims).
    #[error("cannot claim the names in redis (dedup of renew jobs)")]
    State(#[source] StateError),
    /// The due-scan failed.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// A job did not encode (a bug).
    #[error(transparent)]
    Encode(#[from] CodecError),
    /// The one job waited for failed.
    #[error("job {job_id} for {name} failed: {reason}")]
    JobFailed {
        /// The job.
        job_id: Uuid,
        /// Its certificate.
        name: CertName,
        /// The CA's reason and problem type.
        reason: String,
    },
    /// `--wait` ran out of time.
    #[error("timed out after {after} waiting for {}; {} still queued, see certfleet status {}",
        jobs_phrase(.pending), it_they(.pending), first(.pending))]
    TimedOut {
        /// The timeout, formatted.
        after: String,
        /// Jobs without an outcome.
        pending: Vec<Uuid>,
    },
    /// `--wait` was interrupted (SIGINT/SIGTERM).
    #[error("interrupted while waiting for {}; {} still queued, see certfleet status {}",
        jobs_phrase(.pending), it_they(.pending), first(.pending))]
    Interrupted {
        /// Jobs without an outcome.
        pending: Vec<Uuid>,
    },
    /// The event subscription broke while waiting.
    #[error("lost the event subscription while waiting for {}; {} still queued, see certfleet status {}",
        jobs_phrase(.pending), it_they(.pending), first(.pending))]
    WaitLost {
        /// Jobs without an outcome.
        pending: Vec<Uuid>,
        /// Cause, if the broker gave one.
        #[source]
        source: Option<lapin::Error>,
    },
    /// Some of several jobs were not accepted or failed.
    #[error("{failed} of {total} {what}")]
    Incomplete {
        /// How many failed.
        failed: usize,
        /// Out of how many.
        total: usize,
        /// What failed (`jobs were not accepted by the broker`, ...).
        what: &'static str,
    },
}

impl SubmitError {
    /// Whether this is bad usage or bad input: exit 64, nothing was published.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            SubmitError::Request(_)
                | SubmitError::Name(_)
                | SubmitError::Lines(_)
                | SubmitError::EmptyFile(_)
                | SubmitError::Read { .. }
                | SubmitError::UnknownNames(_)
                | SubmitError::Usage(_)
        )
    }
}

fn join(names: &[CertName]) -> String {
    names
        .iter()
        .map(CertName::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

fn jobs_phrase(ids: &[Uuid]) -> String {
    match ids {
        [one] => format!("job {one}"),
        many => format!("{} jobs", many.len()),
    }
}

fn it_they(ids: &[Uuid]) -> &'static str {
    if ids.len() == 1 { "it is" } else { "they are" }
}

fn first(ids: &[Uuid]) -> String {
    ids.first()
        .map_or_else(|| "JOB_ID".to_string(), Uuid::to_string)
}

async fn read_input(path: &Path) -> Result<(String, String), SubmitError> {
    if path.as_os_str() == "-" {
        let label = "<stdin>".to_string();
        let text = tokio::task::spawn_blocking(|| std::io::read_to_string(std::io::stdin()))
            .await
            .map_err(|e| SubmitError::Read {
                file: label.clone(),
                source: std::io::Error::other(e),
            })?
            .map_err(|source| SubmitError::Read {
                file: label.clone(),
                source,
            })?;
        return Ok((label, text));
    }
    let label = path.display().to_string();
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| SubmitError::Read {
            file: label.clone(),
            source,
        })?;
    Ok((label, text))
}

/// Publishes envelopes pipelined and returns one result per envelope.
async fn publish_all(
    publisher: &Publisher,
    envelopes: &[&Envelope],
) -> Result<Vec<Result<(), BrokerError>>, SubmitError> {
    let bodies: Vec<Vec<u8>> = envelopes
        .iter()
        .map(|e| e.encode())
        .collect::<Result<_, _>>()?;
    let keys: Vec<String> = envelopes.iter().map(|e| e.routing_key()).collect();
    let ids: Vec<String> = envelopes.iter().map(|e| e.job_id.to_string()).collect();
    let msgs: Vec<Outgoing<'_>> = bodies
        .iter()
        .zip(&keys)
        .zip(&ids)
        .map(|((b, k), id)| Outgoing::job(k, b, Some(id)))
        .collect();
    Ok(publisher.publish_many(&msgs).await?)
}

/// Connects, opens a confirming channel and declares the job topology.
async fn open_publisher(config: &Config) -> Result<(lapin::Connection, Publisher), SubmitError> {
    let conn = connect_broker(config).await?;
    let publisher = Publisher::new(&conn).await?;
    topology::declare_jobs(publisher.channel())
        .await
        .map_err(SubmitError::Topology)?;
    Ok((conn, publisher))
}

/// Writes `queued` status records (pipelined), best effort: the jobs are
/// accepted whatever happens here, so a failure is a warning.
async fn record_queued(state: Option<&State>, envelopes: &[&Envelope], detail: &str) {
    let Some(state) = state else {
        return;
    };
    let statuses: Vec<JobStatus> = envelopes
        .iter()
        .map(|e| JobStatus::of(e, JobState::Queued, detail))
        .collect();
    if let Err(e) = state.set_statuses(&statuses).await {
        tracing::warn!(error = %chain(&e), "the job is accepted, but its status record could not be written (redis)");
    }
}

fn state_or_warn(config: &Config) -> Option<State> {
    match State::from_config(config, STATUS_CONCURRENCY) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %chain(&e), "no status records (redis)");
            None
        }
    }
}

/// `certfleet issue`.
///
/// # Errors
/// Usage errors (before any connection), broker errors, and with `--wait`
/// a failed job, a timeout or an interruption.
pub async fn issue(
    config: &Config,
    args: &IssueArgs,
    shutdown: CancellationToken,
) -> Result<(), SubmitError> {
    let request = Request::new(
        &args.domains,
        args.name.as_deref(),
        args.key_type,
        args.challenge,
    )?;
    let (conn, publisher) = open_publisher(config).await?;
    let result = async {
        let waiter = if args.wait {
            Some(EventWaiter::open(&conn, &[&request.name]).await?)
        } else {
            None
        };
        let envelope = Envelope::new(
            JobKind::Issue,
            request.job(REASON_CLI),
            certfleet_common::now_ms(),
        );
        let body = envelope.encode()?;
        let routing_key = envelope.routing_key();
        let id = envelope.job_id.to_string();
        publisher
            .publish(Outgoing::job(&routing_key, &body, Some(&id)))
            .await?;
        out(&id);
        record_queued(
            state_or_warn(config).as_ref(),
            &[&envelope],
            "queued (certfleet issue)",
        )
        .await;
        if let Some(waiter) = waiter {
            let jobs = HashMap::from([(envelope.job_id, request.name.clone())]);
            waiter.wait(jobs, args.timeout, shutdown).await?;
        }
        Ok(())
    }
    .await;
    close_broker(&conn).await;
    result
}

/// `certfleet submit`.
///
/// # Errors
/// Bad lines (before any connection), broker errors, jobs not accepted, and
/// with `--wait` failed jobs, a timeout or an interruption.
pub async fn submit(
    config: &Config,
    args: &SubmitArgs,
    shutdown: CancellationToken,
) -> Result<(), SubmitError> {
    let (label, text) = read_input(&args.file).await?;
    let requests = parse_file(&text, &label)?;
    let (conn, publisher) = open_publisher(config).await?;
    let result = async {
        let names: Vec<&CertName> = requests.iter().map(|(_, r)| &r.name).collect();
        let waiter = if args.wait {
            Some(EventWaiter::open(&conn, &names).await?)
        } else {
            None
        };
        let now = certfleet_common::now_ms();
        let envelopes: Vec<Envelope> = requests
            .iter()
            .map(|(_, r)| Envelope::new(JobKind::Issue, r.job(REASON_BULK), now))
            .collect();
        let refs: Vec<&Envelope> = envelopes.iter().collect();
        let results = publish_all(&publisher, &refs).await?;
        let mut accepted: Vec<&Envelope> = Vec::new();
        let mut failed = 0;
        for (((line, request), envelope), result) in requests.iter().zip(&envelopes).zip(results) {
            match result {
                Ok(()) => {
                    out(format_args!("{} {}", envelope.job_id, request.name));
                    accepted.push(envelope);
                }
                Err(e) => {
                    failed += 1;
                    eprintln!(
                        "{label}:{line}: {}: not accepted: {}",
                        request.name,
                        chain(&e)
                    );
                }
            }
        }
        record_queued(
            state_or_warn(config).as_ref(),
            &accepted,
            "queued (certfleet submit)",
        )
        .await;
        let wait_result = match waiter {
            Some(waiter) if !accepted.is_empty() => {
                let jobs = accepted
                    .iter()
                    .map(|e| (e.job_id, e.job.name.clone()))
                    .collect();
                waiter.wait(jobs, args.timeout, shutdown).await
            }
            _ => Ok(()),
        };
        if failed > 0 {
            return Err(SubmitError::Incomplete {
                failed,
                total: envelopes.len(),
                what: "jobs were not accepted by the broker",
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
    use std::time::Duration;

    use certfleet_common::config::Sources;
    use certfleet_common::{ChallengeType, KeyType};

    use crate::cli::RenewArgs;

    #[test]
    fn error_messages() {
        let id = Uuid::nil();
        let e = SubmitError::TimedOut {
            after: "10m".into(),
            pending: vec![id],
        };
        assert_eq!(
            e.to_string(),
            format!(
                "timed out after 10m waiting for job {id}; it is still queued, see certfleet status {id}"
            )
        );
        let name = CertName::parse("x.example.com").expect("valid");
        assert_eq!(
            SubmitError::UnknownNames(vec![name]).to_string(),
            "no certificate named x.example.com (use certfleet issue)"
        );
    }

    fn closed_port_config() -> Config {
        // Port 1 on loopback: nothing listens, a connection attempt fails at once.
        let env: HashMap<&str, &str> = [
            ("CERTFLEET_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f"),
            ("CERTFLEET_REDIS_URL", "redis://127.0.0.1:1/0"),
            ("CERTFLEET_S3_ENDPOINT", "http://127.0.0.1:1"),
        ]
        .into();
        Config::load(&Sources::new(&env)).expect("valid config")
    }

    fn issue_args(domains: &[&str], challenge: ChallengeType) -> IssueArgs {
        IssueArgs {
            domains: domains.iter().map(|d| (*d).to_string()).collect(),
            name: None,
            key_type: KeyType::default(),
            challenge,
            wait: true,
            timeout: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn issue_validates_before_connecting() {
        let config = closed_port_config();
        for (domains, challenge) in [
            (&["bad_domain!.example.com"][..], ChallengeType::Http01),
            (&["1.2.3.4"], ChallengeType::Http01),
            (&["*.example.com"], ChallengeType::Http01),
            (&["example.com"], ChallengeType::Dns01),
        ] {
            let err = issue(
                &config,
                &issue_args(domains, challenge),
                CancellationToken::new(),
            )
            .await
            .expect_err("must fail");
            assert!(err.is_usage(), "{domains:?}: {err}");
            assert!(
                matches!(err, SubmitError::Request(_)),
                "{domains:?}: {err:?}"
            );
        }
        // The same configuration with a valid request does try to connect,
        // and a broker that is down is a failure (exit 1), not success.
        let err = issue(
            &config,
            &issue_args(&["www.example.com"], ChallengeType::Http01),
            CancellationToken::new(),
        )
        .await
        .expect_err("nothing listens on port 1");
        assert!(!err.is_usage(), "{err}");
        assert!(
            matches!(err, SubmitError::Broker(BrokerError::Connect { .. })),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn submit_validates_before_connecting() -> Result<(), std::io::Error> {
        let config = closed_port_config();
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("certs.txt");
        std::fs::write(&path, "a.example.com\nnot a domain!\n")?;
        let args = SubmitArgs {
            file: path,
            wait: false,
            timeout: Duration::from_secs(1),
        };
        let err = submit(&config, &args, CancellationToken::new())
            .await
            .expect_err("bad line");
        assert!(
            err.is_usage() && err.to_string().contains("certs.txt:2: "),
            "{err}"
        );
        let missing = SubmitArgs {
            file: dir.path().join("nope.txt"),
            wait: false,
            timeout: Duration::from_secs(1),
        };
        let err = submit(&config, &missing, CancellationToken::new())
            .await
            .expect_err("missing file");
        assert!(err.is_usage(), "{err}");
        Ok(())
    }

    #[tokio::test]
    async fn renew_validates_names_before_connecting() {
        let config = closed_port_config();
        let args = RenewArgs {
            names: vec!["Not A Name".into()],
            due: false,
            within: None,
            dry_run: false,
            wait: false,
            timeout: Duration::from_secs(1),
        };
        let err = renew(&config, &args, CancellationToken::new())
            .await
            .expect_err("bad name");
        assert!(err.is_usage(), "{err}");
    }
}
