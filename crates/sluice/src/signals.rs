//! SIGTERM and SIGINT for the long-running commands: the first asks for a drain, the second
//! for an immediate exit, which the command returns as [`crate::command::INTERRUPTED`] and the
//! binary turns into the process's exit.

use tokio_util::sync::CancellationToken;

/// Cancels `shutdown` on the first SIGTERM or SIGINT (logging `first`); returns on the second
/// (logging `second`). Never returns if signals cannot be watched (said in the log).
pub async fn first_and_second(
    shutdown: CancellationToken,
    first: &'static str,
    second: &'static str,
) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(error) => {
            tracing::error!(%error, "cannot watch SIGTERM");
            return std::future::pending().await;
        }
    };
    for n in 0..2 {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "SIGINT",
        };
        if n == 0 {
            tracing::info!(signal = name, "{first}");
            shutdown.cancel();
        } else {
            tracing::warn!(signal = name, "{second}");
        }
    }
}
