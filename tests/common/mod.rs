//! Shared helpers for wsbeat's integration tests: the proxy under test started in-process on
//! port 0 (`proxy`), the binary as a child process (`child`), hand-written frame-level peers
//! (`frame`, `raw`), library-based peers and network stand-ins (`peers`), other programs as peers
//! (`external`: faye, Python; `browser`: headless Chromium), peers on hosts of their own
//! (`netns`), and bounded-wait helpers (here).
//!
//! Rules every test follows: real sockets on 127.0.0.1 only (or inside a network namespace the
//! test made), port 0 everywhere, every await bounded by a timeout, no sleep used as
//! synchronisation.
#![allow(dead_code, unused_imports)]

pub mod browser;
pub mod child;
pub mod external;
pub mod frame;
pub mod netns;
pub mod peers;
pub mod prom;
pub mod proxy;
pub mod raw;
pub mod slow;
pub mod tls;

use std::future::Future;
use std::time::Duration;

use tokio::time::{Instant, sleep, timeout};

pub use browser::*;
pub use child::*;
pub use external::*;
pub use frame::*;
pub use netns::*;
pub use peers::*;
pub use proxy::*;
pub use raw::*;
pub use tls::*;

/// Bound for steps that should be immediate on loopback (a handshake, an echo). Generous so a
/// loaded CI machine does not flake; the timing tests use their own tight bounds.
pub const STEP: Duration = Duration::from_secs(5);

/// Awaits `fut` for at most `d`, panicking with `what` on timeout.
pub async fn within<T>(d: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match timeout(d, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {d:?} waiting for {what}"),
    }
}

/// Polls `check` until it returns true, for at most `d` (istio/ztunnel `assert_eventually`).
/// The short pause between polls is a polling interval, not synchronisation: the deadline is
/// what bounds the wait.
pub async fn assert_eventually<F, Fut>(d: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + d;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "not true within {d:?}: {what}");
        sleep(Duration::from_millis(10)).await;
    }
}

/// Sends the proxy's logs to the test's captured output (shown when a test fails).
/// `RUST_LOG` overrides the default filter.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("wsbeat=debug"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Deterministic, non-repeating test payload of `len` bytes.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8)
        .collect()
}
