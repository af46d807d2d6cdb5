//! Heartbeats, each leg on its own: a dead client or upstream is detected within its ping
//! interval plus pong timeout and the survivor gets the right close; an upstream that never
//! pongs survives with the default (off) upstream pong timeout; pings from either side are
//! answered by the proxy and never forwarded; and the proxy's pings keep a silent session alive
//! through idle-cutting load balancers on both legs (with controls showing they would cut it).
//!
//! These tests use real sockets, so they run on real short timers (tens of milliseconds), not
//! paused time.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// Slack allowed on top of ping interval + pong timeout for a detection: scheduling on a busy
/// two-core CI machine, not protocol time.
const DETECTION_MARGIN: Duration = Duration::from_millis(400);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Logs how long detecting the dead `side` took, against its ping interval and pong timeout.
fn report_detection(side: &str, detected: Duration, interval: Duration, pong_timeout: Duration) {
    eprintln!(
        "dead {side} detected after {detected:?} (ping interval {interval:?} + pong timeout {pong_timeout:?})"
    );
}

/// A dead `side` must be declared no earlier than its pong timeout and no later than ping
/// interval + pong timeout + `DETECTION_MARGIN`.
fn assert_detected_in_window(
    side: &str,
    detected: Duration,
    interval: Duration,
    pong_timeout: Duration,
) {
    assert!(
        detected >= pong_timeout,
        "declared dead too early: {detected:?}"
    );
    assert!(
        detected <= interval + pong_timeout + DETECTION_MARGIN,
        "dead {side} detected only after {detected:?}"
    );
}

#[tokio::test]
async fn silent_client_is_declared_dead_within_ping_interval_plus_pong_timeout_and_upstream_gets_1001()
 {
    let (interval, pong_timeout) = (ms(100), ms(200));
    let mut upstream = spawn_raw_upstream(UpstreamReply::accept()).await;
    let proxy = spawn_proxy_to(
        upstream.addr,
        &[
            "--client-ping-interval",
            "100ms",
            "--client-pong-timeout",
            "200ms",
            "--upstream-ping-interval",
            "0",
        ],
    )
    .await;
    // Completes the handshake, then never reads nor answers.
    let mut client = raw_connect(proxy.addr, "/", &[]).await;
    let started = Instant::now();
    let mut conn = upstream.accept(STEP).await;

    let close = conn.ws.expect_close(STEP).await;
    let detected = started.elapsed();
    report_detection("client", detected, interval, pong_timeout);
    assert_eq!(
        (close.close_code(), close.close_reason().as_str()),
        (Some(1001), "client timed out")
    );
    assert_detected_in_window("client", detected, interval, pong_timeout);
    // The dead leg is dropped at once: its socket ends (after the pings it never read).
    client.ws.expect_end(STEP).await;
}

#[tokio::test]
async fn client_that_answers_pings_is_kept_alive_across_many_intervals() {
    let upstream = spawn_echo_upstream(EchoOptions::default()).await;
    let proxy = spawn_proxy_to(
        upstream.addr,
        &[
            "--client-ping-interval",
            "50ms",
            "--client-pong-timeout",
            "100ms",
        ],
    )
    .await;
    let (mut ws, _) = ws_connect(proxy.ws_url("/")).await;
    let pings = stay_quiet_for(&mut ws, Duration::from_secs(1)).await;
    eprintln!("client answered {pings} pings in 1 s");
    assert!(
        pings >= 5,
        "expected the proxy to ping every 50 ms, saw {pings} pings in 1 s"
    );
    assert_echo(&mut ws, "still here").await;
}

/// "Any frame received from a side proves it alive": a client that never pongs but keeps
/// sending data is not declared dead.
#[tokio::test]
async fn client_that_sends_data_but_never_pongs_is_not_declared_dead() {
    let (_proxy, mut client, mut conn) = raw_session(&[
        "--client-ping-interval",
        "50ms",
        "--client-pong-timeout",
        "150ms",
        "--upstream-ping-interval",
        "0",
    ])
    .await;
    // Pace the data at the ping interval; the connection must survive 1 s of this.
    let mut pace = tokio::time::interval(ms(50));
    for i in 0..20u8 {
        pace.tick().await;
        client.ws.must_send(RawFrame::binary(vec![i])).await;
        let f = conn.ws.recv_within(STEP).await;
        assert_eq!(
            (f.opcode, f.payload.as_slice()),
            (OP_BINARY, &[i][..]),
            "frame {i}: {f:?}"
        );
    }
}

#[tokio::test]
async fn upstream_that_never_pongs_survives_many_intervals_with_default_pong_timeout() {
    let mut upstream = spawn_raw_upstream(UpstreamReply::accept()).await;
    let proxy = spawn_proxy_to(upstream.addr, &["--upstream-ping-interval", "50ms"]).await;
    let (mut ws, _) = ws_connect(proxy.ws_url("/")).await;
    let mut conn = upstream.accept(STEP).await;

    // For 1 s (20 intervals) the upstream reads the proxy's pings and never answers them.
    let quiet = Duration::from_secs(1);
    let upstream_side = async {
        let deadline = Instant::now() + quiet;
        let mut pings = 0;
        while let Ok(f) = tokio::time::timeout_at(deadline, conn.ws.recv()).await {
            let f = f.expect("upstream read").expect("upstream leg ended");
            assert_eq!(f.opcode, OP_PING, "unexpected frame at the upstream: {f:?}");
            pings += 1;
        }
        pings
    };
    let (pings, _) = tokio::join!(upstream_side, stay_quiet_for(&mut ws, quiet));
    eprintln!("upstream ignored {pings} pings in {quiet:?}; session still open");
    assert!(
        pings >= 10,
        "expected a ping every 50 ms, the upstream saw {pings}"
    );

    within(STEP, "send", ws.send(Message::text("after silence")))
        .await
        .expect("send");
    let f = conn.ws.recv_skipping_pings(STEP).await;
    assert_eq!(f.payload, b"after silence");
    conn.ws
        .must_send(RawFrame::text("echo after silence"))
        .await;
    assert_eq!(
        next_message(&mut ws, STEP).await,
        Message::text("echo after silence")
    );
}

#[tokio::test]
async fn demo_upstream_never_pongs_yet_the_session_survives_with_default_pong_timeout() {
    let demo_addr = spawn_demo_upstream().await;
    let proxy = spawn_proxy_to(demo_addr, &["--upstream-ping-interval", "50ms"]).await;
    let (mut ws, _) = ws_connect(proxy.ws_url("/")).await;
    stay_quiet_for(&mut ws, Duration::from_secs(1)).await;
    assert_echo(&mut ws, "demo echo").await;
}

#[tokio::test]
async fn explicit_upstream_pong_timeout_kills_a_silent_upstream_and_client_gets_1011() {
    let (interval, pong_timeout) = (ms(100), ms(200));
    let mut silent = spawn_silent_upstream().await;
    let proxy = spawn_proxy_to(
        silent.addr,
        &[
            "--upstream-ping-interval",
            "100ms",
            "--upstream-pong-timeout",
            "200ms",
        ],
    )
    .await;
    let (mut ws, _) = ws_connect(proxy.ws_url("/")).await;
    let started = Instant::now();
    within(STEP, "upstream handshake", silent.handshakes.recv()).await;

    let close = expect_client_close(&mut ws, STEP)
        .await
        .expect("close frame with a code");
    let detected = started.elapsed();
    report_detection("upstream", detected, interval, pong_timeout);
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (1011, "upstream timed out")
    );
    assert_detected_in_window("upstream", detected, interval, pong_timeout);
}

#[tokio::test]
async fn client_pings_are_answered_with_identical_payload_and_never_forwarded() {
    // The raw upstream never answers a ping; the proxy must answer the client itself.
    let (_proxy, mut client, mut conn) = raw_session(&["--upstream-ping-interval", "0"]).await;

    let payloads: [&[u8]; 4] = [b"", b"client-ping-1", &[0u8, 255, 7, 128], &[b'x'; 125]];
    for payload in payloads {
        client.ws.must_send(RawFrame::ping(payload.to_vec())).await;
        let pong = client.ws.recv_within(STEP).await;
        assert_eq!(pong.opcode, OP_PONG, "expected a pong, got {pong:?}");
        assert_eq!(pong.payload, payload, "pong payload must equal the ping's");
    }
    // Frames keep their order, so a forwarded ping or pong would arrive before the marker.
    assert_marker_arrives_first(
        &mut client.ws,
        &mut conn.ws,
        "the upstream received a client control frame",
    )
    .await;
}

#[tokio::test]
async fn upstream_pings_are_answered_by_the_proxy_and_never_forwarded_to_the_client() {
    let (_proxy, mut client, mut conn) =
        raw_session(&["--client-ping-interval", "0", "--client-pong-timeout", "0"]).await;

    for payload in [&b"upstream-ping"[..], b"", b"\x01\x02"] {
        conn.ws.must_send(RawFrame::ping(payload.to_vec())).await;
        let pong = conn.ws.recv_within(STEP).await;
        assert_eq!(
            (pong.opcode, pong.payload.as_slice()),
            (OP_PONG, payload),
            "got {pong:?}"
        );
    }
    assert_marker_arrives_first(
        &mut conn.ws,
        &mut client.ws,
        "the client received an upstream control frame",
    )
    .await;
}

/// Timer flags for the load-balancer tests: pings every 100 ms on both legs, or all off.
fn lb_timers(pings: bool) -> &'static [&'static str] {
    if pings {
        &[
            "--client-ping-interval",
            "100ms",
            "--client-pong-timeout",
            "1s",
            "--upstream-ping-interval",
            "100ms",
        ]
    } else {
        &NO_PINGS
    }
}

const LB_IDLE: Duration = Duration::from_millis(300);
const SILENCE: Duration = Duration::from_secs(2);

#[tokio::test]
async fn idle_cutting_relays_on_both_legs_do_not_cut_a_silent_session_when_pings_run_every_100ms() {
    let mut upstream = spawn_echo_upstream(EchoOptions::default()).await;
    let relay_upstream = spawn_tcp_relay(upstream.addr, Some(LB_IDLE)).await;
    let proxy = spawn_proxy_to(relay_upstream.addr, lb_timers(true)).await;
    let relay_client = spawn_tcp_relay(proxy.addr, Some(LB_IDLE)).await;

    let (mut ws, _) = ws_connect(format!("ws://{}/quiet", relay_client.addr)).await;
    upstream.request(STEP).await;
    let pings = stay_quiet_for(&mut ws, SILENCE).await;
    eprintln!(
        "session silent for {SILENCE:?} behind two {LB_IDLE:?} idle cutters: {pings} client pings"
    );
    assert_eq!(
        relay_client.cut_count(),
        0,
        "client-side relay cut the session"
    );
    assert_eq!(
        relay_upstream.cut_count(),
        0,
        "upstream-side relay cut the session"
    );

    assert_echo(&mut ws, "still connected").await;
}

/// Control for the test above: with pings off, the same client-side relay does cut the
/// session, and the upstream then learns it with 1001.
#[tokio::test]
async fn control_idle_cutting_relay_before_the_proxy_cuts_a_silent_session_without_pings() {
    let mut upstream = spawn_raw_upstream(UpstreamReply::accept()).await;
    let proxy = spawn_proxy_to(upstream.addr, lb_timers(false)).await;
    let mut relay_client = spawn_tcp_relay(proxy.addr, Some(LB_IDLE)).await;
    let (mut ws, _) = ws_connect(format!("ws://{}/quiet", relay_client.addr)).await;
    let mut conn = upstream.accept(STEP).await;

    relay_client.wait_for_cuts(1, SILENCE).await;
    let ended = within(STEP, "the client stream to end", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => return other,
            }
        }
    })
    .await;
    assert!(
        !matches!(ended, Some(Ok(Message::Text(_) | Message::Binary(_)))),
        "{ended:?}"
    );
    let close = conn.ws.expect_close(STEP).await;
    assert_eq!(close.close_code(), Some(1001), "upstream got {close:?}");
}

/// Control for the upstream leg: with pings off, the relay between proxy and upstream cuts the
/// session, and the client learns it with 1011.
#[tokio::test]
async fn control_idle_cutting_relay_before_the_upstream_cuts_a_silent_session_without_pings() {
    let upstream = spawn_echo_upstream(EchoOptions::default()).await;
    let mut relay_upstream = spawn_tcp_relay(upstream.addr, Some(LB_IDLE)).await;
    let proxy = spawn_proxy_to(relay_upstream.addr, lb_timers(false)).await;
    let (mut ws, _) = ws_connect(proxy.ws_url("/quiet")).await;

    relay_upstream.wait_for_cuts(1, SILENCE).await;
    let close = expect_client_close(&mut ws, STEP)
        .await
        .expect("close frame with a code");
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (1011, "upstream connection lost")
    );
}
