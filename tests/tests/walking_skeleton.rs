//! End to end on the running kernel: real agent, real programs, real peer processes.
use std::time::{Duration, Instant};

use detector_tests::{Agent, Peer, field, poll, require_root};

const GRACE: Duration = Duration::from_secs(3);

/// Starts a server peer and a client peer in `mode`; returns them with the server's
/// accepted-socket line (fd, local, peer).
fn pair(mode: &str) -> (Peer, Peer, String) {
    let server = Peer::stream(&["server", "127.0.0.1:0"]);
    let addr = server.expect("LISTEN", Duration::from_secs(5));
    let client = Peer::stream(&["client", &addr, mode]);
    let accepted = server.expect("ACCEPTED", Duration::from_secs(5));
    (server, client, accepted)
}

#[test]
fn non_reading_client_is_reported_with_owner_and_forgotten_on_close() {
    require_root!();
    non_reading_client_reported(&[]);
}

/// The same through the classic tracepoint and the hash map, the fallback for kernels whose BTF
/// programs cannot load.
#[test]
fn non_reading_client_is_reported_through_the_fallback_hook() {
    require_root!();
    non_reading_client_reported(&["--send-hook", "sock-send-length"]);
}

fn non_reading_client_reported(agent_args: &[&str]) {
    let agent = Agent::start("3s", agent_args);
    let (mut server, client, accepted) = pair("none");
    let t0 = Instant::now();
    let local = field(&accepted, "local").to_string();
    let fd: i64 = field(&accepted, "fd").parse().unwrap();

    let entry = poll(GRACE + Duration::from_secs(2), || agent.stalled(&local))
        .unwrap_or_else(|| panic!("server socket {local} not reported within grace + 2 s\ntracked: {:?}\n{}", agent.tracked(&local), agent.log()));
    eprintln!("reported {:.2} s after the connection opened: {entry}", t0.elapsed().as_secs_f64());
    assert_eq!(entry["pid"], server.pid(), "{entry}");
    assert_eq!(entry["comm"], "stream-peer", "{entry}");
    assert_eq!(entry["fd"], fd, "{entry}");
    assert_eq!(entry["reason"], "peer_not_reading", "{entry}");
    assert_eq!(entry["state"], "ESTABLISHED", "{entry}");
    assert_eq!(entry["remote"], field(&accepted, "peer"), "{entry}");
    assert!(entry["queued_bytes"].as_u64().unwrap() > 0, "{entry}");
    assert!(entry["stalled_for_ms"].as_u64().unwrap() >= GRACE.as_millis() as u64, "{entry}");

    // The client dies with unread data: its kernel resets the connection, the server's send
    // fails, the server exits, the socket closes, and the agent forgets it.
    client.signal(libc::SIGKILL);
    server.expect("SEND_ERROR", Duration::from_secs(5));
    assert!(server.wait_exit(Duration::from_secs(5)), "server did not exit after the reset");
    let gone = poll(Duration::from_secs(3), || (agent.stalled(&local).is_none() && agent.tracked(&local).is_none()).then_some(()));
    assert!(gone.is_some(), "closed socket {local} still listed:\n{}", agent.log());
}

#[test]
fn reading_client_is_tracked_but_never_reported() {
    require_root!();
    let agent = Agent::start("3s", &[]);
    let (_server, _client, accepted) = pair("read");
    let local = field(&accepted, "local").to_string();

    // It must be tracked (else "never reported" proves nothing) and moving.
    let tracked = poll(Duration::from_secs(3), || agent.tracked(&local).filter(|t| !t["bytes_acked"].is_null()))
        .unwrap_or_else(|| panic!("server socket {local} never tracked:\n{}", agent.log()));
    let acked0 = tracked["bytes_acked"].as_u64().unwrap();
    let until = Instant::now() + GRACE * 2 + Duration::from_secs(1);
    while Instant::now() < until {
        if let Some(e) = agent.stalled(&local) {
            panic!("a healthy reader was reported stalled: {e}\n{}", agent.log());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    // A fast reader can empty the queue at the instant of a walk: the socket then leaves the
    // table as idle and comes back with the next bytes waiting.
    let acked1 = poll(Duration::from_secs(3), || agent.tracked(&local)).expect("tracked again")["bytes_acked"].as_u64().unwrap();
    assert!(acked1 > acked0, "the healthy stream did not progress ({acked0} -> {acked1})");
}

/// A send that wedged before the agent started fires no hook again; the start-up scan must
/// still find it, and attribute it through /proc (there is no send-time owner).
#[test]
fn socket_wedged_before_the_agent_started_is_found() {
    require_root!();
    let (server, _client, accepted) = pair("none");
    let local = field(&accepted, "local").to_string();
    let fd: i64 = field(&accepted, "fd").parse().unwrap();
    // Let the window close and the server block in send.
    std::thread::sleep(Duration::from_secs(1));
    let agent = Agent::start("3s", &[]);
    let started = Instant::now();
    let entry = poll(GRACE + Duration::from_secs(2), || agent.stalled(&local))
        .unwrap_or_else(|| panic!("pre-existing wedged socket {local} not found:\n{}", agent.log()));
    eprintln!("pre-existing stall reported {:.2} s after the agent started", started.elapsed().as_secs_f64());
    assert_eq!(entry["pid"], server.pid(), "{entry}");
    assert_eq!(entry["fd"], fd, "{entry}");
    assert_eq!(entry["reason"], "peer_not_reading", "{entry}");
    assert_eq!(entry["sender_pid"], 0, "no send was seen: {entry}");
}
