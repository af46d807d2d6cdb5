//! Streaming: one message of F fragments × S bytes (default 256 × 1 MiB) sent through the
//! proxy while it is echoed back, on one connection. Reports throughput and the proxy's peak
//! RSS (VmHWM, reset just before the transfer), which shows whether the proxy buffers whole
//! messages or only frames.
//!
//! The echoed bytes are verified against the sent pattern.

use std::io;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{self, Report, Target};
use crate::procstat::Pids;
use crate::ws::{self, Decoder, FrameSink, Rng};

/// Read buffer: large reads keep the harness out of the way at GB/s.
const READ_BYTES: usize = 256 * 1024;
/// Pattern period (see `client::pattern`).
const PERIOD: usize = 251;

/// What `stream` was asked to do.
#[derive(clap::Args)]
pub struct StreamArgs {
    /// Target URL.
    #[arg(long)]
    pub url: String,
    /// Number of fragments.
    #[arg(long, default_value_t = 256)]
    pub frames: usize,
    /// Fragment size.
    #[arg(long, default_value = "1MiB", value_parser = crate::parse_size)]
    pub frame_size: usize,
    /// Give up after this long.
    #[arg(long, default_value = "120s", value_parser = crate::parse_duration)]
    pub timeout: Duration,
    /// Proxy pids whose peak RSS is reported.
    #[arg(long, default_value = "")]
    pub proxy_pids: Pids,
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
}

struct StreamSink<'a> {
    pattern: &'a [u8],
    out: &'a mut Vec<u8>,
    rng: &'a mut Rng,
    received: u64,
    mismatches: u64,
    frames: u64,
    pings: u64,
    done: bool,
}

impl FrameSink for StreamSink<'_> {
    fn on_data_start(&mut self, _fin: bool, _opcode: u8, _len: u64) {
        self.frames += 1;
    }
    fn on_data(&mut self, chunk: &[u8]) {
        let mut off = 0;
        while off < chunk.len() {
            let phase = ((self.received + off as u64) % PERIOD as u64) as usize;
            let n = (chunk.len() - off).min(self.pattern.len() - phase);
            if chunk[off..off + n] != self.pattern[phase..phase + n] {
                self.mismatches += 1;
            }
            off += n;
        }
        self.received += chunk.len() as u64;
    }
    fn on_data_end(&mut self, fin: bool) {
        self.done |= fin;
    }
    fn on_control(&mut self, opcode: u8, payload: &[u8]) {
        if opcode == ws::OP_PING {
            self.pings += 1;
            ws::put_masked(self.out, true, ws::OP_PONG, payload, self.rng);
        }
    }
}

/// Runs the transfer and prints one RESULT line.
///
/// # Errors
/// Connection errors, a timeout, or an early close.
pub async fn run(args: StreamArgs) -> io::Result<()> {
    let target = Target::parse(&args.url, &args.tls)?;
    let (stream, mut leftover) = client::open(&target).await?;
    let mut stream = stream.into_tcp("stream")?;
    let pattern = client::pattern(args.frame_size.max(READ_BYTES) + PERIOD);
    let reset_ok = args.proxy_pids.is_empty() || args.proxy_pids.reset_peak_rss().is_ok();
    let rss_before = args.proxy_pids.status_kib("VmRSS:").ok();
    let total = (args.frames * args.frame_size) as u64;

    let (mut rd, mut wr) = stream.split();
    let mut rng = Rng::new();
    let mut out = Vec::with_capacity(args.frame_size + 14);
    let mut out_pos = 0;
    let mut sent_frames = 0;
    let mut decoder = Decoder::default();
    let mut rbuf = vec![0u8; READ_BYTES];
    let mut sink = StreamSink {
        pattern: &pattern,
        out: &mut Vec::new(),
        rng: &mut Rng::new(),
        received: 0,
        mismatches: 0,
        frames: 0,
        pings: 0,
        done: false,
    };
    decoder.feed(&mut leftover, &mut sink)?;
    let start = Instant::now();
    let deadline = tokio::time::sleep(args.timeout);
    tokio::pin!(deadline);
    while !sink.done {
        if out_pos == out.len() {
            out.clear();
            out_pos = 0;
            out.append(sink.out);
            if sent_frames < args.frames {
                let phase = (sent_frames * args.frame_size) % PERIOD;
                let payload = &pattern[phase..phase + args.frame_size];
                let opcode = if sent_frames == 0 {
                    ws::OP_BINARY
                } else {
                    ws::OP_CONT
                };
                ws::put_masked(
                    &mut out,
                    sent_frames + 1 == args.frames,
                    opcode,
                    payload,
                    &mut rng,
                );
                sent_frames += 1;
            }
        }
        tokio::select! {
            biased;
            n = wr.write(&out[out_pos..]), if out_pos < out.len() => out_pos += n?,
            n = rd.read(&mut rbuf) => {
                let n = n?;
                if n == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed mid-transfer"));
                }
                decoder.feed(&mut rbuf[..n], &mut sink)?;
            }
            () = &mut deadline => return Err(io::Error::new(io::ErrorKind::TimedOut, "stream timed out")),
        }
    }
    let secs = Instant::now().duration_since(start).as_secs_f64();
    let peak = args.proxy_pids.status_kib("VmHWM:").ok();
    let mut r = Report::default();
    r.num("bytes", sink.received as f64)
        .num("secs", secs)
        .num("mb_per_s", sink.received as f64 / secs / 1e6)
        .num("frames_received", sink.frames as f64)
        .num(
            "mismatches",
            sink.mismatches as f64 + f64::from(u8::from(sink.received != total)),
        )
        .num("pings", sink.pings as f64);
    if !args.proxy_pids.is_empty() {
        if let Some(p) = peak.filter(|_| reset_ok) {
            r.num("peak_rss_mib", p as f64 / 1024.0);
        }
        if let Some(b) = rss_before {
            r.num("rss_before_mib", b as f64 / 1024.0);
        }
    }
    r.print();
    Ok(())
}
