//! The command line: [`Cli`] and its groups of flags, one `clap::Args` struct per role, each
//! with its own `--help` heading (the layout of erebe/wstunnel's config).
//!
//! This module owns flag names, `WSBEAT_*` variable names, literal defaults and help lines. It
//! checks nothing beyond what clap must: values stay strings, so that the parent module can
//! report every bad value at once. A new flag goes into the group of its role; a new role gets a
//! group of its own and a field in [`Cli`] and in `Config`.

use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};

use super::{DEFAULT_ADMIN_LISTEN, DEFAULT_DEMO_LISTEN, DEFAULT_LISTEN};

/// Command-line flags; each one can also be set by the `WSBEAT_*` variable in its help.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "wsbeat",
    version,
    about = "WebSocket reverse proxy that keeps both legs of every session alive \
             with its own pings and timeouts"
)]
pub struct Cli {
    /// Where clients and the admin endpoints connect.
    #[command(flatten)]
    pub listen: ListenArgs,
    /// The backend and how to reach it.
    #[command(flatten)]
    pub upstream: UpstreamArgs,
    /// What is asked of connecting clients.
    #[command(flatten)]
    pub clients: ClientArgs,
    /// Heartbeats, closes and frame limits of upgraded sessions.
    #[command(flatten)]
    pub relay: RelayArgs,
    /// Application heartbeats in text messages, for browsers.
    #[command(flatten)]
    pub text: super::TextHeartbeatArgs,
    /// How a drain proceeds.
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
    /// Threads and logging.
    #[command(flatten)]
    pub process: ProcessArgs,
    /// The built-in echo upstream.
    #[command(flatten)]
    pub demo: DemoArgs,
    /// TLS on either leg.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Something else than serving, such as asking a running wsbeat to drain.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What `wsbeat` does besides serving (the default, without a subcommand).
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Ask the wsbeat on this machine to drain (POST /drain on its admin listener), e.g. from a
    /// Kubernetes preStop exec hook; exits 0 once the drain was accepted, or with --wait once
    /// wsbeat has exited.
    Drain(DrainArgs),
}

/// `wsbeat drain` flags.
#[derive(Debug, Clone, Args)]
pub struct DrainArgs {
    /// Admin listener of the wsbeat to drain; a wildcard IP means this machine's loopback.
    #[arg(long, env = "WSBEAT_ADMIN_LISTEN", value_name = "ADDR", default_value = DEFAULT_ADMIN_LISTEN)]
    pub admin: String,

    /// Return only once that wsbeat has exited (its admin listener refuses connections).
    #[arg(long)]
    pub wait: bool,
}

/// Listener addresses.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Listeners")]
pub struct ListenArgs {
    /// Address clients connect to.
    #[arg(long, env = "WSBEAT_LISTEN", value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    pub listen: String,

    /// Address of the /metrics, /healthz and /readyz listener.
    #[arg(long, env = "WSBEAT_ADMIN_LISTEN", value_name = "ADDR", default_value = DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: String,

    /// Connections the kernel queues on --listen before wsbeat accepts them (capped by net.core.somaxconn).
    #[arg(
        long,
        env = "WSBEAT_LISTEN_BACKLOG",
        value_name = "N",
        default_value = "1024"
    )]
    pub listen_backlog: String,

    /// Time an admin connection has to send its request head before it is closed.
    #[arg(
        long,
        env = "WSBEAT_ADMIN_HEADER_TIMEOUT",
        value_name = "DUR",
        default_value = "5s"
    )]
    pub admin_header_timeout: String,

    /// Admin connections served at once; more wait in the listen queue.
    #[arg(
        long,
        env = "WSBEAT_ADMIN_MAX_CONNECTIONS",
        value_name = "N",
        default_value = "16"
    )]
    pub admin_max_connections: String,
}

/// The upstream and the connections to it.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Upstream")]
pub struct UpstreamArgs {
    /// Upstream to proxy to: ws://host:port[/base] or http://host:port[/base]. Required unless --demo.
    #[arg(long, env = "WSBEAT_UPSTREAM", value_name = "URL")]
    pub upstream: Option<String>,

    /// Forward the client's Host header instead of the upstream's authority.
    #[arg(long, env = "WSBEAT_PRESERVE_HOST", value_parser = BoolishValueParser::new())]
    pub preserve_host: bool,

    /// Time limit for the upstream TCP connect plus WebSocket handshake.
    #[arg(
        long,
        env = "WSBEAT_CONNECT_TIMEOUT",
        value_name = "DUR",
        default_value = "5s"
    )]
    pub connect_timeout: String,

    /// TCP_USER_TIMEOUT on upstream sockets: drop the upstream when sent data stays unacknowledged this long (0 = off).
    #[arg(
        long,
        env = "WSBEAT_UPSTREAM_TCP_USER_TIMEOUT",
        value_name = "DUR",
        default_value = "30s"
    )]
    pub upstream_tcp_user_timeout: String,
}

/// What connecting clients must do before they get a session.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Clients")]
pub struct ClientArgs {
    /// Time a client has to send its complete HTTP request.
    #[arg(
        long,
        env = "WSBEAT_HANDSHAKE_TIMEOUT",
        value_name = "DUR",
        default_value = "10s"
    )]
    pub handshake_timeout: String,

    /// Client connections and sessions at once; past it, requests get 503 with Retry-After. auto: from the open-files limit.
    #[arg(
        long,
        env = "WSBEAT_MAX_CONNECTIONS",
        value_name = "N",
        default_value = "auto"
    )]
    pub max_connections: String,

    /// Largest request head (request line and headers); larger ones get 431. At least 8KiB.
    #[arg(
        long,
        env = "WSBEAT_MAX_REQUEST_HEADER_SIZE",
        value_name = "BYTES",
        default_value = "16KiB"
    )]
    pub max_request_header_size: String,

    /// Peers (CIDR,...) whose X-Forwarded-* and Forwarded headers are kept and appended to; from any other peer they are replaced.
    #[arg(
        long,
        env = "WSBEAT_TRUSTED_PROXIES",
        value_name = "CIDR,...",
        default_value = ""
    )]
    pub trusted_proxies: String,

    /// Origins (scheme://host[:port],...) allowed to upgrade, or * for any; others get 403.
    #[arg(
        long,
        env = "WSBEAT_ALLOWED_ORIGINS",
        value_name = "ORIGIN,...",
        default_value = "*"
    )]
    pub allowed_origins: String,
}

/// Settings of each upgraded session: heartbeats per leg, the close handshake, frame limits.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Sessions")]
pub struct RelayArgs {
    /// How often to ping clients (0 = never; otherwise at least 10ms).
    #[arg(
        long,
        env = "WSBEAT_CLIENT_PING_INTERVAL",
        value_name = "DUR",
        default_value = "20s"
    )]
    pub client_ping_interval: String,

    /// After a ping, how long a client may stay silent before it is dropped (0 = never; otherwise at least 10ms).
    #[arg(
        long,
        env = "WSBEAT_CLIENT_PONG_TIMEOUT",
        value_name = "DUR",
        default_value = "20s"
    )]
    pub client_pong_timeout: String,

    /// How often to ping the upstream (0 = never; otherwise at least 10ms).
    #[arg(
        long,
        env = "WSBEAT_UPSTREAM_PING_INTERVAL",
        value_name = "DUR",
        default_value = "20s"
    )]
    pub upstream_ping_interval: String,

    /// After a ping, how long the upstream may stay silent: auto = no limit until it has answered one of our pings, then --upstream-pong-timeout-after-pong (legacy upstreams may never pong); 0 = never; otherwise at least 10ms.
    #[arg(
        long,
        env = "WSBEAT_UPSTREAM_PONG_TIMEOUT",
        value_name = "auto|DUR",
        default_value = "auto"
    )]
    pub upstream_pong_timeout: String,

    /// With --upstream-pong-timeout auto: the pong timeout of an upstream that has answered one of our pings (at least 10ms).
    #[arg(
        long,
        env = "WSBEAT_UPSTREAM_PONG_TIMEOUT_AFTER_PONG",
        value_name = "DUR",
        default_value = "20s"
    )]
    pub upstream_pong_timeout_after_pong: String,

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

    /// Masking of client frames toward the upstream: fresh (a new random key per frame, RFC 6455 5.3) or forward (the client's own key and bytes, unchanged; only for a loopback or Pod-local upstream).
    #[arg(
        long,
        env = "WSBEAT_UPSTREAM_MASKING",
        value_enum,
        default_value_t = UpstreamMasking::Fresh
    )]
    pub upstream_masking: UpstreamMasking,

    /// Frames whose payload is at least this large and passes unchanged between two plain TCP legs (upstream frames; client frames with --upstream-masking forward) are moved with splice(2), without copying through user space (0 = never).
    #[arg(
        long,
        env = "WSBEAT_SPLICE_MIN_PAYLOAD",
        value_name = "BYTES",
        default_value = "64KiB"
    )]
    pub splice_min_payload: String,
}

/// The drain after SIGTERM, SIGINT or POST /drain: not ready but accepting for the delay, then
/// every session closed with 1001 and given the grace to finish.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Shutdown")]
pub struct ShutdownArgs {
    /// After a drain request, how long to keep accepting with /readyz at 503, so load balancers stop sending new clients before the port closes (0 = close at once).
    #[arg(
        long,
        env = "WSBEAT_DRAIN_DELAY",
        value_name = "DUR",
        default_value = "5s"
    )]
    pub drain_delay: String,

    /// After the delay, how long close handshakes and HTTP requests may take before the rest is dropped and wsbeat exits; a second signal ends it at once.
    #[arg(
        long,
        env = "WSBEAT_SHUTDOWN_GRACE",
        value_name = "DUR",
        default_value = "25s"
    )]
    pub shutdown_grace: String,
}

/// How the process runs and logs.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Process")]
pub struct ProcessArgs {
    /// Threads that relay sessions, each with its own event loop; 0 means one per CPU.
    #[arg(
        long,
        env = "WSBEAT_WORKER_THREADS",
        value_name = "N",
        default_value = "0"
    )]
    pub worker_threads: String,

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
}

/// The in-process demo upstream.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Demo")]
pub struct DemoArgs {
    /// Also start an in-process echo upstream that never answers pings, and proxy to it.
    #[arg(long, env = "WSBEAT_DEMO", value_parser = BoolishValueParser::new())]
    pub demo: bool,

    /// Address the --demo upstream listens on.
    #[arg(long, env = "WSBEAT_DEMO_LISTEN", value_name = "ADDR", default_value = DEFAULT_DEMO_LISTEN)]
    pub demo_listen: String,
}

/// How client frames are masked on their way to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UpstreamMasking {
    /// Unmask each client frame and mask it again with a fresh key from a CSPRNG: the bytes
    /// toward the upstream stay unpredictable to the client whatever keys it picks (RFC 6455
    /// 10.3), so an intermediary between wsbeat and the upstream cannot be poisoned through it.
    Fresh,
    /// Pass the client's masking key and masked payload on untouched: no XOR and no key per
    /// frame. Safe only when nothing sits between wsbeat and the upstream (loopback, same Pod).
    Forward,
}

impl UpstreamMasking {
    /// The flag value that selects this mode.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamMasking::Fresh => "fresh",
            UpstreamMasking::Forward => "forward",
        }
    }
}

/// TLS on either leg.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "TLS")]
pub struct TlsArgs {
    /// PEM certificate chain (leaf first) that makes --listen speak TLS; reloaded when it changes.
    #[arg(
        long,
        env = "WSBEAT_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert (PKCS#8, PKCS#1 or SEC1; RSA, ECDSA P-256/P-384 or Ed25519).
    #[arg(
        long,
        env = "WSBEAT_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// PEM file of extra CAs (one or more certificates) trusted for a wss:// or https:// upstream, besides the system store.
    #[arg(long, env = "WSBEAT_UPSTREAM_CA", value_name = "FILE")]
    pub upstream_ca: Option<PathBuf>,

    /// PEM client certificate chain presented to a TLS upstream that asks for one (mutual TLS).
    #[arg(
        long,
        env = "WSBEAT_UPSTREAM_CLIENT_CERT",
        value_name = "FILE",
        requires = "upstream_client_key"
    )]
    pub upstream_client_cert: Option<PathBuf>,

    /// PEM private key for --upstream-client-cert.
    #[arg(
        long,
        env = "WSBEAT_UPSTREAM_CLIENT_KEY",
        value_name = "FILE",
        requires = "upstream_client_cert"
    )]
    pub upstream_client_key: Option<PathBuf>,

    /// Name sent as SNI and required in the upstream's certificate, when it differs from the --upstream host.
    #[arg(long, env = "WSBEAT_UPSTREAM_SERVER_NAME", value_name = "NAME")]
    pub upstream_server_name: Option<String>,
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
