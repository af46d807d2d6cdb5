//! The `wsbeat` binary as a user runs it: invalid settings are all reported at once with exit
//! code 64 (from flags or `WSBEAT_*` variables), and the README's quick start (`--demo`) proxies
//! to an echo upstream that never answers pings, then stops cleanly on SIGTERM.

mod common;

use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

fn wsbeat() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsbeat"));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn finish(cmd: &mut Command) -> Output {
    let child = cmd.spawn().expect("start wsbeat");
    within(STEP, "wsbeat to exit", child.wait_with_output())
        .await
        .expect("wsbeat output")
}

#[tokio::test]
async fn invalid_settings_are_reported_together_with_exit_code_64() {
    let out = finish(wsbeat().args([
        "--upstream",
        "ws://127.0.0.1:9",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--client-ping-interval",
        "0",
        "--max-frame-size",
        "0",
    ]))
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "stderr: {stderr}");
    // Both problems in one report, each naming its flag.
    assert!(stderr.contains("--max-frame-size"), "stderr: {stderr}");
    assert!(
        stderr.contains("--client-pong-timeout") || stderr.contains("--client-ping-interval"),
        "stderr: {stderr}"
    );
}

#[tokio::test]
async fn settings_are_read_from_wsbeat_environment_variables() {
    let out = finish(
        wsbeat()
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .env("WSBEAT_UPSTREAM", "ws://127.0.0.1:9")
            .env("WSBEAT_MAX_FRAME_SIZE", "0"),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "stderr: {stderr}");
    assert!(
        stderr.contains("max-frame-size") || stderr.contains("MAX_FRAME_SIZE"),
        "stderr: {stderr}"
    );
}

#[tokio::test]
async fn missing_upstream_is_a_usage_error() {
    let out = finish(wsbeat().args(["--listen", "127.0.0.1:0"])).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "stderr: {stderr}");
    assert!(stderr.contains("--upstream"), "stderr: {stderr}");
}

/// Reads JSON log lines from the child's stdout until the "listening" line; returns the
/// client-facing address it names.
async fn listening_addr(child: &mut Child) -> SocketAddr {
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = within(
        Duration::from_secs(20),
        "the \"listening\" log line",
        async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if v["fields"]["message"] == "listening" {
                    let addr = v["fields"]["listen_addr"]
                        .as_str()
                        .expect("listen_addr field");
                    return addr.parse().expect("listen_addr");
                }
            }
            panic!("wsbeat exited before logging \"listening\"");
        },
    )
    .await;
    // Keep draining the log so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    addr
}

#[tokio::test]
async fn demo_quick_start_echoes_and_stops_cleanly_on_sigterm() {
    let mut child = wsbeat()
        .args([
            "--demo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--log-format", "json", "--upstream-ping-interval", "50ms"])
        .spawn()
        .expect("start wsbeat --demo");
    let addr = listening_addr(&mut child).await;
    let (mut ws, _) = ws_connect(format!("ws://{addr}/demo")).await;
    // The demo upstream never answers the proxy's pings; the session lives on regardless.
    stay_quiet_for(&mut ws, Duration::from_millis(500)).await;
    assert_echo(&mut ws, "quick start").await;

    let pid = child.id().expect("pid").to_string();
    let kill = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill");
    assert!(kill.success());
    let close = expect_client_close(&mut ws, STEP)
        .await
        .expect("a close code");
    assert_eq!(u16::from(close.code), 1001, "shutdown close: {close:?}");
    // Reading on sends tungstenite's close reply, completing the close handshake.
    let rest = within(STEP, "the client stream to end", ws.next()).await;
    assert!(
        rest.is_none() || matches!(rest, Some(Err(_))),
        "after close: {rest:?}"
    );
    let status = within(Duration::from_secs(10), "wsbeat to exit", child.wait())
        .await
        .expect("wait");
    assert!(status.success(), "exit after SIGTERM: {status}");
}
