//! Text heartbeats: the application-level pings that web apps send as ordinary text messages,
//! because JavaScript cannot send a WebSocket ping frame.
//!
//! Owns: the settings ([`TextHeartbeatConfig`]), the well-known [`Preset`]s, the exact-match
//! test a relayed message goes through ([`TextMatcher`]), and the timer of each injected
//! message ([`TextTimer`], pure like [`crate::heartbeat`]: no I/O, time passed in). Does not own:
//! finding message boundaries or writing frames (the relay does both).
//!
//! The model is an exact match on a whole message: only a complete, unfragmented,
//! uncompressed text frame of at most 125 bytes can be a candidate, and it matches when its
//! payload equals a configured text byte for byte. Everything else is relayed untouched. A
//! compressed message (permessage-deflate, RSV1 set) cannot be recognised, and is relayed.
//!
//! # Presets and their sources
//!
//! - `graphql-transport-ws`: the Ping and Pong messages of enisdenjo/graphql-ws `PROTOCOL.md`:
//!   `{"type":"ping"}` must be answered "as soon as possible" with `{"type":"pong"}`, and a Pong
//!   "may even be sent unsolicited as an unidirectional heartbeat", so it is also the
//!   keep-alive message. A ping that carries the optional `payload` does not match exactly and
//!   goes to the upstream, which answers it.
//! - `ping-pong`: the heartCheck pattern of browser apps (zimv/websocket-heartbeat-js
//!   `lib/index.js` and its many copies): the client sends `ping` after a quiet spell and
//!   reconnects when nothing comes back in time; the answer is `pong`.
//!
//! Not supported, because they do not fit an exact match of a whole message:
//! - Rails ActionCable's pings (rails/rails `actioncable/lib/action_cable/connection/base.rb`,
//!   `beat`) go from the server to the client, every 3 s, as
//!   `{"type":"ping","message":<Unix time>}`: different every time, so no fixed text matches
//!   them, the client never pings, and the Rails server already sends them itself.
//! - STOMP's heart-beats (STOMP 1.2 specification, "Heart-beating") are an end-of-line inside
//!   the STOMP byte stream, one-way, at rates negotiated by the `heart-beat` header of CONNECT
//!   and CONNECTED, which wsbeat does not read. An EOL may only go between STOMP frames, and a
//!   STOMP frame may span several WebSocket messages (stomp-js/stompjs splits large frames), so
//!   a WebSocket message boundary is not a safe place for one.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

/// Longest text that can be a heartbeat: the candidates are frames with a 7-bit length, the
/// same limit as a control frame's payload, so one check on the header rules out everything
/// longer without looking at the payload.
pub const MAX_TEXT_LEN: usize = 125;

/// What wsbeat did with a text heartbeat: the `kind` label of `wsbeat_text_heartbeats_total`
/// and the `kind` of the last one in `/connections`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextKind {
    /// A client's text ping answered by wsbeat.
    Answered,
    /// A keep-alive or text ping sent by wsbeat on its own.
    Injected,
    /// An upstream's answer to a text ping, not relayed to the client.
    Absorbed,
}

impl TextKind {
    /// Every kind, in label order.
    pub const ALL: [TextKind; 3] = [TextKind::Answered, TextKind::Injected, TextKind::Absorbed];

    /// Metric label and JSON value.
    pub fn as_str(self) -> &'static str {
        match self {
            TextKind::Answered => "answered",
            TextKind::Injected => "injected",
            TextKind::Absorbed => "absorbed",
        }
    }

    /// Index for per-kind arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A message wsbeat sends on its own, every `interval` of silence toward that leg.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Periodic {
    /// The text message.
    pub text: Bytes,
    /// Silence after which it is sent.
    pub interval: Duration,
}

/// Text-heartbeat settings of every session. `Default` is "all off".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TextHeartbeatConfig {
    /// Client messages that wsbeat answers itself (`--client-text-ping`).
    pub client_pings: Vec<Bytes>,
    /// The answer to them (`--client-text-pong`); set whenever `client_pings` is not empty.
    pub client_pong: Bytes,
    /// Also relay an answered ping to the upstream (`--forward-text-pings`).
    pub forward_pings: bool,
    /// Sent to the client after this much silence toward it (`--client-keepalive-*`).
    pub client_keepalive: Option<Periodic>,
    /// Sent to the upstream after this much silence toward it (`--upstream-text-ping*`).
    pub upstream_ping: Option<Periodic>,
    /// An upstream message that answers our ping and is not relayed (`--upstream-text-pong`).
    pub upstream_pong: Option<Bytes>,
}

impl TextHeartbeatConfig {
    /// Whether anything is switched on; when not, the relay skips every text-heartbeat check.
    pub fn is_active(&self) -> bool {
        !self.client_pings.is_empty()
            || self.client_keepalive.is_some()
            || self.upstream_ping.is_some()
            || self.upstream_pong.is_some()
    }

    /// The texts that a client message is matched against, if any.
    pub fn client_matcher(&self) -> Option<TextMatcher> {
        TextMatcher::new(&self.client_pings)
    }

    /// The texts that an upstream message is matched against, if any.
    pub fn upstream_matcher(&self) -> Option<TextMatcher> {
        TextMatcher::new(self.upstream_pong.as_slice())
    }

    /// The settings on one line for the start-up log, or `None` when all is off.
    pub fn log_summary(&self) -> Option<String> {
        if !self.is_active() {
            return None;
        }
        let text = |b: &Bytes| format!("{:?}", String::from_utf8_lossy(b));
        let periodic = |p: &Option<Periodic>| {
            p.as_ref().map_or("off".to_owned(), |p| {
                format!("{} every {:?}", text(&p.text), p.interval)
            })
        };
        let pings: Vec<String> = self.client_pings.iter().map(text).collect();
        Some(format!(
            "client_text_pings=[{}] client_text_pong={} forward_text_pings={} \
             client_keepalive={} upstream_text_ping={} upstream_text_pong={}",
            pings.join(","),
            text(&self.client_pong),
            self.forward_pings,
            periodic(&self.client_keepalive),
            periodic(&self.upstream_ping),
            self.upstream_pong.as_ref().map_or("off".to_owned(), text),
        ))
    }

    /// The shortest interval of the injected messages, for the relay's timer grid.
    pub fn shortest_interval(&self) -> Option<Duration> {
        [&self.client_keepalive, &self.upstream_ping]
            .into_iter()
            .flatten()
            .map(|p| p.interval)
            .min()
    }
}

/// Well-known application heartbeats (`--text-heartbeat`); see the module docs for sources.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// GraphQL over WebSocket (`graphql-transport-ws`): `{"type":"ping"}` / `{"type":"pong"}`.
    #[value(name = "graphql-transport-ws")]
    GraphqlTransportWs,
    /// The heartCheck pattern: `ping` / `pong`.
    #[value(name = "ping-pong")]
    PingPong,
}

/// The texts a preset sets; intervals stay the operator's choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PresetTexts {
    /// What the client sends and the upstream expects as a ping.
    pub ping: &'static str,
    /// The answer to it.
    pub pong: &'static str,
    /// What wsbeat sends a quiet client (`--client-keepalive-interval`).
    pub keepalive: &'static str,
}

impl Preset {
    /// Flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            Preset::GraphqlTransportWs => "graphql-transport-ws",
            Preset::PingPong => "ping-pong",
        }
    }

    /// The texts of this preset.
    pub fn texts(self) -> PresetTexts {
        match self {
            Preset::GraphqlTransportWs => PresetTexts {
                ping: r#"{"type":"ping"}"#,
                pong: r#"{"type":"pong"}"#,
                // PROTOCOL.md: a Pong "may even be sent unsolicited as an unidirectional
                // heartbeat"; an unsolicited Ping would demand an answer from the client.
                keepalive: r#"{"type":"pong"}"#,
            },
            Preset::PingPong => PresetTexts {
                ping: "ping",
                pong: "pong",
                // heartCheck clients reset their watchdog on any message.
                keepalive: "pong",
            },
        }
    }
}

/// Exact match of a message payload against a few texts. A bit set of their lengths rejects
/// almost every message with one test, so a session with text heartbeats relays ordinary
/// traffic at the same speed.
#[derive(Clone, Debug)]
pub struct TextMatcher {
    /// Bit `n` is set when some text is `n` bytes long (`n` ≤ [`MAX_TEXT_LEN`] < 128).
    lengths: u128,
    texts: Vec<Bytes>,
}

impl TextMatcher {
    /// A matcher for `texts`, or `None` when there are none. Texts longer than
    /// [`MAX_TEXT_LEN`] could never match; the config refuses them.
    pub fn new(texts: &[Bytes]) -> Option<TextMatcher> {
        let texts: Vec<Bytes> = texts
            .iter()
            .filter(|t| t.len() <= MAX_TEXT_LEN)
            .cloned()
            .collect();
        if texts.is_empty() {
            return None;
        }
        let lengths = texts.iter().fold(0u128, |acc, t| acc | 1u128 << t.len());
        Some(TextMatcher { lengths, texts })
    }

    /// Whether a payload of `len` bytes could match: the only test most messages see.
    #[inline(always)]
    pub fn may_match(&self, len: usize) -> bool {
        len <= MAX_TEXT_LEN && self.lengths & (1u128 << len) != 0
    }

    /// Whether `payload` equals one of the texts.
    pub fn matches(&self, payload: &[u8]) -> bool {
        self.may_match(payload.len()) && self.texts.iter().any(|t| t.as_ref() == payload)
    }
}

/// When an injected message (keep-alive or upstream text ping) is due: `interval` after the
/// last message sent toward that leg, whoever sent it.
#[derive(Clone, Copy, Debug)]
pub struct TextTimer {
    interval: Duration,
    /// The last time a message went toward the leg (relayed, or ours).
    last_sent: Instant,
}

impl TextTimer {
    /// Starts counting the silence at `now`.
    pub fn new(interval: Duration, now: Instant) -> TextTimer {
        TextTimer {
            interval,
            last_sent: now,
        }
    }

    /// A message went toward the leg at `now`. The relay reports this once per wake-up, with
    /// the clock reading it takes anyway, so a busy leg costs no extra clock reads.
    pub fn on_sent(&mut self, now: Instant) {
        self.last_sent = self.last_sent.max(now);
    }

    /// When [`TextTimer::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Instant {
        self.last_sent + self.interval
    }

    /// True when the leg has been silent for the interval at `now`: the driver sends the
    /// message, and the silence is counted again from `now`.
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        if now < self.poll_timeout() {
            return false;
        }
        self.last_sent = now;
        true
    }
}

/// Most upstream answers wsbeat is owed at once. An upstream that answers text pings does so
/// within an interval or two, so a few cover every late answer. Without a cap, an upstream
/// that never answers would be owed one more answer per ping for the whole session, and every
/// message of its own equal to the pong text would be absorbed from then on.
pub const MAX_OWED_ANSWERS: u8 = 4;

/// Upstream answers to text pings that wsbeat may absorb: one per text ping it sent or
/// forwarded, never more than [`MAX_OWED_ANSWERS`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwedAnswers(u8);

impl OwedAnswers {
    /// A text ping went to the upstream: one more answer is owed, up to the cap.
    pub fn on_ping_sent(&mut self) {
        self.0 = (self.0 + 1).min(MAX_OWED_ANSWERS);
    }

    /// Whether an answer is owed, so that an upstream message equal to the pong text is
    /// absorbed rather than relayed.
    pub fn any(self) -> bool {
        self.0 > 0
    }

    /// An owed answer arrived (and was absorbed).
    pub fn on_answer(&mut self) {
        self.0 = self.0.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn texts(list: &[&str]) -> Vec<Bytes> {
        list.iter()
            .map(|t| Bytes::copy_from_slice(t.as_bytes()))
            .collect()
    }

    #[test]
    fn matcher_needs_the_whole_text_byte_for_byte() {
        let m = TextMatcher::new(&texts(&["ping", r#"{"type":"ping"}"#])).expect("texts");
        assert!(m.matches(b"ping"));
        assert!(m.matches(br#"{"type":"ping"}"#));
        for other in [
            &b"PING"[..],
            b"ping ",
            b"pin",
            b"pingping",
            b"",
            br#"{"type": "ping"}"#,
            br#"{"type":"ping","payload":{}}"#,
        ] {
            assert!(!m.matches(other), "{:?}", String::from_utf8_lossy(other));
        }
    }

    #[test]
    fn matcher_rejects_by_length_first() {
        let m = TextMatcher::new(&texts(&["ping"])).expect("texts");
        assert!(m.may_match(4));
        for len in [0, 3, 5, 64, 125, 126, 1 << 20] {
            assert!(!m.may_match(len), "len {len}");
        }
    }

    #[test]
    fn no_texts_means_no_matcher() {
        assert!(TextMatcher::new(&[]).is_none());
        let too_long = vec![Bytes::from(vec![b'x'; MAX_TEXT_LEN + 1])];
        assert!(TextMatcher::new(&too_long).is_none());
        let longest = vec![Bytes::from(vec![b'x'; MAX_TEXT_LEN])];
        let m = TextMatcher::new(&longest).expect("125 bytes fit");
        assert!(m.matches(&[b'x'; MAX_TEXT_LEN]));
    }

    #[test]
    fn timer_fires_after_an_interval_of_silence_only() {
        let t0 = Instant::now();
        let mut t = TextTimer::new(100 * MS, t0);
        assert_eq!(t.poll_timeout(), t0 + 100 * MS);
        assert!(!t.handle_timeout(t0 + 99 * MS));
        assert!(t.handle_timeout(t0 + 100 * MS));
        // Our own message counts as sent: the next one is an interval later.
        assert_eq!(t.poll_timeout(), t0 + 200 * MS);
    }

    #[test]
    fn timer_is_postponed_by_traffic_toward_the_leg() {
        let t0 = Instant::now();
        let mut t = TextTimer::new(100 * MS, t0);
        t.on_sent(t0 + 60 * MS);
        assert!(!t.handle_timeout(t0 + 100 * MS), "traffic 40 ms ago");
        assert_eq!(t.poll_timeout(), t0 + 160 * MS);
        // A late report of older traffic never moves the deadline back.
        t.on_sent(t0 + 10 * MS);
        assert_eq!(t.poll_timeout(), t0 + 160 * MS);
        assert!(t.handle_timeout(t0 + 170 * MS));
    }

    #[test]
    fn owed_answers_are_capped_for_an_upstream_that_never_answers() {
        let mut owed = OwedAnswers::default();
        assert!(!owed.any());
        for _ in 0..10_000 {
            owed.on_ping_sent();
        }
        // However many pings went unanswered, only the cap's worth of answers is absorbed.
        for _ in 0..MAX_OWED_ANSWERS {
            assert!(owed.any());
            owed.on_answer();
        }
        assert!(!owed.any(), "the next pong text is relayed");
        owed.on_answer();
        assert_eq!(owed, OwedAnswers::default(), "never below zero");
        owed.on_ping_sent();
        assert!(owed.any(), "a new ping is owed its answer again");
    }

    #[test]
    fn presets_set_the_documented_texts() {
        let g = Preset::GraphqlTransportWs.texts();
        assert_eq!(
            (g.ping, g.pong, g.keepalive),
            (
                r#"{"type":"ping"}"#,
                r#"{"type":"pong"}"#,
                r#"{"type":"pong"}"#
            )
        );
        let p = Preset::PingPong.texts();
        assert_eq!((p.ping, p.pong, p.keepalive), ("ping", "pong", "pong"));
        for preset in [Preset::GraphqlTransportWs, Preset::PingPong] {
            let t = preset.texts();
            for text in [t.ping, t.pong, t.keepalive] {
                assert!(text.len() <= MAX_TEXT_LEN);
            }
        }
    }

    #[test]
    fn config_is_active_only_with_something_switched_on() {
        assert!(!TextHeartbeatConfig::default().is_active());
        let cfg = TextHeartbeatConfig {
            upstream_pong: Some(Bytes::from_static(b"pong")),
            ..TextHeartbeatConfig::default()
        };
        assert!(cfg.is_active());
        assert!(cfg.client_matcher().is_none());
        assert!(cfg.upstream_matcher().is_some());
    }
}
