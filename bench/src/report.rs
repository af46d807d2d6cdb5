//! Turns the raw results file written by `run.sh` (`workload target run key value`, tab
//! separated, one figure per line) into the Markdown tables: the median of the runs of each
//! figure, with ratios to direct and to nginx, and a second table of harness diagnostics.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::Path;

/// (workload, key, label) of each row of the main table.
const ROWS: &[(&str, &str, &str)] = &[
    (
        "small",
        "msgs_per_s",
        "64 B ×50 conns ×16 in flight: msg/s ↑",
    ),
    ("small", "p50_us", "64 B: p50 round trip µs ↓"),
    ("small", "p99_us", "64 B: p99 round trip µs ↓"),
    ("small", "proxy_cpu_us_per_msg", "64 B: proxy CPU µs/msg ↓"),
    ("large", "mb_per_s", "64 KiB ×10 conns ×4 in flight: MB/s ↑"),
    ("large", "p99_us", "64 KiB: p99 round trip µs ↓"),
    (
        "large",
        "proxy_cpu_us_per_msg",
        "64 KiB: proxy CPU µs/msg ↓",
    ),
    (
        "latency",
        "msgs_per_s",
        "fixed rate 50 conns ×100/s: achieved msg/s",
    ),
    ("latency", "p50_us", "fixed rate: p50 µs ↓"),
    ("latency", "p99_us", "fixed rate: p99 µs ↓"),
    ("latency", "p999_us", "fixed rate: p99.9 µs ↓"),
    ("latency", "max_us", "fixed rate: max µs ↓"),
    ("idle", "sessions", "idle: sessions held"),
    (
        "idle",
        "rss_per_session_kib",
        "idle: proxy RSS per session KiB ↓",
    ),
    (
        "idle",
        "proxy_cpu_us_per_s",
        "idle: proxy CPU µs per s of holding ↓",
    ),
    (
        "idle",
        "proxy_cpu_us_per_ping",
        "idle: proxy CPU µs per ping (both legs) ↓",
    ),
    (
        "idle",
        "echo_cpu_us_per_ping",
        "idle: echo upstream CPU µs per ping answered (a tokio peer doing the same)",
    ),
    (
        "floor",
        "us_per_ping",
        "idle: kernel floor µs per ping (send + recv on loopback, no event loop; under direct)",
    ),
    (
        "idle",
        "client_pings_per_session_s",
        "idle: pings/s per session at clients",
    ),
    (
        "idle",
        "upstream_pings_per_session_s",
        "idle: pings/s per session at upstream",
    ),
    ("stream", "mb_per_s", "256 MiB in 1 MiB frames: MB/s ↑"),
    (
        "stream",
        "peak_rss_mib",
        "256 MiB stream: proxy peak RSS MiB ↓",
    ),
    (
        "tls-small",
        "msgs_per_s",
        "wss 64 B ×50 conns ×16 in flight: msg/s ↑",
    ),
    ("tls-small", "p99_us", "wss 64 B: p99 round trip µs ↓"),
    (
        "tls-small",
        "proxy_cpu_us_per_msg",
        "wss 64 B: proxy CPU µs/msg ↓",
    ),
    (
        "tls-large",
        "mb_per_s",
        "wss 64 KiB ×10 conns ×4 in flight: MB/s ↑",
    ),
    (
        "tls-large",
        "proxy_cpu_us_per_msg",
        "wss 64 KiB: proxy CPU µs/msg ↓",
    ),
    (
        "tls-handshake",
        "sessions_per_s",
        "new TLS sessions/s (full handshake, upgrade, one echo, close; 50 clients) ↑",
    ),
    ("tls-handshake", "p99_us", "new TLS session: p99 µs ↓"),
    (
        "tls-handshake",
        "proxy_cpu_us_per_session",
        "new TLS session: proxy CPU µs ↓",
    ),
    ("tls-idle", "sessions", "idle TLS: sessions held"),
    (
        "tls-idle",
        "rss_per_session_kib",
        "idle TLS: proxy RSS per session KiB ↓",
    ),
];

/// (workload, key) of the diagnostics table.
const DIAG: &[(&str, &str)] = &[
    ("small", "gen_cores"),
    ("small", "echo_cores"),
    ("small", "proxy_cores"),
    ("small", "pings"),
    ("small", "machine_busy_cores"),
    ("small", "softirq_cores"),
    ("small", "other_cores"),
    ("large", "gen_cores"),
    ("large", "echo_cores"),
    ("large", "proxy_cores"),
    ("large", "machine_busy_cores"),
    ("large", "other_cores"),
    ("latency", "gen_cores"),
    ("latency", "proxy_cores"),
    ("latency", "lost"),
    ("latency", "other_cores"),
    ("latency", "send_late_p99_us"),
    ("idle", "failed"),
    ("idle", "closed_by_peer"),
    ("idle", "connect_s"),
    ("idle", "rss_held_kib"),
    ("stream", "secs"),
    ("stream", "mismatches"),
    ("tls-small", "gen_cores"),
    ("tls-small", "proxy_cores"),
    ("tls-small", "other_cores"),
    ("tls-large", "gen_cores"),
    ("tls-large", "proxy_cores"),
    ("tls-large", "other_cores"),
    ("tls-handshake", "gen_cores"),
    ("tls-handshake", "proxy_cores"),
    ("tls-handshake", "failed"),
    ("tls-idle", "failed"),
    ("tls-idle", "connect_s"),
    ("tls-idle", "rss_held_kib"),
];

type Figures = BTreeMap<(String, String, String), Vec<f64>>;

fn load(path: &Path) -> io::Result<Figures> {
    let mut runs: BTreeMap<(String, String, String), BTreeMap<String, f64>> = BTreeMap::new();
    for line in std::fs::read_to_string(path)?.lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        if let [workload, target, run, key, value] = cols[..]
            && let Ok(v) = value.parse::<f64>()
        {
            runs.entry((workload.into(), target.into(), run.into()))
                .or_default()
                .insert(key.into(), v);
        }
    }
    let mut figures = Figures::new();
    for ((workload, target, _run), mut keys) in runs {
        if let Some(other) = other_cores(&keys) {
            keys.insert("other_cores".into(), other);
        }
        for (key, v) in keys {
            figures
                .entry((workload.clone(), target.clone(), key))
                .or_default()
                .push(v);
        }
    }
    Ok(figures)
}

/// Busy CPU of the machine not used by the generator, the echo server or the proxy.
fn other_cores(keys: &BTreeMap<String, f64>) -> Option<f64> {
    let busy = keys.get("machine_busy_cores")?;
    let ours: f64 = ["gen_cores", "echo_cores", "proxy_cores"]
        .iter()
        .filter_map(|k| keys.get(*k))
        .sum();
    Some(busy - keys.get("steal_cores").unwrap_or(&0.0) - ours)
}

fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// Formats a figure: thousands separators for big values, 2–3 significant digits for small.
fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 {
        let s = format!("{:.0}", v.abs());
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if v < 0.0 { format!("-{out}") } else { out }
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn cell(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), fmt)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.2}×", a / b),
        _ => "–".to_owned(),
    }
}

/// Prints the tables for `targets` (in column order) from the results file.
///
/// # Errors
/// Fails when the file cannot be read.
pub fn run(path: &Path, targets: &[String]) -> io::Result<()> {
    let figures = load(path)?;
    let get = |w: &str, t: &str, k: &str| {
        figures
            .get(&(w.to_owned(), t.to_owned(), k.to_owned()))
            .and_then(|v| median(v))
    };
    let runs = |w: &str, t: &str, k: &str| {
        figures
            .get(&(w.to_owned(), t.to_owned(), k.to_owned()))
            .map_or(0, Vec::len)
    };
    let proxies: Vec<&String> = targets.iter().filter(|t| *t != "direct").collect();
    let vs_nginx: Vec<&String> = proxies.iter().copied().filter(|t| *t != "nginx").collect();
    let mut head = String::from("| figure (median of runs) |");
    for t in targets {
        let _ = write!(head, " {t} |");
    }
    for t in &proxies {
        let _ = write!(head, " {t} ÷ direct |");
    }
    for t in &vs_nginx {
        let _ = write!(head, " {t} ÷ nginx |");
    }
    println!("{head}");
    println!(
        "|---|{}",
        "---|".repeat(targets.len() + proxies.len() + vs_nginx.len())
    );
    // Rows of workloads that were not run (WORKLOADS picks a subset) are left out.
    let measured = |w: &str, k: &str| targets.iter().any(|t| runs(w, t, k) > 0);
    for (w, k, label) in ROWS.iter().filter(|(w, k, _)| measured(w, k)) {
        let mut line = format!("| {label} |");
        for t in targets {
            let n = runs(w, t, k);
            let suffix = if n > 0 && n < 3 {
                format!(" ({n} run)")
            } else {
                String::new()
            };
            let _ = write!(line, " {}{suffix} |", cell(get(w, t, k)));
        }
        for t in &proxies {
            let _ = write!(line, " {} |", ratio(get(w, t, k), get(w, "direct", k)));
        }
        for t in &vs_nginx {
            let _ = write!(line, " {} |", ratio(get(w, t, k), get(w, "nginx", k)));
        }
        println!("{line}");
    }
    println!();
    println!(
        "Harness diagnostics (median). gen/echo/proxy_cores: CPU used during the window by the \
         load generator, the echo server and the proxy (utime+stime, /proc/PID/stat). \
         machine_busy: all non-idle CPU (/proc/stat); softirq: kernel network (loopback TCP) work, \
         mostly already inside the processes' figures; other: busy - steal - (gen + echo + \
         proxy), the load of anything else on the machine (other people's compiles); \
         approximate, since /proc/stat is tick-sampled and undercounts short bursts (slightly \
         negative values are noise). lost: sent in the window but never echoed. send_late: how late \
         the fixed-rate sender left its schedule (harness-side delay, included in the \
         latencies: when it is near the p99, the machine, not the proxy, set the tail)."
    );
    println!();
    println!(
        "| workload.figure |{}",
        targets
            .iter()
            .map(|t| format!(" {t} |"))
            .collect::<String>()
    );
    println!("|---|{}", "---|".repeat(targets.len()));
    for (w, k) in DIAG.iter().filter(|(w, k)| measured(w, k)) {
        let cells: String = targets
            .iter()
            .map(|t| format!(" {} |", cell(get(w, t, k))))
            .collect();
        println!("| {w}.{k} |{cells}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn formats_with_separators() {
        assert_eq!(fmt(1_080_000.0), "1,080,000");
        assert_eq!(fmt(538.4), "538");
        assert_eq!(fmt(17.84), "17.8");
        assert_eq!(fmt(0.812), "0.81");
    }
}
