//! The surfaces against the real agent: Prometheus metrics during a real stall, `detector
//! check`, `detector scan`, and the CLI's queries.
use std::{process::Command, time::Duration};

use detector_tests::{Agent, Peer, detector_cmd, field, free_port, http_get, metric, poll, require_root, serial};

#[test]
fn metrics_during_a_real_stall() {
    require_root!();
    let _serial = serial();
    let addr = format!("127.0.0.1:{}", free_port());
    let agent = Agent::start("2s", &["--metrics-addr", &addr]);
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    assert_eq!(http_get(&addr, "/readyz").0, 200, "ready after the first pass");

    let server = Peer::stream(&["server", "127.0.0.1:0", "stream"]);
    let listen = server.expect("LISTEN", Duration::from_secs(5));
    let client = Peer::stream(&["client", &listen, "none"]);
    let local = field(&server.expect("ACCEPTED", Duration::from_secs(5)), "local").to_string();
    poll(Duration::from_secs(5), || agent.stalled(&local)).expect("stall reported");

    let (code, text) = http_get(&addr, "/metrics");
    assert_eq!(code, 200);
    let nr = "{reason=\"peer_not_reading\"}";
    assert!(metric(&text, &format!("detector_stalled_sockets{nr}")).unwrap() >= 1.0, "{text}");
    assert!(metric(&text, &format!("detector_stalls_detected_total{nr}")).unwrap() >= 1.0, "{text}");
    assert!(metric(&text, "detector_sockets_tracked").unwrap() >= 1.0, "{text}");
    // The send hook the agent chose (whatever this kernel offers) is the one exported.
    let status = agent.query("status").expect("status");
    let hook = status["send_hook"].as_str().expect("send_hook").to_string();
    assert_eq!(metric(&text, &format!("detector_hook_attached{{role=\"send\",hook=\"{hook}\"}}")), Some(1.0), "{text}");
    // In the storage-walk configuration, the kernel walk samples (sock_diag otherwise).
    let walks = status["configuration"] == "storage-walk";
    assert_eq!(metric(&text, &format!("detector_configuration{{configuration={},best=\"{}\"}}", status["configuration"], walks)), Some(1.0), "{text}");
    assert_eq!(metric(&text, "detector_hook_attached{role=\"sample\",hook=\"iter bpf_sk_storage_map\"}"), Some(walks as u8 as f64), "{text}");
    assert_eq!(status["sampling"].as_str().unwrap().starts_with("kernel walk"), walks, "{status}");
    assert!(metric(&text, "detector_sweep_duration_seconds_count").unwrap() >= 1.0);
    assert_eq!(metric(&text, "detector_kernel_events_dropped_total"), Some(0.0), "{text}");
    assert!(text.contains("detector_build_info{"), "{text}");
    assert!(!text.contains("# EOF"), "a request without an OpenMetrics Accept header gets the Prometheus text format");

    // The stall ends when the connection dies: the gauge drops, the duration is observed.
    client.signal(libc::SIGKILL);
    let ended = poll(Duration::from_secs(5), || {
        let (_, t) = http_get(&addr, "/metrics");
        (metric(&t, &format!("detector_stalled_sockets{nr}")) == Some(0.0) && metric(&t, "detector_stall_duration_seconds_count").unwrap_or(0.0) >= 1.0)
            .then_some(t)
    });
    assert!(ended.is_some(), "gauge or duration not updated after the stall ended");
}

#[test]
fn check_reports_every_hook_and_passes_here() {
    require_root!();
    let out = detector_cmd().args(["check", "--output", "json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert!(out.status.success(), "check failed: {v}");
    let names: Vec<&str> = v.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    for want in [
        "capabilities",
        "btf",
        "tracefs",
        "hook tp_btf tcp_sendmsg_locked (send)",
        "hook fentry tcp_sendmsg_locked (send)",
        "hook tp_btf sock_send_length (send)",
        "hook tracepoint sock:sock_send_length (send)",
        "hook kprobe tcp_sendmsg_locked (send)",
        "hook fentry do_tcp_sendpages (send path)",
        "hook fentry mptcp_sendmsg (send path)",
        "hook tp_btf sock_send_length (MPTCP) (send path)",
        "hook kprobe mptcp_sendmsg (send path)",
        "hook tp_btf tcp_retransmit_skb (lifetime)",
        "hook raw_tp inet_sock_set_state (lifetime)",
        "hook tracepoint tcp:tcp_retransmit_skb (lifetime)",
        "hook iter bpf_sk_storage_map (sample)",
        "hook iter tcp (reconcile)",
        "hook iter task_file (reconcile)",
        "socket destroy",
    ] {
        assert!(names.contains(&want), "check has no {want:?}: {names:?}");
    }
    // Exactly one configuration is the one `run` would use, and an agent started with no flags
    // runs it: check and run never disagree.
    let chosen: Vec<&serde_json::Value> = v.as_array().unwrap().iter().filter(|c| c["chosen"] == true).collect();
    assert_eq!(chosen.len(), 1, "{v}");
    let agent = Agent::start("30s", &[]);
    let status = agent.query("status").expect("status");
    assert_eq!(status["configuration"], chosen[0]["configuration"], "check: {}\nstatus: {status}", chosen[0]);
    let hook = status["hooks"].as_array().unwrap().iter().find(|h| h["role"] == "send" && h["state"] == "attached").expect("a send hook attached");
    let flag = v.as_array().unwrap().iter().find(|c| c["name"] == format!("hook {} (send)", hook["hook"].as_str().unwrap())).unwrap()["send_hook"].clone();
    assert_eq!(flag, chosen[0]["send_hook"], "{status}");
    // The configurations it also runs were loaded whole; the best one is named as best or not.
    assert_eq!(status["not_best"].as_array().unwrap().is_empty(), !names.contains(&"not the best"), "{status}");
}

#[test]
fn check_fails_without_privileges() {
    require_root!();
    let bin = detector_tests::detector_bin();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(bin)
        .arg("check")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAIL") && text.contains("capabilities") && text.contains("cannot run"), "{text}");
}

#[test]
fn scan_without_an_agent_finds_a_stall_and_not_a_healthy_stream() {
    require_root!();
    let _serial = serial();
    let dead_server = Peer::stream(&["server", "127.0.0.1:0", "stream"]);
    let a = dead_server.expect("LISTEN", Duration::from_secs(5));
    let _dead = Peer::stream(&["client", &a, "none"]);
    let dead_local = field(&dead_server.expect("ACCEPTED", Duration::from_secs(5)), "local").to_string();
    let ok_server = Peer::stream(&["server", "127.0.0.1:0", "stream"]);
    let b = ok_server.expect("LISTEN", Duration::from_secs(5));
    let _ok = Peer::stream(&["client", &b, "read"]);
    let ok_local = field(&ok_server.expect("ACCEPTED", Duration::from_secs(5)), "local").to_string();
    std::thread::sleep(Duration::from_millis(500));

    let out = detector_cmd().args(["scan", "--grace", "2s", "--interval", "250ms", "--output", "json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v.as_array().unwrap();
    let dead = rows.iter().find(|r| r["local"] == dead_local).unwrap_or_else(|| panic!("stall not found: {v}"));
    assert_eq!(dead["pid"], dead_server.pid(), "{dead}");
    assert_eq!(dead["reason"], "peer_not_reading", "{dead}");
    assert!(rows.iter().all(|r| r["local"] != ok_local), "healthy stream reported: {v}");
}

#[test]
fn sockets_filters_explain_and_watch_against_the_agent() {
    require_root!();
    let agent = Agent::start("2s", &[]);
    let server = Peer::stream(&["server", "127.0.0.1:0", "stream"]);
    let listen = server.expect("LISTEN", Duration::from_secs(5));
    let _client = Peer::stream(&["client", &listen, "none"]);
    let local = field(&server.expect("ACCEPTED", Duration::from_secs(5)), "local").to_string();
    let port = local.rsplit(':').next().unwrap().to_string();
    let stalled = poll(Duration::from_secs(5), || agent.stalled(&local)).expect("stall reported");
    let cookie = stalled["socket_cookie"].as_u64().unwrap();
    let id = cookie.to_string();

    let api = agent.api.display().to_string();
    let out = detector_cmd().args(["sockets", "-o", "json", "--port", &port, "--api-socket", &api]).output().unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert!(
        !rows.is_empty()
            && rows.iter().all(|r| r["local"].as_str().unwrap().ends_with(&format!(":{port}")) || r["remote"].as_str().unwrap().ends_with(&format!(":{port}"))),
        "{rows:?}"
    );
    assert!(rows.iter().any(|r| r["id"].as_u64() == Some(cookie) && r["stalled"] == true), "{rows:?}");
    let out = detector_cmd().args(["sockets", "-o", "json", "--pid", "1", "--port", &port, "--api-socket", &api]).output().unwrap();
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(), serde_json::json!([]));

    let out = detector_cmd().args(["explain", &id, "-o", "json", "--api-socket", &api]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["verdict"]["stalled"], true, "{e}");
    assert_eq!(e["verdict"]["reason"], "peer_not_reading", "{e}");
    assert!(e["samples"].as_array().unwrap().len() >= 2, "{e}");
    assert!(e["changes"][0]["what"].as_str().unwrap().starts_with("stalled"), "{e}");
    // What the kernel side recorded for it.
    assert!(e["kernel"]["tracked_for_ms"].as_u64().unwrap() >= 2_000, "{e}");
    let status = agent.query("status").expect("status");
    assert_eq!(e["kernel"]["send_hook"], status["send_hook"], "{e}");
    let out = detector_cmd().args(["explain", "1", "--api-socket", &api]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no tracked socket has id 1"));

    // --watch redraws until stopped.
    let mut w = detector_cmd().args(["stalled", "--watch", "300ms", "--api-socket", &api]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let _ = w.kill();
    let out = w.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.matches("\x1b[2J").count() >= 2 && text.contains(&local), "{text}");
}

#[test]
fn shell_completions_and_help_name_every_command() {
    let out = detector_cmd().args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["run", "stalled", "sockets", "explain", "status", "check", "scan"] {
        assert!(text.contains(cmd), "bash completion lacks {cmd}");
    }
    let out = detector_cmd().args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--grace", "--interval", "--policy", "--action", "--dry-run", "[env: DETECTOR_GRACE="] {
        assert!(help.contains(flag), "run --help lacks {flag}");
    }
}

/// `--log-format json`: everything the agent writes (log lines on stderr, audit lines on
/// stdout) is one JSON object per line, a hostile process name included.
#[test]
fn json_logs_are_one_object_per_line() {
    require_root!();
    let _serial = serial();
    let agent = Agent::start("1s", &["--log-format", "json"]);
    let server = Peer::stream(&["server", "127.0.0.1:0", "stream"]);
    let listen = server.expect("LISTEN", Duration::from_secs(5));
    let _client = Peer::stream(&["client", &listen, "none"]);
    let local = field(&server.expect("ACCEPTED", Duration::from_secs(5)), "local").to_string();
    poll(Duration::from_secs(5), || agent.stalled(&local)).expect("stall reported");
    let log = poll(Duration::from_secs(5), || Some(agent.log()).filter(|l| l.contains("\"action\":\"report\""))).expect("an audit line");
    let mut levels = 0;
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        levels += v["level"].is_string() as usize;
    }
    assert!(levels >= 1, "no log line at info level:\n{log}");
}

// The metrics endpoint listens on 0.0.0.0 in the DaemonSet: anyone on the network can open
// connections and send nothing. It serves a bounded number at once (the rest are closed at
// once and counted), closes a connection that sends no request head within a few seconds, and
// answers scrapes again once they are gone: the agent's fds stay bounded.
#[test]
fn the_metrics_listener_bounds_connections_that_send_nothing() {
    require_root!();
    let addr = format!("127.0.0.1:{}", free_port());
    let agent = Agent::start("30s", &["--metrics-addr", &addr]);
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", agent.pid())).unwrap().count();
    let before = fds();
    let silent: Vec<std::net::TcpStream> = (0..200).map(|_| std::net::TcpStream::connect(&addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let held = fds() - before.min(fds());
    assert!(held <= 40, "200 silent connections hold {held} of the agent's fds");
    // Each is closed by the agent: at once past the cap, after the header time otherwise.
    let closed_by = std::time::Instant::now() + Duration::from_secs(9);
    for (i, mut s) in silent.into_iter().enumerate() {
        s.set_read_timeout(Some(closed_by.saturating_duration_since(std::time::Instant::now()).max(Duration::from_millis(10)))).unwrap();
        let mut b = [0u8; 16];
        match std::io::Read::read(&mut s, &mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("silent connection {i} still open 9 s later: {other:?}\n{}", agent.log()),
        }
    }
    let (status, text) = http_get(&addr, "/metrics");
    assert_eq!(status, 200, "{text}");
    assert!(metric(&text, "detector_metrics_connections_refused_total").unwrap() >= 150.0, "{text}");
}
