//! Prometheus metrics in an owned registry, with every label handle resolved once at start-up.
//!
//! Owns: the [`Metrics`] struct (one per proxy instance; tests build their own), the fixed label
//! sets, and the per-session [`Tally`] that the relay fills without atomics and flushes once per
//! wake-up. Every label combination is created at start-up, so a scrape shows zeros instead of
//! gaps, and the per-frame path never looks a label up or takes a lock. No label ever carries a
//! path, an address or any other client-chosen value.
//!
//! Does not own: what the labels mean. Results and reasons are [`crate::outcome`] values that
//! callers pass in; this module imports no proxy or relay type, as ztunnel's connection guards
//! take labels rather than proxy objects.

mod sharded;
mod tls;

use std::time::Duration;

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use crate::Side;
use crate::frame;
use crate::outcome::{CloseReason, ConnectError, ConnectionResult, Initiator};
use crate::text_heartbeat::TextKind;
use sharded::FrameCounters;
pub use sharded::Shard;
pub use tls::{ReloadResult, TlsFailure, TlsMetrics};

/// Seconds buckets for ping round trips: 100 µs (same host) to 30 s (a peer about to die).
const RTT_BUCKETS_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];
/// Seconds buckets for handshakes: a local upstream answers in well under a millisecond, a
/// remote one in tens of ms; the top bucket sits near the default connect timeout.
const HANDSHAKE_BUCKETS_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Seconds buckets for session lifetimes: from a failed session to a day-long one.
const CONNECTION_BUCKETS_SECONDS: &[f64] = &[
    0.1,
    1.0,
    10.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4.0 * 3600.0,
    12.0 * 3600.0,
    86400.0,
];

/// Opcodes counted by `frames_total`, in index order (see [`opcode_index`]).
pub const OPCODES: [u8; 7] = [
    frame::OP_CONTINUATION,
    frame::OP_TEXT,
    frame::OP_BINARY,
    frame::OP_CLOSE,
    frame::OP_PING,
    frame::OP_PONG,
    0xF, // every reserved opcode shares the "reserved" label
];

/// Index of `opcode` in [`OPCODES`].
pub fn opcode_index(opcode: u8) -> usize {
    match opcode {
        0..=2 => opcode as usize,
        frame::OP_CLOSE => 3,
        frame::OP_PING => 4,
        frame::OP_PONG => 5,
        _ => 6,
    }
}

/// Label of the direction in which frames read from `from` travel.
pub fn direction_label(from: Side) -> &'static str {
    match from {
        Side::Client => "client_to_upstream",
        Side::Upstream => "upstream_to_client",
    }
}

/// Status classes of plain HTTP responses, `http_requests_total{status_class}`.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The `{side, kind}` pairs of `text_heartbeats_total`: only the client's pings are answered,
/// keep-alives and text pings are injected on both legs, and only the upstream's answers are
/// absorbed. The other pairs cannot happen, so they are not exposed.
const TEXT_HEARTBEAT_SERIES: [(Side, TextKind); 4] = [
    (Side::Client, TextKind::Answered),
    (Side::Client, TextKind::Injected),
    (Side::Upstream, TextKind::Injected),
    (Side::Upstream, TextKind::Absorbed),
];

/// Every metric of one proxy instance, registered into its own registry.
pub struct Metrics {
    registry: Registry,
    /// The process collector lives apart, unprefixed: `process_*` is the name every dashboard
    /// and alert in the Prometheus world expects.
    process_registry: Registry,
    /// Sessions currently relaying.
    pub connections_active: IntGauge,
    connections: Vec<IntCounter>,
    /// Pings wsbeat sent, per side.
    pub pings_sent: [IntCounter; 2],
    /// Pongs answering wsbeat's latest ping, per side.
    pub pongs_received: [IntCounter; 2],
    /// Round trip of wsbeat's pings, per side.
    pub ping_rtt: [Histogram; 2],
    /// Sides declared dead after their pong timeout.
    pub peer_timeouts: [IntCounter; 2],
    /// Frames from each side whose payload went on with `splice(2)`.
    pub spliced_frames: [IntCounter; 2],
    /// `text_heartbeats_total`: the side × kind combinations that can happen, in
    /// [`TEXT_HEARTBEAT_SERIES`] order.
    text_heartbeats: [IntCounter; 4],
    closes: Vec<IntCounter>,
    /// `frames_total`, `bytes_total` and `messages_total`, sharded per relay thread.
    frame_counters: FrameCounters,
    /// Client request received → 101 sent.
    pub handshake_duration: Histogram,
    /// Lifetime of upgraded sessions.
    pub connection_duration: Histogram,
    connect_errors: Vec<IntCounter>,
    http_requests: [IntCounter; 5],
    /// 1 while the proxy accepts connections, 0 once it drains (mirrors `/readyz`).
    pub ready: Gauge,
    /// The drain phase: 0 serving, 1 not ready, 2 going away, 3 deadline.
    pub drain_phase: IntGauge,
    /// Handshake failures, certificate reloads and expiry.
    pub tls: TlsMetrics,
}

impl Metrics {
    /// Creates every family and label combination in a fresh registry.
    ///
    /// # Errors
    /// A registration error, which only a programming mistake (a duplicate name) can cause.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("wsbeat".into()), None)?;
        let r = &registry;
        let side = |name: &str, help: &str| -> Result<[IntCounter; 2], prometheus::Error> {
            let vec = counter_vec(r, name, help, &["side"])?;
            Ok(Side::ALL.map(|s| vec.with_label_values(&[s.as_str()])))
        };
        let connections_active = IntGauge::new(
            "connections_active",
            "WebSocket sessions currently being relayed.",
        )?;
        r.register(Box::new(connections_active.clone()))?;
        let connections = counter_vec(
            r,
            "connections_total",
            "Upgrade requests by result; over_limit also counts plain HTTP requests refused at --max-connections.",
            &["result"],
        )?;
        let connections = ConnectionResult::ALL
            .iter()
            .map(|c| connections.with_label_values(&[c.as_str()]))
            .collect();
        let pings_sent = side("pings_sent_total", "Pings sent by wsbeat, per side.")?;
        let pongs_received = side(
            "pongs_received_total",
            "Pongs answering wsbeat's latest ping, per side.",
        )?;
        let rtt = prometheus::HistogramVec::new(
            HistogramOpts::new(
                "ping_rtt_seconds",
                "Round-trip time of wsbeat's pings, per side.",
            )
            .buckets(RTT_BUCKETS_SECONDS.to_vec()),
            &["side"],
        )?;
        r.register(Box::new(rtt.clone()))?;
        let ping_rtt = Side::ALL.map(|s| rtt.with_label_values(&[s.as_str()]));
        let peer_timeouts = side(
            "peer_timeouts_total",
            "Sides declared dead because they stayed silent past their pong timeout.",
        )?;
        let spliced_frames = side(
            "spliced_frames_total",
            "Data frames from this side whose payload was moved with splice(2), not copied.",
        )?;
        let text = counter_vec(
            r,
            "text_heartbeats_total",
            "Text heartbeats per leg: client pings answered by wsbeat, messages injected by \
             wsbeat, upstream answers absorbed.",
            &["side", "kind"],
        )?;
        let text_heartbeats =
            TEXT_HEARTBEAT_SERIES.map(|(s, k)| text.with_label_values(&[s.as_str(), k.as_str()]));
        let closes = counter_vec(
            r,
            "closes_total",
            "Ended sessions by who started the end and why.",
            &["initiator", "reason"],
        )?;
        let closes = Initiator::ALL
            .iter()
            .flat_map(|i| CloseReason::ALL.iter().map(move |c| (i, c)))
            .map(|(i, c)| closes.with_label_values(&[i.as_str(), c.as_str()]))
            .collect();
        let frame_counters = FrameCounters::new()?;
        r.register(Box::new(frame_counters.clone()))?;
        let handshake_duration = histogram(
            r,
            "handshake_duration_seconds",
            "From the client's upgrade request to the 101 sent back.",
            HANDSHAKE_BUCKETS_SECONDS,
        )?;
        let connection_duration = histogram(
            r,
            "connection_duration_seconds",
            "Lifetime of upgraded sessions.",
            CONNECTION_BUCKETS_SECONDS,
        )?;
        let errors = counter_vec(
            r,
            "upstream_connect_errors_total",
            "Failed attempts to connect to the upstream, by reason.",
            &["reason"],
        )?;
        let connect_errors = ConnectError::ALL
            .iter()
            .map(|e| errors.with_label_values(&[e.as_str()]))
            .collect();
        let http = counter_vec(
            r,
            "http_requests_total",
            "Plain HTTP requests passed through, by response status class.",
            &["status_class"],
        )?;
        let http_requests = STATUS_CLASSES.map(|c| http.with_label_values(&[c]));
        let build = prometheus::GaugeVec::new(
            Opts::new(
                "build_info",
                "Always 1; the label carries the wsbeat version.",
            ),
            &["version"],
        )?;
        r.register(Box::new(build.clone()))?;
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1.0);
        let ready = Gauge::new("ready", "1 while accepting connections, 0 while draining.")?;
        r.register(Box::new(ready.clone()))?;
        ready.set(1.0);
        let drain_phase = IntGauge::new(
            "drain_phase",
            "Drain phase: 0 serving, 1 not ready (still accepting), 2 going away (sessions closing with 1001), 3 deadline.",
        )?;
        r.register(Box::new(drain_phase.clone()))?;
        let tls = TlsMetrics::new(r)?;
        let process_registry = Registry::new();
        register_process_collector(&process_registry)?;
        Ok(Metrics {
            registry,
            process_registry,
            connections_active,
            connections,
            pings_sent,
            pongs_received,
            ping_rtt,
            peer_timeouts,
            spliced_frames,
            text_heartbeats,
            closes,
            frame_counters,
            handshake_duration,
            connection_duration,
            connect_errors,
            http_requests,
            ready,
            drain_phase,
            tls,
        })
    }

    /// Every family to expose: wsbeat's own, then the process collector's.
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        let mut families = self.registry.gather();
        families.extend(self.process_registry.gather());
        families
    }

    /// Counts one upgrade attempt by result.
    pub fn connection(&self, result: ConnectionResult) {
        self.connections[result as usize].inc();
    }

    /// Counts one ended session.
    pub fn close(&self, initiator: Initiator, reason: CloseReason) {
        self.closes[initiator as usize * CloseReason::ALL.len() + reason as usize].inc();
    }

    /// Counts one text heartbeat of `kind` on `side`; a pair that cannot happen is ignored.
    pub fn text_heartbeat(&self, side: Side, kind: TextKind) {
        if let Some(i) = TEXT_HEARTBEAT_SERIES
            .iter()
            .position(|&p| p == (side, kind))
        {
            self.text_heartbeats[i].inc();
        }
    }

    /// Counts one failed upstream connect.
    pub fn connect_error(&self, error: ConnectError) {
        self.connect_errors[error as usize].inc();
    }

    /// Counts one plain HTTP response by status.
    pub fn http_request(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.http_requests[class].inc();
    }

    /// The calling thread's shard of the per-frame counters: a session takes it once and
    /// flushes its [`Tally`] into it (see `metrics/sharded.rs`).
    pub fn shard(&self) -> std::sync::Arc<Shard> {
        self.frame_counters.shard()
    }

    /// Records a ping round trip.
    pub fn observe_rtt(&self, side: Side, rtt: Duration) {
        self.pongs_received[side.index()].inc();
        self.ping_rtt[side.index()].observe(rtt.as_secs_f64());
    }
}

/// Per-session counts kept without atomics between flushes. Index 0 is client → upstream.
#[derive(Debug, Default)]
pub struct Tally {
    frames: [[u64; OPCODES.len()]; 2],
    bytes: [u64; 2],
    messages: [u64; 2],
    dirty: bool,
}

impl Tally {
    /// One frame of `frame_len` bytes read from `from`.
    pub fn frame(&mut self, from: Side, opcode: u8, fin: bool, frame_len: u64) {
        let d = from.index();
        self.frames[d][opcode_index(opcode)] += 1;
        self.bytes[d] += frame_len;
        if fin && opcode & 0x8 == 0 {
            self.messages[d] += 1;
        }
        self.dirty = true;
    }

    /// True when there is something to flush.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }
}

/// Counts a session as active for its lifetime; records its duration and how it ended.
///
/// Created once both legs are upgraded. If the session's task is dropped before
/// [`SessionGuard::finish`] (the runtime shuts down), `Drop` still decrements the gauge and
/// counts the close as a proxy shutdown, so aborted tasks never leak an active session.
pub struct SessionGuard {
    metrics: std::sync::Arc<Metrics>,
    started: tokio::time::Instant,
    recorded: bool,
}

impl SessionGuard {
    /// Marks one session active.
    pub fn new(metrics: &std::sync::Arc<Metrics>) -> Self {
        metrics.connections_active.inc();
        SessionGuard {
            metrics: std::sync::Arc::clone(metrics),
            started: tokio::time::Instant::now(),
            recorded: false,
        }
    }

    /// Time since the session started.
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }

    /// Records how the session ended.
    pub fn finish(mut self, initiator: Initiator, reason: CloseReason) {
        self.metrics.close(initiator, reason);
        self.recorded = true;
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.metrics.connections_active.dec();
        self.metrics
            .connection_duration
            .observe(self.started.elapsed().as_secs_f64());
        if !self.recorded {
            self.metrics.close(Initiator::Proxy, CloseReason::Shutdown);
        }
    }
}

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    let vec = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(vec.clone()))?;
    Ok(vec)
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
) -> Result<Histogram, prometheus::Error> {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

/// Registers CPU, memory and file descriptor metrics of this process (`process_*`).
fn register_process_collector(r: &Registry) -> Result<(), prometheus::Error> {
    let pc = prometheus::process_collector::ProcessCollector::for_self();
    r.register(Box::new(pc))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use prometheus::Encoder;

    /// The registry in the text exposition format, as a scrape sees it.
    pub(crate) fn scrape(m: &Metrics) -> String {
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&m.gather(), &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_label_combination_exists_at_start() {
        let m = Metrics::new().unwrap();
        let text = scrape(&m);
        for line in [
            r#"wsbeat_peer_timeouts_total{side="upstream"} 0"#,
            r#"wsbeat_closes_total{initiator="proxy",reason="shutdown"} 0"#,
            r#"wsbeat_frames_total{direction="upstream_to_client",opcode="reserved"} 0"#,
            r#"wsbeat_connections_total{result="bad_request"} 0"#,
            r#"wsbeat_upstream_connect_errors_total{reason="dns"} 0"#,
            r#"wsbeat_http_requests_total{status_class="5xx"} 0"#,
            "wsbeat_connections_active 0",
            r#"wsbeat_text_heartbeats_total{kind="absorbed",side="upstream"} 0"#,
        ] {
            assert!(text.contains(line), "missing {line}");
        }
    }

    #[test]
    fn tally_flushes_into_the_right_labels() {
        let m = Metrics::new().unwrap();
        let mut t = Tally::default();
        t.frame(Side::Client, frame::OP_TEXT, false, 10);
        t.frame(Side::Client, frame::OP_CONTINUATION, true, 20);
        t.frame(Side::Upstream, frame::OP_PING, true, 6);
        let shard = m.shard();
        shard.flush(&mut t);
        shard.flush(&mut t);
        // Another thread's shard adds to the same families.
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut t = Tally::default();
                t.frame(Side::Client, frame::OP_BINARY, true, 5);
                m.shard().flush(&mut t);
            });
        });
        let text = scrape(&m);
        assert!(text.contains(r#"wsbeat_bytes_total{direction="client_to_upstream"} 35"#));
        assert!(text.contains(r#"wsbeat_messages_total{direction="client_to_upstream"} 2"#));
        assert!(text.contains(r#"wsbeat_messages_total{direction="upstream_to_client"} 0"#));
        assert!(
            text.contains(r#"wsbeat_frames_total{direction="upstream_to_client",opcode="ping"} 1"#)
        );
    }

    #[test]
    fn text_heartbeats_count_under_their_side_and_kind() {
        let m = Metrics::new().unwrap();
        m.text_heartbeat(Side::Client, TextKind::Answered);
        m.text_heartbeat(Side::Client, TextKind::Answered);
        m.text_heartbeat(Side::Upstream, TextKind::Injected);
        let text = scrape(&m);
        assert!(text.contains(r#"wsbeat_text_heartbeats_total{kind="answered",side="client"} 2"#));
        assert!(
            text.contains(r#"wsbeat_text_heartbeats_total{kind="injected",side="upstream"} 1"#)
        );
        assert!(text.contains(r#"wsbeat_text_heartbeats_total{kind="injected",side="client"} 0"#));
        assert!(
            !text.contains(r#"kind="answered",side="upstream""#),
            "impossible pair exposed"
        );
    }

    #[test]
    fn close_labels_are_indexed_correctly() {
        let m = Metrics::new().unwrap();
        m.close(Initiator::Upstream, CloseReason::IoError);
        let text = scrape(&m);
        assert!(text.contains(r#"wsbeat_closes_total{initiator="upstream",reason="io_error"} 1"#));
        assert!(text.contains(r#"wsbeat_closes_total{initiator="client",reason="io_error"} 0"#));
    }
}
