//! The HTTP side of the proxy: what happens to a client's request between hyper and the relay.
//!
//! A request is dispatched ([`dispatch`]) either as a WebSocket upgrade or as plain HTTP, since
//! legacy servers serve pages and long-polling fallbacks on the same port. Each job has its own
//! module:
//!
//! - [`error`]: [`ProxyError`], why a request could not be proxied, with its status, result
//!   and connect-error label; one response, one log line, one metric increment.
//! - [`context`]: [`ConnContext`], what is known about one client connection (peer, scheme,
//!   connection-limit permit), shared by its requests and the session it may become.
//! - [`dispatch`]: the entry point hyper calls for each request.
//! - [`validate`]: checks on the client's upgrade request (RFC 6455 4.2.1) and on the
//!   upstream's answer.
//! - [`upgrade`]: forwards a valid upgrade to the upstream and builds the client's 101.
//! - [`session`]: takes both upgraded connections over, runs the relay, records the outcome.
//! - [`connector`]: dials the upstream and opens an HTTP/1.1 connection on it.
//! - [`forward`]: reverse-proxies plain HTTP requests.
//! - [`headers`]: header rules shared by both paths (hop-by-hop, `Host`, `X-Forwarded-*`)
//!   and the request target on the upstream.
//!
//! The upstream handshake uses hyper's client rather than tungstenite's, which rejects answers
//! that legacy servers give (`Connection: keep-alive, Upgrade`, no subprotocol picked).
//! Transparency rules: end-to-end headers pass both ways; hop-by-hop headers (RFC 9110 7.6.1
//! and those named in `Connection`) do not; the proxy makes its own `Sec-WebSocket-Key` toward
//! the upstream and its own `Sec-WebSocket-Accept` toward the client; subprotocol and extension
//! negotiation passes through untouched, so permessage-deflate works end to end.
//!
//! Does not own: accepting connections and serving HTTP/1.1 on them (`server`), the socket
//! options and the connection type ([`crate::net`]), or the session's frames ([`crate::relay`]).

mod connector;
mod context;
mod dispatch;
mod error;
mod forward;
mod headers;
mod session;
mod upgrade;
mod validate;

use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::Semaphore;

use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::sessions::Sessions;
use crate::shutdown::DrainWatcher;
use crate::tls;

pub use context::{Admission, ConnContext, Scheme};
pub use error::ProxyError;

/// Everything a connection's requests need, shared by all connections.
pub struct Proxy {
    config: Config,
    metrics: Arc<Metrics>,
    /// The proxy's drain; sessions close with 1001 once it is going away.
    drain: DrainWatcher,
    /// Tracks upgraded sessions so shutdown can wait for them.
    tasks: TaskTracker,
    /// Live sessions, for `/connections`.
    live: Arc<Sessions>,
    /// Slots of `--max-connections`, one per client connection and its session.
    slots: Arc<Semaphore>,
    /// Slots for connections being answered 503 once `slots` are gone, so that refusing
    /// cannot run out of descriptors either.
    refusals: Arc<Semaphore>,
    /// TLS on `--listen`, when `--tls-cert` is given.
    client_tls: Option<Arc<tls::Acceptor>>,
    /// TLS toward a `wss://` or `https://` upstream.
    upstream_tls: Option<tls::Connector>,
}

/// Connections answered 503 at once when `--max-connections` is reached; beyond these, new
/// connections are closed unanswered. Counted in `net::RESERVED_FDS`.
const REFUSALS_AT_ONCE: usize = 64;

impl Proxy {
    /// A proxy for `config` that counts into `metrics`, lists its sessions in `live` and
    /// closes them as `drain` says.
    pub fn new(
        config: Config,
        metrics: Arc<Metrics>,
        live: Arc<Sessions>,
        drain: DrainWatcher,
    ) -> Self {
        Proxy {
            metrics,
            drain,
            tasks: TaskTracker::new(),
            live,
            slots: Arc::new(Semaphore::new(config.clients.max_connections)),
            refusals: Arc::new(Semaphore::new(REFUSALS_AT_ONCE)),
            config,
            client_tls: None,
            upstream_tls: None,
        }
    }

    /// The same proxy with TLS endpoints: `client` for `--listen`, `upstream` for the upstream.
    pub fn with_tls(
        mut self,
        client: Option<Arc<tls::Acceptor>>,
        upstream: Option<tls::Connector>,
    ) -> Self {
        self.client_tls = client;
        self.upstream_tls = upstream;
        self
    }

    /// TLS on `--listen`, if configured.
    pub fn tls_acceptor(&self) -> Option<&Arc<tls::Acceptor>> {
        self.client_tls.as_ref()
    }

    /// The metrics this proxy counts into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Takes a slot for a new client connection: admitted, over the limit (it is served, to
    /// be answered 503), or `None` when even the refusals are at their cap (close it).
    pub fn admit(&self) -> Option<Admission> {
        if let Ok(p) = Arc::clone(&self.slots).try_acquire_owned() {
            return Some(Admission::Admitted(p));
        }
        let refusal = Arc::clone(&self.refusals).try_acquire_owned().ok()?;
        Some(Admission::OverLimit(refusal))
    }

    /// `--allowed-origins`, lowercase; `None` when any origin may connect.
    fn allowed_origins(&self) -> Option<&[String]> {
        self.config.clients.allowed_origins.as_deref()
    }

    /// True when `--trusted-proxies` lists the peer, whose forwarded headers are then kept.
    fn trusts(&self, peer: IpAddr) -> bool {
        self.config
            .clients
            .trusted_proxies
            .iter()
            .any(|block| block.contains(peer))
    }

    /// The validated configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The drain every session listens to.
    pub fn drain(&self) -> &DrainWatcher {
        &self.drain
    }

    /// The upgraded sessions, for shutdown to close and wait for.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }
}
