//! Shutdown: the signals and requests that ask wsbeat to stop, and the drain that carries it
//! out, as a [`DrainTrigger`] for the one who decides and a [`DrainWatcher`] for every task
//! that must react (the shape of istio/ztunnel's `drain.rs`; tokio-rs/mini-redis's `Shutdown`
//! is the small version).
//!
//! A drain moves forward through [`Phase`]s and never back: serving; not ready (readiness off,
//! still accepting); going away (the listener closes, every session gets close 1001); deadline
//! (whatever is left is dropped). A second request skips to the deadline. This module owns the
//! signal handlers, the request channel, the phases and how they are announced. It does not
//! decide when to move on, or what each task does in each phase: the server runs the sequence,
//! the relay and the HTTP connections react to it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::{
    CancellationToken, WaitForCancellationFuture, WaitForCancellationFutureOwned,
};
use tracing::info;

/// SIGTERM (Kubernetes, systemd) and SIGINT (Ctrl-C), caught from the moment
/// [`Signals::install`] returns. Install them before binding any port: a signal that arrives
/// once the port is open is then a drain request, never the default action (death by signal,
/// which Kubernetes reports as a failure).
#[derive(Debug)]
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs both handlers. Must run inside a tokio runtime with the signal driver enabled.
    ///
    /// # Errors
    /// The OS refused a handler.
    pub fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The next SIGTERM or SIGINT (one that arrived since the last call counts), logged with
    /// its name.
    pub async fn recv(&mut self) -> &'static str {
        let name = tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        };
        info!(signal = name, "shutdown requested");
        name
    }

    /// Every signal from now on as a stream of drain requests, for `server::run`.
    pub fn into_requests(self) -> impl Stream<Item = ()> + Send + 'static {
        futures_util::stream::unfold(self, |mut signals| async move {
            signals.recv().await;
            Some(((), signals))
        })
    }
}

/// Hands drain requests to whoever runs the drain: POST /drain uses it, and the server feeds
/// the signals through it.
#[derive(Clone, Debug)]
pub struct DrainRequests(mpsc::UnboundedSender<()>);

impl DrainRequests {
    /// A sender and the receiver the drain sequence listens on.
    pub fn channel() -> (DrainRequests, mpsc::UnboundedReceiver<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (DrainRequests(tx), rx)
    }

    /// Asks for a drain: the first request starts it, a later one skips to its end. Returns
    /// false when nobody listens any more (the process is stopping anyway).
    pub fn request(&self) -> bool {
        self.0.send(()).is_ok()
    }
}

/// Where a drain stands. Phases only move forward, in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Normal operation: ready, accepting, relaying.
    Serving = 0,
    /// Readiness is off so that load balancers stop sending new clients, but the listener
    /// still accepts them.
    NotReady = 1,
    /// The listener is closed and every session is told to close with 1001 ("going away");
    /// close handshakes and HTTP requests in flight may finish.
    GoingAway = 2,
    /// The time for finishing is over: whatever still runs is dropped.
    Deadline = 3,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 4] = [
        Phase::Serving,
        Phase::NotReady,
        Phase::GoingAway,
        Phase::Deadline,
    ];

    /// Log field value.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Serving => "serving",
            Phase::NotReady => "not_ready",
            Phase::GoingAway => "going_away",
            Phase::Deadline => "deadline",
        }
    }

    /// The phase's number, 0 to 3, as stored and as a gauge value.
    pub fn number(self) -> u8 {
        self as u8
    }

    fn from_number(n: u8) -> Phase {
        Phase::ALL[usize::from(n.min(Phase::Deadline.number()))]
    }
}

/// What the trigger and its watchers share.
#[derive(Debug, Default)]
struct Shared {
    /// The current [`Phase`], so a watcher learns it with one atomic load. The relay checks it
    /// on every wake-up; polling a cancellation future there would take a lock each time.
    phase: AtomicU8,
    /// Cancelled on entering [`Phase::GoingAway`], to wake tasks that are asleep.
    going_away: CancellationToken,
    /// Cancelled on entering [`Phase::Deadline`].
    deadline: CancellationToken,
}

/// A new drain in [`Phase::Serving`]: the trigger for whoever runs the sequence, a watcher to
/// clone into every task.
pub fn channel() -> (DrainTrigger, DrainWatcher) {
    let shared = Arc::new(Shared::default());
    (DrainTrigger(Arc::clone(&shared)), DrainWatcher(shared))
}

/// Moves the drain from phase to phase. There is one, held by whoever decides; it is not
/// `Clone`, so two deciders cannot race.
#[derive(Debug)]
pub struct DrainTrigger(Arc<Shared>);

impl DrainTrigger {
    /// Moves to `phase`, passing through any phase skipped on the way, and wakes the watchers
    /// of each. The phase is stored before anyone is woken, so a woken task sees it. Returns
    /// false, and does nothing, when the drain is already at `phase` or beyond.
    pub fn advance(&self, phase: Phase) -> bool {
        let before = Phase::from_number(self.0.phase.fetch_max(phase.number(), Ordering::AcqRel));
        if before >= phase {
            return false;
        }
        if phase >= Phase::GoingAway {
            self.0.going_away.cancel();
        }
        if phase >= Phase::Deadline {
            self.0.deadline.cancel();
        }
        true
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_number(self.0.phase.load(Ordering::Acquire))
    }

    /// Another watcher of this drain.
    pub fn watcher(&self) -> DrainWatcher {
        DrainWatcher(Arc::clone(&self.0))
    }
}

/// Learns where the drain stands, cheaply, and waits for the phases that ask a task to act.
#[derive(Clone, Debug)]
pub struct DrainWatcher(Arc<Shared>);

impl DrainWatcher {
    /// The current phase: one atomic load.
    pub fn phase(&self) -> Phase {
        Phase::from_number(self.0.phase.load(Ordering::Acquire))
    }

    /// True once sessions must close with 1001 ([`Phase::GoingAway`] or later): one atomic load.
    pub fn is_going_away(&self) -> bool {
        self.phase() >= Phase::GoingAway
    }

    /// Completes on entering [`Phase::GoingAway`] (at once if it is already past).
    pub fn going_away(&self) -> WaitForCancellationFuture<'_> {
        self.0.going_away.cancelled()
    }

    /// [`DrainWatcher::going_away`] as a future that owns what it waits on, for tasks that
    /// keep it across polls.
    pub fn going_away_owned(&self) -> WaitForCancellationFutureOwned {
        self.0.going_away.clone().cancelled_owned()
    }

    /// Completes on entering [`Phase::Deadline`] (at once if it is already there).
    pub fn deadline(&self) -> WaitForCancellationFuture<'_> {
        self.0.deadline.cancelled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_only_move_forward() {
        let (trigger, watcher) = channel();
        assert_eq!(watcher.phase(), Phase::Serving);
        assert!(trigger.advance(Phase::NotReady));
        assert_eq!(watcher.phase(), Phase::NotReady);
        assert!(!watcher.is_going_away());
        assert!(trigger.advance(Phase::GoingAway));
        assert!(!trigger.advance(Phase::NotReady), "no way back");
        assert!(!trigger.advance(Phase::GoingAway), "entered once");
        assert_eq!(
            (trigger.phase(), watcher.phase()),
            (Phase::GoingAway, Phase::GoingAway)
        );
        assert!(watcher.is_going_away());
    }

    /// Skipping to the deadline (a second signal) wakes the going-away waiters too.
    #[tokio::test]
    async fn skipping_phases_wakes_the_waiters_of_each() {
        let (trigger, watcher) = channel();
        let w = watcher.clone();
        let going_away = tokio::spawn(async move { w.going_away_owned().await });
        let w = watcher.clone();
        let deadline = tokio::spawn(async move { w.deadline().await });
        tokio::task::yield_now().await;
        assert!(!going_away.is_finished() && !deadline.is_finished());
        assert!(trigger.advance(Phase::Deadline));
        let both = async { (going_away.await, deadline.await) };
        let (a, b) = tokio::time::timeout(std::time::Duration::from_secs(5), both)
            .await
            .expect("both waiters woken");
        assert!(a.is_ok() && b.is_ok());
        assert!(watcher.is_going_away());
        // A watcher made after the fact sees the phase at once.
        let late = trigger.watcher();
        tokio::time::timeout(std::time::Duration::from_secs(5), late.going_away())
            .await
            .expect("already going away");
    }
}
