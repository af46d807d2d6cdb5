//! Limits that keep wsbeat standing in front of the internet, each set by its flag and checked
//! with real sockets: `--max-connections` (503 with `Retry-After` for upgrades and plain HTTP,
//! the slot held for the session's whole life), `--max-request-header-size` (431), and the admin
//! listener's header timeout and connection cap.

mod common;

use std::time::Duration;

use common::prom::metric;
use common::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A plain GET that closes the connection after the response.
fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
}

/// With one slot taken by an open session (whose HTTP task is long finished), both an upgrade
/// and a plain request are refused with 503 and `Retry-After`, and each is counted as
/// `over_limit`. Once the session ends, its slot is free again.
#[tokio::test]
async fn past_max_connections_upgrades_and_plain_http_get_503_until_a_session_ends() {
    let upstream = spawn_demo_upstream().await;
    let proxy = spawn_proxy_to(upstream, &["--max-connections", "1"]).await;
    let (mut first, _) = ws_connect(proxy.ws_url("/first")).await;
    assert_echo(&mut first, "holding the only slot").await;

    let refused = raw_upgrade(proxy.addr, "/second", &[]).await;
    assert_eq!(refused.response.status(), 503, "{:?}", refused.response);
    assert!(refused.response.header("retry-after").is_some());
    let (head, _) = http_exchange(proxy.addr, &get("/page")).await;
    assert_eq!(head.status(), 503, "{head:?}");
    assert!(head.header("retry-after").is_some());
    metric("wsbeat_connections_total")
        .label("result", "over_limit")
        .value(2)
        .assert_in(proxy.admin_addr)
        .await;

    drop(first);
    assert_eventually(STEP, "the slot to come back", || async {
        raw_upgrade(proxy.addr, "/third", &[])
            .await
            .response
            .status()
            == 101
    })
    .await;
}

/// A request head of 64 KiB is refused with 431 at the default limit (16 KiB) and is never
/// forwarded; a head that fits a raised limit passes.
#[tokio::test]
async fn request_heads_over_the_limit_get_431() {
    let mut upstream = spawn_raw_upstream(UpstreamReply::accept()).await;
    let proxy = spawn_proxy_to(upstream.addr, &[]).await;
    let big = "x".repeat(64 * 1024);
    let up = raw_upgrade(proxy.addr, "/", &[("X-Big", &big)]).await;
    assert_eq!(up.response.status(), 431, "{:?}", up.response);
    assert!(
        upstream
            .try_accept(Duration::from_millis(100))
            .await
            .is_none()
    );

    let raised = spawn_proxy_to(upstream.addr, &["--max-request-header-size", "32KiB"]).await;
    // 20 KiB in five headers: over the default, under the raised limit.
    let part = "x".repeat(4 * 1024);
    let medium: Vec<(&str, &str)> = ["X-A", "X-B", "X-C", "X-D", "X-E"]
        .iter()
        .map(|n| (*n, part.as_str()))
        .collect();
    let up = raw_upgrade(raised.addr, "/", &medium).await;
    assert_eq!(up.response.status(), 101, "{:?}", up.response);
    let up = raw_upgrade(proxy.addr, "/", &medium).await;
    assert_eq!(up.response.status(), 431, "{:?}", up.response);
}

/// Reads until EOF or error; true when the peer closed within `d`.
async fn closed_within(stream: &mut TcpStream, d: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(d, stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// An admin connection that sends nothing is closed after `--admin-header-timeout`.
#[tokio::test]
async fn silent_admin_connections_are_closed_after_the_header_timeout() {
    let proxy = spawn_proxy_to(
        spawn_demo_upstream().await,
        &["--admin-header-timeout", "200ms"],
    )
    .await;
    let mut silent = TcpStream::connect(proxy.admin_addr).await.expect("connect");
    let started = Instant::now();
    assert!(closed_within(&mut silent, STEP).await, "still open");
    assert!(started.elapsed() >= Duration::from_millis(150));
}

/// With `--admin-max-connections 2` taken by silent connections, a third connection is
/// answered only once the header timeout frees a slot: the admin port holds at most two
/// descriptors, however many connect.
#[tokio::test]
async fn admin_connections_beyond_the_cap_wait_for_a_slot() {
    let proxy = spawn_proxy_to(
        spawn_demo_upstream().await,
        &[
            "--admin-max-connections",
            "2",
            "--admin-header-timeout",
            "300ms",
        ],
    )
    .await;
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(TcpStream::connect(proxy.admin_addr).await.expect("connect"));
    }
    let started = Instant::now();
    let request = "GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n";
    let (head, _) = http_exchange(proxy.admin_addr, request).await;
    assert_eq!(head.status(), 200, "{head:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "answered after {:?}, before a slot was freed",
        started.elapsed()
    );
    for mut s in silent {
        assert!(closed_within(&mut s, STEP).await);
    }
}

/// A long request path (15 KB, under the header limit) is kept only as a bounded prefix for
/// the session's life: `/connections` shows a few hundred bytes of it.
#[tokio::test]
async fn connections_lists_a_bounded_prefix_of_a_long_path() {
    let proxy = spawn_proxy_to(spawn_demo_upstream().await, &[]).await;
    let long = format!("/{}", "p".repeat(15_000));
    let _session = raw_connect(proxy.addr, &long, &[]).await;
    let admin = proxy.admin_addr;
    assert_eventually(STEP, "the session to be listed", || async move {
        let (_, body) = http_exchange(admin, &get("/connections")).await;
        String::from_utf8_lossy(&body).contains("\"total\":1")
    })
    .await;
    let (_, body) = http_exchange(admin, &get("/connections")).await;
    let listing = String::from_utf8_lossy(&body);
    assert!(listing.len() < 2_000, "listing of {} bytes", listing.len());
    assert!(listing.contains("/ppp"), "{listing}");
}

/// Sends one upgrade request and returns the status, or `None` when no answer comes within
/// `d` (wsbeat could not even accept). The stream is kept open in `held`.
async fn try_upgrade(
    addr: std::net::SocketAddr,
    held: &mut Vec<TcpStream>,
) -> Option<(u16, String)> {
    use tokio::io::{AsyncWriteExt, BufReader};
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {}\r\n\r\n",
            new_ws_key()
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut io = BufReader::new(stream);
        let head = read_head(&mut io).await.ok()??;
        let body = if head.status() == 101 {
            Vec::new()
        } else {
            read_body(&mut io, &head).await.ok()?
        };
        held.push(io.into_inner());
        Some((head.status(), String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_millis(500), attempt)
        .await
        .ok()?
}

/// wsbeat started with `nofile` descriptors and no connection limit to protect it. Returns
/// the statuses of upgrades until one is not a 101 (or gets no answer), with the body of the
/// last.
async fn upgrades_until_exhausted(
    upstream: std::net::SocketAddr,
    nofile: u32,
) -> (
    Vec<u16>,
    String,
    std::net::SocketAddr,
    tokio::process::Child,
    Vec<TcpStream>,
) {
    let script = r#"ulimit -n "$1"; shift; exec "$@""#;
    let mut child = tokio::process::Command::new("sh")
        .args([
            "-c",
            script,
            "sh",
            &nofile.to_string(),
            env!("CARGO_BIN_EXE_wsbeat"),
        ])
        .args(["--upstream", &format!("ws://{upstream}")])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--max-connections", "1000", "--worker-threads", "1"])
        .args(["--client-ping-interval", "0", "--client-pong-timeout", "0"])
        .args(["--upstream-ping-interval", "0", "--log-format", "json"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start wsbeat");
    let (addr, admin) = listening_addrs(&mut child).await;
    let mut held = Vec::new();
    let mut statuses = Vec::new();
    let mut last_body = String::new();
    for _ in 0..64 {
        match try_upgrade(addr, &mut held).await {
            Some((101, _)) => statuses.push(101),
            Some((status, body)) => {
                statuses.push(status);
                last_body = body;
                break;
            }
            None => break,
        }
    }
    (statuses, last_body, admin, child, held)
}

/// The client and admin addresses from the child's JSON "listening" log line.
async fn listening_addrs(
    child: &mut tokio::process::Child,
) -> (std::net::SocketAddr, std::net::SocketAddr) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addrs = within(STEP, "the listening line", async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if v["fields"]["message"] == "listening" {
                let field = |f: &str| {
                    v["fields"][f]
                        .as_str()
                        .expect("addr")
                        .parse()
                        .expect("addr")
                };
                return (field("listen_addr"), field("admin_addr"));
            }
        }
        panic!("wsbeat exited before listening");
    })
    .await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    addrs
}

/// When wsbeat itself runs out of descriptors while dialling the upstream (no
/// `--max-connections` to protect it), the client gets 503 with `Retry-After` and the attempt is
/// counted as `local_exhaustion`, never as 502 or an unreachable upstream. The open-files limit
/// is walked over a few values, since which step meets EMFILE (accept or dial) depends on how
/// many descriptors the process holds at start.
#[tokio::test]
async fn running_out_of_descriptors_is_wsbeats_fault_not_the_upstreams() {
    let upstream = spawn_demo_upstream().await;
    let mut seen = Vec::new();
    for nofile in 20..28 {
        let (statuses, body, admin, _child, held) =
            upgrades_until_exhausted(upstream, nofile).await;
        assert!(
            !statuses.contains(&502),
            "nofile {nofile}: {statuses:?} {body}"
        );
        seen.push((nofile, statuses.clone()));
        if statuses.last() == Some(&503) {
            assert_eq!(body, "wsbeat: temporarily out of resources\n");
            drop(held); // give the descriptors back, so the admin listener can answer
            let s = metric("wsbeat_connections_total")
                .label("result", "local_exhaustion")
                .value(1)
                .assert_in(admin)
                .await;
            assert_eq!(
                s.value(
                    "wsbeat_connections_total",
                    &[("result", "upstream_unreachable")]
                ),
                0.0
            );
            assert_eq!(
                s.value(
                    "wsbeat_upstream_connect_errors_total",
                    &[("reason", "local_exhaustion")]
                ),
                1.0
            );
            return;
        }
    }
    panic!("no open-files limit made the upstream dial fail: {seen:?}");
}

/// `--listen-backlog` reaches the kernel: `ss` shows it as the listening socket's Send-Q.
#[tokio::test]
async fn the_listen_backlog_flag_reaches_the_kernel() {
    let upstream = spawn_demo_upstream().await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsbeat"))
        .args(["--upstream", &format!("ws://{upstream}")])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--listen-backlog", "777", "--log-format", "json"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start wsbeat");
    let (addr, _) = listening_addrs(&mut child).await;
    let out = tokio::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{}", addr.port())])
        .output()
        .await
        .expect("run ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    let send_q: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(send_q, ["777"], "ss: {text}");
}
