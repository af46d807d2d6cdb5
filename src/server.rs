//! The accept loop: per-connection tasks, the admin listener, and shutdown.
//!
//! `run` takes listeners the caller bound (tests bind port 0) and a shutdown future. A
//! connection's shape is `accept → socket options → HTTP/1.1 (hyper) → proxy::Proxy`, which
//! spawns the upgraded session into a `TaskTracker` so shutdown can wait for it. Serving is
//! generic over the client's stream: anything that converts into a [`Conn`] (plain TCP today, a
//! TLS stream next) is served the same way and keeps the relay's unboxed fast path. Per-connection
//! errors never reach this loop; accept errors (for example running out of file descriptors)
//! back off instead of spinning.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::net::{self, Conn};
use crate::proxy::{ConnContext, Proxy, Scheme};
use crate::sessions::Sessions;
use crate::workers::Workers;

/// First pause after a failed accept; doubles up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest pause between failed accepts.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Extra time, beyond `--close-timeout`, that shutdown waits for sessions to finish.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(1);

/// Errors that stop the server.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The metrics registry could not be built.
    #[error("metrics setup failed: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The relay threads could not be started.
    #[error("cannot start {threads} relay threads: {source}")]
    Workers {
        /// How many were asked for.
        threads: usize,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Serves clients on `listener` and the admin endpoints on `admin` until `shutdown` completes,
/// then closes every session with 1001 and waits (bounded) for them.
///
/// # Errors
/// [`ServerError`] when start-up fails; per-connection failures are logged, not returned.
pub async fn run(
    listener: TcpListener,
    admin: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let metrics = Arc::new(Metrics::new()?);
    let threads = config.process.worker_threads;
    let workers =
        Workers::start(threads).map_err(|source| ServerError::Workers { threads, source })?;
    let live = Arc::new(Sessions::default());
    let state = Arc::new(AdminState::new(Arc::clone(&metrics), Arc::clone(&live)));
    let admin_cancel = CancellationToken::new();
    tokio::spawn(admin::serve(
        admin,
        Arc::clone(&state),
        admin_cancel.clone(),
    ));
    let proxy = Arc::new(Proxy::new(config, metrics, live));
    let connections = TaskTracker::new();
    tokio::select! {
        () = accept_loop(&listener, &proxy, &connections, &workers) => {}
        () = shutdown => tracing::info!("shutting down: closing sessions with 1001"),
    }
    drop(listener);
    drain(&state, &proxy, &connections, workers).await;
    admin_cancel.cancel();
    Ok(())
}

/// Shutdown after the accept loop stopped: readiness off, every session told 1001 (the
/// relay's cancel path), then a bounded wait for connections and sessions to finish, and the
/// relay threads stopped (dropping whatever was still running on them).
async fn drain(state: &AdminState, proxy: &Proxy, connections: &TaskTracker, workers: Workers) {
    state.set_ready(false);
    proxy.drain().start();
    connections.close();
    proxy.tasks().close();
    let deadline = proxy.config().relay.close_timeout + SHUTDOWN_SLACK;
    let drained = tokio::time::timeout(deadline, async {
        connections.wait().await;
        proxy.tasks().wait().await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            ?deadline,
            "sessions still open at the shutdown deadline; dropping them"
        );
    }
    workers.stop().await;
}

async fn accept_loop(
    listener: &TcpListener,
    proxy: &Arc<Proxy>,
    connections: &TaskTracker,
    workers: &Workers,
) {
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                hand_over(stream, peer, proxy, connections, workers);
            }
            Err(e) => {
                tracing::warn!(error = %e, ?backoff, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

/// Moves an accepted connection to the next relay thread, where it is registered with that
/// thread's event loop and served there.
fn hand_over(
    stream: TcpStream,
    peer: SocketAddr,
    proxy: &Arc<Proxy>,
    connections: &TaskTracker,
    workers: &Workers,
) {
    let std_stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot hand the connection to a relay thread");
            return;
        }
    };
    let proxy = Arc::clone(proxy);
    workers.spawn(connections.track_future(async move {
        match TcpStream::from_std(std_stream) {
            Ok(stream) => accept_tcp(stream, peer, proxy).await,
            Err(e) => tracing::warn!(%peer, error = %e, "cannot register the connection"),
        }
    }));
}

/// One accepted TCP connection on its relay thread: socket options, then HTTP. (TLS goes
/// between the two, on the same socket.)
async fn accept_tcp(stream: TcpStream, peer: SocketAddr, proxy: Arc<Proxy>) {
    if let Err(e) = net::configure_client(&stream) {
        tracing::debug!(%peer, error = %e, "could not set client socket options");
    }
    let ctx = ConnContext::new(peer, Scheme::Http, None);
    serve_connection(stream, ctx, proxy).await;
}

/// Serves HTTP/1.1 on one client connection until it upgrades, closes or the proxy shuts down.
///
/// The stream is wrapped in a [`Conn`] before hyper sees it, so that the session takes it back
/// unboxed after the upgrade, whatever type it was.
async fn serve_connection<S>(stream: S, ctx: ConnContext, proxy: Arc<Proxy>)
where
    S: Into<Conn>,
{
    let peer = ctx.peer();
    let ctx = Arc::new(ctx);
    let drain = Arc::clone(proxy.drain());
    let handshake_timeout = proxy.config().clients.handshake_timeout;
    let svc = service_fn(move |req| Arc::clone(&proxy).handle(req, Arc::clone(&ctx)));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout)
        .serve_connection(TokioIo::new(stream.into()), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = drain.token().cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "client HTTP connection ended with an error");
    }
}
