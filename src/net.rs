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

use crate::metrics::ConnectError;

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

/// An upgraded connection, whatever carried it. One concrete type keeps the relay compiled once.
pub enum Conn {
    /// Plain TCP, taken back from hyper after the upgrade (the fast path).
    Tcp(TcpStream),
    /// Anything hyper would not give back as TCP.
    Upgraded(TokioIo<Upgraded>),
}

impl Conn {
    /// Unwraps hyper's upgraded connection into the TCP stream underneath, with the bytes hyper
    /// had already read past the handshake.
    pub fn from_upgraded(upgraded: Upgraded) -> (Conn, bytes::Bytes) {
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => (Conn::Tcp(parts.io.into_inner()), parts.read_buf),
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

    #[tokio::test]
    async fn refused_upstream_maps_to_its_metric_label() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let refused = dial("127.0.0.1", port, Duration::ZERO).await.unwrap_err();
        assert_eq!(refused.kind(), ConnectError::Refused);
    }
}
