//! What the kernel knows about a TCP connection's delivery, read with `getsockopt(TCP_INFO)`.
//!
//! wsbeat forbids unsafe code; the one `getsockopt` call that needs it lives here, behind a
//! safe function, as socket2 keeps its own system calls. Only the fields wsbeat uses are
//! returned.

use std::io;
use std::mem::{MaybeUninit, offset_of, size_of};
use std::os::fd::{AsRawFd, BorrowedFd};

/// How far the peer has taken our bytes, as this end's kernel last heard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The receive window the peer last advertised, in bytes: the room left in its receive
    /// buffer, or less while that buffer is mostly empty (Linux caps the window at a threshold
    /// that grows as data arrives). Data arriving shrinks the room and only the peer's
    /// application reading frees it.
    pub window: u32,
    /// Bytes of ours the peer's kernel acknowledged cumulatively.
    pub acked: u64,
    /// Bytes sent and not acknowledged yet: on their way to the peer (on a slow link, in the
    /// bottleneck's queue).
    pub unacked: u64,
    /// Segments of ours the peer's kernel confirmed, selectively acknowledged ones included.
    /// After a loss, the cumulative acknowledgement stands still until the retransmission
    /// arrives, behind everything queued at the bottleneck (seconds on a slow link), while
    /// each segment that arrives meanwhile is still confirmed by a SACK and counted here.
    pub delivered: u32,
    /// Bytes written to the socket and not yet sent.
    pub unsent: u32,
    /// The segment size toward the peer, in bytes.
    pub mss: u32,
    /// Unanswered probes of the kernel's persist or keepalive timer: a send queue it cannot get
    /// out, whatever the reason.
    pub probes: u8,
}

/// Reads [`Delivery`] for the TCP socket `fd`. `Ok(None)` when the kernel is too old to report
/// the peer's window (Linux before 5.4).
#[cfg(target_os = "linux")]
pub fn delivery(fd: BorrowedFd<'_>) -> io::Result<Option<Delivery>> {
    let queued = send_queue(fd)?;
    let mut info = MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is valid for writes of `len` bytes and outlives the call; the kernel
    // writes at most `len` bytes and reports how many in `len`. `fd` is a live descriptor for
    // the duration of the borrow.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the struct was zeroed before the call, and all-zero is a valid `tcp_info`
    // (plain integers); the kernel overwrote a prefix of it.
    let info = unsafe { info.assume_init() };
    let needed = offset_of!(libc::tcp_info, tcpi_snd_wnd) + size_of::<u32>();
    if (len as usize) < needed {
        return Ok(None);
    }
    let unsent = info.tcpi_notsent_bytes;
    Ok(Some(Delivery {
        window: info.tcpi_snd_wnd,
        acked: info.tcpi_bytes_acked,
        // Read before `tcp_info`: acknowledgements in between make it too high, never too low.
        unacked: queued.saturating_sub(u64::from(unsent)),
        delivered: info.tcpi_delivered,
        unsent,
        mss: info.tcpi_snd_mss,
        probes: info.tcpi_probes,
    }))
}

/// Bytes in the send queue of the TCP socket `fd`, sent or not (SIOCOUTQ, which Linux numbers
/// as TIOCOUTQ): `snd_nxt - snd_una` is this less the unsent ones. The byte counters of
/// `tcp_info` cannot give it: a segment a local queue drops is counted as sent, then sent
/// again as new.
#[cfg(target_os = "linux")]
pub fn send_queue(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one `int` through the pointer, which is valid for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::try_from(queued).unwrap_or(0))
}

/// Not Linux: the kernel's view is not available.
#[cfg(not(target_os = "linux"))]
pub fn delivery(_fd: BorrowedFd<'_>) -> io::Result<Option<Delivery>> {
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;
    use std::time::Duration;

    /// Waits (bounded) until the view is stable and `done` with it.
    fn settled_when(tx: &TcpStream, done: impl Fn(&Delivery) -> bool) -> Delivery {
        let mut last = None;
        for _ in 0..400 {
            let d = delivery(tx.as_fd()).unwrap().expect("Linux 5.4 or later");
            if last == Some(d) && done(&d) {
                return d;
            }
            last = Some(d);
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("the connection never settled: {last:?}");
    }

    /// Waits (bounded) until everything written to `tx` is acknowledged and the view is stable.
    fn settled(tx: &TcpStream) -> Delivery {
        settled_when(tx, |d| d.unsent == 0 && d.unacked == 0)
    }

    /// Once the peer's buffer holds what it has not read, the window does not grow while it
    /// does not read, however much its kernel acknowledges, and grows once it reads. (Before
    /// that, a receiver opens its window as data arrives: the relay only asks after a peer
    /// has been silent for half a timeout.) The peer has a path MSS and a small buffer, as a
    /// client on a real network has; loopback's 64 KiB segments would round every window to
    /// zero or full.
    #[test]
    fn the_window_grows_only_when_the_peer_reads() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let rx = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        rx.set_recv_buffer_size(64 * 1024).unwrap();
        rx.set_tcp_mss(1448).unwrap();
        rx.connect(&addr.into()).unwrap();
        let mut rx: TcpStream = rx.into();
        let (mut tx, _) = listener.accept().unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut sent = 0;
        let mut unread = settled(&tx);
        while unread.window >= 16 * 1024 {
            tx.write_all(&[7u8; 8 * 1024]).unwrap();
            sent += 8 * 1024;
            unread = settled(&tx);
            assert!(sent <= 1 << 20, "the window never closed: {unread:?}");
        }
        for _ in 0..20 {
            tx.write_all(b"ping").unwrap();
            sent += 4;
            let deaf = settled(&tx);
            assert!(deaf.window <= unread.window, "no read, no growth: {deaf:?}");
        }
        // Behind a closed window the queue holds what cannot be sent: all of it unsent, none
        // in flight once the last segments were acknowledged.
        tx.set_nonblocking(true).unwrap();
        sent += tx.write(&[7u8; 64 * 1024]).unwrap_or(0);
        tx.set_nonblocking(false).unwrap();
        let full = settled_when(&tx, |d| d.unacked == 0);
        let queued = send_queue(tx.as_fd()).unwrap();
        assert!(
            full.unsent > 0,
            "the window closed before it all went: {full:?}"
        );
        assert_eq!(
            queued,
            u64::from(full.unsent),
            "SIOCOUTQ counts what waits: {full:?}"
        );
        assert_eq!(full.unacked, 0, "{full:?}");
        assert!(
            0 < full.mss && full.mss <= 1448,
            "the path's segment size: {full:?}"
        );
        let mut buf = vec![0u8; sent];
        rx.read_exact(&mut buf).unwrap();
        // Reading need not send a window update by itself; the acknowledgement of our next
        // segment carries the window.
        tx.write_all(b"x").unwrap();
        let read = settled(&tx);
        assert!(
            read.window > unread.window,
            "the peer read {sent} bytes: {read:?} after {unread:?}"
        );
    }
}
