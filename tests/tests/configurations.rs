//! What a configuration must keep beyond the scenario matrix (which runs with each one this
//! kernel runs): here, how the storage-diag configuration, where nothing walks socket storage,
//! hears again of a socket it forgot.
use std::time::{Duration, Instant};

use detector_tests::{Agent, Peer, field, kernel_runs, patient, poll, refused, require_root};

// Where sock_diag samples socket storage, the agent forgets a tracked socket that went idle
// (else every socket that once filled its buffer would be sampled until it closes), and the
// kernel side cannot be told so. The agent moves its epoch on instead, and a send that finds
// bytes waiting announces its socket once per epoch. So a connection that filled its buffer,
// drained, was forgotten, and wedges at its next burst is announced by that burst's own send
// and reported within grace, with its sender: not found later by a reconcile (a dump's find
// has no sender).
#[test]
fn storage_diag_forgets_an_idle_socket_and_hears_of_it_again_when_it_wedges() {
    require_root!();
    if !kernel_runs("storage-diag") {
        return refused("configuration storage-diag (detector check did not load it): its epochs are not proven here");
    }
    let agent = Agent::start("2s", &["--configuration", "storage-diag"]);
    // 4 MiB bursts 12 s apart: the first fills the send buffer while the client is late (the
    // socket is tracked), then drains; the client is frozen before the second.
    let gap = patient(Duration::from_secs(12));
    let server = Peer::stream(&["server", "127.0.0.1:0", &format!("bursts:4194304:{}", gap.as_millis())]);
    let addr = server.expect("LISTEN", Duration::from_secs(5));
    let client = Peer::stream(&["client", &addr, "late:1000"]);
    let local = field(&server.expect("BURST 1", Duration::from_secs(5)), "local").to_string();
    let burst1 = Instant::now();
    let first = poll(Duration::from_secs(3), || agent.tracked(&local)).unwrap_or_else(|| panic!("the first burst was not tracked:\n{}", agent.log()));
    assert_eq!(first["sender_pid"], server.pid(), "{first}");
    // Drained and idle: forgotten within an epoch (5 s) and a pass, before the next burst.
    let forgotten = poll(gap.saturating_sub(Duration::from_secs(2)), || agent.tracked(&local).is_none().then_some(()));
    assert!(forgotten.is_some(), "an idle socket stayed tracked {:?} after its burst:\n{}", burst1.elapsed(), agent.log());
    assert!(agent.stalled(&local).is_none(), "a drained socket was reported");
    client.signal(libc::SIGSTOP);
    server.expect("BURST 2", gap + Duration::from_secs(5));
    let burst2 = Instant::now();
    let stalled = poll(Duration::from_secs(2) + Duration::from_secs(3), || agent.stalled(&local))
        .unwrap_or_else(|| panic!("the wedged second burst was not reported {:?} after it began:\n{}", burst2.elapsed(), agent.log()));
    let row = agent.tracked(&local).expect("a reported socket is tracked");
    assert_eq!(row["sender_pid"], server.pid(), "found again by a dump, not announced by its send: {row}");
    assert_eq!(stalled["reason"], "peer_not_reading", "{stalled}");
    client.signal(libc::SIGCONT);
}
