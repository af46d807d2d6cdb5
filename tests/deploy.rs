//! The deployment files, checked by the tools an operator would use and by wsbeat's own parser:
//!
//! - every Kubernetes manifest under `deploy/kubernetes/` passes `kubernetes-validate --strict`
//!   for Kubernetes 1.33 (native sidecars stable) and for the newest version it knows;
//! - the Prometheus Operator resources (PodMonitor, PrometheusRule) pass their schemas
//!   (`tests/deploy/prometheus-operator.schema.yaml`, Python `jsonschema`), and the
//!   PrometheusRule is generated from `deploy/prometheus/wsbeat-rules.yaml`;
//! - every `WSBEAT_*` variable in the manifests and the Dockerfile, and every `/wsbeat` command
//!   in a hook, is accepted by the real CLI parser and [`Config`];
//! - the shutdown timings fit together (grace period, drain delay, the app's preStop sleep), and
//!   the wsbeat container is probed and locked down as the README says;
//! - `kubectl kustomize` renders both sidecar forms to exactly the files' resources;
//! - hadolint passes `deploy/Dockerfile` at `--failure-threshold warning`.
//!
//! The Python tools live in the venv `./scripts/test.sh` prepares (`WSBEAT_TEST_PYTHON`),
//! kubectl on `PATH`. A missing tool prints "skipped", unless `WSBEAT_REQUIRE_ALL=1`. Each tool
//! check also runs once on a deliberately broken input, to show the check can fail.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use clap::builder::{BoolishValueParser, TypedValueParser};
use clap::{CommandFactory, Parser};
use common::{skip_or_fail, test_python, within};
use serde::Deserialize;
use serde_json::Value;
use wsbeat::config::{Cli, Config};

const KUBERNETES_DIR: &str = "deploy/kubernetes";
/// The two kustomizations: the ordinary second container and the native sidecar.
const KUSTOMIZATIONS: [&str; 2] = ["deploy/kubernetes", "deploy/kubernetes/native-sidecar"];
const DOCKERFILE: &str = "deploy/Dockerfile";
const RULES: &str = "deploy/prometheus/wsbeat-rules.yaml";
const PROMETHEUS_RULE: &str = "deploy/kubernetes/common/prometheusrule.yaml";
const CRD_SCHEMA: &str = "tests/deploy/prometheus-operator.schema.yaml";
const CRD_CHECK: &str = "tests/deploy/check_crd.py";
/// The oldest Kubernetes the manifests claim (native sidecars are stable from 1.33), and the
/// newest kubernetes-validate ships schemas for (its default).
const KUBERNETES_VERSIONS: [&str; 2] = ["1.33.0", "latest"];
/// Bound for one run of an external tool.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_path(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// Every YAML document in `text`, as JSON values (empty documents dropped).
fn yaml_docs(text: &str, origin: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{origin}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// The manifests under `deploy/kubernetes/` (kustomizations excluded), relative to the repo.
fn manifest_files() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension() == Some(OsStr::new("yaml"))
                && path.file_name() != Some(OsStr::new("kustomization.yaml"))
            {
                out.push(path);
            }
        }
    }
    let root = repo_path("");
    let mut found = Vec::new();
    walk(&repo_path(KUBERNETES_DIR), &mut found);
    let mut files: Vec<String> = found
        .iter()
        .map(|p| {
            p.strip_prefix(&root)
                .expect("under the repo")
                .display()
                .to_string()
        })
        .collect();
    files.sort();
    assert!(files.len() >= 7, "manifests found: {files:?}");
    files
}

fn is_prometheus_operator(doc: &Value) -> bool {
    doc["apiVersion"]
        .as_str()
        .is_some_and(|v| v.starts_with("monitoring.coreos.com/"))
}

/// `(file, document)` for every manifest document.
fn manifest_docs() -> Vec<(String, Value)> {
    manifest_files()
        .into_iter()
        .flat_map(|file| {
            let docs = yaml_docs(&read(&file), &file);
            docs.into_iter().map(move |doc| (file.clone(), doc))
        })
        .collect()
}

/// Runs `program args` in the repository within [`TOOL_TIMEOUT`] and returns its output.
async fn run(program: impl AsRef<OsStr>, args: &[&OsStr]) -> Output {
    let program = program.as_ref();
    let child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {program:?}: {e}"));
    within(TOOL_TIMEOUT, "an external tool", child.wait_with_output())
        .await
        .expect("tool output")
}

fn shown(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A program from the test venv's `bin/` (next to `WSBEAT_TEST_PYTHON`), if it is there.
fn venv_tool(test: &str, name: &str) -> Option<PathBuf> {
    let python = test_python(test)?;
    let tool = python.parent().expect("venv bin directory").join(name);
    if tool.exists() {
        return Some(tool);
    }
    skip_or_fail(test, &format!("{} is missing", tool.display()));
    None
}

/// A scratch file in cargo's temporary directory for integration tests.
fn scratch_file(name: &str, contents: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("deploy-{name}"));
    std::fs::write(&path, contents).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    path
}

async fn kubernetes_validate(tool: &Path, version: &str, files: &[PathBuf]) -> Output {
    let mut args: Vec<&OsStr> = vec![OsStr::new("--strict"), OsStr::new("--quiet")];
    if version != "latest" {
        args.extend([OsStr::new("-k"), OsStr::new(version)]);
    }
    args.extend(files.iter().map(|f| f.as_os_str()));
    run(tool, &args).await
}

#[tokio::test]
async fn every_manifest_passes_kubernetes_validate_strict() {
    let test = "every_manifest_passes_kubernetes_validate_strict";
    let Some(tool) = venv_tool(test, "kubernetes-validate") else {
        return;
    };
    // The Prometheus Operator's kinds have no schema in kubernetes-validate (it would only
    // warn); the next test checks them.
    let mut files = BTreeSet::new();
    for (file, doc) in manifest_docs() {
        if !is_prometheus_operator(&doc) {
            files.insert(repo_path(&file));
        }
    }
    assert!(files.len() >= 5, "{files:?}");
    let files: Vec<PathBuf> = files.into_iter().collect();
    for version in KUBERNETES_VERSIONS {
        let out = kubernetes_validate(&tool, version, &files).await;
        let report = shown(&out);
        assert!(out.status.success(), "Kubernetes {version}: {report}");
        // --quiet prints only warnings and failures: a clean run prints nothing.
        assert!(out.stdout.is_empty(), "Kubernetes {version}: {report}");
    }

    // Strict mode must refuse a field the schema does not know.
    let deployment = read("deploy/kubernetes/deployment.yaml");
    let broken = deployment.replacen(
        "automountServiceAccountToken: false",
        "automountServiceAccountToken: false\n      terminationGraceSeconds: 40",
        1,
    );
    assert_ne!(broken, deployment);
    let out = kubernetes_validate(&tool, "1.33.0", &[scratch_file("bad.yaml", &broken)]).await;
    assert!(
        !out.status.success(),
        "unknown field accepted: {}",
        shown(&out)
    );
}

#[tokio::test]
async fn prometheus_operator_resources_match_their_crd_schemas() {
    let test = "prometheus_operator_resources_match_their_crd_schemas";
    let Some(python) = test_python(test) else {
        return;
    };
    let files: BTreeSet<String> = manifest_docs()
        .into_iter()
        .filter(|(_, doc)| is_prometheus_operator(doc))
        .map(|(file, _)| file)
        .collect();
    assert_eq!(files.len(), 2, "PodMonitor and PrometheusRule: {files:?}");
    let mut args: Vec<&OsStr> = vec![OsStr::new(CRD_CHECK), OsStr::new(CRD_SCHEMA)];
    args.extend(files.iter().map(OsStr::new));
    let out = run(&python, &args).await;
    let report = shown(&out);
    assert!(out.status.success(), "{report}");
    for kind in ["PodMonitor", "PrometheusRule"] {
        assert!(
            report.contains(&format!("{kind} ")),
            "{kind} not checked: {report}"
        );
    }

    // A misspelt field fails the check.
    let podmonitor = read("deploy/kubernetes/common/podmonitor.yaml");
    let broken = podmonitor.replacen("interval: 30s", "scrapeInterval: 30s", 1);
    assert_ne!(broken, podmonitor);
    let bad = scratch_file("bad-podmonitor.yaml", &broken);
    let args = [
        OsStr::new(CRD_CHECK),
        OsStr::new(CRD_SCHEMA),
        bad.as_os_str(),
    ];
    let out = run(&python, &args).await;
    assert!(
        !out.status.success(),
        "misspelt field accepted: {}",
        shown(&out)
    );
}

/// The PrometheusRule as it must read: the rules file's groups under `spec:`, indented by two
/// spaces, after a fixed header. Text rather than re-serialised YAML, so comments and block
/// scalars (the runbooks) stay as written.
fn expected_prometheus_rule(rules: &str) -> String {
    let mut out = String::from(
        "# Generated from deploy/prometheus/wsbeat-rules.yaml: the same groups, as a Prometheus \
         Operator\n# resource. Do not edit by hand; tests/deploy.rs checks it and rewrites it \
         under WSBEAT_BLESS=1.\n# Add the labels your Prometheus' ruleSelector matches.\n\
         apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata:\n  name: wsbeat\n  \
         labels:\n    app.kubernetes.io/name: legacy-chat\nspec:\n",
    );
    // The file's opening comment is about loading it into prometheus.yml: not carried over.
    let body = rules.lines().skip_while(|line| line.starts_with('#'));
    for line in body {
        if !line.trim().is_empty() {
            out.push_str("  ");
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

#[test]
fn prometheus_rule_is_generated_from_the_rules_file() {
    let rules = read(RULES);
    let expected = expected_prometheus_rule(&rules);
    if std::env::var("WSBEAT_BLESS").as_deref() == Ok("1") {
        std::fs::write(repo_path(PROMETHEUS_RULE), &expected).expect("write PrometheusRule");
    }
    let actual = read(PROMETHEUS_RULE);
    assert!(
        actual == expected,
        "{PROMETHEUS_RULE} is not {RULES} as a PrometheusRule; regenerate it with \
         `WSBEAT_BLESS=1 cargo test --test deploy prometheus_rule`"
    );
    // The same groups, parsed: the indentation kept every rule where it was.
    let file = &yaml_docs(&rules, RULES)[0];
    let resource = &yaml_docs(&actual, PROMETHEUS_RULE)[0];
    assert_eq!(resource["spec"]["groups"], file["groups"]);
    assert!(file["groups"].as_array().is_some_and(|g| g.len() == 2));
}

/// The wsbeat container of each Deployment: `(file, container)`, from `containers` or, for
/// the native sidecar, `initContainers`.
fn wsbeat_containers() -> Vec<(String, Value)> {
    let mut found = Vec::new();
    for (file, doc) in manifest_docs() {
        if doc["kind"] != "Deployment" {
            continue;
        }
        let pod = &doc["spec"]["template"]["spec"];
        let lists = [&pod["containers"], &pod["initContainers"]];
        let containers = lists.into_iter().filter_map(Value::as_array).flatten();
        let wsbeat: Vec<&Value> = containers.filter(|c| c["name"] == "wsbeat").collect();
        assert_eq!(wsbeat.len(), 1, "{file}: one wsbeat container");
        found.push((file, wsbeat[0].clone()));
    }
    assert_eq!(found.len(), 2, "both sidecar forms: {found:?}");
    found
}

fn wsbeat_of(file: &str) -> Value {
    let found = wsbeat_containers().into_iter().find(|(f, _)| f == file);
    found
        .unwrap_or_else(|| panic!("{file}: no wsbeat container"))
        .1
}

fn env_of(container: &Value) -> Vec<(String, String)> {
    let env = container["env"].as_array().expect("wsbeat has env");
    env.iter()
        .map(|var| {
            let name = var["name"].as_str().expect("env name").to_owned();
            let value = var["value"].as_str();
            let value = value.unwrap_or_else(|| panic!("{name}: a literal string value"));
            (name, value.to_owned())
        })
        .collect()
}

/// `ENV` settings of the Dockerfile's runtime stage.
fn dockerfile_env() -> Vec<(String, String)> {
    let text = read(DOCKERFILE);
    let runtime = text.rsplit("\nFROM ").next().expect("a runtime stage");
    let joined = runtime.replace("\\\n", " ");
    let env_lines = joined.lines().filter_map(|l| l.strip_prefix("ENV "));
    let pairs = env_lines.flat_map(str::split_whitespace);
    pairs
        .map(|pair| {
            let (name, value) = pair.split_once('=').expect("ENV NAME=value");
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

/// Turns `WSBEAT_*` variables into the command line clap would build from them: the variable
/// names and value parsers come from [`Cli`] itself, so nothing here can drift from the binary.
/// Panics on a variable no flag reads. (The variables are not put into the environment: tests
/// must not mutate it, and clap reads only the process environment.)
fn args_from_env(vars: &[(String, String)]) -> Vec<String> {
    let command = Cli::command();
    let mut args = vec!["wsbeat".to_owned()];
    for (name, value) in vars {
        let arg = command
            .get_arguments()
            .find(|a| a.get_env().and_then(|e| e.to_str()) == Some(name.as_str()));
        let arg = arg.unwrap_or_else(|| panic!("{name}: no wsbeat flag reads this variable"));
        let long = arg.get_long().expect("every flag is long");
        if arg.get_action().takes_values() {
            args.push(format!("--{long}={value}"));
        } else {
            // Switches read their variable through the boolish parser (config.rs checks that).
            let on = BoolishValueParser::new()
                .parse_ref(&command, Some(arg), OsStr::new(value))
                .unwrap_or_else(|e| panic!("{name}={value}: {e}"));
            if on {
                args.push(format!("--{long}"));
            }
        }
    }
    args
}

fn config_from_env(origin: &str, vars: &[(String, String)]) -> Config {
    let args = args_from_env(vars);
    let cli = Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{origin}: {args:?}: {e}"));
    Config::try_from(cli).unwrap_or_else(|e| panic!("{origin}: {args:?}: {e}"))
}

#[test]
fn every_wsbeat_variable_is_accepted_by_the_cli() {
    let forms = wsbeat_containers();
    for (file, container) in &forms {
        let env = env_of(container);
        for (name, _) in &env {
            assert!(name.starts_with("WSBEAT_"), "{file}: {name}");
        }
        let config = config_from_env(file, &env);
        assert!(
            config.warnings().is_empty(),
            "{file}: {:?}",
            config.warnings()
        );
        // The container's variables override the image's, as in Kubernetes.
        let mut with_image: Vec<_> = dockerfile_env()
            .into_iter()
            .filter(|(name, _)| !env.iter().any(|(n, _)| n == name))
            .collect();
        with_image.extend(env);
        config_from_env(&format!("{DOCKERFILE} + {file}"), &with_image);
    }
    // Both forms configure wsbeat alike; only the way it is started and stopped differs.
    assert_eq!(env_of(&forms[0].1), env_of(&forms[1].1));
    // The image's own settings, with only the upstream added.
    let mut image = dockerfile_env();
    image.push(("WSBEAT_UPSTREAM".into(), "ws://legacy:3000".into()));
    config_from_env(DOCKERFILE, &image);
}

#[test]
#[should_panic(expected = "no wsbeat flag reads this variable")]
fn a_misspelt_variable_is_refused() {
    args_from_env(&[("WSBEAT_PING_INTERVAL".into(), "20s".into())]);
}

#[test]
fn every_wsbeat_command_in_a_hook_is_accepted_by_the_cli() {
    let mut commands = 0;
    for (file, container) in wsbeat_containers() {
        let lifecycle = &container["lifecycle"];
        for hook in ["preStop", "postStart"] {
            let Some(command) = lifecycle[hook]["exec"]["command"].as_array() else {
                continue;
            };
            let argv: Vec<&str> = command
                .iter()
                .map(|a| a.as_str().expect("string"))
                .collect();
            assert_eq!(
                argv[0], "/wsbeat",
                "{file}: the image has nothing else to run"
            );
            Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{file} {hook}: {e}"));
            // A drain must reach this container's own admin port.
            if let Some(i) = argv.iter().position(|a| *a == "--admin") {
                let env = env_of(&container);
                let admin = env.iter().find(|(n, _)| n == "WSBEAT_ADMIN_LISTEN");
                let port = |addr: &str| addr.rsplit(':').next().map(str::to_owned);
                let listen_port = admin.and_then(|(_, value)| port(value));
                assert_eq!(port(argv[i + 1]), listen_port, "{file} {hook}: {argv:?}");
            }
            commands += 1;
        }
    }
    assert_eq!(commands, 1, "the native sidecar's preStop drain");
}

/// `5s`, `500ms`, `2m` (the forms the manifests use) in seconds.
fn seconds(raw: &str) -> f64 {
    let (number, unit) = raw
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| raw.split_at(i))
        .unwrap_or_else(|| panic!("{raw}: no unit"));
    let n: f64 = number.parse().unwrap_or_else(|_| panic!("{raw}"));
    match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => panic!("{raw}: unit {unit}"),
    }
}

#[test]
fn shutdown_timings_fit_together() {
    for (file, doc) in manifest_docs() {
        if doc["kind"] != "Deployment" {
            continue;
        }
        let pod = &doc["spec"]["template"]["spec"];
        let env = env_of(&wsbeat_of(&file));
        // A variable left out means wsbeat's default (README: 5 s delay, 25 s grace).
        let var = |name: &str, default: &str| {
            let found = env.iter().find(|(n, _)| n == name);
            seconds(found.map_or(default, |(_, value)| value.as_str()))
        };
        let delay = var("WSBEAT_DRAIN_DELAY", "5s");
        let grace = var("WSBEAT_SHUTDOWN_GRACE", "25s");
        // A drain not started by deleting the Pod must turn it unready before the delay ends.
        let ready = &wsbeat_of(&file)["readinessProbe"];
        let noticed = ready["periodSeconds"].as_f64().expect("period")
            * ready["failureThreshold"].as_f64().expect("threshold");
        assert!(
            noticed < delay,
            "{file}: unready after {noticed} s, delay {delay} s"
        );
        let period = pod["terminationGracePeriodSeconds"].as_f64().expect("set");
        assert!(
            period > delay + grace,
            "{file}: {period} <= {delay} + {grace}"
        );
        // The legacy server stays up past the drain delay, when the 1001s go out.
        let legacy = pod["containers"].as_array().expect("containers").iter();
        let legacy = legacy.filter(|c| c["name"] != "wsbeat").collect::<Vec<_>>();
        assert_eq!(legacy.len(), 1, "{file}");
        let sleep = legacy[0]["lifecycle"]["preStop"]["sleep"]["seconds"].as_f64();
        let sleep = sleep.unwrap_or_else(|| panic!("{file}: the app's preStop sleep"));
        assert!(
            sleep > delay,
            "{file}: app stops at {sleep} s, 1001s go out at {delay} s"
        );
        assert!(sleep < period, "{file}");
    }
}

#[test]
fn wsbeat_container_is_probed_and_locked_down() {
    for (file, c) in wsbeat_containers() {
        let ports: Vec<&str> = c["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .map(|p| p["name"].as_str().expect("named port"))
            .collect();
        assert_eq!(ports, ["ws", "admin"], "{file}");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{file}");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{file}");
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_eq!(c[probe]["httpGet"]["port"], "admin", "{file} {probe}");
        }
        let security = &c["securityContext"];
        assert_eq!(security["runAsNonRoot"], true, "{file}");
        assert_eq!(security["readOnlyRootFilesystem"], true, "{file}");
        assert_eq!(security["allowPrivilegeEscalation"], false, "{file}");
        assert_eq!(
            security["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{file}"
        );
        for kind in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                assert!(
                    c["resources"][kind][resource].is_string(),
                    "{file} {kind} {resource}"
                );
            }
        }
    }
}

/// kubectl's bundled kustomize, when it can render these kustomizations: they list a directory
/// under `resources`, which kustomize reads since v2.1. kubectl 1.20 (Debian bookworm's
/// `kubernetes-client`) bundles kustomize v2.0.3; kubectl has bundled kustomize v4 or later
/// since 1.21.
async fn kubectl_with_kustomize_v4(test: &str) -> Option<String> {
    let probe = tokio::process::Command::new("kubectl")
        .args(["version", "--client"])
        .stdin(Stdio::null())
        .output();
    let out = match within(TOOL_TIMEOUT, "kubectl version", probe).await {
        Ok(out) if out.status.success() => out,
        _ => {
            skip_or_fail(test, "kubectl is not on PATH");
            return None;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if text.contains("Kustomize Version: v") || !text.contains("Minor:\"") {
        return Some(text);
    }
    // Pre-1.24 clients print a Go struct and no kustomize version.
    let minor = text
        .split("Minor:\"")
        .nth(1)
        .and_then(|m| m.split('"').next());
    let minor: u32 = minor
        .and_then(|m| m.trim_end_matches('+').parse().ok())
        .unwrap_or(0);
    if minor >= 21 {
        return Some(text);
    }
    println!(
        "not rendered: kubectl 1.{minor} bundles kustomize v2.0.3, which cannot read a directory \
         listed under `resources` (both kustomizations share deploy/kubernetes/common that \
         way); kubectl 1.21 or later renders them. The manifests themselves are still checked."
    );
    None
}

#[tokio::test]
async fn kustomize_renders_each_sidecar_form_from_the_files() {
    let test = "kustomize_renders_each_sidecar_form_from_the_files";
    let Some(version) = kubectl_with_kustomize_v4(test).await else {
        return;
    };
    let all = manifest_docs();
    for dir in KUSTOMIZATIONS {
        let out = run("kubectl", &[OsStr::new("kustomize"), OsStr::new(dir)]).await;
        assert!(
            out.status.success(),
            "{dir} with {version}: {}",
            shown(&out)
        );
        let rendered = yaml_docs(&String::from_utf8_lossy(&out.stdout), dir);
        let kinds: BTreeSet<&str> = rendered.iter().filter_map(|d| d["kind"].as_str()).collect();
        let expected = [
            "Deployment",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "PodMonitor",
            "PrometheusRule",
            "Service",
        ];
        assert_eq!(kinds, BTreeSet::from(expected), "{dir}");
        assert_eq!(rendered.len(), expected.len(), "{dir}");
        // Nothing is transformed: each rendered resource is one of the files, unchanged; the
        // Deployment is the form's own, the rest is shared.
        for doc in &rendered {
            let same = all.iter().find(|(_, d)| d == doc);
            let (file, _) = same.unwrap_or_else(|| panic!("{dir}: {} changed", doc["kind"]));
            let expected_file = if doc["kind"] == "Deployment" {
                *file == format!("{dir}/deployment.yaml")
            } else {
                file.starts_with("deploy/kubernetes/common/")
            };
            assert!(expected_file, "{dir}: {file} is not part of this form");
        }
    }
}

#[tokio::test]
async fn dockerfile_passes_hadolint() {
    let test = "dockerfile_passes_hadolint";
    let Some(hadolint) = venv_tool(test, "hadolint") else {
        return;
    };
    let threshold = [OsStr::new("--failure-threshold"), OsStr::new("warning")];
    let mut args = threshold.to_vec();
    args.push(OsStr::new(DOCKERFILE));
    let out = run(&hadolint, &args).await;
    assert!(out.status.success(), "{}", shown(&out));

    // A warning-level finding (DL3007: the `latest` tag) fails at this threshold.
    let bad = scratch_file("Dockerfile.bad", "FROM debian:latest\nUSER 1000\n");
    let mut args = threshold.to_vec();
    args.push(bad.as_os_str());
    let out = run(&hadolint, &args).await;
    assert!(
        !out.status.success(),
        "DL3007 not reported: {}",
        shown(&out)
    );
}

#[test]
fn image_is_built_locked_and_runs_distroless_as_non_root() {
    let text = read(DOCKERFILE);
    let instructions: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    for expected in [
        "FROM gcr.io/distroless/cc-debian12:nonroot",
        "EXPOSE 8080 9090",
        "USER 65532:65532",
        "ENTRYPOINT [\"/wsbeat\"]",
    ] {
        assert!(instructions.contains(&expected), "{expected} missing");
    }
    assert!(text.contains("cargo build --release --locked"));
    assert!(!instructions.iter().any(|l| l.starts_with("HEALTHCHECK")));
    // The admin listener must be reachable from outside the container.
    let env = dockerfile_env();
    let admin = env
        .iter()
        .find(|(n, _)| n == "WSBEAT_ADMIN_LISTEN")
        .expect("set");
    assert!(admin.1.starts_with("0.0.0.0:"), "{admin:?}");
    // The build context leaves target/ out: everything is excluded but what the build reads.
    let ignore = read(".dockerignore");
    let rules: Vec<&str> = ignore.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(rules.first(), Some(&"*"), "{rules:?}");
    assert!(!rules.iter().any(|r| r.contains("target")), "{rules:?}");
}
