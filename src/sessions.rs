//! The live-session table behind `GET /connections`, for a person debugging one stuck client.
//!
//! A session registers once when it starts and removes itself when it ends (one short lock
//! each). While it runs, the relay only does relaxed atomic stores into its own
//! [`SessionInfo`], on counters no one else writes: nothing is locked, formatted or allocated on
//! the relay's path, and all the work of a listing is done by whoever asks for it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::Side;
use crate::text_heartbeat::TextKind;

/// Stored in place of a value not seen yet.
const NONE: u64 = u64::MAX;

/// What one leg of a session has done, updated by the relay.
#[derive(Debug)]
pub struct LegInfo {
    last_rtt_us: AtomicU64,
    last_rx_ms: AtomicU64,
    pings_sent: AtomicU64,
    bytes_received: AtomicU64,
    /// When (ms since the session started) and what the latest text heartbeat on this leg was.
    last_text_ms: AtomicU64,
    last_text_kind: AtomicU8,
    ponged: AtomicBool,
}

impl Default for LegInfo {
    fn default() -> Self {
        LegInfo {
            last_rtt_us: AtomicU64::new(NONE),
            last_rx_ms: AtomicU64::new(NONE),
            pings_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            last_text_ms: AtomicU64::new(NONE),
            last_text_kind: AtomicU8::new(0),
            ponged: AtomicBool::new(false),
        }
    }
}

/// One live session.
#[derive(Debug)]
pub struct SessionInfo {
    /// Unique, increasing id.
    pub id: u64,
    /// The client's address.
    pub client: SocketAddr,
    /// The request path (without query: queries often carry tokens).
    pub path: String,
    started: Instant,
    legs: [LegInfo; 2],
}

impl SessionInfo {
    /// Bytes arrived from `side` at `now`.
    pub fn on_received(&self, side: Side, bytes: u64, now: Instant) {
        let leg = &self.legs[side.index()];
        leg.bytes_received.fetch_add(bytes, Ordering::Relaxed);
        let ms = now.saturating_duration_since(self.started).as_millis() as u64;
        leg.last_rx_ms.store(ms, Ordering::Relaxed);
    }

    /// A ping was sent to `side`.
    pub fn on_ping(&self, side: Side) {
        self.legs[side.index()]
            .pings_sent
            .fetch_add(1, Ordering::Relaxed);
    }

    /// `side` answered one of our pings: it can pong, so `--upstream-pong-timeout auto` holds
    /// it to a timeout from now on.
    pub fn on_ponged(&self, side: Side) {
        self.legs[side.index()]
            .ponged
            .store(true, Ordering::Relaxed);
    }

    /// `side` answered our ping after `rtt`.
    pub fn on_rtt(&self, side: Side, rtt: Duration) {
        let us = rtt.as_micros().min(u128::from(NONE - 1)) as u64;
        self.legs[side.index()]
            .last_rtt_us
            .store(us, Ordering::Relaxed);
    }

    /// A text heartbeat of `kind` happened on `side` at `now`.
    pub fn on_text_heartbeat(&self, side: Side, kind: TextKind, now: Instant) {
        let leg = &self.legs[side.index()];
        let ms = now.saturating_duration_since(self.started).as_millis() as u64;
        leg.last_text_kind.store(kind as u8, Ordering::Relaxed);
        leg.last_text_ms.store(ms, Ordering::Relaxed);
    }

    fn snapshot(&self, now: Instant) -> SessionView {
        let age = now.saturating_duration_since(self.started);
        let leg = |side: Side| {
            let l = &self.legs[side.index()];
            let rtt = l.last_rtt_us.load(Ordering::Relaxed);
            let rx = l.last_rx_ms.load(Ordering::Relaxed);
            let text_ms = l.last_text_ms.load(Ordering::Relaxed);
            let last_text_heartbeat = (text_ms != NONE).then(|| {
                let kind = l.last_text_kind.load(Ordering::Relaxed);
                TextHeartbeatView {
                    kind: TextKind::ALL
                        .get(usize::from(kind))
                        .map_or("unknown", |k| k.as_str()),
                    seconds_ago: age
                        .saturating_sub(Duration::from_millis(text_ms))
                        .as_secs_f64(),
                }
            });
            LegView {
                last_rtt_seconds: (rtt != NONE).then(|| rtt as f64 / 1e6),
                last_frame_received_seconds_ago: (rx != NONE)
                    .then(|| age.saturating_sub(Duration::from_millis(rx)).as_secs_f64()),
                pings_sent: l.pings_sent.load(Ordering::Relaxed),
                ponged: l.ponged.load(Ordering::Relaxed),
                bytes_received: l.bytes_received.load(Ordering::Relaxed),
                last_text_heartbeat,
            }
        };
        SessionView {
            id: self.id,
            client_address: self.client.to_string(),
            path: self.path.clone(),
            age_seconds: age.as_secs_f64(),
            client: leg(Side::Client),
            upstream: leg(Side::Upstream),
        }
    }
}

/// JSON shape of one session in `/connections`.
#[derive(Debug, Serialize)]
pub struct SessionView {
    id: u64,
    client_address: String,
    path: String,
    age_seconds: f64,
    client: LegView,
    upstream: LegView,
}

/// JSON shape of one leg.
#[derive(Debug, Serialize)]
pub struct LegView {
    last_rtt_seconds: Option<f64>,
    last_frame_received_seconds_ago: Option<f64>,
    pings_sent: u64,
    /// The leg answered at least one of our pings (with `--upstream-pong-timeout auto`, the
    /// upstream leg is held to a pong timeout only from then on).
    ponged: bool,
    bytes_received: u64,
    last_text_heartbeat: Option<TextHeartbeatView>,
}

/// JSON shape of a leg's latest text heartbeat.
#[derive(Debug, Serialize)]
pub struct TextHeartbeatView {
    /// `answered`, `injected` or `absorbed`.
    kind: &'static str,
    seconds_ago: f64,
}

/// The table of live sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    next_id: AtomicU64,
    live: Mutex<BTreeMap<u64, Arc<SessionInfo>>>,
}

impl Sessions {
    /// Adds a session; it stays listed until the returned [`Registration`] is dropped.
    pub fn register(self: &Arc<Self>, client: SocketAddr, path: String) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let info = Arc::new(SessionInfo {
            id,
            client,
            path,
            started: Instant::now(),
            legs: Default::default(),
        });
        self.lock().insert(id, Arc::clone(&info));
        Registration {
            sessions: Arc::clone(self),
            info,
        }
    }

    /// Up to `limit` live sessions, newest first.
    pub fn list(&self, limit: usize) -> Vec<SessionView> {
        let now = Instant::now();
        let newest: Vec<Arc<SessionInfo>> =
            self.lock().values().rev().take(limit).cloned().collect();
        newest.iter().map(|s| s.snapshot(now)).collect()
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<SessionInfo>>> {
        // The map stays consistent even if a holder panicked: each operation is one call.
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Keeps a session listed; removes it on drop.
#[derive(Debug)]
pub struct Registration {
    sessions: Arc<Sessions>,
    info: Arc<SessionInfo>,
}

impl Registration {
    /// The session's live record, for the relay to update.
    pub fn info(&self) -> &Arc<SessionInfo> {
        &self.info
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.sessions.lock().remove(&self.info.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:5000".parse().unwrap()
    }

    #[test]
    fn listing_is_newest_first_and_capped() {
        let s = Arc::new(Sessions::default());
        let regs: Vec<_> = (0..5)
            .map(|i| s.register(addr(), format!("/p{i}")))
            .collect();
        let listed = s.list(3);
        let paths: Vec<_> = listed.iter().map(|v| v.path.as_str()).collect();
        assert_eq!(paths, ["/p4", "/p3", "/p2"]);
        drop(regs);
        assert!(s.is_empty());
    }

    #[test]
    fn leg_counters_show_up_in_the_view() {
        let s = Arc::new(Sessions::default());
        let reg = s.register(addr(), "/".into());
        let info = reg.info();
        info.on_ping(Side::Upstream);
        info.on_rtt(Side::Upstream, Duration::from_millis(3));
        info.on_ponged(Side::Upstream);
        info.on_received(Side::Client, 42, Instant::now());
        let v = &s.list(10)[0];
        assert_eq!(v.upstream.pings_sent, 1);
        assert!(v.upstream.ponged && !v.client.ponged);
        assert_eq!(v.upstream.last_rtt_seconds, Some(0.003));
        assert_eq!(v.client.bytes_received, 42);
        assert!(v.client.last_frame_received_seconds_ago.is_some());
        assert_eq!(v.upstream.last_frame_received_seconds_ago, None);
        assert!(v.client.last_text_heartbeat.is_none());
    }

    #[test]
    fn latest_text_heartbeat_per_leg_shows_up_in_the_view() {
        let s = Arc::new(Sessions::default());
        let reg = s.register(addr(), "/".into());
        let info = reg.info();
        let now = Instant::now();
        info.on_text_heartbeat(Side::Client, TextKind::Answered, now);
        info.on_text_heartbeat(Side::Client, TextKind::Injected, now);
        info.on_text_heartbeat(Side::Upstream, TextKind::Absorbed, now);
        let v = &s.list(10)[0];
        let json = serde_json::to_value(v).expect("json");
        assert_eq!(json["client"]["last_text_heartbeat"]["kind"], "injected");
        assert_eq!(json["upstream"]["last_text_heartbeat"]["kind"], "absorbed");
        assert!(
            json["client"]["last_text_heartbeat"]["seconds_ago"]
                .as_f64()
                .is_some()
        );
    }
}
