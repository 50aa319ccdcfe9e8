//! The verdict's truth on a real kernel: the right reason for a live non-reader, the true age
//! of a stall older than the agent, healthy half-closed downloads left alone, and the wedges no
//! send announces (CLOSE_WAIT sockets that never sent, a first send that blocks, FIN_WAIT1
//! with data, closes the agent never heard of, device-bound, dual-stack and IPv6 sockets).
//! Grace is 3 s, as in the matrix.
use std::time::{Duration, Instant};

use detector_tests::{
    Agent, NS_A_ADDR, NS_A_ADDR6, NetnsPair, Peer, Scratch, destroy_on_port, expect_never, expect_stalled, field, free_port, http_get, latency_line, metric,
    pair, pair_on, patient, policy_file, poll, require_root, stream_peer, wait_tracked,
};
use serde_json::Value;

const GRACE: Duration = Duration::from_secs(3);
const GRACE_ARG: &str = "3s";
/// Sampling interval of the test agent (see `Agent::start`) plus scheduling slack.
const SLACK: Duration = Duration::from_secs(2);

fn ms(e: &Value, key: &str) -> u64 {
    e[key].as_u64().unwrap_or_else(|| panic!("no {key} in {e}"))
}

// A client that shrinks its receive buffer after connecting and never reads is alive: it ACKs
// every window probe. It must be peer_not_reading, on every pass.
#[test]
fn live_non_reader_with_a_tiny_receive_buffer_is_not_reading() {
    require_root!();
    let agent = Agent::start(GRACE_ARG, &[]);
    let p = pair("stream", "none-rcvbuf:4096");
    let (e, _) = expect_stalled(&agent, &p.local, Instant::now(), GRACE + SLACK);
    assert_eq!(e["reason"], "peer_not_reading", "{e}");
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(250));
        let e = agent.stalled(&p.local).expect("still stalled");
        assert_eq!(e["reason"], "peer_not_reading", "the verdict changed its mind: {e}");
    }
}

// A non-reader wedged long before the agent starts is listed at the first pass, with the age
// the kernel's clocks prove (its last delivery, or last data sent plus one RTO), not from the
// agent's start.
#[test]
fn a_non_reading_stall_older_than_the_agent_is_listed_at_once_with_its_age() {
    require_root!();
    let p = pair("stream", "none");
    let connected = Instant::now();
    std::thread::sleep(GRACE * 2);
    let agent = Agent::start(GRACE_ARG, &[]);
    let started = Instant::now();
    let (e, took) = expect_stalled(&agent, &p.local, started, Duration::from_millis(1500));
    eprintln!("listed {:.2} s after the agent's API answered: {e}", took.as_secs_f64());
    assert_eq!(e["reason"], "peer_not_reading", "{e}");
    // Wedged within a moment of connecting (filling the buffers; longer under emulation); the
    // proof without the kernel walk (last data + RTO) costs an RTO.
    let age = ms(&e, "stalled_for_ms");
    let lifetime = connected.elapsed().as_millis() as u64;
    assert!(age + patient(Duration::from_secs(1)).as_millis() as u64 >= lifetime, "age understated: {age} ms of a {lifetime} ms old connection: {e}");
    assert!(age <= lifetime, "older than the connection: {age} ms of {lifetime} ms: {e}");
}

// Such a stall costs no sock_diag lookup per pass where the kernel walk samples (storage-walk):
// the reconcile's scan puts the socket into storage and the walk samples it with the others
// (`detector explain` shows the kernel side's record of it; a socket found by a dump, sampled
// with sock_diag, has none). In the other configurations, sock_diag samples it (the metric is
// seen to count). The metric is not compared for storage: it counts every socket of the node, and the
// tests running beside this one make some (a few bytes in flight when a pass looks: one
// lookup, then forgotten as idle).
#[test]
fn a_stall_older_than_the_agent_is_sampled_by_the_kernel_walk_with_socket_storage() {
    require_root!();
    let p = pair("stream", "none");
    // Older than grace when the agent starts, so it is listed at its first pass.
    std::thread::sleep(GRACE * 2);
    let metrics = format!("127.0.0.1:{}", free_port());
    let agent = Agent::start(GRACE_ARG, &["--metrics-addr", &metrics]);
    let walks = agent.query("status").expect("status")["configuration"] == "storage-walk";
    let (e, _) = expect_stalled(&agent, &p.local, Instant::now(), Duration::from_millis(1500));
    let lookups = || metric(&http_get(&metrics, "/metrics").1, "detector_sock_diag_lookups_total").expect("detector_sock_diag_lookups_total");
    let before = lookups();
    std::thread::sleep(Duration::from_secs(2));
    let after = lookups();
    assert!(agent.stalled(&p.local).is_some(), "no longer listed");
    let explained = agent.explain(&e["socket_cookie"].to_string()).expect("explain");
    if walks {
        assert!(explained["kernel"].is_object(), "sampled as a socket found by a dump (sock_diag), not by the walk: {explained}\nagent log:\n{}", agent.log());
    } else {
        assert!(after > before, "without the walk, the agent samples the stall with sock_diag: {before} then {after}");
    }
}

// The same for an unreachable peer: the age runs from the last ACK it sent.
#[test]
fn an_unreachable_stall_older_than_the_agent_is_listed_at_once_with_its_age() {
    require_root!();
    let net = NetnsPair::new();
    let peer = stream_peer();
    let server = net.peer(&net.a, &peer, &["server", &format!("{NS_A_ADDR}:0"), "stream"]);
    let addr = server.expect("LISTEN", Duration::from_secs(5));
    let _client = net.peer(&net.b, &peer, &["client", &addr, "read"]);
    let local = field(&server.expect("ACCEPTED", Duration::from_secs(5)), "local").to_string();
    std::thread::sleep(Duration::from_millis(500));
    net.cut_b();
    let cut = Instant::now();
    std::thread::sleep(GRACE * 2);
    let agent = Agent::start(GRACE_ARG, &[]);
    let started = Instant::now();
    let (e, _) = expect_stalled(&agent, &local, started, Duration::from_millis(1500));
    assert_eq!(e["reason"], "peer_unreachable", "{e}");
    let age = ms(&e, "stalled_for_ms");
    assert!(age + 1_000 >= cut.elapsed().as_millis() as u64 - started.elapsed().as_millis() as u64, "age understated: {e}");
    assert!(age <= cut.elapsed().as_millis() as u64 + 200, "age overstated: {e}");
}

// An agent killed and restarted (a DaemonSet rollout) lists an existing stall at its first
// pass, with an age that kept running.
#[test]
fn a_restarted_agent_lists_an_existing_stall_at_once_and_keeps_its_age() {
    require_root!();
    let p = pair("stream", "none");
    let mut first = Agent::start(GRACE_ARG, &[]);
    let (e, _) = expect_stalled(&first, &p.local, Instant::now(), GRACE + SLACK);
    let age_before = ms(&e, "stalled_for_ms");
    let seen = Instant::now();
    first.kill_hard();
    let second = Agent::start(GRACE_ARG, &[]);
    let started = Instant::now();
    let (e, _) = expect_stalled(&second, &p.local, started, Duration::from_millis(1500));
    let age_after = ms(&e, "stalled_for_ms");
    let elapsed = seen.elapsed().as_millis() as u64;
    assert!(age_after + 500 >= age_before + elapsed, "age forgotten over the restart: {age_before} ms, then {age_after} ms {elapsed} ms later");
}

// A client that half-closes (shutdown(SHUT_WR)) and then downloads a large response slowly puts
// the server's socket in CLOSE_WAIT while data drains: healthy, never reported, and with
// `--action destroy` never touched: the download completes.
#[test]
fn a_half_closed_peer_that_still_downloads_is_never_reported_nor_touched() {
    require_root!();
    // 8 MiB at 1 MiB/s: about 8 s of draining, first in CLOSE_WAIT while the server still
    // writes (the response is larger than its send buffer), then in LAST_ACK once it has
    // closed. The agent destroys every stalled socket of this server (and only this server:
    // tests run in parallel).
    let peer = stream_peer();
    let server = Peer::spawn(&peer, &["server", "127.0.0.1:0", "respond-after-eof:8388608"]);
    let listen = server.expect("LISTEN", Duration::from_secs(5));
    let port = listen.rsplit(':').next().unwrap();
    let dir = Scratch::new("halfclose");
    let agent = Agent::start(GRACE_ARG, &["--policy", &policy_file(&dir, &destroy_on_port(port))]);
    let client = Peer::spawn(&peer, &["client", &listen, "half-close:1048576"]);
    let local = field(&server.expect("ACCEPTED", Duration::from_secs(5)), "local").to_string();
    let t = poll(Duration::from_secs(5), || agent.tracked(&local).filter(|t| t["state"] == "CLOSE_WAIT"))
        .unwrap_or_else(|| panic!("the draining CLOSE_WAIT socket was never tracked:\n{}", agent.log()));
    eprintln!("tracked while draining: {t}");
    let watch = std::thread::scope(|s| {
        let w = s.spawn(|| expect_never(&agent, &[&local], GRACE * 2));
        let done = client.expect_where("EOF", Duration::from_secs(20), |_| true);
        (w.join(), done)
    });
    if let Err(e) = watch.0 {
        std::panic::resume_unwind(e);
    }
    assert!(watch.1.is_some(), "the download never completed:\n{}", agent.log());
    assert!(server.saw("RESPONDED", |_| true), "the server did not hand over its whole response");
    assert!(!agent.log().contains("\"event\":\"reap\""), "an action was decided:\n{}", agent.log());
}

// A half-closed peer that stops reading leaves the owner holding a CLOSE_WAIT socket that
// neither drains nor closes: peer_closed.
#[test]
fn a_half_closed_peer_that_stops_reading_is_peer_closed() {
    require_root!();
    let agent = Agent::start(GRACE_ARG, &[]);
    let p = pair("respond-after-eof:67108864", "half-close:0");
    let (e, _) = expect_stalled(&agent, &p.local, Instant::now(), GRACE + SLACK);
    assert_eq!((e["reason"].as_str(), e["state"].as_str()), (Some("peer_closed"), Some("CLOSE_WAIT")), "{e}");
    assert!(ms(&e, "queued_bytes") > 0, "{e}");
}

// The classic CLOSE_WAIT leak: a server accepted, never wrote, and never closed after the
// peer's FIN. No send announces it; it must be reported as a leak suspect once it outlasts
// `--close-wait-grace` (the grace here), with its owner.
#[test]
fn a_close_wait_socket_that_never_sent_is_a_leak_suspect() {
    require_root!();
    let agent = Agent::start(GRACE_ARG, &["--close-wait-grace", GRACE_ARG]);
    let p = pair("silent", "close:0");
    let t0 = Instant::now();
    let (e, took) = expect_stalled(&agent, &p.local, t0, GRACE + SLACK);
    latency_line("close_wait_idle (never sent)", took, GRACE);
    assert_eq!(e["reason"], "close_wait_idle", "{e}");
    assert_eq!(e["state"], "CLOSE_WAIT", "{e}");
    assert_eq!(e["queued_bytes"], 0, "{e}");
    assert_eq!(e["pid"], p.server.pid(), "{e}");
    assert_eq!(e["fd"].to_string(), field(&p.accepted, "fd"), "{e}");
}

// A first send that blocks forever (one 64 MiB send() to a peer that never reads) is found
// within grace + interval, whichever send hook the kernel gives.
#[test]
fn a_first_send_that_blocks_forever_is_found() {
    require_root!();
    let agent = Agent::start(GRACE_ARG, &[]);
    let t0 = Instant::now();
    let p = pair("sendall:67108864", "none");
    let (e, took) = expect_stalled(&agent, &p.local, t0, GRACE + SLACK);
    latency_line("first send blocks", took, GRACE);
    assert_eq!(e["reason"], "peer_not_reading", "{e}");
    assert_eq!(e["pid"], p.server.pid(), "{e}");
}

// After shutdown(SHUT_WR) with data queued to a peer that does not read, the socket sits in
// FIN_WAIT1 (its owner still holds it): judged like any other.
#[test]
fn fin_wait1_with_stuck_data_is_judged() {
    require_root!();
    let agent = Agent::start(GRACE_ARG, &[]);
    let p = pair("fill-shut-wr", "none");
    p.server.expect("SHUT_WR", Duration::from_secs(5));
    let (e, _) = expect_stalled(&agent, &p.local, Instant::now(), GRACE + SLACK);
    assert_eq!((e["state"].as_str(), e["reason"].as_str()), (Some("FIN_WAIT1"), Some("peer_not_reading")), "{e}");
    assert_eq!(e["pid"], p.server.pid(), "{e}");
    // Closed with data still queued: the kernel keeps it, no process holds it.
    let q = pair("fill-abandon", "none");
    q.server.expect("ABANDONED", Duration::from_secs(5));
    let (e, _) = expect_stalled(&agent, &q.local, Instant::now(), GRACE + SLACK);
    assert_eq!(e["state"], "FIN_WAIT1", "{e}");
    assert_eq!(e["owner_known"], false, "an orphaned socket has no owner: {e}");
}

// The same towards a peer whose link went down: FIN_WAIT1, peer_unreachable.
#[test]
fn fin_wait1_to_an_unreachable_peer_is_unreachable() {
    require_root!();
    let net = NetnsPair::new();
    let agent = Agent::start(GRACE_ARG, &[]);
    let peer = stream_peer();
    let server = net.peer(&net.a, &peer, &["server", &format!("{NS_A_ADDR}:0"), "fill-shut-wr"]);
    let addr = server.expect("LISTEN", Duration::from_secs(5));
    let _client = net.peer(&net.b, &peer, &["client", &addr, "none"]);
    let local = field(&server.expect("ACCEPTED", Duration::from_secs(5)), "local").to_string();
    server.expect("SHUT_WR", Duration::from_secs(5));
    net.cut_b();
    let (e, _) = expect_stalled(&agent, &local, Instant::now(), GRACE * 2 + SLACK);
    assert_eq!((e["state"].as_str(), e["reason"].as_str()), (Some("FIN_WAIT1"), Some("peer_unreachable")), "{e}");
}

// With the fallback hooks and a ring buffer far too small, close events are lost: the agent
// still forgets every closed socket (its samples find them gone), counts it, and the kernel
// map holds none of them.
#[test]
fn closes_lost_with_dropped_events_are_reconciled_and_counted() {
    require_root!();
    let addr = format!("127.0.0.1:{}", free_port());
    let agent = Agent::start(GRACE_ARG, &["--send-hook", "sock-send-length", "--ring-buffer-bytes", "4096", "--metrics-addr", &addr]);
    let peer = stream_peer();
    let n = 60;
    let server = Peer::spawn(&peer, &["server", "127.0.0.1:0", "fill-close", &n.to_string()]);
    let listen = server.expect("LISTEN", Duration::from_secs(5));
    // The clients read nothing until the test says so (no clock decides when they close).
    let client = Peer::spawn(&peer, &["client", &listen, "gate-all-close", &n.to_string()]);
    for _ in 0..n {
        server.expect("ACCEPTED", Duration::from_secs(10));
    }
    // Each send path full (the clients read only once released, after this).
    for _ in 0..n {
        server.expect("FILLED", Duration::from_secs(20));
    }
    let port = listen.rsplit(':').next().unwrap().to_string();
    let ours = || {
        let all = agent.query("sockets").expect("sockets");
        all.as_array().unwrap().iter().filter(|t| t["local"].as_str().unwrap_or("").ends_with(&format!(":{port}"))).count()
    };
    // Every socket tracked (announcements lost to the tiny ring are rebuilt from the map)...
    poll(Duration::from_secs(10), || (ours() == n).then_some(())).unwrap_or_else(|| panic!("{} of {n} tracked\n{}", ours(), agent.log()));
    // ...then the agent stops draining while all of them close: 60 close events do not fit in
    // 4 KiB (about 39), so some are lost for certain.
    // SAFETY: signals to the agent this test started.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGSTOP) };
    client.signal(libc::SIGUSR1);
    let closed = (0..n).all(|_| server.expect_where("CLOSED", Duration::from_secs(20), |_| true).is_some());
    // SAFETY: as above.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGCONT) };
    assert!(closed, "the server did not close every connection");
    let gone = poll(Duration::from_secs(5), || (ours() == 0).then_some(()));
    assert!(gone.is_some(), "closed sockets still tracked: {}\n{}", agent.query("sockets").unwrap(), agent.log());
    let (_, text) = http_get(&addr, "/metrics");
    assert!(metric(&text, "detector_kernel_events_dropped_total").unwrap_or(0.0) > 0.0, "nothing was dropped, the test proves nothing:\n{text}");
    assert!(metric(&text, "detector_sockets_forgotten_total{why=\"gone\"}").unwrap_or(0.0) > 0.0, "{text}");
    // The map is pruned at the reconcile after the samples found the sockets gone, and holds
    // the entries of every socket on this host the hook saw (other tests' too): once pruned,
    // every entry left is a socket the agent tracks.
    let pruned = poll(Duration::from_secs(5), || {
        let s = agent.query("status").expect("status");
        (s["kernel_map_entries"].as_u64() <= s["sockets_tracked"].as_u64()).then_some(())
    });
    assert!(pruned.is_some(), "dead entries left in the kernel map: {}", agent.query("status").unwrap());
}

// A socket bound to a device (SO_BINDTODEVICE) is looked up with its interface: it stays
// tracked and is reported, not dropped as gone after its first sample.
#[test]
fn a_socket_bound_to_a_device_is_judged() {
    require_root!();
    let agent = Agent::start(GRACE_ARG, &[]);
    let p = pair_on("127.0.0.1:0", "stream", "none", &["dev=lo"]);
    let (e, _) = expect_stalled(&agent, &p.local, Instant::now(), GRACE + SLACK);
    assert_eq!(e["reason"], "peer_not_reading", "{e}");
    std::thread::sleep(Duration::from_secs(1));
    assert!(agent.stalled(&p.local).is_some(), "dropped after being reported:\n{}", agent.log());
}

// An IPv4 client of a server listening on [::] shows as IPv4 (not ::ffff:a.b.c.d).
#[test]
fn an_ipv4_peer_of_a_dual_stack_server_shows_as_ipv4() {
    require_root!();
    let agent = Agent::start(GRACE_ARG, &[]);
    let peer = stream_peer();
    let server = Peer::spawn(&peer, &["server", "[::]:0", "stream"]);
    let listen = server.expect("LISTEN", Duration::from_secs(5));
    let port = listen.rsplit(':').next().unwrap();
    let _client = Peer::spawn(&peer, &["client", &format!("127.0.0.1:{port}"), "none"]);
    let accepted = server.expect("ACCEPTED", Duration::from_secs(5));
    let local = format!("127.0.0.1:{port}");
    assert!(field(&accepted, "local").contains("::ffff:127.0.0.1"), "not a v4-mapped socket: {accepted}");
    let (e, _) = expect_stalled(&agent, &local, Instant::now(), GRACE + SLACK);
    assert!(e["remote"].as_str().unwrap().starts_with("127.0.0.1:"), "{e}");
}

// IPv6 end to end: a peer on ::1 that never reads, and one across a veth whose link goes down.
#[test]
fn ipv6_peers_not_reading_and_unreachable() {
    require_root!();
    let net = NetnsPair::new();
    let agent = Agent::start(GRACE_ARG, &[]);
    let p = pair_on("[::1]:0", "stream", "none", &[]);
    let peer = stream_peer();
    let server = net.peer(&net.a, &peer, &["server", &format!("[{NS_A_ADDR6}]:0"), "stream"]);
    let addr = server.expect("LISTEN", Duration::from_secs(5));
    let _client = net.peer(&net.b, &peer, &["client", &addr, "read"]);
    let local = field(&server.expect("ACCEPTED", Duration::from_secs(5)), "local").to_string();
    wait_tracked(&agent, &local);
    net.cut_b();
    let (e, _) = expect_stalled(&agent, &p.local, Instant::now(), GRACE + SLACK);
    assert_eq!(e["reason"], "peer_not_reading", "{e}");
    let (e, _) = expect_stalled(&agent, &local, Instant::now(), GRACE + SLACK);
    assert_eq!(e["reason"], "peer_unreachable", "{e}");
    assert!(e["local"].as_str().unwrap().starts_with(&format!("[{NS_A_ADDR6}]:")), "{e}");
}
