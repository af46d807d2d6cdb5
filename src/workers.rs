//! Relay threads: one current-thread tokio runtime per thread, nginx-style.
//!
//! The accept loop hands each new connection to the next thread in turn; from then on the
//! connection, its upstream socket and its session live on that thread's event loop and timer
//! wheel. Why not tokio's work-stealing runtime: a proxy's tasks are short and I/O-bound, and
//! measured on the 64-byte benchmark the cross-thread wake-ups (futex, unpark) cost more than
//! the balancing gains (see docs/PERFORMANCE.md). Sessions are spread evenly at accept time.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// The relay threads. Dropping it stops them once their current tasks are dropped.
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `n` threads (at least one), each driving its own runtime.
    ///
    /// # Errors
    /// The OS refused a thread or the runtime's I/O driver could not be created.
    pub fn start(n: usize) -> io::Result<Workers> {
        let mut workers = Workers {
            handles: Vec::new(),
            next: AtomicUsize::new(0),
            stops: Vec::new(),
            threads: Vec::new(),
        };
        for i in 0..n.max(1) {
            let rt = Builder::new_current_thread().enable_all().build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            workers.handles.push(rt.handle().clone());
            workers.stops.push(stop);
            let thread = std::thread::Builder::new()
                .name(format!("wsbeat-worker-{i}"))
                .spawn(move || {
                    // Ends when `stop` is sent or dropped; the runtime (and any task still on
                    // it) is dropped here, on its own thread, outside any async context.
                    rt.block_on(async {
                        let _ = stopped.await;
                    });
                })?;
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    /// Runs `fut` on the next thread in turn.
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[i].spawn(fut);
    }

    /// Stops every thread and waits for them to finish.
    pub async fn stop(mut self) {
        self.stops.clear();
        let threads = std::mem::take(&mut self.threads);
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        let _ = joined.await;
    }
}
