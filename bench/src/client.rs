//! Client-side pieces shared by the `load`, `idle`, `stream` and `handshakes` drivers: the
//! target URL (`ws://` or `wss://`), opening upgraded connections, the message format (a send timestamp in the first 8 payload
//! bytes), and the one-line `RESULT key=value ...` output that `run.sh` parses.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::tls::{Conn, Tls, TlsArgs};
use crate::ws::{self, Rng};

/// Where to connect: `ws://host:port/path` or `wss://host:port/path`.
#[derive(Clone)]
pub struct Target {
    /// Resolved once, before any measurement.
    pub addr: SocketAddr,
    /// Host header value.
    pub host: String,
    /// Request path.
    pub path: String,
    /// Set for `wss://`.
    pub tls: Option<Tls>,
}

impl Target {
    /// Parses and resolves a `ws://` or `wss://` URL; `wss://` needs `tls.tls_ca`.
    ///
    /// # Errors
    /// Fails on another scheme, an unresolvable host, or a `wss://` URL without a usable CA.
    pub fn parse(url: &str, tls: &TlsArgs) -> io::Result<Self> {
        let (rest, secure) = if let Some(rest) = url.strip_prefix("ws://") {
            (rest, false)
        } else if let Some(rest) = url.strip_prefix("wss://") {
            (rest, true)
        } else {
            return Err(io::Error::other("only ws:// and wss:// URLs are supported"));
        };
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr = host
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::other(format!("cannot resolve {host}")))?;
        let tls = match (secure, &tls.tls_ca) {
            (false, _) => None,
            (true, None) => return Err(io::Error::other("a wss:// URL needs --tls-ca")),
            (true, Some(ca)) => {
                let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
                Some(Tls::new(
                    ca,
                    name.trim_start_matches('[').trim_end_matches(']'),
                )?)
            }
        };
        Ok(Self {
            addr,
            host: host.to_owned(),
            path: path.to_owned(),
            tls,
        })
    }
}

/// An upgraded connection plus any frame bytes that arrived with the 101 response.
pub type Opened = (Conn, Vec<u8>);

/// Connects (with a full TLS handshake for `wss://`) and upgrades one connection, with Nagle
/// off (every driver batches its own writes).
///
/// # Errors
/// Connect, TLS, I/O or handshake errors.
pub async fn open(target: &Target) -> io::Result<Opened> {
    let tcp = TcpStream::connect(target.addr).await?;
    tcp.set_nodelay(true)?;
    let mut stream = match &target.tls {
        None => Conn::Tcp(tcp),
        Some(tls) => tls.connect(tcp).await?,
    };
    let leftover = ws::connect(&mut stream, &target.host, &target.path).await?;
    Ok((stream, leftover))
}

/// Opens `n` connections, at most `parallel` handshakes at a time. Each success is handed to
/// `on_open` as soon as it completes (so idle sessions start answering pings immediately).
/// Returns the number of failures and the first error seen.
pub async fn open_many<F>(
    target: &Target,
    n: usize,
    parallel: usize,
    on_open: F,
) -> (usize, Option<String>)
where
    F: Fn(Opened) + Send + Sync + 'static,
{
    let target = Arc::new(target.clone());
    let on_open = Arc::new(on_open);
    let permits = Arc::new(Semaphore::new(parallel.max(1)));
    let mut set = JoinSet::new();
    let (mut failed, mut first) = (0, None);
    for _ in 0..n {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (target, on_open) = (target.clone(), on_open.clone());
        set.spawn(async move {
            let res = tokio::time::timeout(std::time::Duration::from_secs(10), open(&target)).await;
            drop(permit);
            match res {
                Ok(Ok(opened)) => {
                    on_open(opened);
                    None
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("handshake timed out".to_owned()),
            }
        });
        // Reap finished handshakes as we go, so the set stays small.
        while let Some(done) = set.try_join_next() {
            tally(done, &mut failed, &mut first);
        }
    }
    while let Some(done) = set.join_next().await {
        tally(done, &mut failed, &mut first);
    }
    (failed, first)
}

fn tally(
    done: Result<Option<String>, tokio::task::JoinError>,
    failed: &mut usize,
    first: &mut Option<String>,
) {
    let error = match done {
        Ok(None) => return,
        Ok(Some(e)) => e,
        Err(e) => e.to_string(),
    };
    *failed += 1;
    first.get_or_insert(error);
}

/// Opens exactly `n` connections or fails.
///
/// # Errors
/// The first connection error.
pub async fn open_all(target: &Target, n: usize) -> io::Result<Vec<Opened>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (failed, first) = open_many(target, n, 64, move |o| {
        let _ = tx.send(o);
    })
    .await;
    if failed > 0 {
        return Err(io::Error::other(format!(
            "{failed} of {n} connections failed: {}",
            first.unwrap_or_default()
        )));
    }
    Ok(rx.try_iter().collect())
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds of `t` since the process-wide epoch: the timestamp carried in messages.
pub fn ns_at(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_nanos() as u64
}

/// Payload filler: byte `i` is `i % 251`, a period that does not divide any frame size used,
/// so a misplaced or duplicated chunk shows up in verification.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Appends one masked binary message whose first 8 payload bytes are `ts_ns`.
pub fn push_message(out: &mut Vec<u8>, template: &[u8], ts_ns: u64, rng: &mut Rng) {
    let mask = rng.mask();
    ws::put_header(out, true, ws::OP_BINARY, template.len(), Some(mask));
    let start = out.len();
    out.extend_from_slice(template);
    out[start..start + 8].copy_from_slice(&ts_ns.to_le_bytes());
    ws::apply_mask(&mut out[start..], mask, 0);
}

/// Collects `key=value` pairs and prints them as one `RESULT` line on stdout.
#[derive(Default)]
pub struct Report(Vec<(String, String)>);

impl Report {
    /// Adds a number (printed with up to 3 decimals).
    pub fn num(&mut self, key: &str, v: f64) -> &mut Self {
        let s = if v.fract() == 0.0 && v.abs() < 1e15 {
            format!("{v:.0}")
        } else {
            format!("{v:.3}")
        };
        self.0.push((key.to_owned(), s));
        self
    }

    /// Adds a free-form value (spaces replaced so the line stays parseable).
    pub fn text(&mut self, key: &str, v: &str) -> &mut Self {
        self.0
            .push((key.to_owned(), v.replace(char::is_whitespace, "_")));
        self
    }

    /// Prints the line.
    pub fn print(&self) {
        let body: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("RESULT {}", body.join(" "));
    }
}
