//! The scenario matrix: real TCP over loopback and over veth between test-made network
//! namespaces, each case with the verdict it must get (or must never get). Grace is 3 s.
use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use detector_tests::{
    Agent, NS_A_ADDR, NetnsPair, Peer, expect_never, expect_stalled, field, free_port, http_get, latency_line, metric, pair, pair_on, patient, poll,
    require_root, stream_peer, wait_tracked,
};
use serde_json::Value;

const GRACE: Duration = Duration::from_secs(3);
const GRACE_ARG: &str = "3s";
/// Sampling interval the test agent runs with (see `Agent::start`), plus scheduling slack.
const SLACK: Duration = Duration::from_secs(2);

// 1. The peer becomes unreachable mid-stream (its namespace's link goes down).
#[test]
fn s01_peer_unreachable_mid_stream() {
    require_root!();
    let e = unreachable_mid_stream("peer_unreachable", NetnsPair::cut_b);
    // The evidence: unanswered retransmits, or, when the link died while the reader's window
    // happened to be closed, unanswered window probes (which are not retransmits).
    let (retrans, probes) = (e["retransmits"].as_u64().unwrap(), e["zero_window_probes"].as_u64().unwrap());
    assert!(retrans > 0 || (e["peer_window"] == 0 && probes >= 2), "{e}");
}

// 1b. The peer's pod goes away mid-stream: its veth is deleted, so the server's route to it is
// gone and no retransmission leaves the host (the kernel still counts each RTO expiry, but the
// last data sent stays at the last original segment, right after the last ACK).
#[test]
fn s01b_peer_whose_link_is_deleted_is_unreachable() {
    require_root!();
    let e = unreachable_mid_stream("peer_unreachable (link deleted)", NetnsPair::delete_link);
    // The evidence: unanswered retransmits, or, when nothing was in flight as the route went
    // (a slow reader had everything acknowledged), unanswered probes of the unsent queue.
    let (retrans, probes) = (e["retransmits"].as_u64().unwrap(), e["zero_window_probes"].as_u64().unwrap());
    assert!(retrans > 0 || probes >= 2, "{e}");
}

/// A server in one namespace streams to a reader in another until `cut` breaks the path; the
/// report must say `peer_unreachable`, name the server and show bytes queued. Returns it.
fn unreachable_mid_stream(label: &str, cut: fn(&NetnsPair)) -> Value {
    let net = NetnsPair::new();
    let agent = Agent::start(GRACE_ARG, &[]);
    let server = net.peer(&net.a, &stream_peer(), &["server", &format!("{NS_A_ADDR}:0"), "stream"]);
    let addr = server.expect("LISTEN", Duration::from_secs(5));
    let _client = net.peer(&net.b, &stream_peer(), &["client", &addr, "read"]);
    let local = field(&server.expect("ACCEPTED", Duration::from_secs(5)), "local").to_string();
    wait_tracked(&agent, &local);
    expect_never(&agent, &[&local], Duration::from_secs(1));
    cut(&net);
    let t0 = Instant::now();
    let (e, took) = expect_stalled(&agent, &local, t0, GRACE + SLACK);
    latency_line(label, took, GRACE);
    // On a mismatch, the samples that made the verdict. (Seen in a 6.1 guest: `peer_not_reading`
    // with 3 retransmits, when the second and third never left the host, queued behind the first
    // for a neighbour that no longer answered; the verdict now counts the RTO's expiries.)
    let why = || agent.explain(&e["socket_cookie"].to_string()).map(|x| x.to_string()).unwrap_or_else(|err| err);
    assert_eq!(e["reason"], "peer_unreachable", "{e}\nexplain: {}", why());
    assert_eq!(e["pid"], server.pid(), "{e}");
    assert!(e["queued_bytes"].as_u64().unwrap() > 0, "{e}");
    e
}

// 2. The peer process is frozen (SIGSTOP) while the server streams.
#[test]
fn s02_frozen_peer_is_not_reading() {
    require_root!();
    let agent = Agent::start(GRACE_ARG, &[]);
    let p = pair_on("127.0.0.1:0", "stream", "read", &["watch"]);
    wait_tracked(&agent, &p.local);
    expect_never(&agent, &[&p.local], Duration::from_secs(1));
    p.client.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    let (e, took) = expect_stalled(&agent, &p.local, stopped, GRACE + SLACK);
    latency_line("peer_not_reading (frozen)", took, GRACE);
    // The onset is never dated before the connection's last progress as its own sender saw it
    // (its acknowledged bytes, polled every 5 ms: they last moved after `moved_after_ns`).
    let last_progress = p.server.expect("STOPPED", Duration::from_secs(5));
    let moved_after_ms = field(&last_progress, "moved_after_ns").parse::<u64>().unwrap() / 1_000_000;
    let x = agent.explain(&e["socket_cookie"].to_string()).unwrap();
    let answered_by_ms = detector_tests::monotonic_ns().div_ceil(1_000_000);
    let onset_by_ms = answered_by_ms - x["verdict"]["stalled_for_ms"].as_u64().unwrap();
    assert!(onset_by_ms >= moved_after_ms, "onset at or before {onset_by_ms} ms, the last progress after {moved_after_ms} ms: {x}");
    p.client.signal(libc::SIGCONT);
    assert_eq!(e["reason"], "peer_not_reading", "{e}");
    assert_eq!(e["peer_window"], 0, "{e}");
    assert_eq!(e["pid"], p.server.pid(), "{e}");
    // With the kernel walk (socket storage) the onset is the last delivery; sock_diag cannot
    // read that clock (its samples bound the onset by the first sample that saw the window
    // closed, the last ACK, or the last data segment plus one RTO, whichever came first).
    let walked = agent.query("status").expect("status")["sampling"].as_str().is_some_and(|s| s.starts_with("kernel walk"));
    let proof = &x["verdict"]["onset_proof"];
    assert_eq!(walked, proof == "last_delivery", "sampled by the kernel walk: {walked}; onset proof {proof}: {x}");
}

// 3. The peer is alive but never reads.
#[test]
fn s03_peer_never_reads() {
    require_root!();
    let agent = Agent::start(GRACE_ARG, &[]);
    let p = pair("stream", "none");
    let t0 = Instant::now();
    let (e, took) = expect_stalled(&agent, &p.local, t0, GRACE + SLACK);
    latency_line("peer_not_reading (never reads)", took, GRACE);
    assert_eq!(e["reason"], "peer_not_reading", "{e}");
    // Every probe the peer ACKs keeps it looking alive; the queue still never drains. Probes
    // count from the first sample that saw the window closed, and back off (0.4, 0.8, 1.6,
    // 3.2 s apart): the next one comes within ~7 s of the stall.
    let probed = poll(Duration::from_secs(10), || agent.stalled(&p.local).filter(|e| e["zero_window_probes"].as_u64().unwrap() >= 1));
    let e = agent.stalled(&p.local).expect("still stalled");
    assert!(probed.is_some(), "no window probe counted: {e}");
}

// 4. The peer closes its side; the server keeps the socket open and idle: the CLOSE_WAIT leak
// (seed 001's ghost WebSockets), a leak suspect once it outlasts `--close-wait-grace` (here the
// grace itself; 5 minutes by default, since a half-closed client may wait for its answer).
#[test]
fn s04_peer_closed_while_owner_holds_it() {
    require_root!();
    let agent = Agent::start(GRACE_ARG, &["--close-wait-grace", GRACE_ARG]);
    let p = pair("burst:65536", "close:500");
    wait_tracked(&agent, &p.local);
    let closed = Instant::now() + Duration::from_millis(500);
    let (e, took) = expect_stalled(&agent, &p.local, closed, GRACE + SLACK + Duration::from_millis(500));
    latency_line("close_wait_idle", took, GRACE);
    assert_eq!(e["reason"], "close_wait_idle", "{e}");
    assert_eq!(e["state"], "CLOSE_WAIT", "{e}");
    assert_eq!(e["pid"], p.server.pid(), "{e}");
}

// 5. A clean close is never reported and its state is removed. (The client reads nothing for
// a second while the server fills its send buffer, so the socket is tracked; then it drains
// and both sides close.)
#[test]
fn s05_clean_close_is_never_reported_and_forgotten() {
    require_root!();
    // The bytes wait until the test has seen the socket tracked (a fixed wait let a slow guest
    // drain and close it between two samples), and never longer than grace: under emulation
    // the grace grows with the slack, so a slow look cannot turn into a real stall.
    let grace = patient(GRACE);
    let agent = Agent::start(&format!("{}ms", grace.as_millis()), &[]);
    let p = pair("fill-close", "gate-close");
    wait_tracked(&agent, &p.local);
    p.server.expect("FILLED", Duration::from_secs(5));
    p.client.signal(libc::SIGUSR1);
    p.server.expect("CLOSED", Duration::from_secs(5));
    let gone = poll(Duration::from_secs(2), || agent.tracked(&p.local).is_none().then_some(()));
    assert!(gone.is_some(), "closed socket still tracked: {:?}", agent.tracked(&p.local));
    expect_never(&agent, &[&p.local], grace + SLACK);
}

// 6. A fast reader is never reported.
#[test]
fn s06_fast_reader_never() {
    require_root!();
    let agent = Agent::start(GRACE_ARG, &[]);
    let p = pair("stream", "read");
    let a0 = wait_tracked(&agent, &p.local)["bytes_acked"].as_u64().unwrap();
    expect_never(&agent, &[&p.local], GRACE * 2 + SLACK);
    // A fast reader can empty the queue at the instant of a walk: the socket then leaves the
    // table as idle and comes back with the next bytes waiting.
    let a1 = poll(Duration::from_secs(3), || agent.tracked(&p.local))
        .unwrap_or_else(|| panic!("no longer tracked: {}\n{}", agent.query("sockets").unwrap(), agent.log()))["bytes_acked"]
        .as_u64()
        .unwrap();
    assert!(a1 > a0, "the stream did not move");
}

// 7. A slow reader: reads far slower than the server writes; the queue stays high but drains.
#[test]
fn s07_slow_reader_never() {
    require_root!();
    let agent = Agent::start(GRACE_ARG, &[]);
    let p = pair("paced:2000000", "slow:262144");
    wait_tracked(&agent, &p.local);
    expect_never(&agent, &[&p.local], GRACE * 2 + SLACK);
    let t = agent.tracked(&p.local).unwrap();
    assert!(t["queued_bytes"].as_u64().unwrap() > 256 * 1024, "queue never built up: {t}");
}

// 8a. The peer pauses for less than the grace window, then resumes: never reported.
#[test]
fn s08a_short_pause_never() {
    require_root!();
    let agent = Agent::start(GRACE_ARG, &[]);
    let p = pair("stream", "read");
    wait_tracked(&agent, &p.local);
    p.client.signal(libc::SIGSTOP);
    let watch = std::thread::scope(|s| {
        let w = s.spawn(|| expect_never(&agent, &[&p.local], GRACE * 2));
        std::thread::sleep(GRACE / 2);
        p.client.signal(libc::SIGCONT);
        w.join()
    });
    if let Err(e) = watch {
        std::panic::resume_unwind(e);
    }
}

// 8b. Paused longer than grace: reported, then recovered when it resumes.
#[test]
fn s08b_long_pause_reported_then_recovered() {
    require_root!();
    let metrics = format!("127.0.0.1:{}", free_port());
    let agent = Agent::start(GRACE_ARG, &["--metrics-addr", &metrics]);
    let p = pair("stream", "read");
    wait_tracked(&agent, &p.local);
    p.client.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    let (e, took) = expect_stalled(&agent, &p.local, stopped, GRACE + SLACK);
    latency_line("peer_not_reading (long pause)", took, GRACE);
    assert_eq!(e["reason"], "peer_not_reading", "{e}");
    p.client.signal(libc::SIGCONT);
    // Recovered: counted as such, no longer listed. The resumed reader may empty the queue
    // at once, and a socket with nothing waiting leaves the table until bytes wait again.
    let recovered = poll(Duration::from_secs(3), || {
        (metric(&http_get(&metrics, "/metrics").1, "detector_stalls_recovered_total").unwrap_or(0.0) >= 1.0 && agent.stalled(&p.local).is_none()).then_some(())
    });
    assert!(recovered.is_some(), "no recovery: {:?}\n{}", agent.tracked(&p.local), agent.log());
    assert!(agent.tracked(&p.local).is_none_or(|t| t["stalled"] == false && t["recoveries"].as_u64() >= Some(1)), "{:?}", agent.tracked(&p.local));
}

// 9. Backpressure: the queue plateaus at the send buffer's size while ACKs trickle (over veth).
#[test]
fn s09_backpressured_plateau_never() {
    require_root!();
    let net = NetnsPair::new();
    let agent = Agent::start(GRACE_ARG, &[]);
    let server = net.peer(&net.a, &stream_peer(), &["server", &format!("{NS_A_ADDR}:0"), "stream"]);
    let addr = server.expect("LISTEN", Duration::from_secs(5));
    let _client = net.peer(&net.b, &stream_peer(), &["client", &addr, "slow:131072"]);
    let local = field(&server.expect("ACCEPTED", Duration::from_secs(5)), "local").to_string();
    wait_tracked(&agent, &local);
    std::thread::sleep(Duration::from_secs(1));
    let q0 = agent.tracked(&local).unwrap()["queued_bytes"].as_u64().unwrap();
    expect_never(&agent, &[&local], GRACE * 2 + SLACK);
    let t = agent.tracked(&local).unwrap();
    let q1 = t["queued_bytes"].as_u64().unwrap();
    assert!(q0 > 64 * 1024 && q1 > 64 * 1024, "no backpressure: {q0} -> {q1}");
}

// 9b. The peer that trickles (the read side of Slowloris): it reads 1,000 bytes a second from a
// 16 KiB receive buffer, so its window reopens by a few segments every 6 to 10 s (longer than
// grace: a stall, then progress, again and again), and it is listed as `peer_trickling` once
// the trickle window (20 s here) shows under the floor (2 KiB/s) drained; a reader that keeps
// up with its stream at 64 KiB/s, its window as nearly closed, is never listed. Over veth (a
// real MSS).
#[test]
fn s09b_trickling_peer_listed_and_a_slow_one_never() {
    require_root!();
    let net = NetnsPair::new();
    let agent = Agent::start(GRACE_ARG, &["--trickle-window", "20s", "--trickle-floor", "2KiB/s"]);
    // One server each: the report tells them apart by their local address.
    let serve = |client_mode: &str| {
        let server = net.peer(&net.a, &stream_peer(), &["server", &format!("{NS_A_ADDR}:0"), "stream"]);
        let addr = server.expect("LISTEN", Duration::from_secs(5));
        let client = net.peer(&net.b, &stream_peer(), &["client", &addr, client_mode]);
        let local = field(&server.expect("ACCEPTED", Duration::from_secs(5)), "local").to_string();
        (server, client, local)
    };
    let (_s1, _trickler, trickling) = serve("slow-rcvbuf:1000:16384");
    let (_s2, _keeps_up, slow) = serve("slow-rcvbuf:65536:16384");
    let t = wait_tracked(&agent, &trickling);
    let window_known = !agent.explain(&t["id"].to_string()).expect("explain")["samples"].as_array().unwrap().iter().all(|s| s["peer_window"].is_null());
    std::thread::scope(|sc| {
        let never = sc.spawn(|| expect_never(&agent, &[&slow], Duration::from_secs(20) + GRACE * 4));
        if window_known {
            let e = poll(Duration::from_secs(20) + GRACE * 4, || agent.stalled(&trickling).filter(|e| e["reason"] == "peer_trickling"))
                .unwrap_or_else(|| panic!("the trickler was not listed as trickling: {:?}\n{}", agent.stalled(&trickling), agent.log()));
            let d = &e["drain"];
            let rate = d["bytes"].as_f64().unwrap() * 1000.0 / d["over_ms"].as_f64().unwrap();
            assert!(d["bytes"].as_u64() > Some(0) && rate < 2048.0 && d["over_ms"].as_u64() >= Some(20_000), "{e}");
        } else {
            // A kernel whose tcp_info lacks the peer's window (before 6.2), without the walk:
            // a slow network and a slow reader look alike, so no trickle is judged.
            expect_never(&agent, &[&trickling], Duration::from_secs(20) + GRACE * 4);
        }
        never.join().unwrap();
    });
}

// 10. An idle connection with nothing queued, for several grace windows. Its send buffer
// filled once (the client reads late), so it is tracked; once its bytes are read, nothing
// waits and the agent stops watching it (bytes waiting again bring it back), never reporting it.
#[test]
fn s10_idle_connection_never() {
    require_root!();
    // The reader's pause must outlast the agent's first samples (it is tracked only while bytes
    // wait) and stay under grace: under emulation both stretch by the tests' slack.
    let grace = patient(GRACE);
    let agent = Agent::start(&format!("{}ms", grace.as_millis()), &[]);
    let p = pair("fill-idle", &format!("late:{}", patient(Duration::from_secs(1)).as_millis()));
    let t = wait_tracked(&agent, &p.local);
    assert!(t["queued_bytes"].as_u64().unwrap() > 0, "{t}");
    expect_never(&agent, &[&p.local], grace * 4);
    let t2 = agent.tracked(&p.local);
    assert!(t2.as_ref().is_none_or(|t2| t2["queued_bytes"] == 0), "{t} {t2:?}");
}

// 10b. A short request/response connection whose bytes never wait costs nothing: it is not
// even tracked (and so cannot be reported).
#[test]
fn s10b_nothing_waiting_is_not_tracked() {
    require_root!();
    let agent = Agent::start(GRACE_ARG, &[]);
    let p = pair("burst:1000", "read");
    std::thread::sleep(Duration::from_secs(2));
    assert!(agent.tracked(&p.local).is_none(), "{:?}", agent.tracked(&p.local));
}

// 11. A reset from the peer: removed, never reported.
#[test]
fn s11_reset_from_peer_removed_never_reported() {
    require_root!();
    // The reset comes when the test has seen the socket tracked (a reader that reset after a
    // fixed second left a window a busy machine could miss), well within grace.
    let grace = patient(GRACE);
    let agent = Agent::start(&format!("{}ms", grace.as_millis()), &[]);
    let mut p = pair("stream", "gate-rst");
    wait_tracked(&agent, &p.local);
    p.client.signal(libc::SIGUSR1);
    p.server.expect("SEND_ERROR", Duration::from_secs(5));
    assert!(p.server.wait_exit(Duration::from_secs(3)));
    let gone = poll(Duration::from_secs(2), || agent.tracked(&p.local).is_none().then_some(()));
    assert!(gone.is_some(), "reset socket still tracked");
    expect_never(&agent, &[&p.local], grace + SLACK);
}

/// One group of connections of the same kind, between one server and one client process.
struct Group {
    name: &'static str,
    _server: Peer,
    client: Peer,
    /// `local remote` of each server-side socket, as the agent reports them. Both are needed:
    /// a group's connections share the server's local address, and other tests' agents-visible
    /// connections may reuse a client port towards another server.
    remotes: Vec<String>,
    /// `Some(reason)` for dead connections.
    expect: Option<&'static str>,
}

fn group(name: &'static str, n: usize, server_mode: &str, client_mode: &str, expect: Option<&'static str>) -> Group {
    let ns = n.to_string();
    let server = Peer::stream(&["server", "127.0.0.1:0", server_mode, &ns]);
    let addr = server.expect("LISTEN", Duration::from_secs(5));
    let client = Peer::stream(&["client", &addr, client_mode, &ns]);
    let remotes = (0..n).map(|_| conn_key(&server.expect("ACCEPTED", Duration::from_secs(10)))).collect();
    Group { name, _server: server, client, remotes, expect }
}

// Mixed: 100 healthy connections of several kinds and 10 dead ones at once.
#[test]
fn s12_mixed_100_healthy_10_dead() {
    require_root!();
    let net = NetnsPair::new();
    let agent = Agent::start(GRACE_ARG, &["--close-wait-grace", GRACE_ARG]);
    let mut groups = vec![
        group("fast", 40, "paced:2000000", "read", None),
        group("slow", 30, "paced:1000000", "slow:262144", None),
        group("idle", 30, "burst:1000", "read", None),
        group("never-reads", 3, "stream", "none", Some("peer_not_reading")),
        group("frozen", 2, "stream", "read", Some("peer_not_reading")),
        group("closed", 2, "burst:65536", "close:500", Some("close_wait_idle")),
    ];
    // Three connections to a peer in another namespace whose link will go down.
    let server = net.peer(&net.a, &stream_peer(), &["server", &format!("{NS_A_ADDR}:0"), "stream", "3"]);
    let addr = server.expect("LISTEN", Duration::from_secs(5));
    let client = net.peer(&net.b, &stream_peer(), &["client", &addr, "read", "3"]);
    let remotes = (0..3).map(|_| conn_key(&server.expect("ACCEPTED", Duration::from_secs(10)))).collect();
    groups.push(Group { name: "unreachable", _server: server, client, remotes, expect: Some("peer_unreachable") });
    let healthy: HashSet<String> = groups.iter().filter(|g| g.expect.is_none()).flat_map(|g| g.remotes.clone()).collect();
    let dead: HashMap<String, (&str, &str)> =
        groups.iter().filter_map(|g| g.expect.map(|r| (g, r))).flat_map(|(g, r)| g.remotes.iter().map(move |l| (l.clone(), (g.name, r)))).collect();
    assert_eq!((healthy.len(), dead.len()), (100, 10));
    // Connections whose bytes wait (slow readers, non-readers) must be tracked before the deaths,
    // or "never reported" would prove nothing for them. (Fast and idle ones need not be: a send
    // with nothing waiting costs the agent nothing and tells it nothing.)
    let queueing: HashSet<String> = groups.iter().filter(|g| g.name == "slow" || g.name == "never-reads").flat_map(|g| g.remotes.clone()).collect();
    let tracked = poll(Duration::from_secs(5), || {
        let all = agent.query("sockets").expect("sockets");
        let seen: HashSet<String> = all.as_array().unwrap().iter().filter(|t| !t["bytes_acked"].is_null()).map(entry_key).collect();
        queueing.iter().all(|r| seen.contains(r)).then_some(())
    });
    assert!(tracked.is_some(), "not all {} queueing connections tracked:\n{}", queueing.len(), agent.log());

    // The deaths, at one instant.
    let onset = Instant::now();
    groups.iter().find(|g| g.name == "frozen").unwrap().client.signal(libc::SIGSTOP);
    net.cut_b();

    let mut found: HashMap<String, (String, Duration)> = HashMap::new();
    let until = onset + GRACE * 2 + SLACK;
    while Instant::now() < until {
        let all = agent.query("stalled").expect("stalled");
        for e in all.as_array().unwrap() {
            let remote = entry_key(e);
            if healthy.contains(&remote) {
                panic!("false positive: healthy {remote} reported: {e}\n{}", agent.log());
            }
            if dead.contains_key(&remote) && !found.contains_key(&remote) {
                found.insert(remote, (e["reason"].as_str().unwrap().to_string(), onset.elapsed()));
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    groups.iter().find(|g| g.name == "frozen").unwrap().client.signal(libc::SIGCONT);
    for (remote, (group, reason)) in &dead {
        let (got, took) = found.get(remote).unwrap_or_else(|| panic!("missed dead {group} connection to {remote}\n{}", agent.log()));
        assert_eq!(got, reason, "{group} {remote}");
        // Only these two died at `onset`; the others were dead from the start.
        if *group == "frozen" || *group == "unreachable" {
            latency_line(&format!("mixed {group}"), *took, GRACE);
        }
    }
    eprintln!("mixed run: recall {}/{}, false positives 0 of {}", found.len(), dead.len(), healthy.len());
    drop(groups);
}

fn conn_key(accepted: &str) -> String {
    format!("{} {}", field(accepted, "local"), field(accepted, "peer"))
}

fn entry_key(e: &Value) -> String {
    format!("{} {}", e["local"].as_str().unwrap_or(""), e["remote"].as_str().unwrap_or(""))
}
