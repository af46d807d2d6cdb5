//! The entry point hyper calls for each request on a client connection: an upgrade goes to
//! [`super::upgrade`], anything else to [`super::forward`]; a failure becomes its one response,
//! one log line and one metric.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::Proxy;
use super::context::ConnContext;
use super::validate::is_websocket_upgrade;
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
        let path = req.uri().path().to_owned();
        let result = if is_websocket_upgrade(req.headers()) {
            self.upgrade(req, &ctx, started).await
        } else {
            self.forward_http(req, &ctx).await
        };
        Ok(result.unwrap_or_else(|e| {
            let status = e.status().as_u16();
            tracing::warn!(client = %ctx.peer(), path, status, error = %e, "request failed");
            if let Some(kind) = e.connect_error() {
                self.metrics.connect_error(kind);
            }
            e.response()
        }))
    }
}
