//! Turning SIGINT and SIGTERM into a cancellation every Chorus binary can wait on.

use tokio_util::sync::CancellationToken;

/// Cancels `shutdown` on SIGINT (Ctrl-C) or SIGTERM.
pub async fn on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown signal received");
    shutdown.cancel();
}
