//! The text-heartbeat flags ([`TextHeartbeatArgs`], one `--help` section) and their checks,
//! turned into a [`TextHeartbeatConfig`]. What the settings mean is documented in
//! [`crate::text_heartbeat`].

use bytes::Bytes;
use clap::Args;
use clap::builder::BoolishValueParser;

use super::Problems;
use crate::text_heartbeat::{MAX_TEXT_LEN, Periodic, Preset, TextHeartbeatConfig};

/// Application-level heartbeats carried in text messages, for browsers (which cannot send
/// ping frames) and for servers that expect them.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Text heartbeats")]
pub struct TextHeartbeatArgs {
    /// Set the texts below for a well-known application heartbeat; explicit flags win.
    #[arg(long, env = "WSBEAT_TEXT_HEARTBEAT", value_name = "PRESET", value_enum)]
    pub text_heartbeat: Option<Preset>,

    /// A client text message equal to TEXT is answered by wsbeat with --client-text-pong (repeatable).
    #[arg(long, env = "WSBEAT_CLIENT_TEXT_PING", value_name = "TEXT")]
    pub client_text_ping: Vec<String>,

    /// The answer wsbeat sends to a --client-text-ping.
    #[arg(long, env = "WSBEAT_CLIENT_TEXT_PONG", value_name = "TEXT")]
    pub client_text_pong: Option<String>,

    /// Relay answered text pings to the upstream as well.
    #[arg(long, env = "WSBEAT_FORWARD_TEXT_PINGS", value_parser = BoolishValueParser::new())]
    pub forward_text_pings: bool,

    /// Text message sent to a client that wsbeat has sent nothing for --client-keepalive-interval.
    #[arg(long, env = "WSBEAT_CLIENT_KEEPALIVE_MESSAGE", value_name = "TEXT")]
    pub client_keepalive_message: Option<String>,

    /// Silence toward a client after which it gets --client-keepalive-message (0 = never).
    #[arg(
        long,
        env = "WSBEAT_CLIENT_KEEPALIVE_INTERVAL",
        value_name = "DUR",
        default_value = "0"
    )]
    pub client_keepalive_interval: String,

    /// Text message sent to the upstream when the client has sent it nothing for --upstream-text-ping-interval.
    #[arg(long, env = "WSBEAT_UPSTREAM_TEXT_PING", value_name = "TEXT")]
    pub upstream_text_ping: Option<String>,

    /// Silence toward the upstream after which it gets --upstream-text-ping (0 = never).
    #[arg(
        long,
        env = "WSBEAT_UPSTREAM_TEXT_PING_INTERVAL",
        value_name = "DUR",
        default_value = "0"
    )]
    pub upstream_text_ping_interval: String,

    /// An upstream text message equal to TEXT that answers a text ping is not relayed to the client.
    #[arg(long, env = "WSBEAT_UPSTREAM_TEXT_PONG", value_name = "TEXT")]
    pub upstream_text_pong: Option<String>,
}

/// Parses and cross-checks the text-heartbeat flags, recording every problem in `p`.
pub(super) fn parse(args: &TextHeartbeatArgs, p: &mut Problems) -> TextHeartbeatConfig {
    let preset = args.text_heartbeat.map(Preset::texts);
    let keepalive_interval = interval(
        p,
        "--client-keepalive-interval",
        &args.client_keepalive_interval,
    );
    let ping_interval = interval(
        p,
        "--upstream-text-ping-interval",
        &args.upstream_text_ping_interval,
    );
    let mut client_pings: Vec<Bytes> = args
        .client_text_ping
        .iter()
        .map(|t| text(p, "--client-text-ping", t))
        .collect();
    if client_pings.is_empty()
        && let Some(t) = preset
    {
        client_pings.push(Bytes::from_static(t.ping.as_bytes()));
    }
    let pong = explicit_or_preset(
        p,
        "--client-text-pong",
        &args.client_text_pong,
        preset.map(|t| t.pong),
    );
    let keepalive_text = explicit_or_preset(
        p,
        "--client-keepalive-message",
        &args.client_keepalive_message,
        preset.map(|t| t.keepalive),
    );
    let ping_text = explicit_or_preset(
        p,
        "--upstream-text-ping",
        &args.upstream_text_ping,
        preset.map(|t| t.ping),
    );
    let upstream_pong = explicit_or_preset(
        p,
        "--upstream-text-pong",
        &args.upstream_text_pong,
        preset.map(|t| t.pong),
    );
    check_pairs(
        args,
        p,
        &client_pings,
        &pong,
        keepalive_interval,
        ping_interval,
    );
    let upstream_ping = periodic(ping_text, ping_interval);
    // An upstream pong is only ever an answer to a text ping that reached the upstream.
    let absorbs = upstream_ping.is_some() || (args.forward_text_pings && !client_pings.is_empty());
    TextHeartbeatConfig {
        client_pong: pong.unwrap_or_default(),
        forward_pings: args.forward_text_pings,
        client_keepalive: periodic(keepalive_text, keepalive_interval),
        upstream_ping,
        upstream_pong: upstream_pong.filter(|_| absorbs),
        client_pings,
    }
}

/// Flags that only make sense together; a preset counts as having set its texts.
fn check_pairs(
    args: &TextHeartbeatArgs,
    p: &mut Problems,
    pings: &[Bytes],
    pong: &Option<Bytes>,
    keepalive_interval: std::time::Duration,
    ping_interval: std::time::Duration,
) {
    let preset = args.text_heartbeat.is_some();
    if !pings.is_empty() && pong.is_none() {
        p.push("--client-text-ping needs --client-text-pong: the answer wsbeat sends".into());
    }
    if pings.is_empty() && args.client_text_pong.is_some() {
        p.push("--client-text-pong needs --client-text-ping: the message it answers".into());
    }
    if args.forward_text_pings && pings.is_empty() {
        p.push("--forward-text-pings needs --client-text-ping (or --text-heartbeat)".into());
    }
    if keepalive_interval.is_zero() && args.client_keepalive_message.is_some() {
        p.push("--client-keepalive-message needs --client-keepalive-interval above 0".into());
    }
    if !keepalive_interval.is_zero() && args.client_keepalive_message.is_none() && !preset {
        p.push(
            "--client-keepalive-interval needs --client-keepalive-message (or --text-heartbeat)"
                .into(),
        );
    }
    if ping_interval.is_zero() && args.upstream_text_ping.is_some() {
        p.push("--upstream-text-ping needs --upstream-text-ping-interval above 0".into());
    }
    if !ping_interval.is_zero() && args.upstream_text_ping.is_none() && !preset {
        p.push(
            "--upstream-text-ping-interval needs --upstream-text-ping (or --text-heartbeat)".into(),
        );
    }
    let pings_reach_upstream =
        !ping_interval.is_zero() || (args.forward_text_pings && !pings.is_empty());
    if args.upstream_text_pong.is_some() && !pings_reach_upstream {
        p.push(
            "--upstream-text-pong needs text pings to reach the upstream: set \
             --upstream-text-ping-interval, or --forward-text-pings"
                .into(),
        );
    }
}

fn periodic(text: Option<Bytes>, interval: std::time::Duration) -> Option<Periodic> {
    match text {
        Some(text) if !interval.is_zero() => Some(Periodic { text, interval }),
        _ => None,
    }
}

/// The explicit flag's text if given, else the preset's.
fn explicit_or_preset(
    p: &mut Problems,
    flag: &'static str,
    explicit: &Option<String>,
    preset: Option<&'static str>,
) -> Option<Bytes> {
    match explicit {
        Some(t) => Some(text(p, flag, t)),
        None => preset.map(|t| Bytes::from_static(t.as_bytes())),
    }
}

/// A heartbeat text: 1 to [`MAX_TEXT_LEN`] bytes of UTF-8 (it goes out as a text message).
fn text(p: &mut Problems, flag: &'static str, raw: &str) -> Bytes {
    if raw.is_empty() || raw.len() > MAX_TEXT_LEN {
        p.push(format!(
            "{flag} is {} bytes long: a text heartbeat has 1 to {MAX_TEXT_LEN} bytes (the \
             longest message wsbeat can recognise in one small frame)",
            raw.len()
        ));
    }
    Bytes::copy_from_slice(raw.as_bytes())
}

/// An interval: 0 (off), or at least the heartbeat floor, for the same reason: a few
/// milliseconds would flood the peer and keep a relay thread busy.
fn interval(p: &mut Problems, flag: &'static str, raw: &str) -> std::time::Duration {
    p.heartbeat_period(flag, raw)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{Cli, Config};
    use super::*;

    fn parse(flags: &[&str]) -> Result<TextHeartbeatConfig, Vec<String>> {
        let mut argv = vec!["wsbeat", "--upstream", "ws://127.0.0.1:9"];
        argv.extend_from_slice(flags);
        let cli = Cli::try_parse_from(argv).expect("flags parse");
        Config::try_from(cli)
            .map(|c| (*c.relay.text).clone())
            .map_err(|e| e.problems)
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn off_unless_asked() {
        let cfg = parse(&[]).expect("valid");
        assert!(!cfg.is_active());
    }

    #[test]
    fn explicit_pings_with_their_pong() {
        let cfg = parse(&[
            "--client-text-ping",
            "ping",
            "--client-text-ping",
            "heartbeat",
            "--client-text-pong",
            "pong",
        ])
        .expect("valid");
        assert_eq!(cfg.client_pings, vec![b("ping"), b("heartbeat")]);
        assert_eq!(cfg.client_pong, b("pong"));
        assert!(!cfg.forward_pings);
        assert_eq!(
            cfg.upstream_pong, None,
            "nothing reaches the upstream to answer"
        );
    }

    #[test]
    fn preset_sets_texts_and_intervals_switch_injection_on() {
        let cfg = parse(&[
            "--text-heartbeat",
            "graphql-transport-ws",
            "--client-keepalive-interval",
            "15s",
            "--upstream-text-ping-interval",
            "20s",
        ])
        .expect("valid");
        assert_eq!(cfg.client_pings, vec![b(r#"{"type":"ping"}"#)]);
        assert_eq!(cfg.client_pong, b(r#"{"type":"pong"}"#));
        let keepalive = cfg.client_keepalive.expect("keepalive");
        assert_eq!(keepalive.text, b(r#"{"type":"pong"}"#));
        assert_eq!(keepalive.interval, std::time::Duration::from_secs(15));
        assert_eq!(
            cfg.upstream_ping.expect("ping").text,
            b(r#"{"type":"ping"}"#)
        );
        assert_eq!(cfg.upstream_pong, Some(b(r#"{"type":"pong"}"#)));
    }

    #[test]
    fn explicit_flags_win_over_the_preset() {
        let cfg = parse(&[
            "--text-heartbeat",
            "ping-pong",
            "--client-text-pong",
            "PONG",
        ])
        .expect("valid");
        assert_eq!(cfg.client_pings, vec![b("ping")]);
        assert_eq!(cfg.client_pong, b("PONG"));
        assert_eq!(cfg.client_keepalive, None, "no interval, no keepalive");
    }

    #[test]
    fn every_half_pair_is_reported_at_once() {
        let problems = parse(&[
            "--client-text-ping",
            "ping",
            "--client-keepalive-interval",
            "5s",
            "--upstream-text-ping",
            "hb",
            "--upstream-text-pong",
            "ok",
        ])
        .expect_err("invalid");
        let all = problems.join("\n");
        for flag in [
            "--client-text-ping needs --client-text-pong",
            "--client-keepalive-interval needs --client-keepalive-message",
            "--upstream-text-ping needs --upstream-text-ping-interval",
            "--upstream-text-pong needs text pings to reach the upstream",
        ] {
            assert!(all.contains(flag), "{flag} missing in:\n{all}");
        }
    }

    #[test]
    fn texts_must_fit_a_small_frame_and_intervals_the_floor() {
        let long = "x".repeat(MAX_TEXT_LEN + 1);
        let problems = parse(&[
            "--client-text-ping",
            &long,
            "--client-text-pong",
            "",
            "--client-keepalive-message",
            "k",
            "--client-keepalive-interval",
            "5ms",
        ])
        .expect_err("invalid");
        let all = problems.join("\n");
        assert!(
            all.contains("--client-text-ping is 126 bytes long"),
            "{all}"
        );
        assert!(all.contains("--client-text-pong is 0 bytes long"), "{all}");
        assert!(
            all.contains("--client-keepalive-interval 5ms: below"),
            "{all}"
        );
    }

    #[test]
    fn unknown_preset_is_refused_by_the_parser() {
        let err = Cli::try_parse_from(["wsbeat", "--text-heartbeat", "actioncable"])
            .expect_err("not a preset");
        assert!(err.to_string().contains("graphql-transport-ws"), "{err}");
    }
}
