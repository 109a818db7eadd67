//! `certfleet`: parse, load the configuration, set up logging, run, and map
//! the outcome to an exit code (0 ok, 1 the work failed, 64 bad usage).

use std::process::ExitCode;

use anyhow::Context as _;
use certfleet::Cli;
use certfleet_common::config::{LogFormat, ProcessEnv};
use certfleet_common::{Config, EXIT_FAILURE, EXIT_USAGE};
use clap::Parser as _;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Log filter when neither `CERTFLEET_LOG` nor `RUST_LOG` is set: our own
/// progress, and only warnings from libraries. lapin's warning about a
/// returned (unroutable) message is hidden: the command reports it as its
/// own error, and lapin's version dumps the whole message.
const DEFAULT_LOG_FILTER: &str =
    "warn,lapin::returned_messages=error,certfleet=info,certfleet_common=info";

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(certfleet::clap_exit_code(&e));
        }
    };
    let config = match certfleet::load_config(&cli, &ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("certfleet: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Err(e) = init_tracing(config.log_format) {
        eprintln!("certfleet: {e:#}");
        return ExitCode::from(EXIT_USAGE);
    }
    match run(cli, config) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("certfleet: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn run(cli: Cli, config: Config) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let long_running = cli.command.is_long_running();
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        if long_running {
            tokio::spawn(on_signal(shutdown.clone()));
        }
        certfleet::run(cli, config, shutdown).await
    });
    Ok(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("certfleet: {}", certfleet_common::error::chain(&e));
            ExitCode::from(e.exit_code())
        }
    })
}

/// First SIGINT or SIGTERM: cancel, so the command ends gracefully. A
/// second one: leave at once.
async fn on_signal(shutdown: CancellationToken) {
    for _ in 0..2 {
        if wait_for_signal().await.is_err() {
            return;
        }
        if shutdown.is_cancelled() {
            eprintln!("certfleet: second signal, exiting now");
            std::process::exit(130);
        }
        tracing::info!("signal received, shutting down");
        shutdown.cancel();
    }
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}

fn init_tracing(format: LogFormat) -> anyhow::Result<()> {
    let filter = std::env::var("CERTFLEET_LOG")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| DEFAULT_LOG_FILTER.to_string());
    let filter = EnvFilter::try_new(&filter)
        .with_context(|| format!("CERTFLEET_LOG/RUST_LOG={filter:?} is not a valid log filter"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}
