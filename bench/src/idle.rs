//! Idle sessions: open N upgraded connections, send nothing, answer every ping with a pong,
//! and measure what holding them costs the proxy: RSS per session, CPU per second of holding,
//! and the pings that actually reached the clients and the upstream (the echo server's count).
//!
//! Sequence: proxy RSS baseline → open sessions (bounded parallelism) → settle (so per-session
//! buffers allocated on the first heartbeat are included) → hold window (CPU, ping counters)
//! → RSS at the end of the window → drop all sessions.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::client::{self, Report, Target};
use crate::echo::read_stat;
use crate::procstat::{CpuWindow, Pids};
use crate::tls::Conn;
use crate::ws::{self, Decoder, FrameSink, Rng};

/// Read buffer per idle session: pings are at most 131 bytes on the wire.
const IDLE_READ_BYTES: usize = 512;

/// What `idle` was asked to do.
#[derive(clap::Args)]
pub struct IdleArgs {
    /// Target URL.
    #[arg(long)]
    pub url: String,
    /// Sessions to open.
    #[arg(long, default_value_t = 9000)]
    pub sessions: usize,
    /// Concurrent handshakes while opening.
    #[arg(long, default_value_t = 64)]
    pub parallel: usize,
    /// Pause between opening the last session and the window.
    #[arg(long, default_value = "2s", value_parser = crate::parse_duration)]
    pub settle: Duration,
    /// Measurement window.
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    pub hold: Duration,
    /// Proxy pids (comma separated).
    #[arg(long, default_value = "")]
    pub proxy_pids: Pids,
    /// Echo server stats file (for the pings the upstream received).
    #[arg(long)]
    pub echo_stats: Option<PathBuf>,
    /// Echo server pids: its CPU per ping answered is the machine's floor for a ping.
    #[arg(long, default_value = "")]
    pub echo_pids: Pids,
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
}

/// Counters shared by all sessions.
#[derive(Default)]
struct Shared {
    pings: AtomicU64,
    data_frames: AtomicU64,
    closed_by_peer: AtomicU64,
}

struct IdleSink<'a> {
    out: &'a mut Vec<u8>,
    rng: &'a mut Rng,
    shared: &'a Shared,
    closed: bool,
}

impl FrameSink for IdleSink<'_> {
    fn on_data_start(&mut self, _fin: bool, _opcode: u8, _len: u64) {
        self.shared.data_frames.fetch_add(1, Ordering::Relaxed);
    }
    fn on_data(&mut self, _chunk: &[u8]) {}
    fn on_data_end(&mut self, _fin: bool) {}
    fn on_control(&mut self, opcode: u8, payload: &[u8]) {
        match opcode {
            ws::OP_PING => {
                self.shared.pings.fetch_add(1, Ordering::Relaxed);
                ws::put_masked(self.out, true, ws::OP_PONG, payload, self.rng);
            }
            ws::OP_CLOSE => self.closed = true,
            _ => {}
        }
    }
}

/// Holds one session until `stop` flips: answers pings, counts them.
async fn hold(
    mut stream: Conn,
    mut pending: Vec<u8>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut decoder = Decoder::default();
    let mut rng = Rng::new();
    let mut out = Vec::new();
    let mut rbuf = [0u8; IDLE_READ_BYTES];
    loop {
        let mut sink = IdleSink {
            out: &mut out,
            rng: &mut rng,
            shared: &shared,
            closed: false,
        };
        if decoder.feed(&mut pending, &mut sink).is_err() || sink.closed {
            break;
        }
        // The flush sends what TLS kept back when the socket was full (a no-op on TCP).
        if !out.is_empty()
            && (stream.write_all(&out).await.is_err() || stream.flush().await.is_err())
        {
            break;
        }
        out.clear();
        let n = tokio::select! {
            biased;
            _ = stop.changed() => return,
            n = stream.read(&mut rbuf) => n,
        };
        match n {
            Ok(n) if n > 0 => {
                pending.clear();
                pending.extend_from_slice(&rbuf[..n]);
            }
            _ => break,
        }
    }
    shared.closed_by_peer.fetch_add(1, Ordering::Relaxed);
}

fn echo_pings(path: Option<&PathBuf>) -> Option<u64> {
    read_stat(path?, "pings")
}

/// Runs the idle workload and prints one RESULT line.
///
/// # Errors
/// Fails when the URL is invalid.
pub async fn run(args: IdleArgs) -> io::Result<()> {
    let target = Target::parse(&args.url, &args.tls)?;
    let watched = !args.proxy_pids.is_empty();
    let rss_before = args
        .proxy_pids
        .status_kib("VmRSS:")
        .ok()
        .filter(|_| watched);
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let t0 = Instant::now();
    let opened = Arc::new(AtomicU64::new(0));
    let (failed, first_error) = {
        let (shared, opened) = (shared.clone(), opened.clone());
        client::open_many(
            &target,
            args.sessions,
            args.parallel,
            move |(stream, leftover)| {
                opened.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(hold(stream, leftover, shared.clone(), stop_rx.clone()));
            },
        )
        .await
    };
    let connect_s = Instant::now().duration_since(t0).as_secs_f64();
    let opened = opened.load(Ordering::Relaxed);
    eprintln!("idle: {opened} sessions open in {connect_s:.2}s ({failed} failed)");
    tokio::time::sleep(args.settle).await;

    let cpu = CpuWindow::start(&args.proxy_pids);
    let echo_cpu = CpuWindow::start(&args.echo_pids);
    let (pings0, up0) = (
        shared.pings.load(Ordering::Relaxed),
        echo_pings(args.echo_stats.as_ref()),
    );
    let closed0 = shared.closed_by_peer.load(Ordering::Relaxed);
    tokio::time::sleep(args.hold).await;
    let cpu = cpu.finish(&args.proxy_pids).filter(|_| watched);
    let echo_cpu = echo_cpu
        .finish(&args.echo_pids)
        .filter(|_| !args.echo_pids.is_empty());
    let (pings1, up1) = (
        shared.pings.load(Ordering::Relaxed),
        echo_pings(args.echo_stats.as_ref()),
    );
    let rss_held = args.proxy_pids.status_kib("VmRSS:").ok();
    let closed1 = shared.closed_by_peer.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);

    let held = opened.saturating_sub(closed1) as f64;
    let secs = args.hold.as_secs_f64();
    let mut r = Report::default();
    r.num("sessions", opened as f64)
        .num("failed", failed as f64)
        .num("connect_s", connect_s)
        .num("closed_by_peer", closed1 as f64)
        .num("closed_in_window", (closed1 - closed0) as f64)
        .num(
            "data_frames",
            shared.data_frames.load(Ordering::Relaxed) as f64,
        );
    let client_pings = (pings1 - pings0) as f64;
    r.num(
        "client_pings_per_session_s",
        client_pings / held.max(1.0) / secs,
    );
    let upstream_pings = up0.zip(up1).map(|(a, b)| b.saturating_sub(a) as f64);
    if let Some(up) = upstream_pings {
        r.num("upstream_pings_per_session_s", up / held.max(1.0) / secs);
    }
    if let (Some(a), Some(b)) = (rss_before, rss_held) {
        r.num("rss_before_kib", a as f64)
            .num("rss_held_kib", b as f64);
        if opened > 0 {
            r.num("rss_per_session_kib", (b as f64 - a as f64) / opened as f64);
        }
    }
    if let Some((cpu, wall)) = cpu {
        r.num("proxy_cpu_us_per_s", cpu * 1e6 / wall);
        let pings = client_pings + upstream_pings.unwrap_or(0.0);
        if pings > 0.0 {
            r.num("proxy_cpu_us_per_ping", cpu * 1e6 / pings * (secs / wall));
        }
    }
    if let (Some((cpu, wall)), Some(up)) = (echo_cpu, upstream_pings)
        && up > 0.0
    {
        r.num("echo_cpu_us_per_ping", cpu * 1e6 / up * (secs / wall));
    }
    if let Some(e) = first_error {
        r.text("first_error", &e);
    }
    r.print();
    Ok(())
}
