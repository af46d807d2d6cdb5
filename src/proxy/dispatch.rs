//! The entry point hyper calls for each request on a client connection. Rules that hold for
//! every request come first (the connection limit, no `CONNECT`, no dot segments in the path);
//! then an upgrade goes to [`super::upgrade`], anything else to [`super::forward`]. A failure
//! becomes its one response, one log line and one metric.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::Proxy;
use super::context::ConnContext;
use super::error::ProxyError;
use super::upgrade::kept_path;
use super::validate::{check_path, is_websocket_upgrade};
use crate::body::ProxyBody;

impl Proxy {
    /// Serves one request from the connection `ctx` describes: a WebSocket upgrade or a plain
    /// HTTP request.
    ///
    /// # Errors
    /// None: every failure is answered with its own status (see [`super::ProxyError`]).
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        ctx: Arc<ConnContext>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let started = Instant::now();
        let upgrade = is_websocket_upgrade(req.headers());
        let path = kept_path(req.uri().path());
        let result = match admit(&req, &ctx) {
            Err(e) => Err(e),
            Ok(()) if upgrade => self.upgrade(req, &ctx, started).await,
            Ok(()) => self.forward_http(req, &ctx).await,
        };
        Ok(result.unwrap_or_else(|e| self.on_error(&e, upgrade, &ctx, &path)))
    }

    /// One log line, the metrics and the response for a failed request.
    fn on_error(
        &self,
        e: &ProxyError,
        upgrade: bool,
        ctx: &ConnContext,
        path: &str,
    ) -> Response<ProxyBody> {
        let status = e.status().as_u16();
        let client = ctx.peer();
        if matches!(e, ProxyError::OverLimit) {
            // Refusals come in floods exactly when the proxy is busiest: keep them off `warn`.
            tracing::debug!(%client, path, status, error = %e, "request refused");
        } else {
            tracing::warn!(%client, path, status, error = %e, "request failed");
        }
        if upgrade || matches!(e, ProxyError::OverLimit) {
            self.metrics.connection(e.connection_result());
        }
        if let Some(kind) = e.connect_error() {
            self.metrics.connect_error(kind);
        }
        e.response()
    }
}

/// Rules every request must pass before anything is dialled.
fn admit<B>(req: &Request<B>, ctx: &ConnContext) -> Result<(), ProxyError> {
    if ctx.is_over_limit() {
        return Err(ProxyError::OverLimit);
    }
    if req.method() == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed);
    }
    check_path(req.uri().path())
}
