//! What io_uring would give wsbeat's heartbeat path on this kernel, outside the product.
//!
//! One thread holds `pairs` loopback TCP connections, one end playing the proxy and the other
//! the peer, and every round each proxy end writes a 6-byte ping, the peer reads it and writes a
//! 10-byte masked pong, and the proxy end reads it. The same sockets are driven these ways:
//!
//! - `floor`: plain non-blocking `send`/`recv`, one pair after the other, no event loop (what
//!   `wsbeat-bench floor` does);
//! - `epoll`: all pings written, then `epoll_wait` (mio, edge-triggered, like tokio) tells which
//!   sockets to read; one `recv` per event, since a short read means the socket is drained;
//! - `uring`: each half of a round (pings out and read, pongs out and read) is one batch of
//!   `send` and `recv` entries handed to the kernel in one `io_uring_enter`;
//! - `uring-armed`: as `uring`, but the proxy's `recv` of the pong is posted before its ping
//!   goes out, as a proxy with a standing read would do, so it completes through the kernel's
//!   poll wake-up rather than finding the data already queued;
//! - `uring-tuned`, `uring-armed-tuned`: the same with registered files and a
//!   `SINGLE_ISSUER` + `DEFER_TASKRUN` ring, as a thread-per-core runtime would set it up.
//!
//! CPU is the process's `getrusage` user + system time, which covers both ends (and any kernel
//! worker the ring starts); per ping is half of that per round trip, as in `wsbeat-bench floor`.
//! Every end runs on this one thread and never sleeps, so no row pays for waking a sleeping
//! peer, which wsbeat's idle figure does.
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

use io_uring::{IoUring, opcode, squeue, types};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

/// A ping with a 4-byte payload as a server sends it (unmasked).
const PING: [u8; 6] = [0x89, 0x04, 0, 0, 0, 1];
/// The pong as a client sends it (masked).
const PONG: [u8; 10] = [0x8A, 0x84, 1, 2, 3, 4, 1, 2, 3, 5];
/// Round trips per timed run, spread over the pairs (at least `MIN_ROUNDS` rounds).
const TRIPS: usize = 400_000;
const MIN_ROUNDS: usize = 10;
const REPS: usize = 3;
const MODES: [&str; 6] = [
    "floor",
    "epoll",
    "uring",
    "uring-armed",
    "uring-tuned",
    "uring-armed-tuned",
];

type Pair = (TcpStream, TcpStream);

fn main() -> io::Result<()> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("arguments are pair counts"))
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1000, 9000]
    } else {
        sizes
    };
    check_uring()?;
    // One set of connections serves every run: closing and reopening thousands of pairs per run
    // would fill the ephemeral port range with TIME_WAIT sockets.
    let pairs = connect_pairs(sizes.iter().copied().max().unwrap_or(0))?;
    println!("| pairs | rounds | mode | µs per ping (median of {REPS}) | runs | × floor |");
    println!("|---|---|---|---|---|---|");
    for &n in &sizes {
        let rounds = (TRIPS / n).max(MIN_ROUNDS);
        let mut runs = vec![Vec::new(); MODES.len()];
        // Modes interleaved within each repetition, so a slow spell of the machine hits all.
        for _ in 0..REPS {
            for (m, mode) in MODES.iter().enumerate() {
                runs[m].push(measure(mode, &pairs[..n], rounds)?);
            }
        }
        let medians: Vec<f64> = runs.iter().map(|r| median(r)).collect();
        for (m, mode) in MODES.iter().enumerate() {
            let all: Vec<String> = runs[m].iter().map(|v| format!("{v:.2}")).collect();
            println!(
                "| {n} | {rounds} | {mode} | {:.2} | {} | {:.2}× |",
                medians[m],
                all.join(" / "),
                medians[m] / medians[0]
            );
        }
    }
    Ok(())
}

/// Fails with the kernel's own error if io_uring is unavailable (disabled by
/// `kernel.io_uring_disabled`, a seccomp filter, or a kernel built without it).
fn check_uring() -> io::Result<()> {
    let mut ring = IoUring::new(8)
        .map_err(|e| io::Error::new(e.kind(), format!("io_uring_setup failed: {e}")))?;
    let nop = opcode::Nop::new().build().user_data(7);
    // SAFETY: a NOP references no memory.
    unsafe { ring.submission().push(&nop) }.expect("an empty ring has room");
    ring.submit_and_wait(1)?;
    let cqe = ring.completion().next().expect("one completion");
    assert_eq!(
        (cqe.user_data(), cqe.result()),
        (7, 0),
        "NOP completed oddly"
    );
    Ok(())
}

/// CPU seconds of the whole process, user plus system.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes one plain struct we own.
    let ru = unsafe {
        let mut ru = std::mem::zeroed::<libc::rusage>();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut ru), 0);
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// One timed run after one untimed round (first segments, ACK state, caches), in µs per ping.
fn measure(mode: &str, pairs: &[Pair], rounds: usize) -> io::Result<f64> {
    let run = |r| match mode {
        "floor" => floor(pairs, r),
        "epoll" => epoll(pairs, r),
        _ => uring(
            pairs,
            r,
            Ring {
                armed: mode.contains("armed"),
                tuned: mode.contains("tuned"),
            },
        ),
    };
    run(1)?;
    let cpu0 = cpu_seconds();
    run(rounds)?;
    let trips = (pairs.len() * rounds) as f64;
    Ok((cpu_seconds() - cpu0) * 1e6 / trips / 2.0)
}

/// `n` connected loopback pairs, non-blocking, with TCP_NODELAY like a proxy's legs.
fn connect_pairs(n: usize) -> io::Result<Vec<Pair>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
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

/// One `recv` that must return exactly `want` bytes: on loopback a segment is queued whole by
/// the time its reader runs, so anything else is a broken run.
fn read_whole(mut s: &TcpStream, want: usize) -> io::Result<()> {
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf)?;
    check_len(n as i32, want)
}

fn check_len(got: i32, want: usize) -> io::Result<()> {
    if got < 0 {
        return Err(io::Error::from_raw_os_error(-got));
    }
    if got as usize != want {
        return Err(io::Error::other(format!(
            "moved {got} bytes, expected {want}"
        )));
    }
    Ok(())
}

fn floor(pairs: &[Pair], rounds: usize) -> io::Result<()> {
    for _ in 0..rounds {
        for (proxy, peer) in pairs {
            (&*proxy).write_all(&PING)?;
            read_whole(peer, PING.len())?;
            (&*peer).write_all(&PONG)?;
            read_whole(proxy, PONG.len())?;
        }
    }
    Ok(())
}

/// Token `2i` is pair `i`'s proxy end, `2i + 1` its peer end.
fn epoll(pairs: &[Pair], rounds: usize) -> io::Result<()> {
    let mut poll = Poll::new()?;
    // tokio's event buffer size.
    let mut events = Events::with_capacity(1024);
    for (i, (proxy, peer)) in pairs.iter().enumerate() {
        let (a, b) = (proxy.as_raw_fd(), peer.as_raw_fd());
        poll.registry()
            .register(&mut SourceFd(&a), Token(2 * i), Interest::READABLE)?;
        poll.registry()
            .register(&mut SourceFd(&b), Token(2 * i + 1), Interest::READABLE)?;
    }
    for _ in 0..rounds {
        for (proxy, _) in pairs {
            (&*proxy).write_all(&PING)?;
        }
        let mut pongs = 0;
        while pongs < pairs.len() {
            poll.poll(&mut events, None)?;
            for ev in &events {
                let (proxy, peer) = &pairs[ev.token().0 / 2];
                if ev.token().0 % 2 == 1 {
                    read_whole(peer, PING.len())?;
                    (&*peer).write_all(&PONG)?;
                } else {
                    read_whole(proxy, PONG.len())?;
                    pongs += 1;
                }
            }
        }
    }
    for (proxy, peer) in pairs {
        poll.registry()
            .deregister(&mut SourceFd(&proxy.as_raw_fd()))?;
        poll.registry()
            .deregister(&mut SourceFd(&peer.as_raw_fd()))?;
    }
    Ok(())
}

/// What a completion was: user data is `4i + kind`.
const SEND_PING: u64 = 0;
const RECV_PING: u64 = 1;
const SEND_PONG: u64 = 2;
const RECV_PONG: u64 = 3;

/// How the ring is set up and the sockets named.
#[derive(Clone, Copy)]
struct Ring {
    /// The proxy's `recv` of the pong is posted before its ping goes out.
    armed: bool,
    /// Registered files (no file table lookup and reference count per entry) and a ring only
    /// this thread submits to, whose completion work runs when it asks for completions
    /// (`SINGLE_ISSUER` + `DEFER_TASKRUN`): what a thread-per-core runtime would set.
    tuned: bool,
}

impl Ring {
    /// Socket end `end` (`2i` proxy, `2i + 1` peer of pair `i`) sends `frame`.
    fn send(self, pairs: &[Pair], end: usize, frame: &[u8], tag: u64) -> squeue::Entry {
        let len = frame.len() as u32;
        if self.tuned {
            opcode::Send::new(types::Fixed(end as u32), frame.as_ptr(), len).build()
        } else {
            opcode::Send::new(types::Fd(raw_fd(pairs, end)), frame.as_ptr(), len).build()
        }
        .user_data(tag)
    }

    fn recv(self, pairs: &[Pair], end: usize, buf: &mut [u8], tag: u64) -> squeue::Entry {
        let len = buf.len() as u32;
        if self.tuned {
            opcode::Recv::new(types::Fixed(end as u32), buf.as_mut_ptr(), len).build()
        } else {
            opcode::Recv::new(types::Fd(raw_fd(pairs, end)), buf.as_mut_ptr(), len).build()
        }
        .user_data(tag)
    }
}

fn raw_fd(pairs: &[Pair], end: usize) -> i32 {
    let (proxy, peer) = &pairs[end / 2];
    if end.is_multiple_of(2) { proxy } else { peer }.as_raw_fd()
}

fn uring(pairs: &[Pair], rounds: usize, how: Ring) -> io::Result<()> {
    let n = pairs.len();
    // Room for every entry of a half round without reaping in between (3n when armed); the
    // kernel wants at least as many completion entries as submission entries.
    let sq = (3 * n).next_power_of_two().min(4096) as u32;
    let cq = (4 * n).next_power_of_two().max(sq as usize) as u32;
    let mut builder = IoUring::builder();
    builder.setup_cqsize(cq);
    if how.tuned {
        builder.setup_single_issuer().setup_defer_taskrun();
    }
    let mut ring = builder.build(sq)?;
    if how.tuned {
        let fds: Vec<i32> = (0..2 * n).map(|end| raw_fd(pairs, end)).collect();
        ring.submitter().register_files(&fds)?;
    }
    // One receive buffer per socket end; each holds one frame.
    let mut bufs = vec![[0u8; 16]; 2 * n];
    let mut sqes = Vec::with_capacity(3 * n);
    for _ in 0..rounds {
        sqes.clear();
        for (i, pair_bufs) in bufs.chunks_mut(2).enumerate() {
            let (tag, proxy, peer) = (4 * i as u64, 2 * i, 2 * i + 1);
            let [proxy_buf, peer_buf] = pair_bufs else {
                unreachable!()
            };
            if how.armed {
                sqes.push(how.recv(pairs, proxy, proxy_buf, tag + RECV_PONG));
            }
            sqes.push(how.send(pairs, proxy, &PING, tag + SEND_PING));
            sqes.push(how.recv(pairs, peer, peer_buf, tag + RECV_PING));
        }
        batch(&mut ring, &sqes, 2 * n)?;
        sqes.clear();
        for (i, pair_bufs) in bufs.chunks_mut(2).enumerate() {
            let (tag, proxy, peer) = (4 * i as u64, 2 * i, 2 * i + 1);
            sqes.push(how.send(pairs, peer, &PONG, tag + SEND_PONG));
            if !how.armed {
                sqes.push(how.recv(pairs, proxy, &mut pair_bufs[0], tag + RECV_PONG));
            }
        }
        batch(&mut ring, &sqes, 2 * n)?;
    }
    Ok(())
}

/// Submits `sqes` (in chunks of the submission queue's size) and reaps `want` completions,
/// checking each moved a whole frame.
fn batch(ring: &mut IoUring, sqes: &[squeue::Entry], want: usize) -> io::Result<()> {
    let mut reaped = 0;
    for chunk in sqes.chunks(ring.params().sq_entries() as usize) {
        // SAFETY: every entry points at the constant frames or at `bufs`, which outlive the
        // batch: each batch waits for all its own completions before returning.
        unsafe { ring.submission().push_multiple(chunk) }.expect("the queue is drained");
        ring.submit()?;
    }
    while reaped < want {
        ring.submit_and_wait(want - reaped)?;
        for cqe in ring.completion() {
            let len = match cqe.user_data() % 4 {
                SEND_PING | RECV_PING => PING.len(),
                _ => PONG.len(),
            };
            check_len(cqe.result(), len)?;
            reaped += 1;
        }
    }
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}
