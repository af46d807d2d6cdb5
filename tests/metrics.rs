//! Exact metric values after scripted scenarios, read through a real scrape of the admin
//! listener: one dead client is one client timeout and one proxy close; a close 1000 is one
//! normal client close; each handshake failure lands in its own `result`/`reason`; N messages
//! each way are N messages and N text frames each way; answered pings feed the RTT histogram;
//! a plain HTTP GET is one 2xx.
//!
//! Every proxy here is fresh, so every counter starts at zero and the values asserted are
//! exactly what the scenario caused. Values are polled (`assert_in`) because the proxy updates
//! them a moment after the event the test saw.

mod common;

use std::net::SocketAddr;

use common::prom::{Scrape, eventually_scrape, metric, scrape};
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Every `result` of `connections_total`.
const RESULTS: [&str; 8] = [
    "upgraded",
    "rejected_by_upstream",
    "upstream_unreachable",
    "upstream_timeout",
    "bad_request",
    "over_limit",
    "forbidden_origin",
    "local_exhaustion",
];

/// A proxy in front of a fresh demo upstream, with `extra` flags.
async fn proxy_to_demo(extra: &[&str]) -> TestProxy {
    spawn_proxy_to(spawn_demo_upstream().await, extra).await
}

/// An address where nothing listens: bound to learn a free port, then closed.
async fn refused_addr() -> SocketAddr {
    let listener = within(STEP, "bind", TcpListener::bind("127.0.0.1:0"))
        .await
        .expect("bind");
    listener.local_addr().expect("local addr")
}

/// Asserts that `connections_total` is `n` for `result` and 0 for every other result.
fn assert_only_result(s: &Scrape, result: &str, n: u32) {
    for r in RESULTS {
        let want = if r == result { n } else { 0 };
        let m = metric("wsbeat_connections_total")
            .label("result", r)
            .value(want);
        m.check(s).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Checks each matcher against one scrape, reporting every mismatch at once.
fn assert_all(s: &Scrape, matchers: &[common::prom::MetricMatch]) {
    let errors: Vec<String> = matchers.iter().filter_map(|m| m.check(s).err()).collect();
    assert!(
        errors.is_empty(),
        "metric mismatches:\n{}",
        errors.join("\n")
    );
}

/// A client that completes the upgrade and then never reads or writes again is declared dead
/// once, and its session is closed by the proxy with reason `timeout`. The upstream (the demo,
/// which ignores pings) is not pinged, so only the client side can time out.
#[tokio::test]
async fn one_dead_client_is_one_client_timeout_and_one_proxy_timeout_close() {
    let proxy = proxy_to_demo(&[
        "--client-ping-interval",
        "50ms",
        "--client-pong-timeout",
        "100ms",
        "--upstream-ping-interval",
        "0",
    ])
    .await;
    // Raw TCP: after the 101 nothing reads this socket, so no pong is ever sent.
    let _silent = raw_connect(proxy.addr, "/", &[]).await;

    let closed = metric("wsbeat_closes_total")
        .label("initiator", "proxy")
        .label("reason", "timeout")
        .value(1);
    closed.assert_in(proxy.admin_addr).await;
    let s = metric("wsbeat_connections_active")
        .value(0)
        .assert_in(proxy.admin_addr)
        .await;
    assert_all(
        &s,
        &[
            metric("wsbeat_peer_timeouts_total")
                .label("side", "client")
                .value(1),
            metric("wsbeat_peer_timeouts_total")
                .label("side", "upstream")
                .value(0),
            metric("wsbeat_pings_sent_total")
                .label("side", "upstream")
                .value(0),
            metric("wsbeat_pongs_received_total")
                .label("side", "client")
                .value(0),
            metric("wsbeat_ping_rtt_seconds_count")
                .label("side", "client")
                .value(0),
            metric("wsbeat_connection_duration_seconds_count").value(1),
            metric("wsbeat_handshake_duration_seconds_count").value(1),
        ],
    );
    assert_only_result(&s, "upgraded", 1);
    assert_eq!(s.sum("wsbeat_closes_total", &[]), 1.0, "exactly one close");
    let pings = s.value("wsbeat_pings_sent_total", &[("side", "client")]);
    assert!(
        pings >= 1.0,
        "the dead client was pinged before it expired, saw {pings}"
    );
}

/// A client that closes with 1000 ends its session as `initiator="client", reason="normal"`,
/// and each close frame is counted once per direction (the demo answers the close).
#[tokio::test]
async fn client_close_1000_is_one_normal_client_close() {
    let proxy = proxy_to_demo(&NO_PINGS).await;
    let (mut ws, _) = ws_connect(proxy.ws_url("/")).await;
    let close = CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    };
    within(STEP, "client close", ws.close(Some(close)))
        .await
        .expect("send close");
    let reply = expect_client_close(&mut ws, STEP).await;
    assert_eq!(reply.map(|f| f.code), Some(CloseCode::Normal));

    let s = metric("wsbeat_connections_active")
        .value(0)
        .assert_in(proxy.admin_addr)
        .await;
    assert_eq!(s.sum("wsbeat_closes_total", &[]), 1.0, "exactly one close");
    assert_all(
        &s,
        &[
            metric("wsbeat_closes_total")
                .label("initiator", "client")
                .label("reason", "normal")
                .value(1),
            metric("wsbeat_frames_total")
                .label("direction", "client_to_upstream")
                .label("opcode", "close")
                .value(1),
            metric("wsbeat_frames_total")
                .label("direction", "upstream_to_client")
                .label("opcode", "close")
                .value(1),
            metric("wsbeat_peer_timeouts_total")
                .label("side", "client")
                .value(0),
            metric("wsbeat_connection_duration_seconds_count").value(1),
        ],
    );
}

/// An upstream port where nothing listens: the client gets 502, the attempt is counted as
/// `upstream_unreachable` and the connect error as `refused`.
#[tokio::test]
async fn refused_upstream_is_one_unreachable_result_and_one_refused_connect_error() {
    let proxy = spawn_proxy_to(refused_addr().await, &[]).await;
    let attempt = raw_upgrade(proxy.addr, "/", &[]).await;
    assert_eq!(attempt.response.status(), 502, "{:?}", attempt.response);

    let s = metric("wsbeat_upstream_connect_errors_total")
        .label("reason", "refused")
        .value(1)
        .assert_in(proxy.admin_addr)
        .await;
    assert_only_result(&s, "upstream_unreachable", 1);
    assert_eq!(
        s.sum("wsbeat_upstream_connect_errors_total", &[]),
        1.0,
        "one connect error in all"
    );
    assert_all(
        &s,
        &[
            metric("wsbeat_connections_active").value(0),
            metric("wsbeat_handshake_duration_seconds_count").value(0),
        ],
    );
}

/// An upstream that answers the upgrade with 403: the client gets the 403, the attempt is
/// `rejected_by_upstream`, and no connect error is counted (the upstream was reached).
#[tokio::test]
async fn upstream_403_is_one_rejected_by_upstream_result() {
    let upstream = spawn_raw_upstream(UpstreamReply::Reject {
        status: 403,
        headers: Vec::new(),
        body: b"no\n".to_vec(),
    })
    .await;
    let proxy = spawn_proxy_to(upstream.addr, &[]).await;
    let attempt = raw_upgrade(proxy.addr, "/", &[]).await;
    assert_eq!(attempt.response.status(), 403, "{:?}", attempt.response);

    let s = metric("wsbeat_connections_total")
        .label("result", "rejected_by_upstream")
        .value(1)
        .assert_in(proxy.admin_addr)
        .await;
    assert_only_result(&s, "rejected_by_upstream", 1);
    assert_eq!(s.sum("wsbeat_upstream_connect_errors_total", &[]), 0.0);
    assert_eq!(s.sum("wsbeat_http_requests_total", &[]), 0.0);
}

/// An upgrade request whose `Sec-WebSocket-Key` is not 16 bytes of base64 gets 400 and counts
/// as `bad_request`, without touching the upstream.
#[tokio::test]
async fn malformed_upgrade_is_one_bad_request_result() {
    let proxy = proxy_to_demo(&[]).await;
    let attempt = raw_upgrade(proxy.addr, "/", &[("Sec-WebSocket-Key", "not-a-key")]).await;
    assert_eq!(attempt.response.status(), 400, "{:?}", attempt.response);

    let s = metric("wsbeat_connections_total")
        .label("result", "bad_request")
        .value(1)
        .assert_in(proxy.admin_addr)
        .await;
    assert_only_result(&s, "bad_request", 1);
    assert_eq!(s.sum("wsbeat_upstream_connect_errors_total", &[]), 0.0);
}

/// N text messages from the client, each echoed by the demo: N messages and N text frames in
/// each direction, and the exact frame bytes (client frames carry a 4-byte mask, the
/// upstream's do not).
#[tokio::test]
async fn n_text_messages_each_way_are_n_messages_and_n_text_frames_each_way() {
    const N: u32 = 7;
    let proxy = proxy_to_demo(&NO_PINGS).await;
    let (mut ws, _) = ws_connect(proxy.ws_url("/")).await;
    let mut payload_bytes = 0;
    for i in 0..N {
        let text = format!("message {i}");
        payload_bytes += text.len();
        within(STEP, "client send", ws.send(Message::text(text.clone())))
            .await
            .expect("send");
        assert_eq!(next_message(&mut ws, STEP).await, Message::text(text));
    }

    let to_upstream = [("direction", "client_to_upstream")];
    let to_client = [("direction", "upstream_to_client")];
    let s = eventually_scrape(proxy.admin_addr, STEP, "N messages each way", |s| {
        s.value("wsbeat_messages_total", &to_upstream) == f64::from(N)
            && s.value("wsbeat_messages_total", &to_client) == f64::from(N)
    })
    .await;
    let n = N as usize;
    assert_all(
        &s,
        &[
            metric("wsbeat_frames_total")
                .with_labels(&to_upstream)
                .label("opcode", "text")
                .value(N),
            metric("wsbeat_frames_total")
                .with_labels(&to_client)
                .label("opcode", "text")
                .value(N),
            // Short frames: 2 header bytes, plus the mask key from the client.
            metric("wsbeat_bytes_total")
                .with_labels(&to_upstream)
                .value((payload_bytes + n * 6) as f64),
            metric("wsbeat_bytes_total")
                .with_labels(&to_client)
                .value((payload_bytes + n * 2) as f64),
        ],
    );
    for direction in [to_upstream, to_client] {
        let frames = s.sum("wsbeat_frames_total", &direction);
        assert_eq!(frames, f64::from(N), "only text frames {direction:?}");
    }
}

/// Peers that answer pings (tungstenite on both legs) feed `pongs_received_total` and the RTT
/// histogram per side, one observation per matching pong.
#[tokio::test]
async fn answered_pings_feed_pongs_received_and_the_rtt_histogram() {
    let upstream = spawn_echo_upstream(EchoOptions::default()).await;
    let proxy = spawn_proxy_to(
        upstream.addr,
        &[
            "--client-ping-interval",
            "50ms",
            "--client-pong-timeout",
            "2s",
            "--upstream-ping-interval",
            "50ms",
            "--upstream-pong-timeout",
            "2s",
        ],
    )
    .await;
    let (ws, _) = ws_connect(proxy.ws_url("/")).await;
    let (mut sink, mut stream) = ws.split();
    // Reading is what makes tungstenite answer pings; it ends with the close handshake.
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(Ok(m)) = stream.next().await {
            seen.push(m);
        }
        seen
    });

    let pongs = |s: &Scrape, side: &str| s.value("wsbeat_pongs_received_total", &[("side", side)]);
    eventually_scrape(proxy.admin_addr, STEP, "pongs from both sides", |s| {
        pongs(s, "client") >= 2.0 && pongs(s, "upstream") >= 2.0
    })
    .await;
    within(STEP, "client close", sink.close())
        .await
        .expect("send close");
    let seen = within(STEP, "the client reader to end", reader)
        .await
        .expect("reader task");
    assert!(
        seen.iter().any(Message::is_close),
        "close handshake: {seen:?}"
    );

    // The session is over: every counter below is final.
    let s = metric("wsbeat_connections_active")
        .value(0)
        .assert_in(proxy.admin_addr)
        .await;
    for side in ["client", "upstream"] {
        let received = pongs(&s, side);
        let sent = s.value("wsbeat_pings_sent_total", &[("side", side)]);
        let observed = s.value("wsbeat_ping_rtt_seconds_count", &[("side", side)]);
        let rtt_sum = s.value("wsbeat_ping_rtt_seconds_sum", &[("side", side)]);
        let inf = metric("wsbeat_ping_rtt_seconds_bucket")
            .label("side", side)
            .label("le", "+Inf")
            .get(&s)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(received > 0.0, "{side}: no pong counted");
        assert_eq!(observed, received, "{side}: one RTT observation per pong");
        assert_eq!(inf, received, "{side}: +Inf bucket equals the count");
        assert!(
            received <= sent,
            "{side}: {received} pongs for {sent} pings"
        );
        assert!(rtt_sum > 0.0, "{side}: RTTs add up to more than zero");
        assert_eq!(
            s.value("wsbeat_peer_timeouts_total", &[("side", side)]),
            0.0
        );
    }
}

/// A plain HTTP GET passed through to an HTTP upstream is one `2xx`; a 403 from the upstream
/// is one `4xx`; neither is a WebSocket connection attempt.
#[tokio::test]
async fn plain_http_get_is_one_2xx_request() {
    let upstream = spawn_http_upstream().await;
    let url = format!("http://{upstream}");
    let proxy = spawn_proxy(&["--upstream", &url]).await;
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n");

    let (head, _) = http_exchange(proxy.addr, &get("/hello")).await;
    assert_eq!(head.status(), 200, "{head:?}");
    let s = metric("wsbeat_http_requests_total")
        .label("status_class", "2xx")
        .value(1)
        .assert_in(proxy.admin_addr)
        .await;
    assert_eq!(
        s.sum("wsbeat_http_requests_total", &[]),
        1.0,
        "one request in all"
    );
    assert_eq!(
        s.sum("wsbeat_connections_total", &[]),
        0.0,
        "not an upgrade"
    );

    let (head, _) = http_exchange(proxy.addr, &get("/forbidden")).await;
    assert_eq!(head.status(), 403, "{head:?}");
    metric("wsbeat_http_requests_total")
        .label("status_class", "4xx")
        .value(1)
        .assert_in(proxy.admin_addr)
        .await;
}

/// A fresh proxy exports every label combination at zero (so dashboards and alerts see no
/// gaps), its version in `build_info`, and `ready` 1.
#[tokio::test]
async fn fresh_proxy_exports_every_combination_at_zero_with_build_info_and_ready() {
    let proxy = proxy_to_demo(&[]).await;
    let s = scrape(proxy.admin_addr).await;
    for (name, series) in [
        ("wsbeat_connections_total", 8),
        ("wsbeat_pings_sent_total", 2),
        ("wsbeat_pongs_received_total", 2),
        ("wsbeat_ping_rtt_seconds_count", 2),
        ("wsbeat_peer_timeouts_total", 2),
        ("wsbeat_spliced_frames_total", 2),
        ("wsbeat_closes_total", 3 * 9),
        ("wsbeat_frames_total", 2 * 7),
        ("wsbeat_bytes_total", 2),
        ("wsbeat_messages_total", 2),
        ("wsbeat_upstream_connect_errors_total", 7),
        ("wsbeat_tls_handshake_errors_total", 2 * 5),
        ("wsbeat_tls_reloads_total", 2),
        ("wsbeat_tls_cert_expiry_timestamp_seconds", 1),
        ("wsbeat_http_requests_total", 5),
        ("wsbeat_handshake_duration_seconds_count", 1),
        ("wsbeat_connection_duration_seconds_count", 1),
    ] {
        let found = s.select(name, &[]);
        assert_eq!(found.len(), series, "{name}: {found:?}");
        assert!(
            found.iter().all(|x| x.value == 0.0),
            "{name} not zero: {found:?}"
        );
    }
    assert_all(
        &s,
        &[
            metric("wsbeat_connections_active").value(0),
            metric("wsbeat_build_info")
                .label("version", env!("CARGO_PKG_VERSION"))
                .value(1),
            metric("wsbeat_ready").value(1),
        ],
    );
    let process = s.value("process_resident_memory_bytes", &[]);
    assert!(
        process > 0.0,
        "process collector exports RSS, saw {process}"
    );
}

/// The scrape parser handles escapes and special values as the exposition format defines them.
#[test]
fn scrape_parser_reads_escaped_labels_and_infinities() {
    let s = Scrape::parse(concat!(
        "# HELP x_total a \\\\ help\n",
        "# TYPE x_total counter\n",
        "x_total{a=\"q\\\"u,o=te\",b=\"back\\\\slash\"} 3\n",
        "h_bucket{le=\"+Inf\"} 4\n",
        "g -Inf\n",
    ));
    assert_eq!(
        s.families.get("x_total").map(String::as_str),
        Some("counter")
    );
    assert_eq!(
        s.value("x_total", &[("a", "q\"u,o=te"), ("b", "back\\slash")]),
        3.0
    );
    assert_eq!(s.value("h_bucket", &[("le", "+Inf")]), 4.0);
    assert_eq!(s.value("g", &[]), f64::NEG_INFINITY);
    let err = metric("x_total").label("a", "nope").get(&s).unwrap_err();
    assert!(err.contains("selects 0 series"), "{err}");
}
