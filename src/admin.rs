//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/connections` and `POST /drain`, on
//! its own port; and [`client`], the other end of `POST /drain` (`wsbeat drain`).
//!
//! Kept off the client port so a load balancer or the internet never reaches it, and so scrapes
//! keep working while the client listener is saturated or draining. Bounded so that it can never
//! starve the data plane: one request per connection, `--admin-header-timeout` to send it, and
//! at most `--admin-max-connections` connections at once. `POST /drain` only asks for a drain;
//! the server runs it. It is accepted from loopback peers only (403 otherwise): the admin port
//! often listens on every interface for Prometheus, and no other Pod may drain this one
//! (linkerd2-proxy's `/shutdown` has the same rule).

pub mod client;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::Encoder;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::body::{ProxyBody, text_response};
use crate::metrics::Metrics;
use crate::sessions::Sessions;
use crate::shutdown::DrainRequests;

/// State the admin endpoints report.
pub struct AdminState {
    /// Metrics to expose.
    pub metrics: Arc<Metrics>,
    /// Live sessions for `/connections`.
    pub sessions: Arc<Sessions>,
    /// Where `POST /drain` sends its request.
    pub drain: DrainRequests,
}

impl AdminState {
    /// True while the proxy accepts connections (`Metrics::new` starts it at 1).
    pub fn is_ready(&self) -> bool {
        self.metrics.ready.get() > 0.0
    }

    /// A ready state over `metrics`, listing `sessions`, sending drain requests to `drain`.
    pub fn new(metrics: Arc<Metrics>, sessions: Arc<Sessions>, drain: DrainRequests) -> Self {
        AdminState {
            metrics,
            sessions,
            drain,
        }
    }

    /// Switches readiness: the `wsbeat_ready` gauge is the one record of it, so `/readyz` and
    /// the metric can never disagree.
    pub fn set_ready(&self, ready: bool) {
        self.metrics.ready.set(if ready { 1.0 } else { 0.0 });
    }
}

/// Bounds on the admin listener, so that it can never starve the data plane of descriptors.
#[derive(Clone, Copy, Debug)]
pub struct AdminLimits {
    /// Time a connection has to send its request head; a silent one is closed after it.
    pub header_timeout: Duration,
    /// Connections served at once. Past it, new ones wait in the listen backlog (holding no
    /// descriptor of ours) until a slot frees.
    pub max_connections: usize,
}

/// Serves admin requests until `cancel` fires, at most `limits.max_connections` at a time.
/// Each connection serves one request (no keep-alive), so a slot is held for one scrape, not
/// for as long as a client cares to idle.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    cancel: CancellationToken,
    limits: AdminLimits,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => return,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        tokio::spawn(serve_one(stream, peer, Arc::clone(&state), limits, permit));
    }
}

/// Pause after a failed admin accept (for example out of descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// One admin connection, holding its slot until it ends.
async fn serve_one(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<AdminState>,
    limits: AdminLimits,
    _slot: OwnedSemaphorePermit,
) {
    let svc = service_fn(move |req| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(route(&state, &req, peer)) }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), svc)
        .await;
    if let Err(e) = served {
        tracing::debug!(error = %e, "admin connection ended with an error");
    }
}

fn route(state: &AdminState, req: &Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
    if req.uri().path() == "/drain" {
        return drain(state, req.method(), peer);
    }
    if req.method() != Method::GET {
        return text_response(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match req.uri().path() {
        "/healthz" => text_response(StatusCode::OK, "ok\n".into()),
        "/readyz" if state.is_ready() => text_response(StatusCode::OK, "ready\n".into()),
        "/readyz" => text_response(StatusCode::SERVICE_UNAVAILABLE, "draining\n".into()),
        "/metrics" => metrics(state),
        "/connections" => connections(state, req.uri().query()),
        _ => text_response(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// `POST /drain`: asks for a drain, from a loopback peer only. 202 when asked (also when a
/// drain is already running: the second request then skips to its end, as a second signal
/// does), 403 from anywhere else, 405 for other methods.
fn drain(state: &AdminState, method: &Method, peer: SocketAddr) -> Response<ProxyBody> {
    if method != Method::POST {
        let mut resp = text_response(StatusCode::METHOD_NOT_ALLOWED, "POST only\n".into());
        resp.headers_mut()
            .insert(header::ALLOW, http::HeaderValue::from_static("POST"));
        return resp;
    }
    // An IPv4 peer of a dual-stack listener shows as ::ffff:127.0.0.1.
    if !peer.ip().to_canonical().is_loopback() {
        tracing::warn!(%peer, "POST /drain refused: only loopback peers may drain");
        return text_response(
            StatusCode::FORBIDDEN,
            "POST /drain is accepted from loopback only\n".into(),
        );
    }
    tracing::info!(%peer, "drain requested over POST /drain");
    state.drain.request();
    text_response(StatusCode::ACCEPTED, "draining\n".into())
}

/// Sessions listed by `/connections` when no `limit` is given.
const DEFAULT_CONNECTIONS_LIMIT: usize = 100;

/// `GET /connections?limit=N`: live sessions as JSON, newest first.
fn connections(state: &AdminState, query: Option<&str>) -> Response<ProxyBody> {
    let limit = query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("limit="))
        .map(str::parse::<usize>);
    let limit = match limit {
        None => DEFAULT_CONNECTIONS_LIMIT,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return text_response(
                StatusCode::BAD_REQUEST,
                "limit must be a whole number\n".into(),
            );
        }
    };
    let body = serde_json::json!({
        "total": state.sessions.len(),
        "sessions": state.sessions.list(limit),
    });
    let mut resp = text_response(StatusCode::OK, format!("{body}\n"));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn metrics(state: &AdminState) -> Response<ProxyBody> {
    let encoder = prometheus::TextEncoder::new();
    let mut body = Vec::new();
    if let Err(e) = encoder.encode(&state.metrics.gather(), &mut body) {
        return text_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding failed: {e}\n"),
        );
    }
    let mut resp = text_response(StatusCode::OK, String::from_utf8_lossy(&body).into_owned());
    if let Ok(v) = encoder.format_type().parse() {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}
