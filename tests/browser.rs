//! A real browser in front of wsbeat: headless Chromium runs a web app's heartCheck pattern
//! (send the text `ping` after a quiet spell, close the socket when nothing comes back in time)
//! against a legacy upstream that never answers `ping`, behind a load balancer stand-in that
//! cuts connections idle for 1 s.
mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// The page's heartCheck: after `PING_AFTER_MS` without a message it sends `ping`; if nothing
/// arrives within `WATCHDOG_MS` after that, it closes the socket (code 4000), as heartCheck
/// apps do before reconnecting. Any message resets both timers. Each socket reports once it
/// has stayed open `STAY_MS`, or when it closes. The two `{{...}}` URLs are filled in by
/// the test.
const PAGE: &str = r#"<!doctype html>
<html><head><title>heartCheck</title></head><body><script>
const PING_AFTER_MS = 200, WATCHDOG_MS = 400, STAY_MS = 5000;
window.report = {};
function heartCheck(name, url) {
  const state = { opened: false, pongs: 0, other: 0, openMs: null, closed: null };
  const ws = new WebSocket(url);
  let pingTimer = null, watchdog = null;
  const reset = () => {
    clearTimeout(pingTimer);
    clearTimeout(watchdog);
    pingTimer = setTimeout(() => {
      ws.send('ping');
      watchdog = setTimeout(() => ws.close(4000, 'heartCheck: no answer'), WATCHDOG_MS);
    }, PING_AFTER_MS);
  };
  ws.onopen = () => {
    state.opened = true;
    const opened = performance.now();
    reset();
    setTimeout(() => {
      if (state.closed === null) {
        state.openMs = Math.round(performance.now() - opened);
        window.report[name] = state;
      }
    }, STAY_MS);
  };
  ws.onmessage = (e) => { if (e.data === 'pong') state.pongs++; else state.other++; reset(); };
  ws.onclose = (e) => {
    clearTimeout(pingTimer);
    clearTimeout(watchdog);
    if (window.report[name] === undefined) {
      state.closed = { code: e.code, reason: e.reason };
      window.report[name] = state;
    }
  };
}
heartCheck('answered', '{{ANSWERED}}');
heartCheck('unanswered', '{{UNANSWERED}}');
</script></body></html>
"#;

/// One path page → idle-cutting relay → wsbeat (with `extra` flags) → an upstream that
/// records messages and never answers them.
async fn leg(extra: &[&str]) -> (TestProxy, TcpRelay, EchoUpstream) {
    let upstream = spawn_echo_upstream(EchoOptions {
        mute: true,
        ..EchoOptions::default()
    })
    .await;
    let proxy = spawn_proxy_to(upstream.addr, extra).await;
    let relay = spawn_tcp_relay(proxy.addr, Some(Duration::from_secs(1))).await;
    (proxy, relay, upstream)
}

/// Without wsbeat the page's heartCheck gives up within a second (its `ping` is never
/// answered); with `--client-text-ping ping --client-text-pong pong` the same page, in a real
/// browser, stays connected for 5 s, every ping answered by wsbeat and none reaching the
/// legacy upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_heartcheck_stays_connected_when_wsbeat_answers_text_pings() {
    if !chromium_available("browser_heartcheck_stays_connected_when_wsbeat_answers_text_pings")
        .await
    {
        return;
    }
    let text_pings = ["--client-text-ping", "ping", "--client-text-pong", "pong"];
    let (answered, answered_relay, mut answered_upstream) = leg(&text_pings).await;
    let (_unanswered, unanswered_relay, _unanswered_upstream) = leg(&[]).await;
    let html = PAGE
        .replace("{{ANSWERED}}", &format!("ws://{}/", answered_relay.addr))
        .replace(
            "{{UNANSWERED}}",
            &format!("ws://{}/", unanswered_relay.addr),
        );
    let page_addr = serve_page(html).await;

    let mut browser = Chromium::launch().await;
    let page = browser.open(&format!("http://{page_addr}/")).await;
    let report = browser
        .wait_for_value(
            &page,
            "(window.report && window.report.answered && window.report.unanswered) \
             ? window.report : null",
            Duration::from_secs(20),
        )
        .await;
    browser.close().await;

    let (ok, control) = (&report["answered"], &report["unanswered"]);
    assert_eq!(ok["opened"], Value::Bool(true), "report: {report}");
    assert_eq!(
        ok["closed"],
        Value::Null,
        "answered socket closed: {report}"
    );
    assert!(ok["openMs"].as_u64().unwrap_or(0) >= 5000, "{report}");
    // A ping every ~200 ms for 5 s: well over ten answers, all of them `pong`.
    assert!(ok["pongs"].as_u64().unwrap_or(0) >= 10, "{report}");
    assert_eq!(ok["other"], Value::from(0), "{report}");
    assert_eq!(answered_relay.cut_count(), 0, "the relay never saw it idle");
    // The control proves the page's watchdog bites: nothing answers its ping there.
    assert_eq!(control["opened"], Value::Bool(true), "{report}");
    assert_eq!(control["closed"]["code"], Value::from(4000), "{report}");
    assert_eq!(control["pongs"], Value::from(0), "{report}");
    // The legacy upstream behind wsbeat received none of the pings.
    while let Ok(ev) = answered_upstream.events.try_recv() {
        assert!(
            !matches!(ev, EchoEvent::Message(Message::Text(_))),
            "upstream got {ev:?}"
        );
    }
    let metrics = prom::scrape(answered.admin_addr).await;
    let answered_count = prom::metric("wsbeat_text_heartbeats_total")
        .label("side", "client")
        .label("kind", "answered")
        .get(&metrics)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(answered_count >= 10.0, "answered {answered_count}");
}
