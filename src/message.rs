//! Message boundaries and text validation of one direction of a session (RFC 6455 5.4, 8.1).
//!
//! Owns: where a stream of data frames stands (between messages, or inside a text or a binary
//! one), the sequence rules (a continuation needs a message started; a new message needs the last
//! one finished), and the UTF-8 of text messages as their payload streams through, with a
//! sequence cut by a frame or read boundary carried over. A pure state machine: no I/O, no
//! frame bytes of its own; the relay's pump feeds it headers and unmasked payload chunks. Does
//! not own: frame headers, masking, control frames, or what a violation leads to.
//!
//! The relay keeps one per direction, so it also knows where a leg's outgoing stream stands
//! between messages, which is where a message of wsbeat's own may be inserted.

use thiserror::Error;

use crate::frame::{OP_BINARY, OP_CONTINUATION, OP_TEXT};

/// A broken rule, with the close code RFC 6455 7.4.1 gives it.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum MessageError {
    /// A frame out of sequence (close 1002).
    #[error("{0}")]
    Sequence(&'static str),
    /// A text message that is not UTF-8 (close 1007).
    #[error("{0}")]
    InvalidText(&'static str),
}

/// The kind of message in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Binary,
    Text,
}

/// Where a stream of data frames stands, and the UTF-8 state of a text message in progress.
#[derive(Clone, Debug)]
pub struct Messages {
    /// The message in progress, if any.
    current: Option<Kind>,
    /// The frame being read ends its message.
    fin: bool,
    /// Check the UTF-8 of text messages (off when an extension may have compressed them).
    validate_utf8: bool,
    /// The start of a UTF-8 sequence cut off at the end of the last payload chunk.
    pending: [u8; 4],
    pending_len: u8,
}

impl Messages {
    /// A stream between messages; `validate_utf8` checks text payloads.
    pub fn new(validate_utf8: bool) -> Self {
        Messages {
            current: None,
            fin: false,
            validate_utf8,
            pending: [0; 4],
            pending_len: 0,
        }
    }

    /// True while a message has started and its final frame has not been read to the end. The
    /// relay's one answer to "is this leg's stream between messages": the fast path takes a
    /// whole message only when it is not, and a message of wsbeat's own goes in only then.
    #[inline(always)]
    pub fn in_message(&self) -> bool {
        self.current.is_some()
    }

    /// Whether the payload of text messages must be checked (no extension was negotiated).
    /// A whole message in one frame, taken while [`Messages::in_message`] is false, leaves the
    /// state as it is: its text, if checked, goes through [`check_whole_text`].
    #[inline(always)]
    pub fn checks_text(&self) -> bool {
        self.validate_utf8
    }

    /// Takes the header of a data frame. Returns whether its payload must be passed to
    /// [`Messages::on_text`]. Reserved data opcodes (which only an extension may use) are not
    /// tracked: their meaning is the extension's.
    ///
    /// # Errors
    /// [`MessageError::Sequence`] for a continuation with no message started, or a new message
    /// before the last one finished.
    #[inline]
    pub fn on_frame(&mut self, opcode: u8, fin: bool) -> Result<bool, MessageError> {
        let kind = match (opcode, self.current) {
            (OP_CONTINUATION, Some(kind)) => kind,
            (OP_CONTINUATION, None) => {
                return Err(MessageError::Sequence(
                    "continuation frame with no message started",
                ));
            }
            (OP_TEXT | OP_BINARY, None) if opcode == OP_TEXT => Kind::Text,
            (OP_TEXT | OP_BINARY, None) => Kind::Binary,
            (OP_TEXT | OP_BINARY, Some(_)) => {
                return Err(MessageError::Sequence(
                    "new message before the last one finished",
                ));
            }
            _ => {
                self.fin = false;
                return Ok(false);
            }
        };
        self.current = Some(kind);
        self.fin = fin;
        Ok(self.validate_utf8 && kind == Kind::Text)
    }

    /// Checks the next chunk of a text message's unmasked payload.
    ///
    /// # Errors
    /// [`MessageError::InvalidText`] as soon as the bytes cannot be UTF-8, whatever follows.
    pub fn on_text(&mut self, mut bytes: &[u8]) -> Result<(), MessageError> {
        if self.pending_len > 0 {
            bytes = self.finish_pending(bytes)?;
            if self.pending_len > 0 {
                return Ok(());
            }
        }
        match simdutf8::compat::from_utf8(bytes) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let rest = &bytes[e.valid_up_to()..];
                self.pending[..rest.len()].copy_from_slice(rest);
                self.pending_len = rest.len() as u8;
                Ok(())
            }
            Err(_) => Err(invalid_text()),
        }
    }

    /// Completes the sequence cut off last time with the first bytes of `bytes`; returns the
    /// bytes after it. Leaves `pending` longer if `bytes` is too short to complete it.
    fn finish_pending<'a>(&mut self, bytes: &'a [u8]) -> Result<&'a [u8], MessageError> {
        let have = usize::from(self.pending_len);
        let take = (4 - have).min(bytes.len());
        let mut joined = self.pending;
        joined[have..have + take].copy_from_slice(&bytes[..take]);
        let joined = &joined[..have + take];
        let valid = match simdutf8::compat::from_utf8(joined) {
            Ok(_) => joined.len(),
            Err(e) if e.valid_up_to() > 0 => e.valid_up_to(),
            Err(e) if e.error_len().is_none() => {
                // Still cut off: `bytes` was all used.
                self.pending[..joined.len()].copy_from_slice(joined);
                self.pending_len = joined.len() as u8;
                return Ok(&[]);
            }
            Err(_) => return Err(invalid_text()),
        };
        // `valid` covers the completed sequence (longer than `have`) and maybe more.
        self.pending_len = 0;
        Ok(&bytes[valid - have..])
    }

    /// The current frame's payload has all been read: a final frame ends its message.
    ///
    /// # Errors
    /// [`MessageError::InvalidText`] when a text message ends inside a UTF-8 sequence.
    #[inline]
    pub fn on_frame_end(&mut self) -> Result<(), MessageError> {
        if !self.fin {
            return Ok(());
        }
        self.fin = false;
        self.current = None;
        if self.pending_len > 0 {
            self.pending_len = 0;
            return Err(invalid_text());
        }
        Ok(())
    }
}

/// Checks the payload of a text message that is whole in one frame.
///
/// # Errors
/// [`MessageError::InvalidText`] when it is not UTF-8.
#[inline]
pub fn check_whole_text(payload: &[u8]) -> Result<(), MessageError> {
    simdutf8::basic::from_utf8(payload).map_err(|_| invalid_text())?;
    Ok(())
}

fn invalid_text() -> MessageError {
    MessageError::InvalidText("text message is not valid UTF-8")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Feeds one text message cut into `chunks`; the result of the whole message.
    fn text_in_chunks(chunks: &[&[u8]]) -> Result<(), MessageError> {
        let mut m = Messages::new(true);
        assert!(m.on_frame(OP_TEXT, true)?);
        for chunk in chunks {
            m.on_text(chunk)?;
        }
        m.on_frame_end()?;
        assert!(!m.in_message());
        Ok(())
    }

    #[test]
    fn utf8_cut_at_every_byte_is_accepted() {
        let text = "aé€😀z κόσμε".as_bytes();
        for cut in 0..=text.len() {
            let (a, b) = text.split_at(cut);
            assert_eq!(text_in_chunks(&[a, b]), Ok(()), "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(text_in_chunks(&bytes), Ok(()), "one byte at a time");
    }

    #[test]
    fn invalid_utf8_is_refused_wherever_it_is_cut() {
        // Autobahn 6.x style: overlong, surrogate, beyond U+10FFFF, lone continuation.
        let bad: [&[u8]; 5] = [
            b"\xc0\xaf",
            b"a\xed\xa0\x80b",
            b"\xf4\x90\x80\x80",
            b"ok\x80",
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
        ];
        for text in bad {
            for cut in 0..=text.len() {
                let (a, b) = text.split_at(cut);
                assert!(text_in_chunks(&[a, b]).is_err(), "{text:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn invalid_utf8_fails_fast_before_the_message_ends() {
        let mut m = Messages::new(true);
        m.on_frame(OP_TEXT, false).unwrap();
        m.on_text("κόσμε".as_bytes()).unwrap();
        m.on_frame_end().unwrap();
        m.on_frame(OP_CONTINUATION, false).unwrap();
        assert!(
            m.on_text(b"\xf4\x90").is_err(),
            "no 4-byte sequence starts F4 90"
        );
    }

    #[test]
    fn a_message_ending_inside_a_sequence_is_refused() {
        assert!(text_in_chunks(&[b"ab\xe2\x82"]).is_err());
        // ...but a frame may end inside one if the message goes on.
        let mut m = Messages::new(true);
        m.on_frame(OP_TEXT, false).unwrap();
        m.on_text(b"\xe2\x82").unwrap();
        m.on_frame_end().unwrap();
        m.on_frame(OP_CONTINUATION, true).unwrap();
        m.on_text(b"\xac").unwrap();
        assert_eq!(m.on_frame_end(), Ok(()));
    }

    #[test]
    fn sequence_rules_are_enforced() {
        let mut m = Messages::new(true);
        assert!(matches!(
            m.on_frame(OP_CONTINUATION, true),
            Err(MessageError::Sequence(_))
        ));
        let mut m = Messages::new(true);
        m.on_frame(OP_BINARY, false).unwrap();
        m.on_frame_end().unwrap();
        assert!(m.in_message());
        assert!(matches!(
            m.on_frame(OP_TEXT, true),
            Err(MessageError::Sequence(_))
        ));
        let mut m = Messages::new(true);
        m.on_frame(OP_BINARY, false).unwrap();
        m.on_frame_end().unwrap();
        assert_eq!(m.on_frame(OP_CONTINUATION, true), Ok(false), "binary");
        m.on_frame_end().unwrap();
        assert!(!m.in_message());
        assert_eq!(m.on_frame(OP_TEXT, true), Ok(true));
    }

    proptest! {
        /// Cut anywhere, the streaming check agrees with checking the whole message at once.
        #[test]
        fn streaming_agrees_with_the_whole_message(
            text in prop::collection::vec(
                prop_oneof![
                    any::<char>().prop_map(|c| c.to_string().into_bytes()),
                    prop::collection::vec(any::<u8>(), 0..4),
                ],
                0..12,
            ),
            cuts in prop::collection::vec(0usize..64, 0..6),
        ) {
            let text = text.concat();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut at = 0;
            for cut in cuts.into_iter().chain([text.len()]) {
                chunks.push(&text[at..cut]);
                at = cut;
            }
            let whole = std::str::from_utf8(&text).is_ok();
            prop_assert_eq!(text_in_chunks(&chunks).is_ok(), whole, "{:?}", chunks);
        }
    }

    #[test]
    fn whole_messages_are_recognised_without_a_change_of_state() {
        let mut m = Messages::new(true);
        assert!(!m.in_message() && m.checks_text());
        m.on_frame(OP_BINARY, false).unwrap();
        m.on_frame_end().unwrap();
        assert!(m.in_message(), "a message is in progress");
        assert!(!Messages::new(false).checks_text());
        assert!(check_whole_text("κόσμε".as_bytes()).is_ok());
        assert!(check_whole_text(b"\xe2\x82").is_err());
    }

    #[test]
    fn text_is_not_checked_when_validation_is_off() {
        let mut m = Messages::new(false);
        assert_eq!(m.on_frame(OP_TEXT, false), Ok(false));
        m.on_frame_end().unwrap();
        assert!(m.in_message(), "boundaries are still tracked");
    }

    #[test]
    fn reserved_opcodes_leave_the_sequence_alone() {
        let mut m = Messages::new(true);
        m.on_frame(OP_TEXT, false).unwrap();
        m.on_frame_end().unwrap();
        assert_eq!(m.on_frame(0x3, true), Ok(false));
        m.on_frame_end().unwrap();
        assert!(m.in_message());
    }
}
