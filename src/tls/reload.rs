//! Certificate rotation without a restart: watch the pair's directories, poll by content, and
//! swap the served pair when a new, valid one appears.
//!
//! An inotify watch on the files alone misses the two common rotations. Kubernetes updates a
//! mounted secret by writing a new timestamped directory and renaming a `..data` symlink over
//! the old one; certbot repoints the symlinks in `live/`. The files we were given never change:
//! the links they resolve through do. So, as wstunnel's `tls_reloader.rs` does, two triggers
//! feed one check:
//! - an inotify watch on each file's *directory*, which sees the symlink renames at once;
//! - a poll every [`ReloadConfig::poll_interval`], which catches whatever the watch cannot see
//!   (a swap further up the path, a filesystem without inotify, a watch that failed to start).
//!
//! Either trigger only asks for a check; the check reads both files and compares their bytes
//! with the last pair it tried. Unchanged bytes do nothing, so a poll is cheap and quiet. Changed
//! bytes are loaded: a good pair is swapped in ([`ReloadResult::Ok`]); a broken or mismatched one
//! is logged once, counted once ([`ReloadResult::Error`]), and the old pair keeps serving. A pair
//! half-written when the check ran (certbot writes the two files one after the other) fails that
//! check and succeeds at the next event, so each trigger waits [`ReloadConfig::settle`] first.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{CertResolver, LoadedPair, PairPaths, load_pair};
use crate::metrics::{ReloadResult, TlsMetrics};

/// Default time between polls. Certificates rotate days before they expire, so a minute of
/// delay costs nothing; the directory watch makes the usual case immediate anyway.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(60);
/// Default wait after a change event before reading: long enough for a tool that writes the
/// certificate and then the key to finish both, short enough to be unnoticeable.
pub const DEFAULT_SETTLE: Duration = Duration::from_millis(250);

/// How often and how eagerly the reloader checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReloadConfig {
    /// Time between content polls.
    pub poll_interval: Duration,
    /// Wait after a directory event before reading the files.
    pub settle: Duration,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            poll_interval: DEFAULT_POLL_INTERVAL,
            settle: DEFAULT_SETTLE,
        }
    }
}

/// What the last check saw, so an unchanged (even broken) pair is neither reloaded nor logged
/// again on every poll.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// Both files read; these are their bytes.
    Contents { cert: Vec<u8>, key: Vec<u8> },
    /// A file could not be read; this is the error's text.
    Unreadable(String),
}

/// The reloader's state: the files, what it last saw, where it swaps, what it counts.
pub struct Reloader {
    paths: PairPaths,
    resolver: Arc<CertResolver>,
    metrics: TlsMetrics,
    seen: Seen,
}

impl Reloader {
    /// A reloader for the pair at `paths`, which `resolver` serves now, loaded from `cert` and
    /// `key` (the bytes read at start-up, so the first poll sees no change).
    pub fn new(
        paths: PairPaths,
        resolver: Arc<CertResolver>,
        metrics: TlsMetrics,
        (cert, key): (Vec<u8>, Vec<u8>),
    ) -> Self {
        Reloader {
            paths,
            resolver,
            metrics,
            seen: Seen::Contents { cert, key },
        }
    }

    /// Reads both files and, if they changed since the last check, tries the new pair.
    /// Returns the result when a new pair was tried, `None` when nothing changed.
    pub async fn check(&mut self) -> Option<ReloadResult> {
        let now = self.read().await;
        if now == self.seen {
            return None;
        }
        let result = match &now {
            Seen::Unreadable(error) => {
                tracing::warn!(
                    error,
                    "certificate pair unreadable; still serving the old one"
                );
                ReloadResult::Error
            }
            Seen::Contents { cert, key } => self.try_swap(cert, key),
        };
        self.seen = now;
        self.metrics.reload(result);
        Some(result)
    }

    fn try_swap(&self, cert: &[u8], key: &[u8]) -> ReloadResult {
        match load_pair(cert, key, &self.paths) {
            Ok(pair) => {
                self.install(&pair);
                tracing::info!(
                    serial = pair.serial,
                    not_after = pair.not_after,
                    "certificate reloaded"
                );
                ReloadResult::Ok
            }
            Err(error) => {
                tracing::warn!(%error, "new certificate pair refused; still serving the old one");
                ReloadResult::Error
            }
        }
    }

    /// Serves `pair` from now on and publishes its expiry.
    pub fn install(&self, pair: &LoadedPair) {
        self.resolver.swap(pair);
        self.metrics.cert_expiry.set(pair.not_after as f64);
    }

    async fn read(&self) -> Seen {
        let cert = tokio::fs::read(&self.paths.cert).await;
        let key = tokio::fs::read(&self.paths.key).await;
        match (cert, key) {
            (Ok(cert), Ok(key)) => Seen::Contents { cert, key },
            (Err(e), _) => Seen::Unreadable(format!("{}: {e}", self.paths.cert.display())),
            (_, Err(e)) => Seen::Unreadable(format!("{}: {e}", self.paths.key.display())),
        }
    }

    /// Checks on every directory event and every poll until `cancel` fires.
    pub async fn run(mut self, cfg: ReloadConfig, cancel: CancellationToken) {
        let changed = Arc::new(Notify::new());
        // Kept alive for the loop's lifetime: dropping the watcher ends the watch.
        let _watcher = watch_dirs(&self.paths, Arc::clone(&changed));
        let mut poll = tokio::time::interval(cfg.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                () = changed.notified() => tokio::time::sleep(cfg.settle).await,
                _ = poll.tick() => {}
            }
            self.check().await;
        }
    }
}

/// The directories holding the pair's files (once each), where symlink swaps show up.
fn dirs(paths: &PairPaths) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = [&paths.cert, &paths.key]
        .into_iter()
        .map(|p| match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => Path::new(".").to_owned(),
        })
        .collect();
    dirs.dedup();
    dirs
}

/// Watches the pair's directories; any event in them wakes `changed`. A watch that cannot start
/// is logged and left to the poll.
fn watch_dirs(paths: &PairPaths, changed: Arc<Notify>) -> Option<RecommendedWatcher> {
    let mut watcher =
        match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok() {
                changed.notify_one();
            }
        }) {
            Ok(w) => w,
            Err(error) => {
                tracing::warn!(%error, "cannot watch certificate directories; relying on polling");
                return None;
            }
        };
    for dir in dirs(paths) {
        if let Err(error) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), %error, "cannot watch; relying on polling");
        }
    }
    Some(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_directory_is_watched_once() {
        let paths = PairPaths {
            cert: "/etc/tls/tls.crt".into(),
            key: "/etc/tls/tls.key".into(),
        };
        assert_eq!(dirs(&paths), vec![PathBuf::from("/etc/tls")]);
        let apart = PairPaths {
            cert: "cert.pem".into(),
            key: "/keys/key.pem".into(),
        };
        assert_eq!(
            dirs(&apart),
            vec![PathBuf::from("."), PathBuf::from("/keys")]
        );
    }
}
