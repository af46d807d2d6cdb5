//! Per-thread pool of read buffers, so an idle session holds none.
//!
//! A pump takes a buffer only while bytes are in flight and gives it back as soon as it is empty.
//! Buffers return to the pool of whichever worker thread frees them; the pools are capped, so
//! after a burst the memory goes back to the allocator.

use std::cell::RefCell;

/// Size of one relay buffer. Large enough that a 64 KiB message moves in a couple of syscalls,
/// small enough that many concurrently busy sessions stay cheap.
pub(crate) const BUF_SIZE: usize = 64 * 1024;
/// Buffers kept per thread; more busy sessions than this allocate (and free) their own.
const POOL_CAP: usize = 64;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer from this thread's pool, or a new one.
pub(crate) fn take() -> Box<[u8]> {
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; BUF_SIZE].into_boxed_slice())
}

/// Returns a buffer to this thread's pool (or frees it when the pool is full).
pub(crate) fn give(buf: Box<[u8]>) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_CAP {
            p.push(buf);
        }
    });
}
