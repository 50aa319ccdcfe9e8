//! What every send hook must keep on every kernel, beyond the matrix: run with the hook
//! `DETECTOR_TEST_SEND_HOOK` forces (`cargo xtask test` runs it per hook here, `cargo xtask
//! vmtest` per hook on Debian's 6.1 and 6.12 kernels, where fentry and kprobe run).
use std::time::Duration;

use detector_tests::{Agent, AgentBuilder, NS_A_ADDR, NetnsPair, Peer, free_port, http_get, metric, poll, require_root, stream_peer};

const ROUNDS: usize = 10;
const CONNS: usize = 100;
/// Connections that time out (retransmissions to a peer cut off run out).
const TIMED_OUT: usize = 20;

// Sends on sockets that are already closed must not start tracking them: with the hash map
// (classic tracepoint, kprobe) nothing would ever remove such an entry (its close event has
// passed), so the map would fill with dead entries. Two ways a socket is closed under a sender
// that keeps sending (`stream-peer`'s stream mode sends once more after an error):
// - 1,000 connections reset by their peer (the reset also empties the send queue);
// - 20 connections whose retransmissions to a cut-off peer run out (`tcp_retries2` = 1 in the
//   server's namespace): TCP_CLOSE with the send queue still full, the case the state guard of
//   every send hook exists for.
// Afterwards none of them is tracked; with the hash map (socket storage dies with its socket),
// the map holds nothing the agent does not track, and every entry left through its close event,
// none was found gone later.
#[test]
fn closed_sockets_that_are_sent_on_leave_nothing_tracked() {
    require_root!();
    let addr = format!("127.0.0.1:{}", free_port());
    // Every batch of sock_diag lookups waits 150 ms first: a reset landing between the sweep's
    // drain of the events and its lookup (a window of microseconds on a fast host, wide in a
    // slow guest) is then likely in every round, and must still end as `closed`.
    let agent = AgentBuilder::new("3s").args(&["--metrics-addr", &addr]).env("DETECTOR_FAULT", "lookup-delay:150").start();
    let hash_map = agent.query("status").expect("status")["storage"] == "hash map";
    let counted = |series: &str| metric(&http_get(&addr, "/metrics").1, series).unwrap_or(0.0);
    let forgotten = |why: &str| counted(&format!("detector_sockets_forgotten_total{{why=\"{why}\"}}"));
    let skipped = || counted("detector_kernel_program_misses_total{program=\"inet_sock_set_state\"}");
    let (gone_before, skipped_before) = (forgotten("gone"), skipped());
    let peer = stream_peer();
    let mut ports = vec![];
    for _ in 0..ROUNDS {
        let server = Peer::spawn(&peer, &["server", "127.0.0.1:0", "stream", &CONNS.to_string()]);
        let listen = server.expect("LISTEN", Duration::from_secs(5));
        ports.push(format!(":{}", listen.rsplit(':').next().unwrap()));
        let _client = Peer::spawn(&peer, &["client", &listen, "rst:200", &CONNS.to_string()]);
        expect_errors(&server, CONNS, &agent);
    }
    let ns = NetnsPair::new();
    ns.exec_ok(&ns.a, &["sysctl", "-q", "-w", "net.ipv4.tcp_retries2=1"]);
    let server = ns.peer(&ns.a, &peer, &["server", &format!("{NS_A_ADDR}:0"), "stream", &TIMED_OUT.to_string()]);
    let listen = server.expect("LISTEN", Duration::from_secs(5));
    ports.push(format!(":{}", listen.rsplit(':').next().unwrap()));
    let _client = ns.peer(&ns.b, &peer, &["client", &listen, "read", &TIMED_OUT.to_string()]);
    for _ in 0..TIMED_OUT {
        server.expect("ACCEPTED", Duration::from_secs(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    ns.cut_b();
    expect_errors(&server, TIMED_OUT, &agent);

    let ours = || {
        let all = agent.query("sockets").expect("sockets");
        all.as_array().unwrap().iter().filter(|t| ports.iter().any(|p| t["local"].as_str().unwrap_or("").ends_with(p.as_str()))).count()
    };
    let left = poll(Duration::from_secs(5), || (ours() == 0).then_some(()));
    assert!(left.is_some(), "{} closed sockets still tracked\n{}", ours(), agent.log());
    if !hash_map {
        // Socket storage is freed with its socket: the kernel keeps no entry that could outlive
        // it, and the agent has none to count (a count here would be a hash map's).
        let s = agent.query("status").expect("status");
        assert!(s["kernel_map_entries"].is_null(), "a socket-storage agent counts map entries: {s}");
        let left = forgotten("closed") + forgotten("idle");
        assert!(left > 0.0, "no socket was ever tracked: the test proves nothing\n{}", agent.log());
        return;
    }
    let clean = poll(Duration::from_secs(5), || {
        let s = agent.query("status").expect("status");
        let entries = s["kernel_map_entries"].as_u64().unwrap_or_else(|| panic!("a hash-map agent counts its map's entries: {s}"));
        (entries <= s["sockets_tracked"].as_u64().unwrap_or(0)).then_some(())
    });
    assert!(clean.is_some(), "dead entries in the kernel map: {}", agent.query("status").unwrap());
    assert!(forgotten("closed") > 0.0, "no socket was ever tracked: the test proves nothing\n{}", agent.log());
    // A close program run the kernel skipped (a close that interrupted a run of the same
    // raw-tracepoint program on that CPU) is mostly made good by the owner's next send, which
    // finds the socket closed; what is left ends as `gone` at the next sample. Only such a
    // close may, counted over the same window: the kernel counts skipped runs (6.7+; 0
    // before, where none may be left) of any state change, so this is a bound, not an
    // equality.
    let gone = forgotten("gone") - gone_before;
    let skipped = skipped() - skipped_before;
    assert!(gone <= skipped, "{gone} entries outlived their close event ({skipped} close program runs skipped)\n{}", agent.log());
}

/// Waits for `n` failed sends (`SEND_ERROR`) from `server`.
fn expect_errors(server: &Peer, n: usize, agent: &Agent) {
    for i in 0..n {
        if server.expect_where("SEND_ERROR", Duration::from_secs(30), |_| true).is_none() {
            panic!("connection {i} of {n} never failed a send\n{}", agent.log());
        }
    }
}
