//! `certfleet-worker`: load the configuration, start, run until SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use certfleet_common::config::{ProcessEnv, Sources, keys};
use certfleet_common::{EXIT_FAILURE, EXIT_USAGE, logging, shutdown};
use certfleet_worker::config::Settings;
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Log filter when neither `CERTFLEET_LOG` nor `RUST_LOG` is set.
const DEFAULT_LOG_FILTER: &str = "info";

/// Consume certfleet jobs, answer http-01 challenges, serve metrics.
///
/// Settings come from flags, then CERTFLEET_* environment variables, then
/// the TOML file (--config or CERTFLEET_CONFIG). Secrets only from the
/// environment or files.
#[derive(Debug, Parser)]
#[command(name = "certfleet-worker", version)]
struct Args {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Orders in flight (= AMQP prefetch) [env: CERTFLEET_CONCURRENCY].
    #[arg(long, value_name = "N")]
    concurrency: Option<String>,
    /// http-01 responder address [env: CERTFLEET_HTTP01_LISTEN].
    #[arg(long, value_name = "ADDR")]
    http01_listen: Option<String>,
    /// tls-alpn-01 responder address, e.g. 0.0.0.0:443 (none: no
    /// tls-alpn-01) [env: CERTFLEET_TLSALPN01_LISTEN].
    #[arg(long, value_name = "ADDR")]
    tlsalpn01_listen: Option<String>,
    /// Metrics address [env: CERTFLEET_METRICS_LISTEN].
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Also run the renewal due-scan this often [env: CERTFLEET_SCHEDULE_EVERY].
    #[arg(long, value_name = "DURATION")]
    schedule_every: Option<String>,
    /// Grace period for in-flight jobs on shutdown [env: CERTFLEET_SHUTDOWN_GRACE].
    #[arg(long, value_name = "DURATION")]
    shutdown_grace: Option<String>,
}

fn load(args: &Args) -> Result<Settings, certfleet_common::ConfigError> {
    let env = ProcessEnv;
    let sources = Sources::new(&env)
        .file(args.config.as_deref())?
        .flag(keys::CONCURRENCY, args.concurrency.as_ref())?
        .flag(keys::HTTP01_LISTEN, args.http01_listen.as_ref())?
        .flag(keys::TLSALPN01_LISTEN, args.tlsalpn01_listen.as_ref())?
        .flag(keys::METRICS_LISTEN, args.metrics_listen.as_ref())?
        .flag(keys::SCHEDULE_EVERY, args.schedule_every.as_ref())?
        .flag(keys::SHUTDOWN_GRACE, args.shutdown_grace.as_ref())?;
    Settings::load(&sources)
}

fn main() -> ExitCode {
    // Bad flags exit 64 like the CLI's (clap's own default is 2); --help
    // and --version exit 0.
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    let cfg = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("certfleet-worker: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Err(e) = logging::init(&cfg.common, DEFAULT_LOG_FILTER) {
        eprintln!("certfleet-worker: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    tracing::info!(config = ?cfg, "configuration");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(certfleet_common::RUNTIME_THREAD_STACK)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("certfleet-worker: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        if let Err(e) = shutdown::on_signal("certfleet-worker", shutdown.clone()) {
            eprintln!("certfleet-worker: cannot install signal handlers: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
        match certfleet_worker::run(
            cfg,
            // The process's one registry, passed down (no global default).
            certfleet_worker::metrics::Registry::new(),
            shutdown,
        )
        .await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("certfleet-worker: {e:#}");
                ExitCode::from(if e.is_config() {
                    EXIT_USAGE
                } else {
                    EXIT_FAILURE
                })
            }
        }
    })
}
