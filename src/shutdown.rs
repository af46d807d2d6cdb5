//! The shutdown signal: a future that completes when the process is asked to stop.
//!
//! This module only turns SIGTERM (Kubernetes, systemd) and SIGINT (Ctrl-C) into one future and
//! logs which arrived. Draining sessions after that is the server's job, not this module's.

use tracing::{error, info, warn};

/// Completes on the first SIGTERM or SIGINT, logging which one arrived.
///
/// The handlers are installed when the future is first polled, so poll it (hand it to
/// `server::run`) before doing anything slow. If they cannot be installed, the error is logged
/// and the future falls back to [`tokio::signal::ctrl_c`]; if even that fails, it never
/// completes, because stopping at once would be worse than needing SIGKILL.
///
/// Must be polled inside a tokio runtime with the signal driver enabled.
pub async fn signal() {
    #[cfg(unix)]
    unix_signal().await;
    #[cfg(not(unix))]
    ctrl_c().await;
}

#[cfg(unix)]
async fn unix_signal() {
    use tokio::signal::unix::{SignalKind, signal};

    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            warn!(error = %e, "cannot install SIGTERM/SIGINT handlers; falling back to Ctrl-C only");
            return ctrl_c().await;
        }
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    info!(signal = name, "shutdown requested");
}

async fn ctrl_c() {
    match tokio::signal::ctrl_c().await {
        Ok(()) => info!(signal = "ctrl-c", "shutdown requested"),
        Err(e) => {
            error!(error = %e, "cannot listen for Ctrl-C either; only SIGKILL will stop wsbeat");
            std::future::pending::<()>().await;
        }
    }
}

/// The proxy-wide order to close every session: a flag that the relay can check on every
/// wake-up for the price of one atomic load, and a token whose future wakes the sessions that
/// are asleep. (Polling a cancellation future on every wake-up takes a lock each time.)
#[derive(Debug, Default)]
pub struct Drain {
    started: std::sync::atomic::AtomicBool,
    token: tokio_util::sync::CancellationToken,
}

impl Drain {
    /// Orders every session to close; the flag is set before anyone is woken.
    pub fn start(&self) {
        self.started
            .store(true, std::sync::atomic::Ordering::Release);
        self.token.cancel();
    }

    /// True once [`Drain::start`] was called.
    pub fn is_started(&self) -> bool {
        self.started.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The token, for tasks that simply wait for the drain.
    pub fn token(&self) -> &tokio_util::sync::CancellationToken {
        &self.token
    }
}
