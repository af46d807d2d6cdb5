//! Liveness you can trust: a live peer is never declared dead because it reads slowly, a dead
//! one is still found within ping interval + pong timeout + one grid step, and a hung upstream
//! that has shown it can pong is held to it.
//!
//! Real sockets and real short timers (hundreds of milliseconds): the point is how the kernel's
//! socket buffers and the proxy's write path interact, which paused time cannot show.

mod common;

use std::time::Duration;

use common::prom::metric;
use common::slow::SlowReader;
use common::*;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Slack on top of a detection bound: scheduling on a busy two-core CI machine.
const DETECTION_MARGIN: Duration = Duration::from_millis(400);

/// What a slow client saw in its time.
struct SlowRun {
    data_bytes: u64,
    data_frames: u64,
    pings_answered: u32,
    /// The close frame the proxy sent, if any, and when.
    close: Option<(Vec<u8>, Duration)>,
}

/// Reads `client` at about `rate` bytes per second, `chunk` bytes at a time, for `duration`,
/// answering every ping with a pong. Stops early at a close frame or at the end of the stream.
async fn read_slowly(client: &mut RawWs, rate: u64, chunk: usize, duration: Duration) -> SlowRun {
    let started = Instant::now();
    let pace = Duration::from_secs_f64(chunk as f64 / rate as f64);
    let mut reader = SlowReader::default();
    let mut pings_answered = 0;
    let mut buf = vec![0u8; chunk];
    let mut next = started;
    let rounds = (duration.as_secs_f64() / pace.as_secs_f64()).ceil() as u64;
    for _ in 0..rounds {
        // Pacing, not synchronisation: this is how slowly the client reads.
        tokio::time::sleep_until(next).await;
        next += pace;
        let n = within(STEP, "a read", client.io.read(&mut buf))
            .await
            .expect("client read");
        if n == 0 {
            break;
        }
        for (opcode, payload) in reader.feed(&buf[..n]) {
            match opcode {
                OP_PING => {
                    client.must_send(RawFrame::pong(payload)).await;
                    pings_answered += 1;
                }
                OP_CLOSE => {
                    return SlowRun {
                        data_bytes: reader.data_bytes,
                        data_frames: reader.data_frames,
                        pings_answered,
                        close: Some((payload, started.elapsed())),
                    };
                }
                _ => {}
            }
        }
    }
    SlowRun {
        data_bytes: reader.data_bytes,
        data_frames: reader.data_frames,
        pings_answered,
        close: None,
    }
}

/// Sends `count` binary messages of `size` bytes from the upstream, as fast as the proxy takes
/// them; stops at the first failed write.
fn flood(mut conn: RawUpstreamConn, size: usize, count: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let msg = vec![0x5A; size];
        for _ in 0..count {
            if conn.ws.send(RawFrame::binary(msg.clone())).await.is_err() {
                return;
            }
        }
    })
}

/// A client on a slow link, receiving 1 MiB messages, answers every ping it receives but
/// receives each one only after the megabytes queued before it. The bytes it keeps taking prove
/// it alive; the old verdict ("no pong within the timeout of queueing the ping") dropped it
/// after interval + timeout. Scaled down tenfold from the reported case (128 KiB/s at 2 s/2 s):
/// 1.28 MiB/s at 200 ms/200 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_receiving_large_messages_is_not_declared_dead() {
    let (proxy, mut client, conn) = raw_session(&[
        "--client-ping-interval",
        "200ms",
        "--client-pong-timeout",
        "200ms",
        "--upstream-ping-interval",
        "0",
    ])
    .await;
    let upstream = flood(conn, 1 << 20, 50);
    let run = read_slowly(&mut client.ws, 1_310_720, 16 * 1024, Duration::from_secs(3)).await;
    eprintln!(
        "slow reader: {} data bytes, {} whole messages, {} pings answered, close {:?}",
        run.data_bytes,
        run.data_frames,
        run.pings_answered,
        run.close
            .as_ref()
            .map(|(p, t)| (String::from_utf8_lossy(p).into_owned(), *t))
    );
    assert!(
        run.close.is_none(),
        "a live slow reader was closed: {:?}",
        run.close
            .map(|(p, t)| (String::from_utf8_lossy(&p).into_owned(), t))
    );
    assert!(
        run.data_bytes > 2 << 20,
        "the reader kept reading: {} bytes",
        run.data_bytes
    );
    metric("wsbeat_peer_timeouts_total")
        .label("side", "client")
        .value(0)
        .assert_in(proxy.admin_addr)
        .await;
    upstream.abort();
}

/// A client that neither reads nor sends, while the upstream floods it with large messages, is
/// still dropped within ping interval + pong timeout + one grid step: the bytes the kernel
/// buffered for it are not mistaken for the client taking them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deaf_and_mute_client_under_a_flood_is_still_dropped_in_time() {
    let (interval, timeout) = (ms(200), ms(200));
    let (_proxy, _client, conn) = raw_session(&[
        "--client-ping-interval",
        "200ms",
        "--client-pong-timeout",
        "200ms",
        "--upstream-ping-interval",
        "0",
    ])
    .await;
    let started = Instant::now();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let upstream = tokio::spawn(async move {
        let conn = conn;
        let msg = vec![0x5A; 1 << 20];
        // Write until the proxy's buffers toward the client are full and ours with them;
        // the close then arrives on the read side.
        let (mut rd, mut wr) = tokio::io::split(conn.ws.io);
        let reader = async move {
            loop {
                match read_frame(&mut rd).await {
                    Ok(Some(f)) if f.opcode == OP_CLOSE => return Some(f),
                    Ok(Some(_)) => {}
                    _ => return None,
                }
            }
        };
        let writer = async move {
            for _ in 0..200 {
                if write_frame(&mut wr, &RawFrame::binary(msg.clone()))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            std::future::pending::<()>().await;
        };
        let close = tokio::select! {
            c = reader => c,
            _ = writer => None,
        };
        let _ = tx.send(close);
    });
    let close = within(Duration::from_secs(5), "the upstream to be told", rx)
        .await
        .expect("upstream task")
        .expect("a close frame");
    let detected = started.elapsed();
    eprintln!("deaf and mute client under a flood dropped after {detected:?}");
    assert_eq!(
        (close.close_code(), close.close_reason().as_str()),
        (Some(1001), "client timed out")
    );
    assert!(
        detected <= interval + timeout + DETECTION_MARGIN,
        "detected after {detected:?}"
    );
    upstream.abort();
}

/// The JSON of `/connections` on the proxy's admin listener.
async fn connections(admin: std::net::SocketAddr) -> serde_json::Value {
    let req = "GET /connections HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n";
    let (head, body) = http_exchange(admin, req).await;
    assert_eq!(head.status(), 200);
    serde_json::from_slice(&body).expect("JSON body")
}

/// An upstream that answered the proxy's pings and then hangs (its process stopped, or its
/// event loop stuck: the kernel still ACKs, nothing answers) is held to
/// `--upstream-pong-timeout-after-pong` under the default `--upstream-pong-timeout auto`: the
/// client gets 1011 within ping interval + that timeout + one grid step. `/connections` showed
/// the leg as seen to pong before it hung.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_upstream_that_had_ponged_gets_the_client_1011_in_time() {
    let (interval, after_pong) = (ms(100), ms(300));
    let (proxy, mut client, mut conn) = raw_session(&[
        "--upstream-ping-interval",
        "100ms",
        "--upstream-pong-timeout-after-pong",
        "300ms",
        "--client-ping-interval",
        "0",
        "--client-pong-timeout",
        "0",
    ])
    .await;
    for _ in 0..3 {
        let ping = conn.ws.recv_within(STEP).await;
        assert_eq!(ping.opcode, OP_PING, "{ping:?}");
        conn.ws.must_send(RawFrame::pong(ping.payload)).await;
    }
    let admin = proxy.admin_addr;
    assert_eventually(STEP, "the upstream leg shown as ponging", || async move {
        connections(admin).await["sessions"][0]["upstream"]["ponged"] == true
    })
    .await;
    // Hang: keep the socket open, read and answer nothing.
    let hung_at = Instant::now();
    let close = client.ws.expect_close(STEP).await;
    let detected = hung_at.elapsed();
    eprintln!("hung upstream detected after {detected:?} (interval {interval:?} + {after_pong:?})");
    assert_eq!(
        (close.close_code(), close.close_reason().as_str()),
        (Some(1011), "upstream timed out")
    );
    assert!(
        detected <= interval + after_pong + DETECTION_MARGIN,
        "hung upstream detected only after {detected:?}"
    );
    drop(conn);
}

/// An upstream that never answers pings (servers without ping support, draft-76-era drivers)
/// is never killed for it under the default `auto`, however short the after-pong timeout:
/// until it has ponged once, no timeout runs. `/connections` shows it as not seen to pong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_that_never_pongs_is_never_killed_under_auto() {
    let (proxy, mut client, mut conn) = raw_session(&[
        "--upstream-ping-interval",
        "50ms",
        "--upstream-pong-timeout-after-pong",
        "100ms",
        "--client-ping-interval",
        "0",
        "--client-pong-timeout",
        "0",
    ])
    .await;
    // One second, twenty pings, none answered.
    let mut pings = 0;
    for _ in 0..20 {
        let f = conn.ws.recv_within(STEP).await;
        assert_eq!(f.opcode, OP_PING, "{f:?}");
        pings += 1;
    }
    let listing = connections(proxy.admin_addr).await;
    assert_eq!(listing["sessions"][0]["upstream"]["ponged"], false);
    client.ws.must_send(RawFrame::text("still there?")).await;
    let f = conn.ws.recv_skipping_pings(STEP).await;
    assert_eq!(f.payload, b"still there?");
    conn.ws.must_send(RawFrame::text("yes")).await;
    let f = client.ws.recv_skipping_pings(STEP).await;
    assert_eq!(f.payload, b"yes");
    eprintln!("upstream ignored {pings} pings and lives on");
    metric("wsbeat_peer_timeouts_total")
        .label("side", "upstream")
        .value(0)
        .assert_in(proxy.admin_addr)
        .await;
}
