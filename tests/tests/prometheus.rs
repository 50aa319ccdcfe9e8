//! The fleet surfaces with the real tools (Debian's `prometheus` package; `cargo xtask test`
//! installs it): a real Prometheus scrapes the agent through a real stall and a real reap and
//! is asked for the values over its HTTP API; `promtool check metrics` reads the exposition
//! clean; `promtool test rules` runs deploy/prometheus-rules.test.yaml against the shipped
//! rules.
use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use detector_tests::{Agent, Peer, Scratch, field, free_port, http_get, http_get_with, poll, require_root};

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");

/// A Prometheus tool, or (outside `cargo xtask test`, which installs it) a skip.
fn tool(name: &str) -> bool {
    let found = Command::new(name).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    assert!(found || std::env::var_os("DETECTOR_REQUIRE_PRIVILEGED").is_none(), "{name} not found: `cargo xtask test` installs Debian's prometheus package");
    if !found {
        eprintln!("skipped: {name} not installed");
    }
    found
}

fn promtool(args: &[&str], stdin: Option<&str>, dir: &std::path::Path) -> (bool, String) {
    use std::io::Write as _;
    let mut c =
        Command::new("promtool").args(args).current_dir(dir).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("promtool");
    let mut input = c.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or_default().as_bytes()).unwrap();
    drop(input);
    let out = c.wait_with_output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn alert_and_recording_rules_pass_their_promtool_tests() {
    if !tool("promtool") {
        return;
    }
    let dir = Scratch::new("rules");
    // promtool reads plain rule groups: the PrometheusRule's spec, as shipped.
    let crd = std::fs::read_to_string(format!("{DEPLOY}/prometheus-rules.yaml")).unwrap();
    let spec = crd.split_once("\nspec:\n").expect("a PrometheusRule with a spec").1;
    let groups: String = spec.lines().map(|l| format!("{}\n", l.strip_prefix("  ").unwrap_or(l))).collect();
    std::fs::write(dir.0.join("rules.yaml"), groups).unwrap();
    std::fs::copy(format!("{DEPLOY}/prometheus-rules.test.yaml"), dir.0.join("rules.test.yaml")).unwrap();
    let (ok, out) = promtool(&["check", "rules", "rules.yaml"], None, &dir.0);
    assert!(ok, "{out}");
    let (ok, out) = promtool(&["test", "rules", "rules.test.yaml"], None, &dir.0);
    assert!(ok && out.contains("SUCCESS"), "{out}");
}

/// A Prometheus server on a loopback port that scrapes `target` every second; killed on drop.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: Scratch,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = Scratch::new("prometheus");
        let cfg = dir.0.join("prometheus.yml");
        let yml = format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nscrape_configs:\n  - job_name: detector\n    static_configs:\n      - targets: ['{target}']\n        labels: {{ node: test-node }}\n"
        );
        std::fs::write(&cfg, yml).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.0.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", dir.0.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting prometheus");
        Prometheus { child, addr, _dir: dir }
    }

    /// The value of an instant query's first result, if it has one.
    fn value(&self, query: &str) -> Option<f64> {
        let q: String = query.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect();
        // Not listening yet (starting up): no value.
        std::net::TcpStream::connect(&self.addr).ok()?;
        let (code, body) = http_get(&self.addr, &format!("/api/v1/query?query={q}"));
        if code != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.0.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_real_prometheus_sees_a_stall_and_its_reap() {
    require_root!();
    if !tool("prometheus") || !tool("promtool") {
        return;
    }
    let metrics = format!("127.0.0.1:{}", free_port());
    let dir = Scratch::new("policy");
    let policy = dir.0.join("policy.toml");
    // Reported first, destroyed 4 s later: scrapes every second see the stall, then the reap.
    std::fs::write(
        &policy,
        r#"
[[selector]]
name = "peers"
match = { comm = "stream-peer" }
actions = [{ action = "report" }, { action = "destroy", after = "4s" }]
"#,
    )
    .unwrap();
    let agent = Agent::start("2s", &["--metrics-addr", &metrics, "--policy", policy.to_str().unwrap()]);
    let prom = Prometheus::start(&metrics);
    let up = poll(Duration::from_secs(30), || (prom.value("up{job=\"detector\",node=\"test-node\"}") == Some(1.0)).then_some(()));
    assert!(up.is_some(), "Prometheus never scraped the agent:\n{}", prom.log());

    // The tools read the exposition as Prometheus does, and as curl does.
    let (_, om) = http_get_with(&metrics, "/metrics", "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n");
    assert!(om.trim_end().ends_with("# EOF"), "OpenMetrics when asked for:\n{om}");
    let (_, text) = http_get(&metrics, "/metrics");
    let (ok, out) = promtool(&["check", "metrics"], Some(&text), &dir.0);
    assert!(ok && out.trim().is_empty(), "promtool check metrics:\n{out}\n{text}");

    let server = Peer::stream(&["server", "127.0.0.1:0", "stream"]);
    let listen = server.expect("LISTEN", Duration::from_secs(5));
    let _client = Peer::stream(&["client", &listen, "none"]);
    let local = field(&server.expect("ACCEPTED", Duration::from_secs(5)), "local").to_string();
    poll(Duration::from_secs(10), || agent.stalled(&local)).expect("stall reported");
    let held = poll(Duration::from_secs(15), || prom.value("detector_stalled_sockets{reason=\"peer_not_reading\"}").filter(|v| *v >= 1.0));
    assert!(held.is_some(), "Prometheus never saw the stalled socket:\n{}", agent.log());
    let reaped = poll(Duration::from_secs(20), || prom.value("detector_reaps_total{action=\"destroy\",result=\"ok\"}").filter(|v| *v >= 1.0));
    assert!(reaped.is_some(), "Prometheus never saw the reap:\n{}", agent.log());
    let ended = poll(Duration::from_secs(15), || prom.value("detector_stalled_sockets{reason=\"peer_not_reading\"}").filter(|v| *v == 0.0));
    assert!(ended.is_some(), "the stall did not end in Prometheus after the reap");
    assert!(prom.value("increase(detector_stalls_detected_total{reason=\"peer_not_reading\"}[5m])").is_some_and(|v| v > 0.0));
}
