//! Attribution: every stalled socket maps to the process, fd, cgroup, container and pod that
//! hold it, or is honestly marked unknown.
use std::{os::unix::fs::MetadataExt, time::Duration};

use detector_tests::{Agent, KillOnDrop, NS_A_ADDR, NetnsPair, Peer, Scratch, TestCgroup, field, free_port, http_get, metric, poll, require_root, stream_peer};

const WITHIN: Duration = Duration::from_secs(6);

#[test]
fn pod_container_cgroup_and_netns_of_a_stalled_socket() {
    require_root!();
    let uid = format!("{:08x}-5f60-4a1b-9c8d-7e6f5a4b3c2d", std::process::id());
    let container = format!("{:0>64}", format!("{:x}", std::process::id()));
    let rel = format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{container}.scope", uid.replace('-', "_"));
    let Some(cg) = TestCgroup::new(&rel) else {
        eprintln!("skipped: no cgroup v2 mount on this kernel");
        return;
    };
    let pods = Scratch::new("pods");
    std::fs::create_dir_all(pods.0.join(format!("shop_checkout-7d9f_{uid}"))).unwrap();
    let net = NetnsPair::new();
    let pods_dir = pods.0.display().to_string();
    let metrics = format!("127.0.0.1:{}", free_port());
    let agent = Agent::start("2s", &["--pod-logs-dir", &pods_dir, "--metrics-addr", &metrics, "--pod-metrics-max-series", "5"]);

    let server = net.peer(&net.a, &stream_peer(), &["server", &format!("{NS_A_ADDR}:0"), "stream"]);
    let addr = server.expect("LISTEN", Duration::from_secs(5));
    // Into the pod's container cgroup before it sends anything.
    cg.add(server.pid());
    let _client = net.peer(&net.b, &stream_peer(), &["client", &addr, "none"]);
    let accepted = server.expect("ACCEPTED", Duration::from_secs(5));
    let local = field(&accepted, "local").to_string();

    let e = poll(WITHIN, || agent.stalled(&local)).unwrap_or_else(|| panic!("not reported:\n{}", agent.log()));
    let netns = std::fs::metadata(format!("/run/netns/{}", net.a)).unwrap().ino();
    let cgroup_id = std::fs::metadata(cg.dir()).unwrap().ino();
    assert_eq!(e["pid"], server.pid(), "{e}");
    assert_eq!(e["fd"], field(&accepted, "fd").parse::<i64>().unwrap(), "{e}");
    assert_eq!(e["owner_known"], true, "{e}");
    assert_eq!(e["comm"], "stream-peer", "{e}");
    assert!(e["exe"].as_str().unwrap().ends_with("stream-peer"), "{e}");
    assert!(e["cmdline"].as_str().unwrap().contains("server"), "{e}");
    assert!(e["start_time"].as_u64().unwrap() > 0, "{e}");
    assert_eq!(e["sender_pid"], server.pid(), "{e}");
    assert_eq!(e["cgroup"], cg.path, "{e}");
    assert_eq!(e["cgroup_id"], cgroup_id, "{e}");
    assert_eq!(e["container_id"], container, "{e}");
    assert_eq!(e["pod_uid"], uid, "{e}");
    assert_eq!(e["pod_namespace"], "shop", "{e}");
    assert_eq!(e["pod_name"], "checkout-7d9f", "{e}");
    assert_eq!(e["netns"], netns, "{e}");
    assert_eq!(e["local"], local, "{e}");
    // The opt-in pod family names the pod; its series leaves when the stall ends.
    let series = "detector_pod_stalled_sockets{namespace=\"shop\",pod=\"checkout-7d9f\",reason=\"peer_not_reading\"}";
    assert_eq!(metric(&http_get(&metrics, "/metrics").1, series), Some(1.0), "{}", http_get(&metrics, "/metrics").1);
    drop(server);
    let gone = poll(WITHIN, || (!http_get(&metrics, "/metrics").1.contains("checkout-7d9f")).then_some(()));
    assert!(gone.is_some(), "the pod's series stayed after its stall ended");
}

#[test]
fn a_socket_handed_to_a_child_is_attributed_to_the_child() {
    require_root!();
    let agent = Agent::start("2s", &[]);
    let server = Peer::stream(&["server", "127.0.0.1:0", "fill-handoff"]);
    let addr = server.expect("LISTEN", Duration::from_secs(5));
    let _client = Peer::stream(&["client", &addr, "none"]);
    let local = field(&server.expect("ACCEPTED", Duration::from_secs(5)), "local").to_string();
    let handoff = server.expect("HANDOFF", Duration::from_secs(10));
    let child: u32 = field(&handoff, "child").parse().unwrap();
    let _reap = KillOnDrop(child);

    let e = poll(WITHIN, || agent.stalled(&local)).unwrap_or_else(|| panic!("not reported:\n{}", agent.log()));
    assert_eq!(e["sender_pid"], server.pid(), "the parent sent the bytes: {e}");
    assert_eq!(e["pid"], child, "the child holds it now, not the sender: {e}");
    assert_eq!(e["fd"], field(&handoff, "fd").parse::<i64>().unwrap(), "{e}");
    let holders = e["holders"].as_array().unwrap();
    assert_eq!(holders.len(), 1, "{e}");
    assert_eq!(holders[0]["pid"], child, "{e}");
}

// A socket the sender still holds and a forked child holds too (a pre-forking server, a helper
// sharing the connection): every process holding it is listed, not the sender alone.
#[test]
fn a_socket_held_by_the_sender_and_its_child_lists_both() {
    require_root!();
    let agent = Agent::start("2s", &[]);
    let server = Peer::stream(&["server", "127.0.0.1:0", "fill-fork"]);
    let addr = server.expect("LISTEN", Duration::from_secs(5));
    let _client = Peer::stream(&["client", &addr, "none"]);
    let local = field(&server.expect("ACCEPTED", Duration::from_secs(5)), "local").to_string();
    let child: u32 = field(&server.expect("HANDOFF", Duration::from_secs(10)), "child").parse().unwrap();
    let _reap = KillOnDrop(child);
    let e = poll(WITHIN, || agent.stalled(&local)).unwrap_or_else(|| panic!("not reported:\n{}", agent.log()));
    let mut pids: Vec<u64> = e["holders"].as_array().unwrap().iter().map(|h| h["pid"].as_u64().unwrap()).collect();
    pids.sort();
    let mut want = vec![u64::from(server.pid()), u64::from(child)];
    want.sort();
    assert_eq!(pids, want, "{e}");
}

#[test]
fn a_socket_no_process_holds_is_owner_unknown_never_a_wrong_pid() {
    require_root!();
    let agent = Agent::start("2s", &[]);
    let server = Peer::stream(&["server", "127.0.0.1:0", "fill-inflight"]);
    let addr = server.expect("LISTEN", Duration::from_secs(5));
    let _client = Peer::stream(&["client", &addr, "none"]);
    let local = field(&server.expect("ACCEPTED", Duration::from_secs(5)), "local").to_string();
    server.expect("INFLIGHT", Duration::from_secs(10));

    let e = poll(WITHIN, || agent.stalled(&local)).unwrap_or_else(|| panic!("not reported:\n{}", agent.log()));
    assert_eq!(e["owner_known"], false, "{e}");
    assert!(e["pid"].is_null() && e["fd"].is_null(), "a pid was guessed: {e}");
    assert_eq!(e["holders"].as_array().unwrap().len(), 0, "{e}");
    assert_eq!(e["sender_pid"], server.pid(), "the sender is still reported as such: {e}");
    // Asking again (the cached "unknown") must not invent an owner either.
    std::thread::sleep(Duration::from_secs(1));
    let e = agent.stalled(&local).expect("still stalled");
    assert!(e["pid"].is_null(), "{e}");
}

/// The sender exits after handing the socket to its child, and its pid is given to a new,
/// unrelated process (forced with ns_last_pid). The report must name the child, never the
/// process that now wears the old pid.
#[test]
fn a_reused_sender_pid_is_never_reported_as_owner() {
    require_root!();
    let agent = Agent::start("2s", &[]);
    let mut server = Peer::stream(&["server", "127.0.0.1:0", "fill-handoff"]);
    let addr = server.expect("LISTEN", Duration::from_secs(5));
    let _client = Peer::stream(&["client", &addr, "none"]);
    let local = field(&server.expect("ACCEPTED", Duration::from_secs(5)), "local").to_string();
    let handoff = server.expect("HANDOFF", Duration::from_secs(10));
    let child: u32 = field(&handoff, "child").parse().unwrap();
    let _reap = KillOnDrop(child);
    let sender = server.pid();
    server.signal(libc::SIGKILL);
    assert!(server.wait_exit(Duration::from_secs(5)));

    // Give the sender's pid to an unrelated process.
    let mut impostor = None;
    for _ in 0..50 {
        let _ = std::fs::write("/proc/sys/kernel/ns_last_pid", (sender - 1).to_string());
        let c = std::process::Command::new("sleep").arg("60").spawn().expect("sleep");
        if c.id() == sender {
            impostor = Some(c);
            break;
        }
        let mut c = c;
        let _ = c.kill();
        let _ = c.wait();
    }
    let mut impostor = impostor.unwrap_or_else(|| panic!("could not reuse pid {sender} for the test"));

    let e = poll(WITHIN, || agent.stalled(&local)).unwrap_or_else(|| panic!("not reported:\n{}", agent.log()));
    let _ = impostor.kill();
    let _ = impostor.wait();
    assert_eq!(e["sender_pid"], sender, "{e}");
    assert_eq!(e["pid"], child, "the owner is the child, not whoever has pid {sender} now: {e}");
    assert!(e["holders"].as_array().unwrap().iter().all(|h| h["pid"] != sender), "{e}");
}
