//! The `wsbeat` binary: parse the settings, start logging, install the signal handlers, bind the
//! listeners and hand them to [`wsbeat::server::run`]; or, as `wsbeat drain`, ask a running
//! wsbeat to drain. Everything else lives in the library, where tests can reach it.
//!
//! Exit codes: 0 after a clean shutdown, also one forced at the drain deadline (or after
//! `--help`/`--version`, or a drain accepted), 64 (`EX_USAGE`) for invalid settings, 1 for
//! anything that fails at run time, such as an address already in use or a refused drain.
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
use wsbeat::admin::client::{dialable, request_drain, wait_for_exit};
use wsbeat::config::{Cli, Command, Config, DrainArgs, LogFormat, Upstream};
use wsbeat::shutdown::Signals;

/// `EX_USAGE` from sysexits.h: the command was used incorrectly.
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return clap_exit(&err),
    };
    if let Some(Command::Drain(args)) = &cli.command {
        return drain(args);
    }
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
    if let Some(text) = config.relay.text.log_summary() {
        info!(
            text_heartbeats = %text,
            "text heartbeats on; where a session negotiates permessage-deflate, a compressed \
             text ping cannot be recognised and is relayed to the upstream unanswered"
        );
    }
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

/// Installs the signal handlers, then binds every listener before serving, so a taken port
/// fails at startup with its flag named. The handlers come first: once a port is open,
/// Kubernetes may send SIGTERM at any moment, and without a handler it would kill the process.
async fn serve(mut config: Config) -> anyhow::Result<()> {
    let signals = Signals::install().context("installing the SIGTERM/SIGINT handlers")?;
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
    wsbeat::server::run(listener, admin, config, signals.into_requests())
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
        dialable(listen_addr),
    );
    Ok(Upstream::from_addr(demo_addr))
}

async fn bind(flag: &str, addr: SocketAddr, backlog: u32) -> anyhow::Result<TcpListener> {
    wsbeat::net::bind_listener(addr, backlog)
        .with_context(|| format!("cannot listen on {flag} {addr}"))
}

/// `wsbeat drain`: `POST /drain` to the admin listener and, with `--wait`, wait until that
/// wsbeat has exited. Messages go to stderr; the exit code says how it went.
fn drain(args: &DrainArgs) -> ExitCode {
    let Ok(admin) = args.admin.trim().parse::<SocketAddr>() else {
        eprintln!(
            "wsbeat drain: --admin {:?}: expected IP:PORT, e.g. 127.0.0.1:9090",
            args.admin
        );
        return ExitCode::from(EX_USAGE);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("wsbeat drain: starting the tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        if let Err(err) = request_drain(admin).await {
            eprintln!("wsbeat drain: {err}");
            return ExitCode::FAILURE;
        }
        eprintln!("wsbeat drain: drain accepted by {}", dialable(admin));
        if args.wait {
            wait_for_exit(admin).await;
            eprintln!("wsbeat drain: wsbeat at {} has exited", dialable(admin));
        }
        ExitCode::SUCCESS
    })
}
