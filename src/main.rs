//! The `wsbeat` binary: parse the settings, start logging, bind the listeners and hand them to
//! [`wsbeat::server::run`]. Everything else lives in the library, where tests can reach it.
//!
//! Exit codes: 0 after a clean shutdown (or `--help`/`--version`), 64 (`EX_USAGE`) for invalid
//! settings, 1 for anything that fails at run time, such as an address already in use.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use clap::error::ErrorKind;
use tokio::net::TcpListener;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;
use wsbeat::config::{Cli, Config, LogFormat, Upstream};

/// `EX_USAGE` from sysexits.h: the command was used incorrectly.
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return clap_exit(&err),
    };
    let config = match Config::try_from(cli) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("wsbeat: {err}");
            return ExitCode::from(EX_USAGE);
        }
    };
    if let Err(err) = init_tracing(&config) {
        eprintln!(
            "wsbeat: --log-level {:?}: {err:#}",
            config.process.log_level
        );
        return ExitCode::from(EX_USAGE);
    }
    info!(config = %config.log_summary(), "effective configuration");
    for warning in config.warnings() {
        warn!("{warning}");
    }
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!(error = %format_args!("{err:#}"), "wsbeat stopped");
            ExitCode::FAILURE
        }
    }
}

/// `--help` and `--version` go to stdout with status 0; real usage errors exit with 64.
fn clap_exit(err: &clap::Error) -> ExitCode {
    // Nothing useful is left to do if the terminal is gone.
    let _ = err.print();
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
        _ => ExitCode::from(EX_USAGE),
    }
}

/// Installs the global subscriber in the configured format, filtered by `--log-level`.
fn init_tracing(config: &Config) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&config.process.log_level)?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match config.process.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    }
    .map_err(|e| anyhow::anyhow!(e))
}

/// Builds the runtime and runs the proxy until the shutdown signal has been handled. This
/// thread only accepts connections and serves the admin endpoints; sessions run on
/// `--worker-threads` relay threads of their own.
fn run(config: Config) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(serve(config))
}

/// Listen queue of the admin port (scrapers beyond `--admin-max-connections` wait here) and
/// of the demo upstream.
const ADMIN_BACKLOG: u32 = 128;

/// Binds every listener before serving, so a taken port fails at startup with its flag named.
async fn serve(mut config: Config) -> anyhow::Result<()> {
    let listener = bind("--listen", config.listen.client, config.listen.backlog).await?;
    let admin = bind("--admin-listen", config.listen.admin, ADMIN_BACKLOG).await?;
    let listen_addr = listener
        .local_addr()
        .context("reading the --listen address")?;
    let admin_addr = admin
        .local_addr()
        .context("reading the --admin-listen address")?;
    info!(%listen_addr, %admin_addr, "listening");
    if let Some(addr) = config.demo {
        config.upstream.url = start_demo(addr, listen_addr).await?;
    }
    wsbeat::server::run(listener, admin, config, wsbeat::shutdown::signal())
        .await
        .context("server failed")
}

/// Starts the in-process demo upstream and returns it as the upstream to proxy to.
async fn start_demo(addr: SocketAddr, listen_addr: SocketAddr) -> anyhow::Result<Upstream> {
    let listener = bind("--demo-listen", addr, ADMIN_BACKLOG).await?;
    let demo_addr = listener
        .local_addr()
        .context("reading the --demo-listen address")?;
    tokio::spawn(wsbeat::demo::serve(listener));
    info!(
        upstream = %demo_addr,
        "demo mode: proxying to an in-process echo upstream that never answers pings, \
         as legacy backends often do; try `websocat ws://{}/`",
        reachable(listen_addr),
    );
    Ok(Upstream::from_addr(demo_addr))
}

async fn bind(flag: &str, addr: SocketAddr, backlog: u32) -> anyhow::Result<TcpListener> {
    wsbeat::net::bind_listener(addr, backlog)
        .with_context(|| format!("cannot listen on {flag} {addr}"))
}

/// A wildcard listen address is not something a client can dial; suggest loopback instead.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) if v4.ip().is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], v4.port()))
        }
        SocketAddr::V6(v6) if v6.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, v6.port()))
        }
        other => other,
    }
}
