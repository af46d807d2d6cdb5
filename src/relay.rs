//! The session: the one place that owns both legs of an upgraded connection.
//!
//! Owns: relaying frames both ways ([`pump`]), answering pings, driving each leg's heartbeat,
//! close handling and the session's [`Outcome`]. Does not own: the handshake, the sockets'
//! options, or counting connections (the server does those).
//!
//! Why a hand-written `poll` instead of a `select!` loop with `send().await` in the arm bodies:
//! a send that waits for a slow peer would stop the whole loop, so the other direction and both
//! heartbeats would stall with it. Here every direction and timer makes progress on its own in
//! one task, exactly as `tokio::io::copy_bidirectional` does, and backpressure still holds: a
//! pump whose destination does not take its bytes stops reading its source.
//!
//! Policy (RFC 6455 5.5): ping and pong are hop-by-hop. The proxy answers each side's pings
//! itself with the identical payload, sends its own tagged pings, ignores pongs that are not
//! ours, and never forwards a ping or a pong. Data and close frames are relayed frame by frame.
//! Our control frames go into a leg's stream only at a frame boundary.
//!
//! Text heartbeats ([`crate::text_heartbeat`], off unless configured): the pump recognises a
//! configured text ping or pong; the answers, keep-alives and text pings we send are data
//! messages, so they wait in the leg until the stream into it is between messages (RFC 6455
//! 5.4), and then go before anything relayed later.
//!
//! When a leg dies (pong timeout, or TCP ends without a close frame) it is dropped at once and the
//! survivor gets a close frame ([`leg::CloseFrame::for_survivor`] decides which).
//!
//! Liveness: a leg is alive while it shows life, not only while it answers pings in time.
//! - Every frame read from it counts, and so do bytes it takes after its socket was full: the
//!   kernel makes room only when the peer acknowledged data, which under backpressure means its
//!   application read. So a client on a slow link that is busy reading large messages is not
//!   dropped because our ping waits behind them. Writes into a socket with room prove nothing,
//!   so a deaf peer is still found.
//! - The pong timeout runs from when the ping was written to the socket, not when it was
//!   queued; a leg that takes no byte at all for the timeout is dead as before.
//! - Read before declaring: when a heartbeat says dead, the leg only becomes a suspect; the
//!   verdict stands if reading what already sits in its socket shows no life.
//! - Ask the kernel: bytes already handed to the kernel sit between our ping and the peer, and
//!   a slow reader answers only once it has read them. Half a timeout before a silent peer
//!   expires, we note the kernel's view of it (`TCP_INFO`, [`PeerDelivery`]) and send an extra
//!   ping, whose acknowledgement brings that view up to date. At the expiry, bytes taken that
//!   were already waiting at the look, or a window that grew while bytes waited for it, mean
//!   the peer kept taking: it is kept (see [`peer_read`] for what else counts, and what a
//!   window cannot tell). If we were starved past the look, we look at the expiry and decide
//!   half a timeout later, once.
//! - A ping that waits for the end of a frame still coming from the other leg does not count
//!   against a leg that keeps taking that frame, its kernel acknowledging every byte we wrote
//!   to it, nor for [`STALE_EXCUSES`] heartbeat events after the frame stops coming.
//!
//! Layout: [`leg`] holds a leg's state as enums (what may still be read, how far the close
//! toward it has come), [`pump`] one direction's buffer and framing, [`direction`] the I/O of
//! one direction, and [`timers`] every deadline of the session in one table.
//!
//! Timers: each leg has its own heartbeat with its own interval and timeout, so the legs are
//! pinged and timed out independently. All of a session's deadlines (both heartbeats, the close
//! handshake) live in one [`timers::TimerTable`], and one `Sleep` is armed for the earliest.
//! Activity never needs the timer moved: heartbeat deadlines only move later, so a timer that
//! fires early finds nothing due and is re-armed.

mod direction;
mod leg;
mod pool;
mod pump;
mod splice;
mod timers;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::Side;
pub use crate::config::RelayConfig;
use crate::frame::close_code;
use crate::heartbeat::{Action, Heartbeat, HeartbeatConfig};
use crate::metrics::{Metrics, Shard, Tally};
use crate::net::{PeerDelivery, SpliceSocket};
use crate::outcome::{CloseReason, Initiator, Outcome};
use crate::sessions::SessionInfo;
use crate::shutdown::DrainWatcher;
use crate::text_heartbeat::{OwedAnswers, TextHeartbeatConfig, TextKind, TextTimer};
use leg::{CloseFrame, Failure, LegState};
use pump::{Pump, TextRule, Violation};
use timers::{Timer, TimerTable, on_grid, timer_grid};

/// Control bytes queued for one leg beyond which we stop reading its pings: a peer that floods
/// pings while not reading our pongs is throttled instead of growing a queue.
const CTRL_QUEUE_LIMIT: usize = 4 * 1024;
/// Rounds of read/write per wake-up before yielding to other tasks.
const ROUNDS_PER_POLL: usize = 32;
/// How long to wait for a peer to accept our FIN after a finished session.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// One leg's connection as handed over by the handshake.
pub struct Peer<S> {
    /// The upgraded connection.
    pub io: S,
    /// Bytes already read from it past the HTTP handshake.
    pub read_ahead: Bytes,
}

/// What a session reports to and listens for, besides its two connections.
pub struct SessionContext {
    /// Settings, shared by every session of the proxy.
    pub cfg: Arc<RelayConfig>,
    /// The proxy's drain: once it is going away, both legs get close 1001.
    pub drain: DrainWatcher,
    /// Where counters go.
    pub metrics: Arc<Metrics>,
    /// This session's entry in `/connections`.
    pub info: Arc<SessionInfo>,
    /// The two ends negotiated an extension (such as permessage-deflate): RSV bits and
    /// reserved opcodes are then theirs to use and pass through untouched.
    pub extensions: bool,
}

/// Relays frames between `client` and `upstream` until the session ends.
///
/// The session is set up when `run` is called, and its clock starts then; the caller awaits
/// the future at once.
pub fn run<C, U>(
    client: Peer<C>,
    upstream: Peer<U>,
    ctx: SessionContext,
) -> impl Future<Output = Outcome>
where
    C: AsyncRead + AsyncWrite + PeerDelivery + SpliceSocket + Unpin,
    U: AsyncRead + AsyncWrite + PeerDelivery + SpliceSocket + Unpin,
{
    Run {
        session: Session::new(client, upstream, ctx),
        stage: Stage::Relaying,
    }
}

/// The future of [`run`], written out: the session and how far its end has come. The future
/// is most of an idle session's memory. As an `async fn`, it kept its arguments beside the
/// session built from them, and the outcome and the shutdown's state beside the session, for
/// the session's whole life.
struct Run<C, U> {
    session: Session<C, U>,
    stage: Stage,
}

/// How far the end of a session has come.
#[derive(Clone, Copy, Debug)]
enum Stage {
    /// Frames are relayed.
    Relaying,
    /// This leg's write side is being shut down, within its grace.
    ShuttingDown(Side),
    /// The legs still open are shut down, or their grace is over.
    Finished,
}

impl<C, U> Future for Run<C, U>
where
    C: AsyncRead + AsyncWrite + PeerDelivery + SpliceSocket + Unpin,
    U: AsyncRead + AsyncWrite + PeerDelivery + SpliceSocket + Unpin,
{
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let Run { session, stage } = self.get_mut();
        loop {
            *stage = match *stage {
                Stage::Relaying => {
                    std::task::ready!(session.poll(cx));
                    session.shut_down_next(&Side::ALL)
                }
                Stage::ShuttingDown(side) => {
                    std::task::ready!(session.poll_shutdown(side, cx));
                    session.shut_down_next(&Side::ALL[side.index() + 1..])
                }
                Stage::Finished => return Poll::Ready(session.finish()),
            };
        }
    }
}

struct Leg<S> {
    io: Option<S>,
    st: LegState,
}

impl<S: AsyncWrite + Unpin> Leg<S> {
    /// Shuts down its write side; ready at once when it has no connection. An error ends the
    /// attempt as well as success does.
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_shutdown(cx).map(|_| ()),
            None => Poll::Ready(()),
        }
    }
}

/// What a direction reported to the session.
enum Event {
    /// The side's connection ended without a close frame, or failed.
    Lost(Side),
    /// The side broke the protocol.
    Violation(Side, Violation),
}

/// Things one direction needs besides its legs and pump.
struct Shared<'a> {
    cfg: &'a RelayConfig,
    metrics: &'a Metrics,
    info: &'a SessionInfo,
    tally: &'a mut Tally,
    /// Bytes read from each side during this wake-up, published once at its end.
    received: &'a mut [u64; 2],
    outcome: &'a mut Option<Outcome>,
    closing: &'a mut bool,
    text: Option<&'a mut TextSession>,
}

/// What one wake-up counted, published once at its end. It lives on the stack, not in the
/// session: it is empty between wake-ups, and would only make every idle session bigger.
#[derive(Default)]
struct WakeCounts {
    /// Frames read, flushed to this thread's shard of the metrics.
    tally: Tally,
    /// Bytes read from each side, for `/connections`.
    received: [u64; 2],
}

/// What the kernel's view says of a silent peer at its expiry.
enum KernelVerdict {
    /// It read since we looked: alive.
    Read,
    /// Not decided yet: the verdict comes at the look's `verdict_at`.
    Wait,
    /// No reading seen, or no view: dead.
    Silent,
}

/// Heartbeat events in a row at which a ping waiting for the other leg's frame is excused
/// while that frame makes no progress toward the leg. A client uploading over a link whose
/// other direction is queued seconds deep delivers in bursts: 0.4-0.6 s apart in the load
/// test, where events come every 150-300 ms. A frame that stopped coming for good is held
/// against the waiting leg after this many.
const STALE_EXCUSES: u8 = 8;

/// The most bytes one of our pings takes on the wire: a 2-byte header, a masking key toward
/// the upstream, an 8-byte payload.
const MAX_PING_FRAME: u64 = 14;

/// Whether the peer kept taking our bytes between two looks at its kernel, beyond `ours`, the
/// bytes of our own pings sent in between:
/// - its kernel acknowledged bytes that were already on their way or waiting to be sent at the
///   look: a client on a slow link acknowledges our queued bytes as they come through the
///   bottleneck;
/// - its window grew while we had bytes waiting for it: a reader that read its full buffer;
/// - during loss recovery, where the cumulative acknowledgement waits for a retransmission
///   queued behind everything at the bottleneck, it SACKed segments;
/// - or it was given nothing to take: at the expiry nothing of ours is on its way, though
///   bytes (our ping among them) wait unsent in a window of a segment or more. Our own stack
///   holds them (seen in a load test that starved the kernel's packet work of CPU: 50 KB
///   unsent for 150 ms, the window at 700 KB). A frozen peer's window closes, a vanished
///   host leaves bytes unacknowledged, and a stack that cannot send at all (a route gone, a
///   firewall) probes in vain, which rules this out.
///
/// Bytes that arrive after the look prove nothing: a mostly empty buffer takes them, and Linux
/// grows the window it advertises as data arrives (`rcv_ssthresh`), read or not. A frozen peer
/// that data keeps reaching counts as taking it until its buffer is full, as TCP cannot tell
/// it from a live one before: requiring its window to keep its size as well dropped a live
/// client behind a 64 KiB/s link whose reading lagged for a moment, and found a frozen one no
/// sooner (its buffer filled first). One sent nothing but our pings is found on time.
fn peer_read(then: wsbeat_tcpinfo::Delivery, now: wsbeat_tcpinfo::Delivery, ours: u64) -> bool {
    let waiting = then.unacked + u64::from(then.unsent);
    let took = now.acked.saturating_sub(then.acked).min(waiting);
    let read = took > ours;
    let reopened = then.unsent > 0 && now.window > then.window;
    let sacked = u64::from(now.delivered.wrapping_sub(then.delivered));
    let recovering = now.acked == then.acked && sacked * MAX_PING_FRAME > ours;
    let held_here =
        now.unacked == 0 && now.unsent > 0 && now.window >= now.mss.max(1) && now.probes == 0;
    read || reopened || recovering || held_here
}

/// A look at the kernel's view of a silent leg: how far its peer had read when we looked, and
/// when that is compared again. See "Liveness" in the module docs.
#[derive(Clone, Copy, Debug)]
struct KernelLook {
    /// What the kernel said when we looked.
    seen: wsbeat_tcpinfo::Delivery,
    /// The heartbeat's ping count before the look's extra ping: the peer's kernel takes our own
    /// pings whether or not it reads, so they prove nothing.
    pings: u64,
    /// The expiry of the heartbeat probe this look is for.
    expiry: Instant,
    /// When the kernel is asked again for the verdict: the expiry, or later if the look itself
    /// came late (a proxy starved of CPU).
    verdict_at: Instant,
}

/// A session's text heartbeats (see [`crate::text_heartbeat`]).
struct TextSession {
    cfg: Arc<TextHeartbeatConfig>,
    /// When the client is due a keep-alive.
    keepalive: Option<TextTimer>,
    /// When the upstream is due a text ping.
    upstream_ping: Option<TextTimer>,
    /// Upstream answers we are owed (text pings sent or forwarded), so may absorb.
    owed: OwedAnswers,
    /// [`Pump::relayed_end`] of the pumps into the client and into the upstream when last
    /// looked at: a change means a message went toward that leg.
    relayed: [u64; 2],
}

impl TextSession {
    /// Sets up the timers and the pumps' matching, or returns `None` when text heartbeats are
    /// off (then the relay looks at nothing text-related).
    fn new(
        cfg: &Arc<TextHeartbeatConfig>,
        c2u: &mut Pump,
        u2c: &mut Pump,
        now: Instant,
    ) -> Option<Self> {
        if !cfg.is_active() {
            return None;
        }
        c2u.set_text_rule(cfg.client_matcher().map(|matcher| TextRule {
            matcher,
            cut: !cfg.forward_pings,
        }));
        u2c.set_text_rule(cfg.upstream_matcher().map(|matcher| TextRule {
            matcher,
            cut: false,
        }));
        let timer = |p: &Option<crate::text_heartbeat::Periodic>| {
            p.as_ref().map(|p| TextTimer::new(p.interval, now))
        };
        Some(TextSession {
            keepalive: timer(&cfg.client_keepalive),
            upstream_ping: timer(&cfg.upstream_ping),
            cfg: Arc::clone(cfg),
            owed: OwedAnswers::default(),
            relayed: [0; 2],
        })
    }

    /// The timer of the message injected toward `side`.
    fn timer(&mut self, side: Side) -> Option<&mut TextTimer> {
        match side {
            Side::Client => self.keepalive.as_mut(),
            Side::Upstream => self.upstream_ping.as_mut(),
        }
    }

    /// Tells the timers about messages relayed toward each leg since the last look; the clock
    /// is read (through `now`) only when something was.
    fn note_relayed(&mut self, into: [&Pump; 2], now: &mut impl FnMut() -> Instant) {
        let ends = into.map(Pump::relayed_end);
        if ends == self.relayed {
            return;
        }
        let t = now();
        for side in Side::ALL {
            if ends[side.index()] != self.relayed[side.index()]
                && let Some(timer) = self.timer(side)
            {
                timer.on_sent(t);
            }
        }
        self.relayed = ends;
    }
}

struct Session<C, U> {
    client: Leg<C>,
    upstream: Leg<U>,
    c2u: Pump,
    u2c: Pump,
    cfg: Arc<RelayConfig>,
    /// Every deadline of the session.
    timers: TimerTable,
    /// One `Sleep` for the whole table, armed for its earliest deadline.
    timer: Pin<Box<Sleep>>,
    /// The timer was polled since it was last armed, so it will wake this task when due.
    timer_registered: bool,
    /// Legs whose heartbeat said "dead" during this wake-up. The verdict stands only after
    /// what already sits in their sockets has been read: a proxy starved of CPU for a while
    /// must not kill a peer whose pong is waiting in its receive buffer.
    suspects: [bool; 2],
    /// Per leg: its socket has a kernel view of delivery (see [`PeerDelivery`]).
    kernel_view: [bool; 2],
    /// Per leg: what its kernel said when we last looked at a silent peer.
    /// Boxed: it exists only while a leg is silent, and idle sessions stay small.
    kernel: [Option<Box<KernelLook>>; 2],
    drain: DrainWatcher,
    /// Wakes this task when the drain starts; polled once to register, then only when the
    /// drain flag says it is ready.
    drain_wait: Pin<Box<WaitForCancellationFutureOwned>>,
    drain_registered: bool,
    cancelled: bool,
    closing: bool,
    outcome: Option<Outcome>,
    metrics: Arc<Metrics>,
    info: Arc<SessionInfo>,
    /// This thread's shard of the per-frame counters, where each wake-up's tally is flushed.
    shard: Arc<Shard>,
    /// `None` when text heartbeats are off (the default), so boxed: idle sessions stay small.
    text: Option<Box<TextSession>>,
}

impl<C, U> Session<C, U>
where
    C: AsyncRead + AsyncWrite + PeerDelivery + SpliceSocket + Unpin,
    U: AsyncRead + AsyncWrite + PeerDelivery + SpliceSocket + Unpin,
{
    fn new(client: Peer<C>, upstream: Peer<U>, ctx: SessionContext) -> Self {
        let SessionContext {
            cfg,
            drain,
            metrics,
            info,
            extensions,
        } = ctx;
        let now = Instant::now();
        let mut c2u = Pump::new(client.read_ahead, !extensions, cfg.upstream_masking);
        // Upstream frames are never masked, so the masking setting does not apply to them.
        let mut u2c = Pump::new(upstream.read_ahead, !extensions, cfg.upstream_masking);
        let text = TextSession::new(&cfg.text, &mut c2u, &mut u2c, now).map(Box::new);
        if text.is_some() && extensions {
            tracing::debug!(
                "extension negotiated: compressed text pings cannot be recognised and are relayed"
            );
        }
        let kernel_view = [client.io.delivery(), upstream.io.delivery()].map(|d| d.is_some());
        let client = Leg {
            io: Some(client.io),
            st: LegState::new(Side::Client, &cfg.client, now),
        };
        let upstream = Leg {
            io: Some(upstream.io),
            st: LegState::new(Side::Upstream, &cfg.upstream, now),
        };
        let mut timers = TimerTable::default();
        let grid = timer_grid(&cfg);
        for leg in [&client.st, &upstream.st] {
            let at = on_grid(leg.hb.poll_timeout(cfg.heartbeat(leg.side())), grid);
            timers.set(Timer::heartbeat(leg.side()), at);
        }
        if let Some(text) = &text {
            for (side, timer) in [
                (Side::Client, &text.keepalive),
                (Side::Upstream, &text.upstream_ping),
            ] {
                if let Some(t) = timer {
                    timers.set(Timer::text(side), on_grid(t.poll_timeout(), grid));
                }
            }
        }
        let first = timers.next().unwrap_or(now);
        Session {
            c2u,
            u2c,
            client,
            upstream,
            cfg,
            timers,
            timer: Box::pin(tokio::time::sleep_until(first)),
            timer_registered: false,
            suspects: [false; 2],
            kernel_view,
            kernel: [None, None],
            drain_wait: Box::pin(drain.going_away_owned()),
            drain,
            drain_registered: false,
            cancelled: false,
            closing: false,
            outcome: None,
            shard: metrics.shard(),
            metrics,
            info,
            text,
        }
    }

    /// Drives everything that is ready; completes when both legs are done, or the close
    /// deadline passed.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_drain(cx);
        let close_expired = self.poll_timers(cx);
        for leg in [&mut self.client.st, &mut self.upstream.st] {
            leg.read_parked = false;
            leg.write_parked = false;
        }
        let mut counts = WakeCounts::default();
        self.relay_ready(cx, &mut counts);
        if self.suspects != [false; 2] {
            self.judge_suspects(cx, &mut counts);
        }
        self.publish(&mut counts);
        if self.client.st.done() && self.upstream.st.done() {
            return Poll::Ready(());
        }
        if close_expired || (self.closing && self.start_close_deadline(cx)) {
            tracing::debug!("close handshake did not finish in time; dropping both legs");
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Moves frames both ways until nothing moves, or for a bounded number of rounds. Inlined:
    /// this is every wake-up's work, and a call of its own showed in the per-message count.
    #[inline(always)]
    fn relay_ready(&mut self, cx: &mut Context<'_>, counts: &mut WakeCounts) {
        let mut rounds = 0;
        while self.poll_directions(cx, counts) {
            rounds += 1;
            if rounds == ROUNDS_PER_POLL {
                cx.waker().wake_by_ref();
                break;
            }
        }
    }

    /// Gives the verdict on the suspected legs, now that their sockets have been read; when one
    /// was dropped, tells the survivor at once. Rare, so out of the wake-up's line.
    #[cold]
    #[inline(never)]
    fn judge_suspects(&mut self, cx: &mut Context<'_>, counts: &mut WakeCounts) {
        if self.confirm_suspects(cx) {
            self.relay_ready(cx, counts);
        }
    }

    /// Asks the suspected legs' heartbeats again, now that their sockets have been read: a
    /// leg that showed life is kept, the others are dropped. True if one was dropped.
    fn confirm_suspects(&mut self, cx: &mut Context<'_>) -> bool {
        let now = Instant::now();
        let mut dropped = false;
        for side in Side::ALL {
            if std::mem::take(&mut self.suspects[side.index()]) {
                dropped |= self.on_heartbeat_due(side, now, true);
            }
        }
        if let Some(next) = self.timers.next() {
            self.timer.as_mut().reset(next);
            self.timer_registered = true;
            if self.timer.as_mut().poll(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
        }
        dropped
    }

    /// Starts the close handshake when the drain begins.
    fn poll_drain(&mut self, cx: &mut Context<'_>) {
        if !self.cancelled && (!self.drain_registered || self.drain.is_going_away()) {
            self.drain_registered = true;
            if self.drain_wait.as_mut().poll(cx).is_ready() {
                self.cancelled = true;
                self.on_shutdown();
            }
        }
    }

    /// Hands this wake-up's frame counts and received bytes to the metrics and `/connections`.
    fn publish(&mut self, counts: &mut WakeCounts) {
        if counts.tally.is_dirty() {
            self.shard.flush(&mut counts.tally);
        }
        // At most one clock reading per wake-up, shared by all that need one.
        let mut clock = None;
        let mut now = || *clock.get_or_insert_with(Instant::now);
        if counts.received != [0; 2] {
            let now = now();
            for side in Side::ALL {
                let bytes = std::mem::take(&mut counts.received[side.index()]);
                if bytes > 0 {
                    self.info.on_received(side, bytes, now);
                }
            }
        }
        if let Some(text) = &mut self.text {
            text.note_relayed([&self.u2c, &self.c2u], &mut now);
        }
    }

    fn finish(&mut self) -> Outcome {
        self.outcome.unwrap_or(Outcome {
            initiator: Initiator::Proxy,
            reason: CloseReason::Other,
            code: None,
            detail: "session ended",
        })
    }

    /// One round of both directions; true if anything moved. Inlined into
    /// [`Session::relay_ready`] for the same reason.
    #[inline(always)]
    fn poll_directions(&mut self, cx: &mut Context<'_>, counts: &mut WakeCounts) -> bool {
        let mut shared = Shared {
            cfg: &self.cfg,
            metrics: &self.metrics,
            info: &self.info,
            tally: &mut counts.tally,
            received: &mut counts.received,
            outcome: &mut self.outcome,
            closing: &mut self.closing,
            text: self.text.as_deref_mut(),
        };
        let a = direction::direction(
            &mut self.client,
            &mut self.upstream,
            &mut self.c2u,
            &mut shared,
            cx,
        );
        let b = direction::direction(
            &mut self.upstream,
            &mut self.client,
            &mut self.u2c,
            &mut shared,
            cx,
        );
        let mut progress = false;
        for result in [a, b] {
            match result {
                Ok(p) => progress |= p,
                Err(event) => {
                    self.on_event(event);
                    progress = true;
                }
            }
        }
        progress
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Lost(side) => {
                self.record(side.into(), CloseReason::IoError, None, "connection lost");
                self.kill(side, Failure::Lost);
            }
            Event::Violation(side, v) => self.on_violation(side, v),
        }
    }

    fn record(
        &mut self,
        initiator: Initiator,
        reason: CloseReason,
        code: Option<u16>,
        detail: &'static str,
    ) {
        self.outcome.get_or_insert(Outcome {
            initiator,
            reason,
            code,
            detail,
        });
        self.closing = true;
    }

    /// Drops `side` at once and tells the other side with a close frame.
    fn kill(&mut self, side: Side, failure: Failure) {
        match side {
            Side::Client => self.client.io = None,
            Side::Upstream => self.upstream.io = None,
        }
        let (dead, into_dead, from_dead, other) = self.parts(side);
        dead.drop_link();
        into_dead.drop_output();
        from_dead.source_gone();
        other.owe_close(CloseFrame::for_survivor(side, failure));
    }

    fn on_violation(&mut self, side: Side, v: Violation) {
        let (reason, code, detail) = match v {
            Violation::TooBig => (CloseReason::TooBig, close_code::TOO_BIG, "frame too big"),
            Violation::Protocol(d) => (CloseReason::ProtocolError, close_code::PROTOCOL_ERROR, d),
            Violation::InvalidPayload(d) => {
                (CloseReason::ProtocolError, close_code::INVALID_PAYLOAD, d)
            }
        };
        tracing::info!(
            side = side.as_str(),
            detail,
            "protocol violation; closing the session"
        );
        self.record(Initiator::Proxy, reason, Some(code), detail);
        let (bad, into_bad, from_bad, other) = self.parts(side);
        bad.stop_reading();
        from_bad.source_gone();
        into_bad.drain();
        bad.owe_close(CloseFrame {
            code,
            reason: detail,
        });
        other.owe_close(CloseFrame::for_survivor(side, Failure::ProtocolError));
    }

    fn on_shutdown(&mut self) {
        let close = CloseFrame {
            code: close_code::GOING_AWAY,
            reason: "proxy shutting down",
        };
        self.record(
            Initiator::Proxy,
            CloseReason::Shutdown,
            Some(close.code),
            close.reason,
        );
        self.c2u.drain();
        self.u2c.drain();
        self.client.st.owe_close(close);
        self.upstream.st.owe_close(close);
    }

    /// The state of `side`, the pump into it, the pump out of it, and the other leg's state.
    fn parts(&mut self, side: Side) -> (&mut LegState, &mut Pump, &mut Pump, &mut LegState) {
        match side {
            Side::Client => (
                &mut self.client.st,
                &mut self.u2c,
                &mut self.c2u,
                &mut self.upstream.st,
            ),
            Side::Upstream => (
                &mut self.upstream.st,
                &mut self.c2u,
                &mut self.u2c,
                &mut self.client.st,
            ),
        }
    }

    /// Acts on every deadline that is due: sends pings, declares silent peers dead. Returns
    /// whether the close deadline passed.
    ///
    /// The timer is only polled when it fired or was re-armed: polling it on every wake-up
    /// would register the waker again for each batch of frames.
    fn poll_timers(&mut self, cx: &mut Context<'_>) -> bool {
        if self.timer_registered && !self.timer.is_elapsed() {
            return false;
        }
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                self.timer_registered = true;
                return false;
            }
            let now = Instant::now();
            if self.timers.is_expired(Timer::Close, now) {
                return true;
            }
            for side in Side::ALL {
                if self.timers.is_expired(Timer::heartbeat(side), now) {
                    self.on_heartbeat_due(side, now, false);
                }
                if self.timers.is_expired(Timer::text(side), now) {
                    self.on_text_due(side, now);
                }
            }
            if self.closing {
                // A peer timed out: the close deadline takes over from the heartbeats.
                for side in Side::ALL {
                    self.timers.stop(Timer::heartbeat(side));
                    self.timers.stop(Timer::text(side));
                }
            }
            let Some(next) = self.timers.next() else {
                // Nothing to wait for until the close deadline is set.
                return false;
            };
            self.timer.as_mut().reset(next);
        }
    }

    /// Sets the close deadline once the session starts closing, in place of the heartbeats.
    /// Returns whether it has already passed.
    fn start_close_deadline(&mut self, cx: &mut Context<'_>) -> bool {
        if self.timers.get(Timer::Close).is_some() {
            return false;
        }
        for side in Side::ALL {
            self.timers.stop(Timer::heartbeat(side));
            self.timers.stop(Timer::text(side));
        }
        let at = Instant::now() + self.cfg.close_timeout;
        self.timers.set(Timer::Close, at);
        self.timer.as_mut().reset(at);
        self.timer_registered = true;
        self.timer.as_mut().poll(cx).is_ready()
    }

    /// Lets `side`'s heartbeat act at `now`: sends a ping, looks at the kernel's view of a
    /// silent peer, or declares the peer dead. A first verdict of death only makes the leg a
    /// suspect; `confirmed` is the second asking, after its socket was read. Returns whether
    /// the leg was dropped.
    fn on_heartbeat_due(&mut self, side: Side, now: Instant, confirmed: bool) -> bool {
        let timer = Timer::heartbeat(side);
        let (st, to_pump) = match side {
            Side::Client => (&self.client.st, &self.u2c),
            Side::Upstream => (&self.upstream.st, &self.c2u),
        };
        let out = to_pump.delivered_out() as u32;
        // The kernel is asked (a system call) only in that rare case.
        let not_its_doing = st.hb.ping_waits()
            && to_pump.awaits_source()
            && (out != st.excused_at || st.stale_excuses < STALE_EXCUSES)
            && self
                .delivery(side)
                .is_some_and(|d| d.unacked == 0 && d.unsent == 0);
        let (leg, from_pump) = match side {
            Side::Client => (&mut self.client.st, &self.c2u),
            Side::Upstream => (&mut self.upstream.st, &self.u2c),
        };
        if leg.is_dropped() {
            self.timers.stop(timer);
            return false;
        }
        if from_pump.is_stalled() {
            // We stopped reading this leg because its bytes cannot be delivered; they are
            // proof of life we have not looked at yet.
            leg.hb.on_activity();
        }
        if not_its_doing {
            // Our ping waits for the end of a frame from the other leg that has not all come
            // yet (a client uploading over a slow link), and this leg keeps taking it, its
            // kernel acknowledging every byte: the wait is not its doing. Its timeout starts
            // when the ping goes out. A vanished host leaves bytes unacknowledged; a frozen
            // peer, once its buffer is full, bytes unsent; and a frame that stops coming is
            // held against the leg after `STALE_EXCUSES` (it takes no byte any more).
            if out == leg.excused_at {
                leg.stale_excuses += 1;
            } else {
                (leg.excused_at, leg.stale_excuses) = (out, 0);
            }
            leg.hb.on_activity();
        }
        let action = leg.hb.handle_timeout(self.cfg.heartbeat(side), now);
        match action {
            Some(Action::SendPing(payload)) => self.send_ping(side, &payload),
            Some(Action::Expire) => {
                self.timers.stop(timer);
                if !confirmed {
                    self.suspects[side.index()] = true;
                    return false;
                }
                match self.kernel_verdict(side, now) {
                    KernelVerdict::Read => self.leg_mut(side).hb.on_activity(),
                    KernelVerdict::Wait => {}
                    KernelVerdict::Silent => {
                        self.on_peer_timeout(side);
                        return true;
                    }
                }
            }
            None => {}
        }
        self.look_at_kernel(side, now);
        self.arm_heartbeat(side, now);
        false
    }

    /// `side`'s heartbeat and its settings.
    fn heartbeat(&self, side: Side) -> (&Heartbeat, &HeartbeatConfig) {
        let leg = match side {
            Side::Client => &self.client.st,
            Side::Upstream => &self.upstream.st,
        };
        (&leg.hb, self.cfg.heartbeat(side))
    }

    /// When to look at the kernel's view of silent `side`, and the expiry that look is for.
    fn kernel_look(&self, side: Side) -> Option<(Instant, Instant)> {
        let (hb, cfg) = self.heartbeat(side);
        hb.kernel_look(cfg)
    }

    fn leg_mut(&mut self, side: Side) -> &mut LegState {
        match side {
            Side::Client => &mut self.client.st,
            Side::Upstream => &mut self.upstream.st,
        }
    }

    /// The kernel's view of `side`'s delivery, while it has a socket.
    fn delivery(&self, side: Side) -> Option<wsbeat_tcpinfo::Delivery> {
        if !self.kernel_view[side.index()] {
            return None;
        }
        match side {
            Side::Client => self.client.io.as_ref()?.delivery(),
            Side::Upstream => self.upstream.io.as_ref()?.delivery(),
        }
    }

    /// Queues one of our pings for `side` and counts it.
    fn send_ping(&mut self, side: Side, payload: &[u8]) {
        self.leg_mut(side).queue_ping(payload);
        self.metrics.pings_sent[side.index()].inc();
        self.info.on_ping(side);
    }

    /// Half a timeout before a silent peer expires, notes the kernel's view of it and sends an
    /// extra ping: the peer's kernel acknowledges it with its window as it is then, so that at
    /// the expiry the view is up to date (see [`peer_read`]).
    fn look_at_kernel(&mut self, side: Side, now: Instant) {
        let Some((look_at, expiry)) = self.kernel_look(side) else {
            return;
        };
        let looked = self.kernel[side.index()]
            .as_ref()
            .is_some_and(|k| k.expiry == expiry);
        if looked || now < look_at || now >= expiry {
            return;
        }
        let Some(d) = self.delivery(side) else {
            return;
        };
        // The reference is the view when the ping left behind relayed bytes, if it was noted:
        // reading shows over the whole timeout, not only its second half.
        let leg = self.leg_mut(side);
        let since = leg.hb.probe_since();
        let seen = match leg.view_at_ping.take() {
            Some(v) if Some(v.0) == since => v.1,
            _ => d,
        };
        self.start_look(side, now, seen, expiry, expiry);
    }

    /// Keeps the look at `side`'s kernel (what it showed, for which expiry, when to judge) with
    /// the ping count, and sends the extra ping whose acknowledgement brings the view up to
    /// date.
    fn start_look(
        &mut self,
        side: Side,
        now: Instant,
        seen: wsbeat_tcpinfo::Delivery,
        expiry: Instant,
        verdict_at: Instant,
    ) {
        let hb = &mut self.leg_mut(side).hb;
        let pings = hb.pings();
        let payload = hb.new_ping(now);
        let look = KernelLook {
            seen,
            pings,
            expiry,
            verdict_at,
        };
        self.kernel[side.index()] = Some(Box::new(look));
        self.send_ping(side, &payload);
    }

    /// At a silent peer's expiry: whether its kernel shows it read since we looked. Without a
    /// look for this expiry (the proxy was starved past the look, or no view), looks now and
    /// decides half a timeout later, so a CPU stall of ours is not taken for a dead peer.
    fn kernel_verdict(&mut self, side: Side, now: Instant) -> KernelVerdict {
        let Some((look_at, expiry)) = self.kernel_look(side) else {
            return KernelVerdict::Silent;
        };
        let Some(d) = self.delivery(side) else {
            return KernelVerdict::Silent;
        };
        match self.kernel[side.index()].as_deref().copied() {
            Some(k) if k.expiry == expiry && now >= k.verdict_at => {
                self.kernel[side.index()] = None;
                tracing::debug!(
                    side = side.as_str(),
                    client = %self.info.client,
                    window_then = k.seen.window,
                    window_now = d.window,
                    unsent_then = k.seen.unsent,
                    acked = d.acked.saturating_sub(k.seen.acked),
                    unacked_then = k.seen.unacked,
                    unacked_now = d.unacked,
                    unsent_now = d.unsent,
                    delivered = d.delivered.wrapping_sub(k.seen.delivered),
                    "silent peer: what its kernel showed between the look and the expiry"
                );
                // Ours since the look, and the probe's own ping if the view predates it.
                let pings = self.heartbeat(side).0.pings().wrapping_sub(k.pings) & 0xFFFF_FFFF_FFFF;
                let ours = (pings + 1) * MAX_PING_FRAME;
                if peer_read(k.seen, d, ours) {
                    KernelVerdict::Read
                } else {
                    KernelVerdict::Silent
                }
            }
            Some(k) if k.expiry == expiry => KernelVerdict::Wait,
            // A late look is granted once per expiry; past a whole extra timeout the peer is
            // dead whatever happened to us.
            _ if now >= expiry + 2 * (expiry - look_at) => {
                tracing::debug!(
                    side = side.as_str(),
                    client = %self.info.client,
                    late_ms = (now - expiry).as_millis() as u64,
                    "silent peer: no look at its kernel in time; the proxy was starved"
                );
                KernelVerdict::Silent
            }
            _ => {
                self.start_look(side, now, d, expiry, now + (expiry - look_at));
                KernelVerdict::Wait
            }
        }
    }

    /// Re-arms `side`'s heartbeat timer for its next event: a ping, the look at the kernel,
    /// the expiry, or the verdict of a late look.
    fn arm_heartbeat(&mut self, side: Side, now: Instant) {
        let kernel = self.kernel[side.index()].as_deref().copied();
        let view = self.kernel_view[side.index()];
        let (hb, cfg) = self.heartbeat(side);
        let mut at = hb.poll_timeout(cfg);
        if let Some((look_at, expiry)) = hb.kernel_look(cfg) {
            match kernel {
                Some(k) if k.expiry == expiry => {
                    // The expiry is past or the look is done: wake for the verdict.
                    at = hb
                        .next_ping(cfg)
                        .map_or(k.verdict_at, |p| p.min(k.verdict_at));
                }
                _ if view && look_at > now => at = at.min(look_at),
                _ => {}
            }
        }
        let at = on_grid(at, timer_grid(&self.cfg));
        self.timers.set(Timer::heartbeat(side), at);
    }

    /// Sends `side` its injected text message (keep-alive or text ping) if it has been quiet
    /// for the interval; it waits in the leg for a message boundary, and one waiting is
    /// enough. Re-arms the timer for the new deadline.
    fn on_text_due(&mut self, side: Side, now: Instant) {
        let timer = Timer::text(side);
        let leg = match side {
            Side::Client => &mut self.client.st,
            Side::Upstream => &mut self.upstream.st,
        };
        let Some(text) = self.text.as_mut().filter(|_| !leg.is_dropped()) else {
            self.timers.stop(timer);
            return;
        };
        let Some(t) = text.timer(side) else {
            self.timers.stop(timer);
            return;
        };
        let due = t.handle_timeout(now);
        let next = t.poll_timeout();
        let cfg = &text.cfg;
        let message = match side {
            Side::Client => cfg.client_keepalive.as_ref(),
            Side::Upstream => cfg.upstream_ping.as_ref(),
        };
        if let Some(message) = message.filter(|_| due && !leg.text_waiting()) {
            leg.queue_text(&message.text);
            if side == Side::Upstream && cfg.upstream_pong.is_some() {
                text.owed.on_ping_sent();
            }
            self.metrics.text_heartbeat(side, TextKind::Injected);
            self.info.on_text_heartbeat(side, TextKind::Injected, now);
        }
        self.timers.set(timer, on_grid(next, timer_grid(&self.cfg)));
    }

    fn on_peer_timeout(&mut self, side: Side) {
        self.metrics.peer_timeouts[side.index()].inc();
        tracing::info!(
            side = side.as_str(),
            "peer stayed silent past its pong timeout"
        );
        let close = CloseFrame::for_survivor(side, Failure::TimedOut);
        self.record(Initiator::Proxy, CloseReason::Timeout, None, close.reason);
        self.kill(side, Failure::TimedOut);
    }

    /// Starts shutting down the write side of the first of `sides` whose leg is still open,
    /// giving it [`SHUTDOWN_GRACE`]; the legs are shut down one after the other, and dropped
    /// with the session. The session's own timer keeps the grace: a `tokio::time::timeout`
    /// would carry a second `Sleep` in every session's future for its whole life, idle or not.
    fn shut_down_next(&mut self, sides: &[Side]) -> Stage {
        let open = |side: &&Side| match side {
            Side::Client => self.client.io.is_some(),
            Side::Upstream => self.upstream.io.is_some(),
        };
        let Some(&side) = sides.iter().find(open) else {
            return Stage::Finished;
        };
        self.timer.as_mut().reset(Instant::now() + SHUTDOWN_GRACE);
        Stage::ShuttingDown(side)
    }

    /// Ready when `side`'s write side is shut down, failed to, or its grace is over.
    fn poll_shutdown(&mut self, side: Side, cx: &mut Context<'_>) -> Poll<()> {
        let shut = match side {
            Side::Client => self.client.poll_shutdown(cx),
            Side::Upstream => self.upstream.poll_shutdown(cx),
        };
        if shut.is_ready() {
            return Poll::Ready(());
        }
        self.timer.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests;
