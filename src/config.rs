//! Command line and environment → a validated [`Config`].
//!
//! This module owns every setting wsbeat has: the clap [`Cli`] (each flag can also come from a
//! `WSBEAT_*` environment variable), the syntax of durations, byte sizes and the upstream URL,
//! and the rules that relate settings to each other. Flags and settings come in the same groups,
//! one per role (listeners, upstream, clients, sessions, process, demo, TLS), so `--help` reads in
//! sections and each part of the proxy takes its group as it is: the relay gets [`RelayConfig`]
//! whole. Submodules: `cli` (the flags), `units` (durations and byte sizes), `upstream`
//! ([`Upstream`] URLs), `tls` (checking the TLS files) and `problems` (parsing single values); this file keeps the defaults, the
//! settings groups and the validation that ties them together. [`Config::try_from`] reports
//! every problem at once, so an operator fixes a deployment in one round trip instead of one
//! restart per error. That is why durations, sizes and addresses reach [`Cli`] as plain strings:
//! a clap `value_parser` would stop at the first bad value.
//!
//! It does not bind sockets or install logging, and reads nothing but its arguments and the
//! TLS files they name: `main` does the rest. It imports nothing from the layers that use it (server, handshake, relay).

mod cli;
mod problems;
#[cfg(test)]
mod tests;
mod text;
mod tls;
mod units;
mod upstream;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::heartbeat::HeartbeatConfig;
use crate::net::Cidr;
use crate::text_heartbeat::TextHeartbeatConfig;
use problems::Problems;
use units::{GIB, KIB, MIB, format_bytes, format_duration};

pub use cli::{
    Cli, ClientArgs, Command, DemoArgs, DrainArgs, ListenArgs, LogFormat, ProcessArgs, RelayArgs,
    ShutdownArgs, TlsArgs, UpstreamArgs, UpstreamMasking,
};
pub use text::TextHeartbeatArgs;
pub use tls::TlsConfig;
pub use units::MAX_DURATION;
pub use upstream::Upstream;

/// Default `--listen`: every interface, on the usual unprivileged HTTP alternative port.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// Default `--admin-listen`: loopback only, because `/metrics` and `/connections` describe
/// traffic and should not be reachable by clients unless the operator opts in.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// Default `--demo-listen`: loopback on a free port; `main` points the upstream at it.
pub const DEFAULT_DEMO_LISTEN: &str = "127.0.0.1:0";

/// Ping each side this often. AWS ALB and nginx (`proxy_read_timeout`) both drop a connection
/// after 60 s without traffic; three pings per 60 s window keep a quiet session open even when
/// one ping is delayed or lost.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(20);
/// After a ping, a client silent for this long is dead. With [`DEFAULT_PING_INTERVAL`] a client
/// that vanishes right after its last frame is dropped within 20 s + 20 s = 40 s, inside our
/// 45 s detection budget.
pub const DEFAULT_CLIENT_PONG_TIMEOUT: Duration = Duration::from_secs(20);
/// Before an upstream has answered one of our pings, no timeout: legacy upstreams may never
/// answer pings, so their silence proves nothing (`--upstream-pong-timeout auto`). Dead upstream
/// hosts are found by [`DEFAULT_UPSTREAM_TCP_USER_TIMEOUT`] instead.
pub const DEFAULT_UPSTREAM_PONG_TIMEOUT: Duration = Duration::ZERO;
/// Once an upstream has answered a ping, it is held to this, as clients are to theirs: a
/// stopped process or a stuck event loop keeps its TCP connection up (the kernel still ACKs),
/// and only the missing pongs show it. 20 s + 20 s = 40 s, as for a dead client.
pub const DEFAULT_UPSTREAM_PONG_TIMEOUT_AFTER_PONG: Duration = Duration::from_secs(20);
/// `TCP_USER_TIMEOUT` on upstream sockets. Our pings put bytes on the wire every 20 s; if the
/// upstream host's kernel has not acknowledged them after 30 s, the host or the path is gone,
/// whether or not the application answers pings. Worst case detection: 20 s + 30 s = 50 s.
pub const DEFAULT_UPSTREAM_TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);
/// Upstream TCP connect plus WebSocket handshake. A healthy upstream in the same network answers
/// in milliseconds; after 5 s the client is better served by a fast 504 than by its own timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A client must send its whole HTTP upgrade request within this. Requests are a few hundred
/// bytes, so 10 s is generous for slow mobile links while bounding slowloris-style idlers.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing session waits for the close handshake. It takes one round trip; 5 s keeps
/// a drain well inside Kubernetes' default 30 s termination grace period.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time between a drain request and closing the listener, with `/readyz` at 503 meanwhile.
/// Kubernetes endpoint controllers and cloud load balancers take a few seconds to stop sending
/// new connections to a Pod that turned unready; 5 s covers the usual propagation.
pub const DEFAULT_DRAIN_DELAY: Duration = Duration::from_secs(5);
/// Time close handshakes and HTTP requests get after the listener closed. Delay plus grace is
/// Kubernetes' default 30 s termination grace period, so the deadline comes before SIGKILL.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(25);
/// Largest frame accepted, 16 MiB: tungstenite's default, so clients that work against a
/// tungstenite-based server directly keep working through wsbeat.
pub const DEFAULT_MAX_FRAME_SIZE_BYTES: u64 = 16 * MIB;

/// Smallest `--max-frame-size`: 125 bytes is the largest control-frame payload (RFC 6455 5.5),
/// so any lower limit would refuse legal Close and Ping frames.
pub const MIN_FRAME_SIZE_BYTES: u64 = 125;
/// Most relay threads accepted: far beyond any core count this runs on, low enough that a typo
/// (`--worker-threads 4000`) is caught instead of starting thousands of threads.
pub const MAX_WORKER_THREADS: usize = 256;
/// Largest `--max-frame-size`: a frame this big can already cost a gigabyte of memory per
/// session; anything above is almost certainly a unit mistake.
pub const MAX_FRAME_SIZE_BYTES: u64 = GIB;

/// Default `--listen-backlog`. The kernel's old default of 128 overflowed under bursts of new
/// connections (a reconnect storm after a deploy); 1024 absorbs those, and the kernel caps it
/// at `net.core.somaxconn` anyway (4096 on current kernels).
pub const DEFAULT_LISTEN_BACKLOG: u32 = 1024;
/// Default `--admin-header-timeout`: a scrape sends its request at once; a connection silent
/// for 5 s is not a scraper and must not hold a descriptor.
pub const DEFAULT_ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `--admin-max-connections`: a few scrapers and probes at once. Small, so the admin
/// port can never take the descriptors the data plane needs (kept in `net::RESERVED_FDS`).
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 16;
/// Default `--max-request-header-size`: 16 KiB, as Envoy's and above nginx's 8 KiB default
/// buffer; real upgrade requests with cookies take 1-4 KiB.
pub const DEFAULT_MAX_REQUEST_HEADER_BYTES: u64 = 16 * KIB;
/// Smallest `--max-request-header-size`: hyper's own minimum read buffer.
pub const MIN_REQUEST_HEADER_BYTES: u64 = 8 * KIB;
/// Largest `--max-request-header-size`: beyond 1 MiB a request head is an attack, not a client.
pub const MAX_REQUEST_HEADER_BYTES: u64 = MIB;

/// Most admin connections at once: the cap exists to be small.
pub const MAX_ADMIN_CONNECTIONS: usize = 1024;

/// Shortest ping interval or pong timeout other than 0 (off). A few milliseconds would flood
/// both peers with pings and keep the relay threads busy answering them, and no network path
/// needs it; 10 ms still leaves tests room to run heartbeats in tens of milliseconds.
pub const MIN_HEARTBEAT_PERIOD: Duration = Duration::from_millis(10);

/// Validated settings, in the same groups as the flags. Only [`Config::try_from`] builds one
/// from user input, so every value here has passed the checks described on [`Cli`].
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Listener addresses.
    pub listen: ListenConfig,
    /// The backend and how to reach it.
    pub upstream: UpstreamConfig,
    /// What is asked of connecting clients.
    pub clients: ClientConfig,
    /// Settings of each upgraded session, handed to the relay as they are.
    pub relay: std::sync::Arc<RelayConfig>,
    /// How a drain proceeds.
    pub shutdown: ShutdownConfig,
    /// Threads and logging.
    pub process: ProcessConfig,
    /// Some(address for the demo upstream) when --demo.
    pub demo: Option<SocketAddr>,
    /// TLS on `--listen` and toward the upstream.
    pub tls: TlsConfig,
}

/// Where wsbeat listens, and the bounds of its listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenConfig {
    /// Where clients connect (`--listen`).
    pub client: SocketAddr,
    /// Where /metrics, /healthz and /readyz are served (`--admin-listen`).
    pub admin: SocketAddr,
    /// Kernel queue of not yet accepted connections on `--listen` (`--listen-backlog`).
    pub backlog: u32,
    /// Time an admin connection has to send its request head (`--admin-header-timeout`).
    pub admin_header_timeout: Duration,
    /// Admin connections served at once (`--admin-max-connections`).
    pub admin_max_connections: usize,
}

/// The backend every session is proxied to, and how connections to it are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// Where to connect, and the base path of every request (`--upstream`).
    pub url: Upstream,
    /// Forward the client's Host header instead of [`Upstream::authority`].
    pub preserve_host: bool,
    /// Upstream TCP connect plus handshake.
    pub connect_timeout: Duration,
    /// `TCP_USER_TIMEOUT` for upstream sockets; `Duration::ZERO` leaves the kernel default.
    pub tcp_user_timeout: Duration,
}

/// What connecting clients must do before they get a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Time a client has to send its HTTP request.
    pub handshake_timeout: Duration,
    /// Client connections (and the sessions they become) at once (`--max-connections`).
    pub max_connections: usize,
    /// Largest request head, in bytes (`--max-request-header-size`).
    pub max_request_header_size: usize,
    /// Peers whose forwarding headers are believed (`--trusted-proxies`); empty: none.
    pub trusted_proxies: Vec<Cidr>,
    /// Origins allowed to upgrade, lowercase; `None` for any (`--allowed-origins *`).
    pub allowed_origins: Option<Vec<String>>,
}

/// Settings of each session, the same for all of them: what the relay needs besides its two
/// connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// Heartbeat of the client leg.
    pub client: HeartbeatConfig,
    /// Heartbeat of the upstream leg.
    pub upstream: HeartbeatConfig,
    /// How long a closing session waits for the close handshake before dropping both legs.
    pub close_timeout: Duration,
    /// Largest data frame payload accepted from either side, in bytes.
    pub max_frame_size: u64,
    /// Whether client frames get a fresh masking key toward the upstream or keep the client's.
    pub upstream_masking: UpstreamMasking,
    /// Payload from which a frame relayed unchanged between two plain TCP legs is moved with
    /// `splice(2)` instead of through user space; 0 turns splicing off.
    pub splice_min_payload: u64,
    /// Application heartbeats in text messages (all off by default), shared by every session.
    pub text: Arc<TextHeartbeatConfig>,
}

/// How a drain proceeds, once asked for (SIGTERM, SIGINT, POST /drain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownConfig {
    /// Time spent not ready but still accepting (`--drain-delay`); zero skips that phase.
    pub drain_delay: Duration,
    /// Time sessions and HTTP requests get to finish after the listener closed
    /// (`--shutdown-grace`).
    pub grace: Duration,
}

/// How the process runs and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessConfig {
    /// Relay threads (at least 1; `--worker-threads 0` is resolved to the CPU count).
    pub worker_threads: usize,
    /// Log output format.
    pub log_format: LogFormat,
    /// tracing `EnvFilter` directive; already checked to parse.
    pub log_level: String,
}

/// Every problem found in the settings, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration:{}", bullet_list(.problems))]
pub struct ConfigError {
    /// One message per problem, each naming the flag and the fix.
    pub problems: Vec<String>,
}

fn bullet_list(items: &[String]) -> String {
    items.iter().map(|item| format!("\n  - {item}")).collect()
}

impl TryFrom<Cli> for Config {
    type Error = ConfigError;

    /// Parses and cross-checks every setting.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] listing every invalid value and every contradiction found.
    fn try_from(cli: Cli) -> Result<Config, ConfigError> {
        let mut p = Problems::default();
        let mut config = Config::parse_groups(&cli, &mut p);
        let upstream = p.parsed("--upstream").then_some(&config.upstream.url);
        let (tls, problems) = TlsConfig::parse(&cli.tls, upstream);
        config.tls = tls;
        problems.into_iter().for_each(|problem| p.push(problem));
        config.check_relations(&mut p);
        config.check_upstream_is_not_self(&mut p);
        if p.list.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError { problems: p.list })
        }
    }
}

impl ListenConfig {
    fn parse(args: &ListenArgs, p: &mut Problems) -> ListenConfig {
        ListenConfig {
            client: p.addr("--listen", &args.listen),
            admin: p.addr("--admin-listen", &args.admin_listen),
            backlog: p.count("--listen-backlog", &args.listen_backlog, u32::MAX as usize) as u32,
            admin_header_timeout: p.duration("--admin-header-timeout", &args.admin_header_timeout),
            admin_max_connections: p.count(
                "--admin-max-connections",
                &args.admin_max_connections,
                MAX_ADMIN_CONNECTIONS,
            ),
        }
    }
}

impl UpstreamConfig {
    /// `demo_listen` stands in for the upstream in demo mode.
    fn parse(
        args: &UpstreamArgs,
        demo: bool,
        demo_listen: SocketAddr,
        p: &mut Problems,
    ) -> UpstreamConfig {
        UpstreamConfig {
            url: p.upstream(args.upstream.as_deref(), demo, demo_listen),
            preserve_host: args.preserve_host,
            connect_timeout: p.duration("--connect-timeout", &args.connect_timeout),
            tcp_user_timeout: p.duration(
                "--upstream-tcp-user-timeout",
                &args.upstream_tcp_user_timeout,
            ),
        }
    }
}

impl ClientConfig {
    fn parse(args: &ClientArgs, p: &mut Problems) -> ClientConfig {
        ClientConfig {
            handshake_timeout: p.duration("--handshake-timeout", &args.handshake_timeout),
            max_connections: p.max_connections("--max-connections", &args.max_connections),
            max_request_header_size: p.size_in(
                "--max-request-header-size",
                &args.max_request_header_size,
                MIN_REQUEST_HEADER_BYTES..=MAX_REQUEST_HEADER_BYTES,
            ) as usize,
            trusted_proxies: p.cidrs("--trusted-proxies", &args.trusted_proxies),
            allowed_origins: p.origins("--allowed-origins", &args.allowed_origins),
        }
    }
}

impl RelayConfig {
    /// The heartbeat settings of `side`'s leg.
    pub fn heartbeat(&self, side: crate::Side) -> &HeartbeatConfig {
        match side {
            crate::Side::Client => &self.client,
            crate::Side::Upstream => &self.upstream,
        }
    }

    fn parse(args: &RelayArgs, text: &TextHeartbeatArgs, p: &mut Problems) -> RelayConfig {
        RelayConfig {
            client: HeartbeatConfig {
                interval: p.heartbeat_period("--client-ping-interval", &args.client_ping_interval),
                timeout: p.heartbeat_period("--client-pong-timeout", &args.client_pong_timeout),
                timeout_after_pong: None,
            },
            upstream: upstream_heartbeat(args, p),
            close_timeout: p.duration("--close-timeout", &args.close_timeout),
            max_frame_size: p.size("--max-frame-size", &args.max_frame_size),
            upstream_masking: args.upstream_masking,
            splice_min_payload: p.size("--splice-min-payload", &args.splice_min_payload),
            text: Arc::new(text::parse(text, p)),
        }
    }
}

impl ShutdownConfig {
    fn parse(args: &ShutdownArgs, p: &mut Problems) -> ShutdownConfig {
        ShutdownConfig {
            drain_delay: p.duration("--drain-delay", &args.drain_delay),
            grace: p.duration("--shutdown-grace", &args.shutdown_grace),
        }
    }
}

/// The upstream heartbeat: `--upstream-pong-timeout` is `auto` (no timeout until the upstream
/// answers a ping, then `--upstream-pong-timeout-after-pong`), `0` or a duration.
fn upstream_heartbeat(args: &RelayArgs, p: &mut Problems) -> HeartbeatConfig {
    let interval = p.heartbeat_period("--upstream-ping-interval", &args.upstream_ping_interval);
    let after_pong = p.heartbeat_period(
        "--upstream-pong-timeout-after-pong",
        &args.upstream_pong_timeout_after_pong,
    );
    if args
        .upstream_pong_timeout
        .trim()
        .eq_ignore_ascii_case("auto")
    {
        return HeartbeatConfig {
            interval,
            timeout: Duration::ZERO,
            timeout_after_pong: Some(after_pong),
        };
    }
    HeartbeatConfig {
        interval,
        timeout: p.heartbeat_period("--upstream-pong-timeout", &args.upstream_pong_timeout),
        timeout_after_pong: None,
    }
}

impl ProcessConfig {
    fn parse(args: &ProcessArgs, p: &mut Problems) -> ProcessConfig {
        ProcessConfig {
            worker_threads: p.threads("--worker-threads", &args.worker_threads),
            log_format: args.log_format,
            log_level: p.log_filter(&args.log_level),
        }
    }
}

impl Config {
    /// Parses each group on its own. A flag that fails is recorded in `p` and gets a
    /// placeholder, which never escapes because any problem turns the result into an error.
    fn parse_groups(cli: &Cli, p: &mut Problems) -> Config {
        let demo_listen = p.addr("--demo-listen", &cli.demo.demo_listen);
        Config {
            listen: ListenConfig::parse(&cli.listen, p),
            upstream: UpstreamConfig::parse(&cli.upstream, cli.demo.demo, demo_listen, p),
            clients: ClientConfig::parse(&cli.clients, p),
            relay: std::sync::Arc::new(RelayConfig::parse(&cli.relay, &cli.text, p)),
            shutdown: ShutdownConfig::parse(&cli.shutdown, p),
            process: ProcessConfig::parse(&cli.process, p),
            demo: cli.demo.demo.then_some(demo_listen),
            tls: TlsConfig::default(),
        }
    }

    /// Rules between settings, each checked only when its flags parsed.
    fn check_relations(&self, p: &mut Problems) {
        self.check_pong_timeouts_have_pings(p);
        self.check_session_timeouts_positive(p);
        self.check_shutdown_grace_positive(p);
        self.check_frame_size_in_range(p);
        self.check_addresses_differ(p);
    }

    /// A pong timeout only runs after a ping, so without pings it would silently never fire.
    fn check_pong_timeouts_have_pings(&self, p: &mut Problems) {
        for (side, hb) in [
            ("client", self.relay.client),
            ("upstream", self.relay.upstream),
        ] {
            let ping = format!("--{side}-ping-interval");
            let pong = format!("--{side}-pong-timeout");
            if p.parsed(&ping) && p.parsed(&pong) && hb.interval.is_zero() && !hb.timeout.is_zero()
            {
                p.push(format!(
                    "{pong} {:?} needs pings: set {ping} above 0, or {pong} 0",
                    hb.timeout
                ));
            }
        }
    }

    /// Session timeouts bound how long a stuck peer can hold a session, so 0 (never) is refused.
    fn check_session_timeouts_positive(&self, p: &mut Problems) {
        for (flag, value) in [
            ("--connect-timeout", self.upstream.connect_timeout),
            ("--handshake-timeout", self.clients.handshake_timeout),
            ("--close-timeout", self.relay.close_timeout),
            ("--admin-header-timeout", self.listen.admin_header_timeout),
        ] {
            if p.parsed(flag) && value.is_zero() {
                p.push(format!("{flag} must be above 0 (e.g. 5s): without it a stuck peer holds a session forever"));
            }
        }
    }

    /// Without a grace, sessions would be dropped before their 1001 could reach anyone.
    fn check_shutdown_grace_positive(&self, p: &mut Problems) {
        if p.parsed("--shutdown-grace") && self.shutdown.grace.is_zero() {
            p.push("--shutdown-grace must be above 0 (e.g. 25s): without it sessions are dropped before their close 1001 is delivered".into());
        }
    }

    /// `--max-frame-size` between [`MIN_FRAME_SIZE_BYTES`] and [`MAX_FRAME_SIZE_BYTES`].
    fn check_frame_size_in_range(&self, p: &mut Problems) {
        let size = self.relay.max_frame_size;
        if p.parsed("--max-frame-size")
            && !(MIN_FRAME_SIZE_BYTES..=MAX_FRAME_SIZE_BYTES).contains(&size)
        {
            p.push(format!(
                "--max-frame-size {} is out of range: use between 125 bytes (the largest control frame) and 1GiB",
                format_bytes(size)
            ));
        }
    }

    /// Two listeners cannot share a port when their IPs are equal or either is a wildcard.
    fn check_addresses_differ(&self, p: &mut Problems) {
        let mut listeners = vec![
            ("--listen", self.listen.client),
            ("--admin-listen", self.listen.admin),
        ];
        if let Some(demo) = self.demo {
            listeners.push(("--demo-listen", demo));
        }
        for (i, &(flag_a, a)) in listeners.iter().enumerate() {
            for &(flag_b, b) in &listeners[i + 1..] {
                if p.parsed(flag_a) && p.parsed(flag_b) && addresses_clash(a, b) {
                    p.push(format!("{flag_a} {a} and {flag_b} {b} would use the same port; give them different ports"));
                }
            }
        }
    }

    /// An upstream that is wsbeat's own listener would proxy each session into itself forever.
    fn check_upstream_is_not_self(&self, p: &mut Problems) {
        if self.demo.is_some() || !p.parsed("--upstream") || !p.parsed("--listen") {
            return;
        }
        let host = self.upstream.url.host.as_str();
        let ip = match host.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) if host.eq_ignore_ascii_case("localhost") => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Err(_) => return,
        };
        let same_ip = ip == self.listen.client.ip()
            || (self.listen.client.ip().is_unspecified() && ip.is_loopback());
        if same_ip && self.upstream.url.port == self.listen.client.port() {
            p.push(format!(
                "--upstream {} points at wsbeat's own --listen {}: sessions would loop; use the backend's address",
                self.upstream.url, self.listen.client
            ));
        }
    }

    /// Settings that work but are probably not what the operator wants; `main` logs each one.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (side, hb) in [
            ("client", self.relay.client),
            ("upstream", self.relay.upstream),
        ] {
            if hb.interval >= Duration::from_secs(60) {
                out.push(format!(
                    "--{side}-ping-interval {:?} is 60 s or more: most load balancers cut connections idle for 60 s; 20s is safer",
                    hb.interval
                ));
            } else if hb.interval.is_zero() {
                out.push(format!(
                    "--{side}-ping-interval 0: no pings, so load balancers may cut idle {side} connections after 60 s"
                ));
            }
        }
        if !self.relay.client.interval.is_zero() && self.relay.client.timeout.is_zero() {
            out.push("--client-pong-timeout 0: dead clients are then only found by TCP keepalive, which can take hours".into());
        }
        let upstream = self.relay.upstream;
        // `auto` runs only after a pong, and a pong only answers a ping.
        let auto_can_run = upstream.timeout_after_pong.is_some() && !upstream.interval.is_zero();
        if upstream.timeout.is_zero() && !auto_can_run && self.upstream.tcp_user_timeout.is_zero() {
            out.push("--upstream-pong-timeout 0 and --upstream-tcp-user-timeout 0: dead upstreams are then only found by TCP keepalive; set one of them".into());
        }
        if self.relay.upstream_masking == UpstreamMasking::Forward && !self.upstream_is_local() {
            out.push(format!(
                "--upstream-masking forward with upstream host {}: clients then choose the masking keys on the way to it, so an intermediary on that path can be fed predictable bytes (RFC 6455 10.3); use it only for a loopback or Pod-local upstream",
                self.upstream.url.host
            ));
        }
        out
    }

    /// The upstream is this host (demo, loopback IP or `localhost`): nothing sits between.
    fn upstream_is_local(&self) -> bool {
        let host = self.upstream.url.host.as_str();
        self.demo.is_some()
            || host.eq_ignore_ascii_case("localhost")
            || host
                .trim_matches(['[', ']'])
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// The effective configuration on one line, for the startup log. There are no secrets yet;
    /// redact any added later here.
    pub fn log_summary(&self) -> String {
        // In demo mode the upstream's port is only known once `main` has bound the listener.
        let (upstream, demo) = match self.demo {
            Some(addr) => ("(demo)".to_owned(), addr.to_string()),
            None => (self.upstream.url.to_string(), "off".to_owned()),
        };
        format!(
            "listen={} admin_listen={} upstream={upstream} preserve_host={} \
             client_ping_interval={} client_pong_timeout={} \
             upstream_ping_interval={} upstream_pong_timeout={} upstream_tcp_user_timeout={} \
             connect_timeout={} handshake_timeout={} close_timeout={} max_frame_size={} \
             upstream_masking={} splice_min_payload={} \
             drain_delay={} shutdown_grace={} \
             worker_threads={} log_format={} log_level={:?} demo={demo} \
             listen_backlog={} admin_header_timeout={} admin_max_connections={} \
             max_connections={} max_request_header_size={} trusted_proxies={} allowed_origins={} {}",
            self.listen.client,
            self.listen.admin,
            self.upstream.preserve_host,
            format_duration(self.relay.client.interval),
            format_duration(self.relay.client.timeout),
            format_duration(self.relay.upstream.interval),
            describe_pong_timeout(self.relay.upstream),
            format_duration(self.upstream.tcp_user_timeout),
            format_duration(self.upstream.connect_timeout),
            format_duration(self.clients.handshake_timeout),
            format_duration(self.relay.close_timeout),
            format_bytes(self.relay.max_frame_size),
            self.relay.upstream_masking.as_str(),
            format_bytes(self.relay.splice_min_payload),
            format_duration(self.shutdown.drain_delay),
            format_duration(self.shutdown.grace),
            self.process.worker_threads,
            self.process.log_format.as_str(),
            self.process.log_level,
            self.listen.backlog,
            format_duration(self.listen.admin_header_timeout),
            self.listen.admin_max_connections,
            self.clients.max_connections,
            format_bytes(self.clients.max_request_header_size as u64),
            self.clients.trusted_proxies.len(),
            self.clients
                .allowed_origins
                .as_ref()
                .map_or_else(|| "*".to_owned(), |o| o.join(",")),
            self.tls.log_summary(),
        )
    }
}

fn addresses_clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// `--upstream-pong-timeout` as the operator would write it.
fn describe_pong_timeout(hb: HeartbeatConfig) -> String {
    match hb.timeout_after_pong {
        Some(after) if hb.timeout.is_zero() => {
            format!("auto(after_pong={})", format_duration(after))
        }
        _ => format_duration(hb.timeout),
    }
}
