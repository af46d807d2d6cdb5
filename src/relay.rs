//! The session: the one place that owns both legs of an upgraded connection.
//!
//! Owns: relaying frames both ways ([`pump`]), answering pings, driving each leg's
//! [`Heartbeat`], close handling and the session's [`Outcome`]. Does not own: the handshake, the
//! sockets' options, or counting connections (the server does those).
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
//! When a leg dies (pong timeout, or TCP ends without a close frame) it is dropped at once and the
//! survivor gets a close frame: 1001 toward the upstream, 1011 toward the client.
//!
//! Timers: each leg has its own [`Heartbeat`] with its own interval and timeout, so the legs are
//! pinged and timed out independently; one `Sleep` per session is armed for the earlier of the
//! two deadlines. One timer-wheel entry instead of two saved memory and CPU per idle session
//! (docs/PERFORMANCE.md), and activity never needs the timer moved (deadlines only move later).
//! The timer is armed at the next multiple of a grid shared by all sessions (a sixteenth of the
//! shortest interval or timeout, at most 250 ms), so heartbeats due close together fire in one
//! tick: this thread wakes once to send a batch of pings, and each peer wakes once to answer
//! them, instead of once per ping. Each wake-up of a sleeping thread costs an inter-processor
//! interrupt. With 9,000 idle
//! sessions the batches cut epoll wake-ups 5× and CPU per ping from 9.6 to 8.7 µs
//! (docs/PERFORMANCE.md). A heartbeat is at most one grid step late.

mod direction;
mod pool;
pub mod pump;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::Side;
use crate::frame::{self, close_code};
use crate::heartbeat::{Action, Heartbeat, HeartbeatConfig};
use crate::metrics::{Metrics, Shard, Tally};
use crate::outcome::{CloseReason, Initiator, Outcome};
use crate::sessions::SessionInfo;
use crate::shutdown::Drain;
use pump::{Pump, Violation};

/// Control bytes queued for one leg beyond which we stop reading its pings: a peer that floods
/// pings while not reading our pongs is throttled instead of growing a queue.
const CTRL_QUEUE_LIMIT: usize = 4 * 1024;
/// Rounds of read/write per wake-up before yielding to other tasks.
const ROUNDS_PER_POLL: usize = 32;
/// How long to wait for a peer to accept our FIN after a finished session.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// Heartbeat deadlines are rounded up to a grid of this fraction of the shortest period...
const TIMER_GRID_DIVISOR: u32 = 16;
/// ...but never coarser than this.
const TIMER_GRID_MAX: Duration = Duration::from_millis(250);

/// Settings of a session.
#[derive(Clone, Copy, Debug)]
pub struct RelayConfig {
    /// Heartbeat of the client leg.
    pub client: HeartbeatConfig,
    /// Heartbeat of the upstream leg.
    pub upstream: HeartbeatConfig,
    /// How long a closing session waits for the close handshake before dropping both legs.
    pub close_timeout: Duration,
    /// Largest data frame payload accepted from either side.
    pub max_frame_size: u64,
}

/// One leg's connection as handed over by the handshake.
pub struct Peer<S> {
    /// The upgraded connection.
    pub io: S,
    /// Bytes already read from it past the HTTP handshake.
    pub read_ahead: Bytes,
}

/// What a session reports to and listens for, besides its two connections.
pub struct SessionContext {
    /// Settings.
    pub cfg: RelayConfig,
    /// Started when the proxy shuts down: both legs then get close 1001.
    pub drain: Arc<Drain>,
    /// Where counters go.
    pub metrics: Arc<Metrics>,
    /// This session's entry in `/connections`.
    pub info: Arc<SessionInfo>,
    /// The two ends negotiated an extension (such as permessage-deflate): RSV bits and
    /// reserved opcodes are then theirs to use and pass through untouched.
    pub extensions: bool,
}

/// Relays frames between `client` and `upstream` until the session ends.
pub async fn run<C, U>(client: Peer<C>, upstream: Peer<U>, ctx: SessionContext) -> Outcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut session = Session::new(client, upstream, ctx);
    let outcome = std::future::poll_fn(|cx| session.poll(cx)).await;
    session.shutdown().await;
    outcome
}

/// Per-leg state that does not depend on the I/O type.
struct LegState {
    side: Side,
    hb: Heartbeat,
    /// Encoded pings and pongs waiting to be written to this leg.
    ctrl: Vec<u8>,
    ctrl_pos: usize,
    /// Our own close frame, written once the stream into this leg is drained.
    close_out: Option<(u16, &'static str)>,
    /// Our close frame is in `ctrl`; when `ctrl` empties, the leg has been sent a close.
    close_queued: bool,
    got_close: bool,
    sent_close: bool,
    /// Nothing more will be read (EOF after its close, or we stopped listening).
    read_done: bool,
    /// Dropped: no more I/O at all.
    dead: bool,
    /// A read (write) returned `Pending` during this wake-up, so the waker is registered: do not
    /// poll that side again until the next wake-up (each pending poll costs a registration).
    read_parked: bool,
    write_parked: bool,
}

impl LegState {
    fn new(side: Side, cfg: HeartbeatConfig, now: Instant) -> Self {
        LegState {
            side,
            hb: Heartbeat::new(cfg, now),
            ctrl: Vec::new(),
            ctrl_pos: 0,
            close_out: None,
            close_queued: false,
            got_close: false,
            sent_close: false,
            read_done: false,
            dead: false,
            read_parked: false,
            write_parked: false,
        }
    }

    /// Frames to this leg are masked when it is the upstream (we are its client).
    fn mask(&self) -> Option<[u8; 4]> {
        (self.side == Side::Upstream).then(frame::random_mask)
    }

    fn queue_control(&mut self, opcode: u8, payload: &[u8]) {
        if self.close_out.is_some() || self.close_queued || self.sent_close || self.dead {
            return;
        }
        let mask = self.mask();
        frame::encode_frame(&mut self.ctrl, true, opcode, payload, mask);
    }

    fn pending_ctrl(&self) -> &[u8] {
        &self.ctrl[self.ctrl_pos..]
    }

    fn ctrl_written(&mut self, n: usize) {
        self.ctrl_pos += n;
        if self.ctrl_pos == self.ctrl.len() {
            self.ctrl.clear();
            self.ctrl_pos = 0;
            if self.close_queued {
                self.sent_close = true;
            }
            if self.ctrl.capacity() > 2 * frame::MAX_CONTROL_FRAME {
                self.ctrl = Vec::new();
            }
        }
    }

    fn done(&self) -> bool {
        self.dead || (self.sent_close && (self.got_close || self.read_done))
    }
}

struct Leg<S> {
    io: Option<S>,
    st: LegState,
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
}

struct Session<C, U> {
    client: Leg<C>,
    upstream: Leg<U>,
    c2u: Pump,
    u2c: Pump,
    cfg: RelayConfig,
    /// One timer for both legs, armed for the earlier of their heartbeat deadlines.
    timer: Pin<Box<Sleep>>,
    /// The timer was polled since it was last armed, so it will wake this task when due.
    timer_registered: bool,
    drain: Arc<Drain>,
    /// Wakes this task when the drain starts; polled once to register, then only when the
    /// drain flag says it is ready.
    drain_wait: Pin<Box<WaitForCancellationFutureOwned>>,
    drain_registered: bool,
    cancelled: bool,
    closing: bool,
    close_deadline: Option<Pin<Box<Sleep>>>,
    outcome: Option<Outcome>,
    metrics: Arc<Metrics>,
    info: Arc<SessionInfo>,
    tally: Tally,
    /// This thread's shard of the per-frame counters, where `tally` is flushed.
    shard: Arc<Shard>,
    received: [u64; 2],
}

impl<C, U> Session<C, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
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
        let mut c2u = Pump::new(Side::Client, client.read_ahead);
        let mut u2c = Pump::new(Side::Upstream, upstream.read_ahead);
        c2u.strict = !extensions;
        u2c.strict = !extensions;
        Session {
            client: Leg {
                io: Some(client.io),
                st: LegState::new(Side::Client, cfg.client, now),
            },
            upstream: Leg {
                io: Some(upstream.io),
                st: LegState::new(Side::Upstream, cfg.upstream, now),
            },
            c2u,
            u2c,
            cfg,
            timer: Box::pin(tokio::time::sleep_until(now)),
            timer_registered: false,
            drain_wait: Box::pin(drain.token().clone().cancelled_owned()),
            drain,
            drain_registered: false,
            cancelled: false,
            closing: false,
            close_deadline: None,
            outcome: None,
            shard: metrics.shard(),
            metrics,
            info,
            tally: Tally::default(),
            received: [0; 2],
        }
    }

    /// Drives everything that is ready; completes when both legs are done.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Outcome> {
        if !self.cancelled && (!self.drain_registered || self.drain.is_started()) {
            self.drain_registered = true;
            if self.drain_wait.as_mut().poll(cx).is_ready() {
                self.cancelled = true;
                self.on_shutdown();
            }
        }
        self.poll_heartbeats(cx);
        for leg in [&mut self.client.st, &mut self.upstream.st] {
            leg.read_parked = false;
            leg.write_parked = false;
        }
        let mut rounds = 0;
        while self.poll_directions(cx) {
            rounds += 1;
            if rounds == ROUNDS_PER_POLL {
                cx.waker().wake_by_ref();
                break;
            }
        }
        if self.tally.is_dirty() {
            self.shard.flush(&mut self.tally);
        }
        if self.received != [0; 2] {
            let now = Instant::now();
            for side in Side::ALL {
                let bytes = std::mem::take(&mut self.received[side.index()]);
                if bytes > 0 {
                    self.info.on_received(side, bytes, now);
                }
            }
        }
        if self.client.st.done() && self.upstream.st.done() {
            return Poll::Ready(self.finish());
        }
        if self.closing {
            let deadline = self
                .close_deadline
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(self.cfg.close_timeout)));
            if deadline.as_mut().poll(cx).is_ready() {
                tracing::debug!("close handshake did not finish in time; dropping both legs");
                return Poll::Ready(self.finish());
            }
        }
        Poll::Pending
    }

    fn finish(&mut self) -> Outcome {
        self.outcome.unwrap_or(Outcome {
            initiator: Initiator::Proxy,
            reason: CloseReason::Other,
            code: None,
            detail: "session ended",
        })
    }

    /// One round of both directions; true if anything moved.
    fn poll_directions(&mut self, cx: &mut Context<'_>) -> bool {
        let mut shared = Shared {
            cfg: &self.cfg,
            metrics: &self.metrics,
            info: &self.info,
            tally: &mut self.tally,
            received: &mut self.received,
            outcome: &mut self.outcome,
            closing: &mut self.closing,
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
                self.kill(side, lost_reason(side));
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
    fn kill(&mut self, side: Side, why: (u16, &'static str)) {
        match side {
            Side::Client => self.client.io = None,
            Side::Upstream => self.upstream.io = None,
        }
        let (dead, into_dead, from_dead, other) = self.parts(side);
        dead.dead = true;
        into_dead.drop_output();
        from_dead.source_gone();
        notify(other, why);
    }

    fn on_violation(&mut self, side: Side, v: Violation) {
        let (reason, code, detail) = match v {
            Violation::TooBig => (CloseReason::TooBig, close_code::TOO_BIG, "frame too big"),
            Violation::Protocol(d) => (CloseReason::ProtocolError, close_code::PROTOCOL_ERROR, d),
        };
        tracing::info!(
            side = side.as_str(),
            detail,
            "protocol violation; closing the session"
        );
        self.record(Initiator::Proxy, reason, Some(code), detail);
        let other_why = match side {
            Side::Client => (close_code::GOING_AWAY, "client protocol error"),
            Side::Upstream => (close_code::INTERNAL_ERROR, "upstream protocol error"),
        };
        let (bad, into_bad, from_bad, other) = self.parts(side);
        bad.read_done = true;
        from_bad.source_gone();
        into_bad.drain();
        notify(bad, (code, detail));
        notify(other, other_why);
    }

    fn on_shutdown(&mut self) {
        let why = (close_code::GOING_AWAY, "proxy shutting down");
        self.record(Initiator::Proxy, CloseReason::Shutdown, Some(why.0), why.1);
        self.c2u.drain();
        self.u2c.drain();
        notify(&mut self.client.st, why);
        notify(&mut self.upstream.st, why);
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

    /// Fires due heartbeats: sends pings, declares silent peers dead.
    ///
    /// The timer is only polled when it fired or was re-armed: polling it on every wake-up
    /// would register the waker again for each batch of frames.
    fn poll_heartbeats(&mut self, cx: &mut Context<'_>) {
        if self.timer_registered && !self.timer.is_elapsed() {
            return;
        }
        while !self.closing {
            if self.timer.as_mut().poll(cx).is_pending() {
                self.timer_registered = true;
                return;
            }
            let now = Instant::now();
            for side in Side::ALL {
                if self.on_heartbeat_due(side, now) {
                    self.on_peer_timeout(side);
                }
            }
            let next = [&self.client.st, &self.upstream.st]
                .iter()
                .filter(|leg| !leg.dead)
                .map(|leg| leg.hb.poll_timeout())
                .min()
                .unwrap_or(now);
            self.timer
                .as_mut()
                .reset(on_grid(next, timer_grid(&self.cfg)));
        }
    }

    /// Lets `side`'s heartbeat act at `now`; true if the peer expired.
    fn on_heartbeat_due(&mut self, side: Side, now: Instant) -> bool {
        let (leg, from_pump) = match side {
            Side::Client => (&mut self.client.st, &self.c2u),
            Side::Upstream => (&mut self.upstream.st, &self.u2c),
        };
        if leg.dead {
            return false;
        }
        if from_pump.stalled {
            // We stopped reading this leg because its bytes cannot be delivered; they are
            // proof of life we have not looked at yet.
            leg.hb.on_activity();
        }
        match leg.hb.handle_timeout(now) {
            Some(Action::SendPing(payload)) => {
                leg.queue_control(frame::OP_PING, &payload);
                self.metrics.pings_sent[side.index()].inc();
                self.info.on_ping(side);
                false
            }
            Some(Action::Expire) => true,
            None => false,
        }
    }

    fn on_peer_timeout(&mut self, side: Side) {
        self.metrics.peer_timeouts[side.index()].inc();
        tracing::info!(
            side = side.as_str(),
            "peer stayed silent past its pong timeout"
        );
        let why = timeout_reason(side);
        self.record(Initiator::Proxy, CloseReason::Timeout, None, why.1);
        self.kill(side, why);
    }

    /// Shuts down the write side of the legs still open, briefly, then drops them.
    async fn shutdown(&mut self) {
        if let Some(io) = self.client.io.as_mut() {
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, io.shutdown()).await;
        }
        if let Some(io) = self.upstream.io.as_mut() {
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, io.shutdown()).await;
        }
    }
}

/// The grid step for a session's heartbeat timer: a sixteenth of its shortest heartbeat period,
/// between 1 ms and [`TIMER_GRID_MAX`].
fn timer_grid(cfg: &RelayConfig) -> Duration {
    [cfg.client, cfg.upstream]
        .iter()
        .flat_map(|hb| [hb.interval, hb.timeout])
        .filter(|d| !d.is_zero())
        .min()
        .map_or(TIMER_GRID_MAX, |d| d / TIMER_GRID_DIVISOR)
        .clamp(Duration::from_millis(1), TIMER_GRID_MAX)
}

/// `deadline` rounded up to the next multiple of `grid`, counted from one instant shared by the
/// whole process, so that sessions with deadlines close together fire in the same tick.
fn on_grid(deadline: Instant, grid: Duration) -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    // Before the epoch (another test's paused clock set it): leave the deadline as it is.
    let Some(since) = deadline.checked_duration_since(epoch) else {
        return deadline;
    };
    let (since, grid) = (since.as_nanos(), grid.as_nanos().max(1));
    let rounded = since.div_ceil(grid) * grid;
    u64::try_from(rounded).map_or(deadline, |ns| epoch + Duration::from_nanos(ns))
}

/// Queues our close toward a surviving leg (unless it already closed or died).
fn notify(leg: &mut LegState, why: (u16, &'static str)) {
    if !leg.dead && !leg.sent_close && !leg.close_queued && leg.close_out.is_none() {
        leg.close_out = Some(why);
    }
}

fn lost_reason(side: Side) -> (u16, &'static str) {
    match side {
        Side::Client => (close_code::GOING_AWAY, "client connection lost"),
        Side::Upstream => (close_code::INTERNAL_ERROR, "upstream connection lost"),
    }
}

fn timeout_reason(side: Side) -> (u16, &'static str) {
    match side {
        Side::Client => (close_code::GOING_AWAY, "client timed out"),
        Side::Upstream => (close_code::INTERNAL_ERROR, "upstream timed out"),
    }
}

#[cfg(test)]
mod tests;
