//! [`ProxyError`]: why a request, upgrade or plain HTTP, could not be proxied.
//!
//! Each variant knows its HTTP status, its `connections_total` result and its
//! `upstream_connect_errors_total` reason, through exhaustive matches: a new variant does not
//! compile until it is filed. The client is told what it did wrong, or that the upstream failed,
//! but never which host or address the upstream is; that goes to the log only.

use std::borrow::Cow;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use thiserror::Error;

use crate::body::{ProxyBody, text_response};
use crate::net::DialError;
use crate::outcome::{ConnectError, ConnectionResult};

/// Why a request could not be proxied. Each maps to one response, one log line and one metric.
#[derive(Debug, Error)]
pub enum ProxyError {
    /// The client's upgrade request is malformed.
    #[error("bad WebSocket upgrade: {0}")]
    BadRequest(&'static str),
    /// The client asked for a WebSocket version other than 13.
    #[error("unsupported Sec-WebSocket-Version (only 13 is supported)")]
    UnsupportedVersion,
    /// The request path has dot segments (`/../`, `/%2e%2e/`): the upstream's base path is a
    /// boundary the client may not climb out of.
    #[error("request path has dot segments")]
    DotSegments,
    /// `CONNECT`: wsbeat is a reverse proxy, not a tunnel.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The upgrade's `Origin` is not in `--allowed-origins`.
    #[error("origin not allowed")]
    ForbiddenOrigin,
    /// `--max-connections` sessions and requests are already open.
    #[error("too many connections")]
    OverLimit,
    /// wsbeat ran out of descriptors or socket memory while dialling the upstream.
    #[error("out of local resources: {0}")]
    LocalExhaustion(DialError),
    /// Connecting to the upstream failed.
    #[error("upstream unreachable: {0}")]
    Unreachable(DialError),
    /// The TLS handshake with a `wss://`/`https://` upstream failed; the log gets rustls' reason
    /// (unknown CA, name mismatch, client certificate required, ...).
    #[error("upstream TLS handshake failed: {0}")]
    UpstreamTls(std::io::Error),
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

/// Seconds a client refused for want of capacity is asked to wait (`Retry-After`).
const RETRY_AFTER_SECONDS: &str = "1";

/// Methods wsbeat forwards, for the `Allow` header of a 405.
const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

impl From<DialError> for ProxyError {
    /// Filed by whose fault it is: wsbeat's own exhaustion, or an unreachable upstream.
    fn from(e: DialError) -> Self {
        if e.is_local_exhaustion() {
            ProxyError::LocalExhaustion(e)
        } else {
            ProxyError::Unreachable(e)
        }
    }
}

impl ProxyError {
    /// The HTTP status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) | ProxyError::DotSegments => StatusCode::BAD_REQUEST,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::ForbiddenOrigin => StatusCode::FORBIDDEN,
            ProxyError::OverLimit | ProxyError::LocalExhaustion(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            ProxyError::Unreachable(_)
            | ProxyError::UpstreamTls(_)
            | ProxyError::UpstreamHttp(_)
            | ProxyError::BadAccept => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The `connections_total` result of a failed upgrade.
    pub fn connection_result(&self) -> ConnectionResult {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::UnsupportedVersion
            | ProxyError::DotSegments
            | ProxyError::MethodNotAllowed => ConnectionResult::BadRequest,
            ProxyError::ForbiddenOrigin => ConnectionResult::ForbiddenOrigin,
            ProxyError::OverLimit => ConnectionResult::OverLimit,
            ProxyError::LocalExhaustion(_) => ConnectionResult::LocalExhaustion,
            ProxyError::Unreachable(_)
            | ProxyError::UpstreamTls(_)
            | ProxyError::UpstreamHttp(_)
            | ProxyError::BadAccept => ConnectionResult::UpstreamUnreachable,
            ProxyError::Timeout => ConnectionResult::UpstreamTimeout,
        }
    }

    /// The `upstream_connect_errors_total` reason, when the upstream is at fault.
    pub fn connect_error(&self) -> Option<ConnectError> {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::UnsupportedVersion
            | ProxyError::DotSegments
            | ProxyError::MethodNotAllowed
            | ProxyError::ForbiddenOrigin
            | ProxyError::OverLimit => None,
            ProxyError::LocalExhaustion(e) | ProxyError::Unreachable(e) => Some(e.kind()),
            ProxyError::UpstreamTls(_) => Some(ConnectError::Tls),
            ProxyError::UpstreamHttp(_) | ProxyError::BadAccept => Some(ConnectError::Handshake),
            ProxyError::Timeout => Some(ConnectError::Timeout),
        }
    }

    /// What the client is told. Its own mistakes in full; upstream trouble without the
    /// upstream's name, address or port, which only the log carries.
    pub fn client_message(&self) -> Cow<'static, str> {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::UnsupportedVersion
            | ProxyError::DotSegments
            | ProxyError::MethodNotAllowed
            | ProxyError::ForbiddenOrigin
            | ProxyError::OverLimit => Cow::Owned(self.to_string()),
            ProxyError::LocalExhaustion(_) => Cow::Borrowed("temporarily out of resources"),
            ProxyError::Unreachable(_) => Cow::Borrowed("upstream unreachable"),
            ProxyError::UpstreamTls(_) => Cow::Borrowed("upstream TLS handshake failed"),
            ProxyError::UpstreamHttp(_) => Cow::Borrowed("upstream HTTP error"),
            ProxyError::BadAccept | ProxyError::Timeout => Cow::Owned(self.to_string()),
        }
    }

    /// The response for this error: a one-line text body.
    pub fn response(&self) -> Response<ProxyBody> {
        let text = format!("wsbeat: {}\n", self.client_message());
        let mut resp = text_response(self.status(), text);
        let extra = match self {
            ProxyError::UnsupportedVersion => Some((header::SEC_WEBSOCKET_VERSION, "13")),
            ProxyError::MethodNotAllowed => Some((header::ALLOW, ALLOWED_METHODS)),
            ProxyError::OverLimit | ProxyError::LocalExhaustion(_) => {
                Some((header::RETRY_AFTER, RETRY_AFTER_SECONDS))
            }
            ProxyError::BadRequest(_)
            | ProxyError::DotSegments
            | ProxyError::ForbiddenOrigin
            | ProxyError::Unreachable(_)
            | ProxyError::UpstreamTls(_)
            | ProxyError::UpstreamHttp(_)
            | ProxyError::BadAccept
            | ProxyError::Timeout => None,
        };
        if let Some((name, value)) = extra {
            resp.headers_mut()
                .insert(name, HeaderValue::from_static(value));
        }
        if matches!(self, ProxyError::OverLimit) {
            // The refused connection must not linger in keep-alive, holding a descriptor.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::net::SocketAddr;

    use super::*;

    fn refused(addr: &str) -> ProxyError {
        let addr: SocketAddr = addr.parse().unwrap();
        ProxyError::from(DialError::Connect {
            addr,
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        })
    }

    /// The log line (Display) names the upstream; the client's message does not.
    #[test]
    fn unreachable_upstream_is_named_in_the_log_but_not_to_the_client() {
        let e = refused("10.9.8.7:6543");
        assert!(e.to_string().contains("10.9.8.7:6543"), "{e}");
        assert_eq!(e.client_message(), "upstream unreachable");
        let dns = ProxyError::from(DialError::Resolve {
            host: "legacy.internal".into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        });
        assert_eq!(dns.client_message(), "upstream unreachable");
    }

    /// Every variant's status, result and connect-error label, as one table.
    #[test]
    fn every_variant_is_filed_under_its_status_result_and_reason() {
        use ConnectionResult as R;
        let table = [
            (ProxyError::BadRequest("x"), 400, R::BadRequest, None),
            (ProxyError::UnsupportedVersion, 426, R::BadRequest, None),
            (
                refused("127.0.0.1:1"),
                502,
                R::UpstreamUnreachable,
                Some(ConnectError::Refused),
            ),
            (
                ProxyError::UpstreamTls(io::Error::other("unknown issuer")),
                502,
                R::UpstreamUnreachable,
                Some(ConnectError::Tls),
            ),
            (
                ProxyError::BadAccept,
                502,
                R::UpstreamUnreachable,
                Some(ConnectError::Handshake),
            ),
            (
                ProxyError::Timeout,
                504,
                R::UpstreamTimeout,
                Some(ConnectError::Timeout),
            ),
            (ProxyError::DotSegments, 400, R::BadRequest, None),
            (ProxyError::MethodNotAllowed, 405, R::BadRequest, None),
            (ProxyError::ForbiddenOrigin, 403, R::ForbiddenOrigin, None),
            (ProxyError::OverLimit, 503, R::OverLimit, None),
            (
                ProxyError::from(DialError::Connect {
                    addr: "127.0.0.1:1".parse().unwrap(),
                    source: io::Error::from_raw_os_error(libc::EMFILE),
                }),
                503,
                R::LocalExhaustion,
                Some(ConnectError::LocalExhaustion),
            ),
        ];
        for (e, status, result, reason) in table {
            assert_eq!(e.status().as_u16(), status, "{e}");
            assert_eq!(e.connection_result(), result, "{e}");
            assert_eq!(e.connect_error(), reason, "{e}");
        }
    }
}
