//! Moving a large payload between two TCP sockets through a pipe, so that its bytes never
//! cross into user space (`splice(2)`).
//!
//! A pump splices only the payload of a data frame it relays unchanged (an upstream frame, or
//! a client frame under `--upstream-masking forward`), between two plain TCP legs, when the
//! payload is at least `--splice-min-payload`. The header and whatever payload had been read
//! with it go into the same pipe first ([`Pipe::push`]), so the destination receives the frame
//! in one piece and in order; after a spliced frame the pump reads the next header with a short
//! read, so that a run of large frames keeps their payloads out of user space. Pipes come from
//! a small per-thread pool for the length of one frame.
//!
//! Readiness is tokio's: a splice runs inside [`TcpStream::try_io`], which clears the socket's
//! readiness when the kernel says "would block". A splice into a full pipe says the same
//! although the socket has data, so the pump splices in only while the pipe is sure to have a
//! free slot ([`Pipe::has_room`]); otherwise the socket could wait for a wake-up that never
//! comes.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::pool::BUF_SIZE;

/// Capacity asked of each pipe. Larger pipes moved a 1 MiB frame in fewer rounds but did not
/// relay faster (docs/PERFORMANCE.md), and a user's pipes share `fs.pipe-user-pages-soft`
/// (64 MiB by default), past which the kernel refuses to grow them.
const PIPE_SIZE: usize = 256 << 10;
/// Pipes kept per thread once their frame is done.
const POOL_CAP: usize = 8;
/// Pipes kept idle in all threads' pools together: a thread can take only from its own pool,
/// so with 8 relay threads or more, full pools could hold every pipe the cap allows while
/// another thread copies. Half the cap always remains to be made by whichever thread needs it.
const POOLED_CAP: usize = MAX_PIPES / 2;
/// Pipes that may exist at once, pooled or in use: their descriptors come out of
/// [`crate::net::RESERVED_FDS`], so that sessions at `--max-connections` all splicing never
/// run wsbeat out of descriptors. Frames beyond it are copied.
pub(crate) const MAX_PIPES: usize = 64;

/// Pipes that exist now.
static PIPES: AtomicUsize = AtomicUsize::new(0);
/// Of those, pipes idle in a pool.
static POOLED: AtomicUsize = AtomicUsize::new(0);
/// Bytes one pipe slot holds when user space writes into it.
const PAGE: usize = 4096;

thread_local! {
    static POOL: RefCell<Pool> = const { RefCell::new(Pool(Vec::new())) };
}

/// A thread's idle pipes; they are closed, and no longer counted in [`POOLED`], when the
/// thread ends.
#[expect(
    clippy::vec_box,
    reason = "a pump holds its pipe boxed; the pool keeps the boxes"
)]
struct Pool(Vec<Box<Pipe>>);

impl Drop for Pool {
    fn drop(&mut self) {
        POOLED.fetch_sub(self.0.len(), Ordering::Relaxed);
    }
}

/// A non-blocking pipe and what it holds.
pub(crate) struct Pipe {
    rx: OwnedFd,
    tx: OwnedFd,
    /// Its capacity in slots (pages).
    slots: usize,
    /// Bytes in it, not yet spliced out.
    held: usize,
    /// Slots the bytes in it may use, counted high: a splice from a socket may take one slot
    /// per packet fragment, so after one the pipe counts as full until it is empty.
    used: usize,
}

impl Pipe {
    /// A pipe from this thread's pool, or a new one; `None` when [`MAX_PIPES`] exist or none
    /// can be made, and the frame then goes the buffered way.
    pub(crate) fn take() -> Option<Box<Pipe>> {
        if let Some(pipe) = POOL.with(|p| p.borrow_mut().0.pop()) {
            POOLED.fetch_sub(1, Ordering::Relaxed);
            return Some(pipe);
        }
        if PIPES.fetch_add(1, Ordering::Relaxed) >= MAX_PIPES {
            PIPES.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        match Pipe::new() {
            Ok(pipe) => Some(Box::new(pipe)),
            Err(e) => {
                PIPES.fetch_sub(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "no pipe for splice; relaying through the buffer");
                None
            }
        }
    }

    /// Makes a pipe, already counted in [`PIPES`].
    fn new() -> io::Result<Pipe> {
        let (rx, tx) = rustix::pipe::pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
        // Past `fs.pipe-user-pages-soft` the kernel refuses to grow pipes: the default size
        // still works, in more rounds.
        let bytes = rustix::pipe::fcntl_setpipe_size(&rx, PIPE_SIZE)
            .or_else(|_| rustix::pipe::fcntl_getpipe_size(&rx))?;
        Ok(Pipe {
            rx,
            tx,
            slots: bytes / PAGE,
            held: 0,
            used: 0,
        })
    }

    /// Gives an empty pipe back to this thread's pool while it and all pools together have
    /// room; otherwise, or when it still holds bytes, the pipe is closed.
    pub(crate) fn give(pipe: Box<Pipe>) {
        if pipe.held != 0 {
            return;
        }
        POOL.with(|p| {
            let p = &mut p.borrow_mut().0;
            if p.len() >= POOL_CAP {
                return;
            }
            if POOLED.fetch_add(1, Ordering::Relaxed) < POOLED_CAP {
                p.push(pipe);
            } else {
                POOLED.fetch_sub(1, Ordering::Relaxed);
            }
        });
    }

    /// Bytes in the pipe.
    pub(crate) fn held(&self) -> usize {
        self.held
    }

    /// Whether a splice into the pipe surely finds a free slot.
    pub(crate) fn has_room(&self) -> bool {
        self.used < self.slots
    }

    /// Whether `n` bytes from user space fit in the free slots, with one to spare for the
    /// splice that follows.
    pub(crate) fn fits(&self, n: usize) -> bool {
        self.used + n.div_ceil(PAGE) + 1 < self.slots
    }

    /// Copies `bytes` (at most a relay buffer) into the pipe; returns how many it took. A
    /// pipe with [`Pipe::fits`] takes them all.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> io::Result<usize> {
        debug_assert!(bytes.len() <= BUF_SIZE);
        let n = rustix::io::write(&self.tx, bytes)?;
        self.held += n;
        // A write may start a new page, and fill the last one it finds partly used.
        self.used += n.div_ceil(PAGE) + 1;
        Ok(n)
    }

    /// Splices up to `len` bytes from `src` into the pipe. `Ready(Ok(0))`: the peer ended its
    /// stream.
    pub(crate) fn poll_fill(
        &mut self,
        src: &TcpStream,
        len: usize,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        debug_assert!(self.has_room() && len > 0);
        let n = ready!(poll_splice(src, Interest::READABLE, cx, || {
            splice(src.as_fd(), self.tx.as_fd(), len)
        }))?;
        self.held += n;
        if n > 0 {
            self.used = self.slots;
        }
        Poll::Ready(Ok(n))
    }

    /// Splices what the pipe holds into `dst`, as far as its socket takes it; returns how many
    /// bytes went.
    pub(crate) fn poll_drain(
        &mut self,
        dst: &TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        debug_assert!(self.held > 0);
        let n = ready!(poll_splice(dst, Interest::WRITABLE, cx, || {
            splice(self.rx.as_fd(), dst.as_fd(), self.held)
        }))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        self.held -= n;
        if self.held == 0 {
            self.used = 0;
        }
        Poll::Ready(Ok(n))
    }
}

/// One non-blocking `splice(2)` of up to `len` bytes from `from` to `to`.
fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
    Ok(rustix::pipe::splice(from, None, to, None, len, flags)?)
}

/// Runs `op` once `socket` is ready for `interest`, with tokio's readiness: a "would block"
/// clears it, and the next round registers for the next wake-up.
fn poll_splice(
    socket: &TcpStream,
    interest: Interest,
    cx: &mut Context<'_>,
    mut op: impl FnMut() -> io::Result<usize>,
) -> Poll<io::Result<usize>> {
    loop {
        if interest.is_readable() {
            ready!(socket.poll_read_ready(cx))?;
        } else {
            ready!(socket.poll_write_ready(cx))?;
        }
        match socket.try_io(interest, &mut op) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            done => return Poll::Ready(done),
        }
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        PIPES.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No more than [`MAX_PIPES`] exist, and their descriptors take at most half the reserve
    /// kept out of `--max-connections`. Pools on other threads never hold more than half of
    /// them: 16 relay threads that each finished a burst of frames leave this one half the cap.
    /// (One test: the counts are global, and tests run in parallel.)
    #[test]
    fn pipes_are_capped_within_the_descriptor_reserve_and_pools_leave_half() {
        assert!(2 * MAX_PIPES as u64 <= crate::net::RESERVED_FDS / 2);
        let pipes: Vec<_> = std::iter::from_fn(Pipe::take).take(MAX_PIPES + 1).collect();
        assert_eq!(pipes.len(), MAX_PIPES, "the cap held");
        drop(pipes);
        assert!(Pipe::take().is_some(), "closed pipes are no longer counted");

        let (parked, all_parked) = std::sync::mpsc::channel();
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let parked = parked.clone();
                std::thread::spawn(move || {
                    let burst: Vec<_> = std::iter::from_fn(Pipe::take).take(POOL_CAP).collect();
                    burst.into_iter().for_each(Pipe::give);
                    parked.send(()).expect("the test waits");
                    // Idle, as a relay thread between frames, with its pool.
                    std::thread::park_timeout(std::time::Duration::from_secs(10));
                })
            })
            .collect();
        for _ in &threads {
            let wait = std::time::Duration::from_secs(10);
            all_parked.recv_timeout(wait).expect("a pool thread");
        }
        assert_eq!(
            POOLED.load(Ordering::Relaxed),
            POOLED_CAP,
            "the pools filled to their cap"
        );
        let here: Vec<_> = std::iter::from_fn(Pipe::take).take(MAX_PIPES).collect();
        assert_eq!(
            here.len(),
            MAX_PIPES - POOLED_CAP,
            "what the pools hold is the rest"
        );
        drop(here);
        for t in threads {
            t.thread().unpark();
            t.join().expect("a pool thread");
        }
        assert_eq!(
            POOLED.load(Ordering::Relaxed),
            0,
            "ended threads' pools are closed"
        );
        assert_eq!(PIPES.load(Ordering::Relaxed), 0, "and no pipe is left");
    }
}
