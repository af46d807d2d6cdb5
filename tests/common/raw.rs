//! Raw-frame WebSocket peers: a client and an upstream that speak HTTP/1.1 and RFC 6455 by
//! hand (see `frame.rs`), so tests control and observe every byte. Also the HTTP head parser
//! the peers share, a "silent" upstream and a TCP server that never answers.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::frame::{
    OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, RawFrame, next_mask_key, read_frame, write_frame,
};
use super::proxy::{TestProxy, spawn_proxy_to};
use super::{STEP, within};

/// Upper bound on a head line and on the number of header lines, so a broken peer cannot make a
/// test read forever.
const MAX_HEAD_LINE: usize = 16 * 1024;
const MAX_HEAD_LINES: usize = 200;

/// The head of an HTTP/1.1 request or response, headers in wire order with original case.
#[derive(Clone, Debug)]
pub struct HttpHead {
    pub start_line: String,
    pub headers: Vec<(String, String)>,
}

impl HttpHead {
    /// Status code of a response head.
    pub fn status(&self) -> u16 {
        self.start_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {:?}", self.start_line))
    }

    /// Method of a request head.
    pub fn method(&self) -> &str {
        self.start_line.split(' ').next().unwrap_or("")
    }

    /// Request target (path and query) of a request head.
    pub fn target(&self) -> &str {
        self.start_line.split(' ').nth(1).unwrap_or("")
    }

    /// Every value of header `name` (case-insensitive), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// All values of header `name` joined with ", " (RFC 9110 §5.3), or None when absent.
    pub fn header(&self, name: &str) -> Option<String> {
        let all = self.header_all(name);
        (!all.is_empty()).then(|| all.join(", "))
    }

    pub fn has(&self, name: &str) -> bool {
        !self.header_all(name).is_empty()
    }

    /// The comma-separated tokens of header `name`, trimmed and lower-cased.
    pub fn tokens(&self, name: &str) -> Vec<String> {
        self.header_all(name)
            .iter()
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect()
    }
}

/// Reads one HTTP head. `Ok(None)` when the stream ends before the first byte.
pub async fn read_head<R: AsyncBufRead + Unpin>(r: &mut R) -> io::Result<Option<HttpHead>> {
    let Some(start_line) = read_line(r).await? else {
        return Ok(None);
    };
    let mut headers = Vec::new();
    for _ in 0..MAX_HEAD_LINES {
        let line = read_line(r)
            .await?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "eof inside head"))?;
        if line.is_empty() {
            return Ok(Some(HttpHead {
                start_line,
                headers,
            }));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad: {line}")))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "too many header lines",
    ))
}

async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = (&mut *r)
        .take(MAX_HEAD_LINE as u64)
        .read_until(b'\n', &mut buf)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if !buf.ends_with(b"\n") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "head line too long or cut",
        ));
    }
    let line = String::from_utf8_lossy(&buf);
    Ok(Some(line.trim_end_matches(['\r', '\n']).to_string()))
}

/// Reads a message body as framed by `head`: Content-Length, chunked, or until EOF.
pub async fn read_body<R: AsyncBufRead + Unpin>(r: &mut R, head: &HttpHead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if let Some(len) = head.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad content-length"))?;
        body.resize(len, 0);
        r.read_exact(&mut body).await?;
    } else if head
        .tokens("transfer-encoding")
        .iter()
        .any(|t| t == "chunked")
    {
        loop {
            let line = read_line(r)
                .await?
                .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "eof in chunks"))?;
            let size_hex = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_hex, 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                // Trailers, then the empty line.
                while read_line(r).await?.is_some_and(|l| !l.is_empty()) {}
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..]).await?;
            read_line(r).await?;
        }
    } else {
        r.read_to_end(&mut body).await?;
    }
    Ok(body)
}

/// One WebSocket connection driven frame by frame. A client-role peer masks what it sends
/// (unless told otherwise with `send_exact`); a server-role peer does not.
pub struct RawWs {
    pub io: BufReader<TcpStream>,
    client: bool,
}

impl RawWs {
    pub fn new(io: BufReader<TcpStream>, client: bool) -> Self {
        RawWs { io, client }
    }

    /// Sends `frame`, adding a fresh masking key first when this is a client and the frame has
    /// none (RFC 6455 §5.3).
    pub async fn send(&mut self, mut frame: RawFrame) -> io::Result<()> {
        if self.client && frame.mask.is_none() {
            frame.mask = Some(next_mask_key());
        }
        write_frame(&mut self.io, &frame).await
    }

    /// Sends `frame` exactly as given, even an unmasked client frame.
    pub async fn send_exact(&mut self, frame: &RawFrame) -> io::Result<()> {
        write_frame(&mut self.io, frame).await
    }

    /// Sends `frame`, panicking on an I/O error.
    pub async fn must_send(&mut self, frame: RawFrame) {
        let desc = format!("{frame:?}");
        within(Duration::from_secs(5), "sending a frame", self.send(frame))
            .await
            .unwrap_or_else(|e| panic!("sending {desc} failed: {e}"));
    }

    /// Next frame; `Ok(None)` on a clean end of stream.
    pub async fn recv(&mut self) -> io::Result<Option<RawFrame>> {
        read_frame(&mut self.io).await
    }

    /// Next frame within `d`; panics on timeout, end of stream or error.
    pub async fn recv_within(&mut self, d: Duration) -> RawFrame {
        match timeout(d, self.recv()).await {
            Ok(Ok(Some(f))) => f,
            Ok(Ok(None)) => panic!("stream ended while waiting for a frame"),
            Ok(Err(e)) => panic!("read error while waiting for a frame: {e}"),
            Err(_) => panic!("no frame within {d:?}"),
        }
    }

    /// Next frame that is neither a ping nor a pong, within `d` overall. Pings are not
    /// answered: a peer that wants to look alive must use `recv_answering_pings`.
    pub async fn recv_skipping_pings(&mut self, d: Duration) -> RawFrame {
        let fut = async {
            loop {
                let f = self.recv_within(d).await;
                if f.opcode != OP_PING && f.opcode != OP_PONG {
                    return f;
                }
            }
        };
        within(d, "a data or close frame", fut).await
    }

    /// Next frame that is neither a ping nor a pong, answering each ping with a pong carrying
    /// its payload, as a live peer does.
    pub async fn recv_answering_pings(&mut self, d: Duration) -> RawFrame {
        let fut = async {
            loop {
                let f = self.recv_within(d).await;
                match f.opcode {
                    OP_PING => self.must_send(RawFrame::pong(f.payload)).await,
                    OP_PONG => {}
                    _ => return f,
                }
            }
        };
        within(d, "a data or close frame", fut).await
    }

    /// The next close frame within `d`, skipping pings and pongs; panics if a data frame comes
    /// first.
    pub async fn expect_close(&mut self, d: Duration) -> RawFrame {
        let f = self.recv_skipping_pings(d).await;
        assert_eq!(f.opcode, OP_CLOSE, "expected a close frame, got {f:?}");
        f
    }

    /// Waits until the connection ends (EOF or reset), discarding frames, within `d`.
    pub async fn expect_end(&mut self, d: Duration) {
        let fut = async {
            loop {
                match self.recv().await {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => return,
                }
            }
        };
        within(d, "the connection to end", fut).await
    }
}

/// Sends `f` from `from` and asserts that `to` receives it within `STEP` with the same opcode,
/// FIN, RSV1 and payload, and RSV2/RSV3 clear; `direction` names the leg in the failure message.
pub async fn assert_crosses_unchanged(
    from: &mut RawWs,
    to: &mut RawWs,
    f: &RawFrame,
    direction: &str,
) {
    from.must_send(f.clone()).await;
    let got = to.recv_within(STEP).await;
    assert_eq!(
        (
            got.opcode,
            got.fin,
            got.rsv1,
            got.rsv2,
            got.rsv3,
            &got.payload
        ),
        (f.opcode, f.fin, f.rsv1, false, false, &f.payload),
        "{direction}"
    );
}

/// Sends an unsolicited pong and then a text "marker" from `from`, and asserts that the first
/// frame `to` receives within `STEP` is the marker: frames keep their order, so a forwarded
/// control frame would arrive before it. `what` starts the failure message.
pub async fn assert_marker_arrives_first(from: &mut RawWs, to: &mut RawWs, what: &str) {
    from.must_send(RawFrame::pong(b"unsolicited".to_vec()))
        .await;
    from.must_send(RawFrame::text("marker")).await;
    let first = to.recv_within(STEP).await;
    assert_eq!(
        (first.opcode, first.payload.as_slice()),
        (OP_TEXT, &b"marker"[..]),
        "{what}: {first:?}"
    );
}

/// A random-looking `Sec-WebSocket-Key` (16 bytes, base64).
pub fn new_ws_key() -> String {
    tokio_tungstenite::tungstenite::handshake::client::generate_key()
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2).
pub fn accept_for(key: &str) -> String {
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes())
}

/// Result of a raw client upgrade attempt.
pub struct RawUpgrade {
    pub response: HttpHead,
    pub ws: RawWs,
    /// The `Sec-WebSocket-Key` the client sent.
    pub key: String,
}

/// Sends a WebSocket upgrade request for `target` to `addr` and reads the response head. Does
/// not check the status. The request has the usual Host, Upgrade, Connection,
/// Sec-WebSocket-Version and Sec-WebSocket-Key headers; an `extra` header of the same name
/// replaces the default one, other `extra` headers are added in order.
pub async fn raw_upgrade(addr: SocketAddr, target: &str, extra: &[(&str, &str)]) -> RawUpgrade {
    let generated = new_ws_key();
    let host = addr.to_string();
    let defaults = [
        ("Host", host.as_str()),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", generated.as_str()),
    ];
    let overridden = |name: &str| extra.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut req = format!("GET {target} HTTP/1.1\r\n");
    for (n, v) in defaults.iter().filter(|(n, _)| !overridden(n)).chain(extra) {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let key = extra
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-key"))
        .map_or(generated.clone(), |(_, v)| v.to_string());
    let (response, io) = send_head(addr, &req).await;
    RawUpgrade {
        response,
        ws: RawWs::new(io, true),
        key,
    }
}

/// Like `raw_upgrade` but asserts a valid 101 for our key and returns the socket.
pub async fn raw_connect(addr: SocketAddr, target: &str, extra: &[(&str, &str)]) -> RawUpgrade {
    let up = raw_upgrade(addr, target, extra).await;
    assert_eq!(
        up.response.status(),
        101,
        "upgrade refused: {:?}",
        up.response
    );
    assert_eq!(
        up.response.header("sec-websocket-accept").as_deref(),
        Some(accept_for(&up.key).as_str()),
        "Sec-WebSocket-Accept does not match the client's key"
    );
    up
}

/// Writes `request` (a full HTTP/1.1 request, head and body) and reads the response head.
pub async fn send_head(addr: SocketAddr, request: &str) -> (HttpHead, BufReader<TcpStream>) {
    let fut = async {
        let stream = TcpStream::connect(addr).await.expect("connect to proxy");
        let mut io = BufReader::new(stream);
        io.write_all(request.as_bytes())
            .await
            .expect("write request");
        io.flush().await.expect("flush request");
        let head = read_head(&mut io)
            .await
            .expect("read response head")
            .expect("connection closed before a response");
        (head, io)
    };
    within(Duration::from_secs(10), "an HTTP response head", fut).await
}

/// Writes `request` and reads the whole response (head and body).
pub async fn http_exchange(addr: SocketAddr, request: &str) -> (HttpHead, Vec<u8>) {
    let (head, mut io) = send_head(addr, request).await;
    let body = within(
        Duration::from_secs(10),
        "an HTTP body",
        read_body(&mut io, &head),
    )
    .await
    .expect("read response body");
    (head, body)
}

/// How the raw upstream answers an upgrade request.
#[derive(Clone, Debug)]
pub enum UpstreamReply {
    /// 101 with these optional subprotocol/extension answers and extra headers.
    Accept {
        protocol: Option<String>,
        extensions: Option<String>,
        headers: Vec<(String, String)>,
    },
    /// A 101 whose Sec-WebSocket-Accept does not match the request's key.
    AcceptWrongKey,
    /// Any other status with headers and a body (Content-Length is added).
    Reject {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
}

impl UpstreamReply {
    /// A plain 101 with no subprotocol, extension or extra header.
    pub fn accept() -> Self {
        UpstreamReply::Accept {
            protocol: None,
            extensions: None,
            headers: Vec::new(),
        }
    }

    /// A 101 that agrees to `extensions`.
    pub fn accept_extensions(extensions: &str) -> Self {
        UpstreamReply::Accept {
            protocol: None,
            extensions: Some(extensions.to_string()),
            headers: Vec::new(),
        }
    }

    fn render(&self, request: &HttpHead) -> Vec<u8> {
        match self {
            UpstreamReply::Accept {
                protocol,
                extensions,
                headers,
            } => {
                let key = request.header("sec-websocket-key").unwrap_or_default();
                let mut out =
                    String::from("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n");
                if !headers
                    .iter()
                    .any(|(n, _)| n.eq_ignore_ascii_case("connection"))
                {
                    out.push_str("Connection: Upgrade\r\n");
                }
                out.push_str(&format!("Sec-WebSocket-Accept: {}\r\n", accept_for(&key)));
                if let Some(p) = protocol {
                    out.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
                }
                if let Some(e) = extensions {
                    out.push_str(&format!("Sec-WebSocket-Extensions: {e}\r\n"));
                }
                for (n, v) in headers {
                    out.push_str(&format!("{n}: {v}\r\n"));
                }
                out.push_str("\r\n");
                out.into_bytes()
            }
            UpstreamReply::AcceptWrongKey => {
                let wrong = accept_for(&new_ws_key());
                format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {wrong}\r\n\r\n"
                )
                .into_bytes()
            }
            UpstreamReply::Reject {
                status,
                headers,
                body,
            } => {
                let mut out = format!("HTTP/1.1 {status} Test\r\n");
                for (n, v) in headers {
                    out.push_str(&format!("{n}: {v}\r\n"));
                }
                out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
                let mut out = out.into_bytes();
                out.extend_from_slice(body);
                out
            }
        }
    }
}

/// One connection the raw upstream accepted: the request it saw and the socket after its reply.
pub struct RawUpstreamConn {
    pub request: HttpHead,
    pub ws: RawWs,
}

/// A raw-frame upstream: answers each upgrade as configured, then hands the connection to the
/// test, which drives it frame by frame.
pub struct RawUpstream {
    pub addr: SocketAddr,
    conns: mpsc::UnboundedReceiver<RawUpstreamConn>,
}

impl RawUpstream {
    /// The next connection the proxy opened, within `d`.
    pub async fn accept(&mut self, d: Duration) -> RawUpstreamConn {
        within(d, "the proxy to connect to the upstream", self.conns.recv())
            .await
            .expect("raw upstream task ended")
    }

    /// A connection if one arrived within `d`, else None.
    pub async fn try_accept(&mut self, d: Duration) -> Option<RawUpstreamConn> {
        timeout(d, self.conns.recv()).await.ok().flatten()
    }
}

/// A proxy in front of a raw upstream that accepts, started with `extra` flags after
/// `--upstream`, with one raw client session through it: the client's upgrade and the
/// upstream's end of the same session.
pub async fn raw_session(extra: &[&str]) -> (TestProxy, RawUpgrade, RawUpstreamConn) {
    let mut upstream = spawn_raw_upstream(UpstreamReply::accept()).await;
    let proxy = spawn_proxy_to(upstream.addr, extra).await;
    let client = raw_connect(proxy.addr, "/", &[]).await;
    let conn = upstream.accept(STEP).await;
    (proxy, client, conn)
}

pub async fn spawn_raw_upstream(reply: UpstreamReply) -> RawUpstream {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind raw upstream");
    let addr = listener.local_addr().expect("local addr");
    let (tx, conns) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (tx, reply) = (tx.clone(), reply.clone());
            tokio::spawn(async move {
                if let Some(conn) = answer_upgrade(stream, &reply).await {
                    let _ = tx.send(conn);
                }
            });
        }
    });
    RawUpstream { addr, conns }
}

async fn answer_upgrade(stream: TcpStream, reply: &UpstreamReply) -> Option<RawUpstreamConn> {
    let mut io = BufReader::new(stream);
    let request = timeout(Duration::from_secs(10), read_head(&mut io))
        .await
        .ok()?
        .ok()??;
    io.write_all(&reply.render(&request)).await.ok()?;
    io.flush().await.ok()?;
    Some(RawUpstreamConn {
        request,
        ws: RawWs::new(io, false),
    })
}

/// An upstream that completes the WebSocket handshake and then never reads or writes again.
/// Reports each handshake request it answered.
pub struct SilentUpstream {
    pub addr: SocketAddr,
    pub handshakes: mpsc::UnboundedReceiver<HttpHead>,
}

pub async fn spawn_silent_upstream() -> SilentUpstream {
    let mut raw = spawn_raw_upstream(UpstreamReply::accept()).await;
    let addr = raw.addr;
    let (tx, handshakes) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        // Holding the sockets keeps them open; nobody ever reads them.
        let mut held = Vec::new();
        while let Some(conn) = raw.conns.recv().await {
            let _ = tx.send(conn.request.clone());
            held.push(conn.ws);
        }
    });
    SilentUpstream { addr, handshakes }
}

/// A TCP server that accepts connections and never reads from or writes to them: a WebSocket
/// upstream whose handshake never completes.
pub async fn spawn_mute_tcp_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind mute server");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}
