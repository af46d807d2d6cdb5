//! Per-side heartbeat: a pure state machine with no I/O and no clock of its own.
//!
//! One [`Heartbeat`] exists per leg of a session (client and upstream). The relay is its only
//! driver: it reports what it saw (`on_activity`, `on_ping_written`, `on_pong`) and asks when to
//! wake up (`poll_timeout`); when that instant arrives it calls `handle_timeout`, which says
//! whether to send a ping or to declare the peer dead. Time is always passed in, so the whole
//! table of behaviours is unit-tested with plain `#[test]`s (the design follows quinn-proto's
//! timers).
//!
//! Semantics:
//! - A ping is due every `interval` after the previous one, regardless of traffic, so that an
//!   idle-timeout middlebox always sees the leg carry bytes at least that often.
//! - Any sign of life proves the peer alive: a frame from it, or the peer taking bytes that
//!   were waiting for it (the driver decides what counts; see the relay).
//! - The pong timeout runs from when a ping *left* wsbeat (was written to the socket), not from
//!   when it was queued: a ping stuck behind a large frame toward a slow reader is not the
//!   peer's fault. While the ping cannot be written at all, the timeout runs from when it was
//!   queued: a leg that takes no bytes for the whole timeout is dead. Later pings do not extend
//!   a running timeout.
//! - With `timeout_after_pong` (`--upstream-pong-timeout auto`), no timeout runs until the peer
//!   has answered one of our pings; from then on it is held to that timeout. A peer that never
//!   pongs is never killed for it; one that has shown it can pong is.
//! - Our ping payloads are tagged (`wb` + 48-bit sequence number), so a pong that echoes one of
//!   them is ours, and the one that echoes the latest gives a round-trip time; other pongs are
//!   foreign and are ignored (RFC 6455 5.5.3).

use std::time::Duration;

use tokio::time::Instant;

/// Length of the payload of the pings we send.
pub(crate) const PING_PAYLOAD_LEN: usize = 8;
/// Tag that starts our ping payloads, so a foreign pong is never mistaken for ours.
const PING_TAG: [u8; 2] = *b"wb";
/// How far ahead `poll_timeout` looks when every timer is off, counted from the last
/// `handle_timeout`: any far-future instant works, because the driver re-arms after each
/// event. A day keeps `Instant` arithmetic far from overflow.
const FAR_FUTURE: Duration = Duration::from_secs(86_400);

/// Heartbeat settings for one side. A zero duration switches that timer off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeartbeatConfig {
    /// Time between two pings; zero sends none.
    pub interval: Duration,
    /// After a ping left wsbeat, how long the peer may show no sign of life before it is dead;
    /// zero never expires (until the peer pongs, when `timeout_after_pong` is set).
    pub timeout: Duration,
    /// Once the peer has answered one of our pings, the timeout that holds from then on, in
    /// place of `timeout` (`--upstream-pong-timeout auto`). `None`: `timeout` always holds.
    pub timeout_after_pong: Option<Duration>,
}

impl HeartbeatConfig {
    /// Heartbeats switched off entirely.
    pub const OFF: HeartbeatConfig = HeartbeatConfig {
        interval: Duration::ZERO,
        timeout: Duration::ZERO,
        timeout_after_pong: None,
    };
}

/// What the driver must do after [`Heartbeat::handle_timeout`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Send a ping frame with this payload to the peer.
    SendPing([u8; PING_PAYLOAD_LEN]),
    /// The peer stayed silent for the whole timeout after a ping: drop it.
    Expire,
}

/// How a received pong relates to our pings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PongMatch {
    /// It echoes one of our pings. `rtt`: the time since the latest ping left wsbeat, when it
    /// echoes that one; `None` for an answer to an older ping.
    Ours { rtt: Option<Duration> },
    /// Unsolicited or not ours: ignored apart from proving liveness.
    Foreign,
}

/// Where the current liveness probe stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    /// The peer showed life since our last ping left: nothing is outstanding.
    Settled,
    /// A ping is queued since `since` but not written yet (it waits behind a frame toward a
    /// peer that takes no bytes).
    Queued { since: Instant },
    /// A ping left wsbeat at `since`, and the peer has shown no life since.
    Sent { since: Instant },
}

/// Heartbeat state of one leg. Its settings are not in it: every session of a proxy has the
/// same, so the driver keeps one copy for all and passes it to the calls that need it (always
/// the same settings for the same heartbeat). A copy here made every leg 48 bytes bigger.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    /// When the next ping is due (meaningless when pings are off).
    next_ping: Instant,
    probe: Probe,
    /// When the latest ping (number `seq`) left, while its pong has not come: it gives the
    /// round-trip time.
    last_ping: Option<Instant>,
    /// Sequence number of the latest ping.
    seq: u64,
    /// The peer has answered one of our pings.
    ponged: bool,
}

impl Heartbeat {
    /// Starts the schedule at `now`: the first ping is due one interval later.
    pub(crate) fn new(cfg: &HeartbeatConfig, now: Instant) -> Self {
        Heartbeat {
            next_ping: now + cfg.interval,
            probe: Probe::Settled,
            last_ping: None,
            seq: 0,
            ponged: false,
        }
    }

    /// The peer showed life: a frame arrived from it, or it took bytes that waited for it. No
    /// time is needed: liveness only settles the probe, so the relay can report it without
    /// reading the clock per read.
    pub(crate) fn on_activity(&mut self) {
        self.probe = Probe::Settled;
    }

    /// The latest ping was written to the socket at `now`: the pong timeout starts, unless one
    /// already runs for an earlier ping. True if it started.
    pub(crate) fn on_ping_written(&mut self, now: Instant) -> bool {
        let starts = !matches!(self.probe, Probe::Sent { .. });
        if starts {
            self.probe = Probe::Sent { since: now };
        }
        if self.last_ping.is_some() {
            self.last_ping = Some(now);
        }
        starts
    }

    /// A pong arrived. It also counts as activity.
    pub(crate) fn on_pong(&mut self, payload: &[u8], now: Instant) -> PongMatch {
        self.on_activity();
        let Some(got) = parse_payload(payload).filter(|&got| got != 0 && got <= self.seq) else {
            return PongMatch::Foreign;
        };
        self.ponged = true;
        match self.last_ping {
            Some(sent) if got == self.seq => {
                self.last_ping = None;
                PongMatch::Ours {
                    rtt: Some(now.saturating_duration_since(sent)),
                }
            }
            _ => PongMatch::Ours { rtt: None },
        }
    }

    /// True while a ping is outstanding and the peer has shown no life since.
    #[cfg(test)]
    fn is_awaiting(&self) -> bool {
        self.probe != Probe::Settled
    }

    /// The timeout in force: `timeout_after_pong` once the peer has ponged, if set.
    fn timeout(&self, cfg: &HeartbeatConfig) -> Duration {
        match cfg.timeout_after_pong {
            Some(after) if self.ponged => after,
            _ => cfg.timeout,
        }
    }

    /// When the peer expires unless it shows life first, if a probe is outstanding.
    fn expiry(&self, cfg: &HeartbeatConfig) -> Option<Instant> {
        let timeout = self.timeout(cfg);
        match self.probe {
            _ if timeout.is_zero() => None,
            Probe::Settled => None,
            Probe::Queued { since } | Probe::Sent { since } => Some(since + timeout),
        }
    }

    /// When the driver should look at the kernel's view of a silent peer, and the expiry that
    /// look is for: half a timeout before the peer expires, if a probe is outstanding. See
    /// the relay's liveness notes: the half gathers evidence that a peer busy reading bytes
    /// queued ahead of our ping is alive.
    pub(crate) fn kernel_look(&self, cfg: &HeartbeatConfig) -> Option<(Instant, Instant)> {
        let expiry = self.expiry(cfg)?;
        Some((expiry - self.timeout(cfg) / 2, expiry))
    }

    /// When the next ping is due, if pings are on.
    pub(crate) fn next_ping(&self, cfg: &HeartbeatConfig) -> Option<Instant> {
        (!cfg.interval.is_zero()).then_some(self.next_ping)
    }

    /// When the outstanding probe started (its ping was queued or written), if one is.
    pub(crate) fn probe_since(&self) -> Option<Instant> {
        match self.probe {
            Probe::Settled => None,
            Probe::Queued { since } | Probe::Sent { since } => Some(since),
        }
    }

    /// A ping is outstanding that has not been written yet.
    pub(crate) fn ping_waits(&self) -> bool {
        matches!(self.probe, Probe::Queued { .. })
    }

    /// How many pings were made so far (wrapping at 48 bits, as their numbers do).
    pub(crate) fn pings(&self) -> u64 {
        self.seq
    }

    /// The payload of a new ping, made the latest one at `now`. On its own (not through
    /// `handle_timeout`) it is the extra ping the relay sends a silent peer, so that the peer's
    /// kernel acknowledges with its current receive window; the running timeout stays as it is.
    pub(crate) fn new_ping(&mut self, now: Instant) -> [u8; PING_PAYLOAD_LEN] {
        self.seq = (self.seq + 1) & 0xFFFF_FFFF_FFFF;
        self.last_ping = Some(now);
        encode_payload(self.seq)
    }

    /// The next instant at which `handle_timeout` has something to do.
    ///
    /// Activity only ever moves deadlines later, so a driver may keep a timer armed for an
    /// earlier instant: `handle_timeout` then does nothing and the driver re-arms.
    pub(crate) fn poll_timeout(&self, cfg: &HeartbeatConfig) -> Instant {
        match (self.next_ping(cfg), self.expiry(cfg)) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            // With pings off, `next_ping` holds the last time the driver asked (see
            // `handle_timeout`), so the answer always lies ahead of it, never in the past.
            (None, None) => self.next_ping + FAR_FUTURE,
        }
    }

    /// Acts on the clock reaching `now`: expiry wins over a due ping.
    pub(crate) fn handle_timeout(&mut self, cfg: &HeartbeatConfig, now: Instant) -> Option<Action> {
        if self.expiry(cfg).is_some_and(|at| now >= at) {
            return Some(Action::Expire);
        }
        if cfg.interval.is_zero() {
            self.next_ping = now;
            return None;
        }
        if now < self.next_ping {
            return None;
        }
        // Skip missed ticks instead of bursting (tokio's `MissedTickBehavior::Skip`).
        while self.next_ping <= now {
            self.next_ping += cfg.interval;
        }
        let payload = self.new_ping(now);
        if self.probe == Probe::Settled {
            self.probe = Probe::Queued { since: now };
        }
        Some(Action::SendPing(payload))
    }
}

fn encode_payload(seq: u64) -> [u8; PING_PAYLOAD_LEN] {
    let mut out = [0u8; PING_PAYLOAD_LEN];
    out[..2].copy_from_slice(&PING_TAG);
    out[2..].copy_from_slice(&seq.to_be_bytes()[2..]);
    out
}

fn parse_payload(payload: &[u8]) -> Option<u64> {
    if payload.len() != PING_PAYLOAD_LEN || payload[..2] != PING_TAG {
        return None;
    }
    let mut seq = [0u8; 8];
    seq[2..].copy_from_slice(&payload[2..]);
    Some(u64::from_be_bytes(seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    /// A heartbeat with its settings beside it, as the relay holds them.
    struct Hb {
        cfg: HeartbeatConfig,
        st: Heartbeat,
    }

    impl Hb {
        fn new(cfg: HeartbeatConfig, now: Instant) -> Hb {
            Hb {
                st: Heartbeat::new(&cfg, now),
                cfg,
            }
        }

        fn handle_timeout(&mut self, now: Instant) -> Option<Action> {
            self.st.handle_timeout(&self.cfg, now)
        }

        fn poll_timeout(&self) -> Instant {
            self.st.poll_timeout(&self.cfg)
        }
    }

    impl std::ops::Deref for Hb {
        type Target = Heartbeat;
        fn deref(&self) -> &Heartbeat {
            &self.st
        }
    }

    impl std::ops::DerefMut for Hb {
        fn deref_mut(&mut self) -> &mut Heartbeat {
            &mut self.st
        }
    }

    fn cfg(interval: u64, timeout: u64) -> HeartbeatConfig {
        HeartbeatConfig {
            interval: S * interval as u32,
            timeout: S * timeout as u32,
            timeout_after_pong: None,
        }
    }

    /// `--upstream-pong-timeout auto` with this after-pong timeout.
    fn auto(interval: u64, after_pong: u64) -> HeartbeatConfig {
        HeartbeatConfig {
            timeout_after_pong: Some(S * after_pong as u32),
            ..cfg(interval, 0)
        }
    }

    fn ping_payload(action: Option<Action>) -> [u8; PING_PAYLOAD_LEN] {
        match action {
            Some(Action::SendPing(p)) => p,
            other => panic!("expected a ping, got {other:?}"),
        }
    }

    #[test]
    fn idle_peer_is_pinged_after_one_interval() {
        let t0 = Instant::now();
        let mut hb = Hb::new(cfg(20, 20), t0);
        assert_eq!(hb.poll_timeout(), t0 + 20 * S);
        assert_eq!(hb.handle_timeout(t0 + 19 * S), None);
        ping_payload(hb.handle_timeout(t0 + 20 * S));
        assert!(hb.is_awaiting());
    }

    #[test]
    fn pong_in_time_gives_rtt_and_keeps_peer_alive() {
        let t0 = Instant::now();
        let mut hb = Hb::new(cfg(20, 20), t0);
        let p = ping_payload(hb.handle_timeout(t0 + 20 * S));
        let rtt = Duration::from_millis(15);
        assert_eq!(
            hb.on_pong(&p, t0 + 20 * S + rtt),
            PongMatch::Ours { rtt: Some(rtt) }
        );
        assert!(!hb.is_awaiting());
        // The next event is the next ping, not an expiry.
        assert_eq!(hb.poll_timeout(), t0 + 40 * S);
        ping_payload(hb.handle_timeout(t0 + 40 * S));
    }

    #[test]
    fn silent_peer_expires_one_timeout_after_the_ping() {
        let t0 = Instant::now();
        let mut hb = Hb::new(cfg(20, 20), t0);
        ping_payload(hb.handle_timeout(t0 + 20 * S));
        assert_eq!(hb.poll_timeout(), t0 + 40 * S);
        assert_eq!(hb.handle_timeout(t0 + 40 * S), Some(Action::Expire));
    }

    #[test]
    fn later_pings_do_not_extend_the_deadline() {
        let t0 = Instant::now();
        let mut hb = Hb::new(cfg(1, 5), t0);
        for i in 1..5 {
            ping_payload(hb.handle_timeout(t0 + S * i));
        }
        assert_eq!(hb.poll_timeout(), t0 + 5 * S);
        // At t0+6s the first ping (t0+1s) is 5 s old: expire, even though a ping is due too.
        assert_eq!(hb.handle_timeout(t0 + 6 * S), Some(Action::Expire));
    }

    #[test]
    fn late_pong_still_proves_liveness_before_the_deadline_only() {
        let t0 = Instant::now();
        let mut hb = Hb::new(cfg(20, 20), t0);
        let p = ping_payload(hb.handle_timeout(t0 + 20 * S));
        assert_eq!(hb.handle_timeout(t0 + 40 * S), Some(Action::Expire));
        // A driver that ignored the expiry and then got the pong sees the peer alive again.
        assert!(matches!(
            hb.on_pong(&p, t0 + 41 * S),
            PongMatch::Ours { .. }
        ));
        assert!(!hb.is_awaiting());
    }

    #[test]
    fn foreign_pong_is_ignored_but_counts_as_activity() {
        let t0 = Instant::now();
        let mut hb = Hb::new(cfg(20, 20), t0);
        ping_payload(hb.handle_timeout(t0 + 20 * S));
        assert_eq!(hb.on_pong(b"hello", t0 + 21 * S), PongMatch::Foreign);
        assert_eq!(hb.on_pong(b"", t0 + 21 * S), PongMatch::Foreign);
        assert!(!hb.is_awaiting());
    }

    #[test]
    fn unsolicited_pong_without_any_ping_is_foreign() {
        let t0 = Instant::now();
        let mut hb = Hb::new(cfg(20, 20), t0);
        assert_eq!(hb.on_pong(&encode_payload(1), t0), PongMatch::Foreign);
    }

    #[test]
    fn pong_to_an_older_ping_is_ours_without_an_rtt() {
        let t0 = Instant::now();
        let mut hb = Hb::new(cfg(1, 0), t0);
        let first = ping_payload(hb.handle_timeout(t0 + S));
        let second = ping_payload(hb.handle_timeout(t0 + 2 * S));
        assert_eq!(
            hb.on_pong(&first, t0 + 2 * S),
            PongMatch::Ours { rtt: None }
        );
        assert_eq!(
            hb.on_pong(&second, t0 + 3 * S),
            PongMatch::Ours { rtt: Some(S) }
        );
        // A duplicate of the same pong gives no second round-trip time.
        assert_eq!(
            hb.on_pong(&second, t0 + 3 * S),
            PongMatch::Ours { rtt: None }
        );
        // A pong for a ping never sent is not ours.
        assert_eq!(
            hb.on_pong(&encode_payload(9), t0 + 3 * S),
            PongMatch::Foreign
        );
    }

    /// A ping stuck behind a large frame toward a slow reader: its timeout starts when it is
    /// written, and the round-trip time is measured from then.
    #[test]
    fn the_pong_timeout_runs_from_when_the_ping_was_written() {
        let t0 = Instant::now();
        let mut hb = Hb::new(cfg(2, 2), t0);
        let p = ping_payload(hb.handle_timeout(t0 + 2 * S));
        // The peer takes bytes of the frame ahead of the ping: alive.
        hb.on_activity();
        assert_eq!(
            hb.handle_timeout(t0 + 4 * S).map(|a| a == Action::Expire),
            Some(false)
        );
        hb.on_ping_written(t0 + 5 * S);
        assert_eq!(hb.poll_timeout(), t0 + 6 * S, "next ping");
        ping_payload(hb.handle_timeout(t0 + 6 * S));
        assert_eq!(hb.poll_timeout(), t0 + 7 * S, "expiry: 2 s after the write");
        let rtt = Duration::from_millis(500);
        assert_eq!(hb.handle_timeout(t0 + 6 * S + rtt), None);
        // The older ping's pong arrives: ours, no RTT (the newest ping is outstanding).
        assert_eq!(
            hb.on_pong(&p, t0 + 6 * S + rtt),
            PongMatch::Ours { rtt: None }
        );
        assert!(!hb.is_awaiting());
    }

    /// A ping that cannot be written at all (the peer takes no bytes) still expires one
    /// timeout after it was queued, and a later write does not extend a running timeout.
    #[test]
    fn a_ping_that_cannot_be_written_expires_from_when_it_was_queued() {
        let t0 = Instant::now();
        let mut hb = Hb::new(cfg(1, 2), t0);
        ping_payload(hb.handle_timeout(t0 + S));
        assert_eq!(hb.poll_timeout(), t0 + 2 * S);
        ping_payload(hb.handle_timeout(t0 + 2 * S));
        assert_eq!(hb.handle_timeout(t0 + 3 * S), Some(Action::Expire));

        let mut hb = Hb::new(cfg(1, 2), t0);
        ping_payload(hb.handle_timeout(t0 + S));
        hb.on_ping_written(t0 + S);
        ping_payload(hb.handle_timeout(t0 + 2 * S));
        hb.on_ping_written(t0 + 2 * S);
        assert_eq!(hb.handle_timeout(t0 + 3 * S), Some(Action::Expire));
    }

    #[test]
    fn auto_runs_no_timeout_until_the_peer_has_ponged() {
        let t0 = Instant::now();
        let mut hb = Hb::new(auto(1, 2), t0);
        for i in 1..100 {
            ping_payload(hb.handle_timeout(t0 + S * i));
            hb.on_ping_written(t0 + S * i);
        }
        assert_eq!(
            hb.poll_timeout(),
            t0 + 100 * S,
            "only pings, never an expiry"
        );
        // A foreign pong proves nothing about our pings.
        assert_eq!(hb.on_pong(b"hello", t0 + 100 * S), PongMatch::Foreign);
        let p = ping_payload(hb.handle_timeout(t0 + 100 * S));
        hb.on_ping_written(t0 + 100 * S);
        assert_eq!(
            hb.handle_timeout(t0 + 103 * S).map(|a| a == Action::Expire),
            Some(false)
        );
        assert!(matches!(
            hb.on_pong(&p, t0 + 103 * S),
            PongMatch::Ours { .. }
        ));
        // From now on it is held to the after-pong timeout.
        ping_payload(hb.handle_timeout(t0 + 104 * S));
        hb.on_ping_written(t0 + 104 * S);
        assert_eq!(hb.poll_timeout(), t0 + 105 * S);
        ping_payload(hb.handle_timeout(t0 + 105 * S));
        assert_eq!(hb.handle_timeout(t0 + 106 * S), Some(Action::Expire));
    }

    #[test]
    fn activity_clears_the_pending_expiry() {
        let t0 = Instant::now();
        let mut hb = Hb::new(cfg(20, 20), t0);
        ping_payload(hb.handle_timeout(t0 + 20 * S));
        hb.on_activity();
        assert_eq!(
            hb.handle_timeout(t0 + 40 * S).map(|a| a == Action::Expire),
            Some(false)
        );
    }

    #[test]
    fn missed_ticks_are_skipped_not_burst() {
        let t0 = Instant::now();
        let mut hb = Hb::new(cfg(1, 0), t0);
        ping_payload(hb.handle_timeout(t0 + 10 * S + S / 2));
        assert_eq!(hb.handle_timeout(t0 + 10 * S + S / 2), None);
        assert_eq!(hb.poll_timeout(), t0 + 11 * S);
    }

    #[test]
    fn zero_timeout_never_expires() {
        let t0 = Instant::now();
        let mut hb = Hb::new(cfg(1, 0), t0);
        for i in 1..100 {
            ping_payload(hb.handle_timeout(t0 + S * i));
        }
        assert!(hb.is_awaiting());
        assert_eq!(hb.poll_timeout(), t0 + 100 * S);
    }

    #[test]
    fn everything_off_never_fires() {
        let t0 = Instant::now();
        let mut hb = Hb::new(HeartbeatConfig::OFF, t0);
        assert!(hb.poll_timeout() > t0 + 3600 * S);
        assert_eq!(hb.handle_timeout(t0 + 3600 * S), None);
    }

    /// A driver re-arms at `poll_timeout` after every `handle_timeout`: with pings off, that
    /// instant must stay ahead of the clock however long the session lives, or the timer would
    /// fire again at once, forever.
    #[test]
    fn with_pings_off_the_next_deadline_stays_ahead_of_the_clock() {
        let t0 = Instant::now();
        let mut hb = Hb::new(HeartbeatConfig::OFF, t0);
        for day in [1u32, 2, 30] {
            let now = t0 + S * 86_400 * day;
            assert_eq!(hb.handle_timeout(now), None);
            assert!(hb.poll_timeout() > now, "day {day}");
        }
    }

    #[test]
    fn sequence_numbers_are_distinct_and_tagged() {
        let t0 = Instant::now();
        let mut hb = Hb::new(cfg(1, 0), t0);
        let a = ping_payload(hb.handle_timeout(t0 + S));
        let b = ping_payload(hb.handle_timeout(t0 + 2 * S));
        assert_ne!(a, b);
        assert_eq!(&a[..2], b"wb");
        assert_eq!(parse_payload(&b), Some(2));
    }
}
