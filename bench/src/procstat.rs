//! Reads CPU time and memory of other processes (the proxy under test, the echo server) from
//! /proc, so every figure is taken over exactly the window the load generator measured.
//!
//! CPU comes from `utime + stime` in /proc/PID/stat: coarse (10 ms ticks) but it includes
//! threads that exited, unlike per-thread schedstat. Windows are seconds long, so the tick
//! is well under 1 % of the figures reported for busy proxies.

use std::io;

/// Linux reports /proc/PID/stat times in USER_HZ, which is 100 on every mainstream arch.
const TICKS_PER_SECOND: f64 = 100.0;

/// A set of processes whose figures are summed (nginx master + workers, for example).
#[derive(Clone, Debug, Default)]
pub struct Pids(pub Vec<u32>);

impl std::str::FromStr for Pids {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| p.trim().parse())
            .collect::<Result<_, _>>()
            .map(Pids)
    }
}

impl Pids {
    /// This process.
    pub fn me() -> Self {
        Pids(vec![std::process::id()])
    }

    /// True when no pid was given (the direct target has no proxy).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Summed CPU seconds (user + system).
    ///
    /// # Errors
    /// Fails when a process has gone away.
    pub fn cpu_seconds(&self) -> io::Result<f64> {
        let mut ticks = 0u64;
        for pid in &self.0 {
            ticks += cpu_ticks(*pid)?;
        }
        Ok(ticks as f64 / TICKS_PER_SECOND)
    }

    /// Summed value of a `/proc/PID/status` field given in kB (VmRSS, VmHWM).
    ///
    /// # Errors
    /// Fails when a process has gone away or lacks the field.
    pub fn status_kib(&self, field: &str) -> io::Result<u64> {
        let mut total = 0;
        for pid in &self.0 {
            total += status_kib(*pid, field)?;
        }
        Ok(total)
    }

    /// Resets the peak RSS (VmHWM) to the current RSS (`echo 5 > /proc/PID/clear_refs`).
    ///
    /// # Errors
    /// Fails without permission to write clear_refs.
    pub fn reset_peak_rss(&self) -> io::Result<()> {
        for pid in &self.0 {
            std::fs::write(format!("/proc/{pid}/clear_refs"), "5")?;
        }
        Ok(())
    }
}

fn cpu_ticks(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other("malformed stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    let parse = |i: usize| -> io::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other("malformed stat"))
    };
    Ok(parse(11)? + parse(12)?)
}

fn status_kib(pid: u32, field: &str) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .ok_or_else(|| io::Error::other(format!("{field} missing for {pid}")))
}

/// Machine-wide CPU time from the first line of /proc/stat, in seconds:
/// (busy = everything but idle and iowait, softirq, steal).
///
/// # Errors
/// Fails when /proc/stat is unreadable.
pub fn machine_seconds() -> io::Result<MachineCpu> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().unwrap_or_default();
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    if v.len() < 8 {
        return Err(io::Error::other("malformed /proc/stat"));
    }
    // user nice system idle iowait irq softirq steal; guest time is already inside user.
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    Ok(MachineCpu {
        busy: busy as f64 / TICKS_PER_SECOND,
        softirq: v[6] as f64 / TICKS_PER_SECOND,
        steal: v[7] as f64 / TICKS_PER_SECOND,
    })
}

/// Machine-wide CPU seconds since boot (see `machine_seconds`).
#[derive(Clone, Copy, Debug, Default)]
pub struct MachineCpu {
    /// All non-idle time, including softirq (loopback TCP work) and steal.
    pub busy: f64,
    /// Softirq time: on loopback, much of the TCP stack runs here and is charged to no process.
    pub softirq: f64,
    /// Time the hypervisor ran someone else.
    pub steal: f64,
}

impl std::ops::Sub for MachineCpu {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        Self {
            busy: self.busy - o.busy,
            softirq: self.softirq - o.softirq,
            steal: self.steal - o.steal,
        }
    }
}

/// CPU seconds of `pids` between two calls, divided by wall seconds: cores used.
pub struct CpuWindow {
    start: Option<f64>,
    at: std::time::Instant,
}

impl CpuWindow {
    /// Starts a window now.
    pub fn start(pids: &Pids) -> Self {
        Self {
            start: pids.cpu_seconds().ok(),
            at: std::time::Instant::now(),
        }
    }

    /// CPU seconds used since `start` and the wall seconds that passed, if readable.
    pub fn finish(&self, pids: &Pids) -> Option<(f64, f64)> {
        let end = pids.cpu_seconds().ok()?;
        let wall = std::time::Instant::now()
            .duration_since(self.at)
            .as_secs_f64();
        Some((end - self.start?, wall))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_and_rss() {
        let me = Pids::me();
        assert!(me.cpu_seconds().unwrap() >= 0.0);
        assert!(me.status_kib("VmRSS:").unwrap() > 0);
    }

    #[test]
    fn parses_pid_lists() {
        let p: Pids = "1, 2,3,".parse().unwrap();
        assert_eq!(p.0, vec![1, 2, 3]);
        assert!("".parse::<Pids>().unwrap().is_empty());
    }
}
