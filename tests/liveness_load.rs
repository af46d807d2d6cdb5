//! No false kills under load, and frozen clients found in time: hundreds of sessions with
//! short heartbeats, megabyte messages both ways, slow readers and a CPU hog. A test binary of
//! its own, so that the hog does not share the machine with the other timing tests.

mod common;

use std::time::Duration;

use common::prom::scrape;
use common::slow::SlowReader;
use common::*;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Slack on top of a detection bound: scheduling on a busy two-core CI machine.
const DETECTION_MARGIN: Duration = Duration::from_millis(400);

/// Sessions in the load test, as the issue asks.
const LOAD_SESSIONS: usize = 500;
/// Threads of the CPU hog. The peers run in this test process, beside the proxy, on the same
/// two cores: with two hog threads it was the test's own peers (a debug build) that were
/// starved past the 300 ms timeouts and missed their pongs, not the proxy that misjudged them.
/// One thread keeps a core busy and the peers prompt.
const HOG_THREADS: usize = 1;
/// How long the load runs.
const LOAD_DURATION: Duration = Duration::from_secs(30);
/// Message sizes both ways, cycled: 64 B to 1 MiB.
const LOAD_SIZES: [usize; 5] = [64, 1024, 16 * 1024, 256 * 1024, 1024 * 1024];
/// Each upstream sends a message this often (about 26 KB/s on average), the sessions spread
/// over the gap...
const UPSTREAM_MESSAGE_GAP: Duration = Duration::from_secs(10);
/// ...and each client half as often.
const CLIENT_MESSAGE_GAP: Duration = Duration::from_secs(20);

/// How a load-test client reads.
#[derive(Clone, Copy, Debug)]
enum ClientKind {
    /// Reads about this many bytes per second.
    Paced(u64),
    /// Reads as fast as it can.
    FullSpeed,
    /// Never reads nor writes: dead to the proxy, though its TCP connection stays up.
    Frozen,
}

fn client_kind(i: usize) -> ClientKind {
    if i % 10 == 9 {
        return ClientKind::Frozen;
    }
    match i % 4 {
        0 => ClientKind::Paced(256 * 1024),
        1 => ClientKind::Paced(1024 * 1024),
        2 => ClientKind::Paced(4 * 1024 * 1024),
        _ => ClientKind::FullSpeed,
    }
}

/// Busy-loops on `threads` threads until `until`, competing with the proxy for the CPU.
fn cpu_hog(threads: usize, until: std::time::Instant) -> Vec<std::thread::JoinHandle<u64>> {
    (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let mut spins = 0u64;
                while std::time::Instant::now() < until {
                    spins = std::hint::black_box(spins.wrapping_add(1));
                }
                spins
            })
        })
        .collect()
}

/// The upstream end of one load session: answers pings, sends messages of every size every
/// [`UPSTREAM_MESSAGE_GAP`], reads all it gets, until `stop`. Returns the close frame it got (if any) and when.
async fn load_upstream(
    conn: RawUpstreamConn,
    phase: Duration,
    stop: CancellationToken,
) -> Option<(RawFrame, Instant)> {
    let (mut rd, mut wr) = tokio::io::split(conn.ws.io);
    let (pongs, mut to_pong) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let reader = async move {
        loop {
            let f = tokio::select! {
                _ = stop.cancelled() => return None,
                f = read_frame(&mut rd) => f,
            };
            match f {
                Ok(Some(f)) if f.opcode == OP_PING => {
                    let _ = pongs.send(f.payload);
                }
                Ok(Some(f)) if f.opcode == OP_CLOSE => return Some((f, Instant::now())),
                Ok(Some(_)) => {}
                _ => return None,
            }
        }
    };
    let writer = async move {
        let mut next = Instant::now() + phase;
        let mut sizes = LOAD_SIZES.iter().cycle();
        loop {
            let frame = tokio::select! {
                Some(p) = to_pong.recv() => RawFrame::pong(p),
                _ = tokio::time::sleep_until(next) => {
                    next += UPSTREAM_MESSAGE_GAP;
                    RawFrame::binary(vec![0x42; *sizes.next().expect("cycles")])
                }
            };
            if write_frame(&mut wr, &frame).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        close = reader => close,
        _ = writer => None,
    }
}

/// The segment size of a path with a 1500-byte MTU, as clients on real networks have.
const INTERNET_MSS: u32 = 1448;
/// A fixed receive buffer for the load-test clients, as small clients keep.
const CLIENT_RCVBUF: u32 = 64 * 1024;

/// A raw WebSocket client whose TCP connection uses [`INTERNET_MSS`] and a fixed
/// [`CLIENT_RCVBUF`]. The proxy sees a reader take bytes only when the reader's kernel reopens
/// its receive window, and Linux reopens a full window only once 1/16 of the buffer or one
/// segment is free, whichever is more. On loopback (64 KiB segments, buffers grown to
/// megabytes) a 64 KiB/s reader would show life about once a second, slower than the test's
/// 300 ms timeout; on a real path with such a client, every few kilobytes.
async fn connect_with_internet_mss(proxy: std::net::SocketAddr, target: &str) -> RawWs {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(CLIENT_RCVBUF)
        .expect("SO_RCVBUF");
    socket2::SockRef::from(&socket)
        .set_tcp_mss(INTERNET_MSS)
        .expect("TCP_MAXSEG");
    let stream = within(STEP, "connect", socket.connect(proxy))
        .await
        .expect("connect");
    let mut io = tokio::io::BufReader::new(stream);
    let key = new_ws_key();
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {proxy}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut io, request.as_bytes())
        .await
        .expect("request");
    let head = within(STEP, "the 101", read_head(&mut io))
        .await
        .expect("response")
        .expect("a response");
    assert_eq!(head.status(), 101, "{head:?}");
    RawWs::new(io, true)
}

/// The client end of one load session, reading as `kind` says, answering pings, and sending
/// messages of every size every [`CLIENT_MESSAGE_GAP`], until `stop`.
async fn load_client(
    client: RawWs,
    kind: ClientKind,
    i: usize,
    phase: Duration,
    stop: CancellationToken,
) {
    if let ClientKind::Frozen = kind {
        stop.cancelled().await;
        drop(client);
        return;
    }
    let (mut rd, mut wr) = tokio::io::split(client.io);
    let (pongs, mut to_pong) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let reader = async move {
        let (rate, chunk) = match kind {
            ClientKind::Paced(rate) => (rate, (rate / 20).max(4096) as usize),
            _ => (u64::MAX, 64 * 1024),
        };
        let pace = Duration::from_secs_f64(chunk as f64 / rate as f64);
        let mut reader = SlowReader::default();
        let mut buf = vec![0u8; chunk];
        let mut next = Instant::now();
        loop {
            // Pacing, not synchronisation: this is how fast the client reads.
            tokio::time::sleep_until(next).await;
            next += pace;
            let n = match rd.read(&mut buf).await {
                Ok(n) if n > 0 => n,
                _ => return,
            };
            for (opcode, payload) in reader.feed(&buf[..n]) {
                if opcode == OP_PING {
                    let _ = pongs.send(payload);
                }
            }
        }
    };
    let writer = async move {
        let mut next = Instant::now() + phase;
        for j in 0.. {
            let frame = tokio::select! {
                Some(p) = to_pong.recv() => RawFrame::pong(p),
                _ = tokio::time::sleep_until(next) => {
                    next += CLIENT_MESSAGE_GAP;
                    RawFrame::binary(vec![0x24; LOAD_SIZES[(i + j) % LOAD_SIZES.len()]])
                }
            };
            if write_frame(&mut wr, &frame.with_mask(next_mask_key()))
                .await
                .is_err()
            {
                break;
            }
        }
    };
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = reader => {}
        _ = writer => {}
    }
}

/// No false kills under load: 500 sessions for 30 s with pings every 300 ms and a 300 ms pong
/// timeout on both legs, messages of 64 B to 1 MiB both ways, clients reading at 256 KiB/s to
/// full speed, and a thread burning a core beside the proxy. A tenth of the clients are
/// frozen: exactly those are declared dead, each within ping interval + pong timeout + one grid
/// step (plus scheduling slack); no live client and no upstream is.
///
/// Deviations from the issue (readers from 64 KiB/s, a hog on both cores):
/// - One hog thread: see [`HOG_THREADS`].
/// - Readers from 256 KiB/s. A 64 KiB/s reader with a 64 KiB receive buffer behind a 1 MiB
///   message shows its kernel's peer nothing for about a second: its buffer holds more than its
///   window (segment overhead), so reading frees no window until that excess is read, and the
///   window stays zero (measured with TCP_INFO: no byte acknowledged for 1.5 s while the
///   reader read 4 KiB every 62 ms). A frozen client looks the same, and must be found within
///   0.62 s, so no rule can tell the two apart at 300 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_false_kills_under_load_and_frozen_clients_are_found() {
    let mut upstream = spawn_raw_upstream(UpstreamReply::accept()).await;
    let proxy = spawn_proxy_to(
        upstream.addr,
        &[
            "--client-ping-interval",
            "300ms",
            "--client-pong-timeout",
            "300ms",
            "--upstream-ping-interval",
            "300ms",
            "--upstream-pong-timeout",
            "300ms",
        ],
    )
    .await;
    let stop = CancellationToken::new();
    let mut sessions = Vec::new();
    let n = LOAD_SESSIONS;
    for i in 0..n {
        let client = connect_with_internet_mss(proxy.addr, &format!("/s{i}")).await;
        let conn = upstream.accept(STEP).await;
        assert_eq!(conn.request.target(), format!("/s{i}"));
        let connected = Instant::now();
        let kind = client_kind(i);
        // Spread the sessions' messages over the gap, as independent users' are.
        let phase = UPSTREAM_MESSAGE_GAP * (i % 64) as u32 / 64;
        let client = tokio::spawn(load_client(client, kind, i, phase, stop.clone()));
        let upstream = tokio::spawn(load_upstream(conn, phase, stop.clone()));
        sessions.push((i, connected, client, upstream));
    }
    // The verdict is taken at `deadline`; the peers keep going until the proxy is gone, so
    // that none is declared dead because it stopped first.
    let deadline = Instant::now() + LOAD_DURATION;
    let hog = cpu_hog(HOG_THREADS, std::time::Instant::now() + LOAD_DURATION);
    tokio::time::sleep_until(deadline).await;
    let timeouts = scrape(proxy.admin_addr).await;
    drop(proxy);
    stop.cancel();
    let mut dead = Vec::new();
    let mut slowest = Duration::ZERO;
    let mut false_kills = Vec::new();
    for (i, accepted, client, task) in sessions {
        within(STEP, "a client task", client).await.unwrap();
        let close = within(STEP, "an upstream task", task).await.unwrap();
        let close = close.filter(|(_, at)| *at <= deadline);
        let frozen = matches!(client_kind(i), ClientKind::Frozen);
        match close {
            Some((f, at)) if !frozen => false_kills.push((
                i,
                client_kind(i),
                f.close_reason(),
                at.duration_since(accepted),
            )),
            Some((f, at)) => {
                let after = at.duration_since(accepted);
                assert_eq!(
                    (f.close_code(), f.close_reason().as_str()),
                    (Some(1001), "client timed out"),
                    "session {i}"
                );
                slowest = slowest.max(after);
                dead.push(i);
            }
            None => assert!(!frozen, "frozen session {i} was never declared dead"),
        }
    }
    assert!(
        false_kills.is_empty(),
        "live sessions declared dead: {false_kills:?}"
    );
    let spins: u64 = hog.into_iter().map(|t| t.join().unwrap_or(0)).sum();
    eprintln!(
        "load: {n} sessions for {LOAD_DURATION:?}, {} frozen declared dead, the \
         slowest after {slowest:?}; CPU hog spun {spins} times",
        dead.len()
    );
    // 300 ms + 1 s + one 19 ms grid step, plus slack for a loaded two-core machine.
    let bound = ms(300 + 300 + 19) + DETECTION_MARGIN;
    assert!(
        slowest <= bound,
        "a frozen client was found only after {slowest:?}"
    );
    assert_eq!(dead.len(), n / 10);
    let counted = |side| timeouts.value("wsbeat_peer_timeouts_total", &[("side", side)]);
    assert_eq!(counted("client"), (n / 10) as f64);
    assert_eq!(counted("upstream"), 0.0);
}
