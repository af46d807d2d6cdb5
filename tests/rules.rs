//! Request rules, with real sockets: no climbing out of the base path with dot segments (400),
//! no `CONNECT` (405), `Host` never hop-by-hop, forwarded headers believed only from
//! `--trusted-proxies`, and `--allowed-origins` checked before the upstream is dialled (403).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::prom::metric;
use common::*;
use serde_json::Value;

/// Time an upstream that should never be dialled is watched for a connection.
const NO_DIAL: Duration = Duration::from_millis(200);

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body).expect("upstream body is JSON")
}

/// The headers the plain-HTTP upstream saw for `request` sent through a proxy with `extra`.
async fn seen_headers(extra: &[&str], request: &str) -> Value {
    let upstream: SocketAddr = spawn_http_upstream().await;
    let proxy = spawn_proxy_to(upstream, extra).await;
    let (head, body) = http_exchange(proxy.addr, request).await;
    assert_eq!(head.status(), 200, "{head:?}");
    json(&body)["headers"].clone()
}

/// Dot segments, plain or percent-encoded, are refused with 400 for upgrades and plain
/// requests alike, and the upstream is never dialled.
#[tokio::test]
async fn dot_segments_are_refused_with_400_before_dialling() {
    let mut upstream = spawn_raw_upstream(UpstreamReply::accept()).await;
    let proxy = spawn_proxy(&["--upstream", &format!("ws://{}/app", upstream.addr)]).await;
    for target in [
        "/../secret",
        "/%2e%2e/secret",
        "/a/%2E%2e",
        "/./x",
        "/a/..%2fsecret",
    ] {
        let up = raw_upgrade(proxy.addr, target, &[]).await;
        assert_eq!(up.response.status(), 400, "{target}: {:?}", up.response);
        let request = format!("GET {target} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
        let (head, _) = http_exchange(proxy.addr, &request).await;
        assert_eq!(head.status(), 400, "{target}: {head:?}");
    }
    assert!(
        upstream.try_accept(NO_DIAL).await.is_none(),
        "upstream dialled"
    );
    let fine = raw_upgrade(proxy.addr, "/.well-known/a..b", &[]).await;
    assert_eq!(fine.response.status(), 101, "{:?}", fine.response);
}

/// `CONNECT` is answered 405 with `Allow`, not forwarded.
#[tokio::test]
async fn connect_gets_405() {
    let mut upstream = spawn_raw_upstream(UpstreamReply::accept()).await;
    let proxy = spawn_proxy_to(upstream.addr, &[]).await;
    let request = "CONNECT bank.example:443 HTTP/1.1\r\nHost: bank.example:443\r\n\r\n";
    let (head, _) = send_head(proxy.addr, request).await;
    assert_eq!(head.status(), 405, "{head:?}");
    assert!(head.header("allow").is_some_and(|a| a.contains("GET")));
    assert!(
        upstream.try_accept(NO_DIAL).await.is_none(),
        "upstream dialled"
    );
}

/// With `--preserve-host`, a `Connection` header naming `Host` does not strip it.
#[tokio::test]
async fn host_is_never_hop_by_hop() {
    let mut upstream = spawn_raw_upstream(UpstreamReply::accept()).await;
    let proxy = spawn_proxy_to(upstream.addr, &["--preserve-host"]).await;
    let _up = raw_connect(
        proxy.addr,
        "/",
        &[("Host", "public.example"), ("Connection", "Upgrade, Host")],
    )
    .await;
    let seen = upstream.accept(STEP).await.request;
    assert_eq!(seen.header("host").as_deref(), Some("public.example"));
}

/// What a client sends that only a proxy may say.
const CLAIMS: &str = "GET / HTTP/1.1\r\nHost: public.example\r\nX-Forwarded-Proto: https\r\n\
                      X-Forwarded-Host: bank.example\r\nX-Forwarded-For: 203.0.113.7\r\n\
                      Forwarded: for=203.0.113.7;proto=https\r\nConnection: close\r\n\r\n";

/// By default no peer is trusted: the client's forwarding claims are replaced by what wsbeat
/// saw, and `Forwarded` is dropped.
#[tokio::test]
async fn forwarded_headers_from_an_untrusted_peer_are_replaced() {
    let h = seen_headers(&[], CLAIMS).await;
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "public.example");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert!(h.get("forwarded").is_none(), "{h}");
}

/// From a peer in `--trusted-proxies`, the claims are kept and the peer is appended.
#[tokio::test]
async fn forwarded_headers_from_a_trusted_proxy_are_kept_and_appended() {
    let h = seen_headers(&["--trusted-proxies", "10.0.0.0/8,127.0.0.1/32"], CLAIMS).await;
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "bank.example");
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["forwarded"], "for=203.0.113.7;proto=https");
    // A block that does not hold the peer trusts nothing.
    let h = seen_headers(&["--trusted-proxies", "10.0.0.0/8"], CLAIMS).await;
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
}

/// An upgrade from an origin not in `--allowed-origins` gets 403, counted as
/// `forbidden_origin`, and the upstream is never dialled; a listed origin passes.
#[tokio::test]
async fn origins_outside_the_allowed_list_get_403_before_dialling() {
    let mut upstream = spawn_raw_upstream(UpstreamReply::accept()).await;
    let flags = [
        "--allowed-origins",
        "https://app.example,https://admin.example",
    ];
    let proxy = spawn_proxy_to(upstream.addr, &flags).await;
    let evil = raw_upgrade(proxy.addr, "/", &[("Origin", "https://evil.example")]).await;
    assert_eq!(evil.response.status(), 403, "{:?}", evil.response);
    assert!(
        upstream.try_accept(NO_DIAL).await.is_none(),
        "upstream dialled"
    );
    metric("wsbeat_connections_total")
        .label("result", "forbidden_origin")
        .value(1)
        .assert_in(proxy.admin_addr)
        .await;
    let _ok = raw_connect(proxy.addr, "/", &[("Origin", "https://admin.example")]).await;
    upstream.accept(STEP).await;
}
