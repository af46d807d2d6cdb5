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

mod pool;
pub mod pump;

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::Side;
use crate::frame::{self, close_code};
use crate::heartbeat::{Action, Heartbeat, HeartbeatConfig, PongMatch};
use crate::metrics::{CloseReason, Initiator, Metrics, Tally};
use crate::sessions::SessionInfo;
use pump::{Control, Parsed, Pump, Violation};

/// Control bytes queued for one leg beyond which we stop reading its pings: a peer that floods
/// pings while not reading our pongs is throttled instead of growing a queue.
const CTRL_QUEUE_LIMIT: usize = 4 * 1024;
/// Rounds of read/write per wake-up before yielding to other tasks.
const ROUNDS_PER_POLL: usize = 32;
/// How long to wait for a peer to accept our FIN after a finished session.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

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

/// How a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Who started the end.
    pub initiator: Initiator,
    /// Why.
    pub reason: CloseReason,
    /// The close code the initiator sent, when it sent one.
    pub code: Option<u16>,
    /// Human-readable detail for the log line.
    pub detail: &'static str,
}

/// What a session reports to and listens for, besides its two connections.
pub struct SessionContext {
    /// Settings.
    pub cfg: RelayConfig,
    /// Cancelled when the proxy shuts down: both legs then get close 1001.
    pub cancel: CancellationToken,
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
    timer: Pin<Box<Sleep>>,
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
}

impl LegState {
    fn new(side: Side, cfg: HeartbeatConfig, now: Instant) -> Self {
        let hb = Heartbeat::new(cfg, now);
        let timer = Box::pin(tokio::time::sleep_until(hb.poll_timeout()));
        LegState {
            side,
            hb,
            timer,
            ctrl: Vec::new(),
            ctrl_pos: 0,
            close_out: None,
            close_queued: false,
            got_close: false,
            sent_close: false,
            read_done: false,
            dead: false,
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
    outcome: &'a mut Option<Outcome>,
    closing: &'a mut bool,
}

struct Session<C, U> {
    client: Leg<C>,
    upstream: Leg<U>,
    c2u: Pump,
    u2c: Pump,
    cfg: RelayConfig,
    cancel: Pin<Box<WaitForCancellationFutureOwned>>,
    cancelled: bool,
    closing: bool,
    close_deadline: Option<Pin<Box<Sleep>>>,
    outcome: Option<Outcome>,
    metrics: Arc<Metrics>,
    info: Arc<SessionInfo>,
    tally: Tally,
}

impl<C, U> Session<C, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    fn new(client: Peer<C>, upstream: Peer<U>, ctx: SessionContext) -> Self {
        let SessionContext {
            cfg,
            cancel,
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
            cancel: Box::pin(cancel.cancelled_owned()),
            cancelled: false,
            closing: false,
            close_deadline: None,
            outcome: None,
            metrics,
            info,
            tally: Tally::default(),
        }
    }

    /// Drives everything that is ready; completes when both legs are done.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Outcome> {
        if !self.cancelled && self.cancel.as_mut().poll(cx).is_ready() {
            self.cancelled = true;
            self.on_shutdown();
        }
        self.poll_heartbeats(cx);
        let mut rounds = 0;
        while self.poll_directions(cx) {
            rounds += 1;
            if rounds == ROUNDS_PER_POLL {
                cx.waker().wake_by_ref();
                break;
            }
        }
        if self.tally.is_dirty() {
            self.metrics.flush(&mut self.tally);
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
            outcome: &mut self.outcome,
            closing: &mut self.closing,
        };
        let a = direction(
            &mut self.client,
            &mut self.upstream,
            &mut self.c2u,
            &mut shared,
            cx,
        );
        let b = direction(
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

    /// Fires due heartbeat timers: sends pings, declares silent peers dead.
    fn poll_heartbeats(&mut self, cx: &mut Context<'_>) {
        for side in Side::ALL {
            if self.poll_heartbeat(side, cx) {
                self.metrics.peer_timeouts[side.index()].inc();
                tracing::info!(
                    side = side.as_str(),
                    "peer stayed silent past its pong timeout"
                );
                self.record(
                    Initiator::Proxy,
                    CloseReason::Timeout,
                    None,
                    timeout_reason(side).1,
                );
                self.kill(side, timeout_reason(side));
            }
        }
    }

    /// Handles `side`'s timer until it is pending again; true if the peer expired.
    fn poll_heartbeat(&mut self, side: Side, cx: &mut Context<'_>) -> bool {
        let (leg, from_pump) = match side {
            Side::Client => (&mut self.client.st, &self.c2u),
            Side::Upstream => (&mut self.upstream.st, &self.u2c),
        };
        while !leg.dead && !self.closing && leg.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if from_pump.stalled {
                // We stopped reading this leg because its bytes cannot be delivered; they are
                // proof of life we have not looked at yet.
                leg.hb.on_activity(now);
            }
            let action = leg.hb.handle_timeout(now);
            let next = leg.hb.poll_timeout();
            leg.timer.as_mut().reset(next);
            match action {
                Some(Action::SendPing(payload)) => {
                    leg.queue_control(frame::OP_PING, &payload);
                    self.metrics.pings_sent[side.index()].inc();
                    self.info.on_ping(side);
                }
                Some(Action::Expire) => return true,
                None => {}
            }
        }
        false
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

/// One round of the direction `src → dst`: write what is pending to `dst`, read from `src`,
/// parse. Returns whether anything moved.
fn direction<A, B>(
    src: &mut Leg<A>,
    dst: &mut Leg<B>,
    pump: &mut Pump,
    shared: &mut Shared<'_>,
    cx: &mut Context<'_>,
) -> Result<bool, Event>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut progress = poll_write_out(dst, pump, cx)?;
    let read = poll_read_in(src, pump, cx)?;
    if read != NOTHING_READ && read > 0 {
        let now = Instant::now();
        src.st.hb.on_activity(now);
        shared.info.on_received(src.st.side, read as u64, now);
    }
    if read != NOTHING_READ {
        progress = true;
        parse_input(src, dst, pump, shared)?;
    }
    Ok(progress)
}

/// Writes pending control frames and relayed output to `dst`, control frames only at frame
/// boundaries. Returns whether anything was written.
fn poll_write_out<B>(dst: &mut Leg<B>, pump: &mut Pump, cx: &mut Context<'_>) -> Result<bool, Event>
where
    B: AsyncWrite + Unpin,
{
    let Some(io) = dst.io.as_mut() else {
        pump.drop_output();
        return Ok(false);
    };
    let mut progress = false;
    loop {
        if pump.truncated && pump.output().is_empty() {
            // The source died mid-frame: no close frame can follow. Cut the connection.
            tracing::debug!(
                side = dst.st.side.as_str(),
                "stream truncated mid-frame; dropping leg"
            );
            dst.st.dead = true;
            dst.io = None;
            return Ok(true);
        }
        let at_boundary = pump.out_until_boundary() == 0;
        queue_close_when_drained(&mut dst.st, pump);
        let ctrl_first = at_boundary && !dst.st.pending_ctrl().is_empty();
        let limit = usize::try_from(pump.out_until_boundary()).unwrap_or(usize::MAX);
        let data = pump.output();
        let data = if !dst.st.pending_ctrl().is_empty() && !at_boundary {
            &data[..data.len().min(limit)]
        } else {
            data
        };
        if !ctrl_first && data.is_empty() {
            break;
        }
        let result = if ctrl_first {
            let bufs = [IoSlice::new(dst.st.pending_ctrl()), IoSlice::new(data)];
            Pin::new(&mut *io).poll_write_vectored(cx, &bufs)
        } else {
            Pin::new(&mut *io).poll_write(cx, data)
        };
        match result {
            Poll::Pending => break,
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Err(Event::Lost(dst.st.side)),
            Poll::Ready(Ok(mut n)) => {
                progress = true;
                if ctrl_first {
                    let c = n.min(dst.st.pending_ctrl().len());
                    dst.st.ctrl_written(c);
                    n -= c;
                }
                pump.consumed(n);
            }
        }
    }
    if pump.close_forwarded && pump.is_drained() && !dst.st.sent_close {
        dst.st.sent_close = true;
        progress = true;
    }
    if progress {
        match Pin::new(io).poll_flush(cx) {
            Poll::Ready(Err(_)) => return Err(Event::Lost(dst.st.side)),
            Poll::Ready(Ok(())) | Poll::Pending => {}
        }
    }
    Ok(progress)
}

/// Returned by [`poll_read_in`] when nothing happened.
const NOTHING_READ: usize = usize::MAX;

/// Encodes our pending close for `leg` once nothing more will be relayed into it and all that
/// was relayed is written: the close is the last frame the leg gets.
fn queue_close_when_drained(leg: &mut LegState, pump: &Pump) {
    if pump.mode != pump::Mode::Discard || !pump.is_drained() || leg.close_queued {
        return;
    }
    if let Some((code, reason)) = leg.close_out.take() {
        let mask = leg.mask();
        frame::encode_close(&mut leg.ctrl, code, reason, mask);
        leg.close_queued = true;
    }
}

/// Reads from `src` into the pump: the number of bytes that arrived (0 when the read side
/// ended normally), or [`NOTHING_READ`].
fn poll_read_in<A>(src: &mut Leg<A>, pump: &mut Pump, cx: &mut Context<'_>) -> Result<usize, Event>
where
    A: AsyncRead + Unpin,
{
    if src.st.read_done || src.st.dead || src.st.pending_ctrl().len() >= CTRL_QUEUE_LIMIT {
        return Ok(NOTHING_READ);
    }
    if pump.fill_from_prefix() {
        return Ok(0);
    }
    let Some(io) = src.io.as_mut() else {
        return Ok(NOTHING_READ);
    };
    let Some(space) = pump.read_space() else {
        return Ok(NOTHING_READ);
    };
    let mut rb = ReadBuf::new(space);
    match Pin::new(io).poll_read(cx, &mut rb) {
        Poll::Pending => {
            pump.release_if_empty();
            Ok(NOTHING_READ)
        }
        Poll::Ready(Ok(())) if rb.filled().is_empty() => {
            pump.release_if_empty();
            if src.st.got_close {
                src.st.read_done = true;
                pump.source_gone();
                Ok(0)
            } else {
                Err(Event::Lost(src.st.side))
            }
        }
        Poll::Ready(Ok(())) => {
            let n = rb.filled().len();
            pump.filled(n);
            Ok(n)
        }
        Poll::Ready(Err(e)) => {
            tracing::debug!(side = src.st.side.as_str(), error = %e, "read failed");
            if src.st.got_close {
                src.st.read_done = true;
                pump.source_gone();
                Ok(0)
            } else {
                Err(Event::Lost(src.st.side))
            }
        }
    }
}

/// Parses everything buffered from `src`, acting on control frames.
fn parse_input<A, B>(
    src: &mut Leg<A>,
    dst: &mut Leg<B>,
    pump: &mut Pump,
    shared: &mut Shared<'_>,
) -> Result<(), Event> {
    let side = src.st.side;
    let masked = side == Side::Client;
    loop {
        let parsed = pump
            .parse(masked, shared.cfg.max_frame_size)
            .map_err(|v| Event::Violation(side, v))?;
        match parsed {
            Parsed::NeedInput => return Ok(()),
            Parsed::Data(opcode, fin, len) => shared.tally.frame(side, opcode, fin, len),
            Parsed::Control(c) => on_control(side, c, &mut src.st, &mut dst.st, pump, shared),
        }
    }
}

fn on_control(
    side: Side,
    control: Control,
    src: &mut LegState,
    dst: &mut LegState,
    pump: &mut Pump,
    shared: &mut Shared<'_>,
) {
    match control {
        Control::Ping(payload) => {
            shared.tally.frame(side, frame::OP_PING, true, 0);
            // A ping after the peer's own close is not answered (RFC 6455 5.5.1: nothing
            // follows a close); otherwise every ping gets its pong, the latest included.
            if !src.got_close {
                src.queue_control(frame::OP_PONG, payload.as_slice());
            }
        }
        Control::Pong(payload) => {
            shared.tally.frame(side, frame::OP_PONG, true, 0);
            if let PongMatch::Ours { rtt } = src.hb.on_pong(payload.as_slice(), Instant::now()) {
                shared.metrics.observe_rtt(side, rtt);
                shared.info.on_rtt(side, rtt);
            }
        }
        Control::Close { code, forwarded } => {
            shared.tally.frame(side, frame::OP_CLOSE, true, 0);
            src.got_close = true;
            shared.outcome.get_or_insert(Outcome {
                initiator: side.into(),
                reason: CloseReason::from_code(code),
                code,
                detail: "close frame",
            });
            *shared.closing = true;
            let _ = (forwarded, dst, pump);
        }
    }
}

#[cfg(test)]
mod tests;
