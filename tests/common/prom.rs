//! Prometheus helpers: scrape the proxy's admin listener, parse the text exposition format, and
//! match samples with a small builder modelled on linkerd/linkerd2-proxy
//! `linkerd/app/integration/src/metrics.rs`:
//!
//! ```ignore
//! metric("wsbeat_peer_timeouts_total").label("side", "client").value(1).assert_in(admin).await;
//! ```
//!
//! A matcher names a sample (series) and a subset of its labels; it must select exactly one
//! series, so a typo in a label value fails loudly instead of matching nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::{Instant, sleep};

use super::http_exchange;

/// How long `assert_in` waits for a counter to reach its value. Metrics are updated as the
/// proxy's tasks run, a little after the event a test caused, so every check polls.
pub const METRIC_WAIT: Duration = Duration::from_secs(5);
/// Pause between two scrapes while polling (a polling interval, not synchronisation).
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// One sample line of a scrape.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Series name as exposed (`wsbeat_ping_rtt_seconds_bucket`, not the family name).
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl fmt::Display for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels = format_labels(&self.labels);
        write!(f, "{}{{{labels}}} {}", self.name, self.value)
    }
}

/// A parsed `/metrics` response.
#[derive(Clone, Debug)]
pub struct Scrape {
    /// The body as served, for `promtool check metrics` and for failure messages.
    pub text: String,
    pub samples: Vec<Sample>,
    /// Family name → type, from the `# TYPE` lines.
    pub families: BTreeMap<String, String>,
}

impl Scrape {
    /// Parses the Prometheus text format (0.0.4) as the `prometheus` crate writes it.
    ///
    /// # Panics
    /// On a line that is not a comment and not a `name{labels} value` sample.
    pub fn parse(text: &str) -> Scrape {
        let mut samples = Vec::new();
        let mut families = BTreeMap::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
                families.insert(name.to_string(), kind.to_string());
            } else if !line.starts_with('#') {
                samples.push(parse_sample(line));
            }
        }
        Scrape {
            text: text.to_string(),
            samples,
            families,
        }
    }

    /// Every distinct series name (histograms contribute `_bucket`, `_sum` and `_count`).
    pub fn series_names(&self) -> BTreeSet<&str> {
        self.samples.iter().map(|s| s.name.as_str()).collect()
    }

    /// The series named `name` whose labels include every pair of `labels`.
    pub fn select<'a>(&'a self, name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The sum of every series named `name` whose labels include every pair of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.select(name, labels).iter().map(|s| s.value).sum()
    }

    /// The value of the one series `name{labels...}`.
    ///
    /// # Panics
    /// If no series or more than one matches.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(name)
            .with_labels(labels)
            .get(self)
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Parses `name{k="v",...} value` (no timestamp: the prometheus crate writes none).
fn parse_sample(line: &str) -> Sample {
    let (series, value) = line
        .rsplit_once(' ')
        .unwrap_or_else(|| panic!("sample without a value: {line}"));
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse()
            .unwrap_or_else(|e| panic!("bad value in {line}: {e}")),
    };
    let (name, labels) = match series.split_once('{') {
        None => (series, BTreeMap::new()),
        Some((name, rest)) => {
            let body = rest
                .strip_suffix('}')
                .unwrap_or_else(|| panic!("unclosed labels: {line}"));
            (name, parse_labels(body, line))
        }
    };
    Sample {
        name: name.to_string(),
        labels,
        value,
    }
}

/// Parses `k="v",k2="v2"` with `\"`, `\\` and `\n` escapes in values.
fn parse_labels(body: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("bad label in {line}"));
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => panic!("dangling escape in {line}"),
                },
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line}"),
            }
        };
        labels.insert(key.trim_start_matches(',').to_string(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    labels
}

/// Fetches `/metrics` from the admin listener at `admin` and parses it.
///
/// # Panics
/// If the request fails, the status is not 200 or the content type is not the text format.
pub async fn scrape(admin: SocketAddr) -> Scrape {
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    let (head, body) = http_exchange(admin, &request).await;
    assert_eq!(head.status(), 200, "GET /metrics: {head:?}");
    let content_type = head.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain") && content_type.contains("version=0.0.4"),
        "GET /metrics content type {content_type:?}"
    );
    Scrape::parse(&String::from_utf8(body).expect("metrics are UTF-8"))
}

/// Starts a matcher for the series `name` (the exposed name: `..._count` for a histogram count).
pub fn metric(name: &str) -> MetricMatch {
    MetricMatch {
        name: name.to_string(),
        labels: Vec::new(),
        value: None,
    }
}

/// A series and, optionally, the value it must have.
#[derive(Clone, Debug)]
pub struct MetricMatch {
    name: String,
    labels: Vec<(String, String)>,
    value: Option<f64>,
}

impl MetricMatch {
    /// Requires label `key` to be `value`.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.push((key.to_string(), value.to_string()));
        self
    }

    /// Requires every pair of `labels`.
    pub fn with_labels(self, labels: &[(&str, &str)]) -> Self {
        labels.iter().fold(self, |m, (k, v)| m.label(k, v))
    }

    /// The value the series must have.
    pub fn value(mut self, value: impl Into<f64>) -> Self {
        self.value = Some(value.into());
        self
    }

    /// The value of the one series this matcher selects in `scrape`.
    ///
    /// # Errors
    /// A description of the problem (no series, several series) with the candidates.
    pub fn get(&self, scrape: &Scrape) -> Result<f64, String> {
        let labels: Vec<(&str, &str)> = self
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        match scrape.select(&self.name, &labels).as_slice() {
            [one] => Ok(one.value),
            found => Err(format!(
                "{self} selects {} series, expected exactly one; series named {} in the scrape:\n{}",
                found.len(),
                self.name,
                candidates(scrape, &self.name)
            )),
        }
    }

    /// Checks the value against `scrape` once.
    ///
    /// # Errors
    /// What was expected and what was seen.
    pub fn check(&self, scrape: &Scrape) -> Result<(), String> {
        let actual = self.get(scrape)?;
        match self.value {
            Some(expected) if expected != actual => {
                Err(format!("{self}: expected {expected}, scraped {actual}"))
            }
            _ => Ok(()),
        }
    }

    /// Scrapes `admin` until the series has the expected value, for at most [`METRIC_WAIT`],
    /// and returns the last scrape.
    ///
    /// # Panics
    /// With the last mismatch when the deadline passes.
    pub async fn assert_in(&self, admin: SocketAddr) -> Scrape {
        let deadline = Instant::now() + METRIC_WAIT;
        loop {
            let s = scrape(admin).await;
            match self.check(&s) {
                Ok(()) => return s,
                Err(e) if Instant::now() >= deadline => {
                    panic!("not true within {METRIC_WAIT:?}: {e}")
                }
                Err(_) => sleep(POLL_INTERVAL).await,
            }
        }
    }
}

impl fmt::Display for MetricMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels = format_labels(self.labels.iter().map(|(k, v)| (k, v)));
        write!(f, "{}{{{labels}}}", self.name)
    }
}

/// `k="v"` pairs joined by commas, as a series is written between braces in failure messages.
fn format_labels<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    let labels: Vec<String> = labels
        .into_iter()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    labels.join(",")
}

fn candidates(scrape: &Scrape, name: &str) -> String {
    let lines: Vec<String> = scrape
        .samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| format!("  {s}"))
        .collect();
    if lines.is_empty() {
        "  (none)".to_string()
    } else {
        lines.join("\n")
    }
}

/// Scrapes `admin` until `check` accepts a scrape, for at most `d`, and returns that scrape.
///
/// # Panics
/// With `what` and the last scrape's relevant lines when the deadline passes.
pub async fn eventually_scrape<F>(admin: SocketAddr, d: Duration, what: &str, check: F) -> Scrape
where
    F: Fn(&Scrape) -> bool,
{
    let deadline = Instant::now() + d;
    loop {
        let s = scrape(admin).await;
        if check(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "not true within {d:?}: {what}\nlast scrape:\n{}",
            s.text
        );
        sleep(POLL_INTERVAL).await;
    }
}
