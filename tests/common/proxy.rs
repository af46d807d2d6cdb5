//! The proxy under test, started in-process exactly as a user configures it: flags parsed by
//! `Cli`, validated by `Config::try_from`, served by `server::run` on listeners bound to port 0.

use std::net::SocketAddr;

use clap::Parser;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use wsbeat::config::{Cli, Config};
use wsbeat::server::ServerError;

/// A running proxy. Dropping it stops the server task.
pub struct TestProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// The admin listener (`/healthz`, `/metrics`).
    pub admin_addr: SocketAddr,
    /// Sends the one drain request `server::run` gets (a stand-in for SIGTERM).
    pub shutdown: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<Result<(), ServerError>>,
}

impl TestProxy {
    /// `ws://` URL of `target` (path and query) on the proxy.
    pub fn ws_url(&self, target: &str) -> String {
        format!("ws://{}{}", self.addr, target)
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}

/// Parses `args` (flags after the program name, `--upstream` among them) the way the binary
/// does, adding `--listen`/`--admin-listen` for two fresh 127.0.0.1:0 listeners.
pub fn proxy_config(args: &[&str], listen: SocketAddr, admin: SocketAddr) -> Config {
    let (listen, admin) = (listen.to_string(), admin.to_string());
    let mut argv = vec!["wsbeat", "--listen", &listen, "--admin-listen", &admin];
    argv.extend_from_slice(args);
    let cli =
        Cli::try_parse_from(argv.iter().copied()).unwrap_or_else(|e| panic!("flags {argv:?}: {e}"));
    Config::try_from(cli).unwrap_or_else(|e| panic!("config {argv:?} refused: {e}"))
}

/// Starts the proxy with `args` on port 0.
pub async fn spawn_proxy(args: &[&str]) -> TestProxy {
    super::init_tracing();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let addr = listener.local_addr().expect("local addr");
    let admin_addr = admin.local_addr().expect("local addr");
    let config = proxy_config(args, addr, admin_addr);
    let (tx, rx) = oneshot::channel::<()>();
    // One drain request: when the test fires it, or when the sender is dropped.
    let shutdown = futures_util::stream::once(async move {
        let _ = rx.await;
    });
    let task = tokio::spawn(wsbeat::server::run(listener, admin, config, shutdown));
    TestProxy {
        addr,
        admin_addr,
        shutdown: Some(tx),
        task,
    }
}

/// Starts the proxy with `--upstream ws://{upstream}` followed by `extra` flags.
pub async fn spawn_proxy_to(upstream: SocketAddr, extra: &[&str]) -> TestProxy {
    let url = format!("ws://{upstream}");
    let mut args = vec!["--upstream", url.as_str()];
    args.extend_from_slice(extra);
    spawn_proxy(&args).await
}

/// Heartbeats off on both legs, for scenarios that count frames exactly.
pub const NO_PINGS: [&str; 6] = [
    "--client-ping-interval",
    "0",
    "--client-pong-timeout",
    "0",
    "--upstream-ping-interval",
    "0",
];
