//! Text heartbeats over real sockets: client text pings answered by wsbeat, keep-alives to quiet
//! clients, text pings to the upstream with their answers absorbed, and the messages that must
//! pass untouched. Timings are tens of milliseconds; every wait is bounded.
mod common;

use std::time::Duration;

use common::prom::{self, metric};
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::Message;

const PING_PONG: [&str; 4] = ["--client-text-ping", "ping", "--client-text-pong", "pong"];

/// The scenario: a client sends `ping` every 100 ms and gives up when nothing arrives
/// for 300 ms. In front of an upstream that ignores `ping` it stays connected for 3 s, and the
/// upstream receives none of the pings.
#[tokio::test]
async fn client_text_pings_are_answered_and_never_reach_the_upstream() {
    let mut upstream = spawn_echo_upstream(EchoOptions {
        mute: true,
        ..EchoOptions::default()
    })
    .await;
    let proxy = spawn_proxy_to(upstream.addr, &PING_PONG).await;
    let (mut ws, _) = ws_connect(proxy.ws_url("/")).await;
    let start = Instant::now();
    let end = start + Duration::from_secs(3);
    let mut next_ping = start;
    let mut last_heard = start;
    let mut pongs = 0;
    while Instant::now() < end {
        let watchdog = last_heard + Duration::from_millis(300);
        tokio::select! {
            () = sleep_until(next_ping) => {
                ws.send(Message::text("ping")).await.expect("send ping");
                next_ping += Duration::from_millis(100);
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    assert_eq!(t.as_str(), "pong");
                    pongs += 1;
                    last_heard = Instant::now();
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("session ended after {:?}: {other:?}", start.elapsed()),
            },
            () = sleep_until(watchdog) => {
                panic!("nothing for 300 ms after {:?}: the client would reconnect", start.elapsed())
            }
        }
    }
    assert!(pongs >= 25, "{pongs} pongs in 3 s");
    while let Ok(ev) = upstream.events.try_recv() {
        assert!(
            !matches!(ev, EchoEvent::Message(Message::Text(_))),
            "the upstream got {ev:?}"
        );
    }
    // Every pong counted, plus at most the one in flight when the loop ended.
    let answered = metric("wsbeat_text_heartbeats_total")
        .label("side", "client")
        .label("kind", "answered")
        .get(&prom::scrape(proxy.admin_addr).await)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        (pongs as f64..=pongs as f64 + 1.0).contains(&answered),
        "{answered} answered, {pongs} received"
    );
}

/// `--forward-text-pings`: the upstream sees the ping too, and the client still gets wsbeat's
/// answer (the upstream's own answer is the upstream's business; this one never answers).
#[tokio::test]
async fn forwarded_text_ping_reaches_the_upstream_and_is_answered_by_wsbeat() {
    let mut flags = PING_PONG.to_vec();
    flags.push("--forward-text-pings");
    let (_proxy, mut client, mut upstream) = raw_session(&flags).await;
    client.ws.must_send(RawFrame::text("ping")).await;
    let answer = client.ws.recv_skipping_pings(STEP).await;
    assert_eq!(
        (answer.opcode, answer.payload.as_slice()),
        (OP_TEXT, &b"pong"[..])
    );
    let got = upstream.ws.recv_skipping_pings(STEP).await;
    assert_eq!(
        (got.opcode, got.fin, got.payload.as_slice()),
        (OP_TEXT, true, &b"ping"[..])
    );
}

/// A message that only contains `ping`, a `ping` in two fragments, and a binary `ping` are not
/// text heartbeats: each reaches the upstream exactly as sent, and only the exact `ping` that
/// follows them is answered.
#[tokio::test]
async fn near_misses_are_relayed_untouched() {
    let (proxy, mut client, mut upstream) = raw_session(&PING_PONG).await;
    let near_misses = [
        RawFrame::text("a ping"),
        RawFrame::text("ping ").with_fin(true),
        RawFrame::text("pi").with_fin(false),
        RawFrame::continuation(b"ng".to_vec()),
        RawFrame::binary(b"ping".to_vec()),
    ];
    for f in &near_misses {
        assert_crosses_unchanged(&mut client.ws, &mut upstream.ws, f, "client to upstream").await;
    }
    client.ws.must_send(RawFrame::text("ping")).await;
    let first = client.ws.recv_skipping_pings(STEP).await;
    assert_eq!(
        (first.opcode, first.payload.as_slice()),
        (OP_TEXT, &b"pong"[..]),
        "the first thing the client hears answers the exact ping: {first:?}"
    );
    // The exact ping stopped at wsbeat: a marker is the next thing the upstream sees.
    client.ws.must_send(RawFrame::text("marker")).await;
    let next = upstream.ws.recv_skipping_pings(STEP).await;
    assert_eq!(next.payload, b"marker");
    metric("wsbeat_text_heartbeats_total")
        .label("side", "client")
        .label("kind", "answered")
        .value(1)
        .assert_in(proxy.admin_addr)
        .await;
}

/// A quiet client gets the keep-alive message about every interval, as a text message.
#[tokio::test]
async fn keepalive_reaches_an_idle_client() {
    let flags = [
        "--client-keepalive-message",
        "still here",
        "--client-keepalive-interval",
        "100ms",
    ];
    let (proxy, mut client, _upstream) = raw_session(&flags).await;
    let start = Instant::now();
    for n in 1..=3 {
        let f = client.ws.recv_skipping_pings(STEP).await;
        assert_eq!(
            (f.opcode, f.fin, f.payload.as_slice()),
            (OP_TEXT, true, &b"still here"[..]),
            "keep-alive {n}"
        );
    }
    // Three intervals of 100 ms, each at most one timer-grid step late.
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(280), "too early: {took:?}");
    assert!(took < Duration::from_millis(1500), "too late: {took:?}");
    metric("wsbeat_text_heartbeats_total")
        .label("side", "client")
        .label("kind", "injected")
        .value(3)
        .assert_in(proxy.admin_addr)
        .await;
}

/// The upstream sends a text message in three fragments, 250 ms apart, while the keep-alive is
/// due every 50 ms. The client's stream must stay valid (RFC 6455 5.4): no keep-alive between
/// the first fragment and the last, and keep-alives again after the message.
#[tokio::test]
async fn keepalive_never_lands_inside_a_slowly_fragmented_message() {
    let flags = [
        "--client-keepalive-message",
        "ka",
        "--client-keepalive-interval",
        "50ms",
    ];
    let (_proxy, mut client, mut upstream) = raw_session(&flags).await;
    // A keep-alive first: the timer runs.
    let f = client.ws.recv_skipping_pings(STEP).await;
    assert_eq!(f.payload, b"ka");
    let fragments = [
        RawFrame::text("one ").with_fin(false),
        RawFrame::continuation(b"two ".to_vec()).with_fin(false),
        RawFrame::continuation(b"three".to_vec()),
    ];
    let sender = tokio::spawn(async move {
        let mut at = Instant::now();
        for f in fragments {
            sleep_until(at).await;
            upstream.ws.must_send(f).await;
            at += Duration::from_millis(250);
        }
        upstream
    });
    // Skip keep-alives that went out before the first fragment.
    let mut f = client.ws.recv_skipping_pings(STEP).await;
    while f.opcode == OP_TEXT && f.fin && f.payload == b"ka" {
        f = client.ws.recv_skipping_pings(STEP).await;
    }
    assert_eq!(
        (f.opcode, f.fin, f.payload.as_slice()),
        (OP_TEXT, false, &b"one "[..])
    );
    let mut message = f.payload.clone();
    loop {
        let f = client.ws.recv_skipping_pings(STEP).await;
        assert_eq!(
            f.opcode, OP_CONTINUATION,
            "a new message inside a fragmented one: {f:?}"
        );
        message.extend_from_slice(&f.payload);
        if f.fin {
            break;
        }
    }
    assert_eq!(message, b"one two three");
    let after = client.ws.recv_skipping_pings(STEP).await;
    assert_eq!(
        (after.opcode, after.payload.as_slice()),
        (OP_TEXT, &b"ka"[..])
    );
    within(STEP, "the sender", sender).await.expect("sender");
}

/// With the client quiet, the upstream gets the text ping every interval; its answer is kept
/// from the client, and what the upstream sends next still arrives.
#[tokio::test]
async fn upstream_text_ping_when_quiet_and_its_answer_absorbed() {
    let flags = [
        "--upstream-text-ping",
        "hb",
        "--upstream-text-ping-interval",
        "100ms",
        "--upstream-text-pong",
        "ok",
    ];
    let (proxy, mut client, mut upstream) = raw_session(&flags).await;
    let ping = upstream.ws.recv_skipping_pings(STEP).await;
    assert_eq!(
        (ping.opcode, ping.payload.as_slice()),
        (OP_TEXT, &b"hb"[..])
    );
    assert!(ping.mask.is_some(), "frames to the upstream are masked");
    upstream.ws.must_send(RawFrame::text("ok")).await;
    upstream.ws.must_send(RawFrame::text("data")).await;
    let first = client.ws.recv_skipping_pings(STEP).await;
    assert_eq!(
        first.payload, b"data",
        "the answer was not absorbed: {first:?}"
    );
    metric("wsbeat_text_heartbeats_total")
        .label("side", "upstream")
        .label("kind", "absorbed")
        .value(1)
        .assert_in(proxy.admin_addr)
        .await;
}

/// An upstream message equal to the pong text that answers nothing wsbeat sent is relayed:
/// only answers wsbeat is owed are absorbed.
#[tokio::test]
async fn unsolicited_upstream_pong_text_is_relayed() {
    let flags = [
        "--upstream-text-ping",
        "hb",
        "--upstream-text-ping-interval",
        "10s",
        "--upstream-text-pong",
        "ok",
    ];
    let (_proxy, mut client, mut upstream) = raw_session(&flags).await;
    upstream.ws.must_send(RawFrame::text("ok")).await;
    let got = client.ws.recv_skipping_pings(STEP).await;
    assert_eq!((got.opcode, got.payload.as_slice()), (OP_TEXT, &b"ok"[..]));
}

/// `/connections` shows the latest text heartbeat of each leg.
#[tokio::test]
async fn connections_show_the_last_text_heartbeat_per_leg() {
    let (proxy, mut client, _upstream) = raw_session(&PING_PONG).await;
    client.ws.must_send(RawFrame::text("ping")).await;
    let answer = client.ws.recv_skipping_pings(STEP).await;
    assert_eq!(answer.payload, b"pong");
    let (head, body) = http_exchange(
        proxy.admin_addr,
        "GET /connections HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(head.status(), 200);
    let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
    let session = &json["sessions"][0];
    assert_eq!(
        session["client"]["last_text_heartbeat"]["kind"], "answered",
        "{json}"
    );
    assert!(
        session["upstream"]["last_text_heartbeat"].is_null(),
        "{json}"
    );
}
