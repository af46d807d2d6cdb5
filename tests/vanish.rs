//! Dead peers and vanished hosts, measured against the wsbeat binary rather than derived from
//! the settings: the peer runs on a host of its own (a network namespace the test creates, see
//! `common/netns.rs`), wsbeat runs as a real process in the root namespace, and the peer dies
//! in one of two ways. Its host vanishes without a FIN: from one instant on, every packet into
//! or out of it is dropped. Or its process freezes (SIGSTOP): the host still acknowledges every
//! segment, the program neither reads nor answers.
//!
//! - A vanished or frozen client is found by the client heartbeat: the upstream gets 1001
//!   within ping interval + pong timeout + one grid step.
//! - A frozen upstream is found the same way when the upstream pong timeout is on (1011).
//! - A vanished upstream host, with the upstream pong timeout off, is found by TCP_USER_TIMEOUT
//!   on wsbeat's pings: the client gets 1011 within ping interval + user timeout + one grid
//!   step + the kernel's first retransmission ([`FIRST_RETRANSMIT`], about 400 ms).
//! - The same bounds hold when the host vanishes while wsbeat is in the middle of writing a
//!   16 MiB frame to it.
//!
//! Every test passes its heartbeat flags explicitly, so that a change of the defaults does not
//! change what it checks. The runs with the default settings take 40-60 s each, and so does the
//! slow reader; they are `#[ignore]`d and give README's detection-time table its numbers:
//! `cargo test --test vanish -- --ignored --nocapture` (as root, with `WSBEAT_TEST_PYTHON` set
//! as `./scripts/test.sh` sets it).
//!
//! Bounds: the grid step is a sixteenth of the shortest heartbeat period, at most 250 ms
//! (src/relay.rs). [`SLACK`] covers what lies outside wsbeat: the vanish itself is a process
//! (iptables-restore) and the close crosses a socket to this test.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use futures_util::{FutureExt, SinkExt, Stream, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message};
use wsbeat::config::{
    DEFAULT_CLIENT_PONG_TIMEOUT, DEFAULT_PING_INTERVAL, DEFAULT_UPSTREAM_TCP_USER_TIMEOUT,
};

/// Short heartbeat settings for the idle cases.
const PING_INTERVAL: Duration = Duration::from_millis(200);
const PONG_TIMEOUT: Duration = Duration::from_millis(200);
/// Short `--upstream-tcp-user-timeout`.
const USER_TIMEOUT: Duration = Duration::from_secs(1);
/// Client heartbeat for the mid-frame case: the frame takes seconds to cross, so these are
/// longer than the time from the start of the frame to the vanish. Today a ping that waits
/// behind a frame counts against the pong timeout, so shorter settings would drop the slow but
/// live client before its host vanishes.
const FRAME_PING_INTERVAL: Duration = Duration::from_secs(1);
const FRAME_PONG_TIMEOUT: Duration = Duration::from_secs(1);
/// Outside wsbeat's bound: running iptables-restore, and the close reaching this test.
const SLACK: Duration = Duration::from_millis(150);
/// How long after the first unacknowledged segment the kernel starts counting
/// TCP_USER_TIMEOUT. It counts from the first retransmission (`retrans_stamp`), and on a LAN
/// that comes one tail loss probe (2 RTT + 200 ms with one segment in flight) plus one
/// retransmission timeout (at least 200 ms) after the segment: about 400 ms, measured here as
/// 380-400 ms past ping interval + user timeout. The bound in issue 9 leaves this out.
const FIRST_RETRANSMIT: Duration = Duration::from_millis(400);
/// The large frame toward the vanishing host.
const BIG_FRAME: usize = 16 << 20;
/// How the peer reads the large frame: 16 s to cross, and little of it in the peer's buffer.
const SLOW_READ: Reading = Reading {
    rate: 1 << 20,
    rcvbuf: 64 << 10,
};
/// Progress of the peer through the large frame at which its host vanishes.
const VANISH_AFTER: u64 = 256 << 10;

type Upstream = WebSocketStream<TcpStream>;

/// The grid step for heartbeat periods whose shortest is `shortest` (src/relay.rs).
fn grid(shortest: Duration) -> Duration {
    (shortest / 16).min(Duration::from_millis(250))
}

fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// The Python interpreter and a fresh namespace, or `None` when the test is skipped.
fn prerequisites(test: &str) -> Option<(Netns, PathBuf)> {
    let python = test_python(test)?;
    Some((Netns::create(test)?, python))
}

/// `--client-ping-interval`/`--client-pong-timeout`, the upstream leg not heartbeated (it is
/// loopback and not under test).
fn client_heartbeat(interval: Duration, timeout: Duration) -> Vec<String> {
    let (i, t) = (ms(interval), ms(timeout));
    let flags = ["--client-ping-interval", &i, "--client-pong-timeout", &t];
    let off = [
        "--upstream-ping-interval",
        "0",
        "--upstream-pong-timeout",
        "0",
    ];
    flags.iter().chain(&off).map(|s| s.to_string()).collect()
}

/// `--upstream-ping-interval`, `--upstream-pong-timeout` (zero: off) and
/// `--upstream-tcp-user-timeout`, the client leg not heartbeated.
fn upstream_heartbeat(interval: Duration, timeout: Duration, user: Duration) -> Vec<String> {
    let (i, t, u) = (ms(interval), ms(timeout), ms(user));
    let flags = [
        "--upstream-ping-interval",
        &i,
        "--upstream-pong-timeout",
        &t,
    ];
    let user = ["--upstream-tcp-user-timeout", &u];
    let off = ["--client-ping-interval", "0", "--client-pong-timeout", "0"];
    flags
        .iter()
        .chain(&user)
        .chain(&off)
        .map(|s| s.to_string())
        .collect()
}

/// wsbeat on `listen` toward `upstream`, with `flags`; frames up to 32 MiB.
async fn wsbeat(listen: Ipv4Addr, upstream: SocketAddr, flags: &[String]) -> WsbeatProcess {
    let url = format!("ws://{upstream}");
    let mut args = vec!["--upstream", &url, "--max-frame-size", "32MiB"];
    args.extend(flags.iter().map(String::as_str));
    WsbeatProcess::start_on(IpAddr::V4(listen), &args).await
}

/// A client in the namespace (reading as `reading` says) connected through wsbeat
/// to an upstream stand-in on 127.0.0.1 that the test holds.
async fn client_in_namespace(
    ns: &Netns,
    python: &Path,
    flags: &[String],
    reading: Reading,
) -> (WsbeatProcess, NsPeer, Upstream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream = listener.local_addr().expect("addr");
    let wsbeat = wsbeat(ns.host_ip, upstream, flags).await;
    let (client, up) = tokio::join!(
        NsPeer::client(ns, python, wsbeat.addr, reading),
        accept_upstream(&listener)
    );
    (wsbeat, client, up)
}

/// An upstream in the namespace (reading as `reading` says) and a client on 127.0.0.1 that the
/// test holds, connected through wsbeat.
async fn upstream_in_namespace(
    ns: &Netns,
    python: &Path,
    flags: &[String],
    reading: Reading,
) -> (WsbeatProcess, NsPeer, WsClient) {
    let (upstream, addr) = NsPeer::server(ns, python, reading).await;
    let wsbeat = wsbeat(Ipv4Addr::LOCALHOST, addr, flags).await;
    let (client, _) = ws_connect(format!("ws://{}/", wsbeat.addr)).await;
    (wsbeat, upstream, client)
}

/// Accepts wsbeat's connection at an upstream stand-in on 127.0.0.1.
async fn accept_upstream(listener: &TcpListener) -> Upstream {
    let (stream, _) = within(STEP, "wsbeat to dial the upstream", listener.accept())
        .await
        .expect("accept");
    within(
        STEP,
        "the upstream handshake",
        tokio_tungstenite::accept_async(stream),
    )
    .await
    .expect("upstream handshake")
}

/// Sends `count` binary messages of `size` bytes into `sink` on a task of its own, stopping at
/// the first that fails.
fn send_messages<S>(mut sink: S, count: u64, size: usize) -> tokio::task::JoinHandle<()>
where
    S: futures_util::Sink<Message> + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        for _ in 0..count {
            if sink.send(Message::binary(pattern(size))).await.is_err() {
                return;
            }
        }
    })
}

/// A close frame's code and reason.
type Close = (u16, String);

/// The close frame, skipping pings and pongs (tungstenite answers pings as it reads). Data is
/// a failure: nobody sends any toward this end.
async fn close_frame<S>(ws: &mut S) -> Close
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    loop {
        match ws.next().await {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Close(Some(f)))) => return (f.code.into(), f.reason.to_string()),
            other => panic!("expected a close frame with a code, got {other:?}"),
        }
    }
}

/// Asserts that no close arrives at `ws` for `d`: the session is alive while the host is.
async fn assert_open_for<S>(ws: &mut S, d: Duration)
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    let start = Instant::now();
    if let Ok(close) = tokio::time::timeout(d, close_frame(ws)).await {
        let after = start.elapsed();
        panic!("the session closed {close:?} after {after:?}, while the peer was alive");
    }
}

/// Asserts that nothing at all has arrived at `ws` yet.
fn assert_nothing_yet<S>(ws: &mut S)
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    if let Some(m) = ws.next().now_or_never() {
        panic!("the session ended before the peer's host vanished: {m:?}");
    }
}

/// Runs `cause` (the host vanishes, the peer freezes), then waits for the close at `ws`;
/// asserts its code and that it came within `bound` (plus [`SLACK`]). Returns the reason and
/// the time from the cause to the close.
async fn close_after<S>(
    cause: impl FnOnce(),
    ws: &mut S,
    code: u16,
    bound: Duration,
) -> (String, Duration)
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    cause();
    let caused = Instant::now();
    let what = "the close after the peer died";
    let (got, reason) = within(bound + STEP, what, close_frame(ws)).await;
    let took = caused.elapsed();
    eprintln!("measured: close {got} {reason:?} after {took:?} (bound {bound:?})");
    assert_eq!(got, code, "close code after the peer died ({reason:?})");
    assert!(
        took <= bound + SLACK,
        "close after {took:?}, bound {bound:?} + {SLACK:?}"
    );
    (reason, took)
}

/// Asserts that the close was the heartbeat's verdict, not a lost connection.
fn assert_timed_out(reason: &str) {
    assert!(reason.contains("timed out"), "close reason {reason:?}");
}

#[tokio::test]
async fn vanished_client_host_gets_the_upstream_a_1001_within_ping_plus_pong_timeout() {
    let Some((ns, python)) = prerequisites("vanished_client_host") else {
        return;
    };
    let flags = client_heartbeat(PING_INTERVAL, PONG_TIMEOUT);
    let (_wsbeat, _client, mut up) =
        client_in_namespace(&ns, &python, &flags, Reading::FULL_SPEED).await;
    // The client answers pings: several heartbeat rounds pass without a verdict.
    assert_open_for(&mut up, 3 * (PING_INTERVAL + PONG_TIMEOUT)).await;

    let bound = PING_INTERVAL + PONG_TIMEOUT + grid(PING_INTERVAL.min(PONG_TIMEOUT));
    let (reason, _) = close_after(|| ns.vanish(), &mut up, 1001, bound).await;
    assert_timed_out(&reason);
}

#[tokio::test]
async fn vanished_upstream_host_gets_the_client_a_1011_within_ping_plus_tcp_user_timeout() {
    let Some((ns, python)) = prerequisites("vanished_upstream_host") else {
        return;
    };
    let flags = upstream_heartbeat(PING_INTERVAL, Duration::ZERO, USER_TIMEOUT);
    let (_wsbeat, _upstream, mut client) =
        upstream_in_namespace(&ns, &python, &flags, Reading::FULL_SPEED).await;
    assert_open_for(&mut client, 3 * PING_INTERVAL).await;

    let bound = PING_INTERVAL + USER_TIMEOUT + grid(PING_INTERVAL) + FIRST_RETRANSMIT;
    let (reason, took) = close_after(|| ns.vanish(), &mut client, 1011, bound).await;
    // The kernel ended the connection, after unacknowledged data for the whole user timeout
    // (measured from when iptables-restore returned, so a little after the vanish).
    assert!(
        reason.contains("connection lost"),
        "close reason {reason:?}"
    );
    assert!(
        took >= USER_TIMEOUT - SLACK,
        "close only {took:?} after the vanish"
    );
}

#[tokio::test]
async fn client_host_vanishing_in_the_middle_of_a_large_frame_is_found_within_the_same_bound() {
    let Some((ns, python)) = prerequisites("client_host_vanishing_mid_frame") else {
        return;
    };
    let (interval, timeout) = (FRAME_PING_INTERVAL, FRAME_PONG_TIMEOUT);
    let flags = client_heartbeat(interval, timeout);
    let (_wsbeat, mut client, up) = client_in_namespace(&ns, &python, &flags, SLOW_READ).await;
    let (sink, mut up) = up.split();
    let sender = send_messages(sink, 1, BIG_FRAME);
    client.read_at_least(VANISH_AFTER, STEP).await;
    assert_nothing_yet(&mut up);

    let bound = interval + timeout + grid(interval.min(timeout));
    close_after(|| ns.vanish(), &mut up, 1001, bound).await;
    sender.abort();
}

#[tokio::test]
async fn upstream_host_vanishing_in_the_middle_of_a_large_frame_is_found_within_the_same_bound() {
    let Some((ns, python)) = prerequisites("upstream_host_vanishing_mid_frame") else {
        return;
    };
    let flags = upstream_heartbeat(PING_INTERVAL, Duration::ZERO, USER_TIMEOUT);
    let (_wsbeat, mut upstream, client) =
        upstream_in_namespace(&ns, &python, &flags, SLOW_READ).await;
    let (sink, mut client) = client.split();
    let sender = send_messages(sink, 1, BIG_FRAME);
    upstream.read_at_least(VANISH_AFTER, STEP).await;
    assert_nothing_yet(&mut client);

    let bound = PING_INTERVAL + USER_TIMEOUT + grid(PING_INTERVAL) + FIRST_RETRANSMIT;
    close_after(|| ns.vanish(), &mut client, 1011, bound).await;
    sender.abort();
}

/// A dead client whose host is still up: the process is stopped, its kernel still
/// acknowledges every segment, so only the heartbeat can tell.
#[tokio::test]
async fn frozen_client_gets_the_upstream_a_1001_within_ping_plus_pong_timeout() {
    let Some((ns, python)) = prerequisites("frozen_client") else {
        return;
    };
    let flags = client_heartbeat(PING_INTERVAL, PONG_TIMEOUT);
    let (_wsbeat, client, mut up) =
        client_in_namespace(&ns, &python, &flags, Reading::FULL_SPEED).await;
    assert_open_for(&mut up, 3 * (PING_INTERVAL + PONG_TIMEOUT)).await;

    let bound = PING_INTERVAL + PONG_TIMEOUT + grid(PING_INTERVAL.min(PONG_TIMEOUT));
    let (reason, _) = close_after(|| client.freeze(), &mut up, 1001, bound).await;
    assert_timed_out(&reason);
}

/// A hung upstream (stopped process, host up) with an explicit upstream pong timeout.
#[tokio::test]
async fn frozen_upstream_gets_the_client_a_1011_within_ping_plus_pong_timeout() {
    let Some((ns, python)) = prerequisites("frozen_upstream") else {
        return;
    };
    let flags = upstream_heartbeat(PING_INTERVAL, PONG_TIMEOUT, USER_TIMEOUT);
    let (_wsbeat, upstream, mut client) =
        upstream_in_namespace(&ns, &python, &flags, Reading::FULL_SPEED).await;
    assert_open_for(&mut client, 3 * (PING_INTERVAL + PONG_TIMEOUT)).await;

    let bound = PING_INTERVAL + PONG_TIMEOUT + grid(PING_INTERVAL.min(PONG_TIMEOUT));
    let (reason, _) = close_after(|| upstream.freeze(), &mut client, 1011, bound).await;
    assert_timed_out(&reason);
}

// The default settings. Each run takes 40-50 s, so they are left out of the suite; they give
// README's detection-time table its numbers.

/// The defaults, except the upstream pong timeout, which is off so that only
/// TCP_USER_TIMEOUT can notice.
#[tokio::test]
#[ignore = "takes about 50 s; README's detection-time table"]
async fn defaults_vanished_upstream_host_is_found_by_the_tcp_user_timeout() {
    let Some((ns, python)) = prerequisites("defaults_vanished_upstream_host") else {
        return;
    };
    let flags = ["--upstream-pong-timeout".to_owned(), "0".to_owned()];
    let (_wsbeat, _upstream, mut client) =
        upstream_in_namespace(&ns, &python, &flags, Reading::FULL_SPEED).await;
    let interval = DEFAULT_PING_INTERVAL;
    let bound = interval + DEFAULT_UPSTREAM_TCP_USER_TIMEOUT + grid(interval) + FIRST_RETRANSMIT;
    close_after(|| ns.vanish(), &mut client, 1011, bound).await;
}

#[tokio::test]
#[ignore = "takes about 40 s; README's detection-time table"]
async fn defaults_vanished_client_host_is_found_by_the_client_heartbeat() {
    let Some((ns, python)) = prerequisites("defaults_vanished_client_host") else {
        return;
    };
    let (_wsbeat, _client, mut up) =
        client_in_namespace(&ns, &python, &[], Reading::FULL_SPEED).await;
    let (interval, timeout) = (DEFAULT_PING_INTERVAL, DEFAULT_CLIENT_PONG_TIMEOUT);
    let bound = interval + timeout + grid(interval.min(timeout));
    close_after(|| ns.vanish(), &mut up, 1001, bound).await;
}

#[tokio::test]
#[ignore = "takes about 40 s; README's detection-time table"]
async fn defaults_frozen_client_is_found_by_the_client_heartbeat() {
    let Some((ns, python)) = prerequisites("defaults_frozen_client") else {
        return;
    };
    let (_wsbeat, client, mut up) =
        client_in_namespace(&ns, &python, &[], Reading::FULL_SPEED).await;
    let (interval, timeout) = (DEFAULT_PING_INTERVAL, DEFAULT_CLIENT_PONG_TIMEOUT);
    let bound = interval + timeout + grid(interval.min(timeout));
    close_after(|| client.freeze(), &mut up, 1001, bound).await;
}

/// How a live client is slow.
#[derive(Clone, Copy, Debug)]
enum Slow {
    /// Its program reads at this pace from a fast link: its kernel shows the reading only when
    /// it reopens a full receive window (README, "Limit").
    Reader(Reading),
    /// It reads at once, behind a link that carries this many bytes per second (the slow
    /// mobile client of issue 9): its kernel acknowledges at the link's pace.
    Link(u64),
}

impl Slow {
    fn rate(self) -> u64 {
        match self {
            Slow::Reader(reading) => reading.rate,
            Slow::Link(rate) => rate,
        }
    }
}

/// A live client that is slow, as `slow` says, while the upstream sends large messages: wsbeat
/// must not declare it dead. Issue 9 measured it dropped after 4.08 s at 2 s/2 s and 40.3 s
/// with the defaults.
async fn slow_client_stays_open(test: &str, flags: &[String], slow: Slow, window: Duration) {
    let Some((ns, python)) = prerequisites(test) else {
        return;
    };
    let reading = match slow {
        Slow::Reader(reading) => reading,
        Slow::Link(rate) => {
            if !ns.slow_link(test, rate) {
                return;
            }
            Reading::FULL_SPEED
        }
    };
    let (_wsbeat, mut client, up) = client_in_namespace(&ns, &python, flags, reading).await;
    let (sink, mut up) = up.split();
    let expected = slow.rate() * window.as_secs();
    // The upstream keeps sending for the whole window, as in the measurement: beyond
    // what the reader reads in it, enough to fill its kernel's autotuned buffer (up to 6 MiB)
    // and a slow link's queue, so that the stream toward it never runs dry. A burst that ends
    // leaves a slow reader working through megabytes its kernel already took, and nothing
    // shows that it reads (README, "Limit").
    let messages = (expected + (8 << 20)) / SLOW_READER_MESSAGE as u64 + 2;
    let sender = send_messages(sink, messages, SLOW_READER_MESSAGE);
    assert_open_for(&mut up, window).await;
    // And it was reading all along, at about its rate.
    client.read_at_least(expected / 2, STEP).await;
    eprintln!("measured: {slow:?} client still open after {window:?}");
    sender.abort();
}

/// A client behind a slow link that freezes (SIGSTOP) while large messages stream through to
/// it. Its kernel keeps acknowledging what the link delivers until its receive buffer is full,
/// as a live client's does, and its window shrinks by less than it takes (Linux reckons the
/// window from buffer memory, which these packets use sparingly): nothing tells it from a live
/// reader before the buffer is full. The upstream gets 1001 within the time that buffer takes
/// to fill at the link's rate plus an idle frozen client's bound.
#[tokio::test]
async fn client_frozen_behind_a_slow_link_mid_stream_is_found_once_its_buffer_is_full() {
    let test = "frozen_behind_link";
    let Some((ns, python)) = prerequisites(test) else {
        return;
    };
    let rate = SLOW_LINK_RATE;
    if !ns.slow_link(test, rate) {
        return;
    }
    let interval = Duration::from_millis(300);
    let flags = client_heartbeat(interval, interval);
    let reading = Reading {
        rate: 0,
        rcvbuf: FROZEN_RCVBUF,
    };
    let (_wsbeat, mut client, up) = client_in_namespace(&ns, &python, &flags, reading).await;
    let (sink, mut up) = up.split();
    let sender = send_messages(sink, 64, SLOW_READER_MESSAGE);
    // Well into the stream: its buffers and the link's queue are full of it.
    client.read_at_least(512 << 10, 4 * STEP).await;
    // Linux doubles SO_RCVBUF for its bookkeeping.
    let fill = Duration::from_secs_f64(f64::from(2 * FROZEN_RCVBUF) / rate as f64);
    let bound = fill + interval + interval + grid(interval);
    let (reason, took) = close_after(|| client.freeze(), &mut up, 1001, bound).await;
    assert_timed_out(&reason);
    eprintln!("measured: frozen behind a {rate} B/s link, found after {took:?}");
    sender.abort();
}

/// The receive buffer of the client that freezes behind a slow link.
const FROZEN_RCVBUF: u32 = 128 << 10;

/// `relay::STALE_EXCUSES`: heartbeat events at which a waiting ping is excused after the frame
/// it waits for stopped coming.
const STALE_EXCUSES: u32 = 8;

/// How a trickle test ends.
#[derive(Clone, Copy, Debug)]
enum TrickleEnd {
    /// The client's host vanishes while the frame still trickles toward it.
    Vanish,
    /// The frame stops coming, and the client freezes.
    StallAndFreeze,
}

/// The upstream trickles a large frame toward the client (64 bytes every 20 ms), so that the
/// client's ping waits for a frame end that is slow to come. While the client keeps taking the
/// trickle, its kernel acknowledging every byte, that wait is not held against it. Then `end`:
/// its host vanishes (the trickled bytes stay unacknowledged), or the frame stops and the
/// client freezes (it takes nothing more, and cannot be pinged): either way the upstream gets
/// 1001 within the idle bound.
async fn trickle_then(test: &str, end: TrickleEnd) {
    let Some((ns, python)) = prerequisites(test) else {
        return;
    };
    let flags = client_heartbeat(PING_INTERVAL, PONG_TIMEOUT);
    let (_wsbeat, client, up) =
        client_in_namespace(&ns, &python, &flags, Reading::FULL_SPEED).await;
    let (mut rd, mut wr) = tokio::io::split(up.into_inner());
    let trickle = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        // A 1 MiB binary frame's header (127: a 64-bit length follows), then its payload.
        let mut head = vec![0x82, 127];
        head.extend_from_slice(&(1u64 << 20).to_be_bytes());
        wr.write_all(&head).await.expect("frame header");
        for _ in 0..(1 << 20) / 64 {
            if wr.write_all(&[0x5A; 64]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let close = async {
        loop {
            match read_frame(&mut rd).await {
                Ok(Some(f)) if f.opcode == OP_CLOSE => return Some(f),
                Ok(Some(_)) => {}
                _ => return None,
            }
        }
    };
    tokio::pin!(close);
    // Alive while it takes the trickle, though no ping can reach it.
    let alive_for = 3 * (PING_INTERVAL + PONG_TIMEOUT);
    if let Ok(f) = tokio::time::timeout(alive_for, &mut close).await {
        panic!("closed while the client was alive: {f:?}");
    }
    match end {
        TrickleEnd::Vanish => ns.vanish(),
        TrickleEnd::StallAndFreeze => {
            trickle.abort();
            client.freeze();
        }
    }
    let ended = Instant::now();
    let mut bound = PING_INTERVAL + PONG_TIMEOUT + grid(PING_INTERVAL.min(PONG_TIMEOUT));
    if let TrickleEnd::StallAndFreeze = end {
        // The waiting ping stays excused for a few heartbeat events after the frame stops
        // (a slow upload comes in bursts): at least one event per ping interval.
        bound += STALE_EXCUSES * PING_INTERVAL;
    }
    let f = within(bound + STEP, "the close after the client died", close)
        .await
        .expect("a close frame");
    let took = ended.elapsed();
    eprintln!(
        "measured: {end:?}: close {:?} after {took:?} (bound {bound:?})",
        f.close_code()
    );
    assert_eq!(f.close_code(), Some(1001), "{}", f.close_reason());
    assert!(
        took <= bound + SLACK,
        "close after {took:?}, bound {bound:?} + {SLACK:?}"
    );
    trickle.abort();
}

#[tokio::test]
async fn client_host_vanishing_while_a_frame_trickles_toward_it_is_found_within_the_bound() {
    trickle_then("client_host_vanishing_mid_trickle", TrickleEnd::Vanish).await;
}

/// The case a review found open: with the frame stalled, the client took every byte there was,
/// and a frozen client was excused for ever. Now the excuse ends a few events after the frame
/// stops.
#[tokio::test]
async fn client_frozen_while_the_frame_toward_it_stalls_is_found_within_the_bound() {
    trickle_then("frozen_mid_stalled_frame", TrickleEnd::StallAndFreeze).await;
}

/// How fast the slow reader reads (bytes per second; default buffers, as on a phone), and what
/// the upstream sends it.
const SLOW_READER: Reading = Reading {
    rate: 128 << 10,
    rcvbuf: 0,
};
const SLOW_READER_MESSAGE: usize = 1 << 20;
/// The slow link of issue 9's slow client: 128 KiB/s.
const SLOW_LINK_RATE: u64 = 128 << 10;
const SLOW_LINK: Slow = Slow::Link(SLOW_LINK_RATE);

/// The slow client behind its slow link, with heartbeats far shorter than the issue's
/// 2 s/2 s: the bytes its kernel acknowledges as they arrive keep it alive, though each ping
/// waits seconds behind the megabytes queued before it.
#[tokio::test]
async fn client_behind_a_slow_link_is_not_dropped_at_300ms_pings() {
    let interval = Duration::from_millis(300);
    let flags = client_heartbeat(interval, interval);
    slow_client_stays_open("slow_link_300ms", &flags, SLOW_LINK, Duration::from_secs(4)).await;
}

/// The case as measured: 128 KiB/s, 2 s/2 s.
#[tokio::test]
#[ignore = "takes 20 s; README's detection-time table"]
async fn client_behind_a_slow_link_is_not_dropped_at_2s_pings() {
    let interval = Duration::from_secs(2);
    let flags = client_heartbeat(interval, interval);
    slow_client_stays_open("slow_link", &flags, SLOW_LINK, 10 * interval).await;
}

/// A fast link to a program reading 128 KiB/s, at the 2 s/2 s. Its kernel shows the
/// reading only when it reopens its window, once most of its receive buffer (128 KiB by default
/// for a reader this slow) was read: about every second, within the 1 s wsbeat watches a
/// silent peer's kernel at these settings. Readers slower than buffer ÷ (timeout ÷ 2) cannot
/// be told from frozen ones (README, "Limit").
#[tokio::test]
#[ignore = "takes 20 s; README's detection-time table"]
async fn slow_reader_is_not_dropped_at_2s_pings() {
    let interval = Duration::from_secs(2);
    let flags = client_heartbeat(interval, interval);
    let slow = Slow::Reader(SLOW_READER);
    slow_client_stays_open("slow_reader", &flags, slow, 10 * interval).await;
}

#[tokio::test]
#[ignore = "takes 60 s; README's detection-time table"]
async fn defaults_slow_reader_is_not_dropped() {
    let slow = Slow::Reader(SLOW_READER);
    slow_client_stays_open("defaults_slow_reader", &[], slow, Duration::from_secs(60)).await;
}
