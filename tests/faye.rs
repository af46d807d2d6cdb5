//! End to end against the seeds' legacy server: faye-websocket-ruby under thin
//! (`tests/faye/config.ru`, Debian packages `ruby-faye-websocket` and `thin`), proxied by wsbeat.
//!
//! thin runs with a 1 s inactivity timeout, like a legacy deployment behind an idle cutter: a
//! session silent for longer survives only because the proxy pings the upstream (faye answers
//! the pings itself). The control test shows thin does cut it when the pings are off.
//!
//! `./scripts/test.sh` installs the packages; without them these tests print "skipped" and
//! pass, unless `WSBEAT_REQUIRE_ALL=1`, when they fail.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn faye_echo_through_the_proxy_survives_silence_thanks_to_upstream_pings() {
    if !faye_available("faye_echo_through_the_proxy_survives_silence").await {
        return;
    }
    let faye = spawn_faye().await;
    let url = format!("ws://{}", faye.addr);
    let proxy = spawn_proxy(&["--upstream", &url, "--upstream-ping-interval", "200ms"]).await;
    let (mut ws, _) = ws_connect(proxy.ws_url("/chat?room=1")).await;

    for m in [
        Message::text("hello faye"),
        Message::binary(pattern(70_000)),
        Message::text(""),
    ] {
        within(STEP, "send", ws.send(m.clone()))
            .await
            .expect("send");
        assert!(next_message(&mut ws, STEP).await == m, "faye echo differs");
    }
    // Silent for more than twice thin's inactivity timeout.
    stay_quiet_for(&mut ws, Duration::from_millis(2500 * THIN_IDLE_SECS)).await;
    assert_echo(&mut ws, "still alive").await;
}

/// Control: the same silence without upstream pings is cut by thin, and the client learns it
/// from the proxy with 1011.
#[tokio::test]
async fn control_faye_session_without_upstream_pings_is_cut_by_thin_and_client_gets_1011() {
    if !faye_available("control_faye_session_without_upstream_pings").await {
        return;
    }
    let faye = spawn_faye().await;
    let url = format!("ws://{}", faye.addr);
    let proxy = spawn_proxy(&["--upstream", &url, "--upstream-ping-interval", "0"]).await;
    let (mut ws, _) = ws_connect(proxy.ws_url("/")).await;
    assert_echo(&mut ws, "hi").await;

    let close = expect_client_close(&mut ws, Duration::from_secs(5))
        .await
        .expect("a close code");
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (1011, "upstream connection lost")
    );
}

#[tokio::test]
async fn faye_plain_http_page_passes_through() {
    if !faye_available("faye_plain_http_page_passes_through").await {
        return;
    }
    let faye = spawn_faye().await;
    let url = format!("http://{}", faye.addr);
    let proxy = spawn_proxy(&["--upstream", &url]).await;
    let request = "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    let (head, body) = http_exchange(proxy.addr, request).await;
    assert_eq!(head.status(), 200, "{head:?}");
    assert_eq!(body, b"faye echo\n");
}
