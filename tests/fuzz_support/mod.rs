//! Shared by the fuzz targets (`tests/fuzz_*.rs`): a time- or count-bounded proptest loop, and
//! a reference frame encoder and parser written from RFC 6455 5.2, independent of wsbeat's.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Cases per batch when running for a set time.
const BATCH: u32 = 2_000;

/// Runs `test` on values of `strategy`: `cases` of them, or, when `WSBEAT_FUZZ_SECONDS` is set,
/// batch after batch for that many seconds. Prints the number of executions; panics with the
/// shrunk failing input on the first failure.
pub fn fuzz<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let seconds: Option<u64> = std::env::var("WSBEAT_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok());
    let deadline = seconds.map(|s| Instant::now() + Duration::from_secs(s));
    let batch = if deadline.is_some() { BATCH } else { cases };
    let mut executions = 0u64;
    loop {
        let mut runner = TestRunner::new(Config {
            cases: batch,
            failure_persistence: None,
            ..Config::default()
        });
        if let Err(e) = runner.run(&strategy, &test) {
            panic!("fuzz target {name} failed after {executions} executions: {e}");
        }
        executions += u64::from(batch);
        if deadline.is_none_or(|d| Instant::now() >= d) {
            break;
        }
    }
    eprintln!("fuzz target {name}: {executions} executions, no failure");
}

/// A frame as parsed from a byte stream, payload unmasked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wire {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    /// Header length without the masking key: shows the length encoding used.
    pub len_bytes: usize,
    /// Payload length announced in the header.
    pub len: u64,
    /// The payload as far as the stream holds it.
    pub payload: Vec<u8>,
    /// The whole payload is in the stream.
    pub complete: bool,
}

impl Wire {
    /// Same frame, but for the masking key.
    pub fn same_frame(&self, other: &Wire) -> bool {
        self.fin == other.fin
            && self.rsv == other.rsv
            && self.opcode == other.opcode
            && self.len_bytes == other.len_bytes
            && self.len == other.len
            && self.payload == other.payload
    }

    /// A cut-off copy of `other`: same header, payload a prefix of its.
    pub fn is_cut_from(&self, other: &Wire) -> bool {
        self.fin == other.fin
            && self.rsv == other.rsv
            && self.opcode == other.opcode
            && self.len_bytes == other.len_bytes
            && self.len == other.len
            && other.payload.starts_with(&self.payload)
    }
}

/// Appends one frame. `length_form`: 0 shortest, 1 16-bit, 2 64-bit length field.
pub fn encode(
    out: &mut Vec<u8>,
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    length_form: u8,
    payload: &[u8],
) {
    out.push(u8::from(fin) << 7 | (rsv & 7) << 4 | (opcode & 0xF));
    let m = if mask.is_some() { 0x80 } else { 0 };
    let n = payload.len();
    match length_form {
        0 if n < 126 => out.push(m | n as u8),
        0 | 1 if n <= usize::from(u16::MAX) => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
        }
        None => out.extend_from_slice(payload),
    }
}

/// Parses frames until the stream ends or cannot hold a frame (a length with the top bit set);
/// the last frame may be incomplete.
pub fn parse_stream(mut bytes: &[u8]) -> Vec<Wire> {
    let mut frames = Vec::new();
    while let [b0, b1, rest @ ..] = bytes {
        let masked = b1 & 0x80 != 0;
        let (extra, len) = match b1 & 0x7F {
            126 if rest.len() >= 2 => (2, u64::from(u16::from_be_bytes([rest[0], rest[1]]))),
            127 if rest.len() >= 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&rest[..8]);
                (8, u64::from_be_bytes(b))
            }
            126 | 127 => break,
            n => (0, u64::from(n)),
        };
        if len >> 63 != 0 {
            break;
        }
        let header = 2 + extra + if masked { 4 } else { 0 };
        if bytes.len() < header {
            break;
        }
        let key = masked.then(|| {
            [
                bytes[header - 4],
                bytes[header - 3],
                bytes[header - 2],
                bytes[header - 1],
            ]
        });
        let available = (bytes.len() - header) as u64;
        let take = len.min(available) as usize;
        let mut payload = bytes[header..header + take].to_vec();
        if let Some(key) = key {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
        }
        frames.push(Wire {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 7,
            opcode: b0 & 0xF,
            masked,
            len_bytes: 2 + extra,
            len,
            payload,
            complete: take as u64 == len,
        });
        bytes = &bytes[header + take..];
    }
    frames
}
