//! The Grafana dashboard (`grafana/wsbeat.json`) and the Prometheus rules
//! (`deploy/prometheus/wsbeat-rules.yaml`) against a running proxy:
//!
//! - every PromQL expression parses (`promql-parser`), and every metric it names is one a
//!   running proxy exports (histograms as `_bucket`/`_sum`/`_count`), with label values that
//!   exist, so a renamed metric or a typo breaks the build instead of an operator's graph;
//! - every exported `wsbeat_` family appears in at least one panel;
//! - the dashboard has the variables, rows and panel descriptions operators rely on;
//! - `promtool check rules`, `promtool test rules` and `promtool check metrics` (on a scrape
//!   taken after real traffic) pass. promtool comes from the Debian package `prometheus`; when it
//!   is missing these checks print "skipped", unless `WSBEAT_REQUIRE_ALL=1` makes that a failure.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::prom::{Scrape, metric};
use common::*;
use promql_parser::label::MatchOp;
use promql_parser::parser::{self, Expr, VectorSelector};
use promql_parser::util::{ExprVisitor, walk_expr};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

const DASHBOARD: &str = "grafana/wsbeat.json";
const RULES: &str = "deploy/prometheus/wsbeat-rules.yaml";
const RULE_TESTS: &str = "deploy/prometheus/wsbeat-rules.test.yaml";
/// Rows the dashboard must have, in order.
const ROWS: [&str; 5] = [
    "Traffic",
    "Liveness per side",
    "Connection lifecycle",
    "Handshake failures",
    "Process",
];
/// Series Prometheus itself makes for every target; the rules may use them.
const PROMETHEUS_SERIES: [&str; 1] = ["up"];
/// Labels Prometheus attaches at scrape time, absent from the proxy's own output.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];
/// Shortest description accepted: a sentence saying what the panel shows is not enough, it must
/// also say what is normal and what to do.
const MIN_DESCRIPTION_CHARS: usize = 150;
/// Bound for one promtool run.
const PROMTOOL_TIMEOUT: Duration = Duration::from_secs(60);

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_path(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

/// Every panel, rows included, with nested panels of collapsed rows flattened.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for p in panels.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn is_row(panel: &Value) -> bool {
    panel["type"] == "row"
}

/// One PromQL expression and where it comes from.
struct Query {
    origin: String,
    expr: String,
}

/// The expressions of every panel target.
fn panel_queries(dashboard: &Value) -> Vec<Query> {
    let mut out = Vec::new();
    for p in all_panels(dashboard).into_iter().filter(|p| !is_row(p)) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {:?}: target without expr", p["title"]));
            out.push(Query {
                origin: format!(
                    "panel {:?} target {}",
                    p["title"].as_str().unwrap_or("?"),
                    t["refId"].as_str().unwrap_or("?")
                ),
                expr: expr.to_string(),
            });
        }
    }
    out
}

/// The parsed rules file: (group, record or alert name, rule as YAML).
fn rules() -> Vec<(String, String, serde_norway::Value)> {
    let doc: serde_norway::Value =
        serde_norway::from_str(&read(RULES)).unwrap_or_else(|e| panic!("{RULES}: {e}"));
    let mut out = Vec::new();
    for group in doc["groups"].as_sequence().expect("groups") {
        let gname = group["name"].as_str().expect("group name").to_string();
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["record"]
                .as_str()
                .or_else(|| rule["alert"].as_str())
                .expect("record or alert")
                .to_string();
            out.push((gname.clone(), name, rule.clone()));
        }
    }
    out
}

fn rule_queries() -> Vec<Query> {
    rules()
        .into_iter()
        .map(|(group, name, rule)| Query {
            origin: format!("rule {group}/{name}"),
            expr: rule["expr"].as_str().expect("expr").to_string(),
        })
        .collect()
}

fn recorded_names() -> BTreeSet<String> {
    rules()
        .into_iter()
        .filter(|(_, _, r)| r["record"].is_string())
        .map(|(_, name, _)| name)
        .collect()
}

/// Replaces Grafana's variables with values Prometheus would see, so the text parses as PromQL.
fn expand_grafana_variables(expr: &str) -> String {
    let expanded = expr
        .replace("$__rate_interval", "5m")
        .replace("${instance}", ".*")
        .replace("$instance", ".*");
    assert!(
        !expanded.contains('$'),
        "unknown Grafana variable in {expr:?}"
    );
    expanded
}

fn parse(q: &Query) -> Expr {
    parser::parse(&expand_grafana_variables(&q.expr))
        .unwrap_or_else(|e| panic!("{}: {:?} does not parse: {e}", q.origin, q.expr))
}

/// Every vector selector in an expression (matrix selectors contribute theirs).
fn selectors(expr: &Expr) -> Vec<VectorSelector> {
    struct Collect(Vec<VectorSelector>);
    impl ExprVisitor for Collect {
        type Error = ();
        fn pre_visit(&mut self, e: &Expr) -> Result<bool, ()> {
            match e {
                Expr::VectorSelector(vs) => self.0.push(vs.clone()),
                Expr::MatrixSelector(ms) => self.0.push(ms.vs.clone()),
                _ => {}
            }
            Ok(true)
        }
    }
    let mut c = Collect(Vec::new());
    walk_expr(&mut c, expr).expect("walk");
    c.0
}

/// The metric name a selector reads, from its name or a `__name__="..."` matcher.
fn selector_name(vs: &VectorSelector) -> String {
    vs.name
        .clone()
        .or_else(|| {
            vs.matchers
                .matchers
                .iter()
                .find(|m| m.name == "__name__" && matches!(m.op, MatchOp::Equal))
                .map(|m| m.value.clone())
        })
        .unwrap_or_else(|| panic!("selector without a metric name: {vs}"))
}

/// True when the selector has `instance=~"$instance"` (expanded to `.*`).
fn filters_on_instance_variable(vs: &VectorSelector) -> bool {
    vs.matchers
        .matchers
        .iter()
        .any(|m| m.name == "instance" && matches!(m.op, MatchOp::Re(_)) && m.value == ".*")
}

/// `(quantile, selectors of its vector)` for every `histogram_quantile` call.
fn quantile_calls(expr: &Expr) -> Vec<(f64, Vec<String>)> {
    struct Collect(Vec<(f64, Vec<String>)>);
    impl ExprVisitor for Collect {
        type Error = ();
        fn pre_visit(&mut self, e: &Expr) -> Result<bool, ()> {
            if let Expr::Call(call) = e
                && call.func.name == "histogram_quantile"
                && let [q, v] = call.args.args.as_slice()
                && let Expr::NumberLiteral(n) = q.as_ref()
            {
                let names = selectors(v).iter().map(selector_name).collect();
                self.0.push((n.val, names));
            }
            Ok(true)
        }
    }
    let mut c = Collect(Vec::new());
    walk_expr(&mut c, expr).expect("walk");
    c.0
}

/// Values a regex matcher stands for, when it is a plain alternation of label-safe words.
fn alternatives(regex: &str) -> Option<Vec<&str>> {
    let words: Vec<&str> = regex.split('|').collect();
    let plain = |w: &&str| {
        !w.is_empty()
            && w.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '+' || c == '.')
    };
    words.iter().all(plain).then_some(words)
}

/// Problems with a selector of an exported metric: label values that no series has.
fn label_problems(vs: &VectorSelector, name: &str, scrape: &Scrape) -> Vec<String> {
    let series = scrape.select(name, &[]);
    let has_value = |label: &str, value: &str| {
        series
            .iter()
            .any(|s| s.labels.get(label).map(String::as_str) == Some(value))
    };
    let has_label = |label: &str| series.iter().any(|s| s.labels.contains_key(label));
    let mut problems = Vec::new();
    for m in &vs.matchers.matchers {
        if m.name == "__name__" || TARGET_LABELS.contains(&m.name.as_str()) {
            continue;
        }
        let missing: Vec<&str> = match &m.op {
            MatchOp::Equal => vec![m.value.as_str()],
            MatchOp::Re(_) => alternatives(&m.value).unwrap_or_default(),
            MatchOp::NotEqual | MatchOp::NotRe(_) => Vec::new(),
        }
        .into_iter()
        .filter(|v| !has_value(&m.name, v))
        .collect();
        if !missing.is_empty() {
            problems.push(format!("{name}: no series has {}={missing:?}", m.name));
        }
        if !has_label(&m.name) {
            problems.push(format!("{name} has no label {:?}", m.name));
        }
    }
    problems
}

/// Starts the demo upstream and a proxy in front of it, with fast client pings.
async fn proxy_to_demo() -> TestProxy {
    spawn_proxy_to(
        spawn_demo_upstream().await,
        &[
            "--client-ping-interval",
            "50ms",
            "--client-pong-timeout",
            "2s",
            "--upstream-ping-interval",
            "50ms",
        ],
    )
    .await
}

/// A scrape taken after one whole WebSocket session through the proxy to `wsbeat::demo`:
/// messages both ways, answered client pings, unanswered upstream pings, a close.
async fn scrape_after_traffic() -> Scrape {
    let proxy = proxy_to_demo().await;
    let (mut ws, _) = ws_connect(proxy.ws_url("/chat")).await;
    for text in ["hello", "wsbeat"] {
        assert_echo(&mut ws, text).await;
    }
    // Reading answers the proxy's pings; at 50 ms a few arrive in 300 ms.
    stay_quiet_for(&mut ws, Duration::from_millis(300)).await;
    within(STEP, "close", ws.close(None)).await.expect("close");
    expect_client_close(&mut ws, STEP).await;
    metric("wsbeat_connections_active")
        .value(0)
        .assert_in(proxy.admin_addr)
        .await;
    let s = metric("wsbeat_closes_total")
        .label("initiator", "client")
        .label("reason", "normal")
        .value(1)
        .assert_in(proxy.admin_addr)
        .await;
    let pongs = s.value("wsbeat_pongs_received_total", &[("side", "client")]);
    assert!(pongs > 0.0, "traffic should include answered pings");
    s
}

#[test]
fn dashboard_has_the_variables_rows_and_descriptions_operators_need() {
    let d = dashboard();
    assert!(
        d["schemaVersion"].as_u64().expect("schemaVersion") >= 39,
        "schemaVersion {}",
        d["schemaVersion"]
    );
    assert!(d["uid"].is_string() && d["title"].is_string());
    let vars: BTreeMap<&str, &Value> = d["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .map(|v| (v["name"].as_str().expect("variable name"), v))
        .collect();
    let ds = vars.get("datasource").expect("a `datasource` variable");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let instance = vars.get("instance").expect("an `instance` variable");
    assert_eq!(instance["type"], "query");
    let q = instance["query"]["query"]
        .as_str()
        .or_else(|| instance["query"].as_str())
        .expect("instance query");
    assert_eq!(q, "label_values(wsbeat_build_info, instance)");

    let panels = all_panels(&d);
    let rows: Vec<&str> = panels
        .iter()
        .filter(|p| is_row(p))
        .map(|p| p["title"].as_str().expect("row title"))
        .collect();
    assert_eq!(rows, ROWS);
    let mut ids = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().expect("title");
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "duplicate id: {title}"
        );
        let pos = &p["gridPos"];
        let (x, w) = (pos["x"].as_u64().expect("x"), pos["w"].as_u64().expect("w"));
        assert!(x + w <= 24, "{title} is wider than the grid");
        if is_row(p) {
            continue;
        }
        let description = p["description"].as_str().unwrap_or("");
        assert!(
            description.len() >= MIN_DESCRIPTION_CHARS && description.contains("Normal"),
            "{title}: the description must say what the panel shows, what is Normal and what to do"
        );
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            let expr = t["expr"].as_str().expect("expr");
            let parsed = parse(&Query {
                origin: title.into(),
                expr: expr.into(),
            });
            assert!(
                selectors(&parsed).iter().all(filters_on_instance_variable),
                "{title}: every selector must have instance=~\"$instance\": {expr}"
            );
        }
    }
}

#[test]
fn liveness_row_shows_rtt_quantiles_timeouts_and_pong_ratio_per_side() {
    let exprs: Vec<Expr> = panel_queries(&dashboard()).iter().map(parse).collect();
    let quantiles: Vec<(f64, Vec<String>)> = exprs.iter().flat_map(quantile_calls).collect();
    for q in [0.5, 0.99] {
        assert!(
            quantiles
                .iter()
                .any(|(v, names)| *v == q && names == &["wsbeat_ping_rtt_seconds_bucket"]),
            "no histogram_quantile({q}, ...wsbeat_ping_rtt_seconds_bucket...): {quantiles:?}"
        );
    }
    let ratio = exprs.iter().any(|e| match e {
        Expr::Binary(b) if b.op.to_string() == "/" => {
            let lhs: Vec<String> = selectors(&b.lhs).iter().map(selector_name).collect();
            let rhs: Vec<String> = selectors(&b.rhs).iter().map(selector_name).collect();
            lhs == ["wsbeat_pongs_received_total"] && rhs == ["wsbeat_pings_sent_total"]
        }
        _ => false,
    });
    assert!(ratio, "no pongs_received / pings_sent ratio panel");
    let panels = panel_queries(&dashboard());
    assert!(
        panels
            .iter()
            .any(|q| q.expr.contains("wsbeat_peer_timeouts_total") && q.expr.contains("by (side)")),
        "no timeouts-per-side panel"
    );
}

/// The core check: a metric renamed in the proxy, or a typo in a panel or rule, fails here.
#[tokio::test]
async fn every_expression_parses_and_names_only_exported_metrics_and_label_values() {
    let scrape = scrape_after_traffic().await;
    let exported = scrape.series_names();
    let recorded = recorded_names();
    let mut problems = Vec::new();
    let mut queries = panel_queries(&dashboard());
    queries.extend(rule_queries());
    for q in &queries {
        for vs in selectors(&parse(q)) {
            let name = selector_name(&vs);
            let from_rules = q.origin.starts_with("rule ");
            if exported.contains(name.as_str()) {
                problems.extend(
                    label_problems(&vs, &name, &scrape)
                        .into_iter()
                        .map(|p| format!("{}: {p}", q.origin)),
                );
            } else if !(from_rules
                && (recorded.contains(&name) || PROMETHEUS_SERIES.contains(&name.as_str())))
            {
                problems.push(format!("{}: {name} is not exported by the proxy", q.origin));
            }
        }
    }
    // The instance variable's query is Grafana syntax, not PromQL: check its metric by hand.
    assert!(exported.contains("wsbeat_build_info"));
    assert!(
        problems.is_empty(),
        "{} problems:\n{}\nexported series: {exported:?}",
        problems.len(),
        problems.join("\n")
    );
}

#[tokio::test]
async fn every_exported_wsbeat_family_appears_in_a_panel() {
    let proxy = proxy_to_demo().await;
    let scrape = common::prom::scrape(proxy.admin_addr).await;
    let named: BTreeSet<String> = panel_queries(&dashboard())
        .iter()
        .flat_map(|q| selectors(&parse(q)))
        .map(|vs| selector_name(&vs))
        .collect();
    let missing: Vec<&String> = scrape
        .families
        .iter()
        .filter(|(family, _)| family.starts_with("wsbeat_"))
        .filter(|(family, kind)| {
            let series: Vec<String> = if kind.as_str() == "histogram" {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .map(|s| format!("{family}{s}"))
                    .collect()
            } else {
                vec![family.to_string()]
            };
            !series.iter().any(|s| named.contains(s))
        })
        .map(|(family, _)| family)
        .collect();
    assert!(
        missing.is_empty(),
        "exported families no panel shows: {missing:?}"
    );
    assert!(
        scrape.families.len() > 10,
        "scrape looks empty: {:?}",
        scrape.families
    );
}

#[test]
fn every_alert_has_severity_summary_description_and_runbook() {
    let rules = rules();
    let alerts: Vec<_> = rules
        .iter()
        .filter(|(_, _, r)| r["alert"].is_string())
        .collect();
    let names: BTreeSet<&str> = alerts.iter().map(|(_, n, _)| n.as_str()).collect();
    for required in [
        "WsbeatDown",
        "WsbeatDeadPeerRateHigh",
        "WsbeatUpstreamNoPongs",
        "WsbeatHandshakeFailuresHigh",
    ] {
        assert!(
            names.contains(required),
            "missing alert {required}: {names:?}"
        );
    }
    for (_, name, rule) in alerts {
        assert!(rule["labels"]["severity"].is_string(), "{name}: severity");
        for key in ["summary", "description", "runbook"] {
            let text = rule["annotations"][key].as_str().unwrap_or("");
            assert!(
                text.len() >= 20,
                "{name}: annotation {key} too short: {text:?}"
            );
        }
    }
    for (_, name, _) in rules.iter().filter(|(_, _, r)| r["record"].is_string()) {
        assert_eq!(
            name.split(':').count(),
            3,
            "{name}: recording rules are named level:metric:operations"
        );
    }
}

/// Whether promtool can run here. Missing: print "skipped" and return false, or fail when
/// `WSBEAT_REQUIRE_ALL=1` (CI installs it, so a skip there would hide a broken check).
fn promtool_available() -> bool {
    let found = std::process::Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    assert!(
        std::env::var("WSBEAT_REQUIRE_ALL").as_deref() != Ok("1"),
        "promtool not found on PATH and WSBEAT_REQUIRE_ALL=1: install it with \
         `apt-get install -y prometheus` (Debian package prometheus ships promtool)"
    );
    println!("skipped: promtool not found (apt-get install -y prometheus)");
    false
}

/// Runs promtool with `args` (and `stdin`), within [`PROMTOOL_TIMEOUT`]; panics unless it
/// exits 0, showing its output.
async fn promtool(args: &[&str], stdin: Option<&str>) -> String {
    let mut child = tokio::process::Command::new("promtool")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn promtool");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        within(
            PROMTOOL_TIMEOUT,
            "writing to promtool",
            pipe.write_all(input.as_bytes()),
        )
        .await
        .expect("write promtool stdin");
    }
    let out = within(PROMTOOL_TIMEOUT, "promtool", child.wait_with_output())
        .await
        .expect("promtool output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {args:?} failed ({}):\n{text}",
        out.status
    );
    text
}

#[tokio::test]
async fn promtool_check_rules_accepts_the_rules_file() {
    if !promtool_available() {
        return;
    }
    let out = promtool(&["check", "rules", RULES], None).await;
    assert!(out.contains("SUCCESS"), "{out}");
}

/// `deploy/prometheus/wsbeat-rules.test.yaml`: each alert fires on the series it is about, with
/// its annotations rendered, and stays quiet otherwise.
#[tokio::test]
async fn promtool_test_rules_passes_the_alert_unit_tests() {
    if !promtool_available() {
        return;
    }
    let out = promtool(&["test", "rules", RULE_TESTS], None).await;
    assert!(out.contains("SUCCESS"), "{out}");
}

#[tokio::test]
async fn promtool_check_metrics_accepts_a_scrape_taken_after_traffic() {
    if !promtool_available() {
        return;
    }
    let scrape = scrape_after_traffic().await;
    let out = promtool(&["check", "metrics"], Some(&scrape.text)).await;
    assert!(
        out.trim().is_empty(),
        "promtool check metrics found problems:\n{out}"
    );
}
