//! Credentials never reach the logs: with every target at `trace`, a session, a plain request
//! and failing requests that carry `Authorization` and `Cookie` leave no trace of their values.
//!
//! One test in its own binary, because it installs the process's global subscriber.

mod common;

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use common::*;
use tokio::net::TcpListener;

/// Log output collected in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        let out = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&out).into_owned()
    }
}

const TOKEN: &str = "Bearer s3cr3t-t0ken-value";
const COOKIE: &str = "sid=c00kie-s3cr3t-value";

#[tokio::test]
async fn authorization_and_cookie_values_never_appear_in_logs_even_at_trace() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_writer(move || writer.clone())
        .init();
    let creds = [("Authorization", TOKEN), ("Cookie", COOKIE)];

    // A whole session, plain HTTP, and requests that fail in three different ways.
    let mut upstream = spawn_raw_upstream(UpstreamReply::accept()).await;
    let proxy = spawn_proxy_to(upstream.addr, &[]).await;
    let session = raw_connect(proxy.addr, "/ws", &creds).await;
    let _conn = upstream.accept(STEP).await;
    drop(session);
    let bad = raw_upgrade(
        proxy.addr,
        "/ws",
        &[creds[0], creds[1], ("Sec-WebSocket-Version", "8")],
    )
    .await;
    assert_eq!(bad.response.status(), 426);
    let dotted = raw_upgrade(proxy.addr, "/../x", &creds).await;
    assert_eq!(dotted.response.status(), 400);

    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let refused = closed.local_addr().expect("addr");
    drop(closed);
    let dead = spawn_proxy_to(refused, &[]).await;
    let failed = raw_upgrade(dead.addr, "/ws", &creds).await;
    assert_eq!(failed.response.status(), 502);
    let request = format!(
        "GET /page HTTP/1.1\r\nHost: h\r\nAuthorization: {TOKEN}\r\nCookie: {COOKIE}\r\n\
         Connection: close\r\n\r\n"
    );
    let (head, _) = http_exchange(dead.addr, &request).await;
    assert_eq!(head.status(), 502);

    let text = logs.text();
    assert!(
        text.contains("TRACE") || text.contains("DEBUG"),
        "nothing logged at all"
    );
    for secret in ["s3cr3t-t0ken-value", "c00kie-s3cr3t-value"] {
        assert!(!text.contains(secret), "{secret} logged:\n{text}");
    }
}
