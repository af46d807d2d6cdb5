//! Frame relay through the proxy: messages of every kind arrive intact both ways, frames keep
//! their boundaries, FIN and RSV bits, client frames are re-masked, close frames carry their
//! code and reason both ways, limits and protocol errors end a leg with the right close code,
//! and a slow reader slows the other side instead of filling a queue.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Proxy in front of a raw upstream with heartbeats off; returns both ends of one session.
async fn quiet_raw_session(extra: &[&str]) -> (TestProxy, RawUpgrade, RawUpstreamConn) {
    raw_session(&[&NO_PINGS[..], extra].concat()).await
}

#[tokio::test]
async fn text_binary_empty_and_1mib_messages_echo_intact_both_ways() {
    let mut upstream = spawn_echo_upstream(EchoOptions::default()).await;
    let proxy = spawn_proxy_to(upstream.addr, &[]).await;
    let (mut ws, _) = ws_connect(proxy.ws_url("/echo")).await;

    let big_text: String = (0..(1 << 20))
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let messages = [
        Message::text("hello, wsbeat"),
        Message::text("héllo ✓ unicode"),
        Message::binary(pattern(1000)),
        Message::text(""),
        Message::binary(Vec::new()),
        Message::binary(pattern(1 << 20)),
        Message::text(big_text),
    ];
    for m in messages {
        within(STEP, "client send", ws.send(m.clone()))
            .await
            .expect("send");
        match upstream.event(STEP).await {
            EchoEvent::Message(got) => assert!(got == m, "upstream got a different message"),
            other => panic!("expected a message at the upstream, got {other:?}"),
        }
        let echoed = next_message(&mut ws, STEP).await;
        assert!(
            echoed == m,
            "client got a different echo (len {})",
            echoed.len()
        );
    }
}

#[tokio::test]
async fn fragmented_client_message_reaches_upstream_frame_by_frame_with_pings_between() {
    let (_proxy, mut client, mut upstream) = quiet_raw_session(&[]).await;
    let sent = [
        RawFrame::text("frag-one ").with_fin(false),
        RawFrame::continuation(b"frag-two ".to_vec()).with_fin(false),
        RawFrame::continuation(b"frag-three".to_vec()),
    ];
    client.ws.must_send(sent[0].clone()).await;
    // A control frame between fragments is legal (RFC 6455 §5.4) and answered, not forwarded.
    client
        .ws
        .must_send(RawFrame::ping(b"mid-message".to_vec()))
        .await;
    client.ws.must_send(sent[1].clone()).await;
    client.ws.must_send(sent[2].clone()).await;

    let pong = client.ws.recv_within(STEP).await;
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (OP_PONG, &b"mid-message"[..])
    );
    for want in &sent {
        let got = upstream.ws.recv_within(STEP).await;
        assert_eq!(
            (got.opcode, got.fin, got.payload.as_slice()),
            (want.opcode, want.fin, want.payload.as_slice()),
            "fragment changed on the way: {got:?}"
        );
        assert!(
            got.mask.is_some(),
            "frames toward the upstream must be masked"
        );
    }
}

#[tokio::test]
async fn fragmented_upstream_message_reaches_client_frame_by_frame() {
    let (_proxy, mut client, mut upstream) = quiet_raw_session(&[]).await;
    let sent = [
        RawFrame::binary(pattern(300)).with_fin(false),
        RawFrame::continuation(Vec::new()).with_fin(false),
        RawFrame::continuation(pattern(70_000)).with_fin(false),
        RawFrame::continuation(b"end".to_vec()),
    ];
    for f in &sent {
        upstream.ws.must_send(f.clone()).await;
    }
    for want in &sent {
        let got = client.ws.recv_within(STEP).await;
        assert_eq!(
            (got.opcode, got.fin, got.payload.len()),
            (want.opcode, want.fin, want.payload.len()),
            "fragment changed on the way: {got:?}"
        );
        assert_eq!(got.payload, want.payload);
        assert_eq!(got.mask, None, "frames toward the client must be unmasked");
    }
}

#[tokio::test]
async fn client_frames_are_remasked_with_fresh_keys_and_upstream_frames_arrive_unmasked() {
    let (_proxy, mut client, mut upstream) = quiet_raw_session(&[]).await;
    let client_key = [0x01, 0x02, 0x03, 0x04];
    let mut upstream_keys = Vec::new();
    for i in 0..8u8 {
        let payload = vec![i; 64];
        client
            .ws
            .must_send(RawFrame::binary(payload.clone()).with_mask(client_key))
            .await;
        let got = upstream.ws.recv_within(STEP).await;
        assert_eq!(
            got.payload, payload,
            "payload must be unmasked and re-masked intact"
        );
        let key = got.mask.expect("frames toward the upstream must be masked");
        assert_ne!(
            key, client_key,
            "the proxy must not reuse the client's masking key"
        );
        upstream_keys.push(key);

        upstream
            .ws
            .must_send(RawFrame::binary(payload.clone()))
            .await;
        let back = client.ws.recv_within(STEP).await;
        assert_eq!((back.mask, back.payload), (None, payload));
    }
    upstream_keys.sort();
    upstream_keys.dedup();
    assert!(
        upstream_keys.len() > 1,
        "the proxy must use a fresh key per frame"
    );
}

/// `--upstream-masking`: with `forward` the upstream reads exactly the bytes the client wrote
/// (its masking keys, its masked payloads), with `fresh` every frame carries another key; in
/// both modes the unmasked payloads arrive intact, on the fast path (small whole frames) and the
/// general one (longer frames, read in pieces), and the proxy still reads what it must act on:
/// it answers a masked ping with the right payload and relays the client's close code.
#[tokio::test]
async fn upstream_masking_forward_keeps_client_bytes_and_fresh_replaces_keys() {
    for mode in ["fresh", "forward"] {
        let (_proxy, mut client, mut upstream) =
            quiet_raw_session(&["--upstream-masking", mode]).await;
        let frames = [
            RawFrame::binary(pattern(64)).with_mask([0x01, 0x02, 0x03, 0x04]),
            RawFrame::text("héllo").with_mask([0xF0, 0x0F, 0xAA, 0x55]),
            RawFrame::binary(pattern(300)).with_mask([0x11, 0x22, 0x33, 0x44]),
            RawFrame::binary(pattern(200_000)).with_mask([0xDE, 0xAD, 0xBE, 0xEF]),
            RawFrame::close(4001, "bye").with_mask([0x10, 0x20, 0x30, 0x40]),
        ];
        for (i, sent) in frames.into_iter().enumerate() {
            if i == 2 {
                let ping = RawFrame::ping("are you there").with_mask([5, 6, 7, 8]);
                client.ws.must_send(ping).await;
                let pong = client.ws.recv_within(STEP).await;
                assert_eq!(
                    (pong.opcode, pong.payload),
                    (OP_PONG, b"are you there".to_vec())
                );
            }
            let wire = sent.encode();
            client.ws.must_send(sent.clone()).await;
            let mut got = vec![0u8; wire.len()];
            within(
                STEP,
                "the frame at the upstream",
                upstream.ws.io.read_exact(&mut got),
            )
            .await
            .expect("read");
            let decoded = read_frame(&mut &got[..])
                .await
                .expect("a frame")
                .expect("whole");
            assert_eq!(
                decoded.payload, sent.payload,
                "{mode}: payload of frame {i}"
            );
            assert_eq!(decoded.close_code(), sent.close_code(), "{mode}: frame {i}");
            if mode == "forward" {
                assert!(
                    got == wire,
                    "{mode}: frame {i} must reach the upstream byte for byte"
                );
            } else {
                assert_ne!(
                    decoded.mask, sent.mask,
                    "{mode}: frame {i} kept the client's key"
                );
            }
        }
    }
}

#[tokio::test]
async fn one_mib_frames_pass_both_ways_as_single_frames() {
    let (_proxy, mut client, mut upstream) = quiet_raw_session(&[]).await;
    let up = pattern(1 << 20);
    client.ws.must_send(RawFrame::binary(up.clone())).await;
    let got = upstream.ws.recv_within(STEP).await;
    assert!(
        got.fin && got.opcode == OP_BINARY && got.payload == up,
        "upstream got {got:?}"
    );

    let down: Vec<u8> = up.iter().rev().copied().collect();
    upstream.ws.must_send(RawFrame::binary(down.clone())).await;
    let got = client.ws.recv_within(STEP).await;
    assert!(
        got.fin && got.opcode == OP_BINARY && got.payload == down,
        "client got {got:?}"
    );
}

#[tokio::test]
async fn rsv_bits_of_a_negotiated_extension_are_relayed_unchanged_both_ways() {
    // The proxy does not understand extensions; whatever the two ends negotiated, the RSV bits
    // of each frame must cross untouched.
    let mut upstream = spawn_raw_upstream(UpstreamReply::accept_extensions("x-test-ext")).await;
    let proxy = spawn_proxy_to(upstream.addr, &NO_PINGS).await;
    let mut client = raw_connect(
        proxy.addr,
        "/",
        &[("Sec-WebSocket-Extensions", "x-test-ext")],
    )
    .await;
    assert_eq!(
        client
            .response
            .header("sec-websocket-extensions")
            .as_deref(),
        Some("x-test-ext")
    );
    let mut conn = upstream.accept(STEP).await;
    for (r1, r2, r3) in [
        (true, false, false),
        (false, true, false),
        (false, false, true),
        (true, true, true),
    ] {
        let f = RawFrame::binary(pattern(40)).with_rsv(r1, r2, r3);
        client.ws.must_send(f.clone()).await;
        let got = conn.ws.recv_within(STEP).await;
        assert_eq!(
            (got.rsv1, got.rsv2, got.rsv3),
            (r1, r2, r3),
            "client→upstream {got:?}"
        );
        conn.ws.must_send(f).await;
        let got = client.ws.recv_within(STEP).await;
        assert_eq!(
            (got.rsv1, got.rsv2, got.rsv3),
            (r1, r2, r3),
            "upstream→client {got:?}"
        );
    }
}

#[tokio::test]
async fn client_close_code_and_reason_reach_upstream_and_its_reply_reaches_the_client() {
    for (code, reason) in [(1000, "normal bye"), (4000, "client says bye"), (4999, "")] {
        let (_proxy, mut client, mut upstream) = quiet_raw_session(&[]).await;
        client.ws.must_send(RawFrame::close(code, reason)).await;
        let got = upstream.ws.expect_close(STEP).await;
        assert_eq!(
            (got.close_code(), got.close_reason()),
            (Some(code), reason.to_string())
        );
        upstream.ws.must_send(RawFrame::close(code, "ack")).await;
        let got = client.ws.expect_close(STEP).await;
        assert_eq!(
            (got.close_code(), got.close_reason()),
            (Some(code), "ack".to_string())
        );
        // After both closes, the proxy ends both connections.
        client.ws.expect_end(STEP).await;
        upstream.ws.expect_end(STEP).await;
    }
}

#[tokio::test]
async fn upstream_close_code_and_reason_reach_the_client_and_its_reply_reaches_upstream() {
    for (code, reason) in [
        (1001, "going away"),
        (4500, "upstream says bye"),
        (4001, "x"),
    ] {
        let (_proxy, mut client, mut upstream) = quiet_raw_session(&[]).await;
        upstream.ws.must_send(RawFrame::close(code, reason)).await;
        let got = client.ws.expect_close(STEP).await;
        assert_eq!(
            (got.close_code(), got.close_reason()),
            (Some(code), reason.to_string())
        );
        client.ws.must_send(RawFrame::close(code, "")).await;
        let got = upstream.ws.expect_close(STEP).await;
        assert_eq!(got.close_code(), Some(code));
        client.ws.expect_end(STEP).await;
        upstream.ws.expect_end(STEP).await;
    }
}

#[tokio::test]
async fn tungstenite_close_handshake_completes_through_the_proxy() {
    let mut upstream = spawn_echo_upstream(EchoOptions::default()).await;
    let proxy = spawn_proxy_to(upstream.addr, &[]).await;
    let (mut ws, _) = ws_connect(proxy.ws_url("/")).await;
    let frame = CloseFrame {
        code: CloseCode::from(4321),
        reason: "app-level close".into(),
    };
    within(STEP, "close", ws.close(Some(frame.clone())))
        .await
        .expect("close");
    assert_eq!(upstream.closed(STEP).await, Some(frame.clone()));
    // tungstenite's upstream echoes the close; the client sees it and the stream then ends.
    assert_eq!(expect_client_close(&mut ws, STEP).await, Some(frame));
}

#[tokio::test]
async fn client_tcp_drop_without_close_sends_upstream_1001_client_connection_lost() {
    let (_proxy, client, mut upstream) = quiet_raw_session(&[]).await;
    drop(client);
    let got = upstream.ws.expect_close(STEP).await;
    assert_eq!(
        (got.close_code(), got.close_reason().as_str()),
        (Some(1001), "client connection lost")
    );
}

#[tokio::test]
async fn upstream_tcp_drop_without_close_sends_client_1011_upstream_connection_lost() {
    let (_proxy, mut client, upstream) = quiet_raw_session(&[]).await;
    drop(upstream);
    let got = client.ws.expect_close(STEP).await;
    assert_eq!(
        (got.close_code(), got.close_reason().as_str()),
        (Some(1011), "upstream connection lost")
    );
}

#[tokio::test]
async fn oversized_client_frame_is_refused_with_1009_to_the_client() {
    let (_proxy, mut client, mut upstream) = quiet_raw_session(&["--max-frame-size", "1024"]).await;
    client.ws.must_send(RawFrame::binary(pattern(1024))).await;
    let got = upstream.ws.recv_within(STEP).await;
    assert_eq!(got.payload.len(), 1024, "a frame at the limit passes");
    client.ws.must_send(RawFrame::binary(pattern(1025))).await;
    let got = client.ws.expect_close(STEP).await;
    assert_eq!(got.close_code(), Some(1009), "got {got:?}");
}

#[tokio::test]
async fn oversized_upstream_frame_is_refused_with_1009_to_the_upstream() {
    let (_proxy, mut client, mut upstream) = quiet_raw_session(&["--max-frame-size", "1024"]).await;
    upstream.ws.must_send(RawFrame::binary(pattern(1024))).await;
    let got = client.ws.recv_within(STEP).await;
    assert_eq!(got.payload.len(), 1024, "a frame at the limit passes");
    upstream.ws.must_send(RawFrame::binary(pattern(4096))).await;
    let got = upstream.ws.expect_close(STEP).await;
    assert_eq!(got.close_code(), Some(1009), "got {got:?}");
}

/// Masking is checked whatever `--upstream-masking` says: forwarding the client's keys never
/// means accepting a frame without one.
#[tokio::test]
async fn unmasked_client_frame_is_refused_with_1002() {
    for mode in ["fresh", "forward"] {
        let (_proxy, mut client, _upstream) =
            quiet_raw_session(&["--upstream-masking", mode]).await;
        client
            .ws
            .send_exact(&RawFrame::text("not masked"))
            .await
            .expect("send");
        let got = client.ws.expect_close(STEP).await;
        assert_eq!(got.close_code(), Some(1002), "{mode}: got {got:?}");
    }
}

#[tokio::test]
async fn masked_upstream_frame_is_refused_with_1002() {
    let (_proxy, _client, mut upstream) = quiet_raw_session(&[]).await;
    let masked = RawFrame::text("masked from server").with_mask([9, 8, 7, 6]);
    upstream.ws.send_exact(&masked).await.expect("send");
    let got = upstream.ws.expect_close(STEP).await;
    assert_eq!(got.close_code(), Some(1002), "got {got:?}");
}

/// The upstream stops reading; the client keeps writing 1 MiB frames. With no unbounded queue
/// in the proxy, the client's writes must stall after roughly the sockets' buffers plus one
/// frame, and meanwhile the proxy keeps pinging the client.
#[tokio::test]
async fn slow_upstream_reader_stalls_the_client_writer_and_client_pings_continue() {
    let mut silent = spawn_silent_upstream().await;
    let proxy = spawn_proxy_to(
        silent.addr,
        &[
            "--client-ping-interval",
            "100ms",
            "--client-pong-timeout",
            "10s",
            "--upstream-ping-interval",
            "0",
        ],
    )
    .await;
    let client = raw_connect(proxy.addr, "/", &[]).await;
    within(STEP, "upstream handshake", silent.handshakes.recv()).await;
    let (mut reader, mut writer) = tokio::io::split(client.ws.io);

    let frame = RawFrame::binary(pattern(1 << 20))
        .with_mask([0x0F, 0xF0, 0x55, 0xAA])
        .encode();
    let limit_mib = 64;
    let mut written_mib = 0;
    while written_mib < limit_mib {
        match timeout(Duration::from_millis(1000), writer.write_all(&frame)).await {
            Ok(Ok(())) => written_mib += 1,
            Ok(Err(e)) => panic!("client write failed: {e}"),
            Err(_) => break,
        }
    }
    eprintln!("client writes stalled after {written_mib} MiB");
    assert!(
        written_mib < limit_mib,
        "the client wrote {limit_mib} MiB to an upstream that reads nothing: unbounded buffering"
    );

    // The client's own leg is still heartbeated while its upload is blocked.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut pings = 0;
    while pings < 3 && Instant::now() < deadline {
        let f = within(STEP, "a frame at the client", read_frame(&mut reader)).await;
        match f.expect("read").expect("client leg ended") {
            f if f.opcode == OP_PING => pings += 1,
            other => panic!("unexpected frame at the client: {other:?}"),
        }
    }
    assert!(
        pings >= 3,
        "the proxy stopped pinging the client while its upload was blocked"
    );
}

#[tokio::test]
async fn close_without_a_reply_ends_both_legs_after_the_close_timeout() {
    let (_proxy, mut client, mut upstream) = quiet_raw_session(&["--close-timeout", "200ms"]).await;
    client.ws.must_send(RawFrame::close(1000, "bye")).await;
    let got = upstream.ws.expect_close(STEP).await;
    assert_eq!(got.close_code(), Some(1000));
    // The upstream never answers the close; the proxy must not wait forever.
    let started = Instant::now();
    within(Duration::from_secs(3), "both legs to end", async {
        tokio::join!(client.ws.expect_end(STEP), upstream.ws.expect_end(STEP))
    })
    .await;
    eprintln!(
        "unanswered close ended the session after {:?}",
        started.elapsed()
    );
}

/// A 100 MiB message in 1 MiB fragments streams through while the proxy pings the upstream
/// every 10 ms: every fragment arrives whole and in order, and the pings come between
/// fragments, never inside one (a ping inside a frame would break the reader's parse).
#[tokio::test]
async fn hundred_mib_message_streams_through_with_pings_between_fragments() {
    let mut upstream = spawn_raw_upstream(UpstreamReply::accept()).await;
    let proxy = spawn_proxy_to(upstream.addr, &["--upstream-ping-interval", "10ms"]).await;
    let client = raw_connect(proxy.addr, "/", &[]).await;
    let mut conn = upstream.accept(STEP).await;
    const FRAGMENTS: usize = 100;
    let chunk = pattern(1 << 20);

    let started = Instant::now();
    let mut client_ws = client.ws;
    let sender_chunk = chunk.clone();
    let sender = tokio::spawn(async move {
        for i in 0..FRAGMENTS {
            let f = if i == 0 {
                RawFrame::binary(sender_chunk.clone())
            } else {
                RawFrame::continuation(sender_chunk.clone())
            };
            client_ws.must_send(f.with_fin(i == FRAGMENTS - 1)).await;
        }
        client_ws
    });
    let mut pings = 0;
    let mut fragments = 0;
    while fragments < FRAGMENTS {
        let f = conn.ws.recv_within(Duration::from_secs(10)).await;
        if f.opcode == OP_PING {
            pings += 1;
            continue;
        }
        let want_op = if fragments == 0 {
            OP_BINARY
        } else {
            OP_CONTINUATION
        };
        assert_eq!(
            (f.opcode, f.fin),
            (want_op, fragments == FRAGMENTS - 1),
            "fragment {fragments}"
        );
        assert!(f.payload == chunk, "fragment {fragments} payload differs");
        fragments += 1;
    }
    let _client = within(STEP, "the sender", sender)
        .await
        .expect("sender task");
    eprintln!(
        "100 MiB streamed in {:?} with {pings} upstream pings between fragments",
        started.elapsed()
    );
}
