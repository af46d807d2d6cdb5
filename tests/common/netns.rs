//! Network namespaces for tests that need a peer that is not loopback: two namespaces joined
//! by a veth pair, created by the test and deleted when dropped. Traffic stays between them;
//! nothing reaches the host's own interfaces. Needs root and `ip` (iproute2); without them a
//! test skips, unless `WSBEAT_REQUIRE_ALL=1`.

use std::net::IpAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::process::Command;

use super::skip_or_fail;

/// Two namespaces, `server` and `client`, with one veth pair between them.
pub struct NetnsPair {
    /// Namespace of the process under test.
    pub server: String,
    /// Namespace of the remote peer.
    pub client: String,
    /// The server namespace's address on the veth link.
    pub server_ip: IpAddr,
    /// The client namespace's address on the veth link.
    pub client_ip: IpAddr,
}

/// Runs `ip args`, panicking with its stderr when it fails.
fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

fn has_ip() -> bool {
    std::process::Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|out| out.status.success())
}

impl NetnsPair {
    /// Creates the pair, or returns None (after saying why) when this machine cannot.
    pub fn create(test: &str) -> Option<NetnsPair> {
        if !is_root() {
            skip_or_fail(test, "network namespaces need root");
            return None;
        }
        if !has_ip() {
            skip_or_fail(test, "the ip command (iproute2) is missing");
            return None;
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "{}{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let pair = NetnsPair {
            server: format!("wsbs{tag}"),
            client: format!("wsbc{tag}"),
            server_ip: "10.77.0.1".parse().expect("ip"),
            client_ip: "10.77.0.2".parse().expect("ip"),
        };
        let (vs, vc) = (format!("vs{tag}"), format!("vc{tag}"));
        ip(&["netns", "add", &pair.server]);
        ip(&["netns", "add", &pair.client]);
        ip(&["link", "add", &vs, "type", "veth", "peer", "name", &vc]);
        ip(&["link", "set", &vs, "netns", &pair.server]);
        ip(&["link", "set", &vc, "netns", &pair.client]);
        for (ns, dev, addr) in [
            (&pair.server, &vs, "10.77.0.1/24"),
            (&pair.client, &vc, "10.77.0.2/24"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        Some(pair)
    }

    /// `program` run inside namespace `ns`, with stdin closed and the output piped, killed on
    /// drop (`ip netns exec` execs the program, so the child's pid is the program's).
    pub fn command(&self, ns: &str, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, program])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        // Deleting a namespace also deletes its end of the veth pair, and with it the other.
        for ns in [&self.server, &self.client] {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .output();
        }
    }
}
