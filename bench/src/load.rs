//! The load generator: N connections, each echoing messages of S bytes.
//!
//! * Closed loop (default): K messages in flight per connection; each echo that comes back
//!   releases the next send. Measures messages/s, MB/s and round trip (send → echo).
//! * Open loop (`--rate R`): each connection sends R messages/s on a fixed schedule, whatever
//!   the replies do. A dedicated OS thread does the sends (tokio's timer has 1 ms granularity,
//!   far coarser than the round trips measured) and stamps each message with its *intended*
//!   send time, so a stall delays every message scheduled during it and shows in the tail
//!   (coordinated omission corrected, as in wrk2).
//!
//! Both count only messages whose send timestamp falls in the measurement window, and sample
//! the proxy's CPU over exactly that window.

use std::io::{self, Write as _};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::mpsc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::client::{self, Report, Target, ns_at, push_message};
use crate::procstat::{CpuWindow, MachineCpu, Pids, machine_seconds};
use crate::tls::{Conn, TlsArgs};
use crate::ws::{self, Decoder, FrameSink, Rng};

/// Read buffer per connection: big enough that 16 pipelined 64 KiB echoes need few reads.
const READ_BYTES: usize = 256 * 1024;
/// Time between connecting and the first send, so every connection starts together.
const START_DELAY: Duration = Duration::from_millis(100);
/// How long to wait for the peer's Close reply before dropping the connection.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Largest round trip recorded; anything slower is clamped (and is a failure anyway).
const MAX_RECORDED_NS: u64 = 60_000_000_000;

/// What `load` was asked to do.
#[derive(clap::Args)]
pub struct LoadArgs {
    /// Target, e.g. ws://127.0.0.1:8080/.
    #[arg(long)]
    pub url: String,
    /// Connections.
    #[arg(long, default_value_t = 50)]
    pub conns: usize,
    /// Messages in flight per connection (closed loop).
    #[arg(long, default_value_t = 16)]
    pub inflight: usize,
    /// Message size (bytes, or with KiB/MiB suffix); at least 8.
    #[arg(long, default_value = "64", value_parser = crate::parse_size)]
    pub size: usize,
    /// Measurement window.
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
    pub duration: Duration,
    /// Warm-up before the window.
    #[arg(long, default_value = "1s", value_parser = crate::parse_duration)]
    pub warmup: Duration,
    /// Fixed send rate per connection (messages/s): switches to open-loop latency mode.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Time allowed for outstanding echoes after the window.
    #[arg(long, default_value = "2s", value_parser = crate::parse_duration)]
    pub drain: Duration,
    /// Proxy pids (comma separated) whose CPU is charged per message.
    #[arg(long, default_value = "")]
    pub proxy_pids: Pids,
    /// Echo server pids, for diagnostics.
    #[arg(long, default_value = "")]
    pub echo_pids: Pids,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// When things happen; shared by all connections.
struct Plan {
    start: Instant,
    measure: Instant,
    end: Instant,
    drain_until: Instant,
    measure_ns: u64,
    end_ns: u64,
}

/// What one connection saw.
struct ConnStats {
    hist: Histogram<u64>,
    /// Messages sent with a timestamp inside the window.
    sent_in_window: u64,
    /// Of those, echoed back.
    msgs: u64,
    bytes: u64,
    pings: u64,
    error: Option<String>,
}

impl ConnStats {
    fn new() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, MAX_RECORDED_NS, 3).expect("static bounds"),
            sent_in_window: 0,
            msgs: 0,
            bytes: 0,
            pings: 0,
            error: None,
        }
    }
}

/// Decodes echoes: records round trips of messages sent inside the window, answers pings.
struct ClientSink<'a> {
    out: &'a mut Vec<u8>,
    rng: &'a mut Rng,
    stats: &'a mut ConnStats,
    plan: &'a Plan,
    /// Receive time of the current read batch.
    now_ns: u64,
    ts: [u8; 8],
    ts_len: usize,
    msg_bytes: u64,
    completed: usize,
    closed: bool,
}

impl FrameSink for ClientSink<'_> {
    fn on_data_start(&mut self, _fin: bool, opcode: u8, _len: u64) {
        if opcode != ws::OP_CONT {
            self.ts_len = 0;
            self.msg_bytes = 0;
        }
    }
    fn on_data(&mut self, chunk: &[u8]) {
        if self.ts_len < 8 {
            let n = (8 - self.ts_len).min(chunk.len());
            self.ts[self.ts_len..self.ts_len + n].copy_from_slice(&chunk[..n]);
            self.ts_len += n;
        }
        self.msg_bytes += chunk.len() as u64;
    }
    fn on_data_end(&mut self, fin: bool) {
        if !fin {
            return;
        }
        self.completed += 1;
        let sent = u64::from_le_bytes(self.ts);
        if sent >= self.plan.measure_ns && sent < self.plan.end_ns {
            let rtt = self.now_ns.saturating_sub(sent).clamp(1, MAX_RECORDED_NS);
            let _ = self.stats.hist.record(rtt);
            self.stats.msgs += 1;
            self.stats.bytes += self.msg_bytes;
        }
    }
    fn on_control(&mut self, opcode: u8, payload: &[u8]) {
        match opcode {
            ws::OP_PING => {
                self.stats.pings += 1;
                ws::put_masked(self.out, true, ws::OP_PONG, payload, self.rng);
            }
            ws::OP_CLOSE => self.closed = true,
            _ => {}
        }
    }
}

/// Per-connection decoding state.
struct Receiver {
    decoder: Decoder,
    rng: Rng,
    ts: [u8; 8],
    ts_len: usize,
    msg_bytes: u64,
}

impl Receiver {
    fn new() -> Self {
        Self {
            decoder: Decoder::default(),
            rng: Rng::new(),
            ts: [0; 8],
            ts_len: 0,
            msg_bytes: 0,
        }
    }

    /// Decodes one read; returns (messages completed, close received). Pongs go to `out`.
    fn on_read(
        &mut self,
        data: &mut [u8],
        out: &mut Vec<u8>,
        stats: &mut ConnStats,
        plan: &Plan,
    ) -> io::Result<(usize, bool)> {
        let mut sink = ClientSink {
            out,
            rng: &mut self.rng,
            stats,
            plan,
            now_ns: ns_at(Instant::now()),
            ts: self.ts,
            ts_len: self.ts_len,
            msg_bytes: self.msg_bytes,
            completed: 0,
            closed: false,
        };
        self.decoder.feed(data, &mut sink)?;
        let result = (sink.completed, sink.closed);
        (self.ts, self.ts_len, self.msg_bytes) = (sink.ts, sink.ts_len, sink.msg_bytes);
        Ok(result)
    }
}

/// Runs the load and prints one RESULT line.
///
/// # Errors
/// Fails when connections cannot be opened.
pub async fn run(args: LoadArgs) -> io::Result<()> {
    if args.size < 8 {
        return Err(io::Error::other("--size must be at least 8 (timestamp)"));
    }
    let target = Target::parse(&args.url, &args.tls)?;
    if args.rate.is_some() && target.tls.is_some() {
        return Err(io::Error::other("--rate runs over ws:// only"));
    }
    let conns = client::open_all(&target, args.conns).await?;
    let start = Instant::now() + START_DELAY;
    let measure = start + args.warmup;
    let end = measure + args.duration;
    let plan = Arc::new(Plan {
        start,
        measure,
        end,
        drain_until: end + args.drain,
        measure_ns: ns_at(measure),
        end_ns: ns_at(end),
    });
    let template = Arc::new(client::pattern(args.size));
    let (handles, writer) = match args.rate {
        None => (spawn_closed(conns, &plan, &template, args.inflight), None),
        Some(rate) => spawn_open(conns, &plan, &template, rate)?,
    };
    let windows = sample_cpu(&plan, &args).await;
    let mut stats = Vec::with_capacity(handles.len());
    for h in handles {
        stats.push(h.await.map_err(io::Error::other)?);
    }
    let sent_open_loop = match writer {
        Some(w) => Some(w.await.map_err(io::Error::other)??),
        None => None,
    };
    report(&args, &stats, sent_open_loop, windows);
    Ok(())
}

/// CPU seconds / wall seconds over the window for proxy, echo, this process and the machine.
struct Windows {
    proxy: Option<(f64, f64)>,
    echo: Option<(f64, f64)>,
    me: Option<(f64, f64)>,
    machine: Option<(MachineCpu, f64)>,
}

async fn sample_cpu(plan: &Plan, args: &LoadArgs) -> Windows {
    tokio::time::sleep_until(plan.measure.into()).await;
    let me = Pids::me();
    let (p, e, m) = (
        CpuWindow::start(&args.proxy_pids),
        CpuWindow::start(&args.echo_pids),
        CpuWindow::start(&me),
    );
    let machine0 = (machine_seconds().ok(), Instant::now());
    tokio::time::sleep_until(plan.end.into()).await;
    let machine = machine0.0.zip(machine_seconds().ok()).map(|(a, b)| {
        (
            b - a,
            Instant::now().duration_since(machine0.1).as_secs_f64(),
        )
    });
    let finish = |w: CpuWindow, pids: &Pids| {
        if pids.is_empty() {
            None
        } else {
            w.finish(pids)
        }
    };
    Windows {
        proxy: finish(p, &args.proxy_pids),
        echo: finish(e, &args.echo_pids),
        me: finish(m, &me),
        machine,
    }
}

fn report(args: &LoadArgs, stats: &[ConnStats], open_sent: Option<OpenSent>, w: Windows) {
    let mut hist = Histogram::<u64>::new_with_bounds(1, MAX_RECORDED_NS, 3).expect("static bounds");
    let (mut msgs, mut bytes, mut pings, mut sent, mut errors) = (0, 0, 0, 0, 0);
    let mut first_error = None;
    for s in stats {
        let _ = hist.add(&s.hist);
        msgs += s.msgs;
        bytes += s.bytes;
        pings += s.pings;
        sent += s.sent_in_window;
        if let Some(e) = &s.error {
            errors += 1;
            first_error.get_or_insert(e.clone());
        }
    }
    let sent = open_sent.as_ref().map_or(sent, |o| o.sent_in_window);
    let secs = args.duration.as_secs_f64();
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let mut r = Report::default();
    r.num("conns", args.conns as f64)
        .num("msgs", msgs as f64)
        .num("msgs_per_s", msgs as f64 / secs)
        .num("mb_per_s", bytes as f64 / secs / 1e6)
        .num("p50_us", us(0.5))
        .num("p99_us", us(0.99))
        .num("p999_us", us(0.999))
        .num("max_us", hist.max() as f64 / 1000.0)
        .num("lost", sent.saturating_sub(msgs) as f64)
        .num("pings", pings as f64)
        .num("errors", errors as f64);
    if let Some((cpu, wall)) = w.proxy {
        r.num("proxy_cores", cpu / wall);
        if msgs > 0 {
            r.num(
                "proxy_cpu_us_per_msg",
                cpu * 1e6 / msgs as f64 * (secs / wall),
            );
        }
    }
    if let Some((cpu, wall)) = w.echo {
        r.num("echo_cores", cpu / wall);
    }
    if let Some(o) = &open_sent {
        r.num("send_late_p99_us", o.late_p99_us)
            .num("send_late_max_us", o.late_max_us);
    }
    if let Some((cpu, wall)) = w.me {
        r.num("gen_cores", cpu / wall);
    }
    if let Some((m, wall)) = w.machine {
        // The report derives the machine's other load: busy - steal - (gen + echo + proxy).
        // Softirq is shown for information: loopback TCP work mostly runs in the sending
        // process's context and is already inside that process's stime.
        r.num("machine_busy_cores", m.busy / wall)
            .num("softirq_cores", m.softirq / wall)
            .num("steal_cores", m.steal / wall);
    }
    if let Some(e) = first_error {
        r.text("first_error", &e);
    }
    r.print();
}

fn spawn_closed(
    conns: Vec<client::Opened>,
    plan: &Arc<Plan>,
    template: &Arc<Vec<u8>>,
    inflight: usize,
) -> Vec<tokio::task::JoinHandle<ConnStats>> {
    conns
        .into_iter()
        .map(|(stream, leftover)| {
            let (plan, template) = (plan.clone(), template.clone());
            tokio::spawn(async move {
                let mut stats = ConnStats::new();
                let mut conn = Closed::new(&plan, &template, inflight);
                if let Err(e) = conn.run(stream, leftover, &mut stats).await {
                    stats.error = Some(e.to_string());
                }
                stats
            })
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Before,
    Sending,
    Draining,
    Closing,
}

/// One closed-loop connection: a single task, reads and writes multiplexed with `select!`
/// on a borrowed split, so replies, pongs and new sends go out in one write per wake-up.
struct Closed<'a> {
    plan: &'a Plan,
    template: &'a [u8],
    inflight_target: usize,
    inflight: usize,
    phase: Phase,
    out: Vec<u8>,
    out_pos: usize,
    rx: Receiver,
}

impl<'a> Closed<'a> {
    fn new(plan: &'a Plan, template: &'a [u8], inflight_target: usize) -> Self {
        Self {
            plan,
            template,
            inflight_target,
            inflight: 0,
            phase: Phase::Before,
            out: Vec::with_capacity(inflight_target * (template.len() + 14)),
            out_pos: 0,
            rx: Receiver::new(),
        }
    }

    async fn run(
        &mut self,
        mut stream: Conn,
        leftover: Vec<u8>,
        stats: &mut ConnStats,
    ) -> io::Result<()> {
        let mut rbuf = vec![0u8; READ_BYTES];
        let mut pending = leftover;
        self.rx
            .on_read(&mut pending, &mut self.out, stats, self.plan)?;
        let sleep = tokio::time::sleep_until(self.plan.start.into());
        tokio::pin!(sleep);
        let mut flush_owed = false;
        loop {
            let event = std::future::poll_fn(|cx| {
                let out = &self.out[self.out_pos..];
                poll_io(
                    cx,
                    &mut stream,
                    out,
                    &mut flush_owed,
                    &mut rbuf,
                    sleep.as_mut(),
                )
            })
            .await?;
            match event {
                Io::Wrote(n) => {
                    self.out_pos += n;
                    if self.out_pos == self.out.len() {
                        self.out.clear();
                        self.out_pos = 0;
                    }
                }
                Io::Read(0) => return self.on_eof(),
                Io::Read(n) => {
                    if self.on_read(&mut rbuf[..n], stats)? {
                        return Ok(());
                    }
                }
                Io::Timer => match self.on_timer(stats) {
                    Some(next) => sleep.as_mut().reset(next.into()),
                    None => return Ok(()),
                },
            }
            if self.phase == Phase::Draining && self.inflight == 0 {
                self.start_close();
                sleep.as_mut().reset((Instant::now() + CLOSE_WAIT).into());
            }
        }
    }

    fn on_eof(&self) -> io::Result<()> {
        if self.phase == Phase::Closing {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed the connection",
            ))
        }
    }

    /// Returns true when the connection is finished (Close exchanged).
    fn on_read(&mut self, data: &mut [u8], stats: &mut ConnStats) -> io::Result<bool> {
        let (completed, closed) = self.rx.on_read(data, &mut self.out, stats, self.plan)?;
        self.inflight = self.inflight.saturating_sub(completed);
        if self.phase == Phase::Sending {
            let now = Instant::now();
            if now < self.plan.end {
                for _ in 0..completed {
                    self.send(now, stats);
                }
            }
        }
        if closed && self.phase != Phase::Closing {
            return Err(io::Error::other("peer sent Close during the run"));
        }
        Ok(closed)
    }

    fn send(&mut self, now: Instant, stats: &mut ConnStats) {
        let ts = ns_at(now);
        if ts >= self.plan.measure_ns && ts < self.plan.end_ns {
            stats.sent_in_window += 1;
        }
        push_message(&mut self.out, self.template, ts, &mut self.rx.rng);
        self.inflight += 1;
    }

    /// Advances the phase; returns the next deadline, or None to stop.
    fn on_timer(&mut self, stats: &mut ConnStats) -> Option<Instant> {
        match self.phase {
            Phase::Before => {
                let now = Instant::now();
                for _ in 0..self.inflight_target {
                    self.send(now, stats);
                }
                self.phase = Phase::Sending;
                Some(self.plan.end)
            }
            Phase::Sending => {
                self.phase = Phase::Draining;
                Some(self.plan.drain_until)
            }
            Phase::Draining => {
                self.start_close();
                Some(Instant::now() + CLOSE_WAIT)
            }
            Phase::Closing => None,
        }
    }

    fn start_close(&mut self) {
        ws::put_masked(
            &mut self.out,
            true,
            ws::OP_CLOSE,
            &1000u16.to_be_bytes(),
            &mut self.rx.rng,
        );
        self.phase = Phase::Closing;
    }
}

/// What one wake-up of a closed-loop connection brought.
enum Io {
    Wrote(usize),
    Read(usize),
    Timer,
}

/// Polls, in this order, a write of `out`, a flush that TLS still owes, a read and the timer,
/// and returns the first that is ready: a write first, so replies and new sends leave in one
/// write per wake-up. One `&mut` stream serves both directions, which a TLS stream (unlike a
/// TCP one) cannot be split for without a lock.
fn poll_io(
    cx: &mut Context<'_>,
    stream: &mut Conn,
    out: &[u8],
    flush_owed: &mut bool,
    rbuf: &mut [u8],
    sleep: Pin<&mut Sleep>,
) -> Poll<io::Result<Io>> {
    if !out.is_empty() {
        if let Poll::Ready(n) = Pin::new(&mut *stream).poll_write(cx, out) {
            *flush_owed = stream.needs_flush();
            return Poll::Ready(n.map(Io::Wrote));
        }
    } else if *flush_owed {
        // TLS keeps records back when the socket is full; only a flush sends them.
        if let Poll::Ready(done) = Pin::new(&mut *stream).poll_flush(cx) {
            done?;
            *flush_owed = false;
        }
    }
    let mut rb = ReadBuf::new(rbuf);
    if let Poll::Ready(r) = Pin::new(&mut *stream).poll_read(cx, &mut rb) {
        return Poll::Ready(r.map(|()| Io::Read(rb.filled().len())));
    }
    if sleep.poll(cx).is_ready() {
        return Poll::Ready(Ok(Io::Timer));
    }
    Poll::Pending
}

/// What the open-loop sender reports.
struct OpenSent {
    sent_in_window: u64,
    late_p99_us: f64,
    late_max_us: f64,
}

type Spawned = (
    Vec<tokio::task::JoinHandle<ConnStats>>,
    Option<tokio::task::JoinHandle<io::Result<OpenSent>>>,
);

/// Open loop: readers are tokio tasks; one OS thread does all sends on a fixed schedule.
fn spawn_open(
    conns: Vec<client::Opened>,
    plan: &Arc<Plan>,
    template: &Arc<Vec<u8>>,
    rate: f64,
) -> io::Result<Spawned> {
    let (pong_tx, pong_rx) = mpsc::channel::<(usize, Vec<u8>)>();
    let mut writers = Vec::with_capacity(conns.len());
    let mut readers = Vec::with_capacity(conns.len());
    for (i, (stream, leftover)) in conns.into_iter().enumerate() {
        let std_stream = stream.into_tcp("--rate")?.into_std()?;
        writers.push(std_stream.try_clone()?);
        let stream = TcpStream::from_std(std_stream)?;
        let (plan, pong_tx) = (plan.clone(), pong_tx.clone());
        readers.push(tokio::spawn(async move {
            let mut stats = ConnStats::new();
            if let Err(e) = read_open(i, stream, leftover, &plan, &pong_tx, &mut stats).await {
                stats.error = Some(e.to_string());
            }
            stats
        }));
    }
    let (plan, template) = (plan.clone(), template.clone());
    let writer = tokio::task::spawn_blocking(move || {
        let mut w = OpenWriter {
            socks: writers,
            pongs: pong_rx,
            rng: Rng::new(),
            buf: Vec::with_capacity(template.len() + 14),
            pacer: Pacer {
                oversleep: MAX_OVERSLEEP / 2,
            },
            late: Histogram::new_with_bounds(1, MAX_RECORDED_NS, 3).expect("static bounds"),
        };
        let sent = w.run(&plan, &template, rate)?;
        Ok(OpenSent {
            sent_in_window: sent,
            late_p99_us: w.late.value_at_quantile(0.99) as f64 / 1000.0,
            late_max_us: w.late.max() as f64 / 1000.0,
        })
    });
    Ok((readers, Some(writer)))
}

async fn read_open(
    index: usize,
    mut stream: TcpStream,
    mut leftover: Vec<u8>,
    plan: &Plan,
    pongs: &mpsc::Sender<(usize, Vec<u8>)>,
    stats: &mut ConnStats,
) -> io::Result<()> {
    let mut rx = Receiver::new();
    let mut out = Vec::new();
    let mut rbuf = vec![0u8; READ_BYTES];
    rx.on_read(&mut leftover, &mut out, stats, plan)?;
    let deadline = tokio::time::sleep_until((plan.drain_until + CLOSE_WAIT).into());
    tokio::pin!(deadline);
    loop {
        let n = tokio::select! {
            n = stream.read(&mut rbuf) => n?,
            () = &mut deadline => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        let (_, closed) = rx.on_read(&mut rbuf[..n], &mut out, stats, plan)?;
        if !out.is_empty() {
            let _ = pongs.send((index, std::mem::take(&mut out)));
        }
        if closed {
            return Ok(());
        }
    }
}

/// Oversleep of `thread::sleep` is about the timer slack (50 µs by default); never assume more,
/// so a loaded machine cannot make the pacer spin for long.
const MAX_OVERSLEEP: Duration = Duration::from_micros(80);
/// Extra spin before each send, to absorb jitter in the oversleep.
const SPIN_MARGIN: Duration = Duration::from_micros(10);

/// Waits for an instant with microsecond precision without burning a core: sleeps until just
/// before it (by the oversleep measured so far), then spins the rest. A plain sleep would
/// send every message ~55 µs late, and that lateness would be added to every latency.
struct Pacer {
    oversleep: Duration,
}

impl Pacer {
    fn wait_until(&mut self, t: Instant) {
        let now = Instant::now();
        if t <= now {
            return;
        }
        let margin = self.oversleep + SPIN_MARGIN;
        if t - now > margin {
            let wake = t - margin;
            std::thread::sleep(wake - now);
            let over = Instant::now()
                .saturating_duration_since(wake)
                .min(MAX_OVERSLEEP);
            self.oversleep = (self.oversleep * 7 + over) / 8;
        }
        while Instant::now() < t {
            std::hint::spin_loop();
        }
    }
}

/// The open-loop sender thread.
struct OpenWriter {
    socks: Vec<std::net::TcpStream>,
    pongs: mpsc::Receiver<(usize, Vec<u8>)>,
    rng: Rng,
    buf: Vec<u8>,
    pacer: Pacer,
    /// How late each send left, versus its intended time: if this grows, the generator (not
    /// the proxy) is the bottleneck.
    late: Histogram<u64>,
}

impl OpenWriter {
    /// Sends on schedule until the window ends, answers pongs until the drain ends, then
    /// closes every connection. Returns messages sent inside the window.
    fn run(&mut self, plan: &Plan, template: &[u8], rate: f64) -> io::Result<u64> {
        let n = self.socks.len().max(1);
        // Connection c sends at start + (c/n + k) / rate: evenly spread, never in bursts.
        let step = Duration::from_secs_f64(1.0 / rate / n as f64);
        let mut sent_in_window = 0;
        for slot in 0u64.. {
            let intended = plan.start + step * u32::try_from(slot).map_err(io::Error::other)?;
            if intended >= plan.end {
                break;
            }
            self.answer_pongs(plan)?;
            self.pacer.wait_until(intended);
            let ts = ns_at(intended);
            if ts >= plan.measure_ns {
                let late = Instant::now().saturating_duration_since(intended);
                let _ = self
                    .late
                    .record((late.as_nanos() as u64).clamp(1, MAX_RECORDED_NS));
                sent_in_window += 1;
            }
            self.buf.clear();
            push_message(&mut self.buf, template, ts, &mut self.rng);
            let sock = (slot % n as u64) as usize;
            write_all_nonblocking(&self.socks[sock], &self.buf, plan.drain_until)?;
        }
        while Instant::now() < plan.drain_until {
            self.answer_pongs(plan)?;
            std::thread::sleep(Duration::from_millis(1));
        }
        for i in 0..self.socks.len() {
            self.buf.clear();
            ws::put_masked(
                &mut self.buf,
                true,
                ws::OP_CLOSE,
                &1000u16.to_be_bytes(),
                &mut self.rng,
            );
            let _ = write_all_nonblocking(&self.socks[i], &self.buf, Instant::now() + CLOSE_WAIT);
        }
        Ok(sent_in_window)
    }

    fn answer_pongs(&mut self, plan: &Plan) -> io::Result<()> {
        while let Ok((i, frame)) = self.pongs.try_recv() {
            write_all_nonblocking(&self.socks[i], &frame, plan.drain_until)?;
        }
        Ok(())
    }
}

/// The sockets are shared with tokio, so they stay non-blocking: wait in short sleeps when the
/// socket is full (only when the proxy stalls; the stall then shows as latency).
fn write_all_nonblocking(
    mut sock: &std::net::TcpStream,
    mut buf: &[u8],
    deadline: Instant,
) -> io::Result<()> {
    while !buf.is_empty() {
        match sock.write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "send stalled"));
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
