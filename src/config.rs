//! Command line and environment → a validated [`Config`].
//!
//! This module owns every setting wsbeat has: the clap [`Cli`] (each flag can also come from a
//! `WSBEAT_*` environment variable), the syntax of durations, byte sizes and the upstream URL,
//! and the rules that relate settings to each other. The syntaxes live in submodules, `units`
//! (durations and byte sizes) and `upstream` ([`Upstream`] URLs); this file keeps the flags, the
//! defaults and the validation that ties them together. [`Config::try_from`] reports every
//! problem at once, so an operator fixes a deployment in one round trip instead of one restart
//! per error. That is why durations, sizes and addresses reach [`Cli`] as plain strings: a clap
//! `value_parser` would stop at the first bad value.
//!
//! It does not bind sockets, install logging or read anything but its arguments: `main` does that.

mod units;
mod upstream;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Parser, ValueEnum};

use crate::heartbeat::HeartbeatConfig;
use units::{
    DURATION_HELP, GIB, MIB, SIZE_HELP, format_bytes, format_duration, parse_duration, parse_size,
};

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
/// Off: legacy upstreams may never answer pings, so their silence proves nothing. Dead upstreams
/// are found by [`DEFAULT_UPSTREAM_TCP_USER_TIMEOUT`] instead.
pub const DEFAULT_UPSTREAM_PONG_TIMEOUT: Duration = Duration::ZERO;
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

/// Command-line flags; each one can also be set by the `WSBEAT_*` variable in its help.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "wsbeat",
    version,
    about = "WebSocket reverse proxy that keeps both legs of every session alive \
             with its own pings and timeouts"
)]
pub struct Cli {
    /// Address clients connect to.
    #[arg(long, env = "WSBEAT_LISTEN", value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    pub listen: String,

    /// Upstream to proxy to: ws://host:port[/base] or http://host:port[/base]. Required unless --demo.
    #[arg(long, env = "WSBEAT_UPSTREAM", value_name = "URL")]
    pub upstream: Option<String>,

    /// Address of the /metrics, /healthz and /readyz listener.
    #[arg(long, env = "WSBEAT_ADMIN_LISTEN", value_name = "ADDR", default_value = DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: String,

    /// How often to ping clients (0 = never).
    #[arg(
        long,
        env = "WSBEAT_CLIENT_PING_INTERVAL",
        value_name = "DUR",
        default_value = "20s"
    )]
    pub client_ping_interval: String,

    /// After a ping, how long a client may stay silent before it is dropped (0 = never).
    #[arg(
        long,
        env = "WSBEAT_CLIENT_PONG_TIMEOUT",
        value_name = "DUR",
        default_value = "20s"
    )]
    pub client_pong_timeout: String,

    /// How often to ping the upstream (0 = never).
    #[arg(
        long,
        env = "WSBEAT_UPSTREAM_PING_INTERVAL",
        value_name = "DUR",
        default_value = "20s"
    )]
    pub upstream_ping_interval: String,

    /// After a ping, how long the upstream may stay silent (0 = never; legacy upstreams may not answer pings).
    #[arg(
        long,
        env = "WSBEAT_UPSTREAM_PONG_TIMEOUT",
        value_name = "DUR",
        default_value = "0"
    )]
    pub upstream_pong_timeout: String,

    /// TCP_USER_TIMEOUT on upstream sockets: drop the upstream when sent data stays unacknowledged this long (0 = off).
    #[arg(
        long,
        env = "WSBEAT_UPSTREAM_TCP_USER_TIMEOUT",
        value_name = "DUR",
        default_value = "30s"
    )]
    pub upstream_tcp_user_timeout: String,

    /// Time limit for the upstream TCP connect plus WebSocket handshake.
    #[arg(
        long,
        env = "WSBEAT_CONNECT_TIMEOUT",
        value_name = "DUR",
        default_value = "5s"
    )]
    pub connect_timeout: String,

    /// Time a client has to send its complete HTTP request.
    #[arg(
        long,
        env = "WSBEAT_HANDSHAKE_TIMEOUT",
        value_name = "DUR",
        default_value = "10s"
    )]
    pub handshake_timeout: String,

    /// How long a closing session waits for the close handshake before dropping both legs.
    #[arg(
        long,
        env = "WSBEAT_CLOSE_TIMEOUT",
        value_name = "DUR",
        default_value = "5s"
    )]
    pub close_timeout: String,

    /// Largest accepted frame; larger frames are refused with close code 1009 (e.g. 16MiB, 65536, 1mb).
    #[arg(
        long,
        env = "WSBEAT_MAX_FRAME_SIZE",
        value_name = "BYTES",
        default_value = "16MiB"
    )]
    pub max_frame_size: String,

    /// Threads that relay sessions, each with its own event loop; 0 means one per CPU.
    #[arg(
        long,
        env = "WSBEAT_WORKER_THREADS",
        value_name = "N",
        default_value = "0"
    )]
    pub worker_threads: String,

    /// Forward the client's Host header instead of the upstream's authority.
    #[arg(long, env = "WSBEAT_PRESERVE_HOST", value_parser = BoolishValueParser::new())]
    pub preserve_host: bool,

    /// Log output format.
    #[arg(long, env = "WSBEAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, in tracing EnvFilter syntax (e.g. info or info,wsbeat::relay=debug).
    #[arg(
        long,
        env = "WSBEAT_LOG_LEVEL",
        value_name = "FILTER",
        default_value = "info"
    )]
    pub log_level: String,

    /// Also start an in-process echo upstream that never answers pings, and proxy to it.
    #[arg(long, env = "WSBEAT_DEMO", value_parser = BoolishValueParser::new())]
    pub demo: bool,

    /// Address the --demo upstream listens on.
    #[arg(long, env = "WSBEAT_DEMO_LISTEN", value_name = "ADDR", default_value = DEFAULT_DEMO_LISTEN)]
    pub demo_listen: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl LogFormat {
    /// The flag value that selects this format.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Validated settings. Only [`Config::try_from`] builds one from user input, so every value
/// here has passed the checks described on [`Cli`].
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// Where /metrics, /healthz and /readyz are served.
    pub admin_listen: SocketAddr,
    /// The backend every session is proxied to.
    pub upstream: Upstream,
    /// Forward the client's Host header instead of [`Upstream::authority`].
    pub preserve_host: bool,
    /// Pings and timeout for the client leg.
    pub client_heartbeat: HeartbeatConfig,
    /// Pings and timeout for the upstream leg.
    pub upstream_heartbeat: HeartbeatConfig,
    /// `TCP_USER_TIMEOUT` for upstream sockets; `Duration::ZERO` leaves the kernel default.
    pub upstream_tcp_user_timeout: Duration,
    /// Upstream TCP connect plus handshake.
    pub connect_timeout: Duration,
    /// Time a client has to send its HTTP request.
    pub handshake_timeout: Duration,
    /// Time a closing session waits for the close handshake.
    pub close_timeout: Duration,
    /// Largest accepted frame payload, in bytes.
    pub max_frame_size: u64,
    /// Relay threads (at least 1; `--worker-threads 0` is resolved to the CPU count).
    pub worker_threads: usize,
    /// Log output format.
    pub log_format: LogFormat,
    /// tracing `EnvFilter` directive; already checked to parse.
    pub log_level: String,
    /// Some(address for the demo upstream) when --demo.
    pub demo: Option<SocketAddr>,
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
        let config = Config::parse_fields(&cli, &mut p);
        config.check_relations(&mut p);
        config.check_upstream_is_not_self(&mut p);
        if p.list.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError { problems: p.list })
        }
    }
}

impl Config {
    /// Parses each flag on its own. A flag that fails is recorded in `p` and gets a placeholder,
    /// which never escapes because any problem turns the result into an error.
    fn parse_fields(cli: &Cli, p: &mut Problems) -> Config {
        let demo_listen = p.addr("--demo-listen", &cli.demo_listen);
        Config {
            listen: p.addr("--listen", &cli.listen),
            admin_listen: p.addr("--admin-listen", &cli.admin_listen),
            upstream: p.upstream(cli.upstream.as_deref(), cli.demo, demo_listen),
            preserve_host: cli.preserve_host,
            client_heartbeat: HeartbeatConfig {
                interval: p.duration("--client-ping-interval", &cli.client_ping_interval),
                timeout: p.duration("--client-pong-timeout", &cli.client_pong_timeout),
            },
            upstream_heartbeat: HeartbeatConfig {
                interval: p.duration("--upstream-ping-interval", &cli.upstream_ping_interval),
                timeout: p.duration("--upstream-pong-timeout", &cli.upstream_pong_timeout),
            },
            upstream_tcp_user_timeout: p.duration(
                "--upstream-tcp-user-timeout",
                &cli.upstream_tcp_user_timeout,
            ),
            connect_timeout: p.duration("--connect-timeout", &cli.connect_timeout),
            handshake_timeout: p.duration("--handshake-timeout", &cli.handshake_timeout),
            close_timeout: p.duration("--close-timeout", &cli.close_timeout),
            max_frame_size: p.size("--max-frame-size", &cli.max_frame_size),
            worker_threads: p.threads("--worker-threads", &cli.worker_threads),
            log_format: cli.log_format,
            log_level: p.log_filter(&cli.log_level),
            demo: cli.demo.then_some(demo_listen),
        }
    }

    /// Rules between settings, each checked only when its flags parsed.
    fn check_relations(&self, p: &mut Problems) {
        self.check_pong_timeouts_have_pings(p);
        self.check_session_timeouts_positive(p);
        self.check_frame_size_in_range(p);
        self.check_addresses_differ(p);
    }

    /// A pong timeout only runs after a ping, so without pings it would silently never fire.
    fn check_pong_timeouts_have_pings(&self, p: &mut Problems) {
        for (side, hb) in [
            ("client", self.client_heartbeat),
            ("upstream", self.upstream_heartbeat),
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
            ("--connect-timeout", self.connect_timeout),
            ("--handshake-timeout", self.handshake_timeout),
            ("--close-timeout", self.close_timeout),
        ] {
            if p.parsed(flag) && value.is_zero() {
                p.push(format!("{flag} must be above 0 (e.g. 5s): without it a stuck peer holds a session forever"));
            }
        }
    }

    /// `--max-frame-size` between [`MIN_FRAME_SIZE_BYTES`] and [`MAX_FRAME_SIZE_BYTES`].
    fn check_frame_size_in_range(&self, p: &mut Problems) {
        let size = self.max_frame_size;
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
            ("--listen", self.listen),
            ("--admin-listen", self.admin_listen),
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
        let host = self.upstream.host.as_str();
        let ip = match host.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) if host.eq_ignore_ascii_case("localhost") => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Err(_) => return,
        };
        let same_ip =
            ip == self.listen.ip() || (self.listen.ip().is_unspecified() && ip.is_loopback());
        if same_ip && self.upstream.port == self.listen.port() {
            p.push(format!(
                "--upstream {} points at wsbeat's own --listen {}: sessions would loop; use the backend's address",
                self.upstream, self.listen
            ));
        }
    }

    /// Settings that work but are probably not what the operator wants; `main` logs each one.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (side, hb) in [
            ("client", self.client_heartbeat),
            ("upstream", self.upstream_heartbeat),
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
        if !self.client_heartbeat.interval.is_zero() && self.client_heartbeat.timeout.is_zero() {
            out.push("--client-pong-timeout 0: dead clients are then only found by TCP keepalive, which can take hours".into());
        }
        if self.upstream_heartbeat.timeout.is_zero() && self.upstream_tcp_user_timeout.is_zero() {
            out.push("--upstream-pong-timeout 0 and --upstream-tcp-user-timeout 0: dead upstreams are then only found by TCP keepalive; set one of them".into());
        }
        out
    }

    /// The effective configuration on one line, for the startup log. There are no secrets yet;
    /// redact any added later here.
    pub fn log_summary(&self) -> String {
        // In demo mode the upstream's port is only known once `main` has bound the listener.
        let (upstream, demo) = match self.demo {
            Some(addr) => ("(demo)".to_owned(), addr.to_string()),
            None => (self.upstream.to_string(), "off".to_owned()),
        };
        format!(
            "listen={} admin_listen={} upstream={upstream} preserve_host={} \
             client_ping_interval={} client_pong_timeout={} \
             upstream_ping_interval={} upstream_pong_timeout={} upstream_tcp_user_timeout={} \
             connect_timeout={} handshake_timeout={} close_timeout={} max_frame_size={} \
             worker_threads={} log_format={} log_level={:?} demo={demo}",
            self.listen,
            self.admin_listen,
            self.preserve_host,
            format_duration(self.client_heartbeat.interval),
            format_duration(self.client_heartbeat.timeout),
            format_duration(self.upstream_heartbeat.interval),
            format_duration(self.upstream_heartbeat.timeout),
            format_duration(self.upstream_tcp_user_timeout),
            format_duration(self.connect_timeout),
            format_duration(self.handshake_timeout),
            format_duration(self.close_timeout),
            format_bytes(self.max_frame_size),
            self.worker_threads,
            self.log_format.as_str(),
            self.log_level,
        )
    }
}

fn addresses_clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Collects problems while parsing, and remembers which flags failed so that rules involving
/// them are skipped instead of reporting a consequence of the placeholder.
#[derive(Default)]
struct Problems {
    list: Vec<String>,
    failed: Vec<&'static str>,
}

impl Problems {
    fn push(&mut self, problem: String) {
        self.list.push(problem);
    }

    fn fail<T>(&mut self, flag: &'static str, problem: String, placeholder: T) -> T {
        self.failed.push(flag);
        self.list.push(problem);
        placeholder
    }

    fn parsed(&self, flag: &str) -> bool {
        !self.failed.contains(&flag)
    }

    fn duration(&mut self, flag: &'static str, raw: &str) -> Duration {
        parse_duration(raw).unwrap_or_else(|why| {
            self.fail(
                flag,
                format!("{flag} {raw:?}: {why}; {DURATION_HELP}"),
                Duration::ZERO,
            )
        })
    }

    /// A thread count: 0 means one per CPU; more than [`MAX_WORKER_THREADS`] is refused.
    fn threads(&mut self, flag: &'static str, raw: &str) -> usize {
        match raw.trim().parse::<usize>() {
            Ok(0) => std::thread::available_parallelism().map_or(1, usize::from),
            Ok(n) if n <= MAX_WORKER_THREADS => n,
            _ => self.fail(
                flag,
                format!(
                    "{flag} {raw:?}: expected a whole number from 0 (one per CPU) to \
                     {MAX_WORKER_THREADS}"
                ),
                1,
            ),
        }
    }

    fn size(&mut self, flag: &'static str, raw: &str) -> u64 {
        parse_size(raw)
            .unwrap_or_else(|why| self.fail(flag, format!("{flag} {raw:?}: {why}; {SIZE_HELP}"), 0))
    }

    fn addr(&mut self, flag: &'static str, raw: &str) -> SocketAddr {
        raw.trim().parse().unwrap_or_else(|_| {
            let problem =
                format!("{flag} {raw:?}: expected IP:PORT, e.g. 0.0.0.0:8080 or [::]:8080");
            self.fail(flag, problem, SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
        })
    }

    /// `--upstream`, or in demo mode the demo listener, whose real port `main` fills in.
    fn upstream(&mut self, raw: Option<&str>, demo: bool, demo_listen: SocketAddr) -> Upstream {
        let placeholder = Upstream::from_addr(demo_listen);
        match (raw, demo) {
            (None, true) => placeholder,
            (None, false) => {
                self.fail("--upstream", "--upstream is required (or try --demo)".into(), placeholder)
            }
            (Some(_), true) => self.fail(
                "--upstream",
                "--demo proxies to its own echo upstream: drop --upstream (or WSBEAT_UPSTREAM), or drop --demo".into(),
                placeholder,
            ),
            (Some(url), false) => Upstream::parse(url).unwrap_or_else(|why| {
                let problem = format!("--upstream {url:?}: {why}; expected ws://host:port[/base] or http://host:port[/base]");
                self.fail("--upstream", problem, placeholder)
            }),
        }
    }

    fn log_filter(&mut self, raw: &str) -> String {
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(raw) {
            let problem =
                format!("--log-level {raw:?}: {e}; e.g. info or info,wsbeat::relay=debug");
            self.fail("--log-level", problem, ());
        }
        raw.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    const UPSTREAM: &str = "--upstream ws://127.0.0.1:9000";

    /// Parses a whitespace-separated command line (without the program name).
    fn cli(line: &str) -> Cli {
        let args = std::iter::once("wsbeat").chain(line.split_whitespace());
        Cli::try_parse_from(args).expect("test arguments parse")
    }

    fn config(line: &str) -> Result<Config, ConfigError> {
        Config::try_from(cli(line))
    }

    fn problems(line: &str) -> Vec<String> {
        config(line)
            .expect_err("configuration should be rejected")
            .problems
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_flag_has_an_env_var_and_help() {
        for arg in Cli::command().get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let env = format!("WSBEAT_{}", id.to_uppercase());
            assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(env.as_str()));
            assert!(arg.get_help().is_some(), "{id} has no help");
        }
    }

    /// The literal defaults in the clap attributes must match the documented constants.
    #[test]
    fn defaults_match_the_documented_constants() {
        let cli = Cli::try_parse_from(["wsbeat", "--upstream", "ws://127.0.0.1:9000"]).unwrap();
        let config = Config::try_from(cli).unwrap();
        assert_eq!(config.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(config.admin_listen, DEFAULT_ADMIN_LISTEN.parse().unwrap());
        assert_eq!(
            config.upstream,
            Upstream::parse("ws://127.0.0.1:9000").unwrap()
        );
        assert!(!config.preserve_host);
        let client = HeartbeatConfig {
            interval: DEFAULT_PING_INTERVAL,
            timeout: DEFAULT_CLIENT_PONG_TIMEOUT,
        };
        assert_eq!(config.client_heartbeat, client);
        let upstream = HeartbeatConfig {
            interval: DEFAULT_PING_INTERVAL,
            timeout: DEFAULT_UPSTREAM_PONG_TIMEOUT,
        };
        assert_eq!(config.upstream_heartbeat, upstream);
        let tcp_user_timeout = DEFAULT_UPSTREAM_TCP_USER_TIMEOUT;
        assert_eq!(config.upstream_tcp_user_timeout, tcp_user_timeout);
        assert_eq!(config.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(config.handshake_timeout, DEFAULT_HANDSHAKE_TIMEOUT);
        assert_eq!(config.close_timeout, DEFAULT_CLOSE_TIMEOUT);
        assert_eq!(config.max_frame_size, DEFAULT_MAX_FRAME_SIZE_BYTES);
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(config.log_level, "info");
        assert_eq!(config.demo, None);
        assert!(config.warnings().is_empty(), "{:?}", config.warnings());
    }

    /// The reasoning on the constants: a quiet session survives a 60 s idle timeout, and a dead
    /// client is found within 45 s.
    #[test]
    fn default_heartbeat_fits_load_balancer_and_detection_budgets() {
        assert!(DEFAULT_PING_INTERVAL * 2 < Duration::from_secs(60));
        assert!(DEFAULT_PING_INTERVAL + DEFAULT_CLIENT_PONG_TIMEOUT <= Duration::from_secs(45));
    }

    #[test]
    fn flags_set_every_field() {
        let config = config(
            "--listen 127.0.0.1:1 --admin-listen [::1]:2 --upstream http://up:81/b/ \
             --client-ping-interval 1s --client-pong-timeout 2s \
             --upstream-ping-interval 3s --upstream-pong-timeout 4s \
             --upstream-tcp-user-timeout 0 --connect-timeout 6s --handshake-timeout 7s \
             --close-timeout 8s --max-frame-size 1KiB --preserve-host --log-format json \
             --log-level debug",
        )
        .unwrap();
        assert_eq!(config.listen, "127.0.0.1:1".parse().unwrap());
        assert_eq!(config.admin_listen, "[::1]:2".parse().unwrap());
        assert_eq!(config.upstream.authority, "up:81");
        assert_eq!(config.upstream.base_path, "/b");
        let hb = |a, b| HeartbeatConfig {
            interval: ms(a),
            timeout: ms(b),
        };
        assert_eq!(config.client_heartbeat, hb(1000, 2000));
        assert_eq!(config.upstream_heartbeat, hb(3000, 4000));
        assert_eq!(config.upstream_tcp_user_timeout, Duration::ZERO);
        let timeouts = (
            config.connect_timeout,
            config.handshake_timeout,
            config.close_timeout,
        );
        assert_eq!(timeouts, (ms(6000), ms(7000), ms(8000)));
        assert_eq!(config.max_frame_size, 1024);
        assert!(config.preserve_host);
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.log_level, "debug");
    }

    #[test]
    fn duration_errors_name_the_flag_and_show_examples() {
        let problems = problems(&format!("{UPSTREAM} --close-timeout 20"));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("--close-timeout \"20\": missing unit"));
        assert!(
            problems[0].contains("500ms, 20s, 1.5s, 2m"),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let problems = problems(
            "--listen nope --client-ping-interval 20 --upstream-pong-timeout 1d \
             --max-frame-size big --log-level = --connect-timeout 0",
        );
        let expected = [
            "--listen",
            "--upstream is required",
            "--client-ping-interval",
            "--upstream-pong-timeout",
            "--connect-timeout",
            "--max-frame-size",
            "--log-level",
        ];
        assert_eq!(problems.len(), expected.len(), "{problems:#?}");
        for flag in expected {
            assert!(
                problems.iter().any(|p| p.starts_with(flag)),
                "{flag}: {problems:#?}"
            );
        }
        let shown = ConfigError { problems }.to_string();
        assert!(shown.starts_with("invalid configuration:\n  - --listen \"nope\""));
    }

    /// A flag that failed to parse must not cause follow-on complaints about its placeholder.
    #[test]
    fn a_bad_value_does_not_trigger_rules_about_its_placeholder() {
        let line = format!("{UPSTREAM} --client-ping-interval x --max-frame-size x --listen x");
        assert_eq!(problems(&line).len(), 3, "{:#?}", problems(&line));
    }

    #[test]
    fn pong_timeout_without_pings_is_rejected() {
        assert_eq!(
            problems(&format!("{UPSTREAM} --client-ping-interval 0")),
            [
                "--client-pong-timeout 20s needs pings: set --client-ping-interval above 0, \
              or --client-pong-timeout 0"
            ]
        );
        let line = format!("{UPSTREAM} --upstream-ping-interval 0 --upstream-pong-timeout 5s");
        assert!(problems(&line)[0].starts_with("--upstream-pong-timeout 5s needs pings"));
        let off = config(&format!(
            "{UPSTREAM} --client-ping-interval 0 --client-pong-timeout 0"
        ));
        assert_eq!(off.unwrap().client_heartbeat, HeartbeatConfig::OFF);
    }

    #[test]
    fn session_timeouts_must_be_positive() {
        let line = "--connect-timeout 0 --handshake-timeout 0s --close-timeout 0ms";
        let problems = problems(&format!("{UPSTREAM} {line}"));
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems.iter().all(|p| p.contains("must be above 0")));
    }

    #[test]
    fn max_frame_size_is_bounded() {
        for raw in ["124", "0", "1025MiB", "2GiB"] {
            let problems = problems(&format!("{UPSTREAM} --max-frame-size {raw}"));
            assert!(problems[0].starts_with("--max-frame-size"), "{problems:?}");
            assert!(problems[0].contains("out of range"), "{problems:?}");
        }
        for (raw, want) in [("125", 125), ("1GiB", GIB)] {
            let config = config(&format!("{UPSTREAM} --max-frame-size {raw}")).unwrap();
            assert_eq!(config.max_frame_size, want);
        }
    }

    #[test]
    fn listeners_must_not_share_a_port() {
        let same = problems(&format!("{UPSTREAM} --listen 127.0.0.1:9090"));
        assert!(same[0].contains("--listen 127.0.0.1:9090 and --admin-listen 127.0.0.1:9090"));
        // A wildcard listener takes the port on every IP.
        let wildcard = problems(&format!("{UPSTREAM} --admin-listen 127.0.0.1:8080"));
        assert_eq!(wildcard.len(), 1, "{wildcard:?}");
        // Port 0 picks distinct free ports.
        let ephemeral = "--listen 127.0.0.1:0 --admin-listen 127.0.0.1:0";
        assert!(config(&format!("{UPSTREAM} {ephemeral}")).is_ok());
        assert!(config(&format!("{UPSTREAM} --admin-listen 127.0.0.1:9091")).is_ok());
    }

    #[test]
    fn upstream_pointing_at_own_listener_is_rejected() {
        for url in [
            "ws://127.0.0.1:8080",
            "ws://localhost:8080/x",
            "http://0.0.0.0:8080",
        ] {
            let problems = problems(&format!("--upstream {url}"));
            assert!(
                problems[0].contains("sessions would loop"),
                "{url}: {problems:?}"
            );
        }
        // Another host may well use the same port.
        assert!(config("--upstream ws://10.0.0.1:8080").is_ok());
    }

    #[test]
    fn missing_upstream_suggests_demo() {
        assert_eq!(problems(""), ["--upstream is required (or try --demo)"]);
    }

    #[test]
    fn worker_threads_default_to_one_per_cpu_and_bad_counts_are_refused() {
        assert!(config(UPSTREAM).unwrap().worker_threads >= 1);
        let three = config(&format!("{UPSTREAM} --worker-threads 3")).unwrap();
        assert_eq!(three.worker_threads, 3);
        for bad in ["-1", "many", "257"] {
            let found = problems(&format!("{UPSTREAM} --worker-threads={bad}"));
            assert!(found[0].contains("--worker-threads"), "{bad}: {found:?}");
        }
    }

    #[test]
    fn demo_without_upstream_proxies_to_the_demo_listener() {
        let config = config("--demo").unwrap();
        let demo: SocketAddr = DEFAULT_DEMO_LISTEN.parse().unwrap();
        assert_eq!(config.demo, Some(demo));
        assert_eq!(config.upstream, Upstream::from_addr(demo));
        let custom = Config::try_from(cli("--demo --demo-listen 127.0.0.1:7000")).unwrap();
        assert_eq!(custom.upstream.port, 7000);
    }

    #[test]
    fn demo_and_upstream_together_are_contradictory() {
        let problems = problems(&format!("--demo {UPSTREAM}"));
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("--demo proxies to its own echo upstream"));
    }

    #[test]
    fn demo_listener_must_not_clash_with_the_others() {
        let problems = problems("--demo --demo-listen 127.0.0.1:9090");
        assert!(problems[0].contains("--admin-listen 127.0.0.1:9090 and --demo-listen"));
    }

    #[test]
    fn upstream_error_names_the_flag() {
        let problems = problems("--upstream wss://legacy");
        assert!(problems[0].starts_with("--upstream \"wss://legacy\": TLS upstreams"));
    }

    #[test]
    fn risky_settings_warn() {
        let line = "--client-ping-interval 60s --client-pong-timeout 0 \
                    --upstream-ping-interval 0 --upstream-tcp-user-timeout 0";
        let warnings = config(&format!("{UPSTREAM} {line}")).unwrap().warnings();
        assert_eq!(warnings.len(), 4, "{warnings:#?}");
        assert!(warnings[0].starts_with("--client-ping-interval 60s is 60 s or more"));
        assert!(warnings[1].starts_with("--upstream-ping-interval 0"));
        assert!(warnings[2].starts_with("--client-pong-timeout 0"));
        assert!(warnings[3].contains("dead upstreams"));
    }

    #[test]
    fn boolean_flags_accept_common_spellings() {
        // Environment variables arrive as values; clap's plain bool parser only takes true/false.
        for id in ["demo", "preserve_host"] {
            let cmd = Cli::command();
            let flag = cmd.get_arguments().find(|a| a.get_id() == id);
            let parser = flag.expect("flag exists").get_value_parser();
            let accepted: Vec<String> = parser
                .possible_values()
                .expect("a fixed set of spellings")
                .map(|value| value.get_name().to_owned())
                .collect();
            for raw in ["1", "0", "yes", "no", "true", "false", "on", "off"] {
                assert!(
                    accepted.iter().any(|a| a == raw),
                    "{id}: {raw} not in {accepted:?}"
                );
            }
        }
    }

    #[test]
    fn log_summary_shows_effective_values() {
        let summary = config("--demo --log-format json").unwrap().log_summary();
        for part in [
            "listen=0.0.0.0:8080",
            "upstream=(demo)",
            "upstream_pong_timeout=0 ",
            "client_pong_timeout=20s",
            "max_frame_size=16MiB",
            "demo=127.0.0.1:0",
            "log_format=json",
        ] {
            assert!(summary.contains(part), "{part} missing in {summary}");
        }
    }
}
