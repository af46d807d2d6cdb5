//! Fuzz target for the mapping from the client's request to the upstream's request: arbitrary
//! request targets (dot segments plain and percent-encoded, absolute and authority forms,
//! stray `?`, `#`, `@`, `\`), methods and `Host` headers go through a real proxy over real
//! sockets to a recording upstream at `ws://127.0.0.1:PORT/base`.
//!
//! Invariants: nothing panics and every request gets an answer; a request that reaches the
//! upstream carries the upstream's own `Host`, an origin-form target, and a path that stays
//! inside the base path once dot segments are resolved (RFC 3986 5.2.4, with `%2e` read as a
//! dot, as many servers do).
//!
//! A short run is part of `cargo test`. `WSBEAT_FUZZ_SECONDS=600 cargo test --test
//! fuzz_request -- --nocapture` runs it for ten minutes and prints the number of executions.

mod common;
mod fuzz_support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use common::{TestProxy, spawn_proxy};
use fuzz_support::fuzz;

/// What the recording upstream saw of one request.
#[derive(Debug)]
struct Seen {
    target: String,
    host: Vec<String>,
}

/// An upstream that records each request's target and `Host` headers and answers 404.
async fn spawn_recording_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut stream).await else {
                    return;
                };
                let text = String::from_utf8_lossy(&head);
                let mut lines = text.split("\r\n");
                let target = lines
                    .next()
                    .and_then(|l| l.split(' ').nth(1))
                    .unwrap_or("")
                    .to_owned();
                let host = lines
                    .filter_map(|l| l.split_once(':'))
                    .filter(|(name, _)| name.eq_ignore_ascii_case("host"))
                    .map(|(_, v)| v.trim().to_owned())
                    .collect();
                let _ = tx.send(Seen { target, host });
                let reply =
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, rx)
}

/// Reads up to the end of an HTTP head (bounded in size and time); `None` if it never came.
async fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
            }
        }
        true
    };
    match tokio::time::timeout(Duration::from_secs(5), read).await {
        Ok(true) => Some(head),
        _ => None,
    }
}

#[derive(Clone, Debug)]
struct Case {
    method: &'static str,
    target: String,
    host: Option<&'static str>,
    upgrade: bool,
    forwarded_host: bool,
}

fn target() -> impl Strategy<Value = String> {
    let segment = prop::sample::select(vec![
        "",
        ".",
        "..",
        "%2e",
        "%2E",
        "%2e%2e",
        ".%2e",
        "%2e.",
        "%2E%2E",
        "...",
        "a",
        "secret",
        "base",
        "%2f",
        "%2F..",
        "..%2f",
        "%5c..",
        "..\\..",
        "%00",
        "~",
        "a;b",
        "@evil.example",
        "evil.example:80",
        "%",
        "%zz",
        "é",
        "%c0%ae",
        "?x=1",
        "?..",
        "#frag",
        "*",
    ]);
    let path = prop::collection::vec(segment, 0..8).prop_map(|s| s.join("/"));
    let prefix = prop::sample::select(vec![
        "/",
        "/",
        "/",
        "//",
        "",
        "http://evil.example/",
        "ws://evil.example:80/",
        "http://127.0.0.1/",
        "//evil.example/",
        "/base/",
    ]);
    (prefix, path).prop_map(|(prefix, path)| format!("{prefix}{path}"))
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::sample::select(vec![
            "GET", "GET", "GET", "POST", "OPTIONS", "CONNECT", "HEAD",
        ]),
        target(),
        prop::option::weighted(
            0.9,
            prop::sample::select(vec!["evil.example", "127.0.0.1", "a@b", "[::1]:1", "x y"]),
        ),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(method, target, host, upgrade, forwarded_host)| Case {
            method,
            target,
            host,
            upgrade,
            forwarded_host,
        })
}

fn request_bytes(case: &Case) -> Vec<u8> {
    let mut req = format!("{} {} HTTP/1.1\r\n", case.method, case.target);
    if let Some(host) = case.host {
        req.push_str(&format!("Host: {host}\r\n"));
    }
    if case.forwarded_host {
        req.push_str("X-Forwarded-Host: evil.example\r\n");
    }
    if case.upgrade {
        req.push_str(
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        );
    } else {
        req.push_str("Connection: close\r\n");
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// RFC 3986 5.2.4 remove_dot_segments, after reading `%2e` as a dot.
fn resolved_path(target: &str) -> String {
    let path = target.split(['?', '#']).next().unwrap_or("");
    let path = path.replace("%2e", ".").replace("%2E", ".");
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *seg {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

async fn run_case(
    proxy: &TestProxy,
    seen: &mut mpsc::UnboundedReceiver<Seen>,
    case: &Case,
) -> Vec<Seen> {
    let mut client = TcpStream::connect(proxy.addr).await.expect("connect");
    client.write_all(&request_bytes(case)).await.expect("write");
    let answer = read_head(&mut client).await;
    assert!(answer.is_some(), "no answer to {case:?}");
    let mut got = Vec::new();
    while let Ok(s) = seen.try_recv() {
        got.push(s);
    }
    got
}

fn check(case: &Case, upstream: SocketAddr, seen: &[Seen]) -> Result<(), TestCaseError> {
    prop_assert!(seen.len() <= 1, "one request became {}", seen.len());
    let Some(req) = seen.first() else {
        return Ok(());
    };
    let authority = upstream.to_string();
    prop_assert_eq!(
        &req.host,
        &vec![authority],
        "Host at the upstream for {:?}",
        case
    );
    prop_assert!(req.target.starts_with('/'), "target {:?}", req.target);
    let path = resolved_path(&req.target);
    prop_assert!(
        path == "/base" || path.starts_with("/base/"),
        "{:?} reached the upstream as {:?}, which resolves to {:?}",
        case.target,
        req.target,
        path
    );
    Ok(())
}

#[test]
fn requests_stay_on_the_upstream_host_and_inside_its_base_path() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (upstream, mut seen, proxy) = rt.block_on(async {
        let (upstream, seen) = spawn_recording_upstream().await;
        let url = format!("ws://{upstream}/base");
        let proxy = spawn_proxy(&["--upstream", &url]).await;
        (upstream, seen, proxy)
    });
    let seen = std::sync::Mutex::new(&mut seen);
    let (reached, refused) = (AtomicU64::new(0), AtomicU64::new(0));
    fuzz("request", 200, case(), |case| {
        let mut seen = seen.lock().expect("lock");
        let got = rt.block_on(run_case(&proxy, &mut seen, &case));
        let counter = if got.is_empty() { &refused } else { &reached };
        counter.fetch_add(1, Ordering::Relaxed);
        check(&case, upstream, &got)
    });
    let (reached, refused) = (reached.into_inner(), refused.into_inner());
    eprintln!("fuzz target request: {reached} requests reached the upstream, {refused} refused");
    // A target that only ever sees refusals would check nothing.
    assert!(
        reached > refused / 20,
        "too few requests reached the upstream"
    );
}

#[test]
fn dot_segments_resolve_as_rfc_3986_says() {
    assert_eq!(resolved_path("/base/a/../b"), "/base/b");
    assert_eq!(resolved_path("/base/../secret"), "/secret");
    assert_eq!(resolved_path("/base/%2e%2e/secret?x"), "/secret");
    assert_eq!(resolved_path("/base/./"), "/base/");
    assert_eq!(resolved_path("/base/.."), "/");
    assert_eq!(resolved_path("/base"), "/base");
}
