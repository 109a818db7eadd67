//! One shutdown signal for the whole process: SIGTERM (what Kubernetes
//! sends) or SIGINT (Ctrl-C), turned into a cancellation token.

use tokio_util::sync::CancellationToken;
use tracing::info;

/// Cancels `token` on the first SIGTERM or SIGINT.
///
/// # Errors
/// The signal handlers could not be installed.
pub fn on_signal(token: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: shutting down"),
            _ = int.recv() => info!("SIGINT: shutting down"),
        }
        token.cancel();
    });
    Ok(())
}
