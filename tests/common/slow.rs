//! A client that reads its socket in small paced chunks, as a client on a slow link does.

/// Frames seen by a client that reads its socket in small paced chunks, as a client on a slow
/// link does. Data payloads are counted and skipped, so a 1 MiB frame costs no memory and no
/// per-byte work (which a debug build of a test pays dearly for).
#[derive(Default)]
pub struct SlowReader {
    /// Whether the frames are masked: read by an upstream, not a client.
    masked: bool,
    buf: Vec<u8>,
    /// Payload bytes of the current data frame still to come.
    skip: u64,
    pub data_bytes: u64,
    pub data_frames: u64,
}

/// A control frame the slow reader found: opcode and payload.
pub type Control = (u8, Vec<u8>);

impl SlowReader {
    /// A reader for an upstream's end, where every frame is masked; control payloads are
    /// returned unmasked.
    pub fn masked() -> SlowReader {
        SlowReader {
            masked: true,
            ..SlowReader::default()
        }
    }

    /// Takes `bytes` read from the socket; returns the control frames completed by them.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Control> {
        self.buf.extend_from_slice(bytes);
        let mut found = Vec::new();
        let mut pos = 0;
        loop {
            if self.skip > 0 {
                let n = ((self.buf.len() - pos) as u64).min(self.skip);
                self.skip -= n;
                self.data_bytes += n;
                pos += n as usize;
                if self.skip > 0 {
                    break;
                }
                self.data_frames += 1;
                continue;
            }
            let Some((opcode, header, len)) = frame_header(&self.buf[pos..], self.masked) else {
                break;
            };
            if opcode & 0x8 != 0 {
                let end = pos + header + len as usize;
                if self.buf.len() < end {
                    break;
                }
                let mut payload = self.buf[pos + header..end].to_vec();
                if self.masked {
                    let key = &self.buf[pos + header - 4..pos + header];
                    payload
                        .iter_mut()
                        .zip(key.iter().cycle())
                        .for_each(|(b, k)| *b ^= k);
                }
                found.push((opcode, payload));
                pos = end;
            } else {
                pos += header;
                self.skip = len;
                if len == 0 {
                    self.data_frames += 1;
                }
            }
        }
        self.buf.drain(..pos);
        found
    }
}

/// Opcode, header length (with the masking key) and payload length of the frame at the start
/// of `buf`, which is masked if and only if `masked`.
fn frame_header(buf: &[u8], masked: bool) -> Option<(u8, usize, u64)> {
    let [b0, b1, ..] = *buf else { return None };
    let (header, len) = match b1 & 0x7F {
        126 => (
            4,
            u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)),
        ),
        127 => (10, u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)),
        n => (2, u64::from(n)),
    };
    if masked {
        assert_eq!(b1 & 0x80, 0x80, "the proxy sent an unmasked frame upstream");
        // The key must be there too before the frame can be looked at.
        buf.get(header + 3)?;
        Some((b0 & 0x0F, header + 4, len))
    } else {
        assert_eq!(b1 & 0x80, 0, "the proxy masked a frame toward the client");
        Some((b0 & 0x0F, header, len))
    }
}
