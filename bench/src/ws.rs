//! Minimal RFC 6455 framing for the benchmark: a streaming frame decoder that never buffers a
//! whole message, frame encoders that append into a caller-owned buffer, masking, and the two
//! halves of the HTTP upgrade.
//!
//! Owns: wire format only. Does not own sockets or scheduling; the drivers in `echo`, `load`,
//! `idle` and `stream` do that. Nothing here allocates per frame.

use std::io;

use base64::Engine as _;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Continuation frame opcode.
pub const OP_CONT: u8 = 0x0;
/// Binary frame opcode.
pub const OP_BINARY: u8 = 0x2;
/// Close frame opcode.
pub const OP_CLOSE: u8 = 0x8;
/// Ping frame opcode.
pub const OP_PING: u8 = 0x9;
/// Pong frame opcode.
pub const OP_PONG: u8 = 0xA;

/// Largest HTTP upgrade head we accept: real requests are a few hundred bytes.
const MAX_HTTP_HEAD_BYTES: usize = 16 * 1024;
/// GUID appended to the client key (RFC 6455 section 1.3).
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Receives decoded frames. Data payload arrives in chunks, already unmasked, so a 1 MiB
/// fragment never has to be held in memory.
pub trait FrameSink {
    /// A data frame (text, binary or continuation) starts; `len` is its payload length.
    fn on_data_start(&mut self, fin: bool, opcode: u8, len: u64);
    /// The next unmasked chunk of the current data frame's payload.
    fn on_data(&mut self, chunk: &[u8]);
    /// The current data frame is complete; `fin` ends the message.
    fn on_data_end(&mut self, fin: bool);
    /// A complete control frame (ping, pong or close), unmasked.
    fn on_control(&mut self, opcode: u8, payload: &[u8]);
}

#[derive(Clone, Copy)]
enum State {
    Header,
    Data {
        remaining: u64,
        mask: Option<[u8; 4]>,
        offset: usize,
        fin: bool,
    },
    Control {
        opcode: u8,
        len: usize,
        mask: Option<[u8; 4]>,
    },
}

/// Streaming frame decoder: feed it whatever the socket returned.
pub struct Decoder {
    state: State,
    head: [u8; 14],
    head_len: usize,
    control: [u8; 125],
    control_len: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self {
            state: State::Header,
            head: [0; 14],
            head_len: 0,
            control: [0; 125],
            control_len: 0,
        }
    }
}

struct Header {
    fin: bool,
    opcode: u8,
    len: u64,
    mask: Option<[u8; 4]>,
}

/// Parses a frame header; `Ok(None)` when more bytes are needed.
fn parse_header(buf: &[u8]) -> io::Result<Option<(Header, usize)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0F;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut used) = match buf[1] & 0x7F {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        126 | 127 => return Ok(None),
        n => (u64::from(n), 2),
    };
    let mask = if masked {
        if buf.len() < used + 4 {
            return Ok(None);
        }
        let m = [buf[used], buf[used + 1], buf[used + 2], buf[used + 3]];
        used += 4;
        Some(m)
    } else {
        None
    };
    if opcode >= 8 && (len > 125 || !fin) {
        return Err(proto("invalid control frame"));
    }
    Ok(Some((
        Header {
            fin,
            opcode,
            len,
            mask,
        },
        used,
    )))
}

fn proto(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl Decoder {
    /// Decodes `data` (unmasking in place) and reports frames to `sink`.
    ///
    /// # Errors
    /// Returns `InvalidData` on a malformed frame.
    pub fn feed(&mut self, data: &mut [u8], sink: &mut impl FrameSink) -> io::Result<()> {
        let mut pos = 0;
        while pos < data.len() {
            pos += match self.state {
                State::Header => self.feed_header(&data[pos..], sink)?,
                State::Data { .. } => self.feed_data(&mut data[pos..], sink),
                State::Control { .. } => self.feed_control(&data[pos..], sink),
            };
        }
        Ok(())
    }

    fn feed_header(&mut self, data: &[u8], sink: &mut impl FrameSink) -> io::Result<usize> {
        let (header, used) = if self.head_len == 0 {
            match parse_header(data)? {
                Some(found) => found,
                None => {
                    self.head[..data.len()].copy_from_slice(data);
                    self.head_len = data.len();
                    return Ok(data.len());
                }
            }
        } else {
            let old = self.head_len;
            let take = (self.head.len() - old).min(data.len());
            self.head[old..old + take].copy_from_slice(&data[..take]);
            self.head_len += take;
            match parse_header(&self.head[..self.head_len])? {
                Some((h, used)) => {
                    self.head_len = 0;
                    (h, used - old)
                }
                None => return Ok(take),
            }
        };
        self.start_frame(header, sink);
        Ok(used)
    }

    fn start_frame(&mut self, h: Header, sink: &mut impl FrameSink) {
        if h.opcode >= 8 {
            self.control_len = 0;
            self.state = State::Control {
                opcode: h.opcode,
                len: h.len as usize,
                mask: h.mask,
            };
            if h.len == 0 {
                self.state = State::Header;
                sink.on_control(h.opcode, &[]);
            }
            return;
        }
        sink.on_data_start(h.fin, h.opcode, h.len);
        if h.len == 0 {
            sink.on_data_end(h.fin);
            return;
        }
        self.state = State::Data {
            remaining: h.len,
            mask: h.mask,
            offset: 0,
            fin: h.fin,
        };
    }

    fn feed_data(&mut self, data: &mut [u8], sink: &mut impl FrameSink) -> usize {
        let State::Data {
            remaining,
            mask,
            offset,
            fin,
        } = self.state
        else {
            return 0;
        };
        let n = remaining.min(data.len() as u64) as usize;
        let chunk = &mut data[..n];
        if let Some(m) = mask {
            apply_mask(chunk, m, offset);
        }
        sink.on_data(chunk);
        if remaining == n as u64 {
            self.state = State::Header;
            sink.on_data_end(fin);
        } else {
            self.state = State::Data {
                remaining: remaining - n as u64,
                mask,
                offset: offset + n,
                fin,
            };
        }
        n
    }

    fn feed_control(&mut self, data: &[u8], sink: &mut impl FrameSink) -> usize {
        let State::Control { opcode, len, mask } = self.state else {
            return 0;
        };
        let n = (len - self.control_len).min(data.len());
        self.control[self.control_len..self.control_len + n].copy_from_slice(&data[..n]);
        self.control_len += n;
        if self.control_len == len {
            if let Some(m) = mask {
                apply_mask(&mut self.control[..len], m, 0);
            }
            self.state = State::Header;
            sink.on_control(opcode, &self.control[..len]);
        }
        n
    }
}

/// XORs `buf` with `mask`, where `buf` starts `offset` bytes into the masked payload.
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut m = mask;
    m.rotate_left(offset % 4);
    let wide = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]]);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut b = [0u8; 8];
        b.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(b) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= m[i % 4];
    }
}

/// Appends a frame header.
pub fn put_header(out: &mut Vec<u8>, fin: bool, opcode: u8, len: usize, mask: Option<[u8; 4]>) {
    out.push(if fin { 0x80 } else { 0 } | opcode);
    let mbit = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(mbit | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(mbit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mbit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if let Some(m) = mask {
        out.extend_from_slice(&m);
    }
}

/// Appends a complete client frame, masked with a key drawn from `rng`.
pub fn put_masked(out: &mut Vec<u8>, fin: bool, opcode: u8, payload: &[u8], rng: &mut Rng) {
    let mask = rng.mask();
    put_header(out, fin, opcode, payload.len(), Some(mask));
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask, 0);
}

/// xorshift64* generator for masking keys and handshake nonces: fast, and random enough for a
/// benchmark (RFC 6455 only needs keys a peer cannot predict; no peer here is hostile).
pub struct Rng(u64);

impl Rng {
    /// Seeds from the clock and a per-call counter so connections get different streams.
    pub fn new() -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static SEQ: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let s = SEQ.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        Self((t ^ s) | 1)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A fresh masking key.
    pub fn mask(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_ne_bytes()
    }
}

fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Reads an HTTP head; returns its length and the buffer (which may hold frame bytes after it).
async fn read_head(stream: &mut (impl AsyncRead + Unpin)) -> io::Result<(usize, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut tmp = [0u8; 1024];
    loop {
        let n = stream.read(&mut tmp).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok((i + 4, buf));
        }
        if buf.len() > MAX_HTTP_HEAD_BYTES {
            return Err(proto("HTTP head too large"));
        }
    }
}

fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Server half of the upgrade. Returns bytes that arrived after the request head.
///
/// # Errors
/// I/O errors, or `InvalidData` when the request has no `Sec-WebSocket-Key`.
pub async fn accept(stream: &mut (impl AsyncRead + AsyncWrite + Unpin)) -> io::Result<Vec<u8>> {
    let (head_len, buf) = read_head(stream).await?;
    let head = String::from_utf8_lossy(&buf[..head_len]);
    let key = header_value(&head, "sec-websocket-key").ok_or_else(|| proto("no key"))?;
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    );
    stream.write_all(resp.as_bytes()).await?;
    Ok(buf[head_len..].to_vec())
}

/// Client half of the upgrade, over TCP or TLS. Returns bytes that arrived after the response
/// head.
///
/// # Errors
/// I/O errors, or `InvalidData` when the response is not a valid 101.
pub async fn connect(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    host: &str,
    path: &str,
) -> io::Result<Vec<u8>> {
    let mut rng = Rng::new();
    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(&rng.next_u64().to_ne_bytes());
    nonce[8..].copy_from_slice(&rng.next_u64().to_ne_bytes());
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await?;
    stream.flush().await?;
    let (head_len, buf) = read_head(stream).await?;
    let head = String::from_utf8_lossy(&buf[..head_len]);
    if !head.starts_with("HTTP/1.1 101") {
        let first = head.lines().next().unwrap_or("").to_owned();
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("upgrade refused: {first}"),
        ));
    }
    if header_value(&head, "sec-websocket-accept") != Some(accept_key(&key).as_str()) {
        return Err(proto("bad Sec-WebSocket-Accept"));
    }
    Ok(buf[head_len..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect {
        data: Vec<u8>,
        messages: usize,
        controls: Vec<(u8, Vec<u8>)>,
    }

    impl FrameSink for Collect {
        fn on_data_start(&mut self, _fin: bool, _opcode: u8, _len: u64) {}
        fn on_data(&mut self, chunk: &[u8]) {
            self.data.extend_from_slice(chunk);
        }
        fn on_data_end(&mut self, fin: bool) {
            self.messages += usize::from(fin);
        }
        fn on_control(&mut self, opcode: u8, payload: &[u8]) {
            self.controls.push((opcode, payload.to_vec()));
        }
    }

    /// Masked frames of every length class decode to the original bytes even when fed one
    /// byte at a time, which exercises the split-header and split-payload paths.
    #[test]
    fn masked_frames_round_trip_bytewise() {
        let mut rng = Rng::new();
        let mut wire = Vec::new();
        let payloads: Vec<Vec<u8>> = [0usize, 5, 125, 126, 300, 70_000]
            .iter()
            .map(|&n| (0..n).map(|i| (i % 251) as u8).collect())
            .collect();
        for p in &payloads {
            put_masked(&mut wire, true, OP_BINARY, p, &mut rng);
        }
        put_masked(&mut wire, true, OP_PING, b"hb", &mut rng);
        let mut dec = Decoder::default();
        let mut sink = Collect::default();
        for i in 0..wire.len() {
            dec.feed(&mut wire[i..=i], &mut sink).unwrap();
        }
        assert_eq!(sink.data, payloads.concat());
        assert_eq!(sink.messages, payloads.len());
        assert_eq!(sink.controls, vec![(OP_PING, b"hb".to_vec())]);
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn mask_with_offset_equals_mask_of_whole() {
        let mut whole: Vec<u8> = (0..100).collect();
        let mut parts = whole.clone();
        let m = [1, 2, 3, 4];
        apply_mask(&mut whole, m, 0);
        apply_mask(&mut parts[..13], m, 0);
        apply_mask(&mut parts[13..], m, 13);
        assert_eq!(whole, parts);
    }
}
