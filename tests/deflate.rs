//! permessage-deflate (RFC 7692) works end to end through the proxy although the proxy does not
//! implement it: the offer and answer cross the handshake unchanged and compressed frames
//! (RSV1 set) cross the relay untouched.
//!
//! The end-to-end test uses the Python `websockets` library on both ends, from the venv that
//! `./scripts/test.sh` creates (`WSBEAT_TEST_PYTHON`); without it the test prints "skipped",
//! unless `WSBEAT_REQUIRE_ALL=1`, when it fails.

mod common;

use std::sync::atomic::Ordering;

use common::*;

#[tokio::test]
async fn python_websockets_client_and_server_negotiate_deflate_through_the_proxy() {
    let Some(python) = test_python("python_websockets_deflate_through_the_proxy") else {
        return;
    };
    let server = spawn_py_deflate_server(&python).await;
    // A counting pass-through between proxy and upstream shows what crossed the upstream leg.
    let counter = spawn_tcp_relay(server.addr, None).await;
    let proxy = spawn_proxy_to(counter.addr, &[]).await;

    let report = run_py_deflate_client(&python, &proxy.ws_url("/deflate")).await;
    eprintln!("python report: {report}");
    let client_negotiated = &report["client_negotiated"];
    let server_negotiated = &report["server"]["negotiated"];
    assert_eq!(
        client_negotiated,
        &serde_json::json!(["permessage-deflate"]),
        "{report}"
    );
    assert_eq!(
        server_negotiated,
        &serde_json::json!(["permessage-deflate"]),
        "{report}"
    );
    // Both ends saw the same answer: the proxy relayed the server's parameters unchanged.
    assert_eq!(
        report["client_answered"], report["server"]["answered"],
        "{report}"
    );
    let offer = report["server"]["offered"].as_str().unwrap_or("");
    assert!(
        offer.starts_with("permessage-deflate"),
        "offer at the server: {offer:?}"
    );

    // ~316 kB of mostly compressible payload went up; if the frames had been inflated on the
    // way, at least that much would have crossed the upstream leg.
    let payload = report["payload_bytes"].as_u64().expect("payload_bytes");
    let wire = counter.stats.bytes_to_target.load(Ordering::Relaxed);
    eprintln!("{payload} payload bytes crossed the upstream leg as {wire} bytes");
    assert!(
        wire < payload / 4,
        "frames crossed uncompressed: {wire} bytes on the wire"
    );
}

/// RFC 7692 §7.2.3.1 / §7.2.3.2: "Hello" compressed in one frame, and in two fragments where
/// only the first carries RSV1.
#[tokio::test]
async fn compressed_frames_with_rsv1_cross_unchanged_when_deflate_is_negotiated() {
    let mut upstream =
        spawn_raw_upstream(UpstreamReply::accept_extensions("permessage-deflate")).await;
    let proxy = spawn_proxy_to(upstream.addr, &[]).await;
    let offer = "permessage-deflate; client_max_window_bits";
    let mut client = raw_connect(proxy.addr, "/", &[("Sec-WebSocket-Extensions", offer)]).await;
    assert_eq!(
        client
            .response
            .header("sec-websocket-extensions")
            .as_deref(),
        Some("permessage-deflate")
    );
    let mut conn = upstream.accept(STEP).await;
    assert_eq!(
        conn.request.header("sec-websocket-extensions").as_deref(),
        Some(offer)
    );

    let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    let frames = [
        RawFrame::new(OP_TEXT, [0x00u8]).with_rsv(true, false, false),
        RawFrame::new(OP_TEXT, hello).with_rsv(true, false, false),
        RawFrame::new(OP_TEXT, &hello[..3])
            .with_rsv(true, false, false)
            .with_fin(false),
        RawFrame::continuation(&hello[3..]),
    ];
    for f in &frames {
        assert_crosses_unchanged(&mut client.ws, &mut conn.ws, f, "client→upstream").await;
        assert_crosses_unchanged(&mut conn.ws, &mut client.ws, f, "upstream→client").await;
    }
}
