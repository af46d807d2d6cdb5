//! The syntax of durations (`500ms`, `20s`, `1.5s`, `0` for off) and byte sizes (`65536`,
//! `16MiB`, `1mb`): parsing flag values and formatting them back for messages and the log.
//!
//! This module owns the units, their limits ([`MAX_DURATION`]) and the help text that shows the
//! syntax. It does not know which flag a value came from or whether the value makes sense for
//! it: the parent module names the flag in each error and checks ranges such as the frame size.

use std::time::Duration;

/// Longest accepted duration. No timer here makes sense beyond a day, and the cap catches unit
/// slips such as `20000m` meant as milliseconds.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

pub(super) const KIB: u64 = 1 << 10;
pub(super) const MIB: u64 = 1 << 20;
pub(super) const GIB: u64 = 1 << 30;

/// Shown in every duration error, so the fix is on the same line as the problem.
pub(super) const DURATION_HELP: &str = "use 0 (off) or a number followed by ms, s, m or h, \
    e.g. 500ms, 20s, 1.5s, 2m";
/// Shown in every byte-size error, for the same reason as [`DURATION_HELP`].
pub(super) const SIZE_HELP: &str =
    "use an integer with an optional unit B, KiB, MiB, GiB, KB, MB or GB, e.g. 65536, 16MiB";

/// `0`, or a non-negative decimal number followed by `ms`, `s`, `m` or `h`, at most 24 h.
/// The error says what is wrong, not how to fix it: callers add [`DURATION_HELP`].
pub(super) fn parse_duration(raw: &str) -> Result<Duration, String> {
    let s = raw.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.starts_with('-') {
        return Err("negative durations are not allowed".into());
    }
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let nanos_per_unit: u128 = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "" if number.is_empty() => return Err("empty".into()),
        "" => return Err("missing unit".into()),
        other => return Err(format!("unknown unit {other:?}")),
    };
    let nanos = scale_decimal(number, nanos_per_unit).ok_or("not a number")?;
    if nanos > MAX_DURATION.as_nanos() {
        return Err("longer than the 24h maximum".into());
    }
    u64::try_from(nanos)
        .map(Duration::from_nanos)
        .map_err(|_| "too long".into())
}

/// `number × scale` for a decimal `number` such as `12` or `1.5`, exact to the unit of `scale`;
/// saturates instead of overflowing so huge values fail the caller's range check.
fn scale_decimal(number: &str, scale: u128) -> Option<u128> {
    let (int, frac) = number.split_once('.').unwrap_or((number, "0"));
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int) || !all_digits(frac) {
        return None;
    }
    let digits = |s: &str| {
        s.bytes().fold(0u128, |acc, b| {
            acc.saturating_mul(10).saturating_add(u128::from(b - b'0'))
        })
    };
    // Beyond 20 fractional digits only sub-nanosecond precision is lost, and the cap keeps
    // `digits(frac) * scale` far from overflow.
    let frac = &frac[..frac.len().min(20)];
    let frac_scaled = digits(frac).saturating_mul(scale) / 10u128.pow(frac.len() as u32);
    Some(
        digits(int)
            .saturating_mul(scale)
            .saturating_add(frac_scaled),
    )
}

/// An integer with an optional unit `B`, `KiB`, `MiB`, `GiB`, `KB`, `MB` or `GB`, any case.
/// Like [`parse_duration`], the error leaves the fix to callers: they add [`SIZE_HELP`].
pub(super) fn parse_size(raw: &str) -> Result<u64, String> {
    let s = raw.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    if number.is_empty() {
        return Err("expected a whole number of bytes".into());
    }
    let multiplier = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => KIB,
        "mib" => MIB,
        "gib" => GIB,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(format!("unknown unit {unit:?}")),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| "too large".into())
}

/// A duration in the syntax `--*-timeout` flags accept, so `0` reads as "off", not `0ns`.
pub(super) fn format_duration(duration: Duration) -> String {
    if duration.is_zero() {
        "0".into()
    } else {
        format!("{duration:?}")
    }
}

/// Bytes in the largest binary unit that divides them exactly, for messages and the log.
pub(super) fn format_bytes(bytes: u64) -> String {
    match bytes {
        0 => "0B".into(),
        b if b % GIB == 0 => format!("{}GiB", b / GIB),
        b if b % MIB == 0 => format!("{}MiB", b / MIB),
        b if b % KIB == 0 => format!("{}KiB", b / KIB),
        b => format!("{b}B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn durations_accept_every_documented_form() {
        for (raw, want) in [
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("500ms", ms(500)),
            ("20s", ms(20_000)),
            ("1.5s", ms(1_500)),
            ("0.1s", ms(100)),
            ("2m", ms(120_000)),
            ("1h", ms(3_600_000)),
            ("0.5ms", Duration::from_micros(500)),
            ("24h", MAX_DURATION),
            (" 20s ", ms(20_000)),
        ] {
            assert_eq!(parse_duration(raw), Ok(want), "{raw:?}");
        }
    }

    #[test]
    fn durations_reject_malformed_values() {
        for (raw, why) in [
            ("20", "missing unit"),
            ("-1s", "negative"),
            ("1d", "unknown unit"),
            ("", "empty"),
            ("s", "not a number"),
            ("1.s", "not a number"),
            (".5s", "not a number"),
            ("1.2.3s", "not a number"),
            ("20 s", "unknown unit"),
            ("20S", "unknown unit"),
            ("24.001h", "24h maximum"),
            (
                "99999999999999999999999999999999999999999999h",
                "24h maximum",
            ),
        ] {
            let err = parse_duration(raw).expect_err(raw);
            assert!(err.contains(why), "{raw:?}: {err}");
        }
    }

    #[test]
    fn sizes_accept_every_documented_form() {
        for (raw, want) in [
            ("65536", 65_536),
            ("125B", 125),
            ("1KiB", 1024),
            ("16MiB", 16 << 20),
            ("1GiB", 1 << 30),
            ("2KB", 2_000),
            ("1mb", 1_000_000),
            ("1GB", 1_000_000_000),
            ("16mib", 16 << 20),
            ("4 KiB", 4096),
        ] {
            assert_eq!(parse_size(raw), Ok(want), "{raw:?}");
        }
        for raw in [
            "",
            "MiB",
            "1.5MiB",
            "-1",
            "1TiB",
            "99999999999999999999",
            "99999999999GiB",
        ] {
            assert!(parse_size(raw).is_err(), "{raw:?}");
        }
    }
}
