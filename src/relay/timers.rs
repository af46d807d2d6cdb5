//! Every deadline of a session in one table, served by one `Sleep` armed for the earliest
//! (quinn-proto's `TimerTable`). A new kind of deadline is one more [`Timer`] variant, not one
//! more `Sleep` per session: each `Sleep` is a timer-wheel entry and a wake-up of its own.
//!
//! Heartbeat deadlines are rounded up to a grid shared by all sessions (a sixteenth of the
//! shortest interval or timeout, at most 250 ms), so heartbeats due close together fire in one
//! tick: a relay thread wakes once to send a batch of pings, and each peer wakes once to answer
//! them, instead of once per ping (docs/PERFORMANCE.md). A heartbeat is at most one grid step
//! late. The close deadline is exact.

use std::time::Duration;

use tokio::time::Instant;

use super::RelayConfig;
use crate::Side;

/// Heartbeat deadlines are rounded up to a grid of this fraction of the shortest period...
const TIMER_GRID_DIVISOR: u32 = 16;
/// ...but never coarser than this.
pub(super) const TIMER_GRID_MAX: Duration = Duration::from_millis(250);

/// The deadlines a session keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timer {
    /// The next ping or pong timeout of the client leg.
    ClientHeartbeat,
    /// The next ping or pong timeout of the upstream leg.
    UpstreamHeartbeat,
    /// The close handshake must be over by then, or both legs are dropped.
    Close,
    /// The client is due a keep-alive text message (`--client-keepalive-*`).
    ClientKeepalive,
    /// The upstream is due a text ping (`--upstream-text-ping*`).
    UpstreamTextPing,
}

impl Timer {
    const COUNT: usize = 5;

    /// The heartbeat timer of `side`.
    pub(crate) fn heartbeat(side: Side) -> Timer {
        match side {
            Side::Client => Timer::ClientHeartbeat,
            Side::Upstream => Timer::UpstreamHeartbeat,
        }
    }
}

impl Timer {
    /// The text-heartbeat timer of `side`: the keep-alive toward the client, the text ping
    /// toward the upstream.
    pub(crate) fn text(side: Side) -> Timer {
        match side {
            Side::Client => Timer::ClientKeepalive,
            Side::Upstream => Timer::UpstreamTextPing,
        }
    }
}

/// When each [`Timer`] is due, if it is set.
#[derive(Debug, Default)]
pub(crate) struct TimerTable {
    due: [Option<Instant>; Timer::COUNT],
}

impl TimerTable {
    pub(crate) fn set(&mut self, timer: Timer, at: Instant) {
        self.due[timer as usize] = Some(at);
    }

    pub(crate) fn get(&self, timer: Timer) -> Option<Instant> {
        self.due[timer as usize]
    }

    pub(crate) fn stop(&mut self, timer: Timer) {
        self.due[timer as usize] = None;
    }

    /// Whether `timer` is set and due at `now`.
    pub(crate) fn is_expired(&self, timer: Timer, now: Instant) -> bool {
        self.get(timer).is_some_and(|at| at <= now)
    }

    /// The earliest deadline set, if any.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.due.iter().flatten().min().copied()
    }
}

/// The grid step for a session's heartbeat deadlines: a sixteenth of its shortest heartbeat
/// period, between 1 ms and [`TIMER_GRID_MAX`].
pub(crate) fn timer_grid(cfg: &RelayConfig) -> Duration {
    [cfg.client, cfg.upstream]
        .iter()
        .flat_map(|hb| [hb.interval, hb.timeout])
        .chain(cfg.text.shortest_interval())
        .filter(|d| !d.is_zero())
        .min()
        .map_or(TIMER_GRID_MAX, |d| d / TIMER_GRID_DIVISOR)
        .clamp(Duration::from_millis(1), TIMER_GRID_MAX)
}

/// `deadline` rounded up to the next multiple of `grid`, counted from one instant shared by the
/// whole process, so that sessions with deadlines close together fire in the same tick.
pub(crate) fn on_grid(deadline: Instant, grid: Duration) -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    // Before the epoch (another test's paused clock set it): leave the deadline as it is.
    let Some(since) = deadline.checked_duration_since(epoch) else {
        return deadline;
    };
    let (since, grid) = (since.as_nanos(), grid.as_nanos().max(1));
    let rounded = since.div_ceil(grid) * grid;
    u64::try_from(rounded).map_or(deadline, |ns| epoch + Duration::from_nanos(ns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heartbeat::HeartbeatConfig;

    const S: Duration = Duration::from_secs(1);

    fn cfg(client: (u64, u64), upstream: (u64, u64)) -> RelayConfig {
        let hb = |(interval, timeout): (u64, u64)| HeartbeatConfig {
            interval: S * interval as u32,
            timeout: S * timeout as u32,
            timeout_after_pong: None,
        };
        RelayConfig {
            client: hb(client),
            upstream: hb(upstream),
            close_timeout: 5 * S,
            max_frame_size: 1 << 20,
            upstream_masking: crate::config::UpstreamMasking::Fresh,
            splice_min_payload: 0,
            text: Default::default(),
        }
    }

    #[test]
    fn timer_grid_is_a_sixteenth_of_the_shortest_period_within_bounds() {
        assert_eq!(timer_grid(&cfg((1, 20), (20, 20))), S / 16);
        // Pings off on one leg: its zeros do not count.
        assert_eq!(timer_grid(&cfg((0, 0), (2, 4))), 2 * S / 16);
        assert_eq!(timer_grid(&cfg((20, 20), (20, 20))), TIMER_GRID_MAX);
        assert_eq!(timer_grid(&cfg((0, 0), (0, 0))), TIMER_GRID_MAX);
        let fast = RelayConfig {
            client: HeartbeatConfig {
                interval: Duration::from_millis(8),
                timeout: Duration::from_millis(8),
                timeout_after_pong: None,
            },
            ..cfg((0, 0), (0, 0))
        };
        assert_eq!(timer_grid(&fast), Duration::from_millis(1));
    }

    #[test]
    fn deadlines_close_together_share_one_grid_tick_and_none_moves_earlier() {
        let grid = Duration::from_millis(50);
        let base = on_grid(Instant::now() + S, grid);
        assert_eq!(on_grid(base, grid), base, "a tick is already on the grid");
        for offset_ms in [1, 17, 49] {
            let deadline = base + Duration::from_millis(offset_ms);
            assert_eq!(
                on_grid(deadline, grid),
                base + grid,
                "{offset_ms} ms past a tick"
            );
        }
        let late = base + grid + Duration::from_millis(1);
        assert!(on_grid(late, grid) >= late);
        assert!(on_grid(late, grid) - late < grid);
    }

    #[test]
    fn the_table_yields_its_earliest_deadline() {
        let t0 = Instant::now();
        let mut table = TimerTable::default();
        assert_eq!(table.next(), None);
        table.set(Timer::UpstreamHeartbeat, t0 + 3 * S);
        table.set(Timer::Close, t0 + 2 * S);
        table.set(Timer::ClientHeartbeat, t0 + 5 * S);
        assert_eq!(table.next(), Some(t0 + 2 * S));
        assert!(table.is_expired(Timer::Close, t0 + 2 * S));
        assert!(!table.is_expired(Timer::UpstreamHeartbeat, t0 + 2 * S));
        table.stop(Timer::Close);
        assert_eq!(table.next(), Some(t0 + 3 * S));
        assert!(
            !table.is_expired(Timer::Close, t0 + 9 * S),
            "a stopped timer never fires"
        );
    }
}
