//! The HTTP side: validates a client's upgrade, forwards it to the upstream, answers the client,
//! and hands both upgraded connections to the relay. Requests without an upgrade are
//! reverse-proxied as plain HTTP, since legacy servers serve pages and long-polling fallbacks on
//! the same port.
//!
//! The upstream handshake uses hyper's client rather than tungstenite's, which rejects answers
//! that legacy servers give (`Connection: keep-alive, Upgrade`, no subprotocol picked).
//! Transparency rules: end-to-end headers pass both ways; hop-by-hop headers (RFC 9110 7.6.1
//! and those named in `Connection`) do not; the proxy makes its own `Sec-WebSocket-Key` toward
//! the upstream and its own `Sec-WebSocket-Accept` toward the client; subprotocol and extension
//! negotiation passes through untouched, so permessage-deflate works end to end.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1 as client_http1;
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::{ConnectError, ConnectionResult, Metrics, SessionGuard};
use crate::net::{self, Conn, DialError};
use crate::relay::{self, Peer, RelayConfig, SessionContext};
use crate::sessions::Sessions;
use crate::shutdown::Drain;

/// Body of every response the proxy sends: the upstream's streamed body, or a short text.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Why a request could not be proxied. Each maps to one response, one log line and one metric.
#[derive(Debug, Error)]
pub enum HandshakeError {
    /// The client's upgrade request is malformed.
    #[error("bad WebSocket upgrade: {0}")]
    BadRequest(&'static str),
    /// The client asked for a WebSocket version other than 13.
    #[error("unsupported Sec-WebSocket-Version (only 13 is supported)")]
    UnsupportedVersion,
    /// Connecting to the upstream failed.
    #[error("upstream unreachable: {0}")]
    Unreachable(#[from] DialError),
    /// The upstream's HTTP exchange failed.
    #[error("upstream HTTP error: {0}")]
    UpstreamHttp(#[from] hyper::Error),
    /// The upstream answered 101 with a wrong or missing `Sec-WebSocket-Accept`.
    #[error("upstream sent an invalid Sec-WebSocket-Accept")]
    BadAccept,
    /// Connecting and handshaking took longer than `--connect-timeout`.
    #[error("upstream did not answer within the connect timeout")]
    Timeout,
}

impl HandshakeError {
    /// The HTTP status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            HandshakeError::BadRequest(_) => StatusCode::BAD_REQUEST,
            HandshakeError::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            HandshakeError::Unreachable(_)
            | HandshakeError::UpstreamHttp(_)
            | HandshakeError::BadAccept => StatusCode::BAD_GATEWAY,
            HandshakeError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn connection_result(&self) -> ConnectionResult {
        match self {
            HandshakeError::BadRequest(_) | HandshakeError::UnsupportedVersion => {
                ConnectionResult::BadRequest
            }
            HandshakeError::Timeout => ConnectionResult::UpstreamTimeout,
            _ => ConnectionResult::UpstreamUnreachable,
        }
    }

    fn connect_error(&self) -> Option<ConnectError> {
        match self {
            HandshakeError::Unreachable(e) => Some(e.kind()),
            HandshakeError::UpstreamHttp(_) | HandshakeError::BadAccept => {
                Some(ConnectError::Handshake)
            }
            HandshakeError::Timeout => Some(ConnectError::Timeout),
            _ => None,
        }
    }

    /// The response for this error: a one-line text body.
    fn response(&self) -> Response<ProxyBody> {
        let mut resp = text_response(self.status(), format!("wsbeat: {self}\n"));
        if matches!(self, HandshakeError::UnsupportedVersion) {
            resp.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        resp
    }
}

/// Everything a connection's requests need, shared by all connections.
pub struct Proxy {
    /// Validated configuration.
    pub config: Config,
    /// Metrics of this proxy instance.
    pub metrics: Arc<Metrics>,
    /// Started when the proxy shuts down; sessions then close with 1001.
    pub drain: Arc<Drain>,
    /// Tracks upgraded sessions so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Live sessions, for `/connections`.
    pub live: Arc<Sessions>,
}

impl Proxy {
    fn relay_config(&self) -> RelayConfig {
        RelayConfig {
            client: self.config.client_heartbeat,
            upstream: self.config.upstream_heartbeat,
            close_timeout: self.config.close_timeout,
            max_frame_size: self.config.max_frame_size,
        }
    }

    /// Serves one request from `client`: a WebSocket upgrade or a plain HTTP request.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        client: SocketAddr,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let started = Instant::now();
        let path = req.uri().path().to_owned();
        let result = if is_websocket_upgrade(req.headers()) {
            self.upgrade(req, client, started).await
        } else {
            self.forward_http(req, client).await
        };
        Ok(result.unwrap_or_else(|e| {
            tracing::warn!(%client, path, status = e.status().as_u16(), error = %e, "request failed");
            if let Some(kind) = e.connect_error() {
                self.metrics.connect_error(kind);
            }
            e.response()
        }))
    }

    /// Handles a WebSocket upgrade: validate, forward, answer, and start the session.
    async fn upgrade(
        self: &Arc<Self>,
        req: Request<Incoming>,
        client: SocketAddr,
        started: Instant,
    ) -> Result<Response<ProxyBody>, HandshakeError> {
        let result = self.try_upgrade(req, client, started).await;
        if let Err(e) = &result {
            self.metrics.connection(e.connection_result());
        }
        result
    }

    async fn try_upgrade(
        self: &Arc<Self>,
        mut req: Request<Incoming>,
        client: SocketAddr,
        started: Instant,
    ) -> Result<Response<ProxyBody>, HandshakeError> {
        let client_key = validate_upgrade(&req)?;
        let client_upgrade = hyper::upgrade::on(&mut req);
        let key = generate_key();
        let upstream_req = self.upstream_upgrade_request(&req, client, &key);
        let mut resp = self.exchange(upstream_req).await?;
        let path = req.uri().path().to_owned();
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            self.metrics
                .connection(ConnectionResult::RejectedByUpstream);
            let status = resp.status().as_u16();
            tracing::info!(%client, path, status, "upstream refused the upgrade");
            return Ok(relay_response(resp));
        }
        if !accepts_key(resp.headers(), &key) {
            return Err(HandshakeError::BadAccept);
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
        self.tasks.spawn(async move {
            this.session(client_upgrade, upstream_upgrade, client, path, extensions)
                .await;
        });
        Ok(reply)
    }

    /// Waits for both upgrades, then relays until the session ends, and records its outcome.
    async fn session(
        self: Arc<Self>,
        client_upgrade: hyper::upgrade::OnUpgrade,
        upstream_upgrade: hyper::upgrade::OnUpgrade,
        client: SocketAddr,
        path: String,
        extensions: bool,
    ) {
        let (client_io, upstream_io) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(%client, path, error = %e, "upgrade did not complete");
                return;
            }
        };
        let guard = SessionGuard::new(&self.metrics);
        let registration = self.live.register(client, path.clone());
        let (client_io, client_ahead) = Conn::from_upgraded(client_io);
        let (upstream_io, upstream_ahead) = Conn::from_upgraded(upstream_io);
        tracing::debug!(%client, path, "session started");
        let outcome = relay::run(
            Peer {
                io: client_io,
                read_ahead: client_ahead,
            },
            Peer {
                io: upstream_io,
                read_ahead: upstream_ahead,
            },
            SessionContext {
                cfg: self.relay_config(),
                drain: Arc::clone(&self.drain),
                metrics: Arc::clone(&self.metrics),
                info: Arc::clone(registration.info()),
                extensions,
            },
        )
        .await;
        tracing::info!(
            %client,
            path,
            duration_ms = guard.age().as_millis() as u64,
            initiator = outcome.initiator.as_str(),
            reason = outcome.reason.as_str(),
            code = outcome.code,
            detail = outcome.detail,
            "session ended"
        );
        guard.finish(&outcome);
    }

    /// Dials the upstream and sends `req`, all within `--connect-timeout`.
    async fn exchange(
        &self,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, HandshakeError> {
        let attempt = async {
            let mut sender = self.connect().await?;
            Ok(sender.send_request(req).await?)
        };
        tokio::time::timeout(self.config.connect_timeout, attempt)
            .await
            .unwrap_or(Err(HandshakeError::Timeout))
    }

    /// Opens an HTTP/1.1 connection to the upstream, with upgrades enabled.
    async fn connect(&self) -> Result<client_http1::SendRequest<ProxyBody>, HandshakeError> {
        let up = &self.config.upstream;
        let tcp = net::dial(&up.host, up.port, self.config.upstream_tcp_user_timeout).await?;
        let (sender, conn) = client_http1::Builder::new()
            .title_case_headers(true)
            .handshake(TokioIo::new(tcp))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream HTTP connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Reverse-proxies a plain HTTP request, streaming bodies both ways. Only the connect is
    /// bounded by `--connect-timeout`: long-polling responses may take as long as they like.
    async fn forward_http(
        &self,
        req: Request<Incoming>,
        client: SocketAddr,
    ) -> Result<Response<ProxyBody>, HandshakeError> {
        let mut sender = tokio::time::timeout(self.config.connect_timeout, self.connect())
            .await
            .unwrap_or(Err(HandshakeError::Timeout))?;
        let (parts, body) = req.into_parts();
        let mut out = Request::builder()
            .method(parts.method.clone())
            .uri(self.upstream_uri(&parts.uri))
            .body(body.boxed())
            .map_err(|_| HandshakeError::BadRequest("invalid request target"))?;
        *out.headers_mut() = self.forwarded_headers(&parts.headers, client);
        let resp = sender.send_request(out).await?;
        self.metrics.http_request(resp.status().as_u16());
        Ok(relay_response(resp))
    }

    /// The upstream's upgrade request: client headers minus hop-by-hop, our key, our Host.
    fn upstream_upgrade_request(
        &self,
        req: &Request<Incoming>,
        client: SocketAddr,
        key: &str,
    ) -> Request<ProxyBody> {
        let mut headers = self.forwarded_headers(req.headers(), client);
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
        let mut out = Request::new(empty_body());
        *out.method_mut() = Method::GET;
        *out.uri_mut() = self.upstream_uri(req.uri());
        *out.headers_mut() = headers;
        out
    }

    /// The request target on the upstream: base path joined with the client's path and query.
    fn upstream_uri(&self, uri: &http::Uri) -> http::Uri {
        let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
        self.config
            .upstream
            .request_path(pq)
            .parse()
            .unwrap_or_else(|_| http::Uri::from_static("/"))
    }

    /// End-to-end request headers plus `Host` and the `X-Forwarded-*` family.
    fn forwarded_headers(&self, incoming: &HeaderMap, client: SocketAddr) -> HeaderMap {
        let mut headers = end_to_end(incoming);
        let client_host = incoming.get(header::HOST).cloned();
        if (!self.config.preserve_host || client_host.is_none())
            && let Ok(v) = HeaderValue::from_str(self.config.upstream.authority.as_str())
        {
            headers.insert(header::HOST, v);
        }
        let xff = match incoming_joined(incoming, "x-forwarded-for") {
            Some(prev) => format!("{prev}, {}", client.ip()),
            None => client.ip().to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            headers.insert(HeaderName::from_static("x-forwarded-for"), v);
        }
        // Behind a TLS-terminating load balancer these already say what the user saw: keep them.
        let proto = HeaderName::from_static("x-forwarded-proto");
        if !headers.contains_key(&proto) {
            headers.insert(proto, HeaderValue::from_static("http"));
        }
        let fwd_host = HeaderName::from_static("x-forwarded-host");
        if let (false, Some(host)) = (headers.contains_key(&fwd_host), client_host) {
            headers.insert(fwd_host, host);
        }
        headers
    }
}

/// True when the request asks to upgrade to WebSocket (whether or not it does so correctly).
fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    has_token(headers, &header::UPGRADE, "websocket")
}

/// Checks RFC 6455 4.2.1 and returns the client's `Sec-WebSocket-Key`.
fn validate_upgrade(req: &Request<Incoming>) -> Result<HeaderValue, HandshakeError> {
    if req.method() != Method::GET {
        return Err(HandshakeError::BadRequest("method must be GET"));
    }
    if req.version() < Version::HTTP_11 {
        return Err(HandshakeError::BadRequest("HTTP/1.1 or later required"));
    }
    if !has_token(req.headers(), &header::CONNECTION, "upgrade") {
        return Err(HandshakeError::BadRequest(
            "Connection header lacks \"Upgrade\"",
        ));
    }
    match req.headers().get(header::SEC_WEBSOCKET_VERSION) {
        None => return Err(HandshakeError::BadRequest("missing Sec-WebSocket-Version")),
        Some(v) if v.as_bytes() != b"13" => return Err(HandshakeError::UnsupportedVersion),
        Some(_) => {}
    }
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(HandshakeError::BadRequest("missing Sec-WebSocket-Key"))?;
    if !is_valid_key(key.as_bytes()) {
        return Err(HandshakeError::BadRequest(
            "Sec-WebSocket-Key is not 16 bytes in base64",
        ));
    }
    Ok(key.clone())
}

/// Whether the upstream's `Sec-WebSocket-Accept` answers the key we sent (RFC 6455 4.1).
fn accepts_key(headers: &HeaderMap, key: &str) -> bool {
    headers
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .is_some_and(|v| v.as_bytes() == derive_accept_key(key.as_bytes()).as_bytes())
}

/// A key is 16 random bytes in base64: 22 alphabet characters and `==`.
fn is_valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

/// The comma-separated tokens of every `name` header, trimmed.
fn tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Whether any `name` header lists `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

/// Hop-by-hop headers of RFC 9110 7.6.1, plus the proxy-auth pair that only concerns one hop.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// `headers` without hop-by-hop headers, including those that `Connection` names.
fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let named: Vec<String> = tokens(headers, &header::CONNECTION)
        .map(str::to_ascii_lowercase)
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) || named.iter().any(|t| t == n) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// All values of a header joined with ", ", if present.
fn incoming_joined(headers: &HeaderMap, name: &str) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
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
    let mut resp = Response::new(empty_body());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *resp.headers_mut() = headers;
    resp
}

/// The upstream's response as it came (status, end-to-end headers, streamed body).
fn relay_response(resp: Response<Incoming>) -> Response<ProxyBody> {
    let (parts, body) = resp.into_parts();
    let mut out = Response::new(body.boxed());
    *out.status_mut() = parts.status;
    *out.headers_mut() = end_to_end(&parts.headers);
    out
}

fn empty_body() -> ProxyBody {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

/// A short plain-text response.
pub fn text_response(status: StatusCode, text: String) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        h.insert("x-custom", HeaderValue::from_static("yes"));
        let out = end_to_end(&h);
        assert_eq!(out.get_all(header::COOKIE).iter().count(), 2);
        assert!(out.contains_key("x-custom"));
        for gone in ["connection", "x-secret", "upgrade", "keep-alive"] {
            assert!(!out.contains_key(gone), "{gone} forwarded");
        }
    }

    #[test]
    fn connection_tokens_are_matched_case_insensitively() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, UPGRADE"),
        );
        assert!(has_token(&h, &header::CONNECTION, "upgrade"));
        assert!(!has_token(&h, &header::CONNECTION, "close"));
    }

    #[test]
    fn keys_must_be_sixteen_bytes_of_base64() {
        assert!(is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ="));
        assert!(!is_valid_key(b"not a key at all!!!!!!=="));
        assert!(!is_valid_key(b""));
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
