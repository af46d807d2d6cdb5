//! A minimal RFC 6455 frame reader and writer for the test peers.
//!
//! Written independently of wsbeat's own codec on purpose: the tests must see every frame
//! exactly as it crossed the wire (opcode, FIN, RSV1-3, mask bit and key, payload), so they can
//! check that the proxy preserves fragmentation and RSV bits frame by frame, re-masks client
//! frames and never forwards pings or pongs. Nothing here validates: a test peer must be able
//! to send anything, including frames a strict library would refuse.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Largest payload the test reader accepts, so a corrupt length cannot make a test allocate
/// gigabytes; well above the biggest frame any test sends.
const MAX_TEST_PAYLOAD: u64 = 64 * 1024 * 1024;

/// One frame as seen on the wire. `payload` is always the unmasked application data; `mask`
/// records whether (and with which key) it was masked on the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub fin: bool,
    pub rsv1: bool,
    pub rsv2: bool,
    pub rsv3: bool,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for RawFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = &self.payload[..self.payload.len().min(40)];
        f.debug_struct("RawFrame")
            .field("opcode", &self.opcode)
            .field("fin", &self.fin)
            .field("rsv", &(self.rsv1, self.rsv2, self.rsv3))
            .field("mask", &self.mask)
            .field("len", &self.payload.len())
            .field("payload", &String::from_utf8_lossy(shown))
            .finish()
    }
}

impl RawFrame {
    /// A final, unmasked frame with no RSV bits.
    pub fn new(opcode: u8, payload: impl Into<Vec<u8>>) -> Self {
        RawFrame {
            fin: true,
            rsv1: false,
            rsv2: false,
            rsv3: false,
            opcode,
            mask: None,
            payload: payload.into(),
        }
    }

    pub fn text(s: &str) -> Self {
        Self::new(OP_TEXT, s.as_bytes())
    }

    pub fn binary(b: impl Into<Vec<u8>>) -> Self {
        Self::new(OP_BINARY, b)
    }

    pub fn continuation(b: impl Into<Vec<u8>>) -> Self {
        Self::new(OP_CONTINUATION, b)
    }

    pub fn ping(b: impl Into<Vec<u8>>) -> Self {
        Self::new(OP_PING, b)
    }

    pub fn pong(b: impl Into<Vec<u8>>) -> Self {
        Self::new(OP_PONG, b)
    }

    pub fn close(code: u16, reason: &str) -> Self {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        Self::new(OP_CLOSE, payload)
    }

    pub fn with_fin(mut self, fin: bool) -> Self {
        self.fin = fin;
        self
    }

    pub fn with_rsv(mut self, rsv1: bool, rsv2: bool, rsv3: bool) -> Self {
        self.rsv1 = rsv1;
        self.rsv2 = rsv2;
        self.rsv3 = rsv3;
        self
    }

    pub fn with_mask(mut self, key: [u8; 4]) -> Self {
        self.mask = Some(key);
        self
    }

    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }

    /// Status code of a close frame, if it has one.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == OP_CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    /// Reason text of a close frame ("" when absent).
    pub fn close_reason(&self) -> String {
        if self.opcode == OP_CLOSE && self.payload.len() > 2 {
            String::from_utf8_lossy(&self.payload[2..]).into_owned()
        } else {
            String::new()
        }
    }

    /// The frame's wire bytes, masking the payload when `mask` is set.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload.len() + 14);
        let b0 = (u8::from(self.fin) << 7)
            | (u8::from(self.rsv1) << 6)
            | (u8::from(self.rsv2) << 5)
            | (u8::from(self.rsv3) << 4)
            | (self.opcode & 0x0F);
        out.push(b0);
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let len = self.payload.len();
        if len < 126 {
            out.push(mask_bit | len as u8);
        } else if let Ok(len16) = u16::try_from(len) {
            out.push(mask_bit | 126);
            out.extend_from_slice(&len16.to_be_bytes());
        } else {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        match self.mask {
            Some(key) => {
                out.extend_from_slice(&key);
                out.extend(self.payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => out.extend_from_slice(&self.payload),
        }
        out
    }
}

/// Reads one frame. `Ok(None)` means the stream ended cleanly before the first byte of a frame.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<RawFrame>> {
    let mut head = [0u8; 2];
    match r.read_exact(&mut head[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    r.read_exact(&mut head[1..]).await?;
    let len = match head[1] & 0x7F {
        126 => u64::from(r.read_u16().await?),
        127 => r.read_u64().await?,
        n => u64::from(n),
    };
    if len > MAX_TEST_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is larger than any test sends"),
        ));
    }
    let mask = if head[1] & 0x80 != 0 {
        let mut key = [0u8; 4];
        r.read_exact(&mut key).await?;
        Some(key)
    } else {
        None
    };
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await?;
    if let Some(key) = mask {
        payload
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b ^= key[i % 4]);
    }
    Ok(Some(RawFrame {
        fin: head[0] & 0x80 != 0,
        rsv1: head[0] & 0x40 != 0,
        rsv2: head[0] & 0x20 != 0,
        rsv3: head[0] & 0x10 != 0,
        opcode: head[0] & 0x0F,
        mask,
        payload,
    }))
}

/// Writes `frame` exactly as given (masked only if `frame.mask` is set) and flushes.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &RawFrame) -> io::Result<()> {
    w.write_all(&frame.encode()).await?;
    w.flush().await
}

/// A varying, non-zero masking key for test clients. Not random: tests that compare keys pick
/// their own; this only has to differ from frame to frame.
pub fn next_mask_key() -> [u8; 4] {
    static COUNTER: AtomicU32 = AtomicU32::new(0x5EED_0001);
    let n = COUNTER.fetch_add(0x9E37_79B9, Ordering::Relaxed);
    n.to_be_bytes()
}
