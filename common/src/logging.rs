//! One tracing setup for both binaries: logs on stderr, text or JSON
//! (`CERTFLEET_LOG_FORMAT`), filtered by `CERTFLEET_LOG` (else `RUST_LOG`,
//! else the binary's default). The filter is read and checked by the
//! configuration layer like every other setting, so a bad one is exit 64
//! with its variable named, before anything starts.

use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoggingError {
    /// The filter does not parse (a default of the binary: a bug).
    #[error("{filter:?} is not a valid log filter: {reason}")]
    Filter {
        /// The filter.
        filter: String,
        /// Why.
        reason: String,
    },
    /// A global subscriber is already installed.
    #[error("cannot set up logging: {0}")]
    Install(String),
}

/// Installs the global subscriber. `default_filter` applies when the
/// configuration has none. Colours only when stderr is a terminal.
///
/// # Errors
/// [`LoggingError`].
pub fn init(config: &Config, default_filter: &str) -> Result<(), LoggingError> {
    let filter = config.log_filter.as_deref().unwrap_or(default_filter);
    let env_filter = EnvFilter::try_new(filter).map_err(|e| LoggingError::Filter {
        filter: filter.to_string(),
        reason: e.to_string(),
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let installed = match config.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    installed.map_err(|e| LoggingError::Install(e.to_string()))
}
