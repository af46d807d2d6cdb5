//! A WebSocket upgrade: validate the client's request, forward it to the upstream with our own
//! key, check the answer, send the client its 101, and start the session.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};

use super::Proxy;
use super::context::ConnContext;
use super::error::ProxyError;
use super::forward::relay_response;
use super::headers::end_to_end;
use super::validate::{accepts_key, check_origin, validate_upgrade};
use crate::body::{self, ProxyBody};
use crate::outcome::ConnectionResult;

impl Proxy {
    /// Handles a WebSocket upgrade. Its result is counted here when it succeeds or the upstream
    /// refuses, and by the dispatcher when it fails.
    pub(super) async fn upgrade(
        self: &Arc<Self>,
        mut req: Request<Incoming>,
        ctx: &Arc<ConnContext>,
        started: Instant,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let client_key = validate_upgrade(&req)?;
        check_origin(req.headers(), self.allowed_origins())?;
        let client_upgrade = hyper::upgrade::on(&mut req);
        let key = generate_key();
        let upstream_req = self.upstream_upgrade_request(&req, ctx, &key);
        let mut resp = self.exchange(upstream_req).await?;
        let path = kept_path(req.uri().path());
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            self.metrics
                .connection(ConnectionResult::RejectedByUpstream);
            let status = resp.status().as_u16();
            tracing::info!(client = %ctx.peer(), path, status, "upstream refused the upgrade");
            return Ok(relay_response(resp));
        }
        if !accepts_key(resp.headers(), &key) {
            return Err(ProxyError::BadAccept);
        }
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let extensions = resp
            .headers()
            .get(header::SEC_WEBSOCKET_EXTENSIONS)
            .is_some_and(|v| !v.as_bytes().iter().all(u8::is_ascii_whitespace));
        let reply = switching_protocols(resp.headers(), &client_key);
        self.metrics.connection(ConnectionResult::Upgraded);
        self.metrics
            .handshake_duration
            .observe(started.elapsed().as_secs_f64());
        let this = Arc::clone(self);
        let ctx = Arc::clone(ctx);
        // The session's own future is the task: a wrapping `async` block would keep a second
        // copy of its arguments for the session's whole life.
        self.tasks
            .spawn(this.session(client_upgrade, upstream_upgrade, ctx, path, extensions));
        Ok(reply)
    }

    /// The upstream's upgrade request: client headers minus hop-by-hop, our key, our Host.
    fn upstream_upgrade_request(
        &self,
        req: &Request<Incoming>,
        ctx: &ConnContext,
        key: &str,
    ) -> Request<ProxyBody> {
        let mut headers = self.forwarded_headers(req.headers(), ctx);
        headers.remove(header::SEC_WEBSOCKET_KEY);
        headers.remove(header::SEC_WEBSOCKET_ACCEPT);
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        if let Ok(v) = HeaderValue::from_str(key) {
            headers.insert(header::SEC_WEBSOCKET_KEY, v);
        }
        let mut out = Request::new(body::empty());
        *out.method_mut() = Method::GET;
        *out.uri_mut() = self.upstream_uri(req.uri());
        *out.headers_mut() = headers;
        out
    }
}

/// Bytes of the request path a session keeps for its whole life (its log lines and its
/// `/connections` entry), and that a failed request's log line shows. A path may be as long as `--max-request-header-size` allows, and a
/// session may live for days; the upstream got the whole path already.
const KEPT_PATH_BYTES: usize = 256;

/// The first [`KEPT_PATH_BYTES`] of `path`, marked with `…` when cut.
pub(super) fn kept_path(path: &str) -> String {
    if path.len() <= KEPT_PATH_BYTES {
        return path.to_owned();
    }
    let mut end = KEPT_PATH_BYTES;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &path[..end])
}

/// The 101 for the client: the upstream's end-to-end headers (subprotocol, extensions,
/// Set-Cookie …) and an accept value computed for the client's key.
fn switching_protocols(upstream: &HeaderMap, client_key: &HeaderValue) -> Response<ProxyBody> {
    let mut headers = end_to_end(upstream);
    headers.remove(header::SEC_WEBSOCKET_ACCEPT);
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(client_key.as_bytes())) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *resp.headers_mut() = headers;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_path_is_kept_as_a_bounded_prefix() {
        let long = format!("/{}", "a".repeat(60_000));
        let kept = kept_path(&long);
        assert!(
            kept.len() <= KEPT_PATH_BYTES + '…'.len_utf8(),
            "{}",
            kept.len()
        );
        assert!(long.starts_with(kept.trim_end_matches('…')));
        assert_eq!(kept_path("/short"), "/short");
    }

    #[test]
    fn the_101_carries_upstream_choices_and_our_accept() {
        let mut up = HeaderMap::new();
        up.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("chat"),
        );
        up.insert(header::SET_COOKIE, HeaderValue::from_static("s=1"));
        up.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_static("for-our-key"),
        );
        let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        let resp = switching_protocols(&up, &key);
        let h = resp.headers();
        assert_eq!(
            h[header::SEC_WEBSOCKET_ACCEPT],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(h[header::SEC_WEBSOCKET_PROTOCOL], "chat");
        assert_eq!(h[header::SET_COOKIE], "s=1");
    }
}
