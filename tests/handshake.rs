//! The WebSocket handshake through the proxy: what the upstream receives (path, query, base
//! path, end-to-end headers, subprotocol and extension offers, a fresh key, X-Forwarded-*,
//! Host), what the client receives back (the upstream's choices and headers, an accept value
//! for its own key, non-101 answers unchanged), what never crosses (hop-by-hop headers), and
//! the proxy's own answers: 400, 426, 502, 504.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Proxy in front of a raw upstream answering `reply`; returns both.
async fn proxy_to_raw(reply: UpstreamReply, extra: &[&str]) -> (TestProxy, RawUpstream) {
    let upstream = spawn_raw_upstream(reply).await;
    let url = format!("ws://{}", upstream.addr);
    let mut args = vec!["--upstream", url.as_str()];
    args.extend_from_slice(extra);
    (spawn_proxy(&args).await, upstream)
}

#[tokio::test]
async fn subprotocol_offer_reaches_upstream_and_its_choice_reaches_the_client() {
    let options = EchoOptions {
        choose_protocol: Some("chat.v2".into()),
        ..EchoOptions::default()
    };
    let mut upstream = spawn_echo_upstream(options).await;
    let url = format!("ws://{}", upstream.addr);
    let proxy = spawn_proxy(&["--upstream", &url]).await;

    let mut request = proxy
        .ws_url("/chat")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "chat.v1, chat.v2".parse().unwrap(),
    );
    let (_ws, response) = ws_connect(request).await;
    let seen = upstream.request(STEP).await;
    assert_eq!(
        seen.header("sec-websocket-protocol").as_deref(),
        Some("chat.v1, chat.v2")
    );
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("chat.v2")
    );
}

#[tokio::test]
async fn path_query_cookie_and_end_to_end_headers_reach_the_upstream_unchanged() {
    let (proxy, mut upstream) = proxy_to_raw(UpstreamReply::accept(), &[]).await;
    let sent = [
        ("Cookie", "session=abc123; theme=dark"),
        ("Authorization", "Bearer token-xyz"),
        ("Origin", "https://app.example"),
        ("User-Agent", "wsbeat-test/1.0"),
        ("X-Custom-Thing", "custom value, with comma"),
        ("Accept-Language", "de-CH"),
    ];
    let _client = raw_connect(proxy.addr, "/room/42?token=abc&x=%20y", &sent).await;
    let seen = upstream.accept(STEP).await.request;
    assert_eq!(seen.method(), "GET");
    assert_eq!(seen.target(), "/room/42?token=abc&x=%20y");
    for (name, value) in sent {
        assert_eq!(
            seen.header(name).as_deref(),
            Some(value),
            "header {name} at the upstream"
        );
    }
    assert_eq!(seen.header("sec-websocket-version").as_deref(), Some("13"));
    assert!(
        seen.tokens("upgrade").contains(&"websocket".to_string()),
        "{seen:?}"
    );
    assert!(
        seen.tokens("connection").contains(&"upgrade".to_string()),
        "{seen:?}"
    );
}

#[tokio::test]
async fn request_path_is_appended_to_the_upstream_base_path() {
    let mut upstream = spawn_raw_upstream(UpstreamReply::accept()).await;
    let url = format!("ws://{}/legacy/base", upstream.addr);
    let proxy = spawn_proxy(&["--upstream", &url]).await;
    let _client = raw_connect(proxy.addr, "/socket/v1?room=7", &[]).await;
    let seen = upstream.accept(STEP).await.request;
    assert_eq!(seen.target(), "/legacy/base/socket/v1?room=7");
}

#[tokio::test]
async fn http_scheme_upstream_url_is_accepted_for_websocket_sessions() {
    let mut upstream = spawn_raw_upstream(UpstreamReply::accept()).await;
    let url = format!("http://{}", upstream.addr);
    let proxy = spawn_proxy(&["--upstream", &url]).await;
    let mut client = raw_connect(proxy.addr, "/h", &[]).await;
    let mut conn = upstream.accept(STEP).await;
    client.ws.must_send(RawFrame::text("over http://")).await;
    assert_eq!(conn.ws.recv_within(STEP).await.payload, b"over http://");
}

#[tokio::test]
/// Behind a trusted proxy (here: loopback), its `X-Forwarded-For` is appended to; see
/// `tests/rules.rs` for untrusted peers.
async fn x_forwarded_headers_are_set_and_x_forwarded_for_is_appended() {
    let trusted = ["--trusted-proxies", "127.0.0.1"];
    let (proxy, mut upstream) = proxy_to_raw(UpstreamReply::accept(), &trusted).await;

    let host = ("Host", "public.example:8443");
    let _first = raw_connect(proxy.addr, "/", &[host, ("X-Forwarded-For", "203.0.113.7")]).await;
    let seen = upstream.accept(STEP).await.request;
    assert_eq!(
        seen.header("x-forwarded-for").as_deref(),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(
        seen.header("x-forwarded-host").as_deref(),
        Some("public.example:8443")
    );
    let proto = seen.header("x-forwarded-proto");
    assert!(
        matches!(proto.as_deref(), Some("http" | "ws")),
        "X-Forwarded-Proto for a plain-TCP client: {proto:?}"
    );

    let _second = raw_connect(proxy.addr, "/", &[host]).await;
    let seen = upstream.accept(STEP).await.request;
    assert_eq!(seen.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
}

#[tokio::test]
async fn host_is_rewritten_to_the_upstream_authority() {
    let (proxy, mut upstream) = proxy_to_raw(UpstreamReply::accept(), &[]).await;
    let _client = raw_connect(proxy.addr, "/", &[("Host", "public.example")]).await;
    let seen = upstream.accept(STEP).await.request;
    assert_eq!(seen.header_all("host"), vec![upstream.addr.to_string()]);
}

#[tokio::test]
async fn preserve_host_keeps_the_clients_host() {
    let (proxy, mut upstream) = proxy_to_raw(UpstreamReply::accept(), &["--preserve-host"]).await;
    let _client = raw_connect(proxy.addr, "/", &[("Host", "public.example")]).await;
    let seen = upstream.accept(STEP).await.request;
    assert_eq!(seen.header_all("host"), vec!["public.example"]);
}

#[tokio::test]
async fn upstream_gets_a_fresh_key_and_the_extension_offer_exactly_as_asked() {
    let offer = "permessage-deflate; client_max_window_bits, x-webkit-deflate-frame";
    let (proxy, mut upstream) = proxy_to_raw(UpstreamReply::accept(), &[]).await;
    let client = raw_connect(proxy.addr, "/", &[("Sec-WebSocket-Extensions", offer)]).await;
    let seen = upstream.accept(STEP).await.request;
    let upstream_key = seen
        .header("sec-websocket-key")
        .expect("a key toward the upstream");
    assert_ne!(
        upstream_key, client.key,
        "the proxy must send its own Sec-WebSocket-Key"
    );
    assert_eq!(
        upstream_key.len(),
        24,
        "a base64-encoded 16-byte key: {upstream_key:?}"
    );
    assert_eq!(
        seen.header("sec-websocket-extensions").as_deref(),
        Some(offer)
    );
    // raw_connect already checked the client's Sec-WebSocket-Accept against its own key.
}

#[tokio::test]
async fn upstream_101_headers_reach_the_client_with_its_chosen_protocol_and_extensions() {
    let reply = UpstreamReply::Accept {
        protocol: Some("v2.legacy".into()),
        extensions: Some("permessage-deflate; server_no_context_takeover".into()),
        headers: vec![
            ("Set-Cookie".into(), "sid=42; Path=/".into()),
            ("X-Upstream-Version".into(), "7.1".into()),
        ],
    };
    let (proxy, _upstream) = proxy_to_raw(reply, &[]).await;
    let client = raw_connect(
        proxy.addr,
        "/",
        &[
            ("Sec-WebSocket-Protocol", "v1.legacy, v2.legacy"),
            ("Sec-WebSocket-Extensions", "permessage-deflate"),
        ],
    )
    .await;
    let r = &client.response;
    assert_eq!(
        r.header("sec-websocket-protocol").as_deref(),
        Some("v2.legacy")
    );
    assert_eq!(
        r.header("sec-websocket-extensions").as_deref(),
        Some("permessage-deflate; server_no_context_takeover")
    );
    assert_eq!(r.header("set-cookie").as_deref(), Some("sid=42; Path=/"));
    assert_eq!(r.header("x-upstream-version").as_deref(), Some("7.1"));
}

#[tokio::test]
async fn legacy_upstream_answering_keep_alive_upgrade_and_no_subprotocol_is_accepted() {
    let reply = UpstreamReply::Accept {
        protocol: None,
        extensions: None,
        headers: vec![("Connection".into(), "keep-alive, Upgrade".into())],
    };
    let (proxy, mut upstream) = proxy_to_raw(reply, &[]).await;
    let mut client = raw_connect(proxy.addr, "/", &[("Sec-WebSocket-Protocol", "chat")]).await;
    assert_eq!(client.response.header("sec-websocket-protocol"), None);
    let mut conn = upstream.accept(STEP).await;
    client.ws.must_send(RawFrame::text("legacy ok")).await;
    assert_eq!(conn.ws.recv_within(STEP).await.payload, b"legacy ok");
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded_in_either_direction() {
    let reply = UpstreamReply::Accept {
        protocol: None,
        extensions: None,
        headers: vec![
            ("Connection".into(), "Upgrade, X-Upstream-Hop".into()),
            ("X-Upstream-Hop".into(), "upstream-private".into()),
            ("Keep-Alive".into(), "timeout=9".into()),
            ("X-End-To-End".into(), "yes".into()),
        ],
    };
    let (proxy, mut upstream) = proxy_to_raw(reply, &[]).await;
    let client = raw_connect(
        proxy.addr,
        "/",
        &[
            ("Connection", "keep-alive, Upgrade, X-Client-Hop"),
            ("X-Client-Hop", "client-private"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Proxy-Connection", "keep-alive"),
            ("X-Kept", "kept"),
        ],
    )
    .await;
    let seen = upstream.accept(STEP).await.request;
    for name in ["x-client-hop", "keep-alive", "te", "proxy-connection"] {
        assert!(
            !seen.has(name),
            "hop-by-hop {name} reached the upstream: {seen:?}"
        );
    }
    assert!(
        !seen
            .tokens("connection")
            .contains(&"x-client-hop".to_string()),
        "{seen:?}"
    );
    assert_eq!(seen.header("x-kept").as_deref(), Some("kept"));

    let r = &client.response;
    for name in ["x-upstream-hop", "keep-alive"] {
        assert!(!r.has(name), "hop-by-hop {name} reached the client: {r:?}");
    }
    assert!(
        !r.tokens("connection")
            .contains(&"x-upstream-hop".to_string()),
        "{r:?}"
    );
    assert_eq!(r.header("x-end-to-end").as_deref(), Some("yes"));
}

#[tokio::test]
async fn upstream_non_101_answers_reach_the_client_unchanged_with_their_body() {
    for (status, header, body) in [
        (403, ("X-Reason", "bad token"), "forbidden: bad token\n"),
        (
            401,
            ("WWW-Authenticate", "Bearer realm=\"legacy\""),
            "login first",
        ),
        (404, ("X-Reason", "no such room"), ""),
    ] {
        let reply = UpstreamReply::Reject {
            status,
            headers: vec![
                (header.0.into(), header.1.into()),
                ("Content-Type".into(), "text/plain".into()),
            ],
            body: body.as_bytes().to_vec(),
        };
        let (proxy, _upstream) = proxy_to_raw(reply, &[]).await;
        let mut up = raw_upgrade(proxy.addr, "/room", &[]).await;
        assert_eq!(up.response.status(), status, "{:?}", up.response);
        assert_eq!(up.response.header(header.0).as_deref(), Some(header.1));
        assert_eq!(
            up.response.header("content-type").as_deref(),
            Some("text/plain")
        );
        let got = within(STEP, "body", read_body(&mut up.ws.io, &up.response))
            .await
            .expect("read body");
        assert_eq!(String::from_utf8_lossy(&got), body, "body of the {status}");
    }
}

#[tokio::test]
async fn upstream_101_with_a_wrong_accept_value_is_refused_with_502() {
    let (proxy, _upstream) = proxy_to_raw(UpstreamReply::AcceptWrongKey, &[]).await;
    let up = raw_upgrade(proxy.addr, "/", &[]).await;
    assert_eq!(up.response.status(), 502, "{:?}", up.response);
}

#[tokio::test]
async fn malformed_upgrade_requests_get_400_with_a_text_body() {
    let (proxy, _upstream) = proxy_to_raw(UpstreamReply::accept(), &[]).await;
    let a = proxy.addr;
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let cases = [
        (
            "missing Sec-WebSocket-Key",
            format!(
                "GET / HTTP/1.1\r\nHost: {a}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ),
        ),
        (
            "key that is not 16 base64 bytes",
            format!(
                "GET / HTTP/1.1\r\nHost: {a}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: abc\r\n\r\n"
            ),
        ),
        (
            "POST upgrade",
            format!(
                "POST / HTTP/1.1\r\nHost: {a}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n{key}Content-Length: 0\r\n\r\n"
            ),
        ),
        (
            "Upgrade: websocket without Connection: Upgrade",
            format!(
                "GET / HTTP/1.1\r\nHost: {a}\r\nUpgrade: websocket\r\nConnection: keep-alive\r\nSec-WebSocket-Version: 13\r\n{key}\r\n"
            ),
        ),
    ];
    for (what, request) in cases {
        let (head, body) = http_exchange(a, &request).await;
        assert_eq!(head.status(), 400, "{what}: {head:?}");
        assert!(
            !body.is_empty(),
            "{what}: the 400 should explain itself in a text body"
        );
    }
}

#[tokio::test]
async fn unsupported_websocket_version_gets_426_naming_version_13() {
    let (proxy, _upstream) = proxy_to_raw(UpstreamReply::accept(), &[]).await;
    let up = raw_upgrade(proxy.addr, "/", &[("Sec-WebSocket-Version", "8")]).await;
    assert_eq!(up.response.status(), 426, "{:?}", up.response);
    // RFC 6455 §4.4: the server names the versions it supports.
    assert_eq!(
        up.response.header("sec-websocket-version").as_deref(),
        Some("13")
    );
}

#[tokio::test]
/// One line that says the upstream is unreachable, and does not tell the client the upstream's
/// address or port (the log line does, for the operator).
async fn refused_upstream_gets_502_with_a_one_line_body_that_does_not_name_it() {
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed); // nothing listens there now: connects are refused
    let url = format!("ws://{addr}");
    let proxy = spawn_proxy(&["--upstream", &url]).await;
    let mut up = raw_upgrade(proxy.addr, "/", &[]).await;
    assert_eq!(up.response.status(), 502, "{:?}", up.response);
    let body = within(STEP, "body", read_body(&mut up.ws.io, &up.response))
        .await
        .expect("body");
    let text = String::from_utf8_lossy(&body);
    assert_eq!(text, "wsbeat: upstream unreachable\n");
    assert!(!text.contains(&addr.port().to_string()), "{text:?}");
}

#[tokio::test]
async fn blackholed_upstream_connect_gets_504_after_the_connect_timeout() {
    let hole = blackhole().await;
    let url = format!("ws://{}", hole.addr);
    let proxy = spawn_proxy(&["--upstream", &url, "--connect-timeout", "300ms"]).await;
    let started = Instant::now();
    let up = raw_upgrade(proxy.addr, "/", &[]).await;
    let took = started.elapsed();
    eprintln!("504 for a blackholed upstream after {took:?} (connect timeout 300ms)");
    assert_eq!(up.response.status(), 504, "{:?}", up.response);
    assert!(
        took >= Duration::from_millis(250),
        "gave up before the connect timeout: {took:?}"
    );
    assert!(
        took <= Duration::from_millis(2000),
        "connect timeout not applied: {took:?}"
    );
}

#[tokio::test]
async fn upstream_that_accepts_tcp_but_never_answers_the_handshake_gets_504() {
    let mute = spawn_mute_tcp_server().await;
    let url = format!("ws://{mute}");
    let proxy = spawn_proxy(&["--upstream", &url, "--connect-timeout", "300ms"]).await;
    let started = Instant::now();
    let up = raw_upgrade(proxy.addr, "/", &[]).await;
    let took = started.elapsed();
    assert_eq!(up.response.status(), 504, "{:?}", up.response);
    assert!(
        took <= Duration::from_millis(2000),
        "connect timeout not applied: {took:?}"
    );
}

#[tokio::test]
async fn client_that_never_finishes_its_request_is_dropped_after_the_handshake_timeout() {
    let (proxy, mut upstream) =
        proxy_to_raw(UpstreamReply::accept(), &["--handshake-timeout", "200ms"]).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: slow\r\nUpgrade: websocket\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    // Whatever the proxy says (nothing, or a 408), it must then close the connection.
    let mut sink = Vec::new();
    let _ = within(
        STEP,
        "the proxy to drop a slow client",
        stream.read_to_end(&mut sink),
    )
    .await;
    let took = started.elapsed();
    eprintln!("half-sent request dropped after {took:?} (handshake timeout 200ms)");
    assert!(
        took <= Duration::from_millis(2000),
        "handshake timeout not applied: {took:?}"
    );
    assert!(
        upstream.try_accept(Duration::ZERO).await.is_none(),
        "upstream was dialled"
    );
}

#[tokio::test]
async fn concurrent_sessions_each_reach_their_own_path() {
    let (proxy, mut upstream) = proxy_to_raw(UpstreamReply::accept(), &[]).await;
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(raw_connect(proxy.addr, &format!("/s/{i}"), &[]).await);
    }
    let mut targets = BTreeSet::new();
    for _ in 0..20 {
        targets.insert(upstream.accept(STEP).await.request.target().to_string());
    }
    let want: BTreeSet<String> = (0..20).map(|i| format!("/s/{i}")).collect();
    assert_eq!(targets, want);
}
