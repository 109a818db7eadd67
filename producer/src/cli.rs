//! The command line: arguments (clap derive), configuration loading, the
//! broker connection every publishing command shares, and the dispatch from
//! a parsed [`Cli`] to the command modules.
//!
//! Every command validates its input before it opens a connection, so a bad
//! argument ends with exit code 64 and nothing published. Errors of every
//! command end up in [`CliError`], which knows whether they were bad usage
//! ([`CliError::is_usage`]).

use std::path::PathBuf;
use std::time::Duration;

use certfleet_common::amqp::{self, BrokerError};
use certfleet_common::config::{self, Env, Sources};
use certfleet_common::schedule::{self, ScheduleError};
use certfleet_common::state::{State, StateError};
use certfleet_common::{ChallengeType, Config, ConfigError, KeyType, Store};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::agent::{self, WatchError};
use crate::dlq::{self, DlqError};
use crate::status::{self, StatusError};
use crate::submit::{self, SubmitError};

/// Default of `issue --timeout` (and of the other `--wait` commands).
pub const DEFAULT_WAIT_TIMEOUT: &str = "10m";
/// How long connecting to the broker may take before the command gives up
/// (a blackholed address would otherwise hang for the TCP timeout).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// `certfleet`: issue, renew and distribute TLS certificates through a
/// fleet of workers.
#[derive(Debug, Parser)]
#[command(name = "certfleet", version, about, long_about = None)]
pub struct Cli {
    /// TOML configuration file (else $CERTFLEET_CONFIG). Flags win over
    /// CERTFLEET_* variables, which win over the file.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format on stderr: text or json (CERTFLEET_LOG_FORMAT).
    #[arg(long, global = true, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Queue a new certificate; prints the job id on stdout.
    Issue(IssueArgs),
    /// Queue many certificates from a file, one per line.
    Submit(SubmitArgs),
    /// Queue renewals of stored certificates, or of every one that is due.
    Renew(RenewArgs),
    /// Show a job (by id) or a certificate (by name).
    Status {
        /// A job id (UUID) or a certificate name.
        #[arg(value_name = "JOB_ID|NAME")]
        target: String,
    },
    /// List every stored certificate.
    List {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Maintain the expiry index in Redis.
    Index {
        /// What to do.
        #[command(subcommand)]
        command: IndexCommand,
    },
    /// Run the renewal scheduler until SIGTERM (one instance of the fleet
    /// scans per period).
    Schedule(ScheduleArgs),
    /// Inspect and replay the dead-letter queue (certfleet.dead).
    Dlq {
        /// What to do.
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Download certificates once into DIR/NAME/.
    Pull(PullArgs),
    /// Follow certificate events and keep DIR/NAME/ up to date.
    Watch(WatchArgs),
}

impl Command {
    /// Whether the command runs until it is told to stop or until an event
    /// arrives, so SIGINT/SIGTERM must end it gracefully (through the
    /// cancellation token) rather than kill it.
    pub fn is_long_running(&self) -> bool {
        match self {
            Command::Issue(a) => a.wait,
            Command::Submit(a) => a.wait,
            Command::Renew(a) => a.wait,
            Command::Schedule(_) | Command::Watch(_) => true,
            _ => false,
        }
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    config::parse::parse_duration(s)
}

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
    /// Challenge type: http-01 or dns-01.
    #[arg(long, value_name = "TYPE", default_value = "http-01")]
    pub challenge: ChallengeType,
    /// Wait until the certificate is stored (exit 0) or the job failed (exit 1).
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_WAIT_TIMEOUT, value_parser = duration)]
    pub timeout: Duration,
}

/// `certfleet submit`.
#[derive(Debug, Clone, Args)]
pub struct SubmitArgs {
    /// File with one certificate per line:
    /// `DOMAIN [DOMAIN...] [name=NAME] [key=TYPE] [challenge=TYPE]`;
    /// `#` starts a comment; `-` reads stdin.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Wait until every certificate is stored or its job failed.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits for all of them.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_WAIT_TIMEOUT, value_parser = duration)]
    pub timeout: Duration,
}

/// `certfleet renew`.
#[derive(Debug, Clone, Args)]
pub struct RenewArgs {
    /// Names of stored certificates.
    #[arg(
        value_name = "NAME",
        required_unless_present = "due",
        conflicts_with = "due"
    )]
    pub names: Vec<String>,
    /// Renew every certificate whose renewal time has come.
    #[arg(long)]
    pub due: bool,
    /// With --due: also those due within this long from now.
    #[arg(long, value_name = "DURATION", requires = "due", value_parser = duration)]
    pub within: Option<Duration>,
    /// With --due: only print what is due, publish nothing.
    #[arg(long, requires = "due")]
    pub dry_run: bool,
    /// Wait until every renewed certificate is stored or its job failed.
    #[arg(long, conflicts_with = "due")]
    pub wait: bool,
    /// How long --wait waits for all of them.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_WAIT_TIMEOUT, value_parser = duration)]
    pub timeout: Duration,
}

/// `certfleet index ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum IndexCommand {
    /// Rebuild the expiry index from the certificates in storage.
    Rebuild,
}

/// `certfleet schedule`.
#[derive(Debug, Clone, Args)]
pub struct ScheduleArgs {
    /// Scan period (at least 1s).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub every: Duration,
    /// Also renew what becomes due within this long.
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub within: Option<Duration>,
}

/// `certfleet dlq ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum DlqCommand {
    /// List the dead jobs (nothing is removed).
    List {
        /// Show at most this many.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// Show one dead job in full.
    Show {
        /// Its job id.
        #[arg(value_name = "JOB_ID")]
        job_id: String,
    },
    /// Publish dead jobs again (attempt reset to 1) and remove them from
    /// the dead-letter queue once the broker confirmed.
    Replay {
        /// Job ids to replay.
        #[arg(
            value_name = "JOB_ID",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        job_ids: Vec<String>,
        /// Replay every decodable dead job (undecodable ones are skipped).
        #[arg(long)]
        all: bool,
    },
    /// Delete every message in the dead-letter queue.
    Purge {
        /// Confirm.
        #[arg(long)]
        yes: bool,
    },
}

/// `certfleet pull`.
#[derive(Debug, Clone, Args)]
pub struct PullArgs {
    /// Directory receiving NAME/{cert,chain,fullchain,privkey}.pem.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Certificates to pull (default: every one).
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
}

/// `certfleet watch`.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Directory receiving NAME/{cert,chain,fullchain,privkey}.pem.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// This webserver's id: its durable queue is certfleet.watch.ID.
    #[arg(long = "queue", value_name = "ID")]
    pub queue_id: String,
    /// Certificate name patterns to follow (AMQP topic syntax); default all.
    #[arg(long = "filter", value_name = "PATTERN")]
    pub filters: Vec<String>,
    /// Command run after certificates changed.
    #[arg(long, value_name = "CMD")]
    pub on_change: Option<String>,
}

/// Any command's failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// `issue`, `submit`, `renew`.
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// `status`, `list`.
    #[error(transparent)]
    Status(#[from] StatusError),
    /// `dlq`.
    #[error(transparent)]
    Dlq(#[from] DlqError),
    /// `pull`, `watch`.
    #[error(transparent)]
    Watch(#[from] WatchError),
    /// `index rebuild`.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// Redis configuration unusable.
    #[error(transparent)]
    State(#[from] StateError),
    /// `pull` could not put every certificate in place (the report says
    /// which).
    #[error("pull incomplete: {missing} missing in storage, {failed} failed")]
    PullIncomplete {
        /// Names storage has no certificate for.
        missing: usize,
        /// Names that could not be written.
        failed: usize,
    },
    /// Bad arguments found after parsing.
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    /// Whether this is bad usage or bad input (exit 64, nothing published)
    /// rather than failed work (exit 1).
    pub fn is_usage(&self) -> bool {
        match self {
            CliError::Submit(e) => e.is_usage(),
            CliError::Status(e) => e.is_usage(),
            CliError::Dlq(e) => e.is_usage(),
            CliError::Watch(e) => e.is_usage(),
            CliError::Usage(_) => true,
            CliError::Schedule(_) | CliError::State(_) | CliError::PullIncomplete { .. } => false,
        }
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        if self.is_usage() {
            certfleet_common::EXIT_USAGE
        } else {
            certfleet_common::EXIT_FAILURE
        }
    }
}

/// Exit code for an argument parsing result that is not a command: 0 for
/// `--help` and `--version`, 64 for bad usage (clap's own default is 2).
pub fn clap_exit_code(error: &clap::Error) -> u8 {
    if error.use_stderr() {
        certfleet_common::EXIT_USAGE
    } else {
        0
    }
}

/// Loads the configuration: flags, then `CERTFLEET_*` from `env`, then the
/// TOML file (`--config` or `CERTFLEET_CONFIG`).
///
/// # Errors
/// The first bad value, naming its variable, flag or file key.
pub fn load_config(cli: &Cli, env: &dyn Env) -> Result<Config, ConfigError> {
    let sources = Sources::new(env)
        .file(cli.config.as_deref())?
        .flag(config::keys::LOG_FORMAT, cli.log_format.as_deref())?;
    Config::load(&sources)
}

/// Connects to the broker, naming the connection `certfleet@<host>`, within
/// [`CONNECT_TIMEOUT`].
///
/// # Errors
/// [`BrokerError::Connect`], also on timeout.
pub(crate) async fn connect_broker(config: &Config) -> Result<lapin::Connection, BrokerError> {
    let name = amqp::connection_name("certfleet");
    match tokio::time::timeout(CONNECT_TIMEOUT, amqp::connect(&config.amqp_url, &name)).await {
        Ok(result) => result,
        Err(_) => Err(BrokerError::Connect {
            url: config.amqp_url.redacted(),
            source: lapin::Error::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no answer within {}",
                    config::parse::format_duration(CONNECT_TIMEOUT)
                ),
            )),
        }),
    }
}

/// Closes a connection politely (flushes and tells the broker); errors do
/// not matter any more at this point.
pub(crate) async fn close_broker(conn: &lapin::Connection) {
    amqp::close(conn, 200, "bye").await;
}

/// Writes one line on stdout. A closed stdout (`certfleet ... | head`)
/// is not an error worth a panic.
pub(crate) fn out(line: impl std::fmt::Display) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// Runs a parsed command to completion.
///
/// # Errors
/// The command's error; [`CliError::exit_code`] tells the exit code.
pub async fn run(cli: Cli, config: Config, shutdown: CancellationToken) -> Result<(), CliError> {
    match cli.command {
        Command::Issue(args) => submit::issue(&config, &args, shutdown).await?,
        Command::Submit(args) => submit::submit(&config, &args, shutdown).await?,
        Command::Renew(args) => submit::renew(&config, &args, shutdown).await?,
        Command::Status { target } => status::status(&config, &target).await?,
        Command::List { json } => status::list(&config, json).await?,
        Command::Index {
            command: IndexCommand::Rebuild,
        } => {
            let state = State::from_config(&config, 4)?;
            let store = Store::from_config(&config).await;
            let n = schedule::rebuild_index(&state, &store).await?;
            out(format_args!("indexed {n} certificates"));
        }
        Command::Schedule(args) => run_schedule(&config, &args, shutdown).await?,
        Command::Dlq { command } => match command {
            DlqCommand::List { limit } => dlq::list(&config, limit).await?,
            DlqCommand::Show { job_id } => dlq::show(&config, &job_id).await?,
            DlqCommand::Replay { job_ids, all } => dlq::replay(&config, &job_ids, all).await?,
            DlqCommand::Purge { yes } => dlq::purge(&config, yes).await?,
        },
        Command::Pull(args) => {
            let names = parse_names(&args.names)?;
            let report = agent::pull(&config, &args.dir, &names).await?;
            out(report.to_string().trim_end());
            if !report.is_complete() {
                return Err(CliError::PullIncomplete {
                    missing: report.missing().len(),
                    failed: report.failed().count(),
                });
            }
        }
        Command::Watch(args) => {
            let opts = agent::WatchOptions {
                dir: args.dir,
                queue_id: args.queue_id,
                filters: args.filters,
                on_change: args.on_change,
            };
            agent::watch(&config, opts, shutdown).await?;
        }
    }
    Ok(())
}

fn parse_names(names: &[String]) -> Result<Vec<certfleet_common::CertName>, CliError> {
    names
        .iter()
        .map(|n| certfleet_common::CertName::parse(n).map_err(|e| CliError::Usage(e.to_string())))
        .collect()
}

/// `certfleet schedule`: runs the scheduler, reconnecting to the broker
/// whenever the connection is lost, until `shutdown`.
async fn run_schedule(
    config: &Config,
    args: &ScheduleArgs,
    shutdown: CancellationToken,
) -> Result<(), CliError> {
    if args.every < Duration::from_secs(1) {
        return Err(CliError::Usage("--every must be at least 1s".into()));
    }
    let within = match args.within {
        Some(w) => time::Duration::try_from(w)
            .map_err(|_| CliError::Usage("--within is too long".into()))?,
        None => time::Duration::ZERO,
    };
    let state = State::from_config(config, 8)?;
    let store = Store::from_config(config).await;
    let mut backoff = Duration::from_secs(1);
    while !shutdown.is_cancelled() {
        let connected = async {
            let conn = connect_broker(config).await?;
            let publisher = amqp::Publisher::new(&conn).await?;
            Ok::<_, BrokerError>((conn, publisher))
        }
        .await;
        let (conn, publisher) = match connected {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %certfleet_common::error::chain(&e), retry_in = ?backoff, "cannot connect to the broker");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
                continue;
            }
        };
        backoff = Duration::from_secs(1);
        let run_token = shutdown.child_token();
        let scheduler = schedule::run_scheduler_within(
            &state,
            &store,
            &publisher,
            args.every,
            within,
            run_token.clone(),
        );
        tokio::pin!(scheduler);
        loop {
            tokio::select! {
                () = &mut scheduler => break,
                () = tokio::time::sleep(Duration::from_secs(2)) => {
                    let healthy = conn.status().connected() && publisher.channel().status().connected();
                    if !healthy && !run_token.is_cancelled() {
                        tracing::warn!("lost the broker connection; reconnecting");
                        run_token.cancel();
                    }
                }
            }
        }
        close_broker(&conn).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("certfleet").chain(args.iter().copied()))
    }

    #[test]
    fn issue_defaults() -> Result<(), clap::Error> {
        let cli = parse(&["issue", "www.example.com", "example.com"])?;
        let Command::Issue(a) = cli.command else {
            panic!("not issue");
        };
        assert_eq!(a.domains, ["www.example.com", "example.com"]);
        assert_eq!(a.key_type, KeyType::EcdsaP256);
        assert_eq!(a.challenge, ChallengeType::Http01);
        assert_eq!(a.timeout, Duration::from_secs(600));
        assert!(!a.wait);
        Ok(())
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        for args in [
            &["issue"][..],
            &["issue", "a.example.com", "--key-type", "rsa-1024"],
            &["issue", "a.example.com", "--challenge", "tls-alpn-01"],
            &["issue", "a.example.com", "--timeout", "10"],
            &["renew"],
            &["renew", "a.example.com", "--due"],
            &["renew", "--dry-run"],
            &["renew", "--within", "1d"],
            &["renew", "--due", "--wait"],
            &["dlq", "replay"],
            &["dlq", "replay", "--all", "x"],
            &["schedule"],
            &["watch", "--dir", "/tmp"],
            &["frobnicate"],
        ] {
            let err = parse(args)
                .map(|_| ())
                .expect_err(&format!("{args:?} accepted"));
            assert_eq!(clap_exit_code(&err), 64, "{args:?}: {err}");
        }
        let help = parse(&["--help"])
            .map(|_| ())
            .expect_err("help is an error value");
        assert_eq!(clap_exit_code(&help), 0);
    }

    #[test]
    fn long_running_commands() -> Result<(), clap::Error> {
        assert!(
            !parse(&["issue", "a.example.com"])?
                .command
                .is_long_running()
        );
        assert!(
            parse(&["issue", "a.example.com", "--wait"])?
                .command
                .is_long_running()
        );
        assert!(
            parse(&["schedule", "--every", "1h"])?
                .command
                .is_long_running()
        );
        assert!(!parse(&["renew", "--due"])?.command.is_long_running());
        Ok(())
    }

    #[test]
    fn config_flag_and_errors() -> Result<(), clap::Error> {
        let env: HashMap<&str, &str> = [("CERTFLEET_LOG_FORMAT", "json")].into();
        let cli = parse(&["--log-format", "text", "list"])?;
        let config = load_config(&cli, &env).expect("valid");
        assert_eq!(config.log_format, config::LogFormat::Text);
        let env: HashMap<&str, &str> = [("CERTFLEET_CONCURRENCY", "lots")].into();
        let err = load_config(&parse(&["list"])?, &env)
            .map(|_| ())
            .expect_err("invalid");
        assert!(
            err.to_string().starts_with("CERTFLEET_CONCURRENCY="),
            "{err}"
        );
        Ok(())
    }
}
