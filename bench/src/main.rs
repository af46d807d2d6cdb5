//! `wsbeat-bench`: the benchmark harness of issue 4.
//!
//! Subcommands (each prints one `RESULT key=value ...` line on stdout that `bench/run.sh`
//! collects; progress goes to stderr):
//! - `echo`: the WebSocket echo upstream every target proxies to (`echo.rs`);
//! - `load`: closed-loop throughput or open-loop fixed-rate latency (`load.rs`);
//! - `idle`: thousands of idle sessions answering heartbeats (`idle.rs`);
//! - `stream`: one big fragmented message (`stream.rs`);
//! - `floor`: the kernel's own cost of a ping round trip, with no proxy at all (`floor.rs`);
//! - `handshakes`: new sessions per second, each a full TLS handshake, upgrade, one echo and
//!   a close (`handshakes.rs`);
//! - `ports`, `wait-port`: helpers for the script; `report`: the Markdown table (`report.rs`).
//!
//! `load` (closed loop), `idle` and `handshakes` also take `wss://` targets (`tls.rs`: rustls
//! with ring, TLS 1.3, AES-128-GCM only).
//!
//! Frames are encoded and decoded by hand (`ws.rs`) so the harness costs as little CPU per
//! message as possible: on two cores it shares the machine with the proxy and the echo server.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod client;
mod echo;
mod floor;
mod handshakes;
mod idle;
mod load;
mod procstat;
mod report;
mod stream;
mod tls;
mod ws;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "WebSocket proxy benchmark harness (see bench/run.sh)")]
struct Cli {
    /// Tokio worker threads (default: one per core).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// WebSocket echo server (the upstream).
    Echo {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// File to write counters to (pings, connections) every --stats-every.
        #[arg(long)]
        stats_file: Option<PathBuf>,
        /// Counter reporting period.
        #[arg(long, default_value = "100ms", value_parser = parse_duration)]
        stats_every: Duration,
    },
    /// Throughput (closed loop) or fixed-rate latency (open loop, --rate).
    Load(load::LoadArgs),
    /// Hold idle sessions answering pings; report proxy RSS/CPU per session.
    Idle(idle::IdleArgs),
    /// Send one fragmented message and receive it back.
    Stream(stream::StreamArgs),
    /// New sessions per second: connect, TLS handshake, upgrade, one echo, close.
    Handshakes(handshakes::HandshakeArgs),
    /// Kernel CPU of a ping round trip over loopback, without any event loop (a lower bound).
    Floor(floor::FloorArgs),
    /// Print N free TCP ports on 127.0.0.1, one per line.
    Ports {
        /// How many.
        #[arg(long, default_value_t = 1)]
        count: usize,
    },
    /// Wait until ADDR accepts TCP connections.
    WaitPort {
        /// Address to probe.
        #[arg(long)]
        addr: SocketAddr,
        /// Give up after this long (exit 1).
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Print the Markdown tables from a results file.
    Report {
        /// Results file (workload, target, run, key, value; tab separated).
        #[arg(long)]
        results: PathBuf,
        /// Targets in column order.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "direct,nginx,haproxy,wsbeat"
        )]
        targets: Vec<String>,
    },
}

/// Parses `250ms`, `5s`, `1.5s`, `2m` or a bare number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|e| format!("bad duration {s:?}: {e}"))?;
    Duration::try_from_secs_f64(v * scale).map_err(|e| format!("bad duration {s:?}: {e}"))
}

/// Parses `64`, `64KiB`, `1MiB`.
pub(crate) fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("KiB") {
        (n, 1024)
    } else if let Some(n) = s.strip_suffix("MiB") {
        (n, 1024 * 1024)
    } else {
        (s, 1)
    };
    let v: usize = num
        .trim()
        .parse()
        .map_err(|e| format!("bad size {s:?}: {e}"))?;
    Ok(v * scale)
}

fn ports(count: usize) -> std::io::Result<()> {
    // Hold all listeners until every port is printed, so the ports are distinct.
    let listeners = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    for l in &listeners {
        println!("{}", l.local_addr()?.port());
    }
    Ok(())
}

async fn wait_port(addr: SocketAddr, timeout: Duration) -> std::io::Result<()> {
    let probe = async {
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(timeout, probe).await.map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{addr} not listening"),
        )
    })
}

async fn dispatch(cmd: Cmd) -> std::io::Result<()> {
    match cmd {
        Cmd::Echo {
            listen,
            stats_file,
            stats_every,
        } => echo::run(listen, stats_file, stats_every).await,
        Cmd::Load(args) => load::run(args).await,
        Cmd::Idle(args) => idle::run(args).await,
        Cmd::Stream(args) => stream::run(args).await,
        Cmd::Floor(args) => floor::run(args),
        Cmd::Handshakes(args) => handshakes::run(args).await,
        Cmd::Ports { count } => ports(count),
        Cmd::WaitPort { addr, timeout } => wait_port(addr, timeout).await,
        Cmd::Report { results, targets } => report::run(&results, &targets),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    client::ns_at(std::time::Instant::now());
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = cli.threads {
        builder.worker_threads(n);
    }
    let result = builder
        .build()
        .and_then(|rt| rt.block_on(dispatch(cli.cmd)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsbeat-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
