//! A flood of stalls, on a real kernel: any remote client can stall thousands of connections
//! (ask for a large answer, never read). The agent stays bounded and fair: the flood neither
//! hides another peer's stall nor takes every action of the rate limit. In a file of its own:
//! thousands of stalled sockets would disturb the counts of other tests run alongside.
use std::time::{Duration, Instant};

use detector_tests::{Agent, NS_A_ADDR, NetnsPair, Peer, Scratch, field, free_port, http_get, metric, pair_on, poll, require_root, serial, stream_peer, toml};

const GRACE: Duration = Duration::from_secs(2);

// Both tests fill the host with stalls: one at a time.

/// `loadgen hold <n> 0 100`: n connections of one process whose sends fill towards a reader that
/// never reads (all to 127.0.0.1); killed on drop.
fn flood(n: usize) -> Peer {
    let lg = Peer::spawn(env!("CARGO_BIN_EXE_loadgen"), &["hold", &n.to_string(), "0", "100"]);
    lg.expect("READY", Duration::from_secs(60));
    lg
}

// Bounded: the table holds at most --max-tracked sockets, at most 1,024 stalled sockets are
// reported one by one (the rest counted), and a stall of another peer, in another namespace,
// is still tracked and reported while the table is full of the flood's. The agent keeps
// answering.
#[test]
fn a_flood_of_stalls_from_one_peer_is_bounded_and_hides_no_other_peer() {
    require_root!();
    let _s = serial();
    let _flood = flood(1_500);
    let maddr = format!("127.0.0.1:{}", free_port());
    let a = Agent::start("2s", &["--max-tracked", "1024", "--metrics-addr", &maddr]);
    let ns = NetnsPair::new();
    let server = ns.peer(&ns.a, &stream_peer(), &["server", &format!("{NS_A_ADDR}:0"), "stream"]);
    let listen = server.expect("LISTEN", Duration::from_secs(5));
    let _victim = ns.peer(&ns.b, &stream_peer(), &["client", &listen, "none"]);
    let local = field(&server.expect("ACCEPTED", Duration::from_secs(5)), "local").to_string();
    let e = poll(GRACE + Duration::from_secs(8), || a.stalled(&local)).unwrap_or_else(|| panic!("another peer's stall is hidden by the flood:\n{}", a.log()));
    assert_eq!(e["pid"], server.pid(), "{e}");
    let asked = Instant::now();
    let listed = a.query("stalled").unwrap();
    assert!(asked.elapsed() < Duration::from_secs(1), "detector stalled took {:?}", asked.elapsed());
    assert!(listed.as_array().unwrap().len() <= 1024, "{} stalled sockets listed one by one", listed.as_array().unwrap().len());
    let status = a.query("status").unwrap();
    assert!(status["sockets_tracked"].as_u64().unwrap() <= 1024, "{status}");
    let text = http_get(&maddr, "/metrics").1;
    let counted =
        metric(&text, "detector_sockets_refused_total").unwrap_or(0.0) + metric(&text, "detector_sockets_forgotten_total{why=\"evicted\"}").unwrap_or(0.0);
    assert!(counted > 0.0, "nothing counted as left out:\n{text}");
}

// Fair under the global rate limit. With one action a minute, the flood takes the first
// minute's slot; the slot that frees a minute later goes to the owner acted on least recently
// (the other server), not to the flood's next-oldest stall, which would take every slot for as
// long as the flood lasts.
#[test]
fn a_flood_on_one_owner_does_not_hold_back_another_owners_reap() {
    require_root!();
    let _s = serial();
    let _flood = flood(20);
    let port = free_port();
    let dir = Scratch::new("fair-reaps");
    let policy = dir.0.join("policy.toml");
    let destroy = "actions = [{ action = \"destroy\" }]";
    let limits = "[limits]\nper_minute = 1\ncooldown = \"0s\"\nper_owner_per_minute = 100";
    let text = toml(
        r#"
$limits
[[selector]]
name = "flood"
match = { comm = "loadgen" }
$destroy
[[selector]]
name = "other"
match = { local_port = $port }
$destroy
"#,
        &[("limits", &limits), ("destroy", &destroy), ("port", &port)],
    );
    std::fs::write(&policy, text).unwrap();
    let a = Agent::start("2s", &["--policy", &policy.display().to_string()]);
    let reaped = |selector: &str| a.log().lines().filter(|l| l.contains(&format!("\"selector\":\"{selector}\"")) && l.contains("\"result\":\"ok\"")).count();
    // The flood takes the minute's slot before the other stall begins.
    poll(GRACE + Duration::from_secs(8), || (reaped("flood") == 1).then_some(())).unwrap_or_else(|| panic!("the flood was not reaped:\n{}", a.log()));
    let other = pair_on(&format!("127.0.0.1:{port}"), "stream", "none", &[]);
    let done = poll(Duration::from_secs(75), || (reaped("other") == 1).then_some(()));
    assert!(done.is_some(), "the flood's older stalls took every action:\n{}", a.log());
    assert!(reaped("flood") <= 1, "one action a minute:\n{}", a.log());
    assert!(a.log().contains(&format!("\"local\":\"{}\"", other.local)), "{}", a.log());
}
