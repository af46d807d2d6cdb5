//! Relay tests over in-memory duplex pipes, with tokio's paused clock for the heartbeat timings.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

use super::*;
use crate::frame;
use crate::heartbeat::HeartbeatConfig;
use crate::sessions::Sessions;

const S: Duration = Duration::from_secs(1);

struct Harness {
    relay: JoinHandle<Outcome>,
    /// The test's end of the client leg.
    client: DuplexStream,
    /// The test's end of the upstream leg.
    upstream: DuplexStream,
    drain: crate::shutdown::DrainTrigger,
    metrics: Arc<Metrics>,
    /// While false, the proxy's reads of the client leg find nothing and are not woken: bytes
    /// the client sent wait unseen, as they do while the proxy is starved of CPU.
    client_readable: Arc<AtomicBool>,
}

/// The proxy's end of the client leg, whose reads can be held back (see `client_readable`).
struct Gated {
    io: DuplexStream,
    readable: Arc<AtomicBool>,
}

impl crate::net::PeerDelivery for Gated {
    fn delivery(&self) -> Option<wsbeat_tcpinfo::Delivery> {
        None
    }
}

impl crate::net::SpliceSocket for Gated {
    fn splice_socket(&self) -> Option<&tokio::net::TcpStream> {
        None
    }
}

impl tokio::io::AsyncRead for Gated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.readable.load(Ordering::Relaxed) {
            return Poll::Pending;
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Gated {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

fn cfg(client: (u64, u64), upstream: (u64, u64)) -> RelayConfig {
    RelayConfig {
        client: HeartbeatConfig {
            interval: S * client.0 as u32,
            timeout: S * client.1 as u32,
            timeout_after_pong: None,
        },
        upstream: HeartbeatConfig {
            interval: S * upstream.0 as u32,
            timeout: S * upstream.1 as u32,
            timeout_after_pong: None,
        },
        close_timeout: 5 * S,
        max_frame_size: 1 << 20,
        upstream_masking: crate::config::UpstreamMasking::Fresh,
        splice_min_payload: 0,
        text: Default::default(),
    }
}

/// Starts a relay whose pipes hold `capacity` bytes each way.
fn start(cfg: RelayConfig, capacity: usize) -> Harness {
    let (client, proxy_client) = tokio::io::duplex(capacity);
    let (upstream, proxy_upstream) = tokio::io::duplex(capacity);
    let metrics = Arc::new(Metrics::new().unwrap());
    let (drain, watcher) = crate::shutdown::channel();
    let sessions = Arc::new(Sessions::default());
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let registration = sessions.register(addr, "/".into());
    let client_readable = Arc::new(AtomicBool::new(true));
    let readable = Arc::clone(&client_readable);
    let ctx = SessionContext {
        cfg: Arc::new(cfg),
        drain: watcher,
        metrics: Arc::clone(&metrics),
        info: Arc::clone(registration.info()),
        extensions: false,
    };
    let relay = tokio::spawn(async move {
        let _registration = registration;
        run(
            Peer {
                io: Gated {
                    io: proxy_client,
                    readable,
                },
                read_ahead: Bytes::new(),
            },
            Peer {
                io: proxy_upstream,
                read_ahead: Bytes::new(),
            },
            ctx,
        )
        .await
    });
    Harness {
        relay,
        client,
        upstream,
        drain,
        metrics,
        client_readable,
    }
}

async fn ws(io: DuplexStream, role: Role) -> WebSocketStream<DuplexStream> {
    WebSocketStream::from_raw_socket(io, role, None).await
}

/// Next message, within a minute of (paused) time.
async fn next(ws: &mut WebSocketStream<DuplexStream>) -> Message {
    tokio::time::timeout(60 * S, ws.next())
        .await
        .expect("a message in time")
        .expect("stream open")
        .expect("valid message")
}

fn close_of(msg: Message) -> (u16, String) {
    match msg {
        Message::Close(Some(f)) => (u16::from(f.code), f.reason.to_string()),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

/// Reads raw frames from a pipe end until `want` of them arrived.
async fn raw_frames(io: &mut DuplexStream, want: usize) -> Vec<(u8, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    while out.len() < want {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(60 * S, io.read(&mut chunk))
            .await
            .expect("bytes in time")
            .unwrap();
        assert!(n > 0, "pipe closed after {} frames", out.len());
        buf.extend_from_slice(&chunk[..n]);
        while let Some(h) = frame::parse_header(&buf).unwrap() {
            let len = h.frame_len() as usize;
            if buf.len() < len {
                break;
            }
            let mut payload = buf[h.header_len..len].to_vec();
            if let Some(k) = h.mask {
                frame::apply_mask(&mut payload, k, 0);
            }
            out.push((h.opcode, payload));
            buf.drain(..len);
        }
    }
    out
}

#[tokio::test(start_paused = true)]
async fn silent_client_is_dropped_after_interval_plus_timeout() {
    let h = start(cfg((20, 20), (0, 0)), 64 * 1024);
    let t0 = Instant::now();
    let mut upstream = ws(h.upstream, Role::Server).await;
    let (code, reason) = close_of(next(&mut upstream).await);
    let detected = t0.elapsed();
    assert_eq!((code, reason.as_str()), (1001, "client timed out"));
    assert!(
        detected >= 40 * S && detected < 41 * S,
        "detected after {detected:?}"
    );
    let outcome = h.relay.await.unwrap();
    assert_eq!(
        (outcome.initiator, outcome.reason),
        (Initiator::Proxy, CloseReason::Timeout)
    );
    assert_eq!(h.metrics.peer_timeouts[0].get(), 1);
    drop(h.client);
}

#[tokio::test(start_paused = true)]
async fn upstream_that_never_pongs_stays_alive_when_its_timeout_is_off() {
    let h = start(cfg((0, 0), (1, 0)), 64 * 1024);
    let mut upstream = h.upstream;
    // Ten minutes of pings the upstream reads but never answers.
    let pings = raw_frames(&mut upstream, 600).await;
    assert!(
        pings
            .iter()
            .all(|(op, p)| *op == frame::OP_PING && p.len() == 8)
    );
    assert!(!h.relay.is_finished());
    let mut client = ws(h.client, Role::Client).await;
    client.send(Message::text("still here")).await.unwrap();
    let got = raw_frames(&mut upstream, 2).await;
    assert!(
        got.iter()
            .any(|(op, p)| *op == frame::OP_TEXT && p == b"still here")
    );
}

#[tokio::test(start_paused = true)]
async fn upstream_pong_timeout_closes_the_client_with_1011() {
    let h = start(cfg((0, 0), (1, 2)), 64 * 1024);
    let _silent_upstream = h.upstream;
    let t0 = Instant::now();
    let mut client = ws(h.client, Role::Client).await;
    let (code, reason) = close_of(next(&mut client).await);
    assert_eq!((code, reason.as_str()), (1011, "upstream timed out"));
    assert!(
        t0.elapsed() >= 3 * S && t0.elapsed() < 4 * S,
        "after {:?}",
        t0.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn client_pings_are_answered_by_the_proxy_and_not_forwarded() {
    let h = start(cfg((0, 0), (0, 0)), 64 * 1024);
    let mut client = ws(h.client, Role::Client).await;
    let mut upstream = h.upstream;
    client
        .send(Message::Ping(b"payload-123".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(
        next(&mut client).await,
        Message::Pong(b"payload-123".to_vec().into())
    );
    client.send(Message::text("after")).await.unwrap();
    // The first frame the upstream sees is the text: the ping never reached it.
    let got = raw_frames(&mut upstream, 1).await;
    assert_eq!(got, vec![(frame::OP_TEXT, b"after".to_vec())]);
}

#[tokio::test(start_paused = true)]
async fn pongs_from_the_peer_are_matched_and_never_forwarded() {
    let h = start(cfg((1, 5), (0, 0)), 64 * 1024);
    let mut client = ws(h.client, Role::Client).await;
    let mut upstream = h.upstream;
    // tungstenite answers our pings (and shows them) while we wait for messages.
    let t0 = Instant::now();
    while t0.elapsed() < 10 * S {
        assert!(
            matches!(next(&mut client).await, Message::Ping(_)),
            "only pings reach the client"
        );
    }
    client.send(Message::text("x")).await.unwrap();
    assert_eq!(
        raw_frames(&mut upstream, 1).await,
        vec![(frame::OP_TEXT, b"x".to_vec())]
    );
    let pongs = h.metrics.pongs_received[0].get();
    assert!(pongs >= 9, "pongs matched: {pongs}");
    assert_eq!(h.metrics.ping_rtt[0].get_sample_count(), pongs);
    assert!(
        !h.relay.is_finished(),
        "a client that pongs is never timed out"
    );
}

/// The upstream stops reading, so client → upstream backs up; the client keeps sending data and
/// answering pings. It must neither be declared dead nor stop being pinged, and once the upstream
/// reads again every byte arrives in order.
#[tokio::test(start_paused = true)]
async fn heartbeats_keep_running_while_the_other_direction_is_blocked() {
    let h = start(cfg((1, 2), (0, 0)), 4096);
    let (mut client_tx, mut client_rx) = ws(h.client, Role::Client).await.split();
    let pinger = tokio::spawn(async move {
        let mut pings = 0;
        while let Some(Ok(msg)) = client_rx.next().await {
            if matches!(msg, Message::Ping(_)) {
                pings += 1;
            }
            if pings == 20 {
                break;
            }
        }
        pings
    });
    let sender = tokio::spawn(async move {
        for i in 0..2000u32 {
            client_tx
                .send(Message::binary(vec![(i % 251) as u8; 1000]))
                .await
                .unwrap();
        }
        client_tx
    });
    // Twenty seconds with the upstream not reading: ten pong timeouts.
    assert_eq!(
        tokio::time::timeout(60 * S, pinger).await.unwrap().unwrap(),
        20
    );
    assert!(!sender.is_finished(), "backpressure reached the client");
    assert!(!h.relay.is_finished(), "the client was not declared dead");
    let mut upstream = ws(h.upstream, Role::Server).await;
    for i in 0..2000u32 {
        match next(&mut upstream).await {
            Message::Binary(b) => assert_eq!(b, vec![(i % 251) as u8; 1000]),
            other => panic!("message {i}: {other:?}"),
        }
    }
    drop(sender.await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn close_frames_pass_both_ways_with_code_and_reason() {
    let h = start(cfg((0, 0), (0, 0)), 64 * 1024);
    let mut client = ws(h.client, Role::Client).await;
    let mut upstream = ws(h.upstream, Role::Server).await;
    let bye = CloseFrame {
        code: CloseCode::from(4001),
        reason: "bye now".into(),
    };
    client.close(Some(bye)).await.unwrap();
    assert_eq!(
        close_of(next(&mut upstream).await),
        (4001, "bye now".into())
    );
    // tungstenite sends its reply when driven further.
    tokio::spawn(async move { while upstream.next().await.is_some() {} });
    assert_eq!(close_of(next(&mut client).await), (4001, "bye now".into()));
    let outcome = h.relay.await.unwrap();
    assert_eq!(
        (outcome.initiator, outcome.code),
        (Initiator::Client, Some(4001))
    );
}

#[tokio::test(start_paused = true)]
async fn upstream_eof_without_close_gives_the_client_1011() {
    let h = start(cfg((0, 0), (0, 0)), 64 * 1024);
    let mut client = ws(h.client, Role::Client).await;
    drop(h.upstream);
    assert_eq!(
        close_of(next(&mut client).await),
        (1011, "upstream connection lost".into())
    );
    let outcome = h.relay.await.unwrap();
    assert_eq!(
        (outcome.initiator, outcome.reason),
        (Initiator::Upstream, CloseReason::IoError)
    );
}

#[tokio::test(start_paused = true)]
async fn client_eof_without_close_gives_the_upstream_1001() {
    let h = start(cfg((0, 0), (0, 0)), 64 * 1024);
    let mut upstream = ws(h.upstream, Role::Server).await;
    drop(h.client);
    assert_eq!(
        close_of(next(&mut upstream).await),
        (1001, "client connection lost".into())
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_sends_1001_to_both_sides() {
    let h = start(cfg((0, 0), (0, 0)), 64 * 1024);
    let mut client = ws(h.client, Role::Client).await;
    let mut upstream = ws(h.upstream, Role::Server).await;
    h.drain.advance(crate::shutdown::Phase::GoingAway);
    assert_eq!(
        close_of(next(&mut client).await),
        (1001, "proxy shutting down".into())
    );
    assert_eq!(
        close_of(next(&mut upstream).await),
        (1001, "proxy shutting down".into())
    );
    let outcome = tokio::time::timeout(10 * S, h.relay)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.reason, CloseReason::Shutdown);
}

#[tokio::test(start_paused = true)]
async fn oversized_frame_gets_1009_and_the_other_side_is_told() {
    let h = start(cfg((0, 0), (0, 0)), 64 * 1024);
    let mut upstream = ws(h.upstream, Role::Server).await;
    let mut client_raw = h.client;
    let mut big = Vec::new();
    frame::encode_frame(
        &mut big,
        true,
        frame::OP_BINARY,
        &vec![0u8; (1 << 20) + 1],
        Some([1, 2, 3, 4]),
    );
    client_raw.write_all(&big[..14]).await.unwrap();
    assert_eq!(
        close_of(next(&mut upstream).await),
        (1001, "client protocol error".into())
    );
    let frames = raw_frames(&mut client_raw, 1).await;
    assert_eq!(frames[0].0, frame::OP_CLOSE);
    assert_eq!(frame::close_code_of(&frames[0].1), Some(1009));
}

#[tokio::test(start_paused = true)]
async fn unmasked_client_frame_gets_1002() {
    let h = start(cfg((0, 0), (0, 0)), 64 * 1024);
    let _upstream = h.upstream;
    let mut client_raw = h.client;
    let mut bad = Vec::new();
    frame::encode_frame(&mut bad, true, frame::OP_TEXT, b"plain", None);
    client_raw.write_all(&bad).await.unwrap();
    let frames = raw_frames(&mut client_raw, 1).await;
    assert_eq!(frame::close_code_of(&frames[0].1), Some(1002));
}

/// A proxy starved of CPU wakes up to an expired pong timeout and, in the same instant, a pong
/// waiting in the client's socket. It reads before it declares: the client lives.
#[tokio::test(start_paused = true)]
async fn a_pong_waiting_in_the_socket_is_read_before_the_peer_is_declared_dead() {
    let mut h = start(cfg((1, 1), (0, 0)), 64 * 1024);
    let _upstream = ws(h.upstream, Role::Server).await;
    let ping = raw_frames(&mut h.client, 1).await.remove(0);
    assert_eq!(ping.0, frame::OP_PING);
    // The pong reaches the proxy's socket, but the proxy does not get to read it: the wake-up
    // for it is lost, as if the proxy were starved...
    h.client_readable.store(false, Ordering::Relaxed);
    let mut pong = Vec::new();
    frame::encode_frame(&mut pong, true, frame::OP_PONG, &ping.1, Some([1, 2, 3, 4]));
    h.client.write_all(&pong).await.unwrap();
    tokio::task::yield_now().await;
    h.client_readable.store(true, Ordering::Relaxed);
    // ...until its pong timeout wakes it.
    tokio::time::sleep(3 * S / 2).await;
    assert_eq!(
        h.metrics.peer_timeouts[0].get(),
        0,
        "the client was declared dead"
    );
    assert!(!h.relay.is_finished());
    assert_eq!(h.metrics.pongs_received[0].get(), 1);
}

/// A proxy-side connection whose write side never finishes shutting down, as a TLS peer that
/// takes no more bytes leaves our close_notify pending.
struct StuckShutdown(DuplexStream);

impl crate::net::PeerDelivery for StuckShutdown {
    fn delivery(&self) -> Option<wsbeat_tcpinfo::Delivery> {
        None
    }
}

impl crate::net::SpliceSocket for StuckShutdown {
    fn splice_socket(&self) -> Option<&tokio::net::TcpStream> {
        None
    }
}

impl tokio::io::AsyncRead for StuckShutdown {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for StuckShutdown {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Pending
    }
}

/// After the close handshake, each leg still open gets `SHUTDOWN_GRACE` to shut its write
/// side down, one after the other; a leg that never finishes does not keep the session.
#[tokio::test(start_paused = true)]
async fn each_open_leg_gets_the_shutdown_grace_in_turn() {
    let (client, proxy_client) = tokio::io::duplex(64 * 1024);
    let (upstream, proxy_upstream) = tokio::io::duplex(64 * 1024);
    let sessions = Arc::new(Sessions::default());
    let registration = sessions.register("127.0.0.1:1".parse().unwrap(), "/".into());
    let ctx = SessionContext {
        cfg: Arc::new(cfg((0, 0), (0, 0))),
        drain: crate::shutdown::channel().1,
        metrics: Arc::new(Metrics::new().unwrap()),
        info: Arc::clone(registration.info()),
        extensions: false,
    };
    let relay = tokio::spawn(run(
        Peer {
            io: StuckShutdown(proxy_client),
            read_ahead: Bytes::new(),
        },
        Peer {
            io: StuckShutdown(proxy_upstream),
            read_ahead: Bytes::new(),
        },
        ctx,
    ));
    let mut client = ws(client, Role::Client).await;
    let mut upstream = ws(upstream, Role::Server).await;
    client.close(None).await.unwrap();
    assert!(matches!(next(&mut upstream).await, Message::Close(_)));
    tokio::spawn(async move { while upstream.next().await.is_some() {} });
    assert!(matches!(next(&mut client).await, Message::Close(_)));
    let closed = Instant::now();
    let outcome = tokio::time::timeout(10 * S, relay)
        .await
        .expect("the session ends despite both stuck shutdowns")
        .unwrap();
    assert_eq!(outcome.initiator, Initiator::Client);
    let took = closed.elapsed();
    assert!(
        took >= 2 * SHUTDOWN_GRACE && took < 2 * SHUTDOWN_GRACE + SHUTDOWN_GRACE / 2,
        "ended {took:?} after the close handshake"
    );
}

/// What the kernel's view at a silent peer's expiry says, against the view at the look, for
/// the peers the liveness rules are about. Figures are from debug logs of real runs.
#[test]
fn peer_read_counts_bytes_taken_that_waited_at_the_look_beyond_our_pings() {
    let view = |acked, unacked, unsent, window, delivered| wsbeat_tcpinfo::Delivery {
        window,
        acked,
        unacked,
        unsent,
        delivered,
        mss: 1448,
        probes: 0,
    };
    let ours = 2 * MAX_PING_FRAME;
    let link = view(1_000_000, 40_000, 0, 168_960, 700);
    let up = view(1_000_000, 0, 50_000, 121_856, 700);
    let frozen = view(1_000_000, 0, 0, 64_984, 700);
    let full = view(1_000_000, 0, 47_388, 0, 700);
    let held = view(1_000_000, 0, 50_680, 719_872, 700);
    let narrow = view(1_000_000, 0, 50_680, 1_000, 700);
    let gone = view(1_000_000, 2_896, 50_680, 719_872, 700);
    let cases = [
        (
            "a client behind a 64 KiB/s link, 40 KB in the bottleneck's queue and none unsent: \
             8688 bytes acknowledged in 150 ms and read at once",
            link,
            view(1_008_688, 31_312, 0, 168_960, 706),
            true,
        ),
        (
            "the same client frozen: its kernel takes what comes through until its buffer is \
             full, and nothing tells it from a live one before",
            link,
            view(1_008_688, 31_312, 0, 160_272, 706),
            true,
        ),
        (
            "a loopback upstream that read a little of what waited",
            up,
            view(1_002_896, 0, 47_104, 124_928, 701),
            true,
        ),
        (
            "a frozen client whose kernel took our pings, the window at its threshold",
            frozen,
            view(1_000_020, 0, 0, 64_984, 702),
            false,
        ),
        (
            "the same, sent a 1 KiB message after the look: taken at once, the threshold grew",
            frozen,
            view(1_001_048, 0, 0, 67_846, 703),
            false,
        ),
        ("a frozen client behind a full window", full, full, false),
        (
            "a reader that read its full buffer: the window reopened",
            full,
            view(1_000_000, 0, 47_388, 131_072, 700),
            true,
        ),
        (
            "loss recovery: the cumulative acknowledgement waits, arrivals are SACKed",
            link,
            view(1_000_000, 40_000, 0, 168_960, 706),
            true,
        ),
        (
            "our two pings SACKed behind a hole",
            link,
            view(1_000_000, 40_000, 0, 168_960, 702),
            false,
        ),
        (
            "our stack held everything back: nothing in flight, bytes unsent, the window open",
            held,
            held,
            true,
        ),
        (
            "the same with a window under a segment",
            narrow,
            narrow,
            false,
        ),
        (
            "the same while the kernel probes in vain: it cannot send (a route gone)",
            held,
            wsbeat_tcpinfo::Delivery { probes: 3, ..held },
            false,
        ),
        (
            "a vanished host: bytes in flight stay unacknowledged",
            gone,
            gone,
            false,
        ),
    ];
    for (what, then, now, kept) in cases {
        assert_eq!(peer_read(then, now, ours), kept, "{what}");
    }
}
