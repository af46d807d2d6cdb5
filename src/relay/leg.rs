//! One leg's state apart from its I/O: how far the close handshake has come in each direction,
//! the control frames we owe the peer, what the peer has shown of its liveness, and its
//! heartbeat.
//!
//! Each direction of the leg has one enum, as linkerd2-proxy's duplex copy keeps each half's
//! state in one enum: a leg cannot be "closed and open", or "dropped and still owed a close".
//! [`Link::Dropped`] ends both directions at once.

use tokio::time::Instant;

use crate::Side;
use crate::frame::{self, close_code};
use crate::heartbeat::{Heartbeat, HeartbeatConfig};

/// A close frame we send ourselves: its code and reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CloseFrame {
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
}

/// Why the proxy gives up on a leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Its connection ended without a close frame, or failed.
    Lost,
    /// It stayed silent past its pong timeout.
    TimedOut,
    /// It broke the protocol.
    ProtocolError,
}

impl CloseFrame {
    /// The close the *other* leg gets when `failed` failed: the one place that decides what a
    /// survivor is told. The client hears 1011 (the server side failed it); the upstream hears
    /// 1001 (its client went away).
    pub(crate) fn for_survivor(failed: Side, failure: Failure) -> CloseFrame {
        let code = match failed {
            Side::Client => close_code::GOING_AWAY,
            Side::Upstream => close_code::INTERNAL_ERROR,
        };
        let reason = match (failed, failure) {
            (Side::Client, Failure::Lost) => "client connection lost",
            (Side::Client, Failure::TimedOut) => "client timed out",
            (Side::Client, Failure::ProtocolError) => "client protocol error",
            (Side::Upstream, Failure::Lost) => "upstream connection lost",
            (Side::Upstream, Failure::TimedOut) => "upstream timed out",
            (Side::Upstream, Failure::ProtocolError) => "upstream protocol error",
        };
        CloseFrame { code, reason }
    }
}

/// What may still be read from a live leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Inbound {
    /// Frames may arrive; its pings are answered.
    Open,
    /// Its close frame arrived. We read on until EOF, but answer nothing (RFC 6455 5.5.1).
    CloseReceived,
    /// Nothing more will be read: EOF after its close, or we stopped listening to a leg that
    /// broke the protocol.
    Ended,
}

/// How far the close toward a live leg has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outbound {
    /// Data and our control frames flow.
    Open,
    /// We decided to close it with this frame; it goes out once everything relayed into the
    /// leg is written, as the last frame the leg gets.
    CloseOwed(CloseFrame),
    /// Our close frame sits in the control queue; the leg has been sent a close when the queue
    /// is written.
    CloseQueued,
    /// A close frame (ours, or the other side's relayed by the pump) was written to it.
    CloseSent,
}

/// Whether a leg still has a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Link {
    /// Connected; each direction has its own state.
    Up {
        inbound: Inbound,
        outbound: Outbound,
    },
    /// Dropped: the connection is closed and no more I/O happens on it.
    Dropped,
}

/// Per-leg state that does not depend on the I/O type.
pub(crate) struct LegState {
    side: Side,
    link: Link,
    pub(crate) hb: Heartbeat,
    /// Encoded pings, pongs and our close, waiting to be written to this leg.
    ctrl: ControlQueue,
    /// Encoded text messages of ours (answers to text pings, keep-alives, text pings) waiting
    /// until the stream into this leg is between messages: RFC 6455 5.4 allows only control
    /// frames inside a fragmented message.
    text_out: Vec<u8>,
    /// A read (write) returned `Pending` during this wake-up, so the waker is registered: do not
    /// poll that direction again until the next wake-up (each pending poll costs a
    /// registration). Both combinations are real, so these stay two flags.
    pub(crate) read_parked: bool,
    pub(crate) write_parked: bool,
    /// A write toward the leg found its socket full, and no byte has been taken since. The
    /// next byte taken proves the peer alive: the kernel makes room only when the peer
    /// acknowledged data, which in steady backpressure means its application read. A write
    /// into a socket with room proves nothing (a deaf peer's buffers are filling).
    write_blocked: bool,
    /// A flush returned `Pending` (TLS holds encrypted bytes): it is polled again on every
    /// wake-up until it completes, not only when new bytes are written.
    pub(crate) flush_owed: bool,
    /// Relayed bytes were written to the leg since the kernel's view was last noted: a ping
    /// written now may wait behind them in the kernels.
    wrote_data: bool,
    /// The kernel's view when the running pong timeout started (a ping left behind relayed
    /// bytes), with that instant: the reference a silent peer's reading is judged against.
    /// Boxed, as it exists only for legs that carry data.
    pub(crate) view_at_ping: Option<Box<(Instant, wsbeat_tcpinfo::Delivery)>>,
    /// How far the output toward this leg had got (low 32 bits of
    /// [`Pump::delivered_out`](super::pump::Pump::delivered_out)) when its waiting ping was
    /// last excused.
    pub(crate) excused_at: u32,
    /// Excuses in a row since that output last moved (see `relay::STALE_EXCUSES`).
    pub(crate) stale_excuses: u8,
}

impl LegState {
    pub(crate) fn new(side: Side, cfg: &HeartbeatConfig, now: Instant) -> Self {
        LegState {
            side,
            link: Link::Up {
                inbound: Inbound::Open,
                outbound: Outbound::Open,
            },
            hb: Heartbeat::new(cfg, now),
            ctrl: ControlQueue::default(),
            text_out: Vec::new(),
            read_parked: false,
            write_parked: false,
            write_blocked: false,
            flush_owed: false,
            wrote_data: false,
            view_at_ping: None,
            excused_at: 0,
            stale_excuses: 0,
        }
    }

    /// A write toward the leg returned `Pending` with bytes waiting.
    pub(crate) fn on_write_blocked(&mut self) {
        self.write_blocked = true;
    }

    /// Bytes were written toward the leg.
    #[inline]
    pub(crate) fn on_write_progress(&mut self) {
        if self.write_blocked {
            self.write_blocked = false;
            self.hb.on_activity();
        }
    }

    pub(crate) fn side(&self) -> Side {
        self.side
    }

    pub(crate) fn is_dropped(&self) -> bool {
        self.link == Link::Dropped
    }

    /// Frames from the leg are still to be read.
    pub(crate) fn reads(&self) -> bool {
        matches!(self.link, Link::Up { inbound, .. } if inbound != Inbound::Ended)
    }

    /// Its close frame has not arrived: its pings are answered, and its EOF is a lost
    /// connection.
    pub(crate) fn inbound_open(&self) -> bool {
        matches!(
            self.link,
            Link::Up {
                inbound: Inbound::Open,
                ..
            }
        )
    }

    /// Both directions are finished: the session may end as far as this leg is concerned.
    pub(crate) fn done(&self) -> bool {
        match self.link {
            Link::Dropped => true,
            Link::Up { inbound, outbound } => {
                outbound == Outbound::CloseSent && inbound != Inbound::Open
            }
        }
    }

    /// Drops the leg: no more I/O in either direction.
    pub(crate) fn drop_link(&mut self) {
        self.link = Link::Dropped;
        self.ctrl = ControlQueue::default();
        self.text_out = Vec::new();
    }

    fn set_inbound(&mut self, to: Inbound) {
        if let Link::Up { inbound, .. } = &mut self.link {
            *inbound = to;
        }
    }

    fn outbound(&self) -> Option<Outbound> {
        match self.link {
            Link::Up { outbound, .. } => Some(outbound),
            Link::Dropped => None,
        }
    }

    fn set_outbound(&mut self, to: Outbound) {
        if let Link::Up { outbound, .. } = &mut self.link {
            *outbound = to;
        }
    }

    /// Its close frame arrived.
    pub(crate) fn on_close_received(&mut self) {
        self.set_inbound(Inbound::CloseReceived);
    }

    /// Its read side ended after its close, or we stop listening to it.
    pub(crate) fn stop_reading(&mut self) {
        self.set_inbound(Inbound::Ended);
    }

    /// Decides to close the leg with `close`, unless a close already went or is going to it.
    pub(crate) fn owe_close(&mut self, close: CloseFrame) {
        if self.outbound() == Some(Outbound::Open) {
            self.set_outbound(Outbound::CloseOwed(close));
        }
    }

    /// Encodes the close we owe into the control queue. The caller knows that nothing more
    /// will be relayed into the leg and all that was is written.
    pub(crate) fn queue_owed_close(&mut self) {
        if let Some(Outbound::CloseOwed(close)) = self.outbound() {
            let mask = self.mask();
            frame::encode_close(&mut self.ctrl.bytes, close.code, close.reason, mask);
            self.set_outbound(Outbound::CloseQueued);
        }
    }

    /// The other side's close frame, relayed by the pump, has been written to the leg.
    pub(crate) fn on_close_relayed(&mut self) -> bool {
        if matches!(self.outbound(), Some(o) if o != Outbound::CloseSent) {
            self.set_outbound(Outbound::CloseSent);
            return true;
        }
        false
    }

    /// Frames to this leg are masked when it is the upstream (we are its client).
    fn mask(&self) -> Option<[u8; 4]> {
        (self.side == Side::Upstream).then(frame::random_mask)
    }

    /// Queues a pong for the leg, unless a close is decided for it.
    pub(crate) fn queue_pong(&mut self, payload: &[u8]) {
        if self.outbound() != Some(Outbound::Open) {
            return;
        }
        let mask = self.mask();
        frame::encode_frame(&mut self.ctrl.bytes, true, frame::OP_PONG, payload, mask);
    }

    /// Queues one of our pings, unless a close is decided for the leg; the heartbeat hears
    /// when it has been written.
    pub(crate) fn queue_ping(&mut self, payload: &[u8]) {
        if self.outbound() != Some(Outbound::Open) {
            return;
        }
        let mask = self.mask();
        frame::encode_frame(&mut self.ctrl.bytes, true, frame::OP_PING, payload, mask);
        self.ctrl.ping_end = self.ctrl.bytes.len();
    }

    /// Queues a text message of ours; it waits for a message boundary (see
    /// [`LegState::release_text`]).
    pub(crate) fn queue_text(&mut self, text: &[u8]) {
        if self.outbound() != Some(Outbound::Open) {
            return;
        }
        let mask = self.mask();
        frame::encode_frame(&mut self.text_out, true, frame::OP_TEXT, text, mask);
    }

    /// Whether a text message of ours is still waiting for a message boundary.
    pub(crate) fn text_waiting(&self) -> bool {
        !self.text_out.is_empty()
    }

    /// Moves the waiting text messages into the control queue. The caller knows that the
    /// stream into the leg is between messages and that nothing relayed is waiting, so all that
    /// is relayed later goes after them: the control queue then goes first even at a frame
    /// boundary inside a message (see [`LegState::ctrl_holds_data`]).
    pub(crate) fn release_text(&mut self) {
        if self.text_out.is_empty() || self.outbound() != Some(Outbound::Open) {
            return;
        }
        self.ctrl.bytes.append(&mut self.text_out);
        self.ctrl.has_data = true;
    }

    /// The control queue holds a data message of ours, which must be written before any
    /// relayed output.
    pub(crate) fn ctrl_holds_data(&self) -> bool {
        self.ctrl.has_data
    }

    /// Bytes of ours waiting for the leg: what throttles reading its pings.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.ctrl.pending().len() + self.text_out.len()
    }

    /// Control bytes not yet written.
    pub(crate) fn pending_ctrl(&self) -> &[u8] {
        self.ctrl.pending()
    }

    /// Records that `n` control bytes were written. Returns when a pong timeout started with
    /// them, if it did behind relayed bytes: the caller notes the kernel's view then.
    pub(crate) fn ctrl_written(&mut self, n: usize) -> Option<Instant> {
        let ping_left = self.ctrl.ping_end != 0 && self.ctrl.pos + n >= self.ctrl.ping_end;
        let mut started = None;
        if ping_left {
            self.ctrl.ping_end = 0;
            // Read the clock only here: once per ping, never per frame.
            let now = Instant::now();
            if self.hb.on_ping_written(now) && std::mem::take(&mut self.wrote_data) {
                started = Some(now);
            }
        }
        if self.ctrl.written(n) && self.outbound() == Some(Outbound::CloseQueued) {
            self.set_outbound(Outbound::CloseSent);
        }
        started
    }

    /// Relayed bytes were written to the leg.
    #[inline]
    pub(crate) fn on_data_written(&mut self) {
        self.wrote_data = true;
    }
}

/// Encoded control frames for one leg, written from `pos`.
#[derive(Default)]
struct ControlQueue {
    bytes: Vec<u8>,
    pos: usize,
    /// A data message of ours is among the bytes (until the queue empties).
    has_data: bool,
    /// Where the latest queued ping ends in `bytes`; 0 when no ping waits.
    ping_end: usize,
}

impl ControlQueue {
    fn pending(&self) -> &[u8] {
        &self.bytes[self.pos..]
    }

    /// Advances by `n` written bytes; true when the queue is now empty.
    fn written(&mut self, n: usize) -> bool {
        self.pos += n;
        if self.pos < self.bytes.len() {
            return false;
        }
        self.bytes.clear();
        self.pos = 0;
        self.has_data = false;
        self.ping_end = 0;
        if self.bytes.capacity() > 2 * frame::MAX_CONTROL_FRAME {
            self.bytes = Vec::new();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leg(side: Side) -> LegState {
        LegState::new(side, &HeartbeatConfig::OFF, Instant::now())
    }

    #[test]
    fn survivors_hear_1011_as_client_and_1001_as_upstream() {
        for failure in [Failure::Lost, Failure::TimedOut, Failure::ProtocolError] {
            assert_eq!(CloseFrame::for_survivor(Side::Upstream, failure).code, 1011);
            assert_eq!(CloseFrame::for_survivor(Side::Client, failure).code, 1001);
        }
    }

    #[test]
    fn an_owed_close_is_the_last_control_frame() {
        let mut l = leg(Side::Client);
        l.owe_close(CloseFrame::for_survivor(Side::Upstream, Failure::Lost));
        l.queue_ping(b"late");
        assert!(l.pending_ctrl().is_empty(), "nothing after a decided close");
        l.queue_owed_close();
        let n = l.pending_ctrl().len();
        assert!(!l.done());
        l.ctrl_written(n);
        l.stop_reading();
        assert!(l.done());
    }

    #[test]
    fn a_relayed_close_settles_the_outbound_side_once() {
        let mut l = leg(Side::Upstream);
        assert!(l.on_close_relayed());
        assert!(!l.on_close_relayed());
        l.owe_close(CloseFrame::for_survivor(Side::Client, Failure::Lost));
        l.queue_owed_close();
        assert!(l.pending_ctrl().is_empty(), "no second close");
        assert!(!l.done(), "its close has not arrived yet");
        l.on_close_received();
        assert!(l.done());
    }

    #[test]
    fn text_waits_for_release_and_nothing_of_ours_follows_a_decided_close() {
        let mut l = leg(Side::Upstream);
        l.queue_text(b"hb");
        assert!(l.text_waiting() && l.pending_ctrl().is_empty());
        l.release_text();
        assert!(l.ctrl_holds_data() && !l.text_waiting());
        let n = l.pending_ctrl().len();
        assert_eq!(n, 2 + 4 + 2, "a masked text frame toward the upstream");
        l.ctrl_written(n);
        assert!(!l.ctrl_holds_data());
        l.queue_text(b"late");
        l.owe_close(CloseFrame::for_survivor(Side::Client, Failure::Lost));
        l.release_text();
        assert!(
            l.pending_ctrl().is_empty(),
            "no message after a decided close"
        );
        l.queue_text(b"later");
        l.queue_owed_close();
        assert!(!l.ctrl_holds_data());
    }

    #[test]
    fn a_dropped_leg_is_done_and_owed_nothing() {
        let mut l = leg(Side::Client);
        l.drop_link();
        l.owe_close(CloseFrame::for_survivor(Side::Upstream, Failure::Lost));
        l.queue_owed_close();
        assert!(l.done() && !l.reads() && l.pending_ctrl().is_empty());
    }
}
