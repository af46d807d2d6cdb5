//! One direction of a session at the I/O level: write what is pending into the destination
//! (our control frames only at frame boundaries), read from the source, parse, and act on the
//! control frames found. The session in the parent module decides what events mean.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::leg::LegState;
use super::pump::{Control, Parsed, Pump};
use super::splice::Pipe;
use super::{CTRL_QUEUE_LIMIT, Event, Leg, Outcome, Shared};
use crate::Side;
use crate::frame;
use crate::heartbeat::PongMatch;
use crate::net::{PeerDelivery, SpliceSocket};
use crate::outcome::CloseReason;
use crate::text_heartbeat::TextKind;

/// One round of the direction `src → dst`: write what is pending to `dst`, read from `src`,
/// parse. Returns whether anything moved.
pub(super) fn direction<A, B>(
    src: &mut Leg<A>,
    dst: &mut Leg<B>,
    pump: &mut Pump,
    shared: &mut Shared<'_>,
    cx: &mut Context<'_>,
) -> Result<bool, Event>
where
    A: AsyncRead + AsyncWrite + PeerDelivery + SpliceSocket + Unpin,
    B: AsyncRead + AsyncWrite + PeerDelivery + SpliceSocket + Unpin,
{
    let progress = poll_write_out(dst, pump, cx)?;
    let read = poll_read_in(src, pump, cx)?;
    if !received(src, read, shared) {
        return Ok(progress);
    }
    parse_input(&mut src.st, pump, shared)?;
    if pump.wants_splice(shared.cfg.splice_min_payload) {
        start_splice(src, dst, pump, shared, cx)?;
    }
    // Pass what was just read on at once, before the other direction is looked at: a message
    // crosses the proxy within one call.
    if pump.has_output() {
        poll_write_out(dst, pump, cx)?;
    }
    Ok(true)
}

/// Books what a read brought; false when it brought nothing.
fn received<A>(src: &mut Leg<A>, read: Read, shared: &mut Shared<'_>) -> bool {
    match read {
        Read::Nothing => return false,
        Read::Bytes(n) => {
            src.st.hb.on_activity();
            shared.received[src.st.side().index()] += n as u64;
        }
        Read::HandshakeLeftover | Read::Ended => {}
    }
    true
}

/// Moves the rest of the current frame with `splice(2)` when both legs are plain TCP: the
/// buffered output goes into a pipe, and the payload that follows is spliced in behind it at
/// once, so that the destination gets them in one write.
#[cold]
fn start_splice<A, B>(
    src: &mut Leg<A>,
    dst: &mut Leg<B>,
    pump: &mut Pump,
    shared: &mut Shared<'_>,
    cx: &mut Context<'_>,
) -> Result<(), Event>
where
    A: AsyncRead + SpliceSocket + Unpin,
    B: SpliceSocket,
{
    let src_tcp = src.io.as_ref().and_then(SpliceSocket::splice_socket);
    let dst_tcp = dst.io.as_ref().and_then(SpliceSocket::splice_socket);
    // A text message of ours still being written must go before anything relayed after it
    // (it was queued between messages); the pipe would be written first.
    if src_tcp.is_none() || dst_tcp.is_none() || dst.st.ctrl_holds_data() {
        return Ok(());
    }
    let Some(pipe) = Pipe::take() else {
        return Ok(());
    };
    if let Err(e) = pump.start_splice(pipe) {
        tracing::debug!(error = %e, "pipe refused the frame's start; relaying through the buffer");
        return Ok(());
    }
    shared.metrics.spliced_frames[src.st.side().index()].inc();
    let read = poll_read_in(src, pump, cx)?;
    if received(src, read, shared) {
        // The payload spliced in needs no parsing, but its end may finish the frame.
        parse_input(&mut src.st, pump, shared)?;
    }
    Ok(())
}

/// What one read from a source brought.
enum Read {
    /// Nothing happened: parked, stopped, or no room in the pump.
    Nothing,
    /// Bytes the HTTP layer read past the handshake moved into the pump.
    HandshakeLeftover,
    /// This many bytes (more than zero) arrived from the socket: proof of life.
    Bytes(usize),
    /// The read side ended normally, after the peer's close frame.
    Ended,
}

/// Writes pending control frames and relayed output to `dst`, control frames only at frame
/// boundaries. Returns whether anything was written.
fn poll_write_out<B>(dst: &mut Leg<B>, pump: &mut Pump, cx: &mut Context<'_>) -> Result<bool, Event>
where
    B: AsyncWrite + PeerDelivery + SpliceSocket + Unpin,
{
    let Some(io) = dst.io.as_mut() else {
        pump.drop_output();
        return Ok(false);
    };
    if dst.st.write_parked {
        return Ok(false);
    }
    let mut progress = false;
    loop {
        if pump.is_truncated() && !pump.has_output() {
            // The source died mid-frame: no close frame can follow. Cut the connection.
            tracing::debug!(
                side = dst.st.side().as_str(),
                "stream truncated mid-frame; dropping leg"
            );
            dst.st.drop_link();
            dst.io = None;
            return Ok(true);
        }
        queue_close_when_drained(&mut dst.st, pump);
        if dst.st.text_waiting() && pump.between_messages() {
            dst.st.release_text();
        }
        let written = match pump.pipe_mut() {
            // The pipe's bytes come first; nothing of ours goes inside the frame they belong to.
            Some(pipe) => {
                let drained = drain_pipe(pipe, &*io, cx);
                if let Poll::Ready(Ok(true)) = drained {
                    dst.st.on_data_written();
                    pump.spliced_out();
                }
                drained
            }
            None => write_once(io, &mut dst.st, pump, cx),
        };
        match written {
            Poll::Ready(Ok(true)) => {
                dst.st.on_write_progress();
                progress = true;
            }
            Poll::Ready(Ok(false)) => break,
            Poll::Pending => {
                dst.st.write_parked = true;
                dst.st.on_write_blocked();
                break;
            }
            Poll::Ready(Err(_)) => return Err(Event::Lost(dst.st.side())),
        }
    }
    if pump.close_forwarded() && pump.is_drained() && dst.st.on_close_relayed() {
        progress = true;
    }
    if progress || dst.st.flush_owed {
        poll_flush(io, &mut dst.st, cx)?;
    }
    Ok(progress)
}

/// Splices what the pipe holds into `io`'s socket. `Ok(true)`: some went.
fn drain_pipe<B>(pipe: &mut Pipe, io: &B, cx: &mut Context<'_>) -> Poll<io::Result<bool>>
where
    B: SpliceSocket,
{
    let Some(tcp) = io.splice_socket() else {
        // A pipe is only set up between two TCP legs, and a leg's stream never changes.
        return Poll::Ready(Err(io::ErrorKind::Unsupported.into()));
    };
    ready!(pipe.poll_drain(tcp, cx))?;
    Poll::Ready(Ok(true))
}

/// Flushes what was written to `io`. A flush that cannot finish now (TLS holding encrypted
/// bytes) stays owed and is polled again on every wake-up until it completes: otherwise those
/// bytes would wait for the next frame, which may be a ping many seconds later.
fn poll_flush<B>(io: &mut B, leg: &mut LegState, cx: &mut Context<'_>) -> Result<(), Event>
where
    B: AsyncWrite + Unpin,
{
    match Pin::new(io).poll_flush(cx) {
        Poll::Ready(Ok(())) => leg.flush_owed = false,
        Poll::Pending => {
            leg.flush_owed = true;
            leg.write_parked = true;
        }
        Poll::Ready(Err(_)) => return Err(Event::Lost(leg.side())),
    }
    Ok(())
}

/// One write to `io`: our control frames first when the stream is at a frame boundary (they
/// may not go inside a frame), together with relayed output; while control frames wait, output
/// only up to the next boundary. `Ok(false)`: nothing to write.
fn write_once<B>(
    io: &mut B,
    leg: &mut LegState,
    pump: &mut Pump,
    cx: &mut Context<'_>,
) -> Poll<io::Result<bool>>
where
    B: AsyncWrite + PeerDelivery + Unpin,
{
    let to_boundary = pump.out_until_boundary();
    let ctrl_waiting = !leg.pending_ctrl().is_empty();
    // A message of ours went into the queue when nothing relayed was waiting, so everything
    // relayed since comes after it.
    let ctrl_first = ctrl_waiting && (to_boundary == 0 || leg.ctrl_holds_data());
    let mut data = pump.output();
    if ctrl_waiting && !ctrl_first {
        data = &data[..data
            .len()
            .min(usize::try_from(to_boundary).unwrap_or(usize::MAX))];
    }
    if !ctrl_first && data.is_empty() {
        return Poll::Ready(Ok(false));
    }
    let written = if ctrl_first && data.is_empty() {
        // A heartbeat on an idle leg: a plain send, without writev's extra kernel layers.
        ready!(Pin::new(&mut *io).poll_write(cx, leg.pending_ctrl()))?
    } else if ctrl_first {
        let bufs = [IoSlice::new(leg.pending_ctrl()), IoSlice::new(data)];
        ready!(Pin::new(&mut *io).poll_write_vectored(cx, &bufs))?
    } else {
        ready!(Pin::new(&mut *io).poll_write(cx, data))?
    };
    if written == 0 {
        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
    }
    let mut n = written;
    if ctrl_first {
        let c = n.min(leg.pending_ctrl().len());
        if let Some(at) = leg.ctrl_written(c) {
            // The ping went out behind relayed bytes: note how far the peer had read.
            leg.view_at_ping = io.delivery().map(|d| Box::new((at, d)));
        }
        n -= c;
    }
    if n > 0 {
        leg.on_data_written();
    }
    pump.consumed(n);
    Poll::Ready(Ok(true))
}

/// Encodes our pending close for `leg` once nothing more will be relayed into it and all that
/// was relayed is written: the close is the last frame the leg gets.
fn queue_close_when_drained(leg: &mut LegState, pump: &Pump) {
    // A relayed close already ends the leg's stream (the fuzz target found a second close of
    // ours after it, when its sender broke a rule right after sending it).
    if pump.relays_nothing() && pump.is_drained() && !pump.close_forwarded() {
        leg.queue_owed_close();
    }
}

/// Reads from `src` into the pump.
fn poll_read_in<A>(src: &mut Leg<A>, pump: &mut Pump, cx: &mut Context<'_>) -> Result<Read, Event>
where
    A: AsyncRead + SpliceSocket + Unpin,
{
    if !src.st.reads() || src.st.read_parked || src.st.queued_bytes() >= CTRL_QUEUE_LIMIT {
        return Ok(Read::Nothing);
    }
    if pump.is_splicing() {
        return splice_in(src, pump, cx);
    }
    if pump.fill_from_prefix() {
        return Ok(Read::HandshakeLeftover);
    }
    let Some(io) = src.io.as_mut() else {
        return Ok(Read::Nothing);
    };
    let Some(space) = pump.read_space() else {
        return Ok(Read::Nothing);
    };
    let mut rb = ReadBuf::new(space);
    match Pin::new(io).poll_read(cx, &mut rb) {
        Poll::Pending => {
            src.st.read_parked = true;
            pump.release_if_empty();
            Ok(Read::Nothing)
        }
        Poll::Ready(Ok(())) if rb.filled().is_empty() => read_ended(&mut src.st, pump),
        Poll::Ready(Ok(())) => {
            let n = rb.filled().len();
            pump.filled(n);
            Ok(Read::Bytes(n))
        }
        Poll::Ready(Err(e)) => {
            tracing::debug!(side = src.st.side().as_str(), error = %e, "read failed");
            read_ended(&mut src.st, pump)
        }
    }
}

/// Splices the current frame's payload from `src` into the pump's pipe, while the pipe has
/// room; the bytes count as read.
fn splice_in<A>(src: &mut Leg<A>, pump: &mut Pump, cx: &mut Context<'_>) -> Result<Read, Event>
where
    A: SpliceSocket,
{
    let Some(tcp) = src.io.as_ref().and_then(SpliceSocket::splice_socket) else {
        return Ok(Read::Nothing);
    };
    let Some((pipe, len)) = pump.splice_room() else {
        return Ok(Read::Nothing);
    };
    match pipe.poll_fill(tcp, len, cx) {
        Poll::Pending => {
            src.st.read_parked = true;
            Ok(Read::Nothing)
        }
        Poll::Ready(Ok(0)) => read_ended(&mut src.st, pump),
        Poll::Ready(Ok(n)) => {
            pump.spliced_in(n)
                .map_err(|v| Event::Violation(src.st.side(), v))?;
            Ok(Read::Bytes(n))
        }
        Poll::Ready(Err(e)) => {
            tracing::debug!(side = src.st.side().as_str(), error = %e, "splice from the socket failed");
            read_ended(&mut src.st, pump)
        }
    }
}

/// The source's read side ended (EOF or error): normal after its close frame, otherwise the
/// connection was lost.
fn read_ended(src: &mut LegState, pump: &mut Pump) -> Result<Read, Event> {
    pump.release_if_empty();
    if src.inbound_open() {
        return Err(Event::Lost(src.side()));
    }
    src.stop_reading();
    pump.source_gone();
    Ok(Read::Ended)
}

/// Parses everything buffered from `src`, acting on control frames.
fn parse_input(src: &mut LegState, pump: &mut Pump, shared: &mut Shared<'_>) -> Result<(), Event> {
    let side = src.side();
    let masked = side == Side::Client;
    if let Some(text) = shared.text.as_deref()
        && side == Side::Upstream
    {
        // Absorb an upstream answer only while one is owed.
        pump.set_text_cut(text.owed.any());
    }
    loop {
        let tally = &mut *shared.tally;
        let parsed = pump
            .parse(masked, shared.cfg.max_frame_size, |opcode, fin, len| {
                tally.frame(side, opcode, fin, len)
            })
            .map_err(|v| Event::Violation(side, v))?;
        match parsed {
            Parsed::NeedInput => return Ok(()),
            Parsed::Control(c) => on_control(side, c, src, shared),
            Parsed::Text { relayed } => on_text(side, relayed, src, pump, shared),
        }
    }
}

/// A text heartbeat matched: a client's ping is answered (and owed an upstream answer when it
/// went on); an upstream's answer that was cut is absorbed.
fn on_text(
    side: Side,
    relayed: bool,
    src: &mut LegState,
    pump: &mut Pump,
    shared: &mut Shared<'_>,
) {
    let Some(text) = shared.text.as_deref_mut() else {
        return;
    };
    let now = Instant::now();
    let kind = match side {
        Side::Client => {
            src.queue_text(&text.cfg.client_pong);
            // Our answer is a message to the client too: no keep-alive is needed meanwhile.
            if let Some(keepalive) = &mut text.keepalive {
                keepalive.on_sent(now);
            }
            if relayed && text.cfg.upstream_pong.is_some() {
                text.owed.on_ping_sent();
            }
            TextKind::Answered
        }
        Side::Upstream if !relayed => {
            text.owed.on_answer();
            pump.set_text_cut(text.owed.any());
            TextKind::Absorbed
        }
        // Equal to the pong text, but nothing was owed: relayed like any message.
        Side::Upstream => return,
    };
    shared.metrics.text_heartbeat(side, kind);
    shared.info.on_text_heartbeat(side, kind, now);
}

/// Answers a ping, matches a pong, or records a close (which the pump already relayed when it
/// could).
fn on_control(side: Side, control: Control, src: &mut LegState, shared: &mut Shared<'_>) {
    match control {
        Control::Ping(payload) => {
            shared.tally.frame(side, frame::OP_PING, true, 0);
            // A ping after the peer's own close is not answered (RFC 6455 5.5.1: nothing
            // follows a close); otherwise every ping gets its pong, the latest included.
            if src.inbound_open() {
                src.queue_pong(payload.as_slice());
            }
        }
        Control::Pong(payload) => {
            shared.tally.frame(side, frame::OP_PONG, true, 0);
            if let PongMatch::Ours { rtt } = src.hb.on_pong(payload.as_slice(), Instant::now()) {
                shared.info.on_ponged(side);
                if let Some(rtt) = rtt {
                    shared.metrics.observe_rtt(side, rtt);
                    shared.info.on_rtt(side, rtt);
                }
            }
        }
        Control::Close { code, .. } => {
            shared.tally.frame(side, frame::OP_CLOSE, true, 0);
            src.on_close_received();
            shared.outcome.get_or_insert(Outcome {
                initiator: side.into(),
                reason: CloseReason::from_code(code),
                code,
                detail: "close frame",
            });
            *shared.closing = true;
        }
    }
}
