//! Plain HTTP: requests without an upgrade are reverse-proxied, bodies streamed both ways,
//! under the same header rules as upgrades ([`super::headers`]).

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::Proxy;
use super::context::ConnContext;
use super::error::ProxyError;
use super::headers::end_to_end;
use crate::body::ProxyBody;

impl Proxy {
    /// Reverse-proxies a plain HTTP request. Only the connect is bounded by
    /// `--connect-timeout`: long-polling responses may take as long as they like.
    pub(super) async fn forward_http(
        &self,
        req: Request<Incoming>,
        ctx: &ConnContext,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let mut sender = tokio::time::timeout(self.config.upstream.connect_timeout, self.connect())
            .await
            .unwrap_or(Err(ProxyError::Timeout))?;
        let (parts, body) = req.into_parts();
        let mut out = Request::builder()
            .method(parts.method.clone())
            .uri(self.upstream_uri(&parts.uri))
            .body(body.boxed())
            .map_err(|_| ProxyError::BadRequest("invalid request target"))?;
        *out.headers_mut() = self.forwarded_headers(&parts.headers, ctx);
        let resp = sender.send_request(out).await?;
        self.metrics.http_request(resp.status().as_u16());
        Ok(relay_response(resp))
    }
}

/// The upstream's response as it came (status, end-to-end headers, streamed body).
pub(super) fn relay_response(resp: Response<Incoming>) -> Response<ProxyBody> {
    let (parts, body) = resp.into_parts();
    let mut out = Response::new(body.boxed());
    *out.status_mut() = parts.status;
    *out.headers_mut() = end_to_end(&parts.headers);
    out
}
