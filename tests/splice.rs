//! Large payloads moved with splice(2) (`--splice-min-payload`, plain TCP on both legs): the
//! bytes arrive exactly as sent whatever the frame sizes, counters stay exact, a ping due
//! meanwhile waits for the frame's end, a slow reader holds the sender back, a leg that dies
//! mid-payload ends the session as it does without splicing, and neither the lowest threshold
//! nor a large handshake read-ahead upsets the order of the stream.

mod common;

use std::time::Duration;

use common::prom::{eventually_scrape, scrape};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout};

/// Frames of these payload sizes: around the relay buffer and the default threshold (both
/// 64 KiB), past the pipe (256 KiB), and small ones between.
const SIZES: [usize; 11] = [
    300,
    32_768,
    65_535,
    65_536,
    65_537,
    65_546,
    70_000,
    300,
    1 << 20,
    3 << 20,
    125,
];

/// The frames of `SIZES`, encoded as one stream (masked with fixed keys when `masked`), and
/// the sum of their lengths.
fn stream(masked: bool) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (i, &n) in SIZES.iter().enumerate() {
        let payload: Vec<u8> = pattern(n).iter().map(|b| b.wrapping_add(i as u8)).collect();
        let mut f = RawFrame::binary(payload);
        if masked {
            f = f.with_mask([i as u8, 0x5A, 0xA5, 0x3C]);
        }
        bytes.extend_from_slice(&f.encode());
    }
    bytes
}

/// Writes `bytes` in pieces of varying size, each flushed on its own, so that the proxy's
/// reads are cut at many different places.
async fn write_in_pieces(w: &mut (impl AsyncWriteExt + Unpin), bytes: &[u8]) {
    const PIECES: [usize; 8] = [1, 7, 13, 4096, 65_535, 65_537, 100_000, 1 << 20];
    let mut rest = bytes;
    let mut i = 0;
    while !rest.is_empty() {
        let n = PIECES[i % PIECES.len()].min(rest.len());
        w.write_all(&rest[..n]).await.expect("write");
        w.flush().await.expect("flush");
        rest = &rest[n..];
        i += 1;
    }
}

/// Reads exactly `n` bytes within `STEP`.
async fn read_exactly(r: &mut (impl AsyncReadExt + Unpin), n: usize) -> Vec<u8> {
    let mut got = vec![0; n];
    within(STEP, "the relayed bytes", r.read_exact(&mut got))
        .await
        .expect("read");
    got
}

/// The next frame from `r` within `STEP`; panics on an error or end of stream.
async fn next_frame(r: &mut (impl AsyncReadExt + Unpin), what: &str) -> RawFrame {
    within(STEP, what, read_frame(r))
        .await
        .expect("read")
        .expect("open")
}

/// Writes `bytes` into `from` in pieces (see [`write_in_pieces`]) while reading them all back
/// from `to`; returns what `to` got.
async fn relay_in_pieces(
    mut from: impl AsyncWriteExt + Unpin + Send + 'static,
    to: &mut (impl AsyncReadExt + Unpin),
    bytes: &[u8],
) -> Vec<u8> {
    let sent = bytes.to_vec();
    let writer = tokio::spawn(async move {
        write_in_pieces(&mut from, &sent).await;
        from
    });
    let got = read_exactly(to, bytes.len()).await;
    drop(within(STEP, "the writer", writer).await.expect("writer"));
    got
}

/// Counter value of `name{labels}` at the proxy.
async fn counter(admin: std::net::SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape(admin).await.value(name, labels)
}

#[tokio::test]
async fn upstream_frames_of_every_size_arrive_byte_for_byte_and_the_large_ones_are_spliced() {
    let (proxy, client, upstream) = raw_session(&NO_PINGS).await;
    let bytes = stream(false);
    let mut down = client.ws.io;
    let got = relay_in_pieces(upstream.ws.io, &mut down, &bytes).await;
    assert!(got == bytes, "the client got different bytes");

    // The counters are published at the end of the proxy's wake-up, which may come just
    // after the client read the last byte.
    let bytes_counted = |s: &common::prom::Scrape| {
        s.value("wsbeat_bytes_total", &[("direction", "upstream_to_client")])
    };
    let want = bytes.len() as f64;
    let s = eventually_scrape(proxy.admin_addr, STEP, "every byte counted", |s| {
        bytes_counted(s) >= want
    })
    .await;
    let spliced = s.value("wsbeat_spliced_frames_total", &[("side", "upstream")]);
    // The 1 and 3 MiB frames always are: at most one buffer of them is read before.
    assert!(
        (2.0..=8.0).contains(&spliced),
        "spliced {spliced} of the frames"
    );
    assert_eq!(bytes_counted(&s), want, "byte counter");
    assert_eq!(
        s.value(
            "wsbeat_frames_total",
            &[("direction", "upstream_to_client"), ("opcode", "binary")]
        ),
        SIZES.len() as f64,
        "frame counter"
    );
}

#[tokio::test]
async fn with_forward_masking_client_frames_are_spliced_unchanged_and_with_fresh_never() {
    for (masking, splices) in [("forward", true), ("fresh", false)] {
        let (proxy, client, upstream) =
            raw_session(&[&NO_PINGS[..], &["--upstream-masking", masking]].concat()).await;
        let bytes = stream(true);
        let mut down = upstream.ws.io;
        let got = relay_in_pieces(client.ws.io, &mut down, &bytes).await;
        let spliced = counter(
            proxy.admin_addr,
            "wsbeat_spliced_frames_total",
            &[("side", "client")],
        )
        .await;
        if splices {
            assert!(got == bytes, "forward: the upstream got different bytes");
            assert!(spliced >= 2.0, "forward: spliced {spliced}");
        } else {
            // Every key is new, so every payload byte went through user space.
            assert_eq!(got.len(), bytes.len());
            assert!(got != bytes, "fresh: the client's keys were kept");
            assert_eq!(spliced, 0.0, "fresh: spliced {spliced}");
        }
    }
}

/// A ping falls due many times while an 8 MiB frame is spliced to a client that reads it
/// slowly: it goes out after the frame, never inside it.
#[tokio::test]
async fn a_ping_due_during_a_spliced_frame_follows_the_frame() {
    let (proxy, client, upstream) = raw_session(&[
        "--client-ping-interval",
        "20ms",
        "--client-pong-timeout",
        "10s",
        "--upstream-ping-interval",
        "0",
    ])
    .await;
    let payload = pattern(8 << 20);
    let frame = RawFrame::binary(payload.clone()).encode();
    let mut up = upstream.ws.io;
    let writer = tokio::spawn(async move {
        up.write_all(&frame).await.expect("write");
        up
    });
    let (mut down, mut pongs) = tokio::io::split(client.ws.io);
    // Pings before the frame are answered, as a live client does.
    let len = loop {
        let mut head = [0u8; 2];
        within(STEP, "a frame", down.read_exact(&mut head))
            .await
            .expect("read");
        if head[0] == 0x80 | OP_PING {
            let mut ping = vec![0; usize::from(head[1])];
            down.read_exact(&mut ping).await.expect("read");
            write_frame(&mut pongs, &RawFrame::pong(ping).with_mask([1, 2, 3, 4]))
                .await
                .expect("pong");
            continue;
        }
        assert_eq!((head[0], head[1]), (0x80 | OP_BINARY, 127), "{head:?}");
        break down.read_u64().await.expect("length");
    };
    assert_eq!(len, payload.len() as u64);
    // 32 reads 10 ms apart: the frame takes over 16 ping intervals to cross.
    let mut got = vec![0; payload.len()];
    for chunk in got.chunks_mut(256 << 10) {
        within(STEP, "a piece of the frame", down.read_exact(chunk))
            .await
            .expect("read");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(got == payload, "the spliced payload differs");
    let next = next_frame(&mut down, "the ping after it").await;
    assert_eq!(next.opcode, OP_PING, "{next:?}");
    within(STEP, "the upstream writer", writer).await.unwrap();
    assert_eq!(
        counter(
            proxy.admin_addr,
            "wsbeat_spliced_frames_total",
            &[("side", "upstream")]
        )
        .await,
        1.0
    );
}

/// A client that reads nothing holds the upstream back: the kernel buffers and one pipe fill,
/// then the upstream's writes block. Once the client reads, everything arrives intact.
#[tokio::test]
async fn a_client_that_does_not_read_holds_a_splicing_upstream_back() {
    let (_proxy, client, upstream) = raw_session(&NO_PINGS).await;
    let frame = RawFrame::binary(pattern(1 << 20)).encode();
    let limit_mib = 96;
    let mut up = upstream.ws.io;
    let mut written_mib = 0;
    while written_mib < limit_mib {
        match timeout(Duration::from_millis(500), up.write_all(&frame)).await {
            Ok(Ok(())) => written_mib += 1,
            Ok(Err(e)) => panic!("upstream write failed: {e}"),
            Err(_) => break,
        }
    }
    eprintln!("upstream writes stalled after {written_mib} MiB");
    assert!(
        written_mib < limit_mib,
        "the upstream wrote {limit_mib} MiB to a client that reads nothing"
    );
    // The frame cut by the timeout is finished by a writer task while the client reads.
    let writer = tokio::spawn(async move {
        up.flush().await.expect("flush");
        up
    });
    let mut down = client.ws.io;
    let deadline = Instant::now() + STEP;
    let mut frames = 0;
    while frames < written_mib && Instant::now() < deadline {
        let f = next_frame(&mut down, "a frame").await;
        assert!(f.payload == pattern(1 << 20), "frame {frames} differs");
        frames += 1;
    }
    assert_eq!(frames, written_mib);
    drop(within(STEP, "the upstream writer", writer).await);
}

/// The upstream dies 2 MiB into a 4 MiB frame: the client gets every byte that was sent, then
/// the connection is cut (no close frame can follow half a frame), as without splicing.
#[tokio::test]
async fn an_upstream_that_dies_mid_payload_leaves_the_client_what_it_sent_then_cuts_it() {
    for splice in ["64KiB", "0"] {
        let (proxy, client, upstream) =
            raw_session(&[&NO_PINGS[..], &["--splice-min-payload", splice]].concat()).await;
        let whole = RawFrame::binary(pattern(4 << 20)).encode();
        let sent = whole[..(2 << 20) + 10].to_vec();
        let mut up = upstream.ws.io;
        up.write_all(&sent).await.expect("write");
        up.flush().await.expect("flush");
        let mut down = client.ws.io;
        let got = read_exactly(&mut down, sent.len()).await;
        assert!(
            got == sent,
            "splice {splice}: the client got different bytes"
        );
        drop(up);
        let mut rest = Vec::new();
        let end = within(
            STEP,
            "the client's connection to end",
            down.read_to_end(&mut rest),
        )
        .await;
        assert!(
            rest.is_empty(),
            "splice {splice}: {} bytes after the cut ({end:?})",
            rest.len()
        );
        let spliced = counter(
            proxy.admin_addr,
            "wsbeat_spliced_frames_total",
            &[("side", "upstream")],
        )
        .await;
        assert_eq!(spliced, if splice == "0" { 0.0 } else { 1.0 });
    }
}

/// The client goes away in the middle of a 16 MiB frame: the upstream is told with a close
/// frame, the rest of its frame is read and dropped, and the session ends.
#[tokio::test]
async fn a_client_that_goes_away_mid_payload_is_reported_to_the_upstream() {
    let (proxy, client, upstream) = raw_session(&NO_PINGS).await;
    let frame = RawFrame::binary(pattern(16 << 20)).encode();
    let (mut up_read, mut up_write) = tokio::io::split(upstream.ws.io);
    let writer = tokio::spawn(async move { up_write.write_all(&frame).await });
    let mut down = client.ws.io;
    let mut head = vec![0; 1 << 20];
    within(STEP, "the first MiB", down.read_exact(&mut head))
        .await
        .expect("read");
    drop(down);
    let close = next_frame(&mut up_read, "a close at the upstream").await;
    assert_eq!(close.opcode, OP_CLOSE, "{close:?}");
    assert_eq!(close.close_code(), Some(1001), "{close:?}");
    within(STEP, "the upstream's write to finish", writer)
        .await
        .unwrap()
        .expect("the proxy took the rest of the frame");
    eventually_scrape(proxy.admin_addr, STEP, "the session to end", |s| {
        s.value("wsbeat_connections_active", &[]) == 0.0
    })
    .await;
}

/// With the lowest threshold, a ping read on its own after a frame relayed the general way
/// leaves no payload to splice: the direction goes on reading (it once set up an empty pipe
/// that nothing released, and never read again).
#[tokio::test]
async fn the_lowest_threshold_does_not_stall_after_a_lone_ping() {
    let (_proxy, client, upstream) =
        raw_session(&[&NO_PINGS[..], &["--splice-min-payload", "1"]].concat()).await;
    let (mut up_read, mut up_write) = tokio::io::split(upstream.ws.io);
    let mut down = client.ws.io;
    write_frame(&mut up_write, &RawFrame::binary(pattern(200)))
        .await
        .expect("write");
    let f = next_frame(&mut down, "the first frame").await;
    assert_eq!(f.payload.len(), 200);
    write_frame(&mut up_write, &RawFrame::ping(b"p".to_vec()))
        .await
        .expect("ping");
    let pong = next_frame(&mut up_read, "the pong").await;
    assert_eq!(pong.opcode, OP_PONG, "{pong:?}");
    write_frame(&mut up_write, &RawFrame::binary(b"after".to_vec()))
        .await
        .expect("write");
    let f = next_frame(&mut down, "the frame after the ping").await;
    assert_eq!(f.payload, b"after");
}

/// Bytes the handshake read ahead beyond one relay buffer (a large request head, so that
/// hyper's last read was large, then a large frame sent at once) reach the upstream before
/// anything spliced from the socket.
#[tokio::test]
async fn read_ahead_larger_than_the_buffer_stays_in_order() {
    let mut upstream = spawn_raw_upstream(UpstreamReply::accept()).await;
    let proxy = spawn_proxy_to(
        upstream.addr,
        &[
            &NO_PINGS[..],
            &[
                "--upstream-masking",
                "forward",
                "--max-request-header-size",
                "1MiB",
            ],
        ]
        .concat(),
    )
    .await;
    // hyper's reads grow while it looks for the head's end: its last read holds ~300 KiB past
    // it, of which the pump takes one buffer (64 KiB) at a time.
    let pad = "a".repeat(200_000);
    let host = proxy.addr.to_string();
    let key = new_ws_key();
    let mut bytes = format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade, X-Pad\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\nX-Pad: {pad}\r\n\r\n"
    )
    .into_bytes();
    let frame = RawFrame::binary(pattern(1 << 20))
        .with_mask([9, 8, 7, 6])
        .encode();
    bytes.extend_from_slice(&frame);
    let mut client = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let writer = tokio::spawn(async move {
        client.write_all(&bytes).await.expect("write");
        client
    });
    let conn = upstream.accept(STEP).await;
    let mut up = conn.ws.io;
    let got = read_exactly(&mut up, frame.len()).await;
    let first_diff = got.iter().zip(&frame).position(|(a, b)| a != b);
    assert!(
        got == frame,
        "the upstream got different bytes from {first_diff:?}"
    );
    drop(within(STEP, "the client writer", writer).await);
}
