//! Collecting problems while parsing flags: [`Problems`] parses one value at a time, records a
//! message naming the flag when it fails, and hands back a placeholder so parsing goes on.
//!
//! This module owns the single-flag rules (syntax, ranges of one value, such as the 10 ms floor
//! of heartbeat periods). Rules that relate several settings live in the parent module, which
//! asks [`Problems::parsed`] first, so a bad value never causes a complaint about its
//! placeholder.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::units::{
    DURATION_HELP, SIZE_HELP, format_bytes, format_duration, parse_duration, parse_size,
};
use super::{MAX_WORKER_THREADS, MIN_HEARTBEAT_PERIOD, Upstream};
use crate::net::{self, Cidr};

fn origin_problem(flag: &str, item: &str) -> String {
    format!(
        "{flag} {item:?}: expected scheme://host[:port] with no path, e.g. https://app.example, or *"
    )
}

/// Collects problems while parsing, and remembers which flags failed so that rules involving
/// them are skipped instead of reporting a consequence of the placeholder.
#[derive(Default)]
pub(super) struct Problems {
    pub(super) list: Vec<String>,
    failed: Vec<&'static str>,
}

impl Problems {
    /// Records a problem that involves several flags (none of them failed on its own).
    pub(super) fn push(&mut self, problem: String) {
        self.list.push(problem);
    }

    /// Records that `flag` failed with `problem`, and returns `placeholder` in its stead.
    fn fail<T>(&mut self, flag: &'static str, problem: String, placeholder: T) -> T {
        self.failed.push(flag);
        self.list.push(problem);
        placeholder
    }

    /// Whether `flag` parsed, so rules about its value are meaningful.
    pub(super) fn parsed(&self, flag: &str) -> bool {
        !self.failed.contains(&flag)
    }

    /// A duration in the syntax of `units`.
    pub(super) fn duration(&mut self, flag: &'static str, raw: &str) -> Duration {
        parse_duration(raw).unwrap_or_else(|why| {
            self.fail(
                flag,
                format!("{flag} {raw:?}: {why}; {DURATION_HELP}"),
                Duration::ZERO,
            )
        })
    }

    /// A ping interval or pong timeout: 0 (off), or at least [`MIN_HEARTBEAT_PERIOD`].
    pub(super) fn heartbeat_period(&mut self, flag: &'static str, raw: &str) -> Duration {
        let period = self.duration(flag, raw);
        if !period.is_zero() && period < MIN_HEARTBEAT_PERIOD {
            let problem = format!(
                "{flag} {}: below the {} minimum; use 0 (off) or {} or more",
                format_duration(period),
                format_duration(MIN_HEARTBEAT_PERIOD),
                format_duration(MIN_HEARTBEAT_PERIOD),
            );
            return self.fail(flag, problem, Duration::ZERO);
        }
        period
    }

    /// A thread count: 0 means one per CPU; more than [`MAX_WORKER_THREADS`] is refused.
    pub(super) fn threads(&mut self, flag: &'static str, raw: &str) -> usize {
        match raw.trim().parse::<usize>() {
            Ok(0) => std::thread::available_parallelism().map_or(1, usize::from),
            Ok(n) if n <= MAX_WORKER_THREADS => n,
            _ => self.fail(
                flag,
                format!(
                    "{flag} {raw:?}: expected a whole number from 0 (one per CPU) to \
                     {MAX_WORKER_THREADS}"
                ),
                1,
            ),
        }
    }

    /// A byte size in the syntax of `units`.
    pub(super) fn size(&mut self, flag: &'static str, raw: &str) -> u64 {
        parse_size(raw)
            .unwrap_or_else(|why| self.fail(flag, format!("{flag} {raw:?}: {why}; {SIZE_HELP}"), 0))
    }

    /// A whole number from 1 to `max`.
    pub(super) fn count(&mut self, flag: &'static str, raw: &str, max: usize) -> usize {
        match raw.trim().parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => n,
            _ => self.fail(
                flag,
                format!("{flag} {raw:?}: expected a whole number from 1 to {max}"),
                1,
            ),
        }
    }

    /// `--max-connections`: a count, or `auto` for as many sessions as the open-files limit
    /// holds with descriptors to spare (see [`net::sessions_within`]).
    pub(super) fn max_connections(&mut self, flag: &'static str, raw: &str) -> usize {
        if raw.trim().eq_ignore_ascii_case("auto") {
            // Unreadable or unlimited: the common default soft limit.
            return net::sessions_within(net::open_files_limit().unwrap_or(1024));
        }
        self.count(flag, raw, usize::MAX)
    }

    /// A byte size within `range`.
    pub(super) fn size_in(
        &mut self,
        flag: &'static str,
        raw: &str,
        range: std::ops::RangeInclusive<u64>,
    ) -> u64 {
        let size = self.size(flag, raw);
        if self.parsed(flag) && !range.contains(&size) {
            let problem = format!(
                "{flag} {}: use between {} and {}",
                format_bytes(size),
                format_bytes(*range.start()),
                format_bytes(*range.end())
            );
            return self.fail(flag, problem, *range.start());
        }
        size
    }

    /// A comma-separated list of address blocks (`10.0.0.0/8,::1`); empty for none.
    pub(super) fn cidrs(&mut self, flag: &'static str, raw: &str) -> Vec<Cidr> {
        let mut blocks = Vec::new();
        for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item.parse::<Cidr>() {
                Ok(block) => blocks.push(block),
                Err(why) => {
                    return self.fail(
                        flag,
                        format!("{flag}: {why}; e.g. 10.0.0.0/8,::1"),
                        Vec::new(),
                    );
                }
            }
        }
        blocks
    }

    /// `*` (any origin, `None`) or a comma-separated list of exact origins, lowercased:
    /// `scheme://host[:port]` with no path, as browsers send them.
    pub(super) fn origins(&mut self, flag: &'static str, raw: &str) -> Option<Vec<String>> {
        let items: Vec<&str> = raw
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if items.contains(&"*") {
            return None;
        }
        if items.is_empty() {
            let problem = format!("{flag} is empty: list origins, or * for any");
            return self.fail(flag, problem, None);
        }
        let mut origins = Vec::new();
        for item in items {
            let Some((scheme, host)) = item.split_once("://") else {
                return self.fail(flag, origin_problem(flag, item), None);
            };
            let bad_scheme = !matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https");
            if bad_scheme || host.is_empty() || host.contains(['/', '?', '#', '@']) {
                return self.fail(flag, origin_problem(flag, item), None);
            }
            origins.push(item.to_ascii_lowercase());
        }
        Some(origins)
    }

    /// A socket address, IP and port.
    pub(super) fn addr(&mut self, flag: &'static str, raw: &str) -> SocketAddr {
        raw.trim().parse().unwrap_or_else(|_| {
            let problem =
                format!("{flag} {raw:?}: expected IP:PORT, e.g. 0.0.0.0:8080 or [::]:8080");
            self.fail(flag, problem, SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
        })
    }

    /// `--upstream`, or in demo mode the demo listener, whose real port `main` fills in.
    pub(super) fn upstream(
        &mut self,
        raw: Option<&str>,
        demo: bool,
        demo_listen: SocketAddr,
    ) -> Upstream {
        let placeholder = Upstream::from_addr(demo_listen);
        match (raw, demo) {
            (None, true) => placeholder,
            (None, false) => {
                self.fail("--upstream", "--upstream is required (or try --demo)".into(), placeholder)
            }
            (Some(_), true) => self.fail(
                "--upstream",
                "--demo proxies to its own echo upstream: drop --upstream (or WSBEAT_UPSTREAM), or drop --demo".into(),
                placeholder,
            ),
            (Some(url), false) => Upstream::parse(url).unwrap_or_else(|why| {
                let problem = format!("--upstream {url:?}: {why}; expected ws[s]://host:port[/base] or http[s]://host:port[/base]");
                self.fail("--upstream", problem, placeholder)
            }),
        }
    }

    /// A tracing `EnvFilter` directive, checked to parse and kept as written.
    pub(super) fn log_filter(&mut self, raw: &str) -> String {
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(raw) {
            let problem =
                format!("--log-level {raw:?}: {e}; e.g. info or info,wsbeat::relay=debug");
            self.fail("--log-level", problem, ());
        }
        raw.to_owned()
    }
}
