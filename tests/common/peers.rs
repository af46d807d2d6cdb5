//! Library-based peers and network stand-ins: a tokio-tungstenite echo upstream that records
//! each handshake, tungstenite client helpers, an idle-cutting TCP relay (a load balancer
//! stand-in), a blackholed address and a plain-HTTP upstream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{STEP, within};

/// A handshake request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// Path and query.
    pub target: String,
    pub headers: http::HeaderMap,
}

impl RecordedRequest {
    /// All values of `name` joined with ", ", or None.
    pub fn header(&self, name: &str) -> Option<String> {
        let all: Vec<&str> = self
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("<non-ascii>"))
            .collect();
        (!all.is_empty()).then(|| all.join(", "))
    }
}

/// What the echo upstream observed after the handshake.
#[derive(Debug)]
pub enum EchoEvent {
    /// A message it received (and echoed, for text and binary).
    Message(Message),
    /// A close frame it received.
    Closed(Option<CloseFrame>),
    /// The connection ended, with the error if it ended badly.
    Ended(Option<String>),
}

/// Handshake choices of the echo upstream.
#[derive(Clone, Debug, Default)]
pub struct EchoOptions {
    /// Pick this subprotocol when the request offers it.
    pub choose_protocol: Option<String>,
    /// Extra headers on the 101 response.
    pub response_headers: Vec<(String, String)>,
    /// Record messages but never send one back: a legacy server that ignores an application
    /// heartbeat such as a text `ping`.
    pub mute: bool,
    /// Speak TLS with this config (a `wss://` upstream).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// A tokio-tungstenite echo upstream (it answers pings, as tungstenite always does).
pub struct EchoUpstream {
    pub addr: SocketAddr,
    pub requests: mpsc::UnboundedReceiver<RecordedRequest>,
    pub events: mpsc::UnboundedReceiver<EchoEvent>,
}

impl EchoUpstream {
    /// The next handshake request within `d`.
    pub async fn request(&mut self, d: Duration) -> RecordedRequest {
        within(d, "a handshake at the echo upstream", self.requests.recv())
            .await
            .expect("echo upstream ended")
    }

    /// The next event within `d`.
    pub async fn event(&mut self, d: Duration) -> EchoEvent {
        within(d, "an event at the echo upstream", self.events.recv())
            .await
            .expect("echo upstream ended")
    }

    /// The next close frame the upstream received within `d`, skipping messages.
    pub async fn closed(&mut self, d: Duration) -> Option<CloseFrame> {
        let fut = async {
            loop {
                match self.events.recv().await {
                    Some(EchoEvent::Closed(f)) => return f,
                    Some(EchoEvent::Message(_)) => {}
                    Some(EchoEvent::Ended(e)) => panic!("upstream ended without a close: {e:?}"),
                    None => panic!("echo upstream ended"),
                }
            }
        };
        within(d, "a close frame at the echo upstream", fut).await
    }
}

pub async fn spawn_echo_upstream(options: EchoOptions) -> EchoUpstream {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind echo upstream");
    let addr = listener.local_addr().expect("local addr");
    let (req_tx, requests) = mpsc::unbounded_channel();
    let (ev_tx, events) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (req_tx, ev_tx, options) = (req_tx.clone(), ev_tx.clone(), options.clone());
            let Some(tls) = options.tls.clone() else {
                tokio::spawn(echo_connection(stream, options, req_tx, ev_tx));
                continue;
            };
            tokio::spawn(async move {
                match tokio_rustls::TlsAcceptor::from(tls).accept(stream).await {
                    Ok(stream) => echo_connection(stream, options, req_tx, ev_tx).await,
                    Err(e) => {
                        let _ = ev_tx.send(EchoEvent::Ended(Some(format!("TLS: {e}"))));
                    }
                }
            });
        }
    });
    EchoUpstream {
        addr,
        requests,
        events,
    }
}

// tungstenite's handshake callback type returns a large `ErrorResponse`; not ours to change.
#[allow(clippy::result_large_err)]
async fn echo_connection<S>(
    stream: S,
    options: EchoOptions,
    req_tx: mpsc::UnboundedSender<RecordedRequest>,
    ev_tx: mpsc::UnboundedSender<EchoEvent>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mute = options.mute;
    let callback = move |req: &Request, mut resp: Response| {
        let target = req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let headers = req.headers().clone();
        let offered: Vec<String> = headers
            .get_all("sec-websocket-protocol")
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("").split(','))
            .map(|p| p.trim().to_string())
            .collect();
        let _ = req_tx.send(RecordedRequest { target, headers });
        if let Some(p) = options.choose_protocol.filter(|p| offered.contains(p)) {
            resp.headers_mut()
                .insert("sec-websocket-protocol", p.parse().expect("header value"));
        }
        for (n, v) in &options.response_headers {
            let name: http::HeaderName = n.parse().expect("header name");
            resp.headers_mut()
                .append(name, v.parse().expect("header value"));
        }
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                let _ = ev_tx.send(EchoEvent::Message(m.clone()));
                if !mute && ws.send(m).await.is_err() {
                    break;
                }
            }
            // tungstenite queues the close reply and sends it on the next read.
            Ok(Message::Close(f)) => {
                let _ = ev_tx.send(EchoEvent::Closed(f));
            }
            Ok(other) => {
                let _ = ev_tx.send(EchoEvent::Message(other));
            }
            Err(e) => {
                let _ = ev_tx.send(EchoEvent::Ended(Some(e.to_string())));
                return;
            }
        }
    }
    let _ = ev_tx.send(EchoEvent::Ended(None));
}

/// A tungstenite client connection.
pub type WsClient = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connects a tungstenite client (a URL or a prepared `http::Request`), panicking on failure.
pub async fn ws_connect<R>(request: R) -> (WsClient, tungstenite::handshake::client::Response)
where
    R: tungstenite::client::IntoClientRequest + Unpin,
{
    within(
        Duration::from_secs(10),
        "the client handshake",
        tokio_tungstenite::connect_async(request),
    )
    .await
    .unwrap_or_else(|e| panic!("client handshake failed: {e}"))
}

/// The next text, binary or close message within `d`; pings and pongs are skipped (tungstenite
/// answers pings by itself while we read).
pub async fn next_message(ws: &mut WsClient, d: Duration) -> Message {
    let fut = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(m)) => return m,
                Some(Err(e)) => panic!("client read error: {e}"),
                None => panic!("client stream ended"),
            }
        }
    };
    within(d, "a message at the client", fut).await
}

/// Sends `text` from the client and asserts that the same text comes back within `STEP`.
pub async fn assert_echo(ws: &mut WsClient, text: &str) {
    within(STEP, "send", ws.send(Message::text(text)))
        .await
        .expect("send");
    assert_eq!(next_message(ws, STEP).await, Message::text(text));
}

/// Reads for `d`, answering pings, and panics if anything other than a ping or pong arrives or
/// the connection ends. Returns how many pings the client received meanwhile.
pub async fn stay_quiet_for(ws: &mut WsClient, d: Duration) -> usize {
    let deadline = Instant::now() + d;
    let mut pings = 0;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return pings,
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(Some(Ok(Message::Pong(_)))) => {}
            Ok(other) => panic!("session was expected to stay quiet and open, got {other:?}"),
        }
    }
}

/// The close frame the client receives within `d` (data messages before it are a failure).
pub async fn expect_client_close(ws: &mut WsClient, d: Duration) -> Option<CloseFrame> {
    match next_message(ws, d).await {
        Message::Close(f) => f,
        other => panic!("expected a close at the client, got {other:?}"),
    }
}

/// Starts `wsbeat::demo::serve` (an echo upstream that never answers pings) on port 0.
pub async fn spawn_demo_upstream() -> SocketAddr {
    let listener = within(STEP, "bind demo", TcpListener::bind("127.0.0.1:0"))
        .await
        .expect("bind demo upstream");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(wsbeat::demo::serve(listener));
    addr
}

/// Counters and events of one TCP relay.
#[derive(Default)]
pub struct RelayStats {
    pub bytes_to_target: AtomicU64,
    pub bytes_from_target: AtomicU64,
}

/// An idle-cutting TCP relay: forwards bytes both ways and, like a load balancer with an idle
/// timeout, cuts both sockets when no byte has crossed in either direction for `idle`.
pub struct TcpRelay {
    pub addr: SocketAddr,
    pub stats: Arc<RelayStats>,
    cuts: watch::Receiver<usize>,
}

impl TcpRelay {
    /// How many connections the relay has cut for idleness so far.
    pub fn cut_count(&self) -> usize {
        *self.cuts.borrow()
    }

    /// Waits until at least `n` cuts happened, within `d`.
    pub async fn wait_for_cuts(&mut self, n: usize, d: Duration) {
        within(
            d,
            "the relay to cut an idle connection",
            self.cuts.wait_for(|c| *c >= n),
        )
        .await
        .expect("relay task ended");
    }
}

/// Starts a relay to `target`; `idle: None` never cuts (a byte-counting pass-through).
pub async fn spawn_tcp_relay(target: SocketAddr, idle: Option<Duration>) -> TcpRelay {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
    let addr = listener.local_addr().expect("local addr");
    let stats = Arc::new(RelayStats::default());
    let (cut_tx, cuts) = watch::channel(0usize);
    let cut_tx = Arc::new(cut_tx);
    let task_stats = stats.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (stats, cut_tx) = (task_stats.clone(), cut_tx.clone());
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(target).await else {
                    return;
                };
                if relay_connection(client, server, idle, &stats).await {
                    cut_tx.send_modify(|c| *c += 1);
                }
            });
        }
    });
    TcpRelay { addr, stats, cuts }
}

/// Relays until both directions end (false) or the connection idles out (true). Returning
/// drops, and so closes, both sockets.
async fn relay_connection(
    client: TcpStream,
    server: TcpStream,
    idle: Option<Duration>,
    stats: &RelayStats,
) -> bool {
    let last_activity = Mutex::new(Instant::now());
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let to_target = pump(
        client_read,
        server_write,
        &last_activity,
        &stats.bytes_to_target,
    );
    let from_target = pump(
        server_read,
        client_write,
        &last_activity,
        &stats.bytes_from_target,
    );
    let idle_out = async {
        let Some(idle) = idle else {
            return std::future::pending::<()>().await;
        };
        loop {
            let deadline = *last_activity.lock().expect("lock") + idle;
            if Instant::now() >= deadline {
                return;
            }
            sleep_until(deadline).await;
        }
    };
    tokio::select! {
        _ = futures_util::future::join(to_target, from_target) => false,
        () = idle_out => true,
    }
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    last_activity: &Mutex<Instant>,
    counter: &AtomicU64,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        *last_activity.lock().expect("lock") = Instant::now();
        counter.fetch_add(n as u64, Ordering::Relaxed);
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// An address whose TCP connects hang: a listener with backlog 0 whose accept queue is full,
/// so the kernel drops further SYNs. Construction verifies that a connect really hangs.
pub struct Blackhole {
    pub addr: SocketAddr,
    _listener: TcpListener,
    _fillers: Vec<TcpStream>,
}

pub async fn blackhole() -> Blackhole {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(0).expect("listen");
    let addr = listener.local_addr().expect("local addr");
    let mut fillers = Vec::new();
    for _ in 0..16 {
        match timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fillers.push(s),
            Ok(Err(e)) => panic!("blackhole connect failed instead of hanging: {e}"),
            // This connect hung: the queue is full and SYNs are being dropped.
            Err(_) => {
                return Blackhole {
                    addr,
                    _listener: listener,
                    _fillers: fillers,
                };
            }
        }
    }
    panic!("could not fill the accept queue of a backlog-0 listener: connects never hang")
}

/// A plain-HTTP upstream (hyper) that answers every request with 200 and a JSON description
/// of what it received: method, target, headers (lower-case name → values joined by ", ") and
/// body. `/forbidden` gets a 403 with a text body and an `X-Reason` header instead.
pub async fn spawn_http_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind http upstream");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(describe_request);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// [`spawn_http_upstream`] behind TLS with `tls` (an `https://` upstream).
pub async fn spawn_https_upstream(tls: Arc<rustls::ServerConfig>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind https upstream");
    let addr = listener.local_addr().expect("local addr");
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(describe_request);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn describe_request(
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if parts.uri.path() == "/forbidden" {
        let resp = hyper::Response::builder()
            .status(403)
            .header("x-reason", "test says no")
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(b"forbidden by upstream\n")))
            .expect("response");
        return Ok(resp);
    }
    let mut headers = serde_json::Map::new();
    for name in parts.headers.keys() {
        let joined: Vec<&str> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("<non-ascii>"))
            .collect();
        headers.insert(name.as_str().to_string(), joined.join(", ").into());
    }
    let description = serde_json::json!({
        "method": parts.method.as_str(),
        "target": parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or(""),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    let resp = hyper::Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("x-upstream", "http-echo")
        .body(Full::new(Bytes::from(description.to_string())))
        .expect("response");
    Ok(resp)
}
