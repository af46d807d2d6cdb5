//! Checks of the test peers themselves, without the proxy: if these fail, the proxy tests
//! cannot be trusted. Each peer is validated against another peer directly.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn frame_codec_round_trips_every_header_field_and_length_class() {
    for len in [0usize, 1, 125, 126, 65_535, 65_536, 1 << 20] {
        for mask in [None, Some([0xA1, 0x00, 0xFF, 0x3C])] {
            for (fin, rsv) in [(true, (false, false, false)), (false, (true, false, true))] {
                let mut frame = RawFrame::binary(pattern(len))
                    .with_fin(fin)
                    .with_rsv(rsv.0, rsv.1, rsv.2);
                frame.mask = mask;
                let wire = frame.encode();
                let mut reader = wire.as_slice();
                let back = read_frame(&mut reader).await.expect("read").expect("frame");
                assert_eq!(back, frame, "len {len} mask {mask:?}");
                assert!(reader.is_empty(), "reader consumed exactly one frame");
            }
        }
    }
}

#[tokio::test]
async fn frame_codec_reads_rfc6455_and_rfc7692_examples() {
    // RFC 6455 §5.7: a masked "Hello" from a client.
    let wire = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    let f = read_frame(&mut &wire[..]).await.unwrap().unwrap();
    assert_eq!(
        (f.opcode, f.fin, f.payload.as_slice()),
        (OP_TEXT, true, &b"Hello"[..])
    );
    assert_eq!(f.mask, Some([0x37, 0xfa, 0x21, 0x3d]));
    // RFC 7692 §7.2.3.1: a compressed "Hello" has RSV1 set.
    let wire = [0xc1, 0x07, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    let f = read_frame(&mut &wire[..]).await.unwrap().unwrap();
    assert!(f.rsv1 && !f.rsv2 && !f.rsv3 && f.fin && f.mask.is_none());
    assert_eq!(f.encode(), wire);
}

#[tokio::test]
async fn raw_client_and_echo_upstream_talk_through_a_pass_through_relay() {
    let mut upstream = spawn_echo_upstream(EchoOptions::default()).await;
    let relay = spawn_tcp_relay(upstream.addr, None).await;
    let mut up = raw_connect(relay.addr, "/a/b?c=d", &[("Cookie", "k=v")]).await;
    let req = upstream.request(STEP).await;
    assert_eq!(req.target, "/a/b?c=d");
    assert_eq!(req.header("cookie").as_deref(), Some("k=v"));

    up.ws.must_send(RawFrame::text("hello")).await;
    let echo = up.ws.recv_skipping_pings(STEP).await;
    assert_eq!(
        (echo.opcode, echo.payload.as_slice()),
        (OP_TEXT, &b"hello"[..])
    );
    assert_eq!(echo.mask, None, "server frames are unmasked");
    assert!(
        relay
            .stats
            .bytes_to_target
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );

    up.ws.must_send(RawFrame::close(4001, "done")).await;
    let close = up.ws.expect_close(STEP).await;
    assert_eq!(close.close_code(), Some(4001));
}

#[tokio::test]
async fn raw_upstream_sees_tungstenite_client_frames_masked() {
    let mut upstream = spawn_raw_upstream(UpstreamReply::accept()).await;
    let client = tokio::spawn(ws_connect(format!("ws://{}/x", upstream.addr)));
    let mut conn = upstream.accept(STEP).await;
    let (mut ws, _) = within(STEP, "client", client).await.expect("client task");
    ws.send(Message::text("masked?")).await.expect("send");
    let f = conn.ws.recv_within(STEP).await;
    assert!(f.mask.is_some(), "client frames must be masked: {f:?}");
    assert_eq!(f.payload, b"masked?");
}

#[tokio::test]
async fn idle_relay_keeps_a_busy_connection_and_cuts_a_silent_one() {
    let idle = Duration::from_millis(300);
    let mut upstream = spawn_raw_upstream(UpstreamReply::accept()).await;
    let mut relay = spawn_tcp_relay(upstream.addr, Some(idle)).await;
    let mut client = raw_connect(relay.addr, "/", &[]).await;
    let mut conn = upstream.accept(STEP).await;

    // Busy for 1 s (more than three idle periods), a frame every 100 ms.
    for i in 0..10u8 {
        client.ws.must_send(RawFrame::binary(vec![i])).await;
        let f = within(Duration::from_millis(150), "relayed frame", conn.ws.recv()).await;
        assert_eq!(f.expect("read").expect("frame").payload, vec![i]);
    }
    assert_eq!(relay.cut_count(), 0, "a busy connection must not be cut");

    let quiet_since = Instant::now();
    relay.wait_for_cuts(1, Duration::from_secs(2)).await;
    let cut_after = quiet_since.elapsed();
    eprintln!("idle relay cut a silent connection after {cut_after:?}");
    assert!(
        cut_after >= idle - Duration::from_millis(20),
        "cut too early: {cut_after:?}"
    );
    client.ws.expect_end(STEP).await;
    conn.ws.expect_end(STEP).await;
}

#[tokio::test]
async fn blackhole_address_really_hangs_connects() {
    let hole = blackhole().await;
    let attempt = timeout(Duration::from_millis(500), TcpStream::connect(hole.addr)).await;
    assert!(
        attempt.is_err(),
        "connect to the blackhole returned: {attempt:?}"
    );
}

#[tokio::test]
async fn silent_upstream_completes_the_handshake_and_never_answers() {
    let mut silent = spawn_silent_upstream().await;
    let mut client = raw_connect(silent.addr, "/quiet", &[]).await;
    let req = within(STEP, "handshake", silent.handshakes.recv())
        .await
        .unwrap();
    assert_eq!(req.target(), "/quiet");
    client
        .ws
        .must_send(RawFrame::ping(b"anyone?".to_vec()))
        .await;
    let answer = timeout(Duration::from_millis(300), client.ws.recv()).await;
    assert!(answer.is_err(), "silent upstream answered: {answer:?}");
}

#[tokio::test]
async fn http_upstream_describes_requests_and_refuses_forbidden() {
    let upstream = spawn_http_upstream().await;
    let req = format!(
        "POST /p?q=1 HTTP/1.1\r\nHost: {upstream}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    );
    let (head, body) = http_exchange(upstream, &req).await;
    assert_eq!(head.status(), 200);
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["target"], "/p?q=1");
    assert_eq!(v["body"], "hello");

    let req = format!("GET /forbidden HTTP/1.1\r\nHost: {upstream}\r\nConnection: close\r\n\r\n");
    let (head, body) = http_exchange(upstream, &req).await;
    assert_eq!(head.status(), 403);
    assert_eq!(body, b"forbidden by upstream\n");
}

#[tokio::test]
async fn faye_echo_app_echoes_directly_and_thin_cuts_it_when_idle() {
    if !faye_available("faye_echo_app_echoes_directly").await {
        return;
    }
    let faye = spawn_faye().await;
    let mut client = raw_connect(faye.addr, "/", &[]).await;
    client.ws.must_send(RawFrame::text("direct")).await;
    let echo = client.ws.recv_answering_pings(STEP).await;
    assert_eq!(echo.payload, b"direct");
    // faye answers pings (which is what lets the proxy's pings keep it alive).
    client.ws.must_send(RawFrame::ping(b"faye?".to_vec())).await;
    let pong = client.ws.recv_within(STEP).await;
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (OP_PONG, &b"faye?"[..])
    );
    // And thin cuts a silent connection after its inactivity timeout.
    let started = Instant::now();
    client
        .ws
        .expect_end(Duration::from_secs(5 * THIN_IDLE_SECS))
        .await;
    eprintln!("thin cut an idle connection after {:?}", started.elapsed());
}

#[tokio::test]
async fn python_deflate_peers_negotiate_deflate_directly() {
    let Some(python) = test_python("python_deflate_peers_negotiate_deflate_directly") else {
        return;
    };
    let server = spawn_py_deflate_server(&python).await;
    let report = run_py_deflate_client(&python, &format!("ws://{}/direct", server.addr)).await;
    assert_eq!(
        report["client_negotiated"],
        serde_json::json!(["permessage-deflate"])
    );
    assert_eq!(
        report["server"]["negotiated"],
        serde_json::json!(["permessage-deflate"])
    );
}
