//! What is known about one client connection, shared by its requests and its session.
//!
//! A WebSocket session outlives the HTTP task that upgraded it, so the session keeps its own
//! reference to the context: whatever the context holds (the connection-limit permit above all)
//! is released only when both the HTTP connection and the session are gone.

use std::net::SocketAddr;

use tokio::sync::OwnedSemaphorePermit;

/// The scheme the client used to reach wsbeat, for `X-Forwarded-Proto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Plain TCP.
    Http,
    /// TLS terminated by wsbeat.
    Https,
}

impl Scheme {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Whether a connection got a slot under `--max-connections`.
#[derive(Debug)]
pub enum Admission {
    /// No limit applies (tests that build a context by hand).
    Unlimited,
    /// Holds one slot; dropping it gives the slot back.
    Admitted(OwnedSemaphorePermit),
    /// Every slot was taken: each request on this connection is answered 503. Holds one of the
    /// slots for connections being refused.
    OverLimit(OwnedSemaphorePermit),
}

/// One client connection, as the accept path saw it.
#[derive(Debug)]
pub struct ConnContext {
    peer: SocketAddr,
    scheme: Scheme,
    /// Held for as long as the connection or its session lives.
    admission: Admission,
}

impl ConnContext {
    /// A connection from `peer` over `scheme`, holding `admission` for as long as the
    /// connection or its session lives.
    pub fn new(peer: SocketAddr, scheme: Scheme, admission: Admission) -> Self {
        ConnContext {
            peer,
            scheme,
            admission,
        }
    }

    /// True when the connection arrived with every slot taken.
    pub fn is_over_limit(&self) -> bool {
        matches!(self.admission, Admission::OverLimit(_))
    }

    /// The client's address as wsbeat's socket saw it.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The scheme the client used.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }
}
