//! The accept loop: per-connection tasks, the admin listener, and shutdown.
//!
//! `run` takes listeners the caller bound (tests bind port 0) and a stream of drain requests. A
//! connection's shape is `accept → socket options → TLS (with --tls-cert) → HTTP/1.1 (hyper) →
//! proxy::Proxy`, which spawns the upgraded session into a `TaskTracker` so shutdown can wait
//! for it. Serving is generic over the client's stream: anything that converts into a [`Conn`]
//! (plain TCP or a TLS stream) is served the same way and keeps the relay's unboxed fast path.
//! Per-connection errors never reach this loop; accept errors (for example running out of file descriptors)
//! back off instead of spinning.
//!
//! Shutdown is a drain in three phases, run here as the one holder of the [`DrainTrigger`]:
//! not ready for `--drain-delay` (readiness off, still accepting); going away for
//! `--shutdown-grace` (listener closed, every session closed with 1001, HTTP requests in flight
//! finish); deadline (the rest is dropped). A second request skips to the deadline. Each phase
//! is one log line with counts and a value of `wsbeat_drain_phase`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminLimits, AdminState};
use crate::config::{Config, ShutdownConfig};
use crate::metrics::Metrics;
use crate::net::{self, Conn};
use crate::proxy::{Admission, ConnContext, Proxy, Scheme};
use crate::sessions::Sessions;
use crate::shutdown::{self, DrainRequests, DrainTrigger, Phase};
use crate::tls::reload::ReloadConfig;
use crate::workers::Workers;
use crate::{Side, tls};

/// First pause after a failed accept; doubles up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest pause between failed accepts.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

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
    /// The TLS files changed between validation and start-up and no longer load.
    #[error("TLS setup failed: {0}")]
    Tls(#[from] tls::TlsError),
}

/// Serves clients on `listener` and the admin endpoints on `admin` until a drain is requested
/// (an item of `shutdown`, such as a signal, or `POST /drain`), then drains in three phases
/// and returns. A second request skips to the end.
///
/// # Errors
/// [`ServerError`] when start-up fails; per-connection failures are logged, not returned.
pub async fn run(
    listener: TcpListener,
    admin: TcpListener,
    config: Config,
    shutdown: impl Stream<Item = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let metrics = Arc::new(Metrics::new()?);
    let threads = config.process.worker_threads;
    let workers =
        Workers::start(threads).map_err(|source| ServerError::Workers { threads, source })?;
    let live = Arc::new(Sessions::default());
    let (requester, requests) = DrainRequests::channel();
    tokio::spawn(forward_requests(shutdown, requester.clone()));
    let state = Arc::new(AdminState::new(
        Arc::clone(&metrics),
        Arc::clone(&live),
        requester,
    ));
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
    let (client_tls, upstream_tls) = tls_endpoints(&config)?;
    if let Some(acceptor) = &client_tls {
        let reloader = acceptor.reloader(metrics.tls.clone());
        tokio::spawn(reloader.run(ReloadConfig::default(), admin_cancel.clone()));
    }
    let (trigger, watcher) = shutdown::channel();
    let settings = config.shutdown;
    let proxy = Proxy::new(config, metrics, Arc::clone(&live), watcher);
    let proxy = Arc::new(proxy.with_tls(client_tls, upstream_tls));
    let connections = TaskTracker::new();
    let mut drain = Drain {
        trigger,
        requests,
        settings,
        state: &state,
        proxy: &proxy,
        connections: &connections,
        live: &live,
        closed_cleanly: 0,
    };
    let skipped = {
        let accept = std::pin::pin!(accept_loop(&listener, &proxy, &connections, &workers));
        drain.serve_until_delay_ends(accept).await
    };
    drop(listener);
    if !skipped {
        drain.going_away().await;
    }
    drain.deadline();
    workers.stop().await;
    admin_cancel.cancel();
    Ok(())
}

/// The listener's TLS acceptor (with `--tls-cert`) and the upstream's TLS connector (for a
/// `wss://` or `https://` upstream), from files that `Config` already checked.
fn tls_endpoints(
    config: &Config,
) -> Result<(Option<Arc<tls::Acceptor>>, Option<tls::Connector>), tls::TlsError> {
    let acceptor = match &config.tls.listen {
        Some(paths) => Some(Arc::new(tls::Acceptor::load(paths)?)),
        None => None,
    };
    let up = &config.upstream.url;
    let connector = match up.tls {
        true => Some(tls::Connector::new(&config.tls.upstream, &up.host)?),
        false => None,
    };
    Ok((acceptor, connector))
}

/// Turns each item of `shutdown` into a drain request, until either side is gone.
async fn forward_requests(shutdown: impl Stream<Item = ()> + Send, requester: DrainRequests) {
    let mut shutdown = std::pin::pin!(shutdown);
    while shutdown.next().await.is_some() {
        if !requester.request() {
            return;
        }
    }
}

/// The drain sequence: the one holder of the [`DrainTrigger`], the listener for further
/// requests, and what each phase does to the parts the server owns. Sessions and HTTP
/// connections react to the phases by themselves, through their watchers.
struct Drain<'a> {
    trigger: DrainTrigger,
    requests: mpsc::UnboundedReceiver<()>,
    settings: ShutdownConfig,
    state: &'a AdminState,
    proxy: &'a Proxy,
    connections: &'a TaskTracker,
    live: &'a Sessions,
    /// Sessions that ended between the 1001 and the deadline.
    closed_cleanly: usize,
}

impl Drain<'_> {
    /// Runs `accept` until the first drain request, then for the drain delay with readiness
    /// off (phase 1). The caller closes the listener next. Returns true when a second request
    /// cut the delay short: skip to the deadline.
    async fn serve_until_delay_ends(
        &mut self,
        mut accept: Pin<&mut impl Future<Output = ()>>,
    ) -> bool {
        tokio::select! {
            () = accept.as_mut() => {}
            Some(()) = self.requests.recv() => {}
        }
        self.enter(Phase::NotReady);
        tracing::info!(
            phase = Phase::NotReady.as_str(),
            sessions_open = self.live.len(),
            drain_delay_ms = self.settings.drain_delay.as_millis() as u64,
            "drain phase 1: not ready, still accepting until the drain delay ends"
        );
        tokio::select! {
            () = accept => false,
            () = tokio::time::sleep(self.settings.drain_delay) => false,
            Some(()) = self.requests.recv() => {
                tracing::info!("second drain request: skipping to the deadline");
                true
            }
        }
    }

    /// Phase 2: every session and connection is told to go away (the listener is closed
    /// already), then gets up to the grace to finish. Returns early on a second request.
    async fn going_away(&mut self) {
        // Counted first: once the phase is entered, sessions on the relay threads start closing.
        let sessions_open = self.live.len();
        self.enter(Phase::GoingAway);
        tracing::info!(
            phase = Phase::GoingAway.as_str(),
            sessions_open,
            http_connections = self.connections.len(),
            grace_ms = self.settings.grace.as_millis() as u64,
            "drain phase 2: listener closed, closing every session with 1001"
        );
        self.connections.close();
        self.proxy.tasks().close();
        let all_done = async {
            self.connections.wait().await;
            self.proxy.tasks().wait().await;
        };
        tokio::select! {
            () = all_done => {}
            () = tokio::time::sleep(self.settings.grace) => {}
            Some(()) = self.requests.recv() => {
                tracing::info!("second drain request: skipping to the deadline");
            }
        }
        self.closed_cleanly = sessions_open.saturating_sub(self.live.len());
    }

    /// Phase 3: whatever is still open is dropped (the caller stops the relay threads).
    fn deadline(&mut self) {
        self.enter(Phase::Deadline);
        tracing::info!(
            phase = Phase::Deadline.as_str(),
            sessions_closed_cleanly = self.closed_cleanly,
            sessions_dropped = self.live.len(),
            http_connections_dropped = self.connections.len(),
            "drain phase 3: done; dropping what is left and exiting"
        );
    }

    /// Moves to `phase` (once) and applies it to the server's own parts: readiness turns off
    /// as soon as the drain begins, and the phase gauge follows.
    fn enter(&self, phase: Phase) {
        if !self.trigger.advance(phase) {
            return;
        }
        self.state.set_ready(false);
        self.state
            .metrics
            .drain_phase
            .set(i64::from(phase.number()));
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

/// One accepted TCP connection on its relay thread: socket options, TLS when `--listen` speaks
/// it, then HTTP. The client has `--handshake-timeout` for all of it, the TLS handshake
/// included, so a client that opens TCP and sends nothing is cut like any slowloris.
async fn accept_tcp(stream: TcpStream, peer: SocketAddr, admission: Admission, proxy: Arc<Proxy>) {
    if let Err(e) = net::configure_client(&stream) {
        tracing::debug!(%peer, error = %e, "could not set client socket options");
    }
    let deadline = Instant::now() + proxy.config().clients.handshake_timeout;
    let Some(acceptor) = proxy.tls_acceptor().cloned() else {
        let ctx = ConnContext::new(peer, Scheme::Http, admission);
        return serve_connection(stream, ctx, proxy, deadline).await;
    };
    let Some(tls) = accept_tls(&acceptor, stream, peer, deadline, &proxy).await else {
        return;
    };
    let ctx = ConnContext::new(peer, Scheme::Https, admission);
    serve_connection(tls, ctx, proxy, deadline).await;
}

/// The TLS handshake of a client on `--listen`, bounded by `deadline` and cut by a drain. A
/// failure is one debug line and one count, never more: scanners and confused clients would
/// otherwise flood the log.
async fn accept_tls(
    acceptor: &tls::Acceptor,
    stream: TcpStream,
    peer: SocketAddr,
    deadline: Instant,
    proxy: &Proxy,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let handshake = tokio::time::timeout_at(deadline, acceptor.accept(stream));
    let result = tokio::select! {
        result = handshake => result.unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())),
        () = proxy.drain().going_away() => return None,
    };
    match result {
        Ok(tls) => Some(tls),
        Err(error) => {
            let reason = tls::classify(&error);
            tracing::debug!(%peer, reason = reason.as_str(), %error, "client TLS handshake failed");
            proxy.metrics().tls.handshake_error(Side::Client, reason);
            None
        }
    }
}

/// Serves HTTP/1.1 on one client connection until it upgrades, closes or the proxy shuts down.
/// The request headers must be in by `deadline`.
///
/// The stream is wrapped in a [`Conn`] before hyper sees it, so that the session takes it back
/// unboxed after the upgrade, whatever type it was.
async fn serve_connection<S>(stream: S, ctx: ConnContext, proxy: Arc<Proxy>, deadline: Instant)
where
    S: Into<Conn>,
{
    let peer = ctx.peer();
    let ctx = Arc::new(ctx);
    let drain = proxy.drain().clone();
    let header_timeout = deadline.saturating_duration_since(Instant::now());
    let max_head = proxy.config().clients.max_request_header_size;
    let svc = service_fn(move |req| Arc::clone(&proxy).handle(req, Arc::clone(&ctx)));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
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
