//! HTTP bodies and the small responses the proxy writes itself.
//!
//! Owns: [`ProxyBody`], the one body type every response of both listeners uses (a streamed
//! upstream body or a short text), and helpers for empty bodies and one-line text answers. Does
//! not own: deciding what to answer (the proxy and the admin listener do that).

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

/// Body of every response the proxy sends: the upstream's streamed body, or a short text.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// A body with no bytes.
pub fn empty() -> ProxyBody {
    full(Bytes::new())
}

/// A body holding `bytes`, sent in one piece.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A short plain-text response.
pub fn text_response(status: StatusCode, text: String) -> Response<ProxyBody> {
    let mut resp = Response::new(full(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
