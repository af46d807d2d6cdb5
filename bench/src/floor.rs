//! The kernel's floor for one heartbeat: what a ping round trip costs the side that sends the
//! ping, with no event loop, no runtime and no parsing.
//!
//! One thread holds `pairs` loopback TCP connections and, for each in turn, writes a 6-byte
//! ping on one end, reads it on the other, writes the 10-byte masked pong back and reads it.
//! Loopback delivers inside the sender's `send` (the receive path runs in its softirq), so every
//! byte is there when the read comes and the thread never sleeps. The thread's CPU time
//! (`/proc/thread-self/schedstat`, nanoseconds) covers both peers; a proxy pays for one of them,
//! its ping out and the pong in, so the floor per ping is half. A real proxy also pays for the
//! wake-up that tells it the pong arrived, so this is a lower bound, not a target.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use tokio::time::Instant;

use crate::client::Report;

/// What `floor` was asked to do.
#[derive(clap::Args)]
pub struct FloorArgs {
    /// Connections pinged in turn (spread over many sockets like a proxy's idle sessions).
    #[arg(long, default_value_t = 1000)]
    pub pairs: usize,
    /// Round trips per connection.
    #[arg(long, default_value_t = 50)]
    pub rounds: usize,
}

/// A ping with a 4-byte payload as a server sends it (unmasked).
const PING: [u8; 6] = [0x89, 0x04, 0, 0, 0, 1];
/// The pong as a client sends it (masked).
const PONG: [u8; 10] = [0x8A, 0x84, 1, 2, 3, 4, 1, 2, 3, 5];
/// A read that finds nothing is retried this many times before the run is declared broken.
const READ_RETRIES: usize = 1000;

pub fn run(args: FloorArgs) -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut pairs = connect_pairs(&listener, args.pairs)?;
    // One untimed round warms the sockets (first segments, ACK state) and the caches.
    round_trips(&mut pairs, 1)?;
    let (cpu0, wall0) = (thread_cpu_ns()?, Instant::now());
    round_trips(&mut pairs, args.rounds)?;
    let (cpu, wall) = (thread_cpu_ns()? - cpu0, wall0.elapsed());
    let trips = (args.pairs * args.rounds) as f64;
    let mut r = Report::default();
    r.num("round_trips", trips);
    r.num("wall_s", wall.as_secs_f64());
    r.num("both_sides_us_per_round_trip", cpu as f64 / 1e3 / trips);
    r.num("us_per_ping", cpu as f64 / 1e3 / trips / 2.0);
    r.print();
    Ok(())
}

/// `n` connected loopback pairs, non-blocking, with TCP_NODELAY like a proxy's legs.
fn connect_pairs(listener: &TcpListener, n: usize) -> io::Result<Vec<(TcpStream, TcpStream)>> {
    let addr = listener.local_addr()?;
    let mut pairs = Vec::with_capacity(n);
    for _ in 0..n {
        let a = TcpStream::connect(addr)?;
        let (b, _) = listener.accept()?;
        for s in [&a, &b] {
            s.set_nodelay(true)?;
            s.set_nonblocking(true)?;
        }
        pairs.push((a, b));
    }
    Ok(pairs)
}

fn round_trips(pairs: &mut [(TcpStream, TcpStream)], rounds: usize) -> io::Result<()> {
    let mut buf = [0u8; 16];
    for _ in 0..rounds {
        for (proxy, peer) in pairs.iter_mut() {
            proxy.write_all(&PING)?;
            read_exact(peer, &mut buf[..PING.len()])?;
            peer.write_all(&PONG)?;
            read_exact(proxy, &mut buf[..PONG.len()])?;
        }
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes from a non-blocking socket whose data is already queued.
fn read_exact(s: &mut TcpStream, buf: &mut [u8]) -> io::Result<()> {
    let mut got = 0;
    for _ in 0..READ_RETRIES {
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                got += n;
                if got == buf.len() {
                    return Ok(());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_micros(10));
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        "loopback data did not arrive",
    ))
}

/// CPU time of the calling thread in nanoseconds (first field of its schedstat).
fn thread_cpu_ns() -> io::Result<u64> {
    // The kernel brings the running thread's total up to date at a tick or a reschedule;
    // yielding asks for the reschedule, so the figure is exact rather than tick-old.
    std::thread::yield_now();
    let text = std::fs::read_to_string("/proc/thread-self/schedstat")?;
    text.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable schedstat"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_move_the_frames_and_cost_cpu() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut pairs = connect_pairs(&listener, 3).unwrap();
        let before = thread_cpu_ns().unwrap();
        round_trips(&mut pairs, 5).unwrap();
        assert!(thread_cpu_ns().unwrap() > before);
        // Every byte was consumed: nothing is left queued on either end.
        let mut buf = [0u8; 1];
        for (a, b) in &mut pairs {
            for s in [a, b] {
                let err = s.read(&mut buf).unwrap_err();
                assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
            }
        }
    }
}
