//! `wsbeat drain`: the client side of `POST /drain`, for places with no shell and no `curl`,
//! such as a Kubernetes `preStop` exec hook in a distroless image.
//!
//! It speaks just enough HTTP/1.1 for one request with `Connection: close`, and with `--wait`
//! watches the admin port until it refuses connections, which happens when wsbeat has finished
//! its drain and is exiting. It does not decide anything about the drain itself.

use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Time the admin listener gets to answer `POST /drain`: it answers at once, so only a stuck
/// or wrong process takes longer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two checks of whether wsbeat has exited: short enough that a `preStop` hook
/// returns promptly, long enough to cost nothing.
const WAIT_POLL: Duration = Duration::from_millis(50);
/// Most of the answer that is read: a status line and a one-line body.
const MAX_ANSWER_BYTES: u64 = 4096;

/// Why `wsbeat drain` failed.
#[derive(Debug, thiserror::Error)]
pub enum DrainClientError {
    /// Nothing listens there, or the connection failed.
    #[error("cannot reach the admin listener at {addr}: {source}")]
    Connect {
        /// Where we tried.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The request or the answer failed half-way.
    #[error("POST /drain to {addr} failed: {source}")]
    Io {
        /// Where we tried.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// No answer in time.
    #[error("no answer from the admin listener at {addr} within {REQUEST_TIMEOUT:?}")]
    Timeout {
        /// Where we tried.
        addr: SocketAddr,
    },
    /// An answer other than 202, such as 403 from a non-loopback address.
    #[error("the admin listener at {addr} refused the drain: {answer}")]
    Refused {
        /// Where we tried.
        addr: SocketAddr,
        /// Its status line and body.
        answer: String,
    },
}

/// The address to dial for a listener bound to `addr`: a wildcard IP means this machine, and
/// loopback is the address `POST /drain` accepts.
pub fn dialable(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) if v4.ip().is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], v4.port()))
        }
        SocketAddr::V6(v6) if v6.ip().is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, v6.port()))
        }
        other => other,
    }
}

/// Sends `POST /drain` to the admin listener at `addr` (a wildcard IP dials loopback).
///
/// # Errors
/// [`DrainClientError`] when the listener cannot be reached, does not answer in time, or
/// answers anything but 202.
pub async fn request_drain(addr: SocketAddr) -> Result<(), DrainClientError> {
    let addr = dialable(addr);
    let answer = tokio::time::timeout(REQUEST_TIMEOUT, exchange(addr))
        .await
        .map_err(|_| DrainClientError::Timeout { addr })??;
    if answer.starts_with("HTTP/1.1 202") {
        return Ok(());
    }
    let answer = answer.replace("\r\n", " ").trim().to_owned();
    Err(DrainClientError::Refused { addr, answer })
}

/// One request with `Connection: close`; the answer as text, head and body.
async fn exchange(addr: SocketAddr) -> Result<String, DrainClientError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|source| DrainClientError::Connect { addr, source })?;
    let request = format!(
        "POST /drain HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let io = |source| DrainClientError::Io { addr, source };
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut answer = Vec::new();
    stream
        .take(MAX_ANSWER_BYTES)
        .read_to_end(&mut answer)
        .await
        .map_err(io)?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// Returns once the admin listener at `addr` refuses connections: wsbeat has exited, or is
/// about to (the admin listener is the last thing it closes).
pub async fn wait_for_exit(addr: SocketAddr) {
    let addr = dialable(addr);
    while TcpStream::connect(addr).await.is_ok() {
        tokio::time::sleep(WAIT_POLL).await;
    }
}
