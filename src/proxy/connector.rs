//! The upstream connector: dial the upstream, run TLS on the socket for a `wss://` or
//! `https://` upstream, and open an HTTP/1.1 connection on it, with upgrades enabled. The stream
//! is wrapped in [`Conn`] before hyper sees it, so the relay gets it back unboxed after the
//! upgrade (see [`Conn::from_upgraded`]), TLS or not. The whole attempt, TLS included, is
//! bounded by `--connect-timeout`.

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1 as client_http1;
use hyper_util::rt::TokioIo;

use super::Proxy;
use super::error::ProxyError;
use crate::body::ProxyBody;
use crate::net::{self, Conn};
use crate::{Side, tls};
use tokio::net::TcpStream;

impl Proxy {
    /// Dials the upstream and sends `req`, all within `--connect-timeout`.
    pub(super) async fn exchange(
        &self,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let attempt = async {
            let mut sender = self.connect().await?;
            Ok(sender.send_request(req).await?)
        };
        tokio::time::timeout(self.config.upstream.connect_timeout, attempt)
            .await
            .unwrap_or(Err(ProxyError::Timeout))
    }

    /// Opens an HTTP/1.1 connection to the upstream, over TLS for `wss://` and `https://`, with
    /// upgrades enabled.
    pub(super) async fn connect(&self) -> Result<client_http1::SendRequest<ProxyBody>, ProxyError> {
        let up = &self.config.upstream;
        let tcp = net::dial(&up.url.host, up.url.port, up.tcp_user_timeout).await?;
        let conn = match &self.upstream_tls {
            None => Conn::from(tcp),
            Some(tls) => Conn::from(self.handshake_tls(tls, tcp).await?),
        };
        let (sender, conn) = client_http1::Builder::new()
            .title_case_headers(true)
            .handshake(TokioIo::new(conn))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream HTTP connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// The TLS handshake with the upstream, on the socket `dial` set up (keepalive,
    /// `TCP_USER_TIMEOUT` and `TCP_NODELAY` stay on it). A failure is counted per reason here;
    /// the caller logs it and answers 502.
    async fn handshake_tls(
        &self,
        tls: &tls::Connector,
        tcp: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ProxyError> {
        tls.connect(tcp).await.map_err(|e| {
            let reason = tls::classify(&e);
            self.metrics.tls.handshake_error(Side::Upstream, reason);
            ProxyError::UpstreamTls(e)
        })
    }
}
