//! Peers that are other programs: faye-websocket-ruby under thin, and Python `websockets`
//! permessage-deflate peers. `./scripts/test.sh` installs both. When one is missing, a test
//! prints "skipped: ..." and returns, unless `WSBEAT_REQUIRE_ALL=1`, when it fails.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

use super::{assert_eventually, within};

/// thin's inactivity timeout in seconds (its `--timeout`): a legacy deployment that cuts idle
/// connections, shorter than the silences the faye tests keep.
pub const THIN_IDLE_SECS: u64 = 1;

/// Reports a missing prerequisite: panics under `WSBEAT_REQUIRE_ALL=1`, else prints "skipped".
pub fn skip_or_fail(test: &str, missing: &str) {
    let msg = format!("{test}: {missing} (./scripts/test.sh installs it)");
    if std::env::var("WSBEAT_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("{msg}; WSBEAT_REQUIRE_ALL=1 forbids skipping");
    }
    eprintln!("skipped: {msg}");
}

/// Whether thin and faye-websocket can run here; reports what is missing otherwise.
pub async fn faye_available(test: &str) -> bool {
    let thin = Command::new("thin").arg("--version").output().await;
    let faye = Command::new("ruby")
        .args(["-e", "require 'faye/websocket'"])
        .output()
        .await;
    let missing = match (&thin, &faye) {
        (Ok(t), Ok(f)) if t.status.success() && f.status.success() => return true,
        (Ok(t), _) if t.status.success() => "the ruby-faye-websocket package is not installed",
        _ => "the thin package is not installed",
    };
    skip_or_fail(test, missing);
    false
}

/// thin serving `tests/faye/config.ru` (a faye-websocket echo app) on 127.0.0.1; killed on
/// drop.
pub struct Faye {
    pub addr: SocketAddr,
    _child: Child,
}

pub async fn spawn_faye() -> Faye {
    // thin takes a port number, not a bound socket: take a free one from the kernel.
    let probe = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = probe.local_addr().expect("addr");
    drop(probe);
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/faye/config.ru");
    let (port, idle) = (addr.port().to_string(), THIN_IDLE_SECS.to_string());
    let child = Command::new("thin")
        .args([
            "start",
            "--rackup",
            config,
            "--address",
            "127.0.0.1",
            "--quiet",
        ])
        .args(["--port", &port, "--timeout", &idle])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start thin");
    assert_eventually(Duration::from_secs(20), "thin to listen", || async {
        TcpStream::connect(addr).await.is_ok()
    })
    .await;
    Faye {
        addr,
        _child: child,
    }
}

/// `tests/deflate/ws_peer.py`.
pub fn py_peer_script() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/deflate/ws_peer.py")
}

/// The Python with `websockets` that `./scripts/test.sh` prepared (`WSBEAT_TEST_PYTHON`).
pub fn test_python(test: &str) -> Option<PathBuf> {
    match std::env::var_os("WSBEAT_TEST_PYTHON") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            skip_or_fail(
                test,
                "WSBEAT_TEST_PYTHON (a Python with `websockets`) is not set",
            );
            None
        }
    }
}

/// The Python `websockets` echo server with permessage-deflate; killed on drop.
pub struct PyDeflateServer {
    pub addr: SocketAddr,
    _child: Child,
}

pub async fn spawn_py_deflate_server(python: &PathBuf) -> PyDeflateServer {
    let mut child = Command::new(python)
        .args([py_peer_script(), "server"])
        .stdin(Stdio::piped()) // held open: the server exits when it closes
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", python.display()));
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    within(
        Duration::from_secs(20),
        "the Python server's port",
        BufReader::new(stdout).read_line(&mut line),
    )
    .await
    .expect("read python stdout");
    let port: u16 = line
        .strip_prefix("PORT ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!("Python server did not start (said {line:?}); is `websockets` installed?")
        });
    PyDeflateServer {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        _child: child,
    }
}

/// Runs the Python `websockets` client against `url` and returns its JSON report.
pub async fn run_py_deflate_client(python: &PathBuf, url: &str) -> serde_json::Value {
    let child = Command::new(python)
        .args([py_peer_script(), "client", url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", python.display()));
    let out = within(
        Duration::from_secs(60),
        "the Python client",
        child.wait_with_output(),
    )
    .await
    .expect("python client");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "Python client failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("client report {stdout:?}: {e}"))
}
