//! `certfleet`: parse, load the configuration, set up logging, run, and map
//! the outcome to an exit code (0 ok, 1 the work failed, 64 bad usage).
// The whole CLI's future, checked for `Send` through every command's
// futures (Redis commands among them), goes deeper than the default 128.
#![recursion_limit = "256"]

use std::process::ExitCode;

use anyhow::Context as _;
use certfleet::Cli;
use certfleet_common::config::ProcessEnv;
use certfleet_common::{Config, EXIT_FAILURE, EXIT_USAGE, logging, shutdown};
use clap::Parser as _;
use tokio_util::sync::CancellationToken;

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
    if let Err(e) = logging::init(&config, DEFAULT_LOG_FILTER) {
        eprintln!("certfleet: {e}");
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
        .thread_stack_size(certfleet_common::RUNTIME_THREAD_STACK)
        .build()
        .context("cannot start the async runtime")?;
    let long_running = cli.command.is_long_running();
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        if long_running {
            shutdown::on_signal("certfleet", shutdown.clone())
                .context("cannot install the signal handlers")?;
        }
        anyhow::Ok(certfleet::run(cli, config, shutdown).await)
    })?;
    Ok(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("certfleet: {}", certfleet_common::error::chain(&e));
            ExitCode::from(e.exit_code())
        }
    })
}
