//! A TCP relay with as little as possible between its sockets, as a bench target: two blocking
//! threads per connection, each moving one direction with `splice(2)` through its own pipe
//! (`splice`) or with `read`/`write` through a 256 KiB buffer (`copy`). No event loop, no
//! parsing, no framing, no heartbeat, and each direction has a thread of its own.
//!
//! It is not a proxy anyone should run: it is a reference for what a relay that adds the same
//! two loopback hops as a proxy, and does nothing else, reaches on this machine
//! (docs/PERFORMANCE.md, issue 14). It is one design among several, not a lower bound.
//!
//!     splice-relay LISTEN UPSTREAM [splice|copy]
//!
//! Like the other bench tools: loopback only, no limits, no timeouts.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::thread;

/// Pipe capacity, as wsbeat's pipes.
const PIPE_BYTES: libc::c_int = 256 * 1024;

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (listen, upstream) = match (args.get(1), args.get(2)) {
        (Some(l), Some(u)) => (l.clone(), u.clone()),
        _ => {
            eprintln!("usage: splice-relay LISTEN UPSTREAM [splice|copy]");
            std::process::exit(2);
        }
    };
    let splice = match args.get(3).map(String::as_str) {
        None | Some("splice") => true,
        Some("copy") => false,
        Some(other) => {
            eprintln!("splice-relay: unknown mode {other}");
            std::process::exit(2);
        }
    };
    let listener = TcpListener::bind(&listen)?;
    for client in listener.incoming() {
        // One connection's failure (an aborted accept, no descriptors left) ends only that
        // connection, never the run.
        if let Err(e) = client.and_then(|client| relay(client, &upstream, splice)) {
            eprintln!("splice-relay: {e}");
        }
    }
    Ok(())
}

/// Connects `client` to `upstream` and starts the two threads that move its bytes.
fn relay(client: TcpStream, upstream: &str, splice: bool) -> io::Result<()> {
    let upstream = TcpStream::connect(upstream)?;
    client.set_nodelay(true)?;
    upstream.set_nodelay(true)?;
    for (from, to) in [
        (client.try_clone()?, upstream.try_clone()?),
        (upstream, client),
    ] {
        thread::spawn(move || {
            let moved = if splice {
                splice_loop(&from, &to)
            } else {
                copy_loop(&from, &to)
            };
            if let Err(e) = moved {
                eprintln!("splice-relay: {e}");
            }
            let _ = to.shutdown(Shutdown::Write);
            let _ = from.shutdown(Shutdown::Read);
        });
    }
    Ok(())
}

fn copy_loop(mut from: &TcpStream, mut to: &TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; PIPE_BYTES as usize];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n])?;
    }
}

fn splice_loop(from: &TcpStream, to: &TcpStream) -> io::Result<()> {
    let (rd, wr) = pipe()?;
    loop {
        let n = splice(from.as_raw_fd(), wr.as_raw_fd(), PIPE_BYTES as usize)?;
        if n == 0 {
            return Ok(());
        }
        let mut left = n;
        while left > 0 {
            match splice(rd.as_raw_fd(), to.as_raw_fd(), left)? {
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "splice wrote nothing",
                    ));
                }
                sent => left -= sent,
            }
        }
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two descriptors for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: F_SETPIPE_SZ on a pipe we own.
    if unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES) } < 0 {
        // The run goes on with the default 64 KiB pipe, but says so: the figures differ.
        eprintln!(
            "splice-relay: F_SETPIPE_SZ {PIPE_BYTES}: {}",
            io::Error::last_os_error()
        );
    }
    Ok((rd, wr))
}

/// One blocking `splice` of up to `len` bytes; `Ok(0)` is end of stream.
fn splice(from: i32, to: i32, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: both descriptors are open for the call; null offsets are allowed for
        // sockets and pipes.
        let n =
            unsafe { libc::splice(from, std::ptr::null_mut(), to, std::ptr::null_mut(), len, 0) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
