//! Sockets: options on both legs, dialing the upstream, and the connection type the relay uses.
//!
//! Both legs get TCP_NODELAY (frames are small and latency matters) and TCP keepalive. Upstream
//! sockets also get TCP_USER_TIMEOUT, so that an upstream host that vanished without a FIN is
//! detected from our unacknowledged pings even when the upstream pong timeout is off.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use socket2::{SockRef, TcpKeepalive};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

use crate::outcome::ConnectError;

/// Idle time before the first keepalive probe. Shorter than any load balancer's idle timeout
/// would not matter (probes carry no data), so this only bounds how long a dead peer goes
/// unnoticed when heartbeats are off.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
/// Time between keepalive probes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Unanswered probes before the kernel drops the connection (15 s + 3 × 5 s = 30 s).
const KEEPALIVE_RETRIES: u32 = 3;

fn keepalive() -> TcpKeepalive {
    TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES)
}

/// Sets the client leg's socket options.
///
/// # Errors
/// The `setsockopt` error, which callers log and otherwise ignore.
pub fn configure_client(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    SockRef::from(stream).set_tcp_keepalive(&keepalive())
}

/// Why dialing the upstream failed.
#[derive(Debug, Error)]
pub enum DialError {
    /// The name did not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// The name that failed.
        host: String,
        /// The resolver's error.
        source: io::Error,
    },
    /// Every address refused or failed; holds the last error.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The last address tried.
        addr: SocketAddr,
        /// Its error.
        source: io::Error,
    },
}

impl DialError {
    /// Metric label for this failure.
    pub fn kind(&self) -> ConnectError {
        match self {
            DialError::Resolve { .. } => ConnectError::Dns,
            DialError::Connect { source, .. }
                if source.kind() == io::ErrorKind::ConnectionRefused =>
            {
                ConnectError::Refused
            }
            DialError::Connect { .. } => ConnectError::Io,
        }
    }
}

/// Resolves `host:port` and connects to the addresses in turn, with upstream socket options.
/// The caller bounds the whole attempt with `--connect-timeout`.
///
/// # Errors
/// [`DialError`] when resolution fails or no address accepts.
pub async fn dial(host: &str, port: u16, user_timeout: Duration) -> Result<TcpStream, DialError> {
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| DialError::Resolve {
            host: host.to_owned(),
            source,
        })?;
    let mut last = None;
    for addr in addrs {
        match connect_one(addr, user_timeout).await {
            Ok(stream) => return Ok(stream),
            Err(source) => last = Some(DialError::Connect { addr, source }),
        }
    }
    Err(last.unwrap_or_else(|| DialError::Resolve {
        host: host.to_owned(),
        source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
    }))
}

async fn connect_one(addr: SocketAddr, user_timeout: Duration) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_nodelay(true)?;
    let sock = SockRef::from(&socket);
    sock.set_tcp_keepalive(&keepalive())?;
    if !user_timeout.is_zero() {
        sock.set_tcp_user_timeout(Some(user_timeout))?;
    }
    socket.connect(addr).await
}

/// A connection of either leg, whatever carries it. One concrete type keeps the relay compiled
/// once and its fast path unboxed.
///
/// Every stream wsbeat makes itself (today plain TCP) is one variant, and is wrapped in `Conn`
/// *before* hyper sees it: after the upgrade, [`Conn::from_upgraded`] then gets it back with one
/// downcast, whatever the variant. A TLS stream is one more variant and one more `From`.
pub enum Conn {
    /// Plain TCP (the fast path).
    Tcp(TcpStream),
    /// Anything else hyper handed over, boxed behind its `Upgraded` (the slow path).
    Upgraded(TokioIo<Upgraded>),
}

impl From<TcpStream> for Conn {
    fn from(stream: TcpStream) -> Conn {
        Conn::Tcp(stream)
    }
}

impl Conn {
    /// Takes hyper's upgraded connection back as the `Conn` it was served on, with the bytes
    /// hyper had already read past the handshake. A connection hyper was not given as a `Conn`
    /// stays boxed.
    pub fn from_upgraded(upgraded: Upgraded) -> (Conn, bytes::Bytes) {
        match upgraded.downcast::<TokioIo<Conn>>() {
            Ok(parts) => (parts.io.into_inner(), parts.read_buf),
            Err(upgraded) => (Conn::Upgraded(TokioIo::new(upgraded)), bytes::Bytes::new()),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Upgraded(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Upgraded(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Upgraded(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Tcp(s) => s.is_write_vectored(),
            Conn::Upgraded(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Upgraded(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Upgraded(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The options that let a vanished upstream be detected are really on the socket.
    #[tokio::test]
    async fn upstream_sockets_get_user_timeout_keepalive_and_nodelay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stream = dial("127.0.0.1", port, Duration::from_secs(30))
            .await
            .unwrap();
        let sock = SockRef::from(&stream);
        assert_eq!(
            sock.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(30))
        );
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
        assert!(stream.nodelay().unwrap());
    }

    #[tokio::test]
    async fn zero_user_timeout_leaves_the_kernel_default() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stream = dial("127.0.0.1", port, Duration::ZERO).await.unwrap();
        assert_eq!(SockRef::from(&stream).tcp_user_timeout().unwrap(), None);
    }

    /// A stream wrapped in `Conn` before hyper serves it comes back unboxed after the upgrade:
    /// the relay's fast path holds for every variant, not only for a bare `TcpStream`.
    #[tokio::test]
    async fn a_conn_served_by_hyper_comes_back_unboxed_after_the_upgrade() {
        use std::convert::Infallible;
        use std::sync::Mutex;

        use http::{Request, Response};
        use hyper::body::Incoming;
        use hyper::service::service_fn;
        use tokio::io::AsyncWriteExt;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tx = Mutex::new(Some(tx));
        let svc = service_fn(move |mut req: Request<Incoming>| {
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send(hyper::upgrade::on(&mut req));
            }
            let mut resp = Response::new(crate::body::empty());
            *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
            resp.headers_mut()
                .insert("upgrade", http::HeaderValue::from_static("websocket"));
            async move { Ok::<_, Infallible>(resp) }
        });
        let served = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(Conn::from(tcp)), svc)
            .with_upgrades();
        tokio::spawn(served);
        client
            .write_all(
                b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            )
            .await
            .unwrap();
        let upgraded = rx.await.unwrap().await.unwrap();
        let (conn, _) = Conn::from_upgraded(upgraded);
        assert!(
            matches!(conn, Conn::Tcp(_)),
            "boxed: the fast path was lost"
        );
    }

    #[tokio::test]
    async fn refused_upstream_maps_to_its_metric_label() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let refused = dial("127.0.0.1", port, Duration::ZERO).await.unwrap_err();
        assert_eq!(refused.kind(), ConnectError::Refused);
    }
}
