//! Sockets: options on both legs, dialing the upstream, and the connection type the relay uses.
//!
//! Both legs get TCP_NODELAY (frames are small and latency matters) and TCP keepalive. Upstream
//! sockets also get TCP_USER_TIMEOUT, so that an upstream host that vanished without a FIN is
//! detected from our unacknowledged pings even when the upstream pong timeout is off.

use std::io;
use std::net::{IpAddr, SocketAddr};
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

/// `TCP_NOTSENT_LOWAT` on both legs: the kernel keeps at most this many bytes queued that it
/// has not sent yet, and wakes the writer when fewer wait. Without it, a socket toward a slow
/// reader queues megabytes and reports room only after a third of its buffer drained, so the
/// relay saw the peer take bytes only every few seconds, and our pings waited behind all of it.
/// With it, the relay sees each 8 KiB the peer takes (its liveness, see the relay) and pings
/// wait behind at most this much unsent data. 16 KiB is the value in common use for latency;
/// bytes in flight are not limited by it, so a fast reader's throughput is not either.
const NOTSENT_LOWAT_BYTES: u32 = 16 * 1024;

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
    let sock = SockRef::from(stream);
    sock.set_tcp_notsent_lowat(NOTSENT_LOWAT_BYTES)?;
    sock.set_tcp_keepalive(&keepalive())
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
        if self.is_local_exhaustion() {
            return ConnectError::LocalExhaustion;
        }
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

    /// True when wsbeat itself ran out of descriptors or socket memory: the upstream was
    /// never asked, and an operator must look at wsbeat, not at the backend.
    pub fn is_local_exhaustion(&self) -> bool {
        let source = match self {
            DialError::Resolve { source, .. } | DialError::Connect { source, .. } => source,
        };
        matches!(
            source.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        )
    }
}

/// An address block such as `10.0.0.0/8` or `2001:db8::/32`; a bare address is a block of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// True when `ip` lies in the block. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, as a
    /// dual-stack listener reports IPv4 peers) matches the IPv4 block it maps.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(
                u128::from(net.to_bits()),
                u128::from(ip.to_bits()),
                32,
                self.prefix,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(net.to_bits(), ip.to_bits(), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// Whether the top `prefix` of `bits` (addresses `width` bits wide) are equal.
fn prefix_eq(a: u128, b: u128, width: u32, prefix: u8) -> bool {
    let shift = width - u32::from(prefix);
    shift >= width || (a >> shift) == (b >> shift)
}

impl std::str::FromStr for Cidr {
    type Err = String;

    /// Parses `ADDR/PREFIX` or a bare `ADDR`.
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or address/prefix"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix must be 0 to {max}"))?,
        };
        Ok(Cidr { network, prefix })
    }
}

/// Descriptors kept out of `--max-connections`'s default: listeners, the admin listener's
/// connections, the connections being refused with 503, the process collector's reads of /proc,
/// the resolver, logs, the pipes of spliced frames (at most 64, so 128 descriptors), with room
/// to spare.
pub const RESERVED_FDS: u64 = 256;

/// Descriptors one session holds: its client and its upstream socket.
pub const FDS_PER_SESSION: u64 = 2;

/// The largest number of sessions that fit in `open_files` descriptors with
/// [`RESERVED_FDS`] kept aside, so that wsbeat never meets EMFILE itself (at least 1).
pub fn sessions_within(open_files: u64) -> usize {
    let n = open_files.saturating_sub(RESERVED_FDS) / FDS_PER_SESSION;
    usize::try_from(n).unwrap_or(usize::MAX).max(1)
}

/// Soft limit on this process's open files (`RLIMIT_NOFILE`), read from `/proc/self/limits`
/// (no unsafe `getrlimit` call); `None` when it cannot be read or is unlimited.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Binds a listening TCP socket on `addr` with a `backlog` of pending connections (the
/// kernel caps it at `net.core.somaxconn`). `SO_REUSEADDR` is set, as tokio's own `bind` does,
/// so a restart does not wait for old connections in TIME_WAIT.
///
/// # Errors
/// The socket, bind or listen error.
pub fn bind_listener(addr: SocketAddr, backlog: u32) -> io::Result<tokio::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    tokio::net::TcpListener::from_std(socket.into())
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
    sock.set_tcp_notsent_lowat(NOTSENT_LOWAT_BYTES)?;
    if !user_timeout.is_zero() {
        sock.set_tcp_user_timeout(Some(user_timeout))?;
    }
    socket.connect(addr).await
}

/// A connection of either leg, whatever carries it. One concrete type keeps the relay compiled
/// once and its fast path unboxed.
///
/// Every stream wsbeat makes itself is one variant, and is wrapped in `Conn` *before* hyper sees
/// it: after the upgrade, [`Conn::from_upgraded`] then gets it back with one downcast, whatever
/// the variant. The TLS variants hold their stream behind a `Box` of the concrete type: still
/// static dispatch and no copy beyond the one encryption makes, but a plain TCP session does not carry the kilobyte of TLS state inline.
pub enum Conn {
    /// Plain TCP.
    Tcp(TcpStream),
    /// A client that reached `--listen` over TLS: wsbeat is the TLS server.
    ClientTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// A `wss://` or `https://` upstream: wsbeat is the TLS client.
    UpstreamTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Anything else hyper handed over, boxed behind its `Upgraded` (the slow path).
    Upgraded(TokioIo<Upgraded>),
}

impl From<TcpStream> for Conn {
    fn from(stream: TcpStream) -> Conn {
        Conn::Tcp(stream)
    }
}

impl From<tokio_rustls::server::TlsStream<TcpStream>> for Conn {
    fn from(stream: tokio_rustls::server::TlsStream<TcpStream>) -> Conn {
        Conn::ClientTls(Box::new(stream))
    }
}

impl From<tokio_rustls::client::TlsStream<TcpStream>> for Conn {
    fn from(stream: tokio_rustls::client::TlsStream<TcpStream>) -> Conn {
        Conn::UpstreamTls(Box::new(stream))
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

    /// The TCP socket underneath, for reading socket options back; `None` on the slow path.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Conn::Tcp(s) => Some(s),
            Conn::ClientTls(s) => Some(s.get_ref().0),
            Conn::UpstreamTls(s) => Some(s.get_ref().0),
            Conn::Upgraded(_) => None,
        }
    }
}

/// Runs `$body` with `$s` bound to the stream of whichever variant `$conn` is.
macro_rules! each_variant {
    ($conn:expr, $s:ident => $body:expr) => {
        match $conn {
            Conn::Tcp($s) => $body,
            Conn::ClientTls($s) => $body,
            Conn::UpstreamTls($s) => $body,
            Conn::Upgraded($s) => $body,
        }
    };
}

/// What the kernel knows of how far a leg's peer has read our bytes. The relay asks only
/// before it declares a silent peer dead ([`crate::relay`]); streams that do not sit on a TCP
/// socket of ours answer `None`, and their peers are judged by frames alone.
pub trait PeerDelivery {
    /// The kernel's view, or `None` where there is none.
    fn delivery(&self) -> Option<wsbeat_tcpinfo::Delivery>;
}

impl PeerDelivery for TcpStream {
    fn delivery(&self) -> Option<wsbeat_tcpinfo::Delivery> {
        use std::os::fd::AsFd;
        wsbeat_tcpinfo::delivery(self.as_fd()).ok().flatten()
    }
}

impl PeerDelivery for Conn {
    fn delivery(&self) -> Option<wsbeat_tcpinfo::Delivery> {
        self.tcp().and_then(PeerDelivery::delivery)
    }
}

/// An in-memory pipe has no kernel behind it.
impl PeerDelivery for tokio::io::DuplexStream {
    fn delivery(&self) -> Option<wsbeat_tcpinfo::Delivery> {
        None
    }
}

/// The plain TCP socket under a leg, whose bytes may be moved with `splice(2)` (see
/// `relay::splice`). `None` where the bytes on the socket are not the stream's own (TLS) or
/// there is no socket of ours.
pub trait SpliceSocket {
    /// The socket, or `None`.
    fn splice_socket(&self) -> Option<&TcpStream>;
}

impl SpliceSocket for TcpStream {
    fn splice_socket(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl SpliceSocket for Conn {
    fn splice_socket(&self) -> Option<&TcpStream> {
        match self {
            Conn::Tcp(s) => Some(s),
            _ => None,
        }
    }
}

impl SpliceSocket for tokio::io::DuplexStream {
    fn splice_socket(&self) -> Option<&TcpStream> {
        None
    }
}

/// The I/O of the variants other than plain TCP, out of line: the relay calls `Conn`'s methods
/// on every read and write, and with TLS in the same `match` the compiler stopped inlining
/// them, which cost the plain TCP path a call and a four-way branch on every one
/// (callgrind, docs/PERFORMANCE.md). TLS pays one call, small beside its encryption.
impl Conn {
    #[inline(never)]
    fn poll_read_other(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each_variant!(self, s => Pin::new(s).poll_read(cx, buf))
    }

    #[inline(never)]
    fn poll_write_other(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        each_variant!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    #[inline(never)]
    fn poll_write_vectored_other(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each_variant!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    #[inline(never)]
    fn poll_flush_other(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_variant!(self, s => Pin::new(s).poll_flush(cx))
    }
}

impl AsyncRead for Conn {
    #[inline(always)]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            other => other.poll_read_other(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    #[inline(always)]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            other => other.poll_write_other(cx, buf),
        }
    }

    #[inline(always)]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            other => other.poll_write_vectored_other(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        each_variant!(self, s => s.is_write_vectored())
    }

    #[inline(always)]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            other => other.poll_flush_other(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_variant!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
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

    /// Running out of descriptors is wsbeat's problem, whatever step hit it.
    #[test]
    fn descriptor_exhaustion_is_local_not_the_upstream() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            let e = DialError::Connect {
                addr: "127.0.0.1:1".parse().unwrap(),
                source: io::Error::from_raw_os_error(errno),
            };
            assert_eq!(e.kind(), ConnectError::LocalExhaustion, "errno {errno}");
            let e = DialError::Resolve {
                host: "h".into(),
                source: io::Error::from_raw_os_error(errno),
            };
            assert_eq!(e.kind(), ConnectError::LocalExhaustion, "errno {errno}");
        }
    }

    #[test]
    fn cidr_blocks_match_their_addresses_only() {
        let block: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(block.contains("10.1.255.3".parse().unwrap()));
        assert!(!block.contains("10.2.0.1".parse().unwrap()));
        assert!(block.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!v6.contains("10.1.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_open_files_limit_is_read() {
        assert!(open_files_limit().is_some_and(|n| n > 0));
    }

    /// The backlog given is the one the kernel uses: with nothing accepting, connects beyond
    /// it are not completed, while a larger backlog takes them all.
    #[tokio::test]
    async fn the_listen_backlog_bounds_pending_connections() {
        async fn completed(backlog: u32, tries: usize) -> usize {
            let listener = bind_listener("127.0.0.1:0".parse().unwrap(), backlog).unwrap();
            let addr = listener.local_addr().unwrap();
            let attempts = (0..tries).map(|_| {
                tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr))
            });
            let results = futures_util::future::join_all(attempts).await;
            results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count()
        }
        let small = completed(2, 20).await;
        assert!(small <= 4, "backlog 2 completed {small} of 20");
        assert_eq!(completed(64, 20).await, 20);
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
