//! One shutdown signal for a whole process: SIGTERM (what Kubernetes sends)
//! or SIGINT (Ctrl-C) cancels a token that every long-lived task selects
//! on (linkerd2-proxy's `signal`). Both binaries install it the same way.

use tokio_util::sync::CancellationToken;

/// Exit code after a second signal: 128 + SIGINT, as shells report it.
pub const EXIT_SECOND_SIGNAL: i32 = 130;

/// Cancels `token` at the first SIGTERM or SIGINT, so the process ends
/// gracefully; at a second one, exits at once with
/// [`EXIT_SECOND_SIGNAL`] (an operator who presses Ctrl-C twice means it).
/// Must be called inside a Tokio runtime.
///
/// # Errors
/// The signal handlers could not be installed.
pub fn on_signal(program: &'static str, token: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        for _ in 0..2 {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            if token.is_cancelled() {
                eprintln!("{program}: second signal ({name}), exiting now");
                std::process::exit(EXIT_SECOND_SIGNAL);
            }
            tracing::info!(signal = name, "shutting down");
            token.cancel();
        }
    });
    Ok(())
}
