//! The entrance of the command line: the arguments (clap derive) with the
//! commands they select, configuration loading, exit codes, and the
//! dispatch from a parsed [`Cli`] to the command modules.
//!
//! Each command module owns its arguments (`IssueArgs` in `submit`,
//! `DlqCommand` in `dlq`, `ScheduleArgs` in `schedule`, `WatchArgs` in
//! `agent`, ...); [`Command`] only names them. Nothing imports from here:
//! the shared pieces are `broker` (the connection), `output` (stdout) and
//! `args` (value parsers).
//!
//! Every command validates its input before it opens a connection, so a bad
//! argument ends with exit code 64 and nothing published. Errors of every
//! command end up in [`CliError`], which knows whether they were bad usage
//! ([`CliError::is_usage`]).

use std::path::PathBuf;

use certfleet_common::config::{self, Env, Sources};
use certfleet_common::{Config, ConfigError};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::agent::{self, PullArgs, WatchArgs, WatchError};
use crate::dashboard::{self, DashboardArgs, DashboardError};
use crate::dlq::{self, DlqCommand, DlqError};
use crate::exporter::{self, ExporterArgs, ExporterError};
use crate::keys::{self, KeysCommand, KeysError};
use crate::output::out;
use crate::rollout::{self, RolloutArgs, RolloutError, ServersArgs};
use crate::schedule::{self, IndexCommand, ScheduleArgs, ScheduleCmdError};
use crate::server::{self, ServerCommand, ServerError};
use crate::status::{self, StatusError};
use crate::submit::{self, ImportArgs, IssueArgs, RenewArgs, RevokeArgs, SubmitArgs, SubmitError};

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
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List every stored certificate: days left, planned renewal, whether
    /// its last job failed.
    List {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// Only certificates expiring within this long (e.g. 30d).
        #[arg(long, value_name = "DURATION", value_parser = crate::args::duration)]
        expiring_within: Option<std::time::Duration>,
        /// Only certificates whose last job failed for good.
        #[arg(long)]
        failed: bool,
    },
    /// The CA's rate limits as the fleet counts them: each window's use
    /// and, when it is full, when it frees a slot.
    Limits {
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
    /// Serve the fleet's certificate metrics (expiry, renewal, readiness)
    /// for Prometheus until SIGTERM; one per fleet.
    Exporter(ExporterArgs),
    /// Revoke a certificate's current version at the CA; the name is no
    /// longer renewed.
    Revoke(RevokeArgs),
    /// Identities for server groups; re-encrypt stored keys for the
    /// current recipients.
    Keys {
        /// What to do.
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Broker users for webservers, each allowed to follow only its own
    /// names' events (RabbitMQ management API).
    Server {
        /// What to do.
        #[command(subcommand)]
        command: ServerCommand,
    },
    /// Which servers serve a certificate's current version (from their
    /// reports); --wait until all do.
    Rollout(RolloutArgs),
    /// The servers that report, their last report and the names they are
    /// behind on; `servers forget ID`.
    Servers(ServersArgs),
    /// Serve a live, read-only web page of the fleet (`dashboard token`
    /// prints a one-time URL for it).
    Dashboard(DashboardArgs),
    /// Bring in certificates obtained by lego or certbot: each is stored as
    /// a version and renewed by the fleet from then on.
    Import(ImportArgs),
    /// Print a shell completion script (e.g. `certfleet completions bash >
    /// /etc/bash_completion.d/certfleet`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (certfleet.1 and one per command) into DIR.
    #[command(hide = true)]
    Man {
        /// Where to write them (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
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
            Command::Schedule(_) | Command::Watch(_) | Command::Exporter(_) => true,
            Command::Import(a) => a.wait,
            Command::Revoke(a) => a.wait,
            Command::Rollout(a) => a.wait,
            Command::Dashboard(a) => a.command.is_none(),
            _ => false,
        }
    }
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
    /// `schedule`, `index rebuild`.
    #[error(transparent)]
    Schedule(#[from] ScheduleCmdError),
    /// `exporter`.
    #[error(transparent)]
    Exporter(#[from] ExporterError),
    /// `keys`.
    #[error(transparent)]
    Keys(#[from] KeysError),
    /// `server`.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// `rollout`, `servers`.
    #[error(transparent)]
    Rollout(#[from] RolloutError),
    /// `dashboard`.
    #[error(transparent)]
    Dashboard(#[from] DashboardError),
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
            CliError::Schedule(e) => e.is_usage(),
            CliError::Exporter(e) => e.is_usage(),
            CliError::Keys(e) => e.is_usage(),
            CliError::Server(e) => e.is_usage(),
            CliError::Rollout(e) => e.is_usage(),
            CliError::Dashboard(e) => e.is_usage(),
            CliError::Usage(_) => true,
            CliError::PullIncomplete { .. } => false,
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

/// Runs a parsed command to completion.
///
/// # Errors
/// The command's error; [`CliError::exit_code`] tells the exit code.
pub async fn run(cli: Cli, config: Config, shutdown: CancellationToken) -> Result<(), CliError> {
    match cli.command {
        Command::Issue(args) => submit::issue(&config, &args, shutdown).await?,
        Command::Submit(args) => submit::submit(&config, &args, shutdown).await?,
        Command::Renew(args) => submit::renew(&config, &args, shutdown).await?,
        Command::Status { target, json } => status::status(&config, &target, json).await?,
        Command::List {
            json,
            expiring_within,
            failed,
        } => {
            let filter = status::ListFilter {
                expiring_within,
                failed,
            };
            status::list(&config, json, &filter).await?;
        }
        Command::Limits { json } => status::limits(&config, json).await?,
        Command::Index { command } => schedule::index(&config, &command).await?,
        Command::Schedule(args) => schedule::run_schedule(&config, &args, shutdown).await?,
        Command::Dlq { command } => match command {
            DlqCommand::List { limit, json } => dlq::list(&config, limit, json).await?,
            DlqCommand::Show { job_id } => dlq::show(&config, &job_id).await?,
            DlqCommand::Replay { job_ids, all } => dlq::replay(&config, &job_ids, all).await?,
            DlqCommand::Purge { yes } => dlq::purge(&config, yes).await?,
        },
        Command::Pull(args) => {
            let names = parse_names(&args.names)?;
            let report =
                agent::pull_as(&config, &args.dir, &names, args.server_id.as_deref()).await?;
            out(report.to_string().trim_end());
            if !report.is_complete() {
                return Err(CliError::PullIncomplete {
                    missing: report.missing().len(),
                    failed: report.failed().count(),
                });
            }
        }
        Command::Watch(args) => agent::watch(&config, args.into(), shutdown).await?,
        Command::Exporter(args) => exporter::run(&config, &args, shutdown).await?,
        Command::Import(args) => submit::import(&config, &args, shutdown).await?,
        Command::Revoke(args) => submit::revoke(&config, &args, shutdown).await?,
        Command::Keys { command } => keys::run(&config, &command).await?,
        Command::Server { command } => server::run(&config, &command).await?,
        Command::Rollout(args) => rollout::rollout(&config, &args, shutdown).await?,
        Command::Servers(args) => rollout::servers(&config, &args).await?,
        Command::Dashboard(args) => dashboard::run(&config, &args, shutdown).await?,
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "certfleet", &mut std::io::stdout());
        }
        Command::Man { dir } => {
            use clap::CommandFactory as _;
            std::fs::create_dir_all(&dir)
                .and_then(|()| clap_mangen::generate_to(Cli::command(), &dir))
                .map_err(|e| CliError::Usage(format!("--dir {}: {e}", dir.display())))?;
            out(format_args!("man pages written to {}", dir.display()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::Duration;

    use certfleet_common::{ChallengeType, KeyType};

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
            &["issue", "a.example.com", "--challenge", "tls-alpn-02"],
            &["issue", "a.example.com", "--timeout", "10"],
            &["renew"],
            &["renew", "a.example.com", "--due"],
            &["renew", "--dry-run"],
            &["renew", "--within", "1d"],
            &["renew", "--due", "--dry-run", "--wait"],
            &["dlq", "replay"],
            &["dlq", "replay", "--all", "x"],
            &["schedule"],
            &["exporter"],
            &["list", "--expiring-within", "soon"],
            &["completions", "tcsh"],
            &["import", "/tmp"],
            &["revoke"],
            &["revoke", "a.example.com", "--reason", "boredom"],
            &["import", "--from", "acme.sh", "/tmp"],
            &["exporter", "--listen", "nowhere"],
            &[
                "exporter",
                "--listen",
                "127.0.0.1:9403",
                "--interval",
                "soon",
            ],
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
    fn completions_and_man_pages() -> Result<(), Box<dyn std::error::Error>> {
        use clap::CommandFactory as _;
        let mut bash = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "certfleet",
            &mut bash,
        );
        let bash = String::from_utf8(bash)?;
        for word in ["issue", "exporter", "--expiring-within", "--metrics-listen"] {
            assert!(bash.contains(word), "bash completion lacks {word}");
        }
        let dir = tempfile::tempdir()?;
        clap_mangen::generate_to(Cli::command(), dir.path())?;
        let page = std::fs::read_to_string(dir.path().join("certfleet-exporter.1"))?;
        assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
        assert!(page.contains("summary\\-only"), "{page}");
        assert!(dir.path().join("certfleet.1").is_file());
        Ok(())
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
        let env: HashMap<&str, &str> = [("CERTFLEET_S3_PATH_STYLE", "lots")].into();
        let err = load_config(&parse(&["list"])?, &env)
            .map(|_| ())
            .expect_err("invalid");
        assert!(
            err.to_string().starts_with("CERTFLEET_S3_PATH_STYLE="),
            "{err}"
        );
        // A worker setting is the worker's to validate, not the CLI's.
        let env: HashMap<&str, &str> = [("CERTFLEET_CONCURRENCY", "lots")].into();
        assert!(load_config(&parse(&["list"])?, &env).is_ok());
        Ok(())
    }
}
