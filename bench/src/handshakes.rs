//! New sessions per second: C workers, each opening one session after another. A session is a
//! TCP connect, a full TLS handshake (for `wss://`; resumption is off), the WebSocket upgrade,
//! one small message echoed, and a close handshake (our Close, the peer's Close back, then the
//! connection dropped). Reports sessions completed per second, how long a session took, and
//! the proxy's CPU per session.
//!
//! Like `load`, only sessions that *started* inside the measurement window are counted.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{self, Report, Target};
use crate::procstat::{CpuWindow, Pids};
use crate::tls::{Conn, TlsArgs};
use crate::ws::{self, Decoder, FrameSink, Rng};

/// The echoed message's size: small, so the handshake dominates.
const MESSAGE_BYTES: usize = 64;
/// Bound on one whole session; a session that takes longer counts as failed.
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest session time recorded.
const MAX_RECORDED_NS: u64 = 60_000_000_000;

/// What `handshakes` was asked to do.
#[derive(clap::Args)]
pub struct HandshakeArgs {
    /// Target, e.g. wss://127.0.0.1:8443/.
    #[arg(long)]
    pub url: String,
    /// Sessions opened concurrently (one worker each).
    #[arg(long, default_value_t = 50)]
    pub conns: usize,
    /// Measurement window.
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
    pub duration: Duration,
    /// Warm-up before the window.
    #[arg(long, default_value = "1s", value_parser = crate::parse_duration)]
    pub warmup: Duration,
    /// Proxy pids (comma separated) whose CPU is charged per session.
    #[arg(long, default_value = "")]
    pub proxy_pids: Pids,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// What one worker saw.
struct WorkerStats {
    hist: Histogram<u64>,
    sessions: u64,
    failed: u64,
    first_error: Option<String>,
}

/// Runs the workload and prints one RESULT line.
///
/// # Errors
/// Fails when the URL is invalid.
pub async fn run(args: HandshakeArgs) -> io::Result<()> {
    let target = Arc::new(Target::parse(&args.url, &args.tls)?);
    let measure = Instant::now() + args.warmup;
    let end = measure + args.duration;
    let workers: Vec<_> = (0..args.conns)
        .map(|_| tokio::spawn(worker(target.clone(), measure, end)))
        .collect();
    tokio::time::sleep_until(measure.into()).await;
    let me = Pids::me();
    let (cpu, gen_cpu) = (CpuWindow::start(&args.proxy_pids), CpuWindow::start(&me));
    tokio::time::sleep_until(end.into()).await;
    let cpu = cpu
        .finish(&args.proxy_pids)
        .filter(|_| !args.proxy_pids.is_empty());
    let gen_cpu = gen_cpu.finish(&me);
    let mut hist = Histogram::<u64>::new_with_bounds(1, MAX_RECORDED_NS, 3).expect("static bounds");
    let (mut sessions, mut failed, mut first_error) = (0, 0, None);
    for w in workers {
        let s = w.await.map_err(io::Error::other)?;
        let _ = hist.add(&s.hist);
        sessions += s.sessions;
        failed += s.failed;
        first_error = first_error.or(s.first_error);
    }
    let secs = args.duration.as_secs_f64();
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let mut r = Report::default();
    r.num("conns", args.conns as f64)
        .num("sessions", sessions as f64)
        .num("sessions_per_s", sessions as f64 / secs)
        .num("p50_us", us(0.5))
        .num("p99_us", us(0.99))
        .num("failed", failed as f64)
        .text(
            "tls",
            if target.tls.is_some() {
                "1.3_aes128gcm"
            } else {
                "none"
            },
        );
    if let Some((cpu, wall)) = cpu {
        r.num("proxy_cores", cpu / wall);
        if sessions > 0 {
            r.num(
                "proxy_cpu_us_per_session",
                cpu * 1e6 / sessions as f64 * (secs / wall),
            );
        }
    }
    if let Some((cpu, wall)) = gen_cpu {
        // The client's half of every handshake (verify, key exchange) runs here: when this
        // nears the machine's free cores, the generator, not the proxy, sets the rate.
        r.num("gen_cores", cpu / wall);
    }
    if let Some(e) = first_error {
        r.text("first_error", &e);
    }
    r.print();
    Ok(())
}

/// Opens sessions back to back until `end`; counts those that started in the window.
async fn worker(target: Arc<Target>, measure: Instant, end: Instant) -> WorkerStats {
    let mut stats = WorkerStats {
        hist: Histogram::new_with_bounds(1, MAX_RECORDED_NS, 3).expect("static bounds"),
        sessions: 0,
        failed: 0,
        first_error: None,
    };
    let mut rng = Rng::new();
    let payload = client::pattern(MESSAGE_BYTES);
    loop {
        let start = Instant::now();
        if start >= end {
            return stats;
        }
        let result = tokio::time::timeout(SESSION_TIMEOUT, session(&target, &payload, &mut rng))
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "session timed out")));
        if start < measure {
            continue;
        }
        match result {
            Ok(()) => {
                stats.sessions += 1;
                let ns = Instant::now().duration_since(start).as_nanos() as u64;
                let _ = stats.hist.record(ns.clamp(1, MAX_RECORDED_NS));
            }
            Err(e) => {
                stats.failed += 1;
                stats.first_error.get_or_insert(e.to_string());
            }
        }
    }
}

/// One session: connect, handshakes, one echo, close handshake.
async fn session(target: &Target, payload: &[u8], rng: &mut Rng) -> io::Result<()> {
    let (mut stream, mut pending) = client::open(target).await?;
    let mut out = Vec::with_capacity(2 * (MESSAGE_BYTES + 14));
    ws::put_masked(&mut out, true, ws::OP_BINARY, payload, rng);
    send(&mut stream, &mut out).await?;
    let mut decoder = Decoder::default();
    let mut sink = SessionSink::default();
    let mut rbuf = [0u8; 1024];
    loop {
        decoder.feed(&mut pending, &mut sink)?;
        for ping in sink.pings.drain(..) {
            ws::put_masked(&mut out, true, ws::OP_PONG, &ping, rng);
        }
        if sink.echoed && !sink.close_sent {
            ws::put_masked(&mut out, true, ws::OP_CLOSE, &1000u16.to_be_bytes(), rng);
            sink.close_sent = true;
        }
        send(&mut stream, &mut out).await?;
        if sink.closed {
            return match sink.echoed {
                true => Ok(()),
                false => Err(io::Error::other("closed before the echo")),
            };
        }
        let n = stream.read(&mut rbuf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the close handshake",
            ));
        }
        pending.clear();
        pending.extend_from_slice(&rbuf[..n]);
    }
}

async fn send(stream: &mut Conn, out: &mut Vec<u8>) -> io::Result<()> {
    if !out.is_empty() {
        stream.write_all(out).await?;
        stream.flush().await?;
        out.clear();
    }
    Ok(())
}

/// What a session's reads brought: the echo, the peer's Close, pings to answer.
#[derive(Default)]
struct SessionSink {
    echoed: bool,
    close_sent: bool,
    closed: bool,
    pings: Vec<Vec<u8>>,
}

impl FrameSink for SessionSink {
    fn on_data_start(&mut self, _fin: bool, _opcode: u8, _len: u64) {}
    fn on_data(&mut self, _chunk: &[u8]) {}
    fn on_data_end(&mut self, fin: bool) {
        self.echoed |= fin;
    }
    fn on_control(&mut self, opcode: u8, payload: &[u8]) {
        match opcode {
            ws::OP_PING => self.pings.push(payload.to_vec()),
            ws::OP_CLOSE => self.closed = true,
            _ => {}
        }
    }
}
