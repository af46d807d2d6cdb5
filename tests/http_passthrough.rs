//! Plain HTTP requests (no upgrade) are reverse-proxied to the upstream, which legacy servers
//! use for pages and long-polling fallbacks on the same port; and the admin listener answers
//! `/healthz`.

mod common;

use common::*;
use serde_json::Value;

/// Proxy in front of the describing HTTP upstream.
async fn proxy_to_http(scheme: &str, base: &str) -> (TestProxy, std::net::SocketAddr) {
    let upstream = spawn_http_upstream().await;
    let url = format!("{scheme}://{upstream}{base}");
    (spawn_proxy(&["--upstream", &url]).await, upstream)
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "upstream body is not JSON ({e}): {}",
            String::from_utf8_lossy(body)
        )
    })
}

#[tokio::test]
async fn plain_get_is_proxied_with_path_query_headers_and_forwarding_info() {
    let (proxy, upstream) = proxy_to_http("http", "").await;
    let request = "GET /page/index.html?lang=en&x=1 HTTP/1.1\r\nHost: public.example\r\n\
                   Cookie: sid=1\r\nX-Custom: c\r\nConnection: close\r\n\r\n";
    let (head, body) = http_exchange(proxy.addr, request).await;
    assert_eq!(head.status(), 200, "{head:?}");
    assert_eq!(head.header("x-upstream").as_deref(), Some("http-echo"));
    let seen = json(&body);
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["target"], "/page/index.html?lang=en&x=1");
    assert_eq!(seen["headers"]["cookie"], "sid=1");
    assert_eq!(seen["headers"]["x-custom"], "c");
    assert_eq!(seen["headers"]["host"], upstream.to_string());
    assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["headers"]["x-forwarded-host"], "public.example");
}

#[tokio::test]
async fn post_with_content_length_body_is_passed_through() {
    let (proxy, _upstream) = proxy_to_http("ws", "").await;
    let payload = "{\"poll\":\"messages\",\"since\":42}";
    let request = format!(
        "POST /longpoll HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        payload.len()
    );
    let (head, body) = http_exchange(proxy.addr, &request).await;
    assert_eq!(head.status(), 200, "{head:?}");
    let seen = json(&body);
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["body"], payload);
    assert_eq!(seen["headers"]["content-type"], "application/json");
}

#[tokio::test]
async fn post_with_chunked_body_is_streamed_through() {
    let (proxy, _upstream) = proxy_to_http("http", "").await;
    let request = "POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\
                   Connection: close\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n";
    let (head, body) = http_exchange(proxy.addr, request).await;
    assert_eq!(head.status(), 200, "{head:?}");
    assert_eq!(json(&body)["body"], "hello, world");
}

#[tokio::test]
async fn upstream_error_status_and_body_pass_through_plain_http() {
    let (proxy, _upstream) = proxy_to_http("http", "").await;
    let request = "GET /forbidden HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    let (head, body) = http_exchange(proxy.addr, request).await;
    assert_eq!(head.status(), 403, "{head:?}");
    assert_eq!(head.header("x-reason").as_deref(), Some("test says no"));
    assert_eq!(body, b"forbidden by upstream\n");
}

#[tokio::test]
async fn base_path_applies_to_plain_http_requests() {
    let (proxy, _upstream) = proxy_to_http("http", "/app").await;
    let request = "GET /status?full=1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    let (head, body) = http_exchange(proxy.addr, request).await;
    assert_eq!(head.status(), 200, "{head:?}");
    assert_eq!(json(&body)["target"], "/app/status?full=1");
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded_on_plain_http() {
    let (proxy, _upstream) = proxy_to_http("http", "").await;
    let request = "GET / HTTP/1.1\r\nHost: h\r\nConnection: close, X-Private-Hop\r\n\
                   X-Private-Hop: secret\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
                   Proxy-Connection: keep-alive\r\nX-Kept: yes\r\n\r\n";
    let (head, body) = http_exchange(proxy.addr, request).await;
    assert_eq!(head.status(), 200, "{head:?}");
    let headers = &json(&body)["headers"];
    for name in ["x-private-hop", "keep-alive", "te", "proxy-connection"] {
        assert!(
            headers.get(name).is_none(),
            "hop-by-hop {name} forwarded: {headers}"
        );
    }
    assert_eq!(headers["x-kept"], "yes");
}

#[tokio::test]
async fn two_requests_on_one_keep_alive_client_connection_are_both_proxied() {
    let (proxy, _upstream) = proxy_to_http("http", "").await;
    let (head, mut io) = send_head(proxy.addr, "GET /first HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let body = within(STEP, "first body", read_body(&mut io, &head))
        .await
        .expect("body");
    assert_eq!(json(&body)["target"], "/first");

    use tokio::io::AsyncWriteExt;
    let second = "POST /second HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nok";
    io.write_all(second.as_bytes()).await.expect("write");
    let head = within(STEP, "second head", read_head(&mut io))
        .await
        .expect("read")
        .expect("connection closed after one request");
    let body = within(STEP, "second body", read_body(&mut io, &head))
        .await
        .expect("body");
    let seen = json(&body);
    assert_eq!(
        (seen["target"].as_str(), seen["body"].as_str()),
        (Some("/second"), Some("ok"))
    );
}

#[tokio::test]
/// The client learns only that the upstream is unreachable, never its address or port.
async fn plain_http_to_a_refused_upstream_gets_502_without_naming_it() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let url = format!("http://{addr}");
    let proxy = spawn_proxy(&["--upstream", &url]).await;
    let request = "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    let (head, body) = http_exchange(proxy.addr, request).await;
    assert_eq!(head.status(), 502, "{head:?}");
    assert_eq!(
        String::from_utf8_lossy(&body),
        "wsbeat: upstream unreachable\n"
    );
}

#[tokio::test]
async fn admin_listener_answers_healthz_with_200() {
    let (proxy, _upstream) = proxy_to_http("http", "").await;
    let request = "GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n";
    let (head, _body) = http_exchange(proxy.admin_addr, request).await;
    assert_eq!(head.status(), 200, "{head:?}");
}
