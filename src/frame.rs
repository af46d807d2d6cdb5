//! RFC 6455 frame headers and masking, worked in place on the relay's buffers.
//!
//! Why not tungstenite's `FrameHeader` + a tokio-util codec: the relay never materialises a frame.
//! It parses a header where it lies in the read buffer, rewrites the masking key in place (a
//! masked header keeps its length), and streams the payload through with one XOR pass that
//! unmasks with the client's key and re-masks with ours at once. A codec would allocate a
//! `Frame` per frame and hold whole payloads (up to `--max-frame-size`) in memory; this keeps a
//! session's memory at one pooled buffer while data flows and none while it is idle. tungstenite
//! is still used for the handshake helpers and for the test peers.

use thiserror::Error;

/// Continuation of a fragmented message.
pub(crate) const OP_CONTINUATION: u8 = 0x0;
/// Text data frame.
pub(crate) const OP_TEXT: u8 = 0x1;
/// Binary data frame.
pub(crate) const OP_BINARY: u8 = 0x2;
/// Close control frame.
pub(crate) const OP_CLOSE: u8 = 0x8;
/// Ping control frame.
pub(crate) const OP_PING: u8 = 0x9;
/// Pong control frame.
pub(crate) const OP_PONG: u8 = 0xA;

/// Largest payload a control frame may carry (RFC 6455 5.5).
pub(crate) const MAX_CONTROL_PAYLOAD: usize = 125;
/// Longest possible frame header: 2 + 8 (extended length) + 4 (mask).
pub(crate) const MAX_HEADER_LEN: usize = 14;
/// Longest possible control frame on the wire.
pub(crate) const MAX_CONTROL_FRAME: usize = MAX_HEADER_LEN + MAX_CONTROL_PAYLOAD;

/// Close status codes wsbeat sends itself.
pub(crate) mod close_code {
    /// Normal closure.
    pub(crate) const NORMAL: u16 = 1000;
    /// The endpoint is going away (the other leg died, or the proxy shuts down).
    pub(crate) const GOING_AWAY: u16 = 1001;
    /// The peer broke the protocol.
    pub(crate) const PROTOCOL_ERROR: u16 = 1002;
    /// A text message or a close reason that is not UTF-8 (RFC 6455 7.4.1).
    pub(crate) const INVALID_PAYLOAD: u16 = 1007;
    /// A frame exceeded `--max-frame-size`.
    pub(crate) const TOO_BIG: u16 = 1009;
    /// Unexpected condition on the server side (used toward clients when the upstream died).
    pub(crate) const INTERNAL_ERROR: u16 = 1011;
}

/// A parsed frame header. The payload follows `header_len` bytes after the header start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    /// Final fragment of a message.
    pub(crate) fin: bool,
    /// RSV1..RSV3 as the low three bits (RSV1 = 0b100).
    pub(crate) rsv: u8,
    /// Opcode (4 bits).
    pub(crate) opcode: u8,
    /// Masking key, present on frames from clients.
    pub(crate) mask: Option<[u8; 4]>,
    /// Payload length in bytes.
    pub(crate) payload_len: u64,
    /// Header length in bytes (2 to 14).
    pub(crate) header_len: usize,
}

impl Header {
    /// Control frames have the high opcode bit set (close, ping, pong and reserved 0xB-0xF).
    pub(crate) fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }

    /// Header plus payload.
    pub(crate) fn frame_len(&self) -> u64 {
        self.header_len as u64 + self.payload_len
    }

    /// Offset of the masking key within the header, if masked.
    pub(crate) fn mask_offset(&self) -> Option<usize> {
        self.mask.map(|_| self.header_len - 4)
    }
}

/// A header that can never be valid, whatever follows.
#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// The 64-bit length had its most significant bit set (RFC 6455 5.2).
    #[error("frame length has the most significant bit set")]
    LengthOverflow,
}

/// Parses the header at the start of `buf`; `Ok(None)` means more bytes are needed.
///
/// # Errors
/// [`FrameError`] when the bytes cannot start a valid frame.
pub(crate) fn parse_header(buf: &[u8]) -> Result<Option<Header>, FrameError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let masked = b1 & 0x80 != 0;
    let (len_bytes, payload_len) = match b1 & 0x7F {
        126 => (2, None),
        127 => (8, None),
        n => (0, Some(u64::from(n))),
    };
    let header_len = 2 + len_bytes + if masked { 4 } else { 0 };
    if buf.len() < header_len {
        return Ok(None);
    }
    let payload_len = match payload_len {
        Some(n) => n,
        None if len_bytes == 2 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
        None => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let n = u64::from_be_bytes(b);
            if n >> 63 != 0 {
                return Err(FrameError::LengthOverflow);
            }
            n
        }
    };
    let mask = masked.then(|| {
        let k = &buf[header_len - 4..header_len];
        [k[0], k[1], k[2], k[3]]
    });
    Ok(Some(Header {
        fin: b0 & 0x80 != 0,
        rsv: (b0 >> 4) & 0x7,
        opcode: b0 & 0x0F,
        mask,
        payload_len,
        header_len,
    }))
}

/// Appends a complete frame (header and payload) to `out`, masked with `mask` if given.
pub(crate) fn encode_frame(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: u8,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) {
    let b0 = if fin { 0x80 } else { 0 } | (opcode & 0x0F);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    out.push(b0);
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let start = out.len() + mask.map_or(0, |_| 4);
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut out[start..], key, 0);
    }
}

/// Appends a close frame with `code` and `reason` (truncated to fit 125 bytes on a char boundary).
pub(crate) fn encode_close(out: &mut Vec<u8>, code: u16, reason: &str, mask: Option<[u8; 4]>) {
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    let mut cut = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    payload[2..2 + cut].copy_from_slice(&reason.as_bytes()[..cut]);
    encode_frame(out, true, OP_CLOSE, &payload[..2 + cut], mask);
}

/// Reads the status code of an unmasked close payload: `None` for an empty payload.
pub(crate) fn close_code_of(payload: &[u8]) -> Option<u16> {
    match payload {
        [a, b, ..] => Some(u16::from_be_bytes([*a, *b])),
        _ => None,
    }
}

/// Whether a peer may send `code` in a close frame: RFC 6455 7.4.1 and 7.4.2 (1000-1003,
/// 1007-1011, 3000-4999) plus the IANA registry's 1012-1014. 1004 is reserved, 1005, 1006 and
/// 1015 only report a state and must never be on the wire, and the rest is undefined.
pub(crate) fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// XORs `buf` with `key`, as if `buf` started `offset` bytes into a masked payload.
///
/// Masking is its own inverse, and XOR with `old ^ new` unmasks and re-masks in one pass.
pub(crate) fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let key = rotate_key(key, offset);
    // The key four times over: 16 bytes per XOR, which the compiler keeps in one SSE register.
    let wide = u128::from(u32::from_ne_bytes(key)) * 0x0000_0001_0000_0001_0000_0001_0000_0001;
    let mut chunks = buf.chunks_exact_mut(16);
    for chunk in &mut chunks {
        let mut word = [0u8; 16];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u128::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (b, k) in chunks.into_remainder().iter_mut().zip(key.iter().cycle()) {
        *b ^= k;
    }
}

/// The key as seen from `offset` bytes into the payload.
fn rotate_key(key: [u8; 4], offset: usize) -> [u8; 4] {
    let r = offset & 3;
    [key[r], key[(r + 1) & 3], key[(r + 2) & 3], key[(r + 3) & 3]]
}

/// XOR of two masking keys: applying it turns a payload masked with `a` into one masked with `b`.
pub(crate) fn xor_keys(a: [u8; 4], b: [u8; 4]) -> [u8; 4] {
    [a[0] ^ b[0], a[1] ^ b[1], a[2] ^ b[2], a[3] ^ b[3]]
}

/// Random bytes drawn from the thread's CSPRNG at a time, so a key costs an index bump
/// instead of a generator call per frame (the 64-byte benchmark showed it).
const MASK_POOL_BYTES: usize = 256;

thread_local! {
    static MASK_POOL: std::cell::RefCell<([u8; MASK_POOL_BYTES], usize)> =
        const { std::cell::RefCell::new(([0; MASK_POOL_BYTES], MASK_POOL_BYTES)) };
}

/// A fresh, unpredictable masking key (RFC 6455 5.3), from `rand`'s cryptographically secure
/// thread-local generator.
pub(crate) fn random_mask() -> [u8; 4] {
    MASK_POOL.with(|pool| {
        let (bytes, next) = &mut *pool.borrow_mut();
        if *next == MASK_POOL_BYTES {
            rand::fill(&mut bytes[..]);
            *next = 0;
        }
        let key = [
            bytes[*next],
            bytes[*next + 1],
            bytes[*next + 2],
            bytes[*next + 3],
        ];
        *next += 4;
        key
    })
}

/// Metric label for an opcode.
pub(crate) fn opcode_label(opcode: u8) -> &'static str {
    match opcode {
        OP_CONTINUATION => "continuation",
        OP_TEXT => "text",
        OP_BINARY => "binary",
        OP_CLOSE => "close",
        OP_PING => "ping",
        OP_PONG => "pong",
        _ => "reserved",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_masked_header_round_trips() {
        let mut out = Vec::new();
        encode_frame(&mut out, true, OP_TEXT, b"hello", Some([1, 2, 3, 4]));
        let h = parse_header(&out).unwrap().unwrap();
        assert_eq!(
            h,
            Header {
                fin: true,
                rsv: 0,
                opcode: OP_TEXT,
                mask: Some([1, 2, 3, 4]),
                payload_len: 5,
                header_len: 6
            }
        );
        let mut payload = out[6..].to_vec();
        apply_mask(&mut payload, [1, 2, 3, 4], 0);
        assert_eq!(payload, b"hello");
    }

    #[test]
    fn extended_lengths_parse() {
        for len in [0usize, 125, 126, 65535, 65536, 1 << 20] {
            let payload = vec![7u8; len];
            let mut out = Vec::new();
            encode_frame(&mut out, false, OP_BINARY, &payload, None);
            let h = parse_header(&out).unwrap().unwrap();
            assert_eq!(h.payload_len, len as u64);
            assert_eq!(h.header_len + len, out.len());
            assert!(!h.fin);
        }
    }

    #[test]
    fn incomplete_headers_need_more_bytes() {
        let mut out = Vec::new();
        encode_frame(&mut out, true, OP_BINARY, &[0u8; 70000], Some([9, 9, 9, 9]));
        for cut in 0..14 {
            assert_eq!(parse_header(&out[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(parse_header(&out[..14]).unwrap().is_some());
    }

    #[test]
    fn rsv_bits_and_opcode_are_read() {
        let h = parse_header(&[0b1101_0001, 0]).unwrap().unwrap();
        assert_eq!((h.fin, h.rsv, h.opcode), (true, 0b101, OP_TEXT));
        assert!(!h.is_control());
        assert!(parse_header(&[0x8B, 0]).unwrap().unwrap().is_control());
    }

    #[test]
    fn length_with_top_bit_is_an_error() {
        let buf = [0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(parse_header(&buf), Err(FrameError::LengthOverflow));
    }

    #[test]
    fn remask_in_one_pass_at_any_offset() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1001).collect();
        let (old, new) = ([0xde, 0xad, 0xbe, 0xef], [0x12, 0x34, 0x56, 0x78]);
        let mut masked = data.clone();
        apply_mask(&mut masked, old, 0);
        // Re-mask in uneven chunks, as the relay does when reads split a payload.
        let mut off = 0;
        for chunk in [3usize, 17, 1, 500, 480] {
            apply_mask(&mut masked[off..off + chunk], xor_keys(old, new), off);
            off += chunk;
        }
        apply_mask(&mut masked, new, 0);
        assert_eq!(masked, data);
    }

    #[test]
    fn masking_keys_differ_across_pool_refills() {
        let keys: std::collections::HashSet<[u8; 4]> = (0..1000).map(|_| random_mask()).collect();
        assert!(
            keys.len() > 990,
            "only {} distinct keys in 1000",
            keys.len()
        );
    }

    #[test]
    fn close_codes_follow_the_rfc_and_the_iana_registry() {
        let valid = [
            1000, 1001, 1002, 1003, 1007, 1010, 1011, 1012, 1013, 1014, 3000, 4999,
        ];
        let invalid = [
            0,
            999,
            1004,
            1005,
            1006,
            1015,
            1016,
            2000,
            2999,
            5000,
            u16::MAX,
        ];
        for code in valid {
            assert!(is_valid_close_code(code), "{code} is valid");
        }
        for code in invalid {
            assert!(!is_valid_close_code(code), "{code} is not valid");
        }
    }

    #[test]
    fn close_reason_is_truncated_on_a_char_boundary() {
        let mut out = Vec::new();
        let reason = "é".repeat(100);
        encode_close(&mut out, 1001, &reason, None);
        let h = parse_header(&out).unwrap().unwrap();
        assert!(h.payload_len as usize <= MAX_CONTROL_PAYLOAD);
        let payload = &out[h.header_len..];
        assert_eq!(close_code_of(payload), Some(1001));
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
    }
}
