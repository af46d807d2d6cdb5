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

/// Refuses a path with `.` or `..` segments, plain or percent-encoded (`%2e`), also when
/// the segments are cut by an encoded slash or a backslash that an upstream may decode or
/// normalise into a `/`.
pub(super) fn check_path(path: &str) -> Result<(), ProxyError> {
    let bytes = path.as_bytes();
    let mut normalised = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes.get(i..i + 3).and_then(|e| match e {
            [b'%', b'2', b'e' | b'E'] => Some(b'.'),
            [b'%', b'2', b'f' | b'F'] | [b'%', b'5', b'c' | b'C'] => Some(b'/'),
            _ => None,
        });
        match (escaped, bytes[i]) {
            (Some(c), _) => {
                normalised.push(c);
                i += 3;
                continue;
            }
            (None, b'\\') => normalised.push(b'/'),
            (None, c) => normalised.push(c),
        }
        i += 1;
    }
    let dotted = normalised
        .split(|c| *c == b'/')
        .any(|seg| seg == b"." || seg == b"..");
    if dotted {
        Err(ProxyError::DotSegments)
    } else {
        Ok(())
    }
}

/// Checks the upgrade's `Origin` against `allowed` (already lowercase; `None` or `*`: any).
/// A request without `Origin` passes: browsers always send one on a WebSocket upgrade, so a
/// request without it cannot be a cross-site page riding on a user's cookies.
pub(super) fn check_origin(
    headers: &HeaderMap,
    allowed: Option<&[String]>,
) -> Result<(), ProxyError> {
    let Some(allowed) = allowed else {
        return Ok(());
    };
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let ok = allowed
        .iter()
        .any(|a| a == "*" || a.as_bytes().eq_ignore_ascii_case(origin.as_bytes()));
    if ok {
        Ok(())
    } else {
        Err(ProxyError::ForbiddenOrigin)
    }
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
    fn dot_segments_are_refused_plain_and_encoded() {
        for bad in [
            "/../secret",
            "/a/..",
            "/%2e%2e/secret",
            "/%2E%2e/x",
            "/./x",
            "/%2e/x",
            "/a/..%2fsecret",
            "/a\\..\\secret",
            "/.%2e/x",
        ] {
            assert!(check_path(bad).is_err(), "{bad} passed");
        }
        for good in [
            "/",
            "/app",
            "/.well-known/x",
            "/a..b",
            "/...",
            "/a/b.c",
            "/%2e%2e%2e",
        ] {
            assert!(check_path(good).is_ok(), "{good} refused");
        }
    }

    #[test]
    fn origins_are_matched_exactly_ignoring_case() {
        let list = vec!["https://app.example".to_string()];
        let mut h = HeaderMap::new();
        assert!(
            check_origin(&h, Some(&list)).is_ok(),
            "no Origin: not a browser"
        );
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://APP.example"),
        );
        assert!(check_origin(&h, Some(&list)).is_ok());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://app.example.evil"),
        );
        assert!(check_origin(&h, Some(&list)).is_err());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://app.example"),
        );
        assert!(check_origin(&h, Some(&list)).is_err());
        assert!(check_origin(&h, Some(&["*".to_string()])).is_ok());
        assert!(check_origin(&h, None).is_ok());
    }

    #[test]
    fn keys_must_be_sixteen_bytes_of_base64() {
        assert!(is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ="));
        assert!(!is_valid_key(b"not a key at all!!!!!!=="));
        assert!(!is_valid_key(b""));
    }
}
