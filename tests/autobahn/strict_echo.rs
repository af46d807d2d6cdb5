//! A strict legacy upstream for the Autobahn run (`scripts/autobahn.sh`): an echo server that
//! never answers pings and drops the connection on anything it was not written for.
//!
//! It reacts to bad input as a tokio-tungstenite echo server does (the issue's "strict
//! tungstenite upstream"), except that it never sends a pong: a protocol error while reading
//! ends the connection without a close frame; a close frame with a code RFC 6455 does not allow
//! is answered with close 1002; a valid close is echoed. Whole messages are echoed as one frame,
//! as a message-based server would. Listens on 127.0.0.1, port 0, and prints `PORT <n>` once
//! listening.

use std::io::{self, Cursor};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

/// Largest message echoed; Autobahn's biggest (9.x) is 16 MiB.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// Largest control frame payload (RFC 6455 5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

#[tokio::main(flavor = "current_thread")]
async fn main() -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("PORT {}", listener.local_addr()?.port());
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            if let Err(e) = serve(stream).await {
                eprintln!("strict_echo: connection dropped: {e}");
            }
        });
    }
}

/// What the server does after a frame.
enum Step {
    Continue,
    /// Write this frame, then end the connection.
    Finish(Frame),
}

/// A message being reassembled: text or not, and the payload so far.
type Partial = Option<(bool, Vec<u8>)>;

async fn serve(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = wsbeat::demo::handshake(&mut stream).await?;
    let mut partial: Partial = None;
    let mut out = Vec::new();
    loop {
        // Frames are taken off the front by offset; the buffer is compacted once per read, not
        // once per frame (thousands of small frames arrive in one read in the 9.x cases).
        let mut start = 0;
        while let Some((header, payload, len)) = next_frame(&buf[start..])? {
            start += len;
            if let Step::Finish(last) = on_frame(&header, payload, &mut partial, &mut out)? {
                last.format(&mut out).map_err(io::Error::other)?;
                stream.write_all(&out).await?;
                return Ok(());
            }
        }
        buf.drain(..start);
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        let mut chunk = [0u8; 64 * 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::other("connection ended without a close frame"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The whole frame at the start of `buf`, unmasked, and its length on the wire; `None` until
/// one is buffered.
fn next_frame(buf: &[u8]) -> io::Result<Option<(FrameHeader, Vec<u8>, usize)>> {
    let mut cursor = Cursor::new(buf);
    let Some((header, len)) = FrameHeader::parse(&mut cursor).map_err(io::Error::other)? else {
        return Ok(None);
    };
    if len > MAX_MESSAGE as u64 {
        return Err(io::Error::other("frame too large"));
    }
    let start = cursor.position() as usize;
    let end = start + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    let key = header
        .mask
        .ok_or_else(|| io::Error::other("unmasked frame"))?;
    let payload = buf[start..end]
        .iter()
        .zip(key.iter().cycle())
        .map(|(b, k)| b ^ k)
        .collect();
    Ok(Some((header, payload, end)))
}

/// Checks one frame as a conforming endpoint would; errors end the connection at once.
fn on_frame(
    h: &FrameHeader,
    payload: Vec<u8>,
    partial: &mut Partial,
    out: &mut Vec<u8>,
) -> io::Result<Step> {
    let bad = |what: &str| Err(io::Error::other(what.to_owned()));
    if h.rsv1 || h.rsv2 || h.rsv3 {
        return bad("reserved bits set");
    }
    let data = match h.opcode {
        OpCode::Control(control) => {
            if !h.is_final || payload.len() > MAX_CONTROL_PAYLOAD {
                return bad("fragmented or oversized control frame");
            }
            return match control {
                // Never answered: this server stands for the legacy ones that ignore pings.
                Control::Ping | Control::Pong => Ok(Step::Continue),
                Control::Close => on_close(&payload),
                Control::Reserved(_) => bad("reserved control opcode"),
            };
        }
        OpCode::Data(data) => data,
    };
    match (data, partial.as_mut()) {
        (Data::Continue, None) => return bad("continuation with no message started"),
        (Data::Continue, Some((_, so_far))) => so_far.extend_from_slice(&payload),
        (Data::Text | Data::Binary, None) => *partial = Some((data == Data::Text, payload)),
        (Data::Text | Data::Binary, Some(_)) => return bad("new message inside a fragmented one"),
        (Data::Reserved(_), _) => return bad("reserved data opcode"),
    }
    if partial.as_ref().is_some_and(|(_, d)| d.len() > MAX_MESSAGE) {
        return bad("message too large");
    }
    if h.is_final
        && let Some((text, message)) = partial.take()
    {
        if text && std::str::from_utf8(&message).is_err() {
            return bad("text message is not UTF-8");
        }
        let opcode = if text { Data::Text } else { Data::Binary };
        Frame::message(message, OpCode::Data(opcode), true)
            .format(out)
            .map_err(io::Error::other)?;
    }
    Ok(Step::Continue)
}

/// Echoes a valid close, answers a code RFC 6455 does not allow with 1002, and drops the
/// connection on a reason that is not UTF-8, as tungstenite does.
fn on_close(payload: &[u8]) -> io::Result<Step> {
    let close = match payload {
        [] => None,
        [_] => return Err(io::Error::other("one-byte close payload")),
        [a, b, reason @ ..] => {
            let reason = std::str::from_utf8(reason)
                .map_err(|_| io::Error::other("close reason is not UTF-8"))?;
            let code = CloseCode::from(u16::from_be_bytes([*a, *b]));
            Some(if code.is_allowed() {
                CloseFrame {
                    code,
                    reason: reason.to_owned().into(),
                }
            } else {
                CloseFrame {
                    code: CloseCode::Protocol,
                    reason: "".into(),
                }
            })
        }
    };
    Ok(Step::Finish(Frame::close(close)))
}
