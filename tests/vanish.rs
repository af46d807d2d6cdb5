//! Vanished hosts, measured with real packet loss rather than derived from the settings: the
//! peer runs on a host of its own (a network namespace the test creates, see
//! `common/netns.rs`), wsbeat runs as a real process in the root namespace, and the peer's host
//! vanishes without a FIN: from one instant on, every packet into or out of it is dropped.
//!
//! - A vanished client host is found by the client heartbeat: the upstream gets 1001 within
//!   ping interval + pong timeout + one grid step.
//! - A vanished upstream host, with the upstream pong timeout off, is found by TCP_USER_TIMEOUT
//!   on wsbeat's pings: the client gets 1011 within ping interval + user timeout + one grid
//!   step + the kernel's first retransmission ([`FIRST_RETRANSMIT`], about 400 ms).
//! - The same bounds hold when the host vanishes while wsbeat is in the middle of writing a
//!   16 MiB frame to it.
//!
//! Every test passes its heartbeat flags explicitly, so that a change of the defaults does not
//! change what it checks. The runs with the default settings take about 50 s each; they are
//! `#[ignore]`d and give README's detection-time table its numbers:
//! `cargo test --test vanish -- --ignored --nocapture`.
//!
//! Bounds: the grid step is a sixteenth of the shortest heartbeat period, at most 250 ms
//! (src/relay.rs). [`SLACK`] covers what lies outside wsbeat: the vanish itself is a process
//! (iptables-restore) and the close crosses a socket to this test.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use futures_util::{FutureExt, SinkExt, Stream, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message};
use wsbeat::config::{DEFAULT_PING_INTERVAL, DEFAULT_UPSTREAM_TCP_USER_TIMEOUT};

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
/// How fast the peer reads the large frame (bytes per second): it takes 16 s to cross.
const SLOW_READ: u64 = 1 << 20;
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

/// wsbeat toward an upstream on 127.0.0.1, pinging the client every `interval`; the upstream
/// leg is not heartbeated (it is loopback and not under test).
async fn wsbeat_for_clients(
    ns: &Netns,
    upstream: SocketAddr,
    interval: Duration,
    timeout: Duration,
) -> WsbeatProcess {
    let url = format!("ws://{upstream}");
    let (interval, timeout) = (ms(interval), ms(timeout));
    let args = [
        "--upstream",
        &url,
        "--client-ping-interval",
        &interval,
        "--client-pong-timeout",
        &timeout,
        "--upstream-ping-interval",
        "0",
        "--upstream-pong-timeout",
        "0",
        "--max-frame-size",
        "32MiB",
    ];
    WsbeatProcess::start_on(IpAddr::V4(ns.host_ip), &args).await
}

/// wsbeat on 127.0.0.1 toward an upstream in the namespace, with the upstream pong timeout
/// off and `user_timeout` on its socket; the client leg is not heartbeated. `interval: None`
/// leaves the default ping interval.
async fn wsbeat_for_upstream(
    upstream: SocketAddr,
    interval: Option<Duration>,
    user_timeout: Option<Duration>,
) -> WsbeatProcess {
    let url = format!("ws://{upstream}");
    let mut args = vec![
        "--upstream".to_owned(),
        url,
        "--upstream-pong-timeout".into(),
        "0".into(),
        "--max-frame-size".into(),
        "32MiB".into(),
    ];
    if let Some(d) = interval {
        args.extend(["--upstream-ping-interval".into(), ms(d)]);
        args.extend(["--client-ping-interval", "0", "--client-pong-timeout", "0"].map(Into::into));
    }
    if let Some(d) = user_timeout {
        args.extend(["--upstream-tcp-user-timeout".into(), ms(d)]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    WsbeatProcess::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST), &args).await
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

/// The close frame's code, skipping pings and pongs (tungstenite answers pings as it reads).
/// Data is a failure: nobody sends any toward this end.
async fn close_code<S>(ws: &mut S) -> u16
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    loop {
        match ws.next().await {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Close(Some(frame)))) => return frame.code.into(),
            other => panic!("expected a close frame with a code, got {other:?}"),
        }
    }
}

/// Asserts that no close arrives at `ws` for `d`: the session is alive while the host is.
async fn assert_open_for<S>(ws: &mut S, d: Duration)
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    if let Ok(code) = tokio::time::timeout(d, close_code(ws)).await {
        panic!("the session closed ({code}) while the peer's host was still there");
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

/// Makes the host vanish, then waits for the close at `ws`; asserts its code and that it came
/// within `bound` (plus [`SLACK`]). Returns the time from the vanish to the close.
async fn vanish_until_close<S>(ns: &Netns, ws: &mut S, code: u16, bound: Duration) -> Duration
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    ns.vanish();
    let vanished = Instant::now();
    let got = within(bound + STEP, "the close after the vanish", close_code(ws)).await;
    let took = vanished.elapsed();
    eprintln!("measured: close {got} after {took:?} (bound {bound:?})");
    assert_eq!(got, code, "close code after the vanish");
    assert!(
        took <= bound + SLACK,
        "close after {took:?}, bound {bound:?} + {SLACK:?}"
    );
    took
}

#[tokio::test]
async fn vanished_client_host_gets_the_upstream_a_1001_within_ping_plus_pong_timeout() {
    let test = "vanished_client_host";
    let Some((ns, python)) = prerequisites(test) else {
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream = listener.local_addr().expect("addr");
    let wsbeat = wsbeat_for_clients(&ns, upstream, PING_INTERVAL, PONG_TIMEOUT).await;
    let (_client, mut up) = tokio::join!(
        NsPeer::client(&ns, &python, wsbeat.addr, 0),
        accept_upstream(&listener)
    );
    // The client answers pings: several heartbeat rounds pass without a verdict.
    assert_open_for(&mut up, 3 * (PING_INTERVAL + PONG_TIMEOUT)).await;

    let bound = PING_INTERVAL + PONG_TIMEOUT + grid(PING_INTERVAL.min(PONG_TIMEOUT));
    let took = vanish_until_close(&ns, &mut up, 1001, bound).await;
    // The verdict needs a pong timeout of silence: a quicker close came from something else.
    assert!(
        took >= PONG_TIMEOUT / 2,
        "close only {took:?} after the vanish"
    );
}

#[tokio::test]
async fn vanished_upstream_host_gets_the_client_a_1011_within_ping_plus_tcp_user_timeout() {
    let test = "vanished_upstream_host";
    let Some((ns, python)) = prerequisites(test) else {
        return;
    };
    let (_upstream, upstream) = NsPeer::server(&ns, &python, 0).await;
    let wsbeat = wsbeat_for_upstream(upstream, Some(PING_INTERVAL), Some(USER_TIMEOUT)).await;
    let (mut client, _) = ws_connect(format!("ws://{}/", wsbeat.addr)).await;
    assert_open_for(&mut client, 3 * PING_INTERVAL).await;

    let bound = PING_INTERVAL + USER_TIMEOUT + grid(PING_INTERVAL) + FIRST_RETRANSMIT;
    let took = vanish_until_close(&ns, &mut client, 1011, bound).await;
    // Unacknowledged data for the whole user timeout is what ends the connection.
    assert!(
        took >= USER_TIMEOUT / 2,
        "close only {took:?} after the vanish"
    );
}

#[tokio::test]
async fn client_host_vanishing_in_the_middle_of_a_large_frame_is_found_within_the_same_bound() {
    let test = "client_host_vanishing_mid_frame";
    let Some((ns, python)) = prerequisites(test) else {
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream = listener.local_addr().expect("addr");
    let (interval, timeout) = (FRAME_PING_INTERVAL, FRAME_PONG_TIMEOUT);
    let wsbeat = wsbeat_for_clients(&ns, upstream, interval, timeout).await;
    let (mut client, up) = tokio::join!(
        NsPeer::client(&ns, &python, wsbeat.addr, SLOW_READ),
        accept_upstream(&listener)
    );
    let (mut sink, mut up) = up.split();
    let sender = tokio::spawn(async move {
        let _ = sink.send(Message::binary(pattern(BIG_FRAME))).await;
    });
    client.read_at_least(VANISH_AFTER, STEP).await;
    assert_nothing_yet(&mut up);

    let bound = interval + timeout + grid(interval.min(timeout));
    vanish_until_close(&ns, &mut up, 1001, bound).await;
    sender.abort();
}

#[tokio::test]
async fn upstream_host_vanishing_in_the_middle_of_a_large_frame_is_found_within_the_same_bound() {
    let test = "upstream_host_vanishing_mid_frame";
    let Some((ns, python)) = prerequisites(test) else {
        return;
    };
    let (mut upstream, addr) = NsPeer::server(&ns, &python, SLOW_READ).await;
    let wsbeat = wsbeat_for_upstream(addr, Some(PING_INTERVAL), Some(USER_TIMEOUT)).await;
    let (client, _) = ws_connect(format!("ws://{}/", wsbeat.addr)).await;
    let (mut sink, mut client) = client.split();
    let sender = tokio::spawn(async move {
        let _ = sink.send(Message::binary(pattern(BIG_FRAME))).await;
    });
    upstream.read_at_least(VANISH_AFTER, STEP).await;
    assert_nothing_yet(&mut client);

    let bound = PING_INTERVAL + USER_TIMEOUT + grid(PING_INTERVAL) + FIRST_RETRANSMIT;
    vanish_until_close(&ns, &mut client, 1011, bound).await;
    sender.abort();
}

/// The default settings, except the upstream pong timeout, which is off so that only
/// TCP_USER_TIMEOUT can notice: about 50 s.
#[tokio::test]
#[ignore = "takes about 50 s; README's detection-time table"]
async fn vanished_upstream_host_with_default_settings_is_found_by_the_tcp_user_timeout() {
    let test = "vanished_upstream_host_defaults";
    let Some((ns, python)) = prerequisites(test) else {
        return;
    };
    let (_upstream, upstream) = NsPeer::server(&ns, &python, 0).await;
    let wsbeat = wsbeat_for_upstream(upstream, None, None).await;
    let (mut client, _) = ws_connect(format!("ws://{}/", wsbeat.addr)).await;
    let interval = DEFAULT_PING_INTERVAL;
    let bound = interval + DEFAULT_UPSTREAM_TCP_USER_TIMEOUT + grid(interval) + FIRST_RETRANSMIT;
    vanish_until_close(&ns, &mut client, 1011, bound).await;
}
