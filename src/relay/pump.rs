//! One direction of a session: frames read from one leg, rewritten in place, written to the other.
//!
//! The buffer holds three regions: `[wpos, ppos)` is processed output waiting to be written to the
//! destination, `[ppos, end)` is input not yet parsed, and `[end, len)` is free. Data and close
//! frames stay where they were read: a masked header keeps its length when its key is replaced,
//! and the payload is unmasked and re-masked by one XOR with `old ^ new`; with
//! [`UpstreamMasking::Forward`] the key and the masked payload are left as they arrived. Every
//! payload the pump itself reads (control frames) is unmasked on a copy. Pings and pongs are cut
//! out of the stream (the output region slides over them), so they are never forwarded.
//! A frame larger than the buffer streams through in pieces: memory stays at one buffer.
//!
//! The payload of a large frame that is relayed unchanged may instead be spliced (see
//! [`super::splice`]): then a pipe holds output too. Its bytes are older than any output in the
//! buffer, and the source is spliced into it only while the buffer holds no output, so the
//! destination gets the stream in order: first the pipe, then the buffer.

use bytes::Bytes;

use super::pool;
use super::splice::Pipe;
use crate::config::UpstreamMasking;
use crate::frame::{self, Header, MAX_CONTROL_PAYLOAD};
use crate::message::{self, MessageError, Messages};
use crate::text_heartbeat::{MAX_TEXT_LEN, TextMatcher};

/// Largest payload of a frame the fast path takes: one with a 7-bit length.
const SMALL_FRAME_PAYLOAD: usize = 125;

/// The first read after a spliced frame: enough for the next frame's header (at most 14 bytes)
/// and a little payload, so that a large frame after it is spliced nearly whole. A small frame
/// costs one more read.
const PEEK_LEN: usize = 16;

/// First byte of a final, unfragmented text frame with no RSV bits: a whole text message.
const WHOLE_TEXT: u8 = 0x80 | frame::OP_TEXT;
/// ...and of a whole binary message.
const WHOLE_BINARY: u8 = 0x80 | frame::OP_BINARY;

/// What the fast path accepts in a frame's second byte, worked out once per parse: the mask
/// bit the source must set, and the largest 7-bit length (125, or less under a lower
/// `--max-frame-size`).
#[derive(Clone, Copy)]
struct SmallLimit {
    mask_bit: u8,
    payload: u8,
}

impl SmallLimit {
    fn new(masked_input: bool, max_frame: u64) -> SmallLimit {
        SmallLimit {
            mask_bit: if masked_input { 0x80 } else { 0 },
            // At most 125, so the cast cannot truncate.
            payload: max_frame.min(SMALL_FRAME_PAYLOAD as u64) as u8,
        }
    }
}

/// What the pump does with the frames it parses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Relay data and close frames to the destination.
    Forward,
    /// Finish relaying the frame in progress, then discard.
    Draining,
    /// Parse frames (to see pings, pongs and the close reply) but relay nothing.
    Discard,
}

/// A protocol violation by the source leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Violation {
    /// Broke RFC 6455 (masking, control frame rules, length encoding, close codes, message
    /// sequence): close 1002.
    Protocol(&'static str),
    /// A text message or close reason that is not UTF-8: close 1007.
    InvalidPayload(&'static str),
    /// A frame exceeded `--max-frame-size`.
    TooBig,
}

impl From<MessageError> for Violation {
    fn from(e: MessageError) -> Self {
        match e {
            MessageError::Sequence(d) => Violation::Protocol(d),
            MessageError::InvalidText(d) => Violation::InvalidPayload(d),
        }
    }
}

/// A control frame that the session must act on.
#[derive(Debug)]
pub(crate) enum Control {
    /// A ping with its (unmasked) payload.
    Ping(ControlPayload),
    /// A pong with its payload.
    Pong(ControlPayload),
    /// A close frame: `forwarded` says whether it went on to the destination.
    Close { code: Option<u16>, forwarded: bool },
}

/// An unmasked control frame payload (at most 125 bytes), kept on the stack.
#[derive(Debug)]
pub(crate) struct ControlPayload {
    bytes: [u8; MAX_CONTROL_PAYLOAD],
    len: usize,
}

impl ControlPayload {
    /// The payload bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Result of parsing as far as the buffered input allows.
pub(crate) enum Parsed {
    /// Nothing more can be parsed until more input arrives.
    NeedInput,
    /// A ping, pong or close frame was handled; call again to continue.
    Control(Control),
    /// A text message matched the direction's [`TextRule`]: it was cut out of the stream, or
    /// relayed when the rule says so. Call again to continue.
    Text {
        /// It went on to the destination.
        relayed: bool,
    },
}

/// Which text messages of a direction are text heartbeats, and whether they are relayed.
#[derive(Clone, Debug)]
pub(crate) struct TextRule {
    /// The texts that match.
    pub(crate) matcher: TextMatcher,
    /// Cut a match out of the stream (answered or absorbed by wsbeat) instead of relaying it.
    /// The session may change this between matches.
    pub(crate) cut: bool,
}

/// Whether the frame at the parse position is a text heartbeat.
enum Candidate {
    /// No: it goes the usual way.
    No,
    /// It could be, but is not wholly buffered yet (at most 131 bytes).
    Incomplete,
    /// A match, cut out of the stream or relayed as the rule says.
    Match { cut: bool },
}

/// State of one direction.
pub(crate) struct Pump {
    buf: Option<Box<[u8]>>,
    /// Bytes the HTTP layer read past the handshake, consumed before the socket.
    prefix: Bytes,
    wpos: usize,
    ppos: usize,
    end: usize,
    mode: Mode,
    /// Payload bytes of the current input frame not yet processed.
    in_left: u64,
    /// Whether the current frame's bytes are relayed (else cut).
    in_forward: bool,
    /// XOR key turning the source's masking into ours (all zero when nothing changes).
    in_mask: [u8; 4],
    /// The source's key and ours, apart, for text that must be read in the clear.
    in_keys: Option<([u8; 4], [u8; 4])>,
    in_off: usize,
    /// The current frame is a relayed data frame, tracked by `messages`.
    in_data: bool,
    /// ...whose payload is text to check.
    in_text: bool,
    /// Message boundaries of the source's stream, and the UTF-8 of its text messages: the one
    /// record of whether the destination's stream is inside a message (RFC 6455 5.4), which
    /// both the sequence check and the insertion of messages of our own go by.
    messages: Messages,
    /// Output bytes that left the buffer so far (written, or moved into the pipe): the stream
    /// offset of `wpos`.
    written: u64,
    /// The pipe the current frame's payload is spliced through, with output not yet written;
    /// `None` unless a large frame is being spliced.
    pipe: Option<Box<Pipe>>,
    /// The next read is a short one ([`PEEK_LEN`]): the last frame was spliced.
    peek: bool,
    /// Stream offsets where the latest relayed frame starts and ends. Frames are contiguous in
    /// the output, so both are boundaries; no older boundary needs remembering (see
    /// [`Pump::out_until_boundary`]).
    last_start: u64,
    last_end: u64,
    /// A close frame was relayed; once written, the destination has been sent a close.
    close_forwarded: bool,
    /// The source died mid-frame: the destination's stream can never reach a boundary again.
    truncated: bool,
    /// The buffer is full of output the destination has not taken (backpressure).
    stalled: bool,
    /// No extension was negotiated, so RSV bits and reserved opcodes are errors (RFC 6455 5.2).
    /// With one, they pass through: the proxy cannot know what an extension assigns to them.
    strict: bool,
    /// Whether masked input gets a fresh key or keeps its own (only client input is masked).
    masking: UpstreamMasking,
    /// Text heartbeats to look for; `None` (the default) skips the check entirely.
    text: Option<TextRule>,
}

impl Pump {
    /// A pump starting with the bytes the handshake read ahead. `strict`: no extension was
    /// negotiated, so RSV bits and reserved opcodes are violations. `masking`: what happens to
    /// the key of masked input (it has no effect on unmasked input).
    pub(crate) fn new(prefix: Bytes, strict: bool, masking: UpstreamMasking) -> Self {
        Pump {
            buf: None,
            // An empty slice may still pin hyper's whole read buffer: keep none.
            prefix: if prefix.is_empty() {
                Bytes::new()
            } else {
                prefix
            },
            wpos: 0,
            ppos: 0,
            end: 0,
            mode: Mode::Forward,
            in_left: 0,
            in_forward: false,
            in_mask: [0; 4],
            in_keys: None,
            in_off: 0,
            in_data: false,
            in_text: false,
            // An extension (permessage-deflate) may compress text: only plain text is checked.
            messages: Messages::new(strict),
            written: 0,
            pipe: None,
            peek: false,
            last_start: 0,
            last_end: 0,
            close_forwarded: false,
            truncated: false,
            stalled: false,
            strict,
            masking,
            text: None,
        }
    }

    /// A close frame was relayed; once the pump is drained, the destination has it.
    pub(crate) fn close_forwarded(&self) -> bool {
        self.close_forwarded
    }

    /// The source died mid-frame: the destination can never be sent another frame.
    pub(crate) fn is_truncated(&self) -> bool {
        self.truncated
    }

    /// The buffer is full of output the destination has not taken, so the source is not read.
    pub(crate) fn is_stalled(&self) -> bool {
        self.stalled
    }

    /// Nothing more will be relayed: the destination may be sent our own close once drained.
    pub(crate) fn relays_nothing(&self) -> bool {
        self.mode == Mode::Discard
    }

    /// Looks for text heartbeats as `rule` says (`None`: not at all).
    pub(crate) fn set_text_rule(&mut self, rule: Option<TextRule>) {
        self.text = rule;
    }

    /// Whether a text heartbeat that matches is cut out of the stream (else relayed).
    pub(crate) fn set_text_cut(&mut self, cut: bool) {
        if let Some(rule) = &mut self.text {
            rule.cut = cut;
        }
    }

    /// Processed bytes waiting for the destination.
    pub(crate) fn output(&self) -> &[u8] {
        match &self.buf {
            Some(b) => &b[self.wpos..self.ppos],
            None => &[],
        }
    }

    /// How many output bytes to write before a control frame can be slotted in: up to the start
    /// of the latest frame when older ones are still queued (writing them first costs nothing,
    /// they are buffered already), else to its end.
    pub(crate) fn out_until_boundary(&self) -> u64 {
        let written = self.delivered_out();
        if written < self.last_start {
            self.last_start - written
        } else if written == self.last_start || written >= self.last_end {
            0
        } else {
            self.last_end - written
        }
    }

    /// True when everything relayed so far is written and the output sits at a frame boundary.
    pub(crate) fn is_drained(&self) -> bool {
        self.wpos == self.ppos && self.piped() == 0 && self.out_until_boundary() == 0
    }

    /// Output bytes in the pipe, written before those in the buffer.
    fn piped(&self) -> usize {
        self.pipe.as_ref().map_or(0, |p| p.held())
    }

    /// Output is waiting for the destination, in the pipe or in the buffer.
    pub(crate) fn has_output(&self) -> bool {
        self.wpos != self.ppos || self.piped() > 0
    }

    /// Output bytes written to the destination so far (not counting those still in the pipe).
    pub(crate) fn delivered_out(&self) -> u64 {
        self.written - self.piped() as u64
    }

    /// The destination took everything relayed so far, but the frame in progress is not
    /// finished: its rest has yet to come from the source, and a control frame for the
    /// destination waits for it.
    pub(crate) fn awaits_source(&self) -> bool {
        !self.has_output() && self.out_until_boundary() > 0
    }

    /// True when a data message of our own may be written to the destination now: everything
    /// relayed so far is written, ends at a frame boundary and finished its message, and the
    /// pump still relays (nothing of ours goes after a relayed close).
    pub(crate) fn between_messages(&self) -> bool {
        self.mode == Mode::Forward && !self.messages.in_message() && self.is_drained()
    }

    /// Stream offset of the end of the latest relayed frame: when it moves, something was
    /// relayed toward the destination.
    pub(crate) fn relayed_end(&self) -> u64 {
        self.last_end
    }

    /// Stops relaying at the next input frame boundary.
    pub(crate) fn drain(&mut self) {
        if self.mode == Mode::Forward {
            self.mode = if self.in_left == 0 {
                Mode::Discard
            } else {
                Mode::Draining
            };
        }
    }

    /// The destination is gone: drop pending output and relay nothing more.
    pub(crate) fn drop_output(&mut self) {
        if let Some(pipe) = self.pipe.take() {
            // Whatever it holds can go nowhere: it is closed with it.
            Pipe::give(pipe);
        }
        self.wpos = self.ppos;
        self.last_start = self.written;
        self.last_end = self.written;
        self.in_forward = false;
        self.mode = Mode::Discard;
        self.release_if_empty();
    }

    /// The source is gone: nothing more will arrive. Marks the stream truncated if a frame was
    /// cut off in the middle of being relayed.
    pub(crate) fn source_gone(&mut self) {
        if self.in_left > 0 && self.in_forward {
            self.truncated = true;
        }
        self.in_left = 0;
        self.in_forward = false;
        self.mode = Mode::Discard;
        self.prefix = Bytes::new();
        // Unparsed input (a partial header) can never complete.
        self.end = self.ppos;
        self.release_if_empty();
    }

    /// Free space to read into, taking a pooled buffer if needed; `None` when the buffer is full
    /// of output the destination has not taken yet.
    pub(crate) fn read_space(&mut self) -> Option<&mut [u8]> {
        let buf = self.buf.get_or_insert_with(pool::take);
        if self.end == buf.len() {
            if self.wpos == 0 {
                self.stalled = true;
                return None;
            }
            buf.copy_within(self.wpos..self.end, 0);
            self.ppos -= self.wpos;
            self.end -= self.wpos;
            self.wpos = 0;
        }
        self.stalled = false;
        let stop = if self.peek {
            (self.end + PEEK_LEN).min(buf.len())
        } else {
            buf.len()
        };
        Some(&mut buf[self.end..stop])
    }

    /// Moves read-ahead bytes from the handshake into the buffer; true if there were any.
    pub(crate) fn fill_from_prefix(&mut self) -> bool {
        if self.prefix.is_empty() {
            return false;
        }
        let mut prefix = std::mem::take(&mut self.prefix);
        let Some(space) = self.read_space() else {
            self.prefix = prefix;
            return false;
        };
        let n = space.len().min(prefix.len());
        space[..n].copy_from_slice(&prefix.split_to(n));
        if !prefix.is_empty() {
            self.prefix = prefix;
        }
        self.end += n;
        true
    }

    /// Records `n` bytes read into the space returned by [`Pump::read_space`].
    pub(crate) fn filled(&mut self, n: usize) {
        self.end += n;
        self.peek = false;
    }

    /// Gives the buffer back to the pool when it holds nothing.
    pub(crate) fn release_if_empty(&mut self) {
        if self.wpos == self.end {
            self.wpos = 0;
            self.ppos = 0;
            self.end = 0;
            if let Some(buf) = self.buf.take() {
                pool::give(buf);
            }
        }
    }

    /// Records that `n` output bytes were written.
    pub(crate) fn consumed(&mut self, n: usize) {
        self.wpos += n;
        self.written += n as u64;
        self.release_if_empty();
    }

    /// Whether the rest of the current frame should be spliced: a payload of at least `min`
    /// bytes (`min` 0: never), of which at least half (and at least one byte) is still to
    /// come, in a frame relayed byte for byte (no new key, no text to check), with all
    /// buffered input parsed and the handshake's read-ahead used up (the socket's bytes come
    /// after it).
    pub(crate) fn wants_splice(&self, min: u64) -> bool {
        self.in_left > 0
            && self.in_left >= min / 2
            && min > 0
            && self.in_left + self.in_off as u64 >= min
            && self.pipe.is_none()
            && self.in_forward
            && !self.in_text
            && self.in_mask == [0; 4]
            && self.ppos == self.end
            && self.prefix.is_empty()
    }

    /// Starts splicing the current frame through `pipe`. The output in the buffer (the frame's
    /// header, the payload read with it, anything before it) moves into the pipe first, so that
    /// the destination gets it all in one piece; if the pipe is too small for that, it is
    /// written from the buffer as usual before anything is spliced.
    ///
    /// # Errors
    /// Writing into the pipe failed; the pump is unchanged and the pipe dropped.
    pub(crate) fn start_splice(&mut self, mut pipe: Box<Pipe>) -> std::io::Result<()> {
        let out = self.output();
        if !out.is_empty() && pipe.fits(out.len()) {
            let n = pipe.push(out)?;
            self.consumed(n);
        }
        self.pipe = Some(pipe);
        Ok(())
    }

    /// A frame is being spliced (or its last bytes wait in the pipe): the source is read only
    /// through [`Pump::splice_room`].
    pub(crate) fn is_splicing(&self) -> bool {
        self.pipe.is_some()
    }

    /// The pipe and how many bytes to splice into it, when the source may be spliced now: the
    /// frame has payload left, no output waits in the buffer (it goes before), and the pipe
    /// surely has room. Otherwise the destination holds the source up, as a full buffer does.
    pub(crate) fn splice_room(&mut self) -> Option<(&mut Pipe, usize)> {
        let pipe = self.pipe.as_deref_mut()?;
        if self.in_left == 0 || self.wpos != self.ppos || !pipe.has_room() {
            self.stalled = true;
            return None;
        }
        self.stalled = false;
        Some((pipe, usize::try_from(self.in_left).unwrap_or(usize::MAX)))
    }

    /// Records `n` payload bytes spliced from the source into the pipe.
    ///
    /// # Errors
    /// The frame ended a message that its sequence does not allow to end there.
    pub(crate) fn spliced_in(&mut self, n: usize) -> Result<(), Violation> {
        self.written += n as u64;
        self.in_off += n;
        self.in_left -= n as u64;
        if self.in_left == 0 {
            if self.in_data {
                self.messages.on_frame_end()?;
            }
            if self.mode == Mode::Draining {
                self.mode = Mode::Discard;
            }
        }
        Ok(())
    }

    /// Bytes went from the pipe to the destination. Once the frame is all through, the pipe
    /// goes back to the pool, and the next read is a short one: the next frame may be as large.
    pub(crate) fn spliced_out(&mut self) {
        if self.in_left == 0
            && let Some(pipe) = self.pipe.take_if(|p| p.held() == 0)
        {
            Pipe::give(pipe);
            self.stalled = false;
            self.peek = true;
        }
    }

    /// The pipe, to write from.
    pub(crate) fn pipe_mut(&mut self) -> Option<&mut Pipe> {
        self.pipe.as_deref_mut().filter(|p| p.held() > 0)
    }

    /// Parses and rewrites input until a control frame needs the session's attention or input
    /// runs out. Each data frame's header is reported to `on_data(opcode, fin, frame_len)`
    /// without returning: a batch of small frames goes through in one call.
    ///
    /// `masked_input`: frames from the source must be masked (client) or must not be (upstream).
    /// Relayed masked frames are re-masked with a fresh key, or keep theirs with
    /// [`UpstreamMasking::Forward`].
    ///
    /// # Errors
    /// A [`Violation`] by the source; the offending frame is left unconsumed.
    pub(crate) fn parse(
        &mut self,
        masked_input: bool,
        max_frame: u64,
        mut on_data: impl FnMut(u8, bool, u64),
    ) -> Result<Parsed, Violation> {
        let limit = SmallLimit::new(masked_input, max_frame);
        loop {
            if self.in_left > 0 {
                if !self.advance_payload()? {
                    return Ok(Parsed::NeedInput);
                }
                continue;
            }
            if self.mode == Mode::Draining {
                self.mode = Mode::Discard;
            }
            if let Some((opcode, len)) = self.relay_small_data_frame(masked_input, limit) {
                on_data(opcode, true, len);
                continue;
            }
            let Some(buf) = &self.buf else {
                return Ok(Parsed::NeedInput);
            };
            let h = match frame::parse_header(&buf[self.ppos..self.end]) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(Parsed::NeedInput),
                Err(_) => return Err(Violation::Protocol("invalid frame length")),
            };
            if h.mask.is_some() != masked_input {
                return Err(Violation::Protocol(if masked_input {
                    "unmasked frame from client"
                } else {
                    "masked frame from upstream"
                }));
            }
            if self.strict && (h.rsv != 0 || is_reserved_opcode(h.opcode)) {
                return Err(Violation::Protocol(
                    "reserved bits or opcode without a negotiated extension",
                ));
            }
            if h.is_control() {
                if h.payload_len > MAX_CONTROL_PAYLOAD as u64 || !h.fin {
                    return Err(Violation::Protocol("oversized or fragmented control frame"));
                }
                // No extension gives control frames RSV bits (RFC 7692 6.1 forbids RSV1 there).
                if h.rsv != 0
                    && matches!(h.opcode, frame::OP_PING | frame::OP_PONG | frame::OP_CLOSE)
                {
                    return Err(Violation::Protocol("control frame with RSV bits set"));
                }
                if matches!(h.opcode, frame::OP_PING | frame::OP_PONG | frame::OP_CLOSE) {
                    return match self.control(&h)? {
                        Some(c) => Ok(Parsed::Control(c)),
                        None => Ok(Parsed::NeedInput),
                    };
                }
            } else if h.payload_len > max_frame {
                return Err(Violation::TooBig);
            }
            let text = match &self.text {
                Some(rule) => self.text_candidate(rule, &h, masked_input),
                None => Candidate::No,
            };
            match text {
                Candidate::No => {}
                Candidate::Incomplete => return Ok(Parsed::NeedInput),
                Candidate::Match { cut: true } => {
                    on_data(h.opcode, h.fin, h.frame_len());
                    self.cut(h.frame_len() as usize);
                    return Ok(Parsed::Text { relayed: false });
                }
                Candidate::Match { cut: false } => {}
            }
            self.start_data_frame(&h)?;
            on_data(h.opcode, h.fin, h.frame_len());
            if let Candidate::Match { cut: false } = text {
                return Ok(Parsed::Text { relayed: true });
            }
        }
    }

    /// Checks the frame whose header `h` is at the parse position against `rule`. Only a
    /// complete, unfragmented, uncompressed text frame with a 7-bit length, while relaying and
    /// between messages, can match. The fast path sends here only text frames whose length is
    /// that of a configured text, so other traffic never pays for this.
    #[cold]
    #[inline(never)]
    fn text_candidate(&self, rule: &TextRule, h: &Header, masked_input: bool) -> Candidate {
        let len = h.payload_len as usize;
        if self.mode != Mode::Forward
            || self.messages.in_message()
            || h.opcode != frame::OP_TEXT
            || !h.fin
            || h.rsv != 0
            || !rule.matcher.may_match(len)
        {
            return Candidate::No;
        }
        let Some(buf) = &self.buf else {
            return Candidate::No;
        };
        let Some(whole) = buf[self.ppos..self.end].get(..h.frame_len() as usize) else {
            return Candidate::Incomplete;
        };
        let mut payload = [0u8; MAX_TEXT_LEN];
        let payload = &mut payload[..len];
        payload.copy_from_slice(&whole[h.header_len..]);
        if let Some(key) = h.mask {
            frame::apply_mask(payload, key, 0);
        }
        debug_assert_eq!(h.mask.is_some(), masked_input);
        if rule.matcher.matches(payload) {
            Candidate::Match { cut: rule.cut }
        } else {
            Candidate::No
        }
    }

    /// The fast path for the most common frame: a whole message in one data frame with a 7-bit
    /// length, no RSV bits and the expected masking, wholly buffered, while relaying and between
    /// messages (text only if it is UTF-8, and not if it may be a text heartbeat). It is
    /// re-masked and passed on in one step, with the same result as [`Pump::start_frame`] and
    /// [`Pump::advance_payload`] would give it, and no change of message state; anything else
    /// returns `None` and goes the general way, which tracks the sequence and reports
    /// violations. Returns `(opcode, frame_len)`. With 64-byte messages this path is most of
    /// the work: it cut the proxy's user-space instructions per message from 761 to 592
    /// (callgrind, docs/PERFORMANCE.md).
    ///
    /// `limit` is [`SmallLimit`]: each header byte is judged with one comparison.
    #[inline(always)]
    fn relay_small_data_frame(
        &mut self,
        masked_input: bool,
        limit: SmallLimit,
    ) -> Option<(u8, u64)> {
        let buf = self.buf.as_mut()?;
        let input = &mut buf[self.ppos..self.end];
        let [b0, b1, ..] = *input else {
            return None;
        };
        // A final text (0x81) or binary (0x82) frame, no RSV bits: a whole message. The mask
        // bit flipped to what the source must send leaves the 7-bit length, or 128 and more.
        let payload = b1 ^ limit.mask_bit;
        if b0.wrapping_sub(WHOLE_TEXT) > WHOLE_BINARY - WHOLE_TEXT
            || payload > limit.payload
            || self.mode != Mode::Forward
            || self.messages.in_message()
        {
            return None;
        }
        let header = if masked_input { 6 } else { 2 };
        let frame = input.get_mut(..header + usize::from(payload))?;
        if b0 == WHOLE_TEXT
            && !small_text_stays(self.text.as_ref(), &self.messages, frame, masked_input)
        {
            return None;
        }
        if masked_input && self.masking == UpstreamMasking::Fresh {
            let (key, body) = frame[2..].split_at_mut(4);
            let new = frame::random_mask();
            let old = [key[0], key[1], key[2], key[3]];
            key.copy_from_slice(&new);
            frame::apply_mask(body, frame::xor_keys(old, new), 0);
        }
        let len = frame.len();
        self.last_start = self.written + (self.ppos - self.wpos) as u64;
        self.last_end = self.last_start + len as u64;
        self.ppos += len;
        // 1 or 2 by the first test, which the metrics' opcode lookup then folds away.
        Some((b0 - 0x80, len as u64))
    }

    /// Processes as much of the current payload as is buffered; false when none is.
    ///
    /// # Errors
    /// Text that is not UTF-8; the chunk is left unconsumed.
    #[inline(always)]
    fn advance_payload(&mut self) -> Result<bool, Violation> {
        let avail = self.end - self.ppos;
        if avail == 0 {
            return Ok(false);
        }
        let n = (avail as u64).min(self.in_left) as usize;
        if self.in_forward {
            if self.in_text {
                self.check_text(n)?;
            } else if self.in_mask != [0; 4]
                && let Some(buf) = &mut self.buf
            {
                frame::apply_mask(
                    &mut buf[self.ppos..self.ppos + n],
                    self.in_mask,
                    self.in_off,
                );
            }
            if self.in_data && n as u64 == self.in_left {
                self.messages.on_frame_end()?;
            }
            self.in_off += n;
            self.ppos += n;
        } else {
            self.cut(n);
        }
        self.in_left -= n as u64;
        if self.in_left == 0 && self.mode == Mode::Draining {
            self.mode = Mode::Discard;
        }
        Ok(true)
    }

    /// Checks the next `n` payload bytes of a relayed text frame, re-masking them on the way
    /// when the source masked them: unmasked with the source's key, checked, masked with ours.
    fn check_text(&mut self, n: usize) -> Result<(), Violation> {
        let Some(buf) = &mut self.buf else {
            return Ok(());
        };
        let chunk = &mut buf[self.ppos..self.ppos + n];
        let Some((theirs, ours)) = self.in_keys else {
            return Ok(self.messages.on_text(chunk)?);
        };
        frame::apply_mask(chunk, theirs, self.in_off);
        let checked = self.messages.on_text(chunk);
        frame::apply_mask(chunk, ours, self.in_off);
        Ok(checked?)
    }

    /// Starts the data frame whose header is at `ppos`: relayed and tracked while relaying,
    /// else cut.
    fn start_data_frame(&mut self, h: &Header) -> Result<(), Violation> {
        let forward = self.mode == Mode::Forward;
        // Reserved opcodes reach here only with an extension, which gives them their meaning.
        let tracked = forward && !h.is_control();
        let text = tracked && self.messages.on_frame(h.opcode, h.fin)?;
        if tracked && h.payload_len == 0 {
            self.messages.on_frame_end()?;
        }
        let before = (self.ppos, self.last_start, self.last_end);
        self.start_frame(h, forward);
        self.in_data = tracked && h.payload_len > 0;
        self.in_text = text;
        if text && let Err(e) = self.advance_payload() {
            // The first bytes are bad: take the header back, so that the destination never
            // sees the frame (a frame cut off after it has begun can only end the connection).
            (self.ppos, self.last_start, self.last_end) = before;
            self.in_left = 0;
            self.in_forward = false;
            return Err(e);
        }
        Ok(())
    }

    /// Starts relaying (or cutting) the frame whose header is at `ppos`.
    #[inline(always)]
    fn start_frame(&mut self, h: &Header, forward: bool) {
        self.in_left = h.payload_len;
        self.in_forward = forward;
        self.in_data = false;
        self.in_text = false;
        self.in_keys = None;
        if !forward {
            self.cut(h.header_len);
            return;
        }
        self.last_start = self.written + (self.ppos - self.wpos) as u64;
        self.last_end = self.last_start + h.frame_len();
        self.in_mask = [0; 4];
        self.in_off = 0;
        // With `Forward` the client's key and masked payload go on as they are: `in_mask`
        // stays zero, so `advance_payload` touches no byte (but text is still read in the clear
        // to be checked, and masked again with the same key).
        if let Some(old) = h.mask {
            self.in_keys = Some((old, old));
        }
        if self.masking == UpstreamMasking::Fresh
            && let (Some(old), Some(off), Some(buf)) = (h.mask, h.mask_offset(), &mut self.buf)
        {
            let new = frame::random_mask();
            buf[self.ppos + off..self.ppos + off + 4].copy_from_slice(&new);
            self.in_mask = frame::xor_keys(old, new);
            self.in_keys = Some((old, new));
        }
        self.ppos += h.header_len;
    }

    /// Handles a complete ping, pong or close frame; `None` until it is all buffered.
    fn control(&mut self, h: &Header) -> Result<Option<Control>, Violation> {
        let len = h.frame_len() as usize;
        let Some(buf) = &self.buf else {
            return Ok(None);
        };
        if self.end - self.ppos < len {
            return Ok(None);
        }
        let mut payload = ControlPayload {
            bytes: [0; MAX_CONTROL_PAYLOAD],
            len: h.payload_len as usize,
        };
        let start = self.ppos + h.header_len;
        payload.bytes[..payload.len].copy_from_slice(&buf[start..self.ppos + len]);
        if let Some(key) = h.mask {
            frame::apply_mask(&mut payload.bytes[..payload.len], key, 0);
        }
        let control = match h.opcode {
            frame::OP_PING => Control::Ping(payload),
            frame::OP_PONG => Control::Pong(payload),
            _ => {
                check_close_payload(payload.as_slice())?;
                let forwarded = self.mode == Mode::Forward;
                if forwarded {
                    self.start_frame(h, true);
                    self.advance_payload()?;
                    self.close_forwarded = true;
                    self.mode = Mode::Discard;
                }
                Control::Close {
                    code: frame::close_code_of(payload.as_slice()),
                    forwarded,
                }
            }
        };
        if !matches!(
            control,
            Control::Close {
                forwarded: true,
                ..
            }
        ) {
            self.cut(len);
        }
        Ok(Some(control))
    }

    /// Removes `n` input bytes at `ppos` by sliding the pending output over them.
    fn cut(&mut self, n: usize) {
        if let Some(buf) = &mut self.buf
            && self.wpos < self.ppos
        {
            buf.copy_within(self.wpos..self.ppos, self.wpos + n);
        }
        self.wpos += n;
        self.ppos += n;
    }
}

/// A close payload is empty, or a code a peer may send followed by a UTF-8 reason (RFC 6455
/// 5.5.1, 7.4); a legacy upstream is never shown anything else.
fn check_close_payload(payload: &[u8]) -> Result<(), Violation> {
    match payload {
        [] => Ok(()),
        [_] => Err(Violation::Protocol("close frame with a one-byte payload")),
        [a, b, reason @ ..] => {
            if !frame::is_valid_close_code(u16::from_be_bytes([*a, *b])) {
                return Err(Violation::Protocol("close code a peer may not send"));
            }
            if simdutf8::basic::from_utf8(reason).is_err() {
                return Err(Violation::InvalidPayload("close reason is not UTF-8"));
            }
            Ok(())
        }
    }
}

/// Whether a whole small text message stays on the fast path: it is not as long as a
/// configured text heartbeat (the general path compares those), and it is UTF-8 when text is
/// checked (else the general path reports it).
#[inline(always)]
fn small_text_stays(
    text: Option<&TextRule>,
    messages: &Messages,
    frame: &[u8],
    masked_input: bool,
) -> bool {
    let payload = frame.len() - if masked_input { 6 } else { 2 };
    if let Some(rule) = text
        && rule.matcher.may_match(payload)
    {
        return false;
    }
    !messages.checks_text() || is_small_text_valid(frame, masked_input)
}

/// Whether the payload of a whole small text frame is UTF-8, read in the clear on a copy when
/// masked, so that the frame stays as it came either way.
#[inline(always)]
fn is_small_text_valid(frame: &[u8], masked: bool) -> bool {
    if !masked {
        return message::check_whole_text(&frame[2..]).is_ok();
    }
    let (key, body) = frame[2..].split_at(4);
    let mut clear = [0u8; SMALL_FRAME_PAYLOAD];
    let clear = &mut clear[..body.len()];
    clear.copy_from_slice(body);
    frame::apply_mask(clear, [key[0], key[1], key[2], key[3]], 0);
    message::check_whole_text(clear).is_ok()
}

/// Opcodes RFC 6455 reserves for future use: 0x3-0x7 (data) and 0xB-0xF (control).
fn is_reserved_opcode(opcode: u8) -> bool {
    matches!(opcode, 0x3..=0x7 | 0xB..=0xF)
}

impl Drop for Pump {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            pool::give(buf);
        }
        if let Some(pipe) = self.pipe.take() {
            Pipe::give(pipe);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{OP_BINARY, OP_CLOSE, OP_PING, OP_TEXT, encode_close, encode_frame};

    fn feed(p: &mut Pump, bytes: &[u8]) {
        let space = p.read_space().expect("space");
        space[..bytes.len()].copy_from_slice(bytes);
        p.filled(bytes.len());
    }

    fn drain_output(p: &mut Pump) -> Vec<u8> {
        let out = p.output().to_vec();
        p.consumed(out.len());
        out
    }

    fn parse_all(p: &mut Pump, masked: bool) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let parsed = p
                .parse(masked, 1 << 20, |op, fin, len| {
                    seen.push(format!("data {op} {fin} {len}"))
                })
                .expect("valid");
            match parsed {
                Parsed::NeedInput => return seen,
                Parsed::Control(Control::Ping(pl)) => {
                    seen.push(format!("ping {:?}", pl.as_slice()))
                }
                Parsed::Control(Control::Pong(pl)) => {
                    seen.push(format!("pong {:?}", pl.as_slice()))
                }
                Parsed::Control(Control::Close { code, forwarded }) => {
                    seen.push(format!("close {code:?} {forwarded}"))
                }
                Parsed::Text { relayed } => seen.push(format!("text heartbeat {relayed}")),
            }
        }
    }

    /// Decodes frames of a byte stream into (opcode, fin, unmasked payload, mask key).
    type Decoded = (u8, bool, Vec<u8>, Option<[u8; 4]>);

    fn frames(mut bytes: &[u8]) -> Vec<Decoded> {
        let mut out = Vec::new();
        while let Ok(Some(h)) = frame::parse_header(bytes) {
            let mut payload = bytes[h.header_len..h.frame_len() as usize].to_vec();
            if let Some(k) = h.mask {
                frame::apply_mask(&mut payload, k, 0);
            }
            out.push((h.opcode, h.fin, payload, h.mask));
            bytes = &bytes[h.frame_len() as usize..];
        }
        out
    }

    #[test]
    fn client_frames_are_remasked_and_pings_cut_out() {
        let mut p = Pump::new(Bytes::new(), true, UpstreamMasking::Fresh);
        let mut input = Vec::new();
        encode_frame(&mut input, false, OP_TEXT, b"hel", Some([1, 2, 3, 4]));
        encode_frame(
            &mut input,
            true,
            OP_PING,
            b"are you there",
            Some([5, 6, 7, 8]),
        );
        encode_frame(
            &mut input,
            true,
            frame::OP_CONTINUATION,
            b"lo",
            Some([9, 9, 9, 9]),
        );
        feed(&mut p, &input);
        let seen = parse_all(&mut p, true);
        assert_eq!(seen[1], format!("ping {:?}", b"are you there"));
        let out = frames(&drain_output(&mut p));
        assert_eq!(out.len(), 2);
        assert_eq!(
            (out[0].0, out[0].1, out[0].2.as_slice()),
            (OP_TEXT, false, &b"hel"[..])
        );
        assert_eq!(
            (out[1].0, out[1].1, out[1].2.as_slice()),
            (0, true, &b"lo"[..])
        );
        assert_ne!(
            out[0].3,
            Some([1, 2, 3, 4]),
            "a fresh key replaces the client's"
        );
        assert!(p.is_drained());
    }

    /// With `Forward`, relayed client frames are byte for byte what the client sent (its keys,
    /// its masked payloads, on the fast and on the general path), while the pump still reads
    /// the payloads it acts on (ping, close) unmasked, however the input is cut into reads.
    #[test]
    fn forward_masking_relays_client_bytes_unchanged_and_still_reads_control_payloads() {
        let mut input = Vec::new();
        let mut expected = Vec::new();
        encode_frame(&mut input, false, OP_TEXT, b"hel", Some([1, 2, 3, 4]));
        let ping_at = input.len();
        encode_frame(
            &mut input,
            true,
            OP_PING,
            b"are you there",
            Some([5, 6, 7, 8]),
        );
        expected.extend_from_slice(&input[..ping_at]);
        let rest = input.len();
        encode_frame(&mut input, true, 0, b"lo", Some([9, 9, 9, 9]));
        let payload: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        encode_frame(
            &mut input,
            true,
            OP_BINARY,
            &payload,
            Some([0xA5, 0x5A, 0xFF, 0x01]),
        );
        encode_close(&mut input, 4001, "bye", Some([0x10, 0x20, 0x30, 0x40]));
        expected.extend_from_slice(&input[rest..]);
        for read in [1, 5, 64, input.len()] {
            let mut p = Pump::new(Bytes::new(), true, UpstreamMasking::Forward);
            let (mut relayed, mut seen) = (Vec::new(), Vec::new());
            for chunk in input.chunks(read) {
                feed(&mut p, chunk);
                seen.extend(parse_all(&mut p, true));
                relayed.extend(drain_output(&mut p));
            }
            assert_eq!(relayed, expected, "reads of {read}");
            assert!(
                seen.contains(&format!("ping {:?}", b"are you there")),
                "{seen:?}"
            );
            assert!(
                seen.contains(&"close Some(4001) true".to_owned()),
                "{seen:?}"
            );
        }
    }

    /// Small whole frames take a fast path, partial and long ones the general one: however
    /// the stream is cut into reads, the relayed frames and the reported headers are the same.
    #[test]
    fn every_way_of_cutting_the_input_relays_the_same_frames() {
        let sizes = [0usize, 1, 5, 64, 125, 126, 300, 70_000];
        let mut input = Vec::new();
        let mut expected = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let payload: Vec<u8> = (0..n).map(|b| (b * 7 + i) as u8).collect();
            // Binary: the payloads are not UTF-8 (text is checked, see the tests below).
            let (op, fin) = if i % 2 == 0 {
                (OP_BINARY, false)
            } else {
                (0, true)
            };
            let start = input.len();
            encode_frame(&mut input, fin, op, &payload, Some([i as u8, 9, 8, 7]));
            expected.push((op, fin, payload, input.len() - start));
        }
        for masked in [true, false] {
            let stream = if masked {
                input.clone()
            } else {
                // The same frames unmasked, as an upstream sends them.
                let mut plain = Vec::new();
                for (op, fin, payload, _) in &expected {
                    encode_frame(&mut plain, *fin, *op, payload, None);
                }
                plain
            };
            for read in [1, 3, 7, 64, 131, 4096, stream.len()] {
                let mut p = Pump::new(Bytes::new(), true, UpstreamMasking::Fresh);
                let (mut relayed, mut seen) = (Vec::new(), Vec::new());
                for mut chunk in stream.chunks(read) {
                    while !chunk.is_empty() {
                        let space = p.read_space().expect("drained, so there is space");
                        let n = space.len().min(chunk.len());
                        space[..n].copy_from_slice(&chunk[..n]);
                        p.filled(n);
                        chunk = &chunk[n..];
                        seen.extend(parse_all(&mut p, masked));
                        relayed.extend(drain_output(&mut p));
                    }
                }
                let out = frames(&relayed);
                assert_eq!(out.len(), expected.len(), "reads of {read}");
                for ((op, fin, payload, len), got) in expected.iter().zip(&out) {
                    assert_eq!(
                        (got.0, got.1, &got.2),
                        (*op, *fin, payload),
                        "reads of {read}"
                    );
                    assert_eq!(got.3.is_some(), masked);
                    let frame_len = if masked { *len } else { len - 4 };
                    let want = format!("data {op} {fin} {frame_len}");
                    assert!(
                        seen.contains(&want),
                        "{want} not in {seen:?}, reads of {read}"
                    );
                }
                if masked {
                    assert_ne!(
                        out[2].3,
                        Some([2, 9, 8, 7]),
                        "a fresh key replaces the client's"
                    );
                }
                assert!(p.is_drained());
            }
        }
    }

    fn ping_rule(cut: bool) -> Option<TextRule> {
        let matcher = TextMatcher::new(&[Bytes::from_static(b"ping")]).expect("texts");
        Some(TextRule { matcher, cut })
    }

    /// A text ping is recognised however the reads cut it, is cut out of the stream, and the
    /// frames around it are relayed as they were.
    #[test]
    fn text_ping_is_recognised_across_reads_and_cut() {
        let mut input = Vec::new();
        encode_frame(&mut input, true, OP_TEXT, b"before", Some([1, 2, 3, 4]));
        encode_frame(&mut input, true, OP_TEXT, b"ping", Some([5, 6, 7, 8]));
        encode_frame(&mut input, true, OP_TEXT, b"after", Some([9, 9, 9, 9]));
        for read in [1, 3, 7, input.len()] {
            let mut p = Pump::new(Bytes::new(), true, UpstreamMasking::Fresh);
            p.text = ping_rule(true);
            let (mut seen, mut relayed) = (Vec::new(), Vec::new());
            for chunk in input.chunks(read) {
                feed(&mut p, chunk);
                seen.extend(parse_all(&mut p, true));
                relayed.extend(drain_output(&mut p));
            }
            assert_eq!(
                seen.iter()
                    .filter(|s| s.starts_with("text heartbeat"))
                    .count(),
                1,
                "reads of {read}: {seen:?}"
            );
            assert!(seen.contains(&"text heartbeat false".to_string()));
            let payloads: Vec<Vec<u8>> = frames(&relayed).into_iter().map(|f| f.2).collect();
            assert_eq!(
                payloads,
                [b"before".to_vec(), b"after".to_vec()],
                "reads of {read}"
            );
            assert!(p.between_messages());
        }
    }

    /// Near misses go the usual way: a longer text, a fragmented `ping`, a binary `ping`,
    /// and a `ping` with RSV1 (compressed) under an extension.
    #[test]
    fn only_whole_uncompressed_text_frames_are_candidates() {
        let mut input = Vec::new();
        encode_frame(&mut input, true, OP_TEXT, b"pings", None);
        encode_frame(&mut input, false, OP_TEXT, b"pi", None);
        encode_frame(&mut input, true, frame::OP_CONTINUATION, b"ng", None);
        encode_frame(&mut input, true, OP_BINARY, b"ping", None);
        let start = input.len();
        encode_frame(&mut input, true, OP_TEXT, b"ping", None);
        input[start] |= 0x40;
        let mut p = Pump::new(Bytes::new(), false, UpstreamMasking::Fresh);
        p.text = ping_rule(true);
        feed(&mut p, &input);
        let seen = parse_all(&mut p, false);
        assert!(!seen.iter().any(|s| s.starts_with("text")), "{seen:?}");
        assert_eq!(drain_output(&mut p), input, "relayed byte for byte");
    }

    /// With `cut: false` (forwarded pings) the match is reported and relayed like any frame.
    #[test]
    fn forwarded_text_ping_is_reported_and_relayed() {
        let mut input = Vec::new();
        encode_frame(&mut input, true, OP_TEXT, b"ping", None);
        let mut p = Pump::new(Bytes::new(), true, UpstreamMasking::Fresh);
        p.text = ping_rule(false);
        feed(&mut p, &input);
        assert_eq!(
            parse_all(&mut p, false),
            ["data 1 true 6", "text heartbeat true"]
        );
        assert_eq!(drain_output(&mut p), input);
    }

    /// Inside a fragmented message the stream is not between messages, even when drained.
    #[test]
    fn between_messages_follows_fin_of_the_latest_data_frame() {
        let mut p = Pump::new(Bytes::new(), true, UpstreamMasking::Fresh);
        assert!(p.between_messages());
        let mut first = Vec::new();
        encode_frame(&mut first, false, OP_TEXT, b"one", None);
        feed(&mut p, &first);
        parse_all(&mut p, false);
        drain_output(&mut p);
        assert!(p.is_drained());
        assert!(!p.between_messages(), "mid-message");
        let mut last = Vec::new();
        encode_frame(&mut last, true, frame::OP_CONTINUATION, &[7u8; 300], None);
        feed(&mut p, &last);
        parse_all(&mut p, false);
        drain_output(&mut p);
        assert!(p.between_messages());
    }

    /// Masked text is unmasked to be checked and re-masked with our key in the same pass, in
    /// the fast path and in the general one, however the reads cut characters.
    #[test]
    fn masked_text_is_checked_and_relayed_intact_across_reads() {
        let text = "κόσμε 😀 €".repeat(30);
        let mut input = Vec::new();
        encode_frame(
            &mut input,
            false,
            OP_TEXT,
            &text.as_bytes()[..7],
            Some([1, 2, 3, 4]),
        );
        encode_frame(
            &mut input,
            true,
            0,
            &text.as_bytes()[7..],
            Some([5, 6, 7, 8]),
        );
        encode_frame(
            &mut input,
            true,
            OP_TEXT,
            "é".as_bytes(),
            Some([9, 9, 9, 9]),
        );
        for (read, masking) in [1, 2, 5, 64, input.len()]
            .into_iter()
            .flat_map(|r| [(r, UpstreamMasking::Fresh), (r, UpstreamMasking::Forward)])
        {
            let mut p = Pump::new(Bytes::new(), true, masking);
            let mut relayed = Vec::new();
            for chunk in input.chunks(read) {
                feed(&mut p, chunk);
                parse_all(&mut p, true);
                relayed.extend(drain_output(&mut p));
            }
            let out = frames(&relayed);
            let payload: Vec<u8> = out[..2].iter().flat_map(|f| f.2.clone()).collect();
            assert_eq!(payload, text.as_bytes(), "reads of {read}");
            assert_eq!(out[2].2, "é".as_bytes());
        }
    }

    #[test]
    fn invalid_text_is_refused_and_a_small_frame_left_as_it_came() {
        let mut input = Vec::new();
        encode_frame(
            &mut input,
            true,
            OP_TEXT,
            b"ok \xc0\xaf",
            Some([1, 2, 3, 4]),
        );
        let mut p = Pump::new(Bytes::new(), true, UpstreamMasking::Fresh);
        feed(&mut p, &input);
        assert!(matches!(
            p.parse(true, 100, |_, _, _| {}),
            Err(Violation::InvalidPayload(_))
        ));
        assert!(p.output().is_empty(), "nothing of it was relayed");
        let mut lenient = Pump::new(Bytes::new(), false, UpstreamMasking::Fresh);
        feed(&mut lenient, &input);
        assert_eq!(
            parse_all(&mut lenient, true).len(),
            1,
            "not checked with an extension"
        );
    }

    #[test]
    fn close_frames_with_a_bad_code_or_reason_are_refused() {
        for (payload, want) in [
            (&b"\x03\xed"[..], "1005"),
            (&b"\x13\x88"[..], "5000"),
            (&b"\x03\xe8\xff"[..], "bad reason"),
        ] {
            let mut input = Vec::new();
            encode_frame(&mut input, true, OP_CLOSE, payload, None);
            let mut p = Pump::new(Bytes::new(), true, UpstreamMasking::Fresh);
            feed(&mut p, &input);
            let got = p.parse(false, 100, |_, _, _| {}).err();
            assert!(got.is_some(), "{want}");
            assert!(p.output().is_empty(), "{want}: not relayed");
        }
    }

    #[test]
    fn large_frame_streams_through_in_pieces() {
        let mut p = Pump::new(Bytes::new(), true, UpstreamMasking::Fresh);
        let payload: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut input = Vec::new();
        encode_frame(&mut input, true, OP_BINARY, &payload, None);
        let mut relayed = Vec::new();
        for chunk in input.chunks(10_000) {
            feed(&mut p, chunk);
            parse_all(&mut p, false);
            relayed.extend(drain_output(&mut p));
            if relayed.len() < input.len() {
                assert!(!p.is_drained(), "mid-frame is not a boundary");
            }
        }
        assert_eq!(relayed, input);
        assert!(p.is_drained());
    }

    #[test]
    fn control_frames_may_only_go_between_relayed_frames() {
        let mut p = Pump::new(Bytes::new(), true, UpstreamMasking::Fresh);
        let mut input = Vec::new();
        encode_frame(&mut input, true, OP_BINARY, &[1u8; 10], None); // bytes 0..12
        encode_frame(&mut input, true, OP_BINARY, &[2u8; 10], None); // bytes 12..24
        feed(&mut p, &input[..20]);
        parse_all(&mut p, false);
        // Older frames queued before the latest one are written first.
        assert_eq!(p.out_until_boundary(), 12);
        p.consumed(5);
        assert_eq!(p.out_until_boundary(), 7);
        p.consumed(7);
        assert_eq!(p.out_until_boundary(), 0, "between the two frames");
        p.consumed(8);
        assert_eq!(p.out_until_boundary(), 4, "inside the second frame");
        assert!(!p.is_drained());
        feed(&mut p, &input[20..]);
        parse_all(&mut p, false);
        p.consumed(4);
        assert!(p.is_drained());
    }

    #[test]
    fn close_is_forwarded_then_everything_after_is_discarded() {
        let mut p = Pump::new(Bytes::new(), true, UpstreamMasking::Fresh);
        let mut input = Vec::new();
        encode_close(&mut input, 4001, "bye", None);
        encode_frame(&mut input, true, OP_TEXT, b"late", None);
        feed(&mut p, &input);
        let seen = parse_all(&mut p, false);
        assert_eq!(seen, ["close Some(4001) true", "data 1 true 6"]);
        let out = frames(&drain_output(&mut p));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, OP_CLOSE);
        assert_eq!(&out[0].2[2..], b"bye");
    }

    #[test]
    fn rsv_bits_need_a_negotiated_extension() {
        let mut frame_rsv1 = Vec::new();
        encode_frame(&mut frame_rsv1, true, OP_TEXT, b"x", None);
        frame_rsv1[0] |= 0x40;
        let mut strict = Pump::new(Bytes::new(), true, UpstreamMasking::Fresh);
        feed(&mut strict, &frame_rsv1);
        assert!(matches!(
            strict.parse(false, 100, |_, _, _| {}),
            Err(Violation::Protocol(_))
        ));
        let mut lenient = Pump::new(Bytes::new(), false, UpstreamMasking::Fresh);
        feed(&mut lenient, &frame_rsv1);
        assert_eq!(parse_all(&mut lenient, false), ["data 1 true 3"]);
        assert_eq!(
            drain_output(&mut lenient),
            frame_rsv1,
            "RSV1 passes unchanged"
        );
    }

    #[test]
    fn reserved_opcodes_are_refused_without_extensions() {
        for op in [0x3, 0x7, 0xB, 0xF] {
            let mut input = Vec::new();
            encode_frame(&mut input, true, op, b"", None);
            let mut p = Pump::new(Bytes::new(), true, UpstreamMasking::Fresh);
            feed(&mut p, &input);
            assert!(
                matches!(
                    p.parse(false, 100, |_, _, _| {}),
                    Err(Violation::Protocol(_))
                ),
                "opcode {op}"
            );
        }
    }

    #[test]
    fn unmasked_client_frame_is_a_violation() {
        let mut p = Pump::new(Bytes::new(), true, UpstreamMasking::Fresh);
        let mut input = Vec::new();
        encode_frame(&mut input, true, OP_TEXT, b"x", None);
        feed(&mut p, &input);
        assert!(matches!(
            p.parse(true, 100, |_, _, _| {}),
            Err(Violation::Protocol(_))
        ));
    }

    #[test]
    fn oversized_data_frame_is_refused_before_any_payload() {
        let mut p = Pump::new(Bytes::new(), true, UpstreamMasking::Fresh);
        let mut input = Vec::new();
        encode_frame(&mut input, true, OP_BINARY, &[0u8; 101], None);
        feed(&mut p, &input[..4]);
        assert_eq!(
            p.parse(false, 100, |_, _, _| {}).err(),
            Some(Violation::TooBig)
        );
    }

    #[test]
    fn draining_finishes_the_current_frame() {
        let mut p = Pump::new(Bytes::new(), true, UpstreamMasking::Fresh);
        let mut input = Vec::new();
        encode_frame(&mut input, true, OP_BINARY, &[7u8; 100], None);
        encode_frame(&mut input, true, OP_BINARY, &[8u8; 100], None);
        feed(&mut p, &input[..50]);
        parse_all(&mut p, false);
        p.drain();
        feed(&mut p, &input[50..]);
        parse_all(&mut p, false);
        let out = frames(&drain_output(&mut p));
        assert_eq!(out.len(), 1, "the second frame is not relayed");
        assert_eq!(out[0].2, vec![7u8; 100]);
        assert_eq!(p.mode, Mode::Discard);
    }
}
