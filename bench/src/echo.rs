//! The echo upstream: answers the upgrade itself, echoes every data frame unmasked (streaming
//! the payload through, so a 1 MiB fragment is never held whole), answers pings with pongs and
//! counts them, answers close.
//!
//! Every read is decoded into one output buffer that is written with a single `write_all`, so
//! 16 pipelined 64 B messages cost one read and one write. Buffers are per connection and reused:
//! nothing is allocated per frame.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::ws::{self, Decoder, FrameSink};

/// Initial read buffer: small so 9,000 idle sessions stay cheap.
const INITIAL_READ_BYTES: usize = 4 * 1024;
/// Read buffer ceiling: reached only by connections that fill the buffer on every read.
const MAX_READ_BYTES: usize = 256 * 1024;
/// Listen backlog: the idle workload opens thousands of connections in a burst.
const LISTEN_BACKLOG: u32 = 4096;

static PINGS: AtomicU64 = AtomicU64::new(0);
static CONNS_TOTAL: AtomicU64 = AtomicU64::new(0);
static CONNS_OPEN: AtomicU64 = AtomicU64::new(0);
static MESSAGES: AtomicU64 = AtomicU64::new(0);

/// Runs the echo server until the process is killed.
///
/// # Errors
/// Fails when the listener cannot be bound.
pub async fn run(
    listen: SocketAddr,
    stats_file: Option<PathBuf>,
    every: Duration,
) -> io::Result<()> {
    let socket = if listen.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(listen)?;
    let listener = socket.listen(LISTEN_BACKLOG)?;
    eprintln!("echo listening on {}", listener.local_addr()?);
    tokio::spawn(report(stats_file, every));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            CONNS_TOTAL.fetch_add(1, Ordering::Relaxed);
            CONNS_OPEN.fetch_add(1, Ordering::Relaxed);
            let _ = serve(stream).await;
            CONNS_OPEN.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Writes the counters to `path` (atomically, via rename) and to stderr if no path was given.
async fn report(path: Option<PathBuf>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let text = format!(
            "pings {}\nconns_total {}\nconns_open {}\nmessages {}\n",
            PINGS.load(Ordering::Relaxed),
            CONNS_TOTAL.load(Ordering::Relaxed),
            CONNS_OPEN.load(Ordering::Relaxed),
            MESSAGES.load(Ordering::Relaxed),
        );
        match &path {
            Some(p) => {
                let tmp = p.with_extension("tmp");
                if std::fs::write(&tmp, &text).is_ok() {
                    let _ = std::fs::rename(&tmp, p);
                }
            }
            None => eprint!("{}", text.replace('\n', " ") + "\n"),
        }
    }
}

/// Reads the counter `key` from a stats file written by `report`.
pub fn read_stat(path: &std::path::Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

struct EchoSink<'a> {
    out: &'a mut Vec<u8>,
    pings: u64,
    messages: u64,
    closed: bool,
}

impl FrameSink for EchoSink<'_> {
    fn on_data_start(&mut self, fin: bool, opcode: u8, len: u64) {
        ws::put_header(self.out, fin, opcode, len as usize, None);
    }
    fn on_data(&mut self, chunk: &[u8]) {
        self.out.extend_from_slice(chunk);
    }
    fn on_data_end(&mut self, fin: bool) {
        self.messages += u64::from(fin);
    }
    fn on_control(&mut self, opcode: u8, payload: &[u8]) {
        match opcode {
            ws::OP_PING => {
                self.pings += 1;
                ws::put_header(self.out, true, ws::OP_PONG, payload.len(), None);
                self.out.extend_from_slice(payload);
            }
            ws::OP_CLOSE if !self.closed => {
                self.closed = true;
                ws::put_header(self.out, true, ws::OP_CLOSE, payload.len(), None);
                self.out.extend_from_slice(payload);
            }
            _ => {}
        }
    }
}

async fn serve(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut pending = ws::accept(&mut stream).await?;
    let mut rbuf = vec![0u8; INITIAL_READ_BYTES];
    let mut out = Vec::with_capacity(INITIAL_READ_BYTES);
    let mut decoder = Decoder::default();
    let mut closed = false;
    loop {
        let n = if pending.is_empty() {
            stream.read(&mut rbuf).await?
        } else {
            let n = pending.len().min(rbuf.len());
            rbuf[..n].copy_from_slice(&pending[..n]);
            pending.drain(..n);
            n
        };
        if n == 0 {
            return Ok(());
        }
        let mut sink = EchoSink {
            out: &mut out,
            pings: 0,
            messages: 0,
            closed,
        };
        decoder.feed(&mut rbuf[..n], &mut sink)?;
        let (pings, messages) = (sink.pings, sink.messages);
        closed = sink.closed;
        if pings > 0 {
            PINGS.fetch_add(pings, Ordering::Relaxed);
        }
        if messages > 0 {
            MESSAGES.fetch_add(messages, Ordering::Relaxed);
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if closed {
            return stream.shutdown().await;
        }
        if n == rbuf.len() && rbuf.len() < MAX_READ_BYTES {
            rbuf.resize(rbuf.len() * 2, 0);
        }
    }
}
