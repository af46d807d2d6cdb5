//! Network namespaces for tests that need a peer that is not loopback, created by the test and
//! deleted when dropped, also when the test failed. Two shapes:
//!
//! - [`NetnsPair`]: two namespaces joined by a veth pair; the process under test runs in one,
//!   its peer in the other. Traffic stays between them; nothing reaches the host's own
//!   interfaces.
//! - [`Netns`]: a host of its own for a peer, one namespace joined by a veth pair with a /30 of
//!   its own to the root namespace, where wsbeat runs. The peer can vanish for real (its
//!   packets dropped inside its namespace, no FIN, no RST) while wsbeat keeps running; each
//!   [`Netns`] has a unique name and /30, so tests run in parallel, and traffic only ever goes
//!   to the two addresses of that /30.
//!
//! Both need root and `ip` (iproute2), and [`Netns`] also `iptables`: without them a test
//! skips, unless `WSBEAT_REQUIRE_ALL=1`.

use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use super::{skip_or_fail, within};

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
            "{}x{}",
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

/// The /30s are taken from 10.250.0.0/16: 16384 of them.
const SUBNET_BASE: [u8; 2] = [10, 250];
const SUBNETS: u32 = 1 << 14;

/// Runs `program args` with `input` on its stdin (`ip -batch -`, `tc -batch -`); its stderr
/// on failure.
fn run_batch(program: &str, args: &[&str], input: &str) -> Result<(), String> {
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let mut stdin = child.stdin.take().expect("stdin");
    std::io::Write::write_all(&mut stdin, input.as_bytes())
        .map_err(|e| format!("{program}: writing the batch: {e}"))?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{program}: {e}"))?;
    outcome(program, args, &out)
}

/// Runs `program args` to completion; its stderr on failure.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    outcome(program, args, &out)
}

/// What a finished `program args` says: nothing, or its stderr when it failed.
fn outcome(program: &str, args: &[&str], out: &std::process::Output) -> Result<(), String> {
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A /30 of 10.250.0.0/16 that no route of the root namespace covers yet, trying 64 from the
/// `seed`th on: another test process may hold some.
fn free_subnet(seed: u32) -> Option<Ipv4Addr> {
    let base = u32::from(Ipv4Addr::new(SUBNET_BASE[0], SUBNET_BASE[1], 0, 0));
    (0..64)
        .map(|i| (seed.wrapping_add(i) % SUBNETS) << 2)
        .find_map(|offset| {
            let net = Ipv4Addr::from(base + offset);
            let prefix = format!("{net}/30");
            let routes = std::process::Command::new("ip")
                .args(["-4", "route", "show", "exact", &prefix])
                .output()
                .ok()?;
            (routes.status.success() && routes.stdout.is_empty()).then_some(net)
        })
}

/// Bytes a slow link's bottleneck holds before it drops (see [`Netns::slow_link`]).
pub const SLOW_LINK_QUEUE: u32 = 1 << 20;

/// The bucket of a slow link: three segments. The veth hands `tbf` packets of up to 64 KiB
/// (GSO); `tbf` cuts those larger than its bucket into segments, and sends smaller ones whole.
/// A 16 KiB bucket let 16 KiB leave at once every 250 ms at 64 KiB/s, and a peer acknowledged
/// only that often, which no real link does; with this one, every 50 ms at most.
pub const SLOW_LINK_BURST: u32 = 4096;

/// The `tc` command (without `tc`) that makes `dev`'s egress a link of `rate` bytes per second.
fn tbf(dev: &str, rate: u64) -> String {
    format!(
        "qdisc replace dev {dev} root tbf rate {}bit burst {SLOW_LINK_BURST} limit {SLOW_LINK_QUEUE}",
        rate * 8
    )
}

/// A network namespace with one veth link to the root namespace.
pub struct Netns {
    /// The namespace's name (`ip netns exec NAME …`).
    pub name: String,
    /// The root namespace's end of the link: where wsbeat listens for a peer in here.
    pub host_ip: Ipv4Addr,
    /// The namespace's own address: where a peer in here listens.
    pub peer_ip: Ipv4Addr,
    /// The root namespace's end of the veth link.
    host_if: String,
}

impl Netns {
    /// Creates a namespace for `test`, or reports why it cannot (see the module doc) and
    /// returns `None`.
    pub fn create(test: &str) -> Option<Netns> {
        if let Err(e) = run("iptables-restore", &["--version"]) {
            skip_or_fail(test, &format!("iptables is not installed ({e})"));
            return None;
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        if n == 0 {
            Netns::reclaim_stale();
        }
        let pid = std::process::id();
        let Some(base) = free_subnet(pid.wrapping_mul(64).wrapping_add(n)) else {
            panic!("{test}: no free /30 in 10.250.0.0/16 for a test namespace");
        };
        let ns = Netns {
            name: format!("{TEST_NS_PREFIX}{}-{n}", owner()),
            host_ip: Ipv4Addr::from(u32::from(base) + 1),
            peer_ip: Ipv4Addr::from(u32::from(base) + 2),
            // Interface names are limited to 15 bytes; the namespace's end can have any name.
            host_if: format!("wsb{pid}h{n}"),
        };
        // Packets for the test range must never follow the default route out of the machine,
        // whatever happens to a namespace or to the cleanup below: an `unreachable` route for
        // the whole range drops them here. Each namespace's /30 is more specific and wins
        // while it exists. Idempotent, and harmless to leave in place.
        let range = format!("{}.{}.0.0/16", SUBNET_BASE[0], SUBNET_BASE[1]);
        if let Err(e) = run("ip", &["route", "replace", "unreachable", &range]) {
            panic!("{test}: cannot fence off {range}: {e}");
        }
        if let Err(e) = run("ip", &["netns", "add", &ns.name]) {
            skip_or_fail(test, &format!("cannot create a network namespace: {e}"));
            return None;
        }
        // From here on, dropping `ns` cleans up whatever was made.
        if let Err(e) = ns.link() {
            panic!("{test}: setting up namespace {}: {e}", ns.name);
        }
        Some(ns)
    }

    fn link(&self) -> Result<(), String> {
        let host_if = self.host_if.as_str();
        let (host, peer) = (
            format!("{}/30", self.host_ip),
            format!("{}/30", self.peer_ip),
        );
        run(
            "ip",
            &[
                "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", &self.name,
            ],
        )?;
        run("ip", &["addr", "add", &host, "dev", host_if])?;
        run("ip", &["link", "set", host_if, "up"])?;
        let ns = self.name.as_str();
        run("ip", &["-n", ns, "addr", "add", &peer, "dev", "eth0"])?;
        run("ip", &["-n", ns, "link", "set", "eth0", "up"])?;
        run("ip", &["-n", ns, "link", "set", "lo", "up"])
    }

    /// Makes the link toward the namespace a slow one: `rate` bytes per second from the root
    /// namespace in, as on a mobile network, with a bottleneck queue deep enough
    /// ([`SLOW_LINK_QUEUE`]) that it does not drop (drops add retransmission stalls of their
    /// own). The namespace's host still takes every byte the moment it arrives, so its kernel
    /// acknowledges at the link's pace, unlike a fast link to a program that reads slowly.
    pub fn slow_link(&self, test: &str, rate: u64) -> bool {
        let args = tbf(&self.host_if, rate);
        let args: Vec<&str> = args.split(' ').collect();
        match run("tc", &args) {
            Ok(()) => true,
            Err(e) => {
                skip_or_fail(test, &format!("cannot shape the link with tc: {e}"));
                false
            }
        }
    }

    /// `program` to be run inside the namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Makes the host vanish: from now on every packet into or out of the namespace is
    /// dropped inside it, in one atomic ruleset change. The link stays up, as it would behind
    /// a router: wsbeat's side sees nothing at all, no FIN, no RST, no ICMP.
    pub fn vanish(&self) {
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", &self.name, "iptables-restore"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("start iptables-restore");
        let rules = "*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT DROP [0:0]\nCOMMIT\n";
        std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), rules.as_bytes())
            .expect("write rules");
        let status = child.wait().expect("wait for iptables-restore");
        assert!(
            status.success(),
            "iptables-restore in {}: {status}",
            self.name
        );
    }
}

impl Netns {
    /// Deletes the namespaces of test processes that are gone without cleaning up (killed, so
    /// no `Drop` ran): each would otherwise keep its veth link and /30 for good.
    fn reclaim_stale() {
        for (name, _) in stale_namespaces(TEST_NS_PREFIX) {
            // The namespace's own address is its peer's, toward which root sockets may linger.
            let peer = std::process::Command::new("ip")
                .args(["-n", &name, "-4", "-o", "addr", "show", "dev", "eth0"])
                .output()
                .ok()
                .and_then(|out| {
                    let text = String::from_utf8_lossy(&out.stdout).into_owned();
                    let mut words = text.split_whitespace();
                    words.find(|&w| w == "inet")?;
                    Some(words.next()?.split('/').next()?.to_owned())
                });
            eprintln!("netns: reclaiming {name}, left by a process that is gone");
            remove_namespace(&name, peer.as_deref());
        }
    }
}

impl Drop for Netns {
    /// Runs after the test's processes were killed (they are declared later, so dropped
    /// earlier); see [`remove_namespace`].
    fn drop(&mut self) {
        remove_namespace(&self.name, Some(&self.peer_ip.to_string()));
    }
}

/// Namespaces of [`Netns`] are named `wsbeat-test-OWNER-N`: the test process that made it (see
/// [`owner`]), and its count of namespaces made.
const TEST_NS_PREFIX: &str = "wsbeat-test-";

/// This process as namespace names record it: `PID.START`, START being its start time in clock
/// ticks since boot, so that the namespace of a killed process is told from one of a live
/// process that was given the same pid.
fn owner() -> String {
    let pid = std::process::id();
    format!("{pid}.{}", start_time(pid).unwrap_or(0))
}

/// Field 22 of `/proc/PID/stat`: when the process started.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count from its closing parenthesis.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Whether the process an [`owner`] string names is still running.
fn owner_alive(owner: &str) -> bool {
    let Some((pid, start)) = owner.split_once('.') else {
        return true;
    };
    match (pid.parse(), start.parse::<u64>()) {
        (Ok(pid), Ok(start)) => start_time(pid) == Some(start),
        _ => true,
    }
}

/// Names of the namespaces `PREFIX` + `OWNER-REST` whose owner is gone, each with its REST.
/// Processes still inside one (a peer its killed test left running) are killed: they would
/// keep it, its link and its route alive after `ip netns del`.
fn stale_namespaces(prefix: &str) -> Vec<(String, String)> {
    let Ok(list) = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter_map(|line| {
            let name = line.split_whitespace().next()?;
            let (owner, rest) = name.strip_prefix(prefix)?.split_once('-')?;
            (!owner_alive(owner)).then(|| (name.to_owned(), rest.to_owned()))
        })
        .inspect(|(name, _)| {
            let pids = std::process::Command::new("ip")
                .args(["netns", "pids", name])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for pid in pids.split_whitespace() {
                let _ = run("kill", &["-KILL", pid]);
            }
        })
        .collect()
}

/// Deletes a [`Netns`] namespace whose peer address is `peer`. Sockets in the root namespace
/// can outlive the test's processes: a connection wsbeat closed toward the vanished host stays
/// in FIN-WAIT-1 and retransmits for minutes. Once the namespace and its route are gone, those
/// retransmissions would follow the default route out of the machine, so they are destroyed
/// first (`ss -K`), while their packets can still only reach the namespace.
fn remove_namespace(name: &str, peer: Option<&str>) {
    if let Some(peer) = peer {
        if let Err(e) = run("ss", &["-K", "-t", "-a", "dst", peer]) {
            eprintln!("cleanup: {e}");
        }
        let left = std::process::Command::new("ss")
            .args(["-t", "-a", "-n", "-H", "dst", peer])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if !left.trim().is_empty() {
            eprintln!("cleanup: sockets toward {peer} survived `ss -K`:\n{left}");
        }
    }
    // The peer's own sockets, orphaned in the namespace (its host vanished with them
    // unacknowledged), would keep the namespace, its link and the /30 route alive for
    // minutes after `ip netns del`.
    if let Err(e) = run("ip", &["netns", "exec", name, "ss", "-K", "-t", "-a"]) {
        eprintln!("cleanup: {e}");
    }
    if let Err(e) = run("ip", &["netns", "del", name]) {
        eprintln!("cleanup: {e}");
    }
}

/// `tests/vanish/peer.py`.
fn peer_script() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vanish/peer.py")
}

/// How a peer reads.
#[derive(Clone, Copy, Debug)]
pub struct Reading {
    /// Bytes per second; 0 reads as fast as possible.
    pub rate: u64,
    /// SO_RCVBUF; 0 leaves the kernel's autotuned default. A small one keeps what the peer has
    /// not read on wsbeat's side of the connection.
    pub rcvbuf: u32,
}

impl Reading {
    /// As fast as possible, default buffers.
    pub const FULL_SPEED: Reading = Reading { rate: 0, rcvbuf: 0 };
}

/// `tests/vanish/peer.py` running in a namespace; killed on drop. Its stdout lines are
/// collected as they come.
pub struct NsPeer {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// Held open: the peer exits when it closes.
    _stdin: Option<ChildStdin>,
}

impl NsPeer {
    /// A WebSocket server on the namespace's address; returns it with its address.
    pub async fn server(ns: &Netns, python: &Path, reading: Reading) -> (NsPeer, SocketAddr) {
        let ip = ns.peer_ip.to_string();
        let mut peer = NsPeer::start(ns, python, "server", &ip, reading);
        let line = peer.line("PORT ", Duration::from_secs(20)).await;
        let port: u16 = line.trim().parse().expect("port");
        (peer, SocketAddr::from((ns.peer_ip, port)))
    }

    /// A WebSocket client of `ws://{addr}/`; returns once its handshake is done.
    pub async fn client(ns: &Netns, python: &Path, addr: SocketAddr, reading: Reading) -> NsPeer {
        let mut peer = NsPeer::start(ns, python, "client", &addr.to_string(), reading);
        peer.line("OPEN", Duration::from_secs(20)).await;
        peer
    }

    fn start(ns: &Netns, python: &Path, role: &str, addr: &str, reading: Reading) -> NsPeer {
        let (rate, rcvbuf) = (reading.rate.to_string(), reading.rcvbuf.to_string());
        let mut child = ns
            .command(python)
            .arg(peer_script())
            .args([role, addr, &rate, &rcvbuf])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {} in {}: {e}", python.display(), ns.name));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut stdout = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = stdout.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        NsPeer {
            child,
            lines,
            _stdin: stdin,
        }
    }

    /// Waits up to `d` for a line starting with `prefix`; returns the rest of it.
    pub async fn line(&mut self, prefix: &str, d: Duration) -> String {
        let what = format!("\"{prefix}\" from the peer");
        within(d, &what, async {
            while let Some(line) = self.lines.recv().await {
                if let Some(rest) = line.strip_prefix(prefix) {
                    return rest.to_owned();
                }
            }
            let status = self.child.wait().await;
            panic!("the peer exited before saying \"{prefix}\": {status:?}")
        })
        .await
    }

    /// Waits up to `d` until the peer has read at least `bytes` of data payload.
    pub async fn read_at_least(&mut self, bytes: u64, d: Duration) {
        within(d, "the peer's reading progress", async {
            loop {
                let n: u64 = self.line("READ ", d).await.parse().expect("READ count");
                if n >= bytes {
                    return;
                }
            }
        })
        .await;
    }

    /// Stops the peer's process (SIGSTOP): its host keeps acknowledging TCP segments, but the
    /// program neither reads nor answers.
    pub fn freeze(&self) {
        let pid = self.child.id().expect("peer still running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .expect("kill -STOP");
        assert!(status.success(), "kill -STOP {pid}: {status}");
    }
}

/// Hosts for many clients on slow links at once: one namespace with a veth link per client,
/// each a /30 of its own and shaped as [`Netns::slow_link`] shapes one. A socket made with
/// [`SlowLinks::socket`] lives in the namespace and goes out over its own link, whichever
/// thread then drives it. Deleted on drop.
pub struct SlowLinks {
    name: String,
    /// Per link: the root namespace's end (where wsbeat listens) and the client's address.
    pub links: Vec<(Ipv4Addr, Ipv4Addr)>,
    /// The /21 the links' /30s come from, claimed by a route of its own.
    block: String,
}

/// The links' /30s come from 10.251.0.0/16, a /21 (512 links) per test process.
const LINKS_BASE: [u8; 2] = [10, 251];
const LINKS_PER_BLOCK: usize = 512;
/// Namespaces of slow links are named `wsbeat-links-PID-THIRD`: the test process that made it,
/// and the third octet of its /21.
const LINKS_NS_PREFIX: &str = "wsbeat-links-";

impl SlowLinks {
    /// One link per entry of `rates` (bytes per second), or None (after saying why) when this
    /// machine cannot.
    pub fn create(test: &str, rates: &[u64]) -> Option<SlowLinks> {
        assert!(rates.len() <= LINKS_PER_BLOCK, "{} links", rates.len());
        if !is_root() {
            skip_or_fail(test, "network namespaces need root");
            return None;
        }
        if let Err(e) = run("tc", &["-V"]) {
            skip_or_fail(test, &format!("tc (iproute2) is missing: {e}"));
            return None;
        }
        // As for `Netns`: nothing for the range ever follows the default route.
        let range = format!("{}.{}.0.0/16", LINKS_BASE[0], LINKS_BASE[1]);
        if let Err(e) = run("ip", &["route", "replace", "unreachable", &range]) {
            panic!("{test}: cannot fence off {range}: {e}");
        }
        let pid = std::process::id();
        SlowLinks::reclaim_stale();
        // A /21 is claimed with a route of its own: adding it fails if another test process
        // holds it. The links' /30s are more specific and win while they exist.
        let Some(third) = (0..32u32).map(|i| ((pid + i) % 32) * 8).find(|&third| {
            run("ip", &["route", "add", "unreachable", &links_block(third)]).is_ok()
        }) else {
            panic!("{test}: no free /21 in {range} for slow links");
        };
        let base = u32::from(Ipv4Addr::new(LINKS_BASE[0], LINKS_BASE[1], third as u8, 0));
        let mut slow = SlowLinks {
            name: format!("{LINKS_NS_PREFIX}{}-{third}", owner()),
            links: Vec::new(),
            block: links_block(third),
        };
        if let Err(e) = run("ip", &["netns", "add", &slow.name]) {
            skip_or_fail(test, &format!("cannot create a network namespace: {e}"));
            return None;
        }
        // From here on, dropping `slow` cleans up whatever was made.
        let (mut host, mut inside, mut shape) = (String::new(), String::new(), String::new());
        inside.push_str("link set lo up\n");
        for (i, &rate) in rates.iter().enumerate() {
            let net = base + 4 * i as u32;
            let (h, p) = (Ipv4Addr::from(net + 1), Ipv4Addr::from(net + 2));
            let (dev, peer_dev) = (format!("wl{}x{i}", pid % 100_000), format!("e{i}"));
            host.push_str(&format!(
                "link add {dev} type veth peer name {peer_dev} netns {name}\n\
                 addr add {h}/30 dev {dev}\nlink set {dev} up\n",
                name = slow.name
            ));
            inside.push_str(&format!(
                "addr add {p}/30 dev {peer_dev}\nlink set {peer_dev} up\n"
            ));
            shape.push_str(&tbf(&dev, rate));
            shape.push('\n');
            slow.links.push((h, p));
        }
        let made = run_batch("ip", &["-batch", "-"], &host)
            .and_then(|()| run_batch("ip", &["-n", &slow.name, "-batch", "-"], &inside))
            .and_then(|()| run_batch("tc", &["-batch", "-"], &shape));
        if let Err(e) = made {
            panic!("{test}: setting up {} slow links: {e}", rates.len());
        }
        Some(slow)
    }

    /// Deletes the namespaces and /21 claims of test processes that are gone without cleaning
    /// up (killed): otherwise each would hold its /21 for good.
    fn reclaim_stale() {
        for (name, third) in stale_namespaces(LINKS_NS_PREFIX) {
            let block = links_block(third);
            eprintln!("slow links: reclaiming {name} and {block}, left by a process that is gone");
            remove_links(&name, &block);
        }
    }

    /// A TCP socket in the namespace, bound to link `i`'s client address: connected to that
    /// link's root-namespace address, it goes over that link.
    pub fn socket(&self, i: usize) -> socket2::Socket {
        let path = format!("/var/run/netns/{}", self.name);
        let local = SocketAddr::from((self.links[i].1, 0));
        // A thread of its own enters the namespace; the socket stays in it after the thread
        // is gone.
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&ns),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            let socket = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )
            .expect("socket");
            socket
                .bind(&local.into())
                .expect("bind to the link's address");
            socket
        })
        .join()
        .expect("the namespace thread")
    }
}

impl Drop for SlowLinks {
    fn drop(&mut self) {
        remove_links(&self.name, &self.block);
    }
}

/// The /21 of slow links whose third octet starts at `third`, claimed by a route of its own.
fn links_block(third: impl std::fmt::Display) -> String {
    format!("{}.{}.{third}.0/21", LINKS_BASE[0], LINKS_BASE[1])
}

/// Deletes slow links' namespace `name` and the claim on its /21 `block`. As for [`Netns`]:
/// root-namespace sockets toward the links go first, while their packets can still only reach
/// the namespace.
fn remove_links(name: &str, block: &str) {
    if let Err(e) = run("ss", &["-K", "-t", "-a", "dst", block]) {
        eprintln!("cleanup: {e}");
    }
    if let Err(e) = run("ip", &["netns", "del", name]) {
        eprintln!("cleanup: {e}");
    }
    if let Err(e) = run("ip", &["route", "del", "unreachable", block]) {
        eprintln!("cleanup: {e}");
    }
}
