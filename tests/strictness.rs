//! Protocol strictness: wsbeat answers what a legacy upstream was never written for, as a
//! conforming endpoint would, instead of relaying it. Close frames with a code RFC 6455 7.4 does
//! not allow or a reason that is not UTF-8, frames out of message sequence, and text that is
//! not UTF-8 get 1002 or 1007 to whoever sent them, and 1001 (toward the upstream) or 1011
//! (toward the client) to the other side, which never sees the offending frame.

mod common;

use common::*;

/// Proxy in front of a raw upstream with heartbeats off; returns both ends of one session.
async fn quiet_raw_session() -> (TestProxy, RawUpgrade, RawUpstreamConn) {
    raw_session(&NO_PINGS).await
}

/// A close frame with raw payload bytes (code and reason as given, valid or not).
fn raw_close(payload: &[u8]) -> RawFrame {
    RawFrame::new(OP_CLOSE, payload.to_vec())
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// Asserts that `leg` gets a close with `code` next (pings and pongs skipped).
async fn expect_close_code(leg: &mut RawWs, code: u16, what: &str) {
    let got = leg.expect_close(STEP).await;
    assert_eq!(got.close_code(), Some(code), "{what}: got {got:?}");
}

#[tokio::test]
async fn client_close_codes_the_rfc_forbids_get_1002_and_never_reach_the_upstream() {
    for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
        let (_proxy, mut client, mut upstream) = quiet_raw_session().await;
        client
            .ws
            .must_send(raw_close(&close_payload(code, b"bye")))
            .await;
        expect_close_code(&mut client.ws, 1002, &format!("client sent {code}")).await;
        expect_close_code(&mut upstream.ws, 1001, &format!("upstream, after {code}")).await;
    }
}

#[tokio::test]
async fn client_close_codes_the_rfc_and_iana_allow_are_relayed() {
    for code in [1000, 1001, 1003, 1007, 1011, 1012, 1013, 1014, 3000, 4999] {
        let (_proxy, mut client, mut upstream) = quiet_raw_session().await;
        client
            .ws
            .must_send(raw_close(&close_payload(code, b"bye")))
            .await;
        let got = upstream.ws.expect_close(STEP).await;
        assert_eq!(got.close_code(), Some(code), "got {got:?}");
        assert_eq!(got.close_reason(), "bye");
    }
}

/// Autobahn 7.5.1: the reason of a close frame is not UTF-8.
#[tokio::test]
async fn client_close_reason_that_is_not_utf8_gets_1007_and_never_reaches_the_upstream() {
    let (_proxy, mut client, mut upstream) = quiet_raw_session().await;
    let bad_reason = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64";
    client
        .ws
        .must_send(raw_close(&close_payload(1000, bad_reason)))
        .await;
    expect_close_code(&mut client.ws, 1007, "client").await;
    expect_close_code(&mut upstream.ws, 1001, "upstream").await;
}

#[tokio::test]
async fn upstream_close_with_a_bad_code_or_reason_gets_1002_or_1007_and_the_client_1011() {
    for (payload, code) in [
        (close_payload(1005, b""), 1002),
        (close_payload(5000, b"x"), 1002),
        (close_payload(1000, b"\xff"), 1007),
    ] {
        let (_proxy, mut client, mut upstream) = quiet_raw_session().await;
        upstream.ws.must_send(raw_close(&payload)).await;
        expect_close_code(&mut upstream.ws, code, "upstream").await;
        expect_close_code(&mut client.ws, 1011, "client").await;
    }
}

#[tokio::test]
async fn continuation_with_no_message_started_gets_1002_and_never_reaches_the_upstream() {
    let (_proxy, mut client, mut upstream) = quiet_raw_session().await;
    client
        .ws
        .must_send(RawFrame::continuation(b"orphan".to_vec()))
        .await;
    expect_close_code(&mut client.ws, 1002, "client").await;
    // The upstream's next frame is wsbeat's close, not the continuation.
    expect_close_code(&mut upstream.ws, 1001, "upstream").await;
}

#[tokio::test]
async fn new_message_inside_a_fragmented_one_gets_1002() {
    let (_proxy, mut client, mut upstream) = quiet_raw_session().await;
    client
        .ws
        .must_send(RawFrame::text("first half").with_fin(false))
        .await;
    let got = upstream.ws.recv_within(STEP).await;
    assert_eq!((got.opcode, got.fin), (OP_TEXT, false));
    client
        .ws
        .must_send(RawFrame::binary(b"intruder".to_vec()))
        .await;
    expect_close_code(&mut client.ws, 1002, "client").await;
    // A close may go between fragments (RFC 6455 5.4): the upstream hears 1001 next.
    expect_close_code(&mut upstream.ws, 1001, "upstream").await;
}

#[tokio::test]
async fn upstream_continuation_with_no_message_started_gets_1002_and_the_client_1011() {
    let (_proxy, mut client, mut upstream) = quiet_raw_session().await;
    upstream
        .ws
        .must_send(RawFrame::continuation(b"orphan".to_vec()))
        .await;
    expect_close_code(&mut upstream.ws, 1002, "upstream").await;
    expect_close_code(&mut client.ws, 1011, "client").await;
}

/// Autobahn 6.4.x: invalid UTF-8 in a later fragment is refused at once ("fail fast"), before
/// the message ends; the fragments before it were valid and were relayed.
#[tokio::test]
async fn invalid_utf8_in_a_client_text_fragment_gets_1007_before_the_message_ends() {
    let (_proxy, mut client, mut upstream) = quiet_raw_session().await;
    client
        .ws
        .must_send(RawFrame::text("κόσμε").with_fin(false))
        .await;
    let got = upstream.ws.recv_within(STEP).await;
    assert_eq!(got.payload, "κόσμε".as_bytes());
    client
        .ws
        .must_send(RawFrame::continuation(b"\xf4\x90\x80\x80".to_vec()).with_fin(false))
        .await;
    expect_close_code(&mut client.ws, 1007, "client").await;
    expect_close_code(&mut upstream.ws, 1001, "upstream").await;
}

#[tokio::test]
async fn invalid_utf8_from_the_upstream_gets_1007_and_the_client_1011() {
    let (_proxy, mut client, mut upstream) = quiet_raw_session().await;
    upstream
        .ws
        .must_send(RawFrame::new(OP_TEXT, b"ok \xc0\xaf".to_vec()))
        .await;
    expect_close_code(&mut upstream.ws, 1007, "upstream").await;
    expect_close_code(&mut client.ws, 1011, "client").await;
}

#[tokio::test]
async fn text_message_ending_inside_a_utf8_sequence_gets_1007() {
    let (_proxy, mut client, _upstream) = quiet_raw_session().await;
    client
        .ws
        .must_send(RawFrame::new(OP_TEXT, b"euro \xe2\x82".to_vec()))
        .await;
    expect_close_code(&mut client.ws, 1007, "client").await;
}

/// A character cut between two fragments, and between two reads of a large frame, is fine:
/// the frames arrive unchanged.
#[tokio::test]
async fn utf8_split_across_fragments_and_reads_passes_unchanged() {
    let (_proxy, mut client, mut upstream) = quiet_raw_session().await;
    let euro = "€".as_bytes();
    client
        .ws
        .must_send(
            RawFrame::new(OP_TEXT, [b"price: 5".as_slice(), &euro[..1]].concat()).with_fin(false),
        )
        .await;
    client
        .ws
        .must_send(RawFrame::continuation(euro[1..].to_vec()))
        .await;
    let first = upstream.ws.recv_within(STEP).await;
    let second = upstream.ws.recv_within(STEP).await;
    assert_eq!(
        [first.payload, second.payload].concat(),
        "price: 5€".as_bytes()
    );
    let big = "😀 κόσμε ".repeat(40_000);
    client.ws.must_send(RawFrame::text(&big)).await;
    let got = upstream.ws.recv_within(STEP).await;
    assert_eq!(got.payload, big.as_bytes());
    upstream.ws.must_send(RawFrame::text(&big)).await;
    let got = client.ws.recv_within(STEP).await;
    assert_eq!(got.payload, big.as_bytes());
}

/// With an extension negotiated, text payloads may be compressed: they are not checked.
#[tokio::test]
async fn text_is_not_checked_when_an_extension_is_negotiated() {
    let mut upstream =
        spawn_raw_upstream(UpstreamReply::accept_extensions("permessage-deflate")).await;
    let proxy = spawn_proxy_to(upstream.addr, &NO_PINGS).await;
    let ext = [("Sec-WebSocket-Extensions", "permessage-deflate")];
    let mut client = raw_connect(proxy.addr, "/", &ext).await;
    let mut conn = upstream.accept(STEP).await;
    // RFC 7692 7.2.3.1: "Hello" compressed, which is not UTF-8.
    let compressed = RawFrame::new(OP_TEXT, vec![0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00])
        .with_rsv(true, false, false);
    client.ws.must_send(compressed.clone()).await;
    let got = conn.ws.recv_within(STEP).await;
    assert_eq!(got.payload, compressed.payload);
    assert!(got.rsv1);
    // The sequence rules still hold.
    client
        .ws
        .must_send(RawFrame::continuation(b"orphan".to_vec()))
        .await;
    expect_close_code(&mut client.ws, 1002, "client").await;
}
