//! Tests of the flags, their defaults and the rules between settings.
use super::*;
use clap::{CommandFactory, Parser};

const UPSTREAM: &str = "--upstream ws://127.0.0.1:9000";

/// Parses a whitespace-separated command line (without the program name).
fn cli(line: &str) -> Cli {
    let args = std::iter::once("wsbeat").chain(line.split_whitespace());
    Cli::try_parse_from(args).expect("test arguments parse")
}

fn config(line: &str) -> Result<Config, ConfigError> {
    Config::try_from(cli(line))
}

fn problems(line: &str) -> Vec<String> {
    config(line)
        .expect_err("configuration should be rejected")
        .problems
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn cli_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn every_flag_has_an_env_var_and_help() {
    for arg in Cli::command().get_arguments() {
        let id = arg.get_id().as_str();
        if id == "help" || id == "version" {
            continue;
        }
        let env = format!("WSBEAT_{}", id.to_uppercase());
        assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(env.as_str()));
        assert!(arg.get_help().is_some(), "{id} has no help");
    }
}

/// The literal defaults in the clap attributes must match the documented constants.
#[test]
fn defaults_match_the_documented_constants() {
    let cli = Cli::try_parse_from(["wsbeat", "--upstream", "ws://127.0.0.1:9000"]).unwrap();
    let config = Config::try_from(cli).unwrap();
    assert_eq!(config.listen.client, DEFAULT_LISTEN.parse().unwrap());
    assert_eq!(config.listen.admin, DEFAULT_ADMIN_LISTEN.parse().unwrap());
    assert_eq!(
        config.upstream.url,
        Upstream::parse("ws://127.0.0.1:9000").unwrap()
    );
    assert!(!config.upstream.preserve_host);
    let client = HeartbeatConfig {
        interval: DEFAULT_PING_INTERVAL,
        timeout: DEFAULT_CLIENT_PONG_TIMEOUT,
        timeout_after_pong: None,
    };
    assert_eq!(config.relay.client, client);
    let upstream = HeartbeatConfig {
        interval: DEFAULT_PING_INTERVAL,
        timeout: DEFAULT_UPSTREAM_PONG_TIMEOUT,
        timeout_after_pong: Some(DEFAULT_UPSTREAM_PONG_TIMEOUT_AFTER_PONG),
    };
    assert_eq!(config.relay.upstream, upstream);
    let tcp_user_timeout = DEFAULT_UPSTREAM_TCP_USER_TIMEOUT;
    assert_eq!(config.upstream.tcp_user_timeout, tcp_user_timeout);
    assert_eq!(config.upstream.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    assert_eq!(config.clients.handshake_timeout, DEFAULT_HANDSHAKE_TIMEOUT);
    assert_eq!(config.relay.close_timeout, DEFAULT_CLOSE_TIMEOUT);
    assert_eq!(config.relay.max_frame_size, DEFAULT_MAX_FRAME_SIZE_BYTES);
    assert_eq!(config.process.log_format, LogFormat::Text);
    assert_eq!(config.process.log_level, "info");
    let shutdown = ShutdownConfig {
        drain_delay: DEFAULT_DRAIN_DELAY,
        grace: DEFAULT_SHUTDOWN_GRACE,
    };
    assert_eq!(config.shutdown, shutdown);
    assert_eq!(config.demo, None);
    assert!(config.warnings().is_empty(), "{:?}", config.warnings());
}

/// The reasoning on the constants: a quiet session survives a 60 s idle timeout, and a dead
/// client is found within 45 s.
#[test]
fn default_heartbeat_fits_load_balancer_and_detection_budgets() {
    assert!(DEFAULT_PING_INTERVAL * 2 < Duration::from_secs(60));
    assert!(DEFAULT_PING_INTERVAL + DEFAULT_CLIENT_PONG_TIMEOUT <= Duration::from_secs(45));
}

#[test]
fn flags_set_every_field() {
    let config = config(
        "--listen 127.0.0.1:1 --admin-listen [::1]:2 --upstream http://up:81/b/ \
         --client-ping-interval 1s --client-pong-timeout 2s \
         --upstream-ping-interval 3s --upstream-pong-timeout 4s \
         --upstream-tcp-user-timeout 0 --connect-timeout 6s --handshake-timeout 7s \
         --close-timeout 8s --max-frame-size 1KiB --preserve-host --log-format json \
         --log-level debug",
    )
    .unwrap();
    assert_eq!(config.listen.client, "127.0.0.1:1".parse().unwrap());
    assert_eq!(config.listen.admin, "[::1]:2".parse().unwrap());
    assert_eq!(config.upstream.url.authority, "up:81");
    assert_eq!(config.upstream.url.base_path, "/b");
    let hb = |a, b| HeartbeatConfig {
        interval: ms(a),
        timeout: ms(b),
        timeout_after_pong: None,
    };
    assert_eq!(config.relay.client, hb(1000, 2000));
    assert_eq!(config.relay.upstream, hb(3000, 4000));
    assert_eq!(config.upstream.tcp_user_timeout, Duration::ZERO);
    let timeouts = (
        config.upstream.connect_timeout,
        config.clients.handshake_timeout,
        config.relay.close_timeout,
    );
    assert_eq!(timeouts, (ms(6000), ms(7000), ms(8000)));
    assert_eq!(config.relay.max_frame_size, 1024);
    assert!(config.upstream.preserve_host);
    assert_eq!(config.process.log_format, LogFormat::Json);
    assert_eq!(config.process.log_level, "debug");
}

#[test]
fn duration_errors_name_the_flag_and_show_examples() {
    let problems = problems(&format!("{UPSTREAM} --close-timeout 20"));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].starts_with("--close-timeout \"20\": missing unit"));
    assert!(
        problems[0].contains("500ms, 20s, 1.5s, 2m"),
        "{}",
        problems[0]
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let problems = problems(
        "--listen nope --client-ping-interval 20 --upstream-pong-timeout 1d \
         --max-frame-size big --log-level = --connect-timeout 0",
    );
    let expected = [
        "--listen",
        "--upstream is required",
        "--client-ping-interval",
        "--upstream-pong-timeout",
        "--connect-timeout",
        "--max-frame-size",
        "--log-level",
    ];
    assert_eq!(problems.len(), expected.len(), "{problems:#?}");
    for flag in expected {
        assert!(
            problems.iter().any(|p| p.starts_with(flag)),
            "{flag}: {problems:#?}"
        );
    }
    let shown = ConfigError { problems }.to_string();
    assert!(shown.starts_with("invalid configuration:\n  - --listen \"nope\""));
}

/// A flag that failed to parse must not cause follow-on complaints about its placeholder.
#[test]
fn a_bad_value_does_not_trigger_rules_about_its_placeholder() {
    let line = format!("{UPSTREAM} --client-ping-interval x --max-frame-size x --listen x");
    assert_eq!(problems(&line).len(), 3, "{:#?}", problems(&line));
}

#[test]
fn pong_timeout_without_pings_is_rejected() {
    assert_eq!(
        problems(&format!("{UPSTREAM} --client-ping-interval 0")),
        [
            "--client-pong-timeout 20s needs pings: set --client-ping-interval above 0, \
          or --client-pong-timeout 0"
        ]
    );
    let line = format!("{UPSTREAM} --upstream-ping-interval 0 --upstream-pong-timeout 5s");
    assert!(problems(&line)[0].starts_with("--upstream-pong-timeout 5s needs pings"));
    let off = config(&format!(
        "{UPSTREAM} --client-ping-interval 0 --client-pong-timeout 0"
    ));
    assert_eq!(off.unwrap().relay.client, HeartbeatConfig::OFF);
}

#[test]
fn session_timeouts_must_be_positive() {
    let line = "--connect-timeout 0 --handshake-timeout 0s --close-timeout 0ms";
    let problems = problems(&format!("{UPSTREAM} {line}"));
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(problems.iter().all(|p| p.contains("must be above 0")));
}

#[test]
fn max_frame_size_is_bounded() {
    for raw in ["124", "0", "1025MiB", "2GiB"] {
        let problems = problems(&format!("{UPSTREAM} --max-frame-size {raw}"));
        assert!(problems[0].starts_with("--max-frame-size"), "{problems:?}");
        assert!(problems[0].contains("out of range"), "{problems:?}");
    }
    for (raw, want) in [("125", 125), ("1GiB", GIB)] {
        let config = config(&format!("{UPSTREAM} --max-frame-size {raw}")).unwrap();
        assert_eq!(config.relay.max_frame_size, want);
    }
}

#[test]
fn listeners_must_not_share_a_port() {
    let same = problems(&format!("{UPSTREAM} --listen 127.0.0.1:9090"));
    assert!(same[0].contains("--listen 127.0.0.1:9090 and --admin-listen 127.0.0.1:9090"));
    // A wildcard listener takes the port on every IP.
    let wildcard = problems(&format!("{UPSTREAM} --admin-listen 127.0.0.1:8080"));
    assert_eq!(wildcard.len(), 1, "{wildcard:?}");
    // Port 0 picks distinct free ports.
    let ephemeral = "--listen 127.0.0.1:0 --admin-listen 127.0.0.1:0";
    assert!(config(&format!("{UPSTREAM} {ephemeral}")).is_ok());
    assert!(config(&format!("{UPSTREAM} --admin-listen 127.0.0.1:9091")).is_ok());
}

#[test]
fn upstream_pointing_at_own_listener_is_rejected() {
    for url in [
        "ws://127.0.0.1:8080",
        "ws://localhost:8080/x",
        "http://0.0.0.0:8080",
    ] {
        let problems = problems(&format!("--upstream {url}"));
        assert!(
            problems[0].contains("sessions would loop"),
            "{url}: {problems:?}"
        );
    }
    // Another host may well use the same port.
    assert!(config("--upstream ws://10.0.0.1:8080").is_ok());
}

#[test]
fn missing_upstream_suggests_demo() {
    assert_eq!(problems(""), ["--upstream is required (or try --demo)"]);
}

#[test]
fn worker_threads_default_to_one_per_cpu_and_bad_counts_are_refused() {
    assert!(config(UPSTREAM).unwrap().process.worker_threads >= 1);
    let three = config(&format!("{UPSTREAM} --worker-threads 3")).unwrap();
    assert_eq!(three.process.worker_threads, 3);
    for bad in ["-1", "many", "257"] {
        let found = problems(&format!("{UPSTREAM} --worker-threads={bad}"));
        assert!(found[0].contains("--worker-threads"), "{bad}: {found:?}");
    }
}

#[test]
fn demo_without_upstream_proxies_to_the_demo_listener() {
    let config = config("--demo").unwrap();
    let demo: SocketAddr = DEFAULT_DEMO_LISTEN.parse().unwrap();
    assert_eq!(config.demo, Some(demo));
    assert_eq!(config.upstream.url, Upstream::from_addr(demo));
    let custom = Config::try_from(cli("--demo --demo-listen 127.0.0.1:7000")).unwrap();
    assert_eq!(custom.upstream.url.port, 7000);
}

#[test]
fn demo_and_upstream_together_are_contradictory() {
    let problems = problems(&format!("--demo {UPSTREAM}"));
    assert_eq!(problems.len(), 1);
    assert!(problems[0].starts_with("--demo proxies to its own echo upstream"));
}

#[test]
fn demo_listener_must_not_clash_with_the_others() {
    let problems = problems("--demo --demo-listen 127.0.0.1:9090");
    assert!(problems[0].contains("--admin-listen 127.0.0.1:9090 and --demo-listen"));
}

#[test]
fn upstream_error_names_the_flag() {
    let problems = problems("--upstream ftp://legacy");
    assert!(problems[0].starts_with("--upstream \"ftp://legacy\": unsupported scheme"));
}

/// TLS files are read during validation: a missing pair is reported naming the file, with
/// the other problems, and upstream TLS flags on a plain upstream are refused.
#[test]
fn tls_problems_name_the_file_or_flag() {
    let found = problems(
        "--upstream ws://legacy --tls-cert /nonexistent/tls.crt --tls-key /nonexistent/tls.key \
         --upstream-ca /nonexistent/ca.pem --close-timeout 0",
    );
    assert_eq!(found.len(), 3, "{found:#?}");
    let has = |start: &str| found.iter().any(|p| p.starts_with(start));
    assert!(
        has("--tls-cert/--tls-key: cannot read /nonexistent/tls.crt"),
        "{found:#?}"
    );
    assert!(
        has("--upstream-ca only applies to a TLS upstream"),
        "{found:#?}"
    );
    let missing_ca = problems("--upstream wss://legacy --upstream-ca /nonexistent/ca.pem");
    assert!(
        missing_ca[0].contains("/nonexistent/ca.pem"),
        "{missing_ca:?}"
    );
}

#[test]
fn a_tls_cert_needs_its_key() {
    let err = Cli::try_parse_from(["wsbeat", "--upstream", "ws://legacy", "--tls-cert", "c.pem"])
        .unwrap_err();
    assert!(err.to_string().contains("--tls-key"), "{err}");
}

#[test]
fn upstream_pong_timeout_is_auto_zero_or_a_duration() {
    let hb = |flags: &str| {
        config(&format!("{UPSTREAM} {flags}"))
            .unwrap()
            .relay
            .upstream
    };
    let auto = hb("--upstream-pong-timeout-after-pong 3s");
    assert_eq!(
        (auto.timeout, auto.timeout_after_pong),
        (Duration::ZERO, Some(ms(3000)))
    );
    assert_eq!(
        hb("--upstream-pong-timeout AUTO --upstream-pong-timeout-after-pong 3s"),
        auto
    );
    let off = hb("--upstream-pong-timeout 0");
    assert_eq!(
        (off.timeout, off.timeout_after_pong),
        (Duration::ZERO, None)
    );
    let fixed = hb("--upstream-pong-timeout 2s");
    assert_eq!((fixed.timeout, fixed.timeout_after_pong), (ms(2000), None));
    let bad = problems(&format!("{UPSTREAM} --upstream-pong-timeout sometimes"));
    assert!(
        bad[0].starts_with("--upstream-pong-timeout \"sometimes\""),
        "{bad:?}"
    );
}

#[test]
fn risky_settings_warn() {
    let line = "--client-ping-interval 60s --client-pong-timeout 0 \
                --upstream-ping-interval 0 --upstream-tcp-user-timeout 0";
    let warnings = config(&format!("{UPSTREAM} {line}")).unwrap().warnings();
    assert_eq!(warnings.len(), 4, "{warnings:#?}");
    assert!(warnings[0].starts_with("--client-ping-interval 60s is 60 s or more"));
    assert!(warnings[1].starts_with("--upstream-ping-interval 0"));
    assert!(warnings[2].starts_with("--client-pong-timeout 0"));
    assert!(warnings[3].contains("dead upstreams"));
}

#[test]
fn boolean_flags_accept_common_spellings() {
    // Environment variables arrive as values; clap's plain bool parser only takes true/false.
    for id in ["demo", "preserve_host"] {
        let cmd = Cli::command();
        let flag = cmd.get_arguments().find(|a| a.get_id() == id);
        let parser = flag.expect("flag exists").get_value_parser();
        let accepted: Vec<String> = parser
            .possible_values()
            .expect("a fixed set of spellings")
            .map(|value| value.get_name().to_owned())
            .collect();
        for raw in ["1", "0", "yes", "no", "true", "false", "on", "off"] {
            assert!(
                accepted.iter().any(|a| a == raw),
                "{id}: {raw} not in {accepted:?}"
            );
        }
    }
}

#[test]
fn log_summary_shows_effective_values() {
    let summary = config("--demo --log-format json").unwrap().log_summary();
    for part in [
        "listen=0.0.0.0:8080",
        "upstream=(demo)",
        "upstream_pong_timeout=auto(after_pong=20s) ",
        "client_pong_timeout=20s",
        "max_frame_size=16MiB",
        "demo=127.0.0.1:0",
        "log_format=json",
    ] {
        assert!(summary.contains(part), "{part} missing in {summary}");
    }
}

/// Every flag keeps the name, variable and default it had before the flags were grouped:
/// deployments set them, so a rename is a breaking change, not a refactoring. One default
/// changed on purpose: `--upstream-pong-timeout` is `auto` (it was 0), so that a hung upstream
/// that has shown it can pong is found.
#[test]
fn flag_names_variables_and_defaults_are_stable() {
    let expected: [(&str, Option<&str>); 45] = [
        ("listen", Some(DEFAULT_LISTEN)),
        ("admin-listen", Some(DEFAULT_ADMIN_LISTEN)),
        ("upstream", None),
        ("preserve-host", None),
        ("connect-timeout", Some("5s")),
        ("upstream-tcp-user-timeout", Some("30s")),
        ("handshake-timeout", Some("10s")),
        ("client-ping-interval", Some("20s")),
        ("client-pong-timeout", Some("20s")),
        ("upstream-ping-interval", Some("20s")),
        ("upstream-pong-timeout", Some("auto")),
        ("upstream-pong-timeout-after-pong", Some("20s")),
        ("close-timeout", Some("5s")),
        ("max-frame-size", Some("16MiB")),
        ("upstream-masking", Some("fresh")),
        ("splice-min-payload", Some("64KiB")),
        ("drain-delay", Some("5s")),
        ("shutdown-grace", Some("25s")),
        ("worker-threads", Some("0")),
        ("log-format", Some("text")),
        ("log-level", Some("info")),
        ("demo", None),
        ("demo-listen", Some(DEFAULT_DEMO_LISTEN)),
        ("listen-backlog", Some("1024")),
        ("admin-header-timeout", Some("5s")),
        ("admin-max-connections", Some("16")),
        ("max-connections", Some("auto")),
        ("max-request-header-size", Some("16KiB")),
        ("trusted-proxies", Some("")),
        ("allowed-origins", Some("*")),
        ("text-heartbeat", None),
        ("client-text-ping", None),
        ("client-text-pong", None),
        ("forward-text-pings", None),
        ("client-keepalive-message", None),
        ("client-keepalive-interval", Some("0")),
        ("upstream-text-ping", None),
        ("upstream-text-ping-interval", Some("0")),
        ("upstream-text-pong", None),
        ("tls-cert", None),
        ("tls-key", None),
        ("upstream-ca", None),
        ("upstream-client-cert", None),
        ("upstream-client-key", None),
        ("upstream-server-name", None),
    ];
    let cmd = Cli::command();
    let found: Vec<(String, Option<String>, Option<String>)> = cmd
        .get_arguments()
        .filter_map(|a| {
            let long = a.get_long()?;
            let env = a.get_env().and_then(|e| e.to_str()).map(str::to_owned);
            let default = a.get_default_values().first();
            let default = default.and_then(|d| d.to_str()).map(str::to_owned);
            (long != "help" && long != "version").then(|| (long.to_owned(), env, default))
        })
        .collect();
    assert_eq!(found.len(), expected.len(), "{found:#?}");
    for (long, default) in expected {
        let env = format!("WSBEAT_{}", long.replace('-', "_").to_uppercase());
        let want = (long.to_owned(), Some(env), default.map(str::to_owned));
        assert!(found.contains(&want), "{want:?} not in {found:#?}");
    }
}

/// `--help` reads in sections, one per role, each listing its own flags.
#[test]
fn help_is_grouped_by_role() {
    let help = Cli::command().render_long_help().to_string();
    let sections = [
        ("Listeners:", "--admin-listen"),
        ("Upstream:", "--upstream-tcp-user-timeout"),
        ("Clients:", "--handshake-timeout"),
        ("Sessions:", "--client-ping-interval"),
        ("Text heartbeats:", "--client-keepalive-interval"),
        ("Shutdown:", "--shutdown-grace"),
        ("Process:", "--worker-threads"),
        ("Demo:", "--demo-listen"),
        ("TLS:", "--upstream-server-name"),
    ];
    // A heading is an unindented line ending in ':'; a section runs to the next heading.
    let mut headings: Vec<(&str, String)> = Vec::new();
    for line in help.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            headings.push((line, String::new()));
        } else if let Some((_, body)) = headings.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    let names: Vec<&str> = headings.iter().map(|(h, _)| *h).collect();
    let want: Vec<&str> = sections.iter().map(|(h, _)| *h).collect();
    assert_eq!(
        names,
        [&["Commands:", "Options:"][..], &want].concat(),
        "{help}"
    );
    assert!(headings[0].1.contains("drain"), "{help}");
    for ((heading, flag), (_, body)) in sections.iter().zip(&headings[2..]) {
        assert!(body.contains(flag), "{flag} not under {heading}:\n{help}");
    }
}

/// The relay's settings are one group, taken from the flags as they are.
#[test]
fn relay_settings_are_one_group() {
    let config = config(&format!(
        "{UPSTREAM} --client-ping-interval 10ms --client-pong-timeout 15ms \
         --upstream-ping-interval 1m --upstream-pong-timeout 0 --close-timeout 2s \
         --max-frame-size 64KiB --upstream-masking forward --splice-min-payload 1MiB"
    ))
    .unwrap();
    let want = RelayConfig {
        client: HeartbeatConfig {
            interval: ms(10),
            timeout: ms(15),
            timeout_after_pong: None,
        },
        upstream: HeartbeatConfig {
            interval: ms(60_000),
            timeout: Duration::ZERO,
            timeout_after_pong: None,
        },
        close_timeout: ms(2000),
        max_frame_size: 64 * 1024,
        upstream_masking: UpstreamMasking::Forward,
        splice_min_payload: 1 << 20,
        text: Default::default(),
    };
    assert_eq!(*config.relay, want);
}

/// Re-masking with fresh keys is the default (RFC 6455 10.3); forwarding the client's keys is
/// an opt-in, warned about when the upstream is not on loopback, and a typo is refused.
#[test]
fn upstream_masking_is_fresh_unless_forward_is_asked_for() {
    let default = config(UPSTREAM).unwrap();
    assert_eq!(default.relay.upstream_masking, UpstreamMasking::Fresh);
    let local = config(&format!("{UPSTREAM} --upstream-masking forward")).unwrap();
    assert_eq!(local.relay.upstream_masking, UpstreamMasking::Forward);
    assert!(local.warnings().is_empty(), "{:?}", local.warnings());
    let remote = config("--upstream ws://10.1.2.3:9000 --upstream-masking forward").unwrap();
    let warnings = remote.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("--upstream-masking forward"),
        "{warnings:?}"
    );
    let typo = [
        "wsbeat",
        "--upstream",
        "ws://127.0.0.1:9000",
        "--upstream-masking",
        "keep",
    ];
    assert!(Cli::try_parse_from(typo).is_err());
}

/// A few microseconds between pings would flood both peers; below 10 ms is refused with a
/// message that names the flag, while 0 still switches the timer off.
#[test]
fn heartbeat_periods_below_10ms_are_refused() {
    for flag in [
        "--client-ping-interval",
        "--client-pong-timeout",
        "--upstream-ping-interval",
        "--upstream-pong-timeout",
        "--upstream-pong-timeout-after-pong",
    ] {
        for raw in ["0.001ms", "1ms", "9.999ms"] {
            let found = problems(&format!("{UPSTREAM} {flag} {raw}"));
            assert_eq!(found.len(), 1, "{flag} {raw}: {found:#?}");
            assert!(found[0].starts_with(flag), "{flag} {raw}: {found:?}");
            assert!(
                found[0].contains("below the 10ms minimum; use 0 (off) or 10ms or more"),
                "{flag} {raw}: {found:?}"
            );
        }
        assert!(
            config(&format!("{UPSTREAM} {flag} 10ms")).is_ok(),
            "{flag} 10ms"
        );
    }
    let off = "--client-ping-interval 0 --client-pong-timeout 0 --upstream-ping-interval 0";
    let config = config(&format!("{UPSTREAM} {off} --upstream-pong-timeout 0")).unwrap();
    assert_eq!(config.relay.client, HeartbeatConfig::OFF);
    assert_eq!(config.relay.upstream, HeartbeatConfig::OFF);
}

/// Parses `args` (after the program name), keeping spaces inside values.
fn parse(args: &[&str]) -> Result<Config, ConfigError> {
    let cli = Cli::try_parse_from(std::iter::once("wsbeat").chain(args.iter().copied()))
        .expect("test arguments parse");
    Config::try_from(cli)
}

/// The limits and request rules: defaults, explicit values, and every bad value reported.
#[test]
fn limits_and_request_rules_parse_and_refuse_bad_values() {
    let config = parse(&["--upstream", "ws://127.0.0.1:9"]).unwrap();
    assert_eq!(config.listen.backlog, DEFAULT_LISTEN_BACKLOG);
    assert_eq!(
        config.listen.admin_header_timeout,
        DEFAULT_ADMIN_HEADER_TIMEOUT
    );
    assert_eq!(
        config.listen.admin_max_connections,
        DEFAULT_ADMIN_MAX_CONNECTIONS
    );
    assert_eq!(
        config.clients.max_request_header_size as u64,
        DEFAULT_MAX_REQUEST_HEADER_BYTES
    );
    assert!(config.clients.trusted_proxies.is_empty());
    assert_eq!(config.clients.allowed_origins, None);
    // auto: what the open-files limit holds, with descriptors kept aside.
    let nofile = crate::net::open_files_limit().unwrap_or(1024);
    assert_eq!(
        config.clients.max_connections,
        crate::net::sessions_within(nofile)
    );

    let config = parse(&[
        "--upstream",
        "ws://127.0.0.1:9",
        "--max-connections",
        "100",
        "--trusted-proxies",
        "10.0.0.0/8, ::1",
        "--allowed-origins",
        "https://App.example,http://localhost:3000",
        "--listen-backlog",
        "4096",
    ])
    .unwrap();
    assert_eq!(config.clients.max_connections, 100);
    assert_eq!(config.clients.trusted_proxies.len(), 2);
    assert_eq!(
        config.clients.allowed_origins.as_deref(),
        Some(
            &[
                "https://app.example".to_string(),
                "http://localhost:3000".to_string()
            ][..]
        )
    );
    assert_eq!(config.listen.backlog, 4096);

    let err = parse(&[
        "--upstream",
        "ws://127.0.0.1:9",
        "--max-connections",
        "0",
        "--max-request-header-size",
        "1KiB",
        "--trusted-proxies",
        "10.0.0.0/33",
        "--allowed-origins",
        "https://app.example/path",
        "--admin-header-timeout",
        "0",
        "--admin-max-connections",
        "lots",
        "--listen-backlog",
        "many",
    ])
    .unwrap_err();
    for flag in [
        "--max-connections",
        "--max-request-header-size",
        "--trusted-proxies",
        "--allowed-origins",
        "--admin-header-timeout",
        "--admin-max-connections",
        "--listen-backlog",
    ] {
        assert!(
            err.problems.iter().any(|p| p.contains(flag)),
            "{flag} not reported: {err}"
        );
    }
}

/// The drain's two durations: 0 delay skips phase 1; a grace of 0 would drop every session
/// before its 1001 is delivered, so it is refused.
#[test]
fn drain_delay_and_shutdown_grace() {
    let config = config(&format!(
        "{UPSTREAM} --drain-delay 0 --shutdown-grace 150ms"
    ))
    .unwrap();
    assert_eq!(config.shutdown.drain_delay, Duration::ZERO);
    assert_eq!(config.shutdown.grace, ms(150));
    let found = problems(&format!("{UPSTREAM} --shutdown-grace 0 --drain-delay 5"));
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found[0].starts_with("--drain-delay \"5\": missing unit"),
        "{found:?}"
    );
    assert!(
        found[1].starts_with("--shutdown-grace must be above 0"),
        "{found:?}"
    );
    // Delay plus grace fit Kubernetes' default 30 s termination grace period.
    assert!(DEFAULT_DRAIN_DELAY + DEFAULT_SHUTDOWN_GRACE <= Duration::from_secs(30));
}

/// `wsbeat drain` takes the admin address from the same variable as the server, so a
/// `preStop` hook in the same container needs no flag.
#[test]
fn drain_subcommand_parses() {
    let drain = |args: &[&str]| match Cli::try_parse_from(args).unwrap().command {
        Some(Command::Drain(args)) => args,
        None => panic!("no subcommand in {args:?}"),
    };
    let plain = drain(&["wsbeat", "drain"]);
    assert_eq!(
        (plain.admin.as_str(), plain.wait),
        (DEFAULT_ADMIN_LISTEN, false)
    );
    let waiting = drain(&["wsbeat", "drain", "--admin", "127.0.0.1:9", "--wait"]);
    assert_eq!(
        (waiting.admin.as_str(), waiting.wait),
        ("127.0.0.1:9", true)
    );
    let cmd = Cli::command();
    let sub = cmd.find_subcommand("drain").expect("drain subcommand");
    let admin = sub.get_arguments().find(|a| a.get_id() == "admin").unwrap();
    assert_eq!(
        admin.get_env().and_then(|e| e.to_str()),
        Some("WSBEAT_ADMIN_LISTEN")
    );
}
