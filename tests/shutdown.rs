//! Shutdown, end to end: the real binary as a child process, real sessions through it to a
//! frame-level upstream, real signals sent with `kill`, and `wsbeat drain` as a preStop hook
//! runs it. The drain has three phases: not ready but accepting (`--drain-delay`), going away
//! (1001 on both legs, up to `--shutdown-grace`), deadline (the rest dropped, exit 0).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::prom::metric;
use common::*;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long a stopped wsbeat may take to exit once its sessions are closed.
const EXIT: Duration = Duration::from_secs(10);
/// Pause between two messages of a chattering peer.
const CHATTER_EVERY: Duration = Duration::from_millis(10);

/// One session through the child: the client's end and the upstream's end.
struct Session {
    client: RawWs,
    upstream: RawWs,
}

/// `--upstream ws://{upstream}` with heartbeats off, then `extra`.
fn args(upstream: &RawUpstream, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["--upstream".to_owned(), format!("ws://{}", upstream.addr)];
    args.extend(NO_PINGS.iter().map(|s| s.to_string()));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

async fn start(args: &[String]) -> WsbeatProcess {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    WsbeatProcess::start(&args).await
}

/// Opens one session through `proxy` to `upstream` and checks that it relays a message both
/// ways, so it is live before the test goes on.
async fn open_session(proxy: &WsbeatProcess, upstream: &mut RawUpstream, i: usize) -> Session {
    let client = raw_connect(proxy.addr, &format!("/s{i}"), &[]).await.ws;
    let upstream = upstream.accept(STEP).await.ws;
    let mut s = Session { client, upstream };
    s.client.must_send(RawFrame::text(&format!("up {i}"))).await;
    let got = s.upstream.recv_skipping_pings(STEP).await;
    assert_eq!(got.payload, format!("up {i}").as_bytes());
    s.upstream
        .must_send(RawFrame::text(&format!("down {i}")))
        .await;
    let got = s.client.recv_skipping_pings(STEP).await;
    assert_eq!(got.payload, format!("down {i}").as_bytes());
    s
}

async fn open_sessions(
    proxy: &WsbeatProcess,
    upstream: &mut RawUpstream,
    n: usize,
) -> Vec<Session> {
    let mut sessions = Vec::with_capacity(n);
    for i in 0..n {
        sessions.push(open_session(proxy, upstream, i).await);
    }
    sessions
}

/// Both legs of `s` receive close 1001; each answers with its own close, as a well-behaved
/// peer does, and the proxy then ends both connections.
async fn expect_going_away(s: &mut Session, i: usize) {
    for (leg, ws) in [("client", &mut s.client), ("upstream", &mut s.upstream)] {
        let close = ws.expect_close(STEP).await;
        assert_eq!(
            close.close_code(),
            Some(1001),
            "session {i}, {leg} leg: {close:?}"
        );
        ws.must_send(RawFrame::close(1001, "")).await;
    }
    s.client.expect_end(STEP).await;
    s.upstream.expect_end(STEP).await;
}

async fn get(admin: std::net::SocketAddr, target: &str) -> u16 {
    let req = format!("GET {target} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    http_exchange(admin, &req).await.0.status()
}

/// What one end of a session saw while chattering through a drain.
#[derive(Debug)]
struct Chatter {
    /// Messages this end had written by the time it saw that the signal was sent.
    sent_before_signal: u64,
    /// Messages this end wrote in all.
    sent: u64,
    /// Sequence numbers of the messages this end received, in order.
    received: Vec<u64>,
    /// The close code this end received.
    close: Option<u16>,
}

/// Sends numbered text messages every [`CHATTER_EVERY`] from one end of a session while a
/// second task reads what arrives, until a close frame arrives; then answers it and reads to
/// the end. `signalled` is set by the test just before it sends the signal.
fn chatter(ws: RawWs, client: bool, signalled: Arc<AtomicBool>) -> JoinHandle<Chatter> {
    let (reader, writer) = tokio::io::split(ws.io);
    let closed = Arc::new(AtomicBool::new(false));
    let writing = tokio::spawn(write_numbers(
        writer,
        client,
        signalled,
        Arc::clone(&closed),
    ));
    tokio::spawn(async move {
        let (received, close) = read_numbers(reader, closed).await;
        let (sent_before_signal, sent) = writing.await.expect("writer task");
        Chatter {
            sent_before_signal,
            sent,
            received,
            close,
        }
    })
}

/// Writes messages `0`, `1`, ... until `closed`, then the close reply. Returns how many it had
/// written when it first saw `signalled`, and how many in all.
async fn write_numbers<W: AsyncWrite>(
    mut w: WriteHalf<W>,
    client: bool,
    signalled: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
) -> (u64, u64) {
    let mut seq = 0;
    let mut before = None;
    // Bounded: the drain ends every session within seconds; 3,000 messages are 30 s.
    while seq < 3_000 {
        if before.is_none() && signalled.load(Ordering::SeqCst) {
            before = Some(seq);
        }
        let mut frame = if closed.load(Ordering::SeqCst) {
            RawFrame::close(1001, "")
        } else {
            RawFrame::text(&seq.to_string())
        };
        if client {
            frame = frame.with_mask(next_mask_key());
        }
        if write_frame(&mut w, &frame).await.is_err() || frame.opcode == OP_CLOSE {
            break;
        }
        seq += 1;
        tokio::time::sleep(CHATTER_EVERY).await;
    }
    (before.unwrap_or(seq), seq)
}

/// Reads frames until the connection ends: the sequence numbers of the text messages, and
/// the code of the close frame (which sets `closed` for the writer).
async fn read_numbers<R: AsyncRead>(
    mut r: ReadHalf<R>,
    closed: Arc<AtomicBool>,
) -> (Vec<u64>, Option<u16>) {
    let mut received = Vec::new();
    let mut close = None;
    let read_all = async {
        while let Ok(Some(frame)) = read_frame(&mut r).await {
            match frame.opcode {
                OP_TEXT => {
                    let text = String::from_utf8(frame.payload).expect("utf-8");
                    received.push(text.parse::<u64>().expect("a sequence number"));
                }
                OP_CLOSE => {
                    close = frame.close_code();
                    closed.store(true, Ordering::SeqCst);
                }
                _ => {}
            }
        }
    };
    within(Duration::from_secs(30), "the session to end", read_all).await;
    (received, close)
}

/// What arrived at one end is exactly what the other end sent, in order, up to some point
/// that includes everything sent before the signal.
fn assert_nothing_lost(what: &str, sender: &Chatter, receiver: &Chatter) {
    let n = receiver.received.len() as u64;
    assert!(
        receiver.received.iter().copied().eq(0..n),
        "{what}: received out of order or with gaps: {:?}",
        receiver.received
    );
    assert!(
        n >= sender.sent_before_signal,
        "{what}: {n} received, but {} were sent before the signal",
        sender.sent_before_signal
    );
    assert!(n <= sender.sent, "{what}: more received than sent");
}

/// The drain as a rollout sees it, with 50 sessions chattering both ways: after SIGTERM,
/// `/readyz` is 503 within 100 ms while new clients are still accepted for the drain delay;
/// then every client and the upstream get 1001, nothing sent before the signal is lost on
/// either side, each phase logs its counts, and the process exits 0.
#[tokio::test]
async fn sigterm_drains_in_three_phases_without_losing_messages() {
    let mut upstream = spawn_raw_upstream(UpstreamReply::accept()).await;
    let delay = Duration::from_millis(1000);
    let args = args(
        &upstream,
        &["--drain-delay", "1s", "--shutdown-grace", "5s"],
    );
    let mut proxy = start(&args).await;
    let sessions = open_sessions(&proxy, &mut upstream, 50).await;
    let signalled = Arc::new(AtomicBool::new(false));
    let mut ends = Vec::new();
    for s in sessions {
        let client = chatter(s.client, true, Arc::clone(&signalled));
        let upstream = chatter(s.upstream, false, Arc::clone(&signalled));
        ends.push((client, upstream));
    }
    // Let messages flow both ways for a while before the signal.
    tokio::time::sleep(Duration::from_millis(100)).await;

    signalled.store(true, Ordering::SeqCst);
    // Taken before the signal is sent, so the delay measured from it is never too short.
    let signalled_at = Instant::now();
    proxy.signal("TERM").await;
    let admin = proxy.admin_addr;
    assert_eventually(
        Duration::from_millis(100),
        "/readyz answering 503",
        || async move { get(admin, "/readyz").await == 503 },
    )
    .await;
    let phase1 = proxy
        .log_line(
            "drain phase 1: not ready, still accepting until the drain delay ends",
            STEP,
        )
        .await;
    assert_eq!(phase1["fields"]["sessions_open"], 50, "{phase1}");
    metric("wsbeat_drain_phase").value(1).assert_in(admin).await;
    metric("wsbeat_ready").value(0).assert_in(admin).await;
    // Still accepting: a new client gets a working session.
    let mut late = open_session(&proxy, &mut upstream, 50).await;
    assert!(
        signalled_at.elapsed() < delay,
        "the late session took the whole delay"
    );

    let phase2 = proxy
        .log_line(
            "drain phase 2: listener closed, closing every session with 1001",
            STEP,
        )
        .await;
    assert_eq!(phase2["fields"]["sessions_open"], 51, "{phase2}");
    assert!(
        signalled_at.elapsed() >= delay,
        "phase 2 began before the drain delay ended"
    );
    expect_going_away(&mut late, 50).await;
    for (i, (client, upstream)) in ends.into_iter().enumerate() {
        let client = within(STEP * 4, "the client end", client)
            .await
            .expect("client task");
        let upstream = within(STEP * 4, "the upstream end", upstream)
            .await
            .expect("upstream task");
        assert_eq!(client.close, Some(1001), "session {i}: client {client:?}");
        assert_eq!(
            upstream.close,
            Some(1001),
            "session {i}: upstream {upstream:?}"
        );
        assert_nothing_lost(
            &format!("session {i}, client to upstream"),
            &client,
            &upstream,
        );
        assert_nothing_lost(
            &format!("session {i}, upstream to client"),
            &upstream,
            &client,
        );
        assert!(
            client.received.len() > 5,
            "session {i}: messages were flowing: {client:?}"
        );
    }
    let phase3 = proxy
        .log_line(
            "drain phase 3: done; dropping what is left and exiting",
            STEP,
        )
        .await;
    assert_eq!(phase3["fields"]["sessions_closed_cleanly"], 51, "{phase3}");
    assert_eq!(phase3["fields"]["sessions_dropped"], 0, "{phase3}");
    let status = proxy.exit_status(EXIT).await;
    assert_eq!(status.code(), Some(0), "exit after SIGTERM: {status}");
}

/// SIGINT (Ctrl-C in a terminal) is the same request as SIGTERM; with `--drain-delay 0` the
/// sessions get their 1001 at once.
#[tokio::test]
async fn sigint_is_handled_like_sigterm() {
    let mut upstream = spawn_raw_upstream(UpstreamReply::accept()).await;
    let mut proxy = start(&args(&upstream, &["--drain-delay", "0"])).await;
    let mut sessions = open_sessions(&proxy, &mut upstream, 3).await;

    proxy.signal("INT").await;
    for (i, s) in sessions.iter_mut().enumerate() {
        expect_going_away(s, i).await;
    }
    let status = proxy.exit_status(EXIT).await;
    assert_eq!(status.code(), Some(0), "exit after SIGINT: {status}");
}

/// A client that never answers the 1001 is cut when the grace ends, not before and not at
/// `--close-timeout` (set far later here); a well-behaved session beside it closes cleanly,
/// and the process still exits 0.
#[tokio::test]
async fn a_client_that_ignores_the_close_is_cut_at_the_grace_deadline() {
    let mut upstream = spawn_raw_upstream(UpstreamReply::accept()).await;
    let grace = Duration::from_millis(400);
    let extra = [
        "--drain-delay",
        "0",
        "--shutdown-grace",
        "400ms",
        "--close-timeout",
        "30s",
    ];
    let mut proxy = start(&args(&upstream, &extra)).await;
    let mut polite = open_session(&proxy, &mut upstream, 0).await;
    let mut deaf = open_session(&proxy, &mut upstream, 1).await;

    let signalled_at = Instant::now();
    proxy.signal("TERM").await;
    expect_going_away(&mut polite, 0).await;
    // The deaf client reads the 1001 but never answers it.
    let close = deaf.client.expect_close(STEP).await;
    assert_eq!(close.close_code(), Some(1001));
    deaf.client.expect_end(STEP).await;
    let cut_after = signalled_at.elapsed();
    assert!(
        cut_after >= grace,
        "cut after {cut_after:?}, before the {grace:?} grace"
    );
    assert!(
        cut_after < grace + Duration::from_secs(3),
        "cut only after {cut_after:?}"
    );
    let phase3 = proxy
        .log_line(
            "drain phase 3: done; dropping what is left and exiting",
            STEP,
        )
        .await;
    assert_eq!(phase3["fields"]["sessions_closed_cleanly"], 1, "{phase3}");
    assert_eq!(phase3["fields"]["sessions_dropped"], 1, "{phase3}");
    let status = proxy.exit_status(EXIT).await;
    assert_eq!(status.code(), Some(0), "exit after the deadline: {status}");
}

/// A second signal during a long drain ends it at once, still with exit status 0.
#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let mut upstream = spawn_raw_upstream(UpstreamReply::accept()).await;
    let extra = ["--drain-delay", "30s", "--shutdown-grace", "30s"];
    let mut proxy = start(&args(&upstream, &extra)).await;
    let _session = open_session(&proxy, &mut upstream, 0).await;

    proxy.signal("TERM").await;
    proxy
        .log_line(
            "drain phase 1: not ready, still accepting until the drain delay ends",
            STEP,
        )
        .await;
    proxy.signal("TERM").await;
    let status = proxy.exit_status(Duration::from_secs(3)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit after the second signal: {status}"
    );
}

/// The signal handlers are in place before the ports open: a SIGTERM sent the moment the
/// "listening" line appears is a drain request, never death by signal. (Before, the handlers
/// came after the listeners, and such a signal killed the process in a few starts out of 20.)
#[tokio::test]
async fn a_signal_right_after_the_ports_open_is_a_clean_drain() {
    let upstream = spawn_raw_upstream(UpstreamReply::accept()).await;
    let args = args(&upstream, &["--drain-delay", "0"]);
    for start_no in 0..10 {
        let mut proxy = start(&args).await;
        proxy.signal("TERM").await;
        let status = proxy.exit_status(EXIT).await;
        assert_eq!(status.code(), Some(0), "start {start_no}: {status}");
    }
}

/// `wsbeat drain --wait`, as a preStop exec hook runs it: the drain starts (sessions get
/// 1001 once the delay is over), and the command returns only once wsbeat has exited.
#[tokio::test]
async fn drain_subcommand_drains_and_waits_for_exit() {
    let mut upstream = spawn_raw_upstream(UpstreamReply::accept()).await;
    let mut proxy = start(&args(&upstream, &["--drain-delay", "200ms"])).await;
    let mut session = open_session(&proxy, &mut upstream, 0).await;

    let admin = proxy.admin_addr.to_string();
    let drain = wsbeat_command()
        .args(["drain", "--admin", &admin, "--wait"])
        .spawn()
        .expect("start wsbeat drain");
    expect_going_away(&mut session, 0).await;
    let out = within(EXIT, "wsbeat drain to return", drain.wait_with_output())
        .await
        .expect("wsbeat drain output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "wsbeat drain: {stderr}");
    assert!(stderr.contains("has exited"), "{stderr}");
    let status = proxy.exit_status(Duration::from_secs(2)).await;
    assert_eq!(status.code(), Some(0), "wsbeat after the drain: {status}");
}

/// `POST /drain` from another machine is refused with 403 even though the admin listener
/// listens on every interface (as it often does for Prometheus); from loopback it drains.
/// wsbeat runs in one network namespace, the remote peer in another, joined by a veth pair.
#[tokio::test]
async fn post_drain_is_accepted_from_loopback_only() {
    let test = "post_drain_is_accepted_from_loopback_only";
    let Some(net) = NetnsPair::create(test) else {
        return;
    };
    let wsbeat = env!("CARGO_BIN_EXE_wsbeat");
    let cmd = net.command(&net.server, wsbeat);
    let args = [
        "--upstream",
        "ws://127.0.0.1:9",
        "--listen",
        "0.0.0.0:0",
        "--admin-listen",
        "0.0.0.0:0",
        "--drain-delay",
        "0",
    ];
    let mut proxy = WsbeatProcess::start_command(cmd, &args).await;
    let port = proxy.admin_addr.port();

    let remote = format!("{}:{port}", net.server_ip);
    let out = within(EXIT, "wsbeat drain from the other namespace", async {
        let cmd = &mut net.command(&net.client, wsbeat);
        cmd.args(["drain", "--admin", &remote]).output().await
    })
    .await
    .expect("run wsbeat drain");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "remote drain: {stderr}");
    assert!(stderr.contains("403"), "remote drain: {stderr}");
    let refused = proxy
        .log_line("POST /drain refused: only loopback peers may drain", STEP)
        .await;
    let peer = refused["fields"]["peer"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        peer.starts_with(&format!("{}:", net.client_ip)),
        "{refused}"
    );
    assert!(
        proxy.child.try_wait().expect("try_wait").is_none(),
        "a refused drain stopped wsbeat"
    );

    // The wildcard address is dialled as loopback, which may drain.
    let local = format!("0.0.0.0:{port}");
    let out = within(EXIT, "wsbeat drain --wait from loopback", async {
        let cmd = &mut net.command(&net.server, wsbeat);
        cmd.args(["drain", "--admin", &local, "--wait"])
            .output()
            .await
    })
    .await
    .expect("run wsbeat drain");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "local drain: {stderr}");
    let status = proxy.exit_status(EXIT).await;
    assert_eq!(status.code(), Some(0), "wsbeat after the drain: {status}");
}
