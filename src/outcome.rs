//! The vocabulary of how things end: a connection attempt's result, who ended a session and why,
//! and why connecting to the upstream failed.
//!
//! Owns: small `Copy` enums with `as_str()` for labels and log fields, and the session's
//! [`Outcome`]. Does not own: recording them (`metrics` counts these values; it knows nothing of
//! proxies or relays) or deciding them (`relay` decides a session's outcome, `proxy` a request's
//! result). It sits beside [`Side`] below every layer that speaks it, so no layer has to import
//! another's mechanism to name a result (pingora keeps `ErrorType`/`ErrorSource` the same way).

use crate::Side;
use crate::frame;

/// How a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Who started the end.
    pub initiator: Initiator,
    /// Why.
    pub reason: CloseReason,
    /// The close code the initiator sent, when it sent one.
    pub code: Option<u16>,
    /// Human-readable detail for the log line.
    pub detail: &'static str,
}

/// How a connection attempt ended, for `connections_total{result}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionResult {
    /// Both legs upgraded; a session ran.
    Upgraded,
    /// The upstream answered the upgrade with something other than 101.
    RejectedByUpstream,
    /// The upstream could not be reached (refused, reset, DNS, bad handshake).
    UpstreamUnreachable,
    /// Connecting or handshaking with the upstream took longer than `--connect-timeout`.
    UpstreamTimeout,
    /// The client's upgrade request was malformed.
    BadRequest,
    /// Refused with 503 at `--max-connections` (plain HTTP requests included).
    OverLimit,
    /// The upgrade's `Origin` is not in `--allowed-origins`; refused with 403 before dialling.
    ForbiddenOrigin,
    /// wsbeat itself ran out of a resource (file descriptors, buffers) while connecting to
    /// the upstream: its own fault, never the upstream's.
    LocalExhaustion,
}

impl ConnectionResult {
    /// Every value, in label order.
    pub const ALL: [ConnectionResult; 8] = [
        ConnectionResult::Upgraded,
        ConnectionResult::RejectedByUpstream,
        ConnectionResult::UpstreamUnreachable,
        ConnectionResult::UpstreamTimeout,
        ConnectionResult::BadRequest,
        ConnectionResult::OverLimit,
        ConnectionResult::ForbiddenOrigin,
        ConnectionResult::LocalExhaustion,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionResult::Upgraded => "upgraded",
            ConnectionResult::RejectedByUpstream => "rejected_by_upstream",
            ConnectionResult::UpstreamUnreachable => "upstream_unreachable",
            ConnectionResult::UpstreamTimeout => "upstream_timeout",
            ConnectionResult::BadRequest => "bad_request",
            ConnectionResult::OverLimit => "over_limit",
            ConnectionResult::ForbiddenOrigin => "forbidden_origin",
            ConnectionResult::LocalExhaustion => "local_exhaustion",
        }
    }
}

/// Who started the end of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Initiator {
    /// The client sent a close frame or dropped its connection.
    Client,
    /// The upstream sent a close frame or dropped its connection.
    Upstream,
    /// wsbeat ended it: a peer timed out, broke the protocol, or the proxy shut down.
    Proxy,
}

impl Initiator {
    /// Every value, in label order.
    pub const ALL: [Initiator; 3] = [Initiator::Client, Initiator::Upstream, Initiator::Proxy];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Initiator::Client => "client",
            Initiator::Upstream => "upstream",
            Initiator::Proxy => "proxy",
        }
    }
}

impl From<Side> for Initiator {
    fn from(side: Side) -> Self {
        match side {
            Side::Client => Initiator::Client,
            Side::Upstream => Initiator::Upstream,
        }
    }
}

/// Why a session ended, in a small fixed set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Close code 1000.
    Normal,
    /// Close code 1001.
    GoingAway,
    /// Close code 1002, or wsbeat saw a protocol violation.
    ProtocolError,
    /// Close code 1009, or a frame exceeded `--max-frame-size`.
    TooBig,
    /// A peer stayed silent past its pong timeout.
    Timeout,
    /// A TCP connection ended without a close frame (reset, EOF, write error).
    IoError,
    /// The proxy is shutting down.
    Shutdown,
    /// Any other close code (application codes 4000-4999 included).
    Other,
    /// The 101 was sent, but one leg's connection failed before it could be taken over for the
    /// session (the initiator says which leg).
    UpgradeFailed,
}

impl CloseReason {
    /// Every value, in label order.
    pub const ALL: [CloseReason; 9] = [
        CloseReason::Normal,
        CloseReason::GoingAway,
        CloseReason::ProtocolError,
        CloseReason::TooBig,
        CloseReason::Timeout,
        CloseReason::IoError,
        CloseReason::Shutdown,
        CloseReason::Other,
        CloseReason::UpgradeFailed,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Normal => "normal",
            CloseReason::GoingAway => "going_away",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::TooBig => "too_big",
            CloseReason::Timeout => "timeout",
            CloseReason::IoError => "io_error",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Other => "other",
            CloseReason::UpgradeFailed => "upgrade_failed",
        }
    }

    /// The reason a peer's close code stands for (`None`: a close frame without a code).
    pub fn from_code(code: Option<u16>) -> CloseReason {
        match code {
            None | Some(frame::close_code::NORMAL) => CloseReason::Normal,
            Some(frame::close_code::GOING_AWAY) => CloseReason::GoingAway,
            Some(frame::close_code::PROTOCOL_ERROR) => CloseReason::ProtocolError,
            Some(frame::close_code::TOO_BIG) => CloseReason::TooBig,
            Some(_) => CloseReason::Other,
        }
    }
}

/// Why connecting to the upstream failed, for `upstream_connect_errors_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectError {
    /// Name resolution failed or returned nothing.
    Dns,
    /// TCP connection refused.
    Refused,
    /// Connect or handshake timed out.
    Timeout,
    /// The upstream answered, but not with a usable WebSocket handshake.
    Handshake,
    /// The TLS handshake with a `wss://`/`https://` upstream failed (certificate, protocol).
    Tls,
    /// Any other I/O error.
    Io,
    /// wsbeat ran out of file descriptors or memory for the socket (EMFILE, ENFILE, ENOBUFS,
    /// ENOMEM): not the upstream's fault.
    LocalExhaustion,
}

impl ConnectError {
    /// Every value, in label order.
    pub const ALL: [ConnectError; 7] = [
        ConnectError::Dns,
        ConnectError::Refused,
        ConnectError::Timeout,
        ConnectError::Handshake,
        ConnectError::Tls,
        ConnectError::Io,
        ConnectError::LocalExhaustion,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectError::Dns => "dns",
            ConnectError::Refused => "refused",
            ConnectError::Timeout => "timeout",
            ConnectError::Handshake => "handshake",
            ConnectError::Tls => "tls",
            ConnectError::Io => "io",
            ConnectError::LocalExhaustion => "local_exhaustion",
        }
    }
}
