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

use crate::admin::{self, AdminLimits, AdminState};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::net::{self, Conn};
use crate::proxy::{Admission, ConnContext, Proxy, Scheme};
use crate::sessions::Sessions;
use crate::shutdown::{self, DrainTrigger, Phase};
use crate::workers::Workers;

/// First pause after a failed accept; doubles up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest pause between failed accepts.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Extra time, beyond `--close-timeout`, that shutdown waits for sessions to finish: their
/// close handshakes have `--close-timeout`, and then a moment to shut their sockets down.
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
/// then drains: readiness off, the listener closed, every session closed with 1001, and a
/// bounded wait for them before the rest is dropped.
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
    let admin_limits = AdminLimits {
        header_timeout: config.listen.admin_header_timeout,
        max_connections: config.listen.admin_max_connections,
    };
    tokio::spawn(admin::serve(
        admin,
        Arc::clone(&state),
        admin_cancel.clone(),
        admin_limits,
    ));
    let (trigger, watcher) = shutdown::channel();
    let proxy = Arc::new(Proxy::new(config, metrics, live, watcher));
    let connections = TaskTracker::new();
    tokio::select! {
        () = accept_loop(&listener, &proxy, &connections, &workers) => {}
        () = shutdown => tracing::info!("shutting down: closing sessions with 1001"),
    }
    let drain = Drain {
        trigger,
        state: &state,
        proxy: &proxy,
        connections: &connections,
    };
    drain.enter(Phase::NotReady);
    drop(listener);
    drain.going_away().await;
    drain.enter(Phase::Deadline);
    workers.stop().await;
    admin_cancel.cancel();
    Ok(())
}

/// The drain sequence: the one holder of the [`DrainTrigger`], and what each phase does to the
/// parts the server owns. Sessions and HTTP connections react to the phases by themselves,
/// through their watchers.
struct Drain<'a> {
    trigger: DrainTrigger,
    state: &'a AdminState,
    proxy: &'a Proxy,
    connections: &'a TaskTracker,
}

impl Drain<'_> {
    /// Moves to `phase` (once; later calls for it are no-ops) and applies it to the server's
    /// own parts: readiness turns off as soon as the drain begins.
    fn enter(&self, phase: Phase) {
        if !self.trigger.advance(phase) {
            return;
        }
        if phase >= Phase::NotReady {
            self.state.set_ready(false);
        }
    }

    /// Tells every session and connection to go away (the listener must be closed first), then
    /// waits for them, at most `--close-timeout` plus [`SHUTDOWN_SLACK`].
    async fn going_away(&self) {
        self.enter(Phase::GoingAway);
        self.connections.close();
        self.proxy.tasks().close();
        let deadline = self.proxy.config().relay.close_timeout + SHUTDOWN_SLACK;
        let drained = tokio::time::timeout(deadline, async {
            self.connections.wait().await;
            self.proxy.tasks().wait().await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                ?deadline,
                "sessions still open at the shutdown deadline; dropping them"
            );
        }
    }
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
                match proxy.admit() {
                    Some(admission) => {
                        hand_over(stream, peer, admission, proxy, connections, workers);
                    }
                    // Even the 503s are at their cap: closing is all that is affordable.
                    None => drop(stream),
                }
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
    admission: Admission,
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
            Ok(stream) => accept_tcp(stream, peer, admission, proxy).await,
            Err(e) => tracing::warn!(%peer, error = %e, "cannot register the connection"),
        }
    }));
}

/// One accepted TCP connection on its relay thread: socket options, then HTTP. (TLS goes
/// between the two, on the same socket.)
async fn accept_tcp(stream: TcpStream, peer: SocketAddr, admission: Admission, proxy: Arc<Proxy>) {
    if let Err(e) = net::configure_client(&stream) {
        tracing::debug!(%peer, error = %e, "could not set client socket options");
    }
    let ctx = ConnContext::new(peer, Scheme::Http, admission);
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
    let drain = proxy.drain().clone();
    let handshake_timeout = proxy.config().clients.handshake_timeout;
    let max_head = proxy.config().clients.max_request_header_size;
    let svc = service_fn(move |req| Arc::clone(&proxy).handle(req, Arc::clone(&ctx)));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout)
        // A head that does not fit is answered 431 by hyper (its minimum is 8 KiB, which the
        // configuration enforces).
        .max_buf_size(max_head)
        .serve_connection(TokioIo::new(stream.into()), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = drain.going_away() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "client HTTP connection ended with an error");
    }
}
