//! wsbeat: a transparent WebSocket reverse proxy that pings and times out each side on its own.
//!
//! # Layout
//!
//! A connection flows `accept → http upgrade → upstream connect → relay → close → outcome`:
//!
//! - [`config`]: clap `Cli` → validated [`config::Config`], both in groups by role (the relay
//!   takes [`config::RelayConfig`] whole); every error reported at once.
//! - [`server`]: accept loop, per-connection spawn, and the drain in three phases;
//!   `run(listener, …, drain_requests)`.
//! - [`proxy`]: the HTTP side, one module per job: dispatch, upgrade validation, the upgrade,
//!   the session's lifecycle, the upstream connector, plain HTTP forwarding and header rules,
//!   the per-connection context and [`proxy::ProxyError`].
//! - [`relay`]: the one place that owns a session's two legs: relays frames, answers pings,
//!   drives both heartbeats, handles closes and reports the outcome.
//! - [`frame`]: RFC 6455 frame headers and masking, done in place on the relay's buffers.
//! - [`heartbeat`]: pure per-side ping/timeout state machine (no I/O, time passed in).
//! - [`text_heartbeat`]: application heartbeats in text messages (browser `ping`s answered,
//!   keep-alives injected): exact-match rules, presets and their timers; pure.
//! - [`message`]: pure per-direction message boundaries, sequence rules and streaming UTF-8
//!   check of text messages.
//! - [`metrics`]: owned Prometheus registry and per-connection metric handles; records
//!   [`outcome`] values, imports no proxy type.
//! - [`net`]: socket options, dialing, and [`net::Conn`], the one stream type the relay runs on.
//! - [`outcome`]: the vocabulary of how things end (result, initiator, reason, connect error),
//!   beside [`Side`] and below every layer that speaks it.
//! - [`body`]: the HTTP body type and small text responses, for both listeners.
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz`, `/connections` and `POST /drain` (loopback
//!   only) on a separate listener; `admin::client` is `wsbeat drain`.
//! - [`sessions`]: the live-session table behind `/connections`.
//! - [`shutdown`]: SIGTERM/SIGINT handlers (installed before any port is bound), drain requests,
//!   and the drain's phases: one `DrainTrigger` for the server, a `DrainWatcher` for every
//!   session and connection.
//! - [`tls`]: PEM → rustls configs for both legs, the swappable served certificate and its
//!   reloader.
//! - [`workers`]: relay threads, one event loop each; the accept loop spreads connections.
//! - [`demo`]: a tiny legacy-style echo upstream that never answers pings (`--demo`, tests).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod admin;
pub mod body;
pub mod config;
pub mod demo;
pub mod frame;
pub mod heartbeat;
pub mod message;
pub mod metrics;
pub mod net;
pub mod outcome;
pub mod proxy;
pub mod relay;
pub mod server;
pub mod sessions;
pub mod shutdown;
pub mod text_heartbeat;
pub mod tls;
pub mod workers;

/// The two legs of a session: whoever connected to us, and the legacy backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The peer that connected to wsbeat.
    Client,
    /// The backend wsbeat connected to.
    Upstream,
}

impl Side {
    /// Both sides, in label order.
    pub const ALL: [Side; 2] = [Side::Client, Side::Upstream];

    /// Metric label and log field value.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
        }
    }

    /// The other leg.
    pub fn other(self) -> Side {
        match self {
            Side::Client => Side::Upstream,
            Side::Upstream => Side::Client,
        }
    }

    /// Index for per-side arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}
