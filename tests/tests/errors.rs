//! Clear errors for the ways the agent cannot run or cannot be reached.
use std::process::Command;

use detector_tests::{Agent, Scratch, detector_cmd, require_root};

#[test]
fn query_without_a_running_agent_says_so() {
    let dir = Scratch::new("noagent");
    let out = detector_cmd().args(["stalled", "--api-socket"]).arg(dir.0.join("none.sock")).output().expect("running detector");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("agent is not running") && err.contains("detector run"), "{err}");
}

#[test]
fn unprivileged_run_names_the_missing_capabilities() {
    require_root!();
    let dir = Scratch::new("unpriv");
    let bin = detector_tests::detector_bin();
    // Drop to nobody with no capabilities.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(bin)
        .args(["run", "--metrics-addr", "off", "--api-socket"])
        .arg(dir.0.join("api.sock"))
        .output()
        .expect("running setpriv (util-linux)");
    assert!(!out.status.success(), "an unprivileged agent must refuse to start");
    let err = String::from_utf8_lossy(&out.stderr);
    for cap in ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"] {
        assert!(err.contains(cap), "error does not name {cap}: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn forced_fallback_send_hook_attaches_and_is_reported() {
    require_root!();
    let agent = Agent::start("3s", &["--send-hook", "sock-send-length", "--max-sockets", "4096"]);
    // The hash map is loaded again at the size asked for (the first load makes it one slot).
    assert_eq!(hash_map_slots(agent.pid()), vec![4096], "the agent's BPF hash maps");
    let status = agent.query("status").expect("status");
    assert_eq!(status["send_hook"], "tracepoint sock:sock_send_length", "{status}");
    assert_eq!((&status["storage"], &status["configuration"]), (&"hash map".into(), &"hash-map".into()), "{status}");
    let hooks = status["hooks"].as_array().unwrap();
    let state = |name: &str| hooks.iter().find(|h| h["hook"] == name).unwrap_or_else(|| panic!("{name}: {status}"))["state"].clone();
    // Every hook was tried; only the hash map's own run.
    for other in ["tp_btf tcp_sendmsg_locked", "tp_btf tcp_retransmit_skb", "iter bpf_sk_storage_map"] {
        assert_ne!(state(other), "attached", "{other}: {status}");
        assert_ne!(state(other), "not_tried", "{other}: {status}");
    }
    assert_eq!(state("raw_tp inet_sock_set_state"), "attached", "{status}");
    // The walk reads socket storage: with the hash map, sock_diag samples.
    assert_eq!(status["sampling"], "sock_diag lookups", "{status}");
}

/// With socket storage the fallback hooks' hash map stays empty: it is made one slot, so its
/// bucket array (16 bytes a slot) costs nothing at any `--max-sockets`.
#[test]
fn the_unused_hash_map_is_one_slot_with_socket_storage() {
    require_root!();
    let agent = Agent::start("3s", &["--max-sockets", "262144"]);
    let status = agent.query("status").expect("status");
    if status["storage"] != "socket storage" {
        detector_tests::refused(&format!("socket storage (the agent runs {}): the one-slot hash map is not checked", status["configuration"]));
        return;
    }
    assert_eq!(hash_map_slots(agent.pid()), vec![1], "the agent's BPF hash maps");
}

/// `max_entries` of every BPF hash map the process `pid` holds (its fds' `fdinfo`).
fn hash_map_slots(pid: u32) -> Vec<u64> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut slots = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}")).flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)).map(|v| v.trim().to_string());
        // BPF_MAP_TYPE_HASH is 1.
        if field("map_type:").as_deref() == Some("1") {
            slots.push(field("max_entries:").and_then(|v| v.parse().ok()).expect("max_entries in a map's fdinfo"));
        }
    }
    slots
}

/// fentry needs BPF trampolines. Where the kernel refuses them (as the CI kernel does), forcing
/// it must fail with an error that names every refused hook and why; where it works, the
/// agent must report it attached.
#[test]
fn forced_fentry_either_attaches_or_fails_clearly() {
    require_root!();
    let dir = Scratch::new("fentry");
    let mut child = detector_cmd()
        .args(["run", "--send-hook", "fentry", "--metrics-addr", "off", "--api-socket"])
        .arg(dir.0.join("api.sock"))
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawning detector");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            assert!(!status.success());
            assert!(err.contains("no configuration of the agent can run on this kernel with --send-hook fentry"), "{err}");
            assert!(err.contains("fentry tcp_sendmsg_locked:"), "the refused hook's reason is missing: {err}");
            assert!(!err.contains("panicked"), "{err}");
            return;
        }
        if dir.0.join("api.sock").exists() {
            let out = detector_cmd().args(["status", "-o", "json", "--api-socket"]).arg(dir.0.join("api.sock")).output().unwrap();
            if out.status.success() {
                let _ = child.kill();
                let _ = child.wait();
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                assert_eq!(v["send_hook"], "fentry tcp_sendmsg_locked", "{v}");
                return;
            }
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("agent with --send-hook fentry neither failed nor served its API in 20 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

// A default signal would end the whole process for one dead peer: `--action signal` must name
// the signal, and signals glibc keeps for itself are refused, before anything is loaded.
#[test]
fn action_signal_needs_an_explicit_usable_signal() {
    let dir = Scratch::new("sigflags");
    for (args, needle) in [
        (&["--action", "signal"][..], "--action signal needs --signal"),
        (&["--action", "signal", "--signal", "33"][..], "reserved by glibc"),
        (&["--action", "signal", "--signal", "SIGRTMIN+40"][..], "out of range"),
    ] {
        let out = detector_cmd().arg("run").args(args).arg("--api-socket").arg(dir.0.join("api.sock")).output().expect("running detector");
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle) && !err.contains("panicked"), "{args:?}: {err}");
    }
}
