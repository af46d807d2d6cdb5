//! TLS on both legs, end to end over real sockets with certificates made here by rcgen: a wss
//! client through wsbeat to a wss upstream (echo, 1 MiB, fragments, close codes, heartbeats),
//! mixed legs (a large frame is then copied, never spliced), certificate rotation by a Kubernetes-style symlink swap, upstream verification
//! (unknown CA, server name, mutual TLS), and clients that fail the handshake without harming
//! anyone else.

mod common;

use std::time::Duration;

use common::prom::{eventually_scrape, metric};
use common::*;
use futures_util::SinkExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};

/// A proxy terminating TLS with `pki`'s serial-1 leaf (laid out as a Kubernetes secret in the
/// returned directory), in front of `upstream` (a full URL), with `extra` flags.
async fn tls_proxy(pki: &Pki, upstream: &str, extra: &[&str]) -> (TestProxy, TempDir) {
    let dir = TempDir::new();
    kubernetes_secret(&dir, 1, &pki.server(1));
    let ca = dir.write("ca.pem", pki.ca_pem());
    let ca = ca.display().to_string();
    let pair = pair_args(&dir.0);
    let mut args = vec!["--upstream", upstream];
    if upstream.starts_with("wss:") {
        args.extend_from_slice(&["--upstream-ca", &ca]);
    }
    args.extend(pair.iter().map(String::as_str));
    args.extend_from_slice(extra);
    (spawn_proxy(&args).await, dir)
}

/// An echo upstream speaking TLS with `pki`'s leaf `serial`.
async fn wss_echo(pki: &Pki, serial: u64) -> EchoUpstream {
    spawn_echo_upstream(EchoOptions {
        tls: Some(pki.server_config(&pki.server(serial), false)),
        ..EchoOptions::default()
    })
    .await
}

/// A plain-TCP upgrade request to `addr`, answered with an error (head and body).
async fn upgrade_exchange(addr: std::net::SocketAddr) -> (HttpHead, Vec<u8>) {
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {}\r\n\r\n",
        new_ws_key()
    );
    http_exchange(addr, &req).await
}

fn wss_url(proxy: &TestProxy, path: &str) -> String {
    format!("wss://localhost:{}{path}", proxy.addr.port())
}

#[tokio::test]
async fn wss_to_wss_echoes_text_a_1mib_message_and_a_fragmented_one() {
    let pki = Pki::new();
    let mut upstream = wss_echo(&pki, 100).await;
    let url = format!("wss://127.0.0.1:{}", upstream.addr.port());
    let (proxy, _dir) = tls_proxy(&pki, &url, &NO_PINGS).await;
    let (mut ws, _) = wss_connect(&wss_url(&proxy, "/echo"), pki.client_config())
        .await
        .expect("wss handshake through wsbeat");
    assert_eq!(served_serial(&ws), "01");
    let req = upstream.request(STEP).await;
    assert_eq!(req.header("x-forwarded-proto").as_deref(), Some("https"));

    assert_echo(&mut ws, "hello over TLS").await;
    let big = Message::binary(pattern(1 << 20));
    within(STEP, "send 1 MiB", ws.send(big.clone()))
        .await
        .expect("send");
    assert!(
        next_message(&mut ws, STEP).await == big,
        "1 MiB came back different"
    );

    let parts = [
        ("frag-one ", false),
        ("frag-two ", false),
        ("frag-three", true),
    ];
    for (i, (text, fin)) in parts.into_iter().enumerate() {
        let op = if i == 0 { Data::Text } else { Data::Continue };
        let frame = Frame::message(text.as_bytes().to_vec(), OpCode::Data(op), fin);
        within(STEP, "send a fragment", ws.send(Message::Frame(frame)))
            .await
            .expect("send fragment");
    }
    let whole = Message::text("frag-one frag-two frag-three");
    assert_eq!(next_message(&mut ws, STEP).await, whole);
}

#[tokio::test]
async fn close_codes_cross_both_tls_legs() {
    let pki = Pki::new();
    let mut upstream = wss_echo(&pki, 100).await;
    let url = format!("wss://127.0.0.1:{}", upstream.addr.port());
    let (proxy, _dir) = tls_proxy(&pki, &url, &NO_PINGS).await;
    let (mut ws, _) = wss_connect(&wss_url(&proxy, "/"), pki.client_config())
        .await
        .expect("wss handshake");
    let frame = CloseFrame {
        code: CloseCode::Library(4001),
        reason: "done here".into(),
    };
    within(STEP, "send close", ws.close(Some(frame)))
        .await
        .expect("close");
    let got = upstream
        .closed(STEP)
        .await
        .expect("a close frame with a code");
    assert_eq!(
        (u16::from(got.code), got.reason.as_str()),
        (4001, "done here")
    );
    let echoed = expect_client_close(&mut ws, STEP)
        .await
        .expect("close code back");
    assert_eq!(u16::from(echoed.code), 4001);
}

/// wsbeat pings both legs over TLS and matches the pongs: the client's (tungstenite answers
/// while it reads) and the upstream's.
#[tokio::test]
async fn heartbeats_run_on_both_tls_legs() {
    let pki = Pki::new();
    let upstream = wss_echo(&pki, 100).await;
    let url = format!("wss://127.0.0.1:{}", upstream.addr.port());
    let beats = [
        "--client-ping-interval",
        "30ms",
        "--upstream-ping-interval",
        "30ms",
        "--upstream-pong-timeout",
        "1s",
    ];
    let (proxy, _dir) = tls_proxy(&pki, &url, &beats).await;
    let (mut ws, _) = wss_connect(&wss_url(&proxy, "/"), pki.client_config())
        .await
        .expect("wss handshake");
    let pings = stay_quiet_for(&mut ws, Duration::from_millis(300)).await;
    assert!(
        pings >= 2,
        "client saw {pings} pings in 300 ms at a 30 ms interval"
    );
    eventually_scrape(proxy.admin_addr, STEP, "pongs on both legs", |s| {
        s.value("wsbeat_pongs_received_total", &[("side", "client")]) >= 1.0
            && s.value("wsbeat_pongs_received_total", &[("side", "upstream")]) >= 1.0
    })
    .await;
    assert_echo(&mut ws, "still alive").await;
}

#[tokio::test]
async fn a_wss_client_reaches_a_plain_ws_upstream() {
    let pki = Pki::new();
    let mut upstream = spawn_echo_upstream(EchoOptions::default()).await;
    let url = format!("ws://{}", upstream.addr);
    let (proxy, _dir) = tls_proxy(&pki, &url, &NO_PINGS).await;
    let (mut ws, _) = wss_connect(&wss_url(&proxy, "/plain"), pki.client_config())
        .await
        .expect("wss handshake");
    let req = upstream.request(STEP).await;
    assert_eq!(req.header("x-forwarded-proto").as_deref(), Some("https"));
    assert_echo(&mut ws, "tls in, plain out").await;
    // A 1 MiB frame from the plain upstream is copied, not spliced: the client's bytes are
    // encrypted in user space.
    let big = Message::binary(pattern(1 << 20));
    within(STEP, "send 1 MiB", ws.send(big.clone()))
        .await
        .expect("send");
    assert!(next_message(&mut ws, STEP).await == big, "1 MiB differs");
    metric("wsbeat_spliced_frames_total")
        .label("side", "upstream")
        .value(0)
        .assert_in(proxy.admin_addr)
        .await;
}

#[tokio::test]
async fn a_plain_ws_client_reaches_a_wss_upstream_named_by_its_certificate() {
    let pki = Pki::new();
    // The certificate names only `legacy.internal`; wsbeat dials 127.0.0.1 and verifies that
    // name because of --upstream-server-name.
    let mut upstream = spawn_echo_upstream(EchoOptions {
        tls: Some(pki.server_config(&pki.server_named(7, "legacy.internal"), false)),
        ..EchoOptions::default()
    })
    .await;
    let dir = TempDir::new();
    let ca = dir.write("ca.pem", pki.ca_pem()).display().to_string();
    let url = format!("wss://127.0.0.1:{}", upstream.addr.port());
    let mut args = vec!["--upstream", &url, "--upstream-ca", &ca];
    args.extend_from_slice(&NO_PINGS);
    let without_name = spawn_proxy(&args).await;
    let (refused, _) = upgrade_exchange(without_name.addr).await;
    assert_eq!(
        refused.status(),
        502,
        "the certificate does not name 127.0.0.1"
    );

    args.extend_from_slice(&["--upstream-server-name", "legacy.internal"]);
    let proxy = spawn_proxy(&args).await;
    let (mut ws, _) = ws_connect(proxy.ws_url("/named")).await;
    let req = upstream.request(STEP).await;
    assert_eq!(req.header("x-forwarded-proto").as_deref(), Some("http"));
    assert_echo(&mut ws, "plain in, tls out").await;
}

/// Plain HTTP to an https:// upstream goes over TLS too.
#[tokio::test]
async fn plain_http_requests_reach_an_https_upstream() {
    let pki = Pki::new();
    let upstream = spawn_https_upstream(pki.server_config(&pki.server(3), false)).await;
    let dir = TempDir::new();
    let ca = dir.write("ca.pem", pki.ca_pem()).display().to_string();
    let url = format!("https://127.0.0.1:{}", upstream.port());
    let proxy = spawn_proxy(&["--upstream", &url, "--upstream-ca", &ca]).await;
    let (head, body) = http_exchange(proxy.addr, "GET /page HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(head.status(), 200);
    let seen: serde_json::Value = serde_json::from_slice(&body).expect("json description");
    assert_eq!(seen["target"], "/page", "{seen}");
}

#[tokio::test]
async fn rotation_by_symlink_swap_serves_new_sessions_and_keeps_old_ones() {
    let pki = Pki::new();
    let upstream = spawn_echo_upstream(EchoOptions::default()).await;
    let url = format!("ws://{}", upstream.addr);
    let (proxy, dir) = tls_proxy(&pki, &url, &NO_PINGS).await;
    let (mut old, _) = wss_connect(&wss_url(&proxy, "/old"), pki.client_config())
        .await
        .expect("first session");
    assert_eq!(served_serial(&old), "01");
    metric("wsbeat_tls_cert_expiry_timestamp_seconds")
        .value(expiry_of(&pki.server(1)))
        .assert_in(proxy.admin_addr)
        .await;

    kubernetes_secret(&dir, 2, &pki.server(2));
    let cfg = pki.client_config();
    assert_eventually(STEP, "new handshakes get serial 02", || {
        let cfg = cfg.clone();
        async move { probe_serial(proxy.addr, cfg).await.as_deref() == Ok("02") }
    })
    .await;
    assert_echo(&mut old, "the old session goes on").await;
    let (mut new, _) = wss_connect(&wss_url(&proxy, "/new"), pki.client_config())
        .await
        .expect("session after rotation");
    assert_eq!(served_serial(&new), "02");
    assert_echo(&mut new, "new certificate").await;
    metric("wsbeat_tls_reloads_total")
        .label("result", "ok")
        .value(1)
        .assert_in(proxy.admin_addr)
        .await;

    // A broken pair: serial 3's certificate with serial 4's key.
    let (three, four) = (pki.server(3), pki.server(4));
    let broken = Pair {
        cert: three.cert,
        key: four.key,
    };
    kubernetes_secret(&dir, 3, &broken);
    metric("wsbeat_tls_reloads_total")
        .label("result", "error")
        .value(1)
        .assert_in(proxy.admin_addr)
        .await;
    assert_eq!(
        probe_serial(proxy.addr, pki.client_config())
            .await
            .as_deref(),
        Ok("02")
    );
    assert_echo(&mut old, "still the old session").await;
}

fn expiry_of(pair: &Pair) -> f64 {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(pair.cert.as_bytes()).expect("pem");
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");
    cert.validity().not_after.timestamp() as f64
}

#[tokio::test]
async fn an_upstream_certificate_from_an_unknown_ca_is_a_502() {
    let (ours, theirs) = (Pki::new(), Pki::new());
    let upstream = wss_echo(&theirs, 9).await;
    let dir = TempDir::new();
    let ca = dir.write("ca.pem", ours.ca_pem()).display().to_string();
    let url = format!("wss://127.0.0.1:{}", upstream.addr.port());
    let proxy = spawn_proxy(&["--upstream", &url, "--upstream-ca", &ca]).await;
    let (head, body) = upgrade_exchange(proxy.addr).await;
    assert_eq!(head.status(), 502);
    let body = String::from_utf8_lossy(&body).into_owned();
    assert!(
        !body.contains("127.0.0.1"),
        "the client is not told where the upstream is: {body}"
    );
    metric("wsbeat_upstream_connect_errors_total")
        .label("reason", "tls")
        .value(1)
        .assert_in(proxy.admin_addr)
        .await;
    metric("wsbeat_tls_handshake_errors_total")
        .with_labels(&[("side", "upstream"), ("reason", "certificate")])
        .value(1)
        .assert_in(proxy.admin_addr)
        .await;
}

#[tokio::test]
async fn an_upstream_requiring_a_client_certificate_gets_one_from_the_flags() {
    let pki = Pki::new();
    let mut upstream = spawn_echo_upstream(EchoOptions {
        tls: Some(pki.server_config(&pki.server(5), true)),
        ..EchoOptions::default()
    })
    .await;
    let dir = TempDir::new();
    let ca = dir.write("ca.pem", pki.ca_pem()).display().to_string();
    let client = pki.client(6);
    let cert = dir.write("client.crt", &client.cert).display().to_string();
    let key = dir.write("client.key", &client.key).display().to_string();
    let url = format!("wss://127.0.0.1:{}", upstream.addr.port());

    let anonymous = spawn_proxy(&["--upstream", &url, "--upstream-ca", &ca]).await;
    assert_eq!(upgrade_exchange(anonymous.addr).await.0.status(), 502);
    match upstream.event(STEP).await {
        EchoEvent::Ended(Some(e)) => assert!(e.contains("TLS"), "{e}"),
        other => panic!("expected the upstream to refuse the handshake, got {other:?}"),
    }

    let mut args = vec!["--upstream", &url, "--upstream-ca", &ca];
    args.extend_from_slice(&[
        "--upstream-client-cert",
        &cert,
        "--upstream-client-key",
        &key,
    ]);
    args.extend_from_slice(&NO_PINGS);
    let proxy = spawn_proxy(&args).await;
    let (mut ws, _) = ws_connect(proxy.ws_url("/mtls")).await;
    assert_echo(&mut ws, "with a client certificate").await;
}

/// A client speaking plain HTTP to the TLS port is cut at the handshake, counted once, and the
/// next client is served as usual.
#[tokio::test]
async fn plain_http_on_the_tls_port_is_refused_and_the_proxy_lives_on() {
    let pki = Pki::new();
    let upstream = spawn_echo_upstream(EchoOptions::default()).await;
    let url = format!("ws://{}", upstream.addr);
    let (proxy, _dir) = tls_proxy(&pki, &url, &NO_PINGS).await;
    let mut plain = TcpStream::connect(proxy.addr).await.expect("connect");
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 512];
    let n = within(STEP, "the proxy to drop the plain client", async {
        // rustls may send an alert before closing; read until EOF or a reset.
        let mut total = Vec::new();
        loop {
            match plain.read(&mut buf).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        !n.starts_with(b"HTTP/"),
        "a plain client must not get an HTTP answer"
    );
    metric("wsbeat_tls_handshake_errors_total")
        .with_labels(&[("side", "client"), ("reason", "not_tls")])
        .value(1)
        .assert_in(proxy.admin_addr)
        .await;
    let (mut ws, _) = wss_connect(&wss_url(&proxy, "/"), pki.client_config())
        .await
        .expect("the next client");
    assert_echo(&mut ws, "still serving").await;
}

/// A client that opens TCP and never says hello is cut at --handshake-timeout, TLS included.
#[tokio::test]
async fn a_silent_client_is_cut_at_the_handshake_timeout() {
    let pki = Pki::new();
    let upstream = spawn_echo_upstream(EchoOptions::default()).await;
    let url = format!("ws://{}", upstream.addr);
    let (proxy, _dir) = tls_proxy(&pki, &url, &["--handshake-timeout", "100ms"]).await;
    let mut silent = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut buf = [0u8; 64];
    let read = within(
        Duration::from_secs(2),
        "the proxy to cut a silent client",
        silent.read(&mut buf),
    )
    .await;
    assert!(matches!(read, Ok(0) | Err(_)), "expected EOF, got {read:?}");
    metric("wsbeat_tls_handshake_errors_total")
        .with_labels(&[("side", "client"), ("reason", "timeout")])
        .value(1)
        .assert_in(proxy.admin_addr)
        .await;
}

/// A small message crosses both TLS legs, each way, well within 100 ms: encrypted bytes do not
/// wait in a TLS buffer for the next frame (or the next ping, 20 s later by default).
#[tokio::test]
async fn a_small_message_crosses_both_tls_legs_within_100ms() {
    let pki = Pki::new();
    let mut upstream = wss_echo(&pki, 100).await;
    let url = format!("wss://127.0.0.1:{}", upstream.addr.port());
    let (proxy, _dir) = tls_proxy(&pki, &url, &[]).await;
    let (mut ws, _) = wss_connect(&wss_url(&proxy, "/"), pki.client_config())
        .await
        .expect("wss handshake");
    upstream.request(STEP).await;
    for i in 0..5 {
        let text = format!("tick {i}");
        let started = tokio::time::Instant::now();
        within(STEP, "send", ws.send(Message::text(text.clone())))
            .await
            .expect("send");
        match upstream.event(Duration::from_millis(100)).await {
            EchoEvent::Message(m) => assert_eq!(m, Message::text(text.clone())),
            other => panic!("expected the message at the upstream, got {other:?}"),
        }
        let back = next_message(&mut ws, Duration::from_millis(100)).await;
        assert_eq!(back, Message::text(text));
        let took = tokio::time::Instant::now() - started;
        assert!(
            took < Duration::from_millis(100),
            "round trip {i} took {took:?}"
        );
    }
}

/// Receive buffer of the slow reader in the two tests below (the kernel doubles it): the
/// proxy's socket toward it then holds a few KiB in flight plus the 16 KiB of unsent bytes
/// `TCP_NOTSENT_LOWAT` allows, far less than the 64 KiB of records rustls buffers. So while the
/// burst drains, every write of the proxy ends with records left in rustls, the last one (with
/// the tail) included.
const SLOW_READER_RCVBUF: u32 = 4096;
/// The burst ahead of the tail: 512 KiB, many times what the socket and rustls hold together.
const BURST_MESSAGES: usize = 32;
const BURST_MESSAGE_BYTES: usize = 16 * 1024;
/// The small message that must not wait.
const TAIL: &[u8] = b"tail";
/// How soon the tail must follow the end of the burst.
const TAIL_WITHIN: Duration = Duration::from_millis(100);
/// Heartbeats far away: nothing but the owed flush can send the records left in rustls.
const FAR_PINGS: [&str; 4] = [
    "--client-ping-interval",
    "60s",
    "--upstream-ping-interval",
    "60s",
];

/// The burst and the tail as wire bytes, masked when a client sends them.
fn burst_then_tail(masked: bool) -> Vec<u8> {
    let mask = |f: RawFrame| {
        if masked {
            f.with_mask(next_mask_key())
        } else {
            f
        }
    };
    let mut wire = Vec::new();
    for _ in 0..BURST_MESSAGES {
        wire.extend(mask(RawFrame::binary(pattern(BURST_MESSAGE_BYTES))).encode());
    }
    wire.extend(mask(RawFrame::binary(TAIL)).encode());
    wire
}

/// Reads the burst, then asserts that the tail arrives within [`TAIL_WITHIN`] of its end.
async fn read_burst_then_tail<R: AsyncRead + Unpin>(r: &mut R, reader: &str) {
    for i in 0..BURST_MESSAGES {
        // Without the owed flush the stream's last records (up to 64 KiB) never leave rustls,
        // so on the code before it this wait is the one that fails, a few messages early.
        let what = format!("burst message {i} at the {reader}");
        let frame = within(STEP, &what, read_frame(r))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"))
            .unwrap_or_else(|| panic!("{what}: the stream ended"));
        assert_eq!(frame.payload.len(), BURST_MESSAGE_BYTES, "{what}");
    }
    let what = format!(
        "the tail at the {reader}, {TAIL_WITHIN:?} after the burst (its records left in \
         rustls' buffer when the socket was full, and nothing flushed them)"
    );
    let tail = within(TAIL_WITHIN, &what, read_frame(r))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
        .unwrap_or_else(|| panic!("{what}: the stream ended"));
    assert_eq!((tail.opcode, tail.payload.as_slice()), (OP_BINARY, TAIL));
}

/// A burst from a wss upstream to a client with a small receive window, then one small
/// message. The proxy's writes toward the client meet a full socket, so rustls keeps the end of
/// the stream in its buffer; once the client has read the burst, the tail must follow within
/// 100 ms, not wait for the next frame (here a ping 60 s away).
#[tokio::test]
async fn a_small_message_after_a_burst_reaches_a_slow_wss_client_within_100ms() {
    let pki = Pki::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!(
        "wss://127.0.0.1:{}",
        listener.local_addr().expect("addr").port()
    );
    let tls = pki.server_config(&pki.server(100), false);
    let upstream = tokio::spawn(async move {
        let mut io = raw_wss_accept(&listener, tls).await;
        io.write_all(&burst_then_tail(false)).await.expect("burst");
        io.flush().await.expect("flush burst");
        // Hold the connection until the test is over.
        let _ = read_frame(&mut io).await;
    });
    let (proxy, _dir) = tls_proxy(&pki, &url, &FAR_PINGS).await;
    let mut client =
        raw_wss_connect(proxy.addr, pki.client_config(), Some(SLOW_READER_RCVBUF)).await;
    read_burst_then_tail(&mut client, "client").await;
    upstream.abort();
}

/// The same toward a wss upstream with a small receive window: a burst from the client, then
/// one small message, which must reach the upstream within 100 ms of the burst's end.
#[tokio::test]
async fn a_small_message_after_a_burst_reaches_a_slow_wss_upstream_within_100ms() {
    let pki = Pki::new();
    let listener = small_window_listener(SLOW_READER_RCVBUF);
    let url = format!(
        "wss://127.0.0.1:{}",
        listener.local_addr().expect("addr").port()
    );
    let tls = pki.server_config(&pki.server(100), false);
    let upstream = tokio::spawn(async move {
        let mut io = raw_wss_accept(&listener, tls).await;
        read_burst_then_tail(&mut io, "upstream").await;
    });
    let (proxy, _dir) = tls_proxy(&pki, &url, &FAR_PINGS).await;
    let mut client = raw_wss_connect(proxy.addr, pki.client_config(), None).await;
    let burst = burst_then_tail(true);
    within(STEP, "the client's burst", client.write_all(&burst))
        .await
        .expect("send burst");
    client.flush().await.expect("flush burst");
    let read = within(2 * STEP, "the upstream to read the burst", upstream).await;
    if let Err(e) = read {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// At start-up a pair whose key belongs to another certificate is refused with exit code 64
/// and a message naming both files, before anything is bound.
#[tokio::test]
async fn a_mismatched_pair_at_start_up_exits_64_naming_the_files() {
    let pki = Pki::new();
    let dir = TempDir::new();
    let (a, b) = (pki.server(1), pki.server(2));
    let cert = dir.write("tls.crt", &a.cert).display().to_string();
    let key = dir.write("tls.key", &b.key).display().to_string();
    let child = wsbeat_command()
        .args(["--upstream", "ws://127.0.0.1:9", "--listen", "127.0.0.1:0"])
        .args([
            "--admin-listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ])
        .spawn()
        .expect("start wsbeat");
    let out = within(STEP, "wsbeat to exit", child.wait_with_output())
        .await
        .expect("wsbeat output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "stderr: {stderr}");
    assert!(
        stderr.contains(&key) && stderr.contains(&cert),
        "stderr: {stderr}"
    );
}
