//! A tiny legacy-style WebSocket echo server that never answers pings.
//!
//! It stands in for the servers wsbeat is built for: `--demo` runs it in-process as the
//! upstream so a newcomer can watch wsbeat's heartbeats with any client, and the tests use it as
//! an upstream that ignores pings. It echoes data frames as they came (opcode, FIN and RSV bits),
//! answers a close with a close, and ignores pings and pongs.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::frame::{self, OP_CLOSE, OP_PING, OP_PONG};

/// Longest request head accepted.
const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// Largest frame the demo echoes; larger ones end the connection.
const MAX_DEMO_FRAME: u64 = 16 * 1024 * 1024;

/// Accepts connections forever, serving each in its own task.
pub async fn serve(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(async move {
                    if let Err(e) = echo(stream).await {
                        tracing::debug!(error = %e, "demo upstream connection ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "demo upstream accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn echo(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = handshake(&mut stream).await?;
    let mut out = Vec::new();
    loop {
        while let Some(h) = frame::parse_header(&buf).map_err(io::Error::other)? {
            if h.payload_len > MAX_DEMO_FRAME {
                return Err(io::Error::other("frame too large for the demo"));
            }
            let len = h.frame_len() as usize;
            if buf.len() < len {
                break;
            }
            let mut payload = buf[h.header_len..len].to_vec();
            if let Some(key) = h.mask {
                frame::apply_mask(&mut payload, key, 0);
            }
            buf.drain(..len);
            match h.opcode {
                OP_PING | OP_PONG => continue,
                OP_CLOSE => {
                    frame::encode_frame(&mut out, true, OP_CLOSE, &payload, None);
                    stream.write_all(&out).await?;
                    return Ok(());
                }
                op => {
                    let start = out.len();
                    frame::encode_frame(&mut out, h.fin, op, &payload, None);
                    // Keep RSV bits as they came, as a legacy server with an extension would.
                    out[start] |= h.rsv << 4;
                }
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads the upgrade request and answers 101; returns any bytes read past the request.
///
/// Public so that other bare test peers (the Autobahn upstream) accept upgrades the same way.
///
/// # Errors
/// The socket's errors, an early EOF, a request head over 16 KiB, or no `Sec-WebSocket-Key`.
pub async fn handshake(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let end = loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(pos) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        if head.len() > MAX_REQUEST_HEAD {
            return Err(io::Error::other("request head too long"));
        }
    };
    let text = String::from_utf8_lossy(&head[..end]);
    let key = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("sec-websocket-key"))
        .map(|(_, v)| v.trim().to_owned())
        .ok_or_else(|| io::Error::other("no Sec-WebSocket-Key"))?;
    let reply = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    stream.write_all(reply.as_bytes()).await?;
    Ok(head.split_off(end))
}
