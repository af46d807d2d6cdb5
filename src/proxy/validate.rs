//! Checks on a WebSocket upgrade: the client's request (RFC 6455 4.2.1) and the upstream's
//! `Sec-WebSocket-Accept` (RFC 6455 4.1). Pure functions over headers; no I/O.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Version};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::error::ProxyError;
use super::headers::has_token;

/// True when the request asks to upgrade to WebSocket (whether or not it does so correctly).
pub(super) fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    has_token(headers, &header::UPGRADE, "websocket")
}

/// Checks RFC 6455 4.2.1 and returns the client's `Sec-WebSocket-Key`.
pub(super) fn validate_upgrade<B>(req: &Request<B>) -> Result<HeaderValue, ProxyError> {
    if req.method() != Method::GET {
        return Err(ProxyError::BadRequest("method must be GET"));
    }
    if req.version() < Version::HTTP_11 {
        return Err(ProxyError::BadRequest("HTTP/1.1 or later required"));
    }
    if !has_token(req.headers(), &header::CONNECTION, "upgrade") {
        return Err(ProxyError::BadRequest(
            "Connection header lacks \"Upgrade\"",
        ));
    }
    match req.headers().get(header::SEC_WEBSOCKET_VERSION) {
        None => return Err(ProxyError::BadRequest("missing Sec-WebSocket-Version")),
        Some(v) if v.as_bytes() != b"13" => return Err(ProxyError::UnsupportedVersion),
        Some(_) => {}
    }
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(ProxyError::BadRequest("missing Sec-WebSocket-Key"))?;
    if !is_valid_key(key.as_bytes()) {
        return Err(ProxyError::BadRequest(
            "Sec-WebSocket-Key is not 16 bytes in base64",
        ));
    }
    Ok(key.clone())
}

/// Whether the upstream's `Sec-WebSocket-Accept` answers the key we sent (RFC 6455 4.1).
pub(super) fn accepts_key(headers: &HeaderMap, key: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_must_be_sixteen_bytes_of_base64() {
        assert!(is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ="));
        assert!(!is_valid_key(b"not a key at all!!!!!!=="));
        assert!(!is_valid_key(b""));
    }
}
