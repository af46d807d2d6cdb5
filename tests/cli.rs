//! The `wsbeat` binary as a user runs it: invalid settings are all reported at once with exit
//! code 64 (from flags or `WSBEAT_*` variables), and the README's quick start (`--demo`) proxies
//! to an echo upstream that never answers pings, then stops cleanly on SIGTERM.

mod common;

use std::process::Output;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use tokio::process::Command;

fn wsbeat() -> Command {
    wsbeat_command()
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

#[tokio::test]
async fn demo_quick_start_echoes_and_stops_cleanly_on_sigterm() {
    let mut child = WsbeatProcess::start(&[
        "--demo",
        "--upstream-ping-interval",
        "50ms",
        "--drain-delay",
        "100ms",
    ])
    .await;
    let addr = child.addr;
    let (mut ws, _) = ws_connect(format!("ws://{addr}/demo")).await;
    // The demo upstream never answers the proxy's pings; the session lives on regardless.
    stay_quiet_for(&mut ws, Duration::from_millis(500)).await;
    assert_echo(&mut ws, "quick start").await;

    child.signal("TERM").await;
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
    let status = child.exit_status(Duration::from_secs(10)).await;
    assert!(status.success(), "exit after SIGTERM: {status}");
}

/// Heartbeat periods below 10 ms are refused before any port is bound, with the flag named,
/// whether they come from a flag or a `WSBEAT_*` variable.
#[tokio::test]
async fn heartbeat_periods_below_10ms_are_a_usage_error() {
    let out = finish(
        wsbeat()
            .args(["--upstream", "ws://127.0.0.1:9", "--listen", "127.0.0.1:0"])
            .args([
                "--admin-listen",
                "127.0.0.1:0",
                "--client-ping-interval",
                "1ms",
            ])
            .env("WSBEAT_UPSTREAM_PONG_TIMEOUT", "0.001ms"),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "stderr: {stderr}");
    for flag in ["--client-ping-interval 1ms", "--upstream-pong-timeout 1µs"] {
        assert!(
            stderr.contains(&format!("{flag}: below the 10ms minimum")),
            "{flag}: {stderr}"
        );
    }
}
