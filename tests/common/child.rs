//! The `wsbeat` binary as a child process, the way an operator or Kubernetes runs it: JSON logs
//! on stdout are read line by line (to learn the bound addresses and to wait for log lines), and
//! signals are sent with the `kill` command, since the crate forbids `unsafe`.

use std::net::{IpAddr, SocketAddr};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::within;

/// Time a child gets to start and log its addresses: a debug build on a loaded machine is slow.
const START: Duration = Duration::from_secs(20);

/// `wsbeat` with stdin closed, stdout and stderr piped, killed when the handle is dropped.
pub fn wsbeat_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsbeat"));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// A running `wsbeat` process with JSON logs.
pub struct WsbeatProcess {
    pub child: Child,
    /// The client listener, from the "listening" log line.
    pub addr: SocketAddr,
    /// The admin listener, from the same line.
    pub admin_addr: SocketAddr,
    /// Every later log line, parsed.
    pub logs: mpsc::UnboundedReceiver<serde_json::Value>,
}

impl WsbeatProcess {
    /// Starts `wsbeat` on 127.0.0.1 port 0 (client and admin) with `--log-format json` and
    /// `args`, and waits for its "listening" log line.
    pub async fn start(args: &[&str]) -> WsbeatProcess {
        let mut cmd = wsbeat_command();
        cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]);
        Self::start_command(cmd, args).await
    }

    /// As [`WsbeatProcess::start`], with the client listener on `listen` port 0 (for a client
    /// in a network namespace: the root namespace's end of its link).
    pub async fn start_on(listen: IpAddr, args: &[&str]) -> WsbeatProcess {
        let listen = SocketAddr::new(listen, 0).to_string();
        let mut cmd = wsbeat_command();
        cmd.args(["--listen", &listen, "--admin-listen", "127.0.0.1:0"]);
        Self::start_command(cmd, args).await
    }

    /// Starts `cmd` (a `wsbeat` command, perhaps run through `ip netns exec`) with
    /// `--log-format json` and `args`, and waits for its "listening" log line.
    pub async fn start_command(mut cmd: Command, args: &[&str]) -> WsbeatProcess {
        let mut child = cmd
            .args(["--log-format", "json"])
            .args(args)
            .spawn()
            .expect("start wsbeat");
        let mut logs = log_lines(&mut child);
        let listening = within(START, "the \"listening\" log line", async {
            loop {
                let Some(line) = logs.recv().await else {
                    panic!("wsbeat exited before logging \"listening\"");
                };
                if line["fields"]["message"] == "listening" {
                    return line;
                }
            }
        })
        .await;
        let field = |name: &str| -> SocketAddr {
            let raw = listening["fields"][name].as_str();
            raw.and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{name} in {listening}"))
        };
        WsbeatProcess {
            addr: field("listen_addr"),
            admin_addr: field("admin_addr"),
            child,
            logs,
        }
    }

    /// Sends `signal` (`TERM`, `INT`, ...) with the `kill` command.
    pub async fn signal(&self, signal: &str) {
        let pid = self
            .child
            .id()
            .expect("wsbeat is still running")
            .to_string();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid}: {status}");
    }

    /// The exit status within `d`.
    pub async fn exit_status(&mut self, d: Duration) -> ExitStatus {
        within(d, "wsbeat to exit", self.child.wait())
            .await
            .expect("wait for wsbeat")
    }

    /// The next log line whose message is `message`, within `d`; earlier lines are skipped.
    pub async fn log_line(&mut self, message: &str, d: Duration) -> serde_json::Value {
        let what = format!("the log line {message:?}");
        within(d, &what, async {
            loop {
                match self.logs.recv().await {
                    Some(line) if line["fields"]["message"] == message => return line,
                    Some(_) => {}
                    None => panic!("wsbeat's log ended before {message:?}"),
                }
            }
        })
        .await
    }
}

/// Parses the child's stdout as JSON lines on a task of its own, so the child never blocks on a
/// full pipe; lines that are not JSON are skipped.
fn log_lines(child: &mut Child) -> mpsc::UnboundedReceiver<serde_json::Value> {
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(value) = serde_json::from_str(&line) {
                let _ = tx.send(value);
            }
        }
    });
    rx
}
