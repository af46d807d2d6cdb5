//! A real browser as a peer: Debian's headless Chromium, driven through the DevTools protocol
//! (CDP) over its WebSocket, and a one-page HTTP server for it to load.
//!
//! Everything stays on 127.0.0.1: the page comes from [`serve_page`], and Chromium runs with a
//! fresh profile and with background networking, component updates, sync and QUIC switched
//! off, so it has no reason to talk to anything else. `./scripts/test.sh` installs Chromium;
//! without it a test skips (or fails under `WSBEAT_REQUIRE_ALL=1`, see [`skip_or_fail`]).
//!
//! Results are read with `Runtime.evaluate` on a value the page's own script sets: no
//! screenshots, no guessing from timing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{assert_eventually, skip_or_fail, within};

/// The Debian package's launcher.
const CHROMIUM: &str = "chromium";
/// Flags for a quiet, throwaway, loopback-only headless browser. `--no-sandbox` because tests
/// may run as root, where Chromium's sandbox refuses to start.
const CHROMIUM_FLAGS: [&str; 11] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
    "--remote-debugging-port=0",
];
/// How long Chromium may take to start and open its DevTools port on a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether Chromium can run here; reports it missing otherwise.
pub async fn chromium_available(test: &str) -> bool {
    let ok = Command::new(CHROMIUM)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success());
    if !ok {
        skip_or_fail(test, "the chromium package is not installed");
    }
    ok
}

/// Serves `html` to every request on 127.0.0.1 (any path), until the test ends.
pub async fn serve_page(html: String) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind page");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer_page_request(stream, html.clone()));
        }
    });
    addr
}

/// Reads one request head (bounded) and answers it with the page; the browser's other requests
/// (a favicon) get the same page, which is harmless.
async fn answer_page_request(mut stream: TcpStream, html: String) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncache-control: no-store\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{html}",
        html.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

type Cdp = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A headless Chromium with a fresh profile, and a CDP connection to it. Dropping it kills the
/// browser and removes the profile; [`Chromium::close`] ends it politely first.
pub struct Chromium {
    child: Child,
    profile: PathBuf,
    cdp: Cdp,
    next_id: u64,
}

/// A page (tab) attached with a flat CDP session.
pub struct Page {
    session: String,
}

impl Chromium {
    /// Starts Chromium on `about:blank` and connects to its browser-level DevTools endpoint.
    pub async fn launch() -> Chromium {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let profile = std::env::temp_dir().join(format!(
            "wsbeat-chromium-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).expect("create profile dir");
        let child = Command::new(CHROMIUM)
            .args(CHROMIUM_FLAGS)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromium");
        // Chromium writes the port it picked (and the browser target's path) into the profile.
        let port_file = profile.join("DevToolsActivePort");
        assert_eventually(START_TIMEOUT, "chromium's DevToolsActivePort", || {
            let f = port_file.clone();
            async move { std::fs::read_to_string(&f).is_ok_and(|s| s.lines().count() >= 2) }
        })
        .await;
        let contents = std::fs::read_to_string(&port_file).expect("read DevToolsActivePort");
        let mut lines = contents.lines();
        let (port, path) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
        let url = format!("ws://127.0.0.1:{port}{path}");
        let (cdp, _) = within(
            START_TIMEOUT,
            "the DevTools connection",
            tokio_tungstenite::connect_async(url),
        )
        .await
        .expect("connect to DevTools");
        Chromium {
            child,
            profile,
            cdp,
            next_id: 1,
        }
    }

    /// Sends one CDP command (to a page's session when given) and returns its `result`,
    /// skipping the events that arrive meanwhile. Panics on a protocol error.
    pub async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut cmd = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            cmd["sessionId"] = json!(s);
        }
        let cdp = &mut self.cdp;
        let fut = async move {
            cdp.send(Message::text(cmd.to_string()))
                .await
                .expect("send CDP command");
            loop {
                let msg = cdp.next().await.expect("DevTools connection ended");
                let Message::Text(text) = msg.expect("DevTools read") else {
                    continue;
                };
                let reply: Value = serde_json::from_str(&text).expect("CDP JSON");
                if reply["id"] != json!(id) {
                    continue;
                }
                if let Some(err) = reply.get("error") {
                    panic!("CDP {method} failed: {err}");
                }
                return reply["result"].clone();
            }
        };
        within(Duration::from_secs(10), "a CDP reply", fut).await
    }

    /// Opens `url` in a new tab and attaches to it.
    pub async fn open(&mut self, url: &str) -> Page {
        let target = self
            .call(None, "Target.createTarget", json!({ "url": url }))
            .await;
        let target_id = target["targetId"].clone();
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await;
        let session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string();
        Page { session }
    }

    /// Evaluates `expression` in `page` and returns its value (JSON-serialisable values only).
    pub async fn evaluate(&mut self, page: &Page, expression: &str) -> Value {
        let result = self
            .call(
                Some(&page.session),
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        if let Some(exc) = result.get("exceptionDetails") {
            panic!("page script threw: {exc}");
        }
        result["result"]["value"].clone()
    }

    /// Polls `expression` until it yields something other than `null`, for at most `d`.
    pub async fn wait_for_value(&mut self, page: &Page, expression: &str, d: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let v = self.evaluate(page, expression).await;
            if !v.is_null() {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page set no value for `{expression}` within {d:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Asks the browser to exit and waits for it (bounded); the drop then only cleans up.
    pub async fn close(mut self) {
        let id = self.next_id;
        let cmd = json!({ "id": id, "method": "Browser.close" });
        let _ = self.cdp.send(Message::text(cmd.to_string())).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
