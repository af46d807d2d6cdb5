//! Per-side heartbeat: a pure state machine with no I/O and no clock of its own.
//!
//! One [`Heartbeat`] exists per leg of a session (client and upstream). The relay is its only
//! driver: it reports what it saw (`on_activity`, `on_pong`) and asks when to wake up
//! (`poll_timeout`); when that instant arrives it calls `handle_timeout`, which says whether to
//! send a ping or to declare the peer dead. Time is always passed in, so the whole table of
//! behaviours is unit-tested with plain `#[test]`s (the design follows quinn-proto's timers).
//!
//! Semantics:
//! - A ping is due every `interval` after the previous one, regardless of traffic, so that an
//!   idle-timeout middlebox always sees the leg carry bytes at least that often.
//! - Any frame from the peer proves it alive. After a ping, if the peer sends nothing at all for
//!   `timeout`, the peer is dead. Later pings do not extend that deadline.
//! - Our ping payloads are tagged (`wb` + 48-bit sequence number), so the pong that echoes the
//!   latest ping gives a round-trip time; other pongs are foreign and are ignored (RFC 6455 5.5.3).

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
    /// After a ping, how long the peer may stay silent before it is dead; zero never expires.
    pub timeout: Duration,
}

impl HeartbeatConfig {
    /// Heartbeats switched off entirely.
    pub const OFF: HeartbeatConfig = HeartbeatConfig {
        interval: Duration::ZERO,
        timeout: Duration::ZERO,
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
    /// It echoes our latest ping; `rtt` is the time since that ping was sent.
    Ours { rtt: Duration },
    /// Unsolicited, or an answer to an older ping: ignored apart from proving liveness.
    Foreign,
}

/// Heartbeat state of one leg.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    cfg: HeartbeatConfig,
    /// When the next ping is due (meaningless when pings are off).
    next_ping: Instant,
    /// Time of the first ping sent since the peer was last heard from.
    awaiting_since: Option<Instant>,
    /// Sequence number and send time of the latest ping, to match its pong.
    last_ping: Option<(u64, Instant)>,
    seq: u64,
}

impl Heartbeat {
    /// Starts the schedule at `now`: the first ping is due one interval later.
    pub(crate) fn new(cfg: HeartbeatConfig, now: Instant) -> Self {
        Heartbeat {
            cfg,
            next_ping: now + cfg.interval,
            awaiting_since: None,
            last_ping: None,
            seq: 0,
        }
    }

    /// Any frame arrived from the peer: it is alive. No time is needed: liveness only clears
    /// the pending expiry, so the relay can report it without reading the clock per read.
    pub(crate) fn on_activity(&mut self) {
        self.awaiting_since = None;
    }

    /// A pong arrived. It also counts as activity.
    pub(crate) fn on_pong(&mut self, payload: &[u8], now: Instant) -> PongMatch {
        self.on_activity();
        match (self.last_ping, parse_payload(payload)) {
            (Some((seq, sent)), Some(got)) if got == seq => {
                self.last_ping = None;
                PongMatch::Ours {
                    rtt: now.saturating_duration_since(sent),
                }
            }
            _ => PongMatch::Foreign,
        }
    }

    /// True while a ping is outstanding and the peer has said nothing since.
    #[cfg(test)]
    fn is_awaiting(&self) -> bool {
        self.awaiting_since.is_some()
    }

    /// The next instant at which `handle_timeout` has something to do.
    ///
    /// Activity only ever moves deadlines later, so a driver may keep a timer armed for an
    /// earlier instant: `handle_timeout` then does nothing and the driver re-arms.
    pub(crate) fn poll_timeout(&self) -> Instant {
        let ping = (!self.cfg.interval.is_zero()).then_some(self.next_ping);
        let expiry = match (self.awaiting_since, self.cfg.timeout.is_zero()) {
            (Some(since), false) => Some(since + self.cfg.timeout),
            _ => None,
        };
        match (ping, expiry) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            // With pings off, `next_ping` holds the last time the driver asked (see
            // `handle_timeout`), so the answer always lies ahead of it, never in the past.
            (None, None) => self.next_ping + FAR_FUTURE,
        }
    }

    /// Acts on the clock reaching `now`: expiry wins over a due ping.
    pub(crate) fn handle_timeout(&mut self, now: Instant) -> Option<Action> {
        if let Some(since) = self.awaiting_since
            && !self.cfg.timeout.is_zero()
            && now >= since + self.cfg.timeout
        {
            return Some(Action::Expire);
        }
        if self.cfg.interval.is_zero() {
            self.next_ping = now;
            return None;
        }
        if now < self.next_ping {
            return None;
        }
        // Skip missed ticks instead of bursting (tokio's `MissedTickBehavior::Skip`).
        while self.next_ping <= now {
            self.next_ping += self.cfg.interval;
        }
        self.seq = (self.seq + 1) & 0xFFFF_FFFF_FFFF;
        self.last_ping = Some((self.seq, now));
        self.awaiting_since.get_or_insert(now);
        Some(Action::SendPing(encode_payload(self.seq)))
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

    fn cfg(interval: u64, timeout: u64) -> HeartbeatConfig {
        HeartbeatConfig {
            interval: S * interval as u32,
            timeout: S * timeout as u32,
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
        let mut hb = Heartbeat::new(cfg(20, 20), t0);
        assert_eq!(hb.poll_timeout(), t0 + 20 * S);
        assert_eq!(hb.handle_timeout(t0 + 19 * S), None);
        ping_payload(hb.handle_timeout(t0 + 20 * S));
        assert!(hb.is_awaiting());
    }

    #[test]
    fn pong_in_time_gives_rtt_and_keeps_peer_alive() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(cfg(20, 20), t0);
        let p = ping_payload(hb.handle_timeout(t0 + 20 * S));
        let rtt = Duration::from_millis(15);
        assert_eq!(hb.on_pong(&p, t0 + 20 * S + rtt), PongMatch::Ours { rtt });
        assert!(!hb.is_awaiting());
        // The next event is the next ping, not an expiry.
        assert_eq!(hb.poll_timeout(), t0 + 40 * S);
        ping_payload(hb.handle_timeout(t0 + 40 * S));
    }

    #[test]
    fn silent_peer_expires_one_timeout_after_the_ping() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(cfg(20, 20), t0);
        ping_payload(hb.handle_timeout(t0 + 20 * S));
        assert_eq!(hb.poll_timeout(), t0 + 40 * S);
        assert_eq!(hb.handle_timeout(t0 + 40 * S), Some(Action::Expire));
    }

    #[test]
    fn later_pings_do_not_extend_the_deadline() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(cfg(1, 5), t0);
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
        let mut hb = Heartbeat::new(cfg(20, 20), t0);
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
        let mut hb = Heartbeat::new(cfg(20, 20), t0);
        ping_payload(hb.handle_timeout(t0 + 20 * S));
        assert_eq!(hb.on_pong(b"hello", t0 + 21 * S), PongMatch::Foreign);
        assert_eq!(hb.on_pong(b"", t0 + 21 * S), PongMatch::Foreign);
        assert!(!hb.is_awaiting());
    }

    #[test]
    fn unsolicited_pong_without_any_ping_is_foreign() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(cfg(20, 20), t0);
        assert_eq!(hb.on_pong(&encode_payload(1), t0), PongMatch::Foreign);
    }

    #[test]
    fn pong_to_an_older_ping_is_foreign() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(cfg(1, 0), t0);
        let first = ping_payload(hb.handle_timeout(t0 + S));
        let second = ping_payload(hb.handle_timeout(t0 + 2 * S));
        assert_eq!(hb.on_pong(&first, t0 + 2 * S), PongMatch::Foreign);
        assert_eq!(hb.on_pong(&second, t0 + 3 * S), PongMatch::Ours { rtt: S });
        // A duplicate of the same pong is no longer ours.
        assert_eq!(hb.on_pong(&second, t0 + 3 * S), PongMatch::Foreign);
    }

    #[test]
    fn activity_clears_the_pending_expiry() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(cfg(20, 20), t0);
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
        let mut hb = Heartbeat::new(cfg(1, 0), t0);
        ping_payload(hb.handle_timeout(t0 + 10 * S + S / 2));
        assert_eq!(hb.handle_timeout(t0 + 10 * S + S / 2), None);
        assert_eq!(hb.poll_timeout(), t0 + 11 * S);
    }

    #[test]
    fn zero_timeout_never_expires() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(cfg(1, 0), t0);
        for i in 1..100 {
            ping_payload(hb.handle_timeout(t0 + S * i));
        }
        assert!(hb.is_awaiting());
        assert_eq!(hb.poll_timeout(), t0 + 100 * S);
    }

    #[test]
    fn everything_off_never_fires() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(HeartbeatConfig::OFF, t0);
        assert!(hb.poll_timeout() > t0 + 3600 * S);
        assert_eq!(hb.handle_timeout(t0 + 3600 * S), None);
    }

    /// A driver re-arms at `poll_timeout` after every `handle_timeout`: with pings off, that
    /// instant must stay ahead of the clock however long the session lives, or the timer would
    /// fire again at once, forever.
    #[test]
    fn with_pings_off_the_next_deadline_stays_ahead_of_the_clock() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(HeartbeatConfig::OFF, t0);
        for day in [1u32, 2, 30] {
            let now = t0 + S * 86_400 * day;
            assert_eq!(hb.handle_timeout(now), None);
            assert!(hb.poll_timeout() > now, "day {day}");
        }
    }

    #[test]
    fn sequence_numbers_are_distinct_and_tagged() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(cfg(1, 0), t0);
        let a = ping_payload(hb.handle_timeout(t0 + S));
        let b = ping_payload(hb.handle_timeout(t0 + 2 * S));
        assert_ne!(a, b);
        assert_eq!(&a[..2], b"wb");
        assert_eq!(parse_payload(&b), Some(2));
    }
}
