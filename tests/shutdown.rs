//! Shutdown, end to end: the real binary as a child process, real sessions through it to a
//! frame-level upstream, and real signals sent with `kill`.

mod common;

use std::time::Duration;

use common::*;

/// How long a stopped wsbeat may take to exit once its sessions are closed.
const EXIT: Duration = Duration::from_secs(10);

/// One session through the child: the client's end and the upstream's end.
struct Session {
    client: RawWs,
    upstream: RawWs,
}

/// Opens `n` sessions through `proxy` to `upstream`, and checks that each relays a message both
/// ways, so every session is live before the test goes on.
async fn open_sessions(
    proxy: &WsbeatProcess,
    upstream: &mut RawUpstream,
    n: usize,
) -> Vec<Session> {
    let mut sessions = Vec::with_capacity(n);
    for i in 0..n {
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
        sessions.push(s);
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

/// Today's contract, pinned before the drain grows phases: on SIGTERM every open session gets
/// close 1001 ("going away") on both legs, and the process exits 0.
#[tokio::test]
async fn sigterm_closes_every_session_with_1001_on_both_legs_and_exits_0() {
    let mut upstream = spawn_raw_upstream(UpstreamReply::accept()).await;
    let url = format!("ws://{}", upstream.addr);
    let mut args = vec!["--upstream", url.as_str()];
    args.extend(NO_PINGS);
    let mut proxy = WsbeatProcess::start(&args).await;
    let mut sessions = open_sessions(&proxy, &mut upstream, 5).await;

    proxy.signal("TERM").await;
    for (i, s) in sessions.iter_mut().enumerate() {
        expect_going_away(s, i).await;
    }
    let status = proxy.exit_status(EXIT).await;
    assert_eq!(status.code(), Some(0), "exit after SIGTERM: {status}");
}

/// SIGINT (Ctrl-C in a terminal) is the same request as SIGTERM.
#[tokio::test]
async fn sigint_is_handled_like_sigterm() {
    let mut upstream = spawn_raw_upstream(UpstreamReply::accept()).await;
    let url = format!("ws://{}", upstream.addr);
    let mut args = vec!["--upstream", url.as_str()];
    args.extend(NO_PINGS);
    let mut proxy = WsbeatProcess::start(&args).await;
    let mut sessions = open_sessions(&proxy, &mut upstream, 1).await;

    proxy.signal("INT").await;
    expect_going_away(&mut sessions[0], 0).await;
    let status = proxy.exit_status(EXIT).await;
    assert_eq!(status.code(), Some(0), "exit after SIGINT: {status}");
}
