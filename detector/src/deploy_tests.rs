//! The files in deploy/ must match the agent they deploy: manifests parse, the container's
//! arguments are flags this CLI accepts, and every metric the alerts and the dashboard query
//! is one the agent exports.
use clap::Parser as _;
use serde_norway::Value;

use crate::{metrics::Metrics, surfaces::cli::Cli};

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");

fn docs(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(format!("{DEPLOY}/{file}")).unwrap_or_else(|e| panic!("{file}: {e}"));
    serde_norway::Deserializer::from_str(&text).map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{file}: {e}"))).collect()
}

/// What a running agent exports (the hook series appear when the agent attaches its hooks;
/// the pod family when it is asked for and a pod holds a stall).
fn exported_series() -> String {
    let m = Metrics::new().with_known_labels(&crate::agent::known_labels()).with_pod_series(10).with_configuration("storage-diag", false);
    m.set_pod_stalls([crate::metrics::PodStall { namespace: "shop", pod: "ws-1", reason: "peer_not_reading" }]);
    m.hook_attached.get_or_create(&crate::metrics::HookLabel { role: "send".into(), hook: "tracepoint sock:sock_send_length".into() }).set(1);
    m.render()
}

/// Metric names (detector_*) used in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("detector_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

fn assert_exported(expr: &str, series: &str, what: &str) {
    for name in metric_names(expr) {
        assert!(
            series.lines().any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))),
            "{what}: `{name}` is not a metric the agent exports"
        );
    }
}

#[test]
fn daemonset_arguments_are_flags_the_agent_accepts() {
    let all = docs("daemonset.yaml");
    let ds = all.iter().find(|d| d["kind"] == "DaemonSet").expect("a DaemonSet");
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<String> = c["args"].as_sequence().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
    let mut argv = vec!["detector".to_string()];
    argv.extend(args);
    Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("daemonset args {argv:?}: {e}"));
    assert_eq!(ds["spec"]["template"]["spec"]["hostPID"], Value::Bool(true));
    let caps = &c["securityContext"]["capabilities"]["add"];
    for cap in ["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE", "KILL"] {
        assert!(caps.as_sequence().unwrap().iter().any(|v| v == cap), "missing {cap}");
    }
    for probe in ["livenessProbe", "readinessProbe"] {
        assert!(c[probe]["httpGet"]["path"].as_str().is_some(), "{probe}");
    }
    // Every env var the manifest sets is one the CLI reads.
    let help = crate::surfaces::cli::env_vars();
    for e in c["env"].as_sequence().unwrap() {
        let name = e["name"].as_str().unwrap();
        assert!(name == "RUST_LOG" || help.iter().any(|h| h == name), "env {name} is read by no flag");
    }
}

/// `Key=value` lines of a systemd unit (the last one of a key wins, as in systemd).
fn unit_value(unit: &str, key: &str) -> String {
    unit.lines().filter_map(|l| l.strip_prefix(key)?.strip_prefix('=')).next_back().unwrap_or_else(|| panic!("no {key}=")).to_string()
}

/// The systemd unit runs the agent with flags it accepts, with the DaemonSet's capabilities and
/// nothing more, on a read-only filesystem, and keeps the reaper's state across restarts.
#[test]
fn systemd_unit_matches_the_daemonset() {
    let unit = std::fs::read_to_string(format!("{DEPLOY}/detector.service")).unwrap();
    let exec = unit_value(&unit, "ExecStart");
    let argv: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(argv[0], "/usr/local/bin/detector");
    Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("ExecStart {argv:?}: {e}"));
    let ds = docs("daemonset.yaml");
    let c = &ds.iter().find(|d| d["kind"] == "DaemonSet").unwrap()["spec"]["template"]["spec"]["containers"][0];
    let mut want: Vec<String> =
        c["securityContext"]["capabilities"]["add"].as_sequence().unwrap().iter().map(|v| format!("CAP_{}", v.as_str().unwrap())).collect();
    let mut got: Vec<String> = unit_value(&unit, "CapabilityBoundingSet").split_whitespace().map(String::from).collect();
    want.sort();
    got.sort();
    assert_eq!(got, want, "the unit's capabilities are the DaemonSet's");
    assert_eq!(unit_value(&unit, "ProtectSystem"), "strict");
    assert_eq!(unit_value(&unit, "NoNewPrivileges"), "yes");
    assert_eq!(unit_value(&unit, "RuntimeDirectory"), "detector", "the CLI socket and state file live in /run/detector");
    assert_eq!(unit_value(&unit, "RuntimeDirectoryPreserve"), "yes", "the reaper's state survives a restart");
}

/// `systemd-analyze verify` reads the unit without a warning (it only needs ExecStart to be
/// an executable, so it points at this test's own binary).
#[test]
fn systemd_analyze_verifies_the_unit() {
    let found = std::process::Command::new("systemd-analyze").arg("--version").output().is_ok();
    assert!(found || std::env::var_os("DETECTOR_REQUIRE_PRIVILEGED").is_none(), "systemd-analyze not found (Debian's systemd package)");
    if !found {
        return;
    }
    let dir = std::env::temp_dir().join(format!("detector-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unit = std::fs::read_to_string(format!("{DEPLOY}/detector.service")).unwrap();
    let exe = std::env::current_exe().unwrap();
    let path = dir.join("detector.service");
    std::fs::write(&path, unit.replace("ExecStart=/usr/local/bin/detector", &format!("ExecStart={}", exe.display()))).unwrap();
    let out = std::process::Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && !said.contains("detector.service"), "systemd-analyze verify:\n{said}");
}

/// The offline build (deploy/Containerfile, `cargo xtask image`) and the registry build
/// (deploy/Dockerfile) end in the same image layout: the same final stage, line for line.
#[test]
fn containerfile_and_dockerfile_make_the_same_image() {
    let last_stage = |file: &str| -> Vec<String> {
        let text = std::fs::read_to_string(format!("{DEPLOY}/{file}")).unwrap();
        let stage = text.rsplit_once("FROM scratch").unwrap_or_else(|| panic!("{file}: no FROM scratch stage")).1.to_string();
        stage.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')).map(|l| l.replace("--from=build /detector", "detector")).collect()
    };
    assert_eq!(last_stage("Containerfile"), last_stage("Dockerfile"));
}

#[test]
fn dockerfile_entrypoint_runs_the_agent_with_valid_flags() {
    let text = std::fs::read_to_string(format!("{DEPLOY}/Dockerfile")).unwrap();
    assert!(text.contains("ENTRYPOINT [\"/usr/local/bin/detector\"]"));
    let cmd = text.lines().find_map(|l| l.strip_prefix("CMD ")).expect("a CMD");
    let args: Vec<String> = serde_json::from_str(cmd).expect("CMD in exec form");
    let mut argv = vec!["detector".to_string()];
    argv.extend(args);
    Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("Dockerfile CMD {argv:?}: {e}"));
    assert!(text.contains("cargo xtask setup"));
}

#[test]
fn service_and_servicemonitor_point_at_the_metrics_port() {
    let all = docs("service.yaml");
    let kinds: Vec<&str> = all.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["Service", "ServiceMonitor"]);
    assert_eq!(all[0]["spec"]["ports"][0]["port"].as_u64(), Some(9465));
    assert_eq!(all[1]["spec"]["endpoints"][0]["port"], "metrics");
}

#[test]
fn alert_rules_query_exported_metrics() {
    let series = exported_series();
    let all = docs("prometheus-rules.yaml");
    let groups = all[0]["spec"]["groups"].as_sequence().unwrap();
    let rules: Vec<&Value> = groups.iter().flat_map(|g| g["rules"].as_sequence().unwrap()).collect();
    let names: Vec<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
    for want in [
        "DetectorStalledSocketsRising",
        "DetectorPeersTrickling",
        "DetectorReapsFailing",
        "DetectorEventsDropped",
        "DetectorPodStalledSockets",
        "DetectorLesserConfiguration",
        "DetectorAgentDown",
    ] {
        assert!(names.contains(&want), "no alert {want}");
    }
    for r in rules {
        let expr = r["expr"].as_str().unwrap();
        let name = r["alert"].as_str().or(r["record"].as_str()).expect("an alert or a recording rule");
        assert!(r["alert"].is_null() || r["annotations"]["summary"].as_str().is_some(), "{expr}");
        assert_exported(expr, &series, name);
    }
}

#[test]
fn dashboard_queries_exported_metrics() {
    let series = exported_series();
    let text = std::fs::read_to_string(format!("{DEPLOY}/grafana-dashboard.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    let panels = d["panels"].as_array().unwrap();
    assert!(panels.len() >= 6);
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            assert_exported(t["expr"].as_str().unwrap(), &series, p["title"].as_str().unwrap());
        }
    }
}

#[test]
fn no_gauge_is_named_total_and_counters_are() {
    let series = exported_series();
    for l in series.lines().filter(|l| l.starts_with("# TYPE")) {
        let mut f = l.split_whitespace().skip(2);
        let (name, kind) = (f.next().unwrap(), f.next().unwrap());
        if kind == "gauge" {
            assert!(!name.ends_with("_total"), "gauge {name}");
        }
    }
}
