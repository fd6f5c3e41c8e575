//! Graceful node shutdown (the kubelet's `nodeshutdown` manager): on SIGTERM or SIGINT stop
//! admitting pods, stop the running ones within their grace periods (bounded by
//! `--shutdown-grace-period`), report the node NotReady, and return so the process exits 0.

use tokio::signal::unix::{SignalKind, signal};

/// The Ready condition's message while shutting down, as the kubelet words it.
pub const SHUTDOWN_MESSAGE: &str = "node is shutting down";

/// Installs SIGTERM and SIGINT handlers now and returns a future that resolves with the name
/// of the first of them to arrive. Must be called inside a tokio runtime.
///
/// # Errors
/// If the signal handlers cannot be installed (the process is out of file descriptors).
pub fn signalled() -> std::io::Result<impl Future<Output = &'static str>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}
