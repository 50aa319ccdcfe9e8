//! Reaping that can never hurt a healthy process, on a real kernel: the holes an operator
//! would look for (signal numbering across libcs, unknown owners, an owner that changed, the
//! owner's own namespaces), the faults the agent must survive (killed mid-ladder, a namespace
//! deleted, a full map, a panicking sweep, a stdout nobody reads), and hostile input (process
//! names, the API socket).
use std::{
    io::{Read, Write},
    time::{Duration, Instant},
};

use detector_tests::{
    Agent, AgentBuilder, NS_A_ADDR, NetnsPair, Peer, Scratch, destroy_on_port, detector_cmd, field, free_port, http_get, metric, pair, pair_on, policy_file,
    poll, require_root, serial, stream_peer, toml, wedged_server,
};

const GRACE: Duration = Duration::from_secs(2);

// These agents act on sockets: one at a time, each scoped to its own server by a policy.

/// A policy file with `body`, and the `--policy` arguments for it.
fn policy(dir: &Scratch, body: &str) -> Vec<String> {
    vec!["--policy".into(), policy_file(dir, body)]
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A two-stage ladder on local port `port`: an RPC to `endpoint`, then a destroy 4 s later.
fn rpc_then_destroy(port: &str, endpoint: &str) -> String {
    toml(
        r#"
[[selector]]
name = "t"
match = { local_port = $port, reason = "peer_not_reading" }
actions = [
  { action = "rpc", url = "http://$endpoint/reap" },
  { action = "destroy", after = "4s" },
]
"#,
        &[("port", &port), ("endpoint", &endpoint)],
    )
}

/// A wedged-server with one healthy reader and one client that never reads; returns the
/// server, its listen address, the dead seat's fd and the healthy seat's fd.
fn seated(extra: &[&str]) -> (Peer, String, String, String, Vec<Peer>) {
    let mut a = vec!["127.0.0.1:0", "2"];
    a.extend_from_slice(extra);
    let server = Peer::wedged(&a);
    if extra.contains(&"--rpc") {
        server.expect("RPC", Duration::from_secs(5));
    }
    let addr = server.expect("LISTEN", Duration::from_secs(5));
    let healthy = Peer::spawn(&stream_peer(), &["client", &addr, "read"]);
    let healthy_fd = field(&server.expect("SEAT taken", Duration::from_secs(5)), "fd").to_string();
    let dead = Peer::spawn(&stream_peer(), &["client", &addr, "none"]);
    let dead_fd = field(&server.expect("SEAT taken", Duration::from_secs(5)), "fd").to_string();
    (server, addr, dead_fd, healthy_fd, vec![healthy, dead])
}

// The shipped image's agent is static musl (SIGRTMIN 35); the servers it signals are glibc
// (SIGRTMIN 34). `SIGRTMIN+1` must mean glibc's 35 to them: the glibc server drops only the
// dead session, and lives.
#[test]
fn the_musl_agent_sends_the_glibc_real_time_signal() {
    require_root!();
    let Some(musl) = std::env::var_os("DETECTOR_MUSL_BIN").map(std::path::PathBuf::from) else {
        assert!(std::env::var_os("DETECTOR_REQUIRE_PRIVILEGED").is_none(), "cargo xtask test builds the musl agent and sets DETECTOR_MUSL_BIN");
        eprintln!("skipped: no DETECTOR_MUSL_BIN");
        return;
    };
    let _s = serial();
    let (mut server, _addr, dead_fd, healthy_fd, _clients) = seated(&[]);
    let a = AgentBuilder::new("2s").bin(musl).args(&["--action", "signal", "--signal", "SIGRTMIN+1"]).start();
    let freed = server.expect_where("SEAT freed", GRACE + Duration::from_secs(4), |l| field(l, "fd") == dead_fd);
    assert!(freed.is_some(), "the dead session was not dropped:\n{}", a.log());
    assert!(server.saw("REAP via=signal", |l| field(l, "fd") == dead_fd), "not through the handler");
    assert!(!server.wait_exit(Duration::from_millis(500)), "the server died: the wrong signal number was sent\n{}", a.log());
    assert!(!server.saw("SEAT freed", |l| field(l, "fd") == healthy_fd), "the healthy session was touched");
}

// `--action destroy` on a socket whose fd is in flight (SCM_RIGHTS, held by no process): never
// destroyed, audited owner_unknown; a selector that allows unknown owners destroys it.
#[test]
fn an_unknown_owner_is_acted_on_only_where_allowed() {
    require_root!();
    let _s = serial();
    let dir = Scratch::new("unknown");
    let selector = |port: &str, allow: bool| {
        policy(
            &dir,
            &toml(
                r#"
[[selector]]
name = "t"
match = { local_port = $port }
allow_unknown_owner = $allow
actions = [{ action = "destroy" }]
"#,
                &[("port", &port), ("allow", &allow)],
            ),
        )
    };
    // The agent runs first, so its send hook sees the socket's file before it goes in flight
    // (a socket first found by a dump, held by nobody, may be the kernel's own: never acted on).
    let port = free_port().to_string();
    let a = Agent::start("2s", &args(&selector(&port, false)));
    let p = pair_on(&format!("127.0.0.1:{port}"), "fill-inflight", "none", &[]);
    p.server.expect("INFLIGHT", Duration::from_secs(5));
    let e = poll(GRACE + Duration::from_secs(3), || a.stalled(&p.local)).unwrap_or_else(|| panic!("not reported:\n{}", a.log()));
    assert_eq!(e["owner_known"], false, "{e}");
    assert!(a.logged(&["\"why\":\"owner_unknown\""], Duration::from_secs(4)), "{}", a.log());
    std::thread::sleep(Duration::from_secs(1));
    assert!(a.stalled(&p.local).is_some(), "destroyed without an owner:\n{}", a.log());
    drop((a, p));
    let port = free_port().to_string();
    let a = Agent::start("2s", &args(&selector(&port, true)));
    let p = pair_on(&format!("127.0.0.1:{port}"), "fill-inflight", "none", &[]);
    p.server.expect("INFLIGHT", Duration::from_secs(5));
    assert!(a.logged(&["\"action\":\"destroy\"", "\"result\":\"ok\""], Duration::from_secs(4)), "not destroyed where allowed:\n{}", a.log());
    let gone = poll(Duration::from_secs(3), || a.stalled(&p.local).is_none().then_some(()));
    assert!(gone.is_some(), "still listed after its destroy:\n{}", a.log());
}

// The owner executes another image after detection (same pid, same start time, the socket fd
// kept): nothing is sent to the new image (it would die of the signal).
#[test]
fn nothing_is_sent_to_an_owner_that_executed_another_image() {
    require_root!();
    let _s = serial();
    let dir = Scratch::new("exec");
    // Filled at once; executes `stream-peer hold` 3 s later, after detection (grace 2 s) and
    // before the signal (grace + 2 s).
    let mut p = pair("fill-exec:3000", "none");
    let port = p.local.rsplit(':').next().unwrap().to_string();
    let a = Agent::start(
        "2s",
        &args(&policy(
            &dir,
            &toml(
                r#"
[[selector]]
name = "t"
match = { local_port = $port }
actions = [{ action = "signal", signal = "SIGUSR2", after = "2s" }]
"#,
                &[("port", &port)],
            ),
        )),
    );
    poll(GRACE + Duration::from_secs(2), || a.stalled(&p.local)).unwrap_or_else(|| panic!("not reported:\n{}", a.log()));
    p.server.expect("HOLDING", Duration::from_secs(5));
    assert!(a.logged(&["\"why\":\"owner_changed\""], Duration::from_secs(4)), "no owner_changed skip:\n{}", a.log());
    assert!(!p.server.wait_exit(Duration::from_secs(1)), "the new image got the signal\n{}", a.log());
}

// In a DaemonSet the agent has its own network namespace: `http://127.0.0.1:PORT` must reach
// the owner's loopback, in the owner's namespace, not the agent's.
#[test]
fn rpc_reaches_the_owner_in_its_own_network_namespace() {
    require_root!();
    let _s = serial();
    let net = NetnsPair::new();
    let dir = Scratch::new("rpcns");
    let server = net.peer(&net.a, &wedged_server(), &[&format!("{NS_A_ADDR}:0"), "2", "--rpc", "127.0.0.1:0"]);
    let rpc = server.expect("RPC", Duration::from_secs(5));
    let addr = server.expect("LISTEN", Duration::from_secs(5));
    let _healthy = net.peer(&net.b, &stream_peer(), &["client", &addr, "read"]);
    let healthy_fd = field(&server.expect("SEAT taken", Duration::from_secs(5)), "fd").to_string();
    let _dead = net.peer(&net.b, &stream_peer(), &["client", &addr, "none"]);
    let dead_fd = field(&server.expect("SEAT taken", Duration::from_secs(5)), "fd").to_string();
    let port = addr.rsplit(':').next().unwrap();
    // Nothing listens on that port in the agent's namespace.
    let a = Agent::start(
        "2s",
        &args(&policy(
            &dir,
            &toml(
                r#"
[[selector]]
name = "t"
match = { local_port = $port }
actions = [{ action = "rpc", url = "http://$rpc/reap" }]
"#,
                &[("port", &port), ("rpc", &rpc)],
            ),
        )),
    );
    let freed = server.expect_where("SEAT freed", GRACE + Duration::from_secs(4), |l| field(l, "fd") == dead_fd);
    assert!(freed.is_some(), "the RPC did not reach the owner:\n{}", a.log());
    assert!(server.saw("REAP via=rpc", |l| field(l, "fd") == dead_fd));
    assert!(!server.saw("SEAT freed", |l| field(l, "fd") == healthy_fd));
}

// A unix-socket endpoint that exists only in the owner's mount namespace.
#[test]
fn rpc_finds_a_unix_socket_in_the_owners_mount_namespace() {
    require_root!();
    let _s = serial();
    let dir = Scratch::new("rpcmnt");
    let private = dir.0.join("private");
    std::fs::create_dir_all(&private).unwrap();
    let sock = private.join("reap.sock").display().to_string();
    // The server's own mount namespace, with a tmpfs over `private`: the agent's view of that
    // directory stays empty.
    let script = format!("mount -t tmpfs tmpfs {} && exec {} 127.0.0.1:0 2 --rpc-unix {sock}", private.display(), wedged_server());
    let server = Peer::spawn("unshare", &["--mount", "--propagation", "private", "sh", "-c", &script]);
    server.expect("RPC_UNIX", Duration::from_secs(5));
    let addr = server.expect("LISTEN", Duration::from_secs(5));
    assert!(!std::path::Path::new(&sock).exists(), "the socket must not be visible to the agent");
    let _healthy = Peer::spawn(&stream_peer(), &["client", &addr, "read"]);
    server.expect("SEAT taken", Duration::from_secs(5));
    let _dead = Peer::spawn(&stream_peer(), &["client", &addr, "none"]);
    let dead_fd = field(&server.expect("SEAT taken", Duration::from_secs(5)), "fd").to_string();
    let port = addr.rsplit(':').next().unwrap();
    let a = Agent::start(
        "2s",
        &args(&policy(
            &dir,
            &toml(
                r#"
[[selector]]
name = "t"
match = { local_port = $port }
actions = [{ action = "rpc", unix = "$sock", path = "/reap" }]
"#,
                &[("port", &port), ("sock", &sock)],
            ),
        )),
    );
    let freed = server.expect_where("SEAT freed", GRACE + Duration::from_secs(4), |l| field(l, "fd") == dead_fd);
    assert!(freed.is_some(), "the RPC did not reach the owner's socket:\n{}", a.log());
}

/// A stand-in RPC endpoint that answers 200 and counts the requests it got.
fn counting_endpoint() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    flaky_endpoint(0)
}

/// As `counting_endpoint`, answering 503 to its first `failing` requests.
fn flaky_endpoint(failing: usize) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = n.clone();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let _ = s.read(&mut buf);
            let n = c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let status = if n < failing { "503 Service Unavailable" } else { "200 OK" };
            let _ = s.write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes());
        }
    });
    (addr, n)
}

// SIGKILLed in the middle of a ladder and restarted (a rollout): the stage that ran does not run
// again, the stall is listed at once, and the ladder goes on to its next stage on time.
#[test]
fn a_ladder_survives_an_agent_killed_mid_way() {
    require_root!();
    let _s = serial();
    let dir = Scratch::new("midladder");
    let state = dir.0.join("state.json").display().to_string();
    let (endpoint, calls) = counting_endpoint();
    let (server, addr, dead_fd, _h, _clients) = seated(&[]);
    let port = addr.rsplit(':').next().unwrap();
    let mut args_v = policy(&dir, &rpc_then_destroy(port, &endpoint));
    args_v.extend(["--state-file".into(), state]);
    let mut first = Agent::start("2s", &args(&args_v));
    poll(GRACE + Duration::from_secs(3), || (calls.load(std::sync::atomic::Ordering::SeqCst) == 1).then_some(()))
        .unwrap_or_else(|| panic!("rpc never ran:\n{}", first.log()));
    first.kill_hard();
    let second = Agent::start("2s", &args(&args_v));
    assert!(second.query("stalled").unwrap().as_array().unwrap().iter().any(|e| e["local"] == addr), "not listed at once after the restart:\n{}", second.log());
    let freed = server.expect_where("SEAT freed", Duration::from_secs(8), |l| field(l, "fd") == dead_fd);
    assert!(freed.is_some(), "the ladder did not go on to destroy:\n{}", second.log());
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1, "the rpc stage ran twice:\n{}", second.log());
}

// The namespace of a tracked stall is deleted (its processes gone): the agent forgets the
// socket and goes on detecting elsewhere.
#[test]
fn a_deleted_namespace_does_not_stop_detection() {
    require_root!();
    let a = Agent::start("2s", &[]);
    let net = NetnsPair::new();
    let server = net.peer(&net.a, &stream_peer(), &["server", &format!("{NS_A_ADDR}:0"), "stream"]);
    let addr = server.expect("LISTEN", Duration::from_secs(5));
    let client = net.peer(&net.b, &stream_peer(), &["client", &addr, "none"]);
    let local = field(&server.expect("ACCEPTED", Duration::from_secs(5)), "local").to_string();
    poll(GRACE + Duration::from_secs(3), || a.stalled(&local)).unwrap_or_else(|| panic!("not reported:\n{}", a.log()));
    drop((server, client, net));
    let gone = poll(Duration::from_secs(5), || a.stalled(&local).is_none().then_some(()));
    assert!(gone.is_some(), "a socket of a deleted namespace is still listed:\n{}", a.log());
    let p = pair("stream", "none");
    poll(GRACE + Duration::from_secs(3), || a.stalled(&p.local)).unwrap_or_else(|| panic!("detection stopped:\n{}", a.log()));
}

// sock_diag answers that fail mid-pass (a netlink error, injected) never read as "no
// progress": nothing is judged on samples it did not get, the errors are counted, the agent
// keeps answering, and once the answers come back the dead peer is found.
#[test]
fn failing_netlink_samples_never_read_as_no_progress() {
    require_root!();
    let dir = Scratch::new("fault");
    let fault = dir.0.join("failing");
    std::fs::write(&fault, "").unwrap();
    let maddr = format!("127.0.0.1:{}", free_port());
    // The hash-map hook: its sockets are sampled through sock_diag.
    let a = AgentBuilder::new("1s")
        .args(&["--send-hook", "sock-send-length", "--metrics-addr", &maddr])
        .env("DETECTOR_FAULT", &format!("diag-error:{}", fault.display()))
        .start();
    let (dead, healthy) = (pair("stream", "none"), pair("stream", "read"));
    poll(Duration::from_secs(5), || a.tracked(&dead.local)).unwrap_or_else(|| panic!("not tracked:\n{}", a.log()));
    std::thread::sleep(Duration::from_secs(4));
    assert!(a.stalled(&dead.local).is_none() && a.stalled(&healthy.local).is_none(), "judged without samples:\n{}", a.log());
    let errors = metric(&http_get(&maddr, "/metrics").1, "detector_sample_errors_total").unwrap_or(0.0);
    assert!(errors > 0.0, "failed samples not counted");
    std::fs::remove_file(&fault).unwrap();
    poll(Duration::from_secs(6), || a.stalled(&dead.local)).unwrap_or_else(|| panic!("not found once answers came back:\n{}", a.log()));
    assert!(a.stalled(&healthy.local).is_none());
}

// A kernel map far too small (fallback hooks, 64 entries, 300 sockets filling their buffers):
// counted, the agent keeps working, and once they are gone every entry is reclaimed.
#[test]
fn a_full_kernel_map_is_counted_and_reclaimed() {
    require_root!();
    let maddr = format!("127.0.0.1:{}", free_port());
    let a = Agent::start("2s", &["--send-hook", "sock-send-length", "--max-sockets", "64", "--metrics-addr", &maddr]);
    let n = "300";
    let server = Peer::spawn(&stream_peer(), &["server", "127.0.0.1:0", "fill-idle", n]);
    let listen = server.expect("LISTEN", Duration::from_secs(5));
    let client = Peer::spawn(&stream_peer(), &["client", &listen, "none", n]);
    let full = poll(Duration::from_secs(20), || {
        let (_, text) = http_get(&maddr, "/metrics");
        (metric(&text, "detector_kernel_map_full_total").unwrap_or(0.0) > 0.0).then_some(())
    });
    assert!(full.is_some(), "the full map was not counted:\n{}", a.log());
    // Still working: a stall of another server is found (by the reconcile if not by the hook).
    let p = pair("stream", "none");
    poll(GRACE + Duration::from_secs(5), || a.stalled(&p.local)).unwrap_or_else(|| panic!("detection stopped with a full map:\n{}", a.log()));
    drop((server, client, p));
    let reclaimed = poll(Duration::from_secs(10), || (a.query("status").ok()?["kernel_map_entries"] == 0).then_some(()));
    assert!(reclaimed.is_some(), "dead entries left: {:?}\n{}", a.query("status").ok().map(|s| s["kernel_map_entries"].clone()), a.log());
}

// A sweep thread that panics takes the agent down (non-zero), instead of leaving it serving a
// frozen report.
#[test]
fn a_panicking_sweep_stops_the_agent_with_an_error() {
    require_root!();
    let mut a = AgentBuilder::new("2s").env("DETECTOR_FAULT", "sweep-panic").no_wait().start();
    let status = poll(Duration::from_secs(15), || a.exited()).unwrap_or_else(|| panic!("still running after its sweep panicked:\n{}", a.log()));
    assert!(!status.success(), "exited with {status}");
    assert!(a.log().contains("sweep thread panicked"), "{}", a.log());
}

// stdout is a pipe nobody reads: once it is full, detection and the API go on, and the audit
// lines that no longer fit are counted.
#[test]
fn a_blocked_stdout_stalls_nothing_and_drops_are_counted() {
    require_root!();
    let dir = Scratch::new("stdout");
    let maddr = format!("127.0.0.1:{}", free_port());
    let n = "150";
    let server = Peer::spawn(&stream_peer(), &["server", "127.0.0.1:0", "fill-idle", n]);
    let listen = server.expect("LISTEN", Duration::from_secs(5));
    let port = listen.rsplit(':').next().unwrap();
    // Dry run: an audit line per socket and stage (one stage per socket and pass), nothing
    // done. 40 stages for 150 sockets: 6,000 lines, more than the agent queues (4,096) and the
    // pipe holds (64 KiB).
    let stages = vec!["{ action = \"report\" }"; 40].join(", ");
    let p = policy(
        &dir,
        &toml(
            r#"
dry_run = true
[limits]
per_minute = 100000
per_owner_per_minute = 100000
cooldown = "0s"
[[selector]]
name = "t"
match = { local_port = $port }
actions = [$stages]
"#,
            &[("port", &port), ("stages", &stages)],
        ),
    );
    let mut all = args(&p);
    all.extend(["--metrics-addr", &maddr]);
    let a = AgentBuilder::new("2s").args(&all).stdout_unread().start();
    let _client = Peer::spawn(&stream_peer(), &["client", &listen, "none", n]);
    let dropped = poll(Duration::from_secs(30), || {
        let (_, text) = http_get(&maddr, "/metrics");
        (metric(&text, "detector_audit_lines_dropped_total").unwrap_or(0.0) > 0.0).then_some(())
    });
    assert!(dropped.is_some(), "no audit line was dropped: is stdout really full?\n{}", a.log());
    let t0 = Instant::now();
    let q = pair("stream", "none");
    poll(GRACE + Duration::from_secs(4), || a.stalled(&q.local)).unwrap_or_else(|| panic!("detection stopped behind a full stdout:\n{}", a.log()));
    assert!(t0.elapsed() < GRACE + Duration::from_secs(4));
}

// A process names itself with control characters: tables and log lines print them escaped.
#[test]
fn hostile_process_names_print_escaped() {
    require_root!();
    let a = Agent::start("2s", &[]);
    // `env` sets the name-changing variable and executes the peer (same pid).
    let sp = stream_peer();
    let server = Peer::spawn("env", &["STREAM_PEER_COMM=ev\x1b[2Jil\x07", &sp, "server", "127.0.0.1:0", "stream"]);
    let addr = server.expect("LISTEN", Duration::from_secs(5));
    let _client = Peer::spawn(&stream_peer(), &["client", &addr, "none"]);
    let port = addr.rsplit(':').next().unwrap();
    let e = poll(GRACE + Duration::from_secs(3), || {
        a.query("stalled").ok()?.as_array()?.iter().find(|e| e["local"].as_str().is_some_and(|l| l.ends_with(&format!(":{port}")))).cloned()
    })
    .unwrap_or_else(|| panic!("not reported:\n{}", a.log()));
    assert_eq!(e["comm"], "ev\x1b[2Jil\x07", "JSON keeps the name as it is (escaped by JSON)");
    let table = detector_cmd().args(["stalled", "--api-socket"]).arg(&a.api).output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(!table.contains('\x1b') && !table.contains('\x07') && table.contains("ev\\x1b[2Jil\\x07"), "{table:?}");
    assert!(!a.log().contains('\x1b'), "a raw escape reached the log:\n{:?}", a.log());
}

// The API socket: root-only from its creation; a file in its place is refused and kept; an
// oversized or malformed request gets an error without harming other clients.
#[test]
fn the_api_socket_refuses_what_it_should() {
    require_root!();
    use std::os::unix::fs::PermissionsExt as _;
    let a = Agent::start("2s", &[]);
    let mode = std::fs::metadata(&a.api).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "API socket mode {mode:o}");
    // Oversized and malformed requests.
    for req in [vec![b'x'; 1 << 20], b"{\"cmd\":\"nope\"}\n".to_vec(), b"\n".to_vec()] {
        let mut s = std::os::unix::net::UnixStream::connect(&a.api).unwrap();
        let _ = s.write_all(&req);
        let _ = s.write_all(b"\n");
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.contains("\"ok\":false"), "{answer:.200}");
    }
    assert!(a.query("status").is_ok(), "a normal client was harmed");
    // A regular file where the socket goes: refused, and left as it was.
    let dir = Scratch::new("apifile");
    let path = dir.0.join("api.sock");
    std::fs::write(&path, "precious").unwrap();
    let mut run = AgentBuilder::new("2s").args(&["--api-socket", &path.display().to_string()]).no_wait().start();
    let status = poll(Duration::from_secs(15), || run.exited()).unwrap_or_else(|| panic!("the agent took the path and ran:\n{}", run.log()));
    assert!(!status.success());
    assert!(run.log().contains("is not a socket"), "{}", run.log());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
}

// A client that sends its request, half-closes (shutdown(SHUT_WR), as `nc -N`, batch tools and
// proxies passing a half-close do) and waits longer than grace for its answer: the server's
// socket sits in CLOSE_WAIT with nothing queued while its backend works. A selector that acts
// on every stalled socket of this server (naming no reason) never tears it down: once it
// outlasts `--close-wait-grace` it is listed as a leak suspect (`close_wait_idle`), not acted
// on, and the answer arrives whole.
#[test]
fn a_half_closed_request_waiting_for_its_answer_is_never_torn_down() {
    require_root!();
    let _s = serial();
    let peer = stream_peer();
    let server = Peer::spawn(&peer, &["server", "127.0.0.1:0", "answer-late:7000:65536"]);
    let listen = server.expect("LISTEN", Duration::from_secs(5));
    let port = listen.rsplit(':').next().unwrap();
    let dir = Scratch::new("halfclosed-request");
    let p = policy(&dir, &destroy_on_port(port));
    let mut a = args(&p);
    a.extend(["--close-wait-grace", "4s"]);
    let agent = Agent::start("2s", &a);
    let client = Peer::spawn(&peer, &["client", &listen, "half-close:10000000"]);
    let local = field(&server.expect("ACCEPTED", Duration::from_secs(5)), "local").to_string();
    let asked = Instant::now();
    // Past the stall grace, not past the leak grace: not listed at all.
    while asked.elapsed() < Duration::from_millis(3_500) {
        assert!(agent.stalled(&local).is_none(), "a half-closed client waiting {:?} for its answer was reported:\n{}", asked.elapsed(), agent.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let e = poll(Duration::from_secs(3), || agent.stalled(&local)).unwrap_or_else(|| panic!("not listed past the leak grace:\n{}", agent.log()));
    assert_eq!((e["reason"].as_str(), e["queued_bytes"].as_u64()), (Some("close_wait_idle"), Some(0)), "{e}");
    let eof = client.expect("EOF", Duration::from_secs(10));
    assert_eq!(field(&eof, "bytes"), "65536", "the answer did not arrive whole: {eof}\n{}", agent.log());
    assert!(server.saw("ANSWERED", |_| true));
    assert!(!agent.log().contains("\"action\":\"destroy\",\"result\":\"ok\""), "destroyed:\n{}", agent.log());
}

// A ladder's stage is done only once it ran: an RPC whose endpoint fails is tried again (every
// few seconds), and the harsher stage after it waits until it ran and then its own `after`,
// never running on the ladder's clock as if the gentle one had.
#[test]
fn a_failing_rpc_is_tried_again_and_the_destroy_waits_for_it() {
    require_root!();
    let _s = serial();
    let dir = Scratch::new("failing-rpc");
    let (endpoint, calls) = flaky_endpoint(2);
    let (server, addr, dead_fd, healthy_fd, _clients) = seated(&[]);
    let port = addr.rsplit(':').next().unwrap();
    let p = policy(
        &dir,
        &toml(
            r#"
[[selector]]
name = "t"
match = { local_port = $port, reason = "peer_not_reading" }
actions = [
  { action = "rpc", url = "http://$endpoint/reap", retries = 0 },
  { action = "destroy", after = "2s" },
]
"#,
            &[("port", &port), ("endpoint", &endpoint)],
        ),
    );
    let a = Agent::start("2s", &args(&p));
    let calls_now = || calls.load(std::sync::atomic::Ordering::SeqCst);
    // Two refusals, then an answer; the seat stays taken until the answer, and 2 s past it.
    let answered =
        poll(Duration::from_secs(25), || (calls_now() >= 3).then(Instant::now)).unwrap_or_else(|| panic!("the rpc was not tried again:\n{}", a.log()));
    assert!(!server.saw("SEAT freed", |l| field(l, "fd") == dead_fd), "destroyed before the rpc ran:\n{}", a.log());
    let freed = server.expect_where("SEAT freed", Duration::from_secs(8), |l| field(l, "fd") == dead_fd);
    assert!(freed.is_some(), "the ladder did not go on to destroy:\n{}", a.log());
    assert!(answered.elapsed() >= Duration::from_millis(1_500), "destroyed {:?} after the rpc ran, not its 2 s", answered.elapsed());
    assert_eq!(calls_now(), 3, "the rpc ran again after it was answered:\n{}", a.log());
    assert!(!server.saw("SEAT freed", |l| field(l, "fd") == healthy_fd), "the healthy seat was freed");
    assert!(a.log().contains("\"action\":\"rpc\"") && a.log().contains("\"result\":\"failed\""), "{}", a.log());
}

// `--action signal` proves the owner, and now also that it catches the signal: a wedged server
// with no handler (a plain client or worker: curl, a Python or JVM process) would be ended by
// the signal's default action, with every healthy session it serves. It is skipped
// (`no_handler`, audited) and the process lives on.
#[test]
fn a_signal_is_never_sent_to_an_owner_that_does_not_catch_it() {
    require_root!();
    let _s = serial();
    let peer = stream_peer();
    // stream-peer installs no handler for SIGRTMIN+1 (35).
    let mut server = Peer::spawn(&peer, &["server", "127.0.0.1:0", "stream"]);
    let listen = server.expect("LISTEN", Duration::from_secs(5));
    let port = listen.rsplit(':').next().unwrap();
    let dir = Scratch::new("no-handler");
    let p = policy(
        &dir,
        &toml(
            r#"
[[selector]]
name = "t"
match = { local_port = $port }
actions = [{ action = "signal", signal = "SIGRTMIN+1" }]
"#,
            &[("port", &port)],
        ),
    );
    let a = Agent::start("2s", &args(&p));
    let _client = Peer::spawn(&peer, &["client", &listen, "none"]);
    assert!(a.logged(&["\"result\":\"skipped\"", "\"why\":\"no_handler\""], GRACE + Duration::from_secs(5)), "no no_handler skip:\n{}", a.log());
    std::thread::sleep(Duration::from_millis(500));
    assert!(server.exited().is_none(), "the server was ended by the signal:\n{}", a.log());
    assert!(!a.log().contains("\"action\":\"signal\",\"stage\":0,\"selector\":\"t\",\"result\":\"ok\""), "{}", a.log());
}

// A container (here a chroot in its own mount namespace) plants its RPC "socket" as an
// absolute symlink to a unix socket of the host. Resolved through /proc/<pid>/root, that
// symlink would be followed from the agent's own root, and the privileged agent would POST to
// the host's socket. The path is resolved inside the owner's root only: the RPC fails (no
// such socket there) and the host's socket never sees a connection.
#[test]
fn an_rpc_unix_path_never_leaves_the_owners_root() {
    require_root!();
    let _s = serial();
    let dir = Scratch::new("rpcroot");
    // The host's socket, which the owner must not reach.
    let host_sock = dir.0.join("host.sock");
    let host = std::os::unix::net::UnixListener::bind(&host_sock).unwrap();
    host.set_nonblocking(true).unwrap();
    // The owner's root: the system's programs and libraries bound in, its own /run with the
    // planted link, and the server binary.
    let root = dir.0.join("root");
    for d in ["usr", "run", "tmp", "srv", "proc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for (l, t) in [("lib", "usr/lib"), ("lib64", "usr/lib64"), ("bin", "usr/bin"), ("sbin", "usr/sbin")] {
        std::os::unix::fs::symlink(t, root.join(l)).unwrap();
    }
    std::os::unix::fs::symlink(&host_sock, root.join("run/reap.sock")).unwrap();
    let bin_dir = std::path::Path::new(&wedged_server()).parent().unwrap().display().to_string();
    let script = format!("mount --bind /usr {r}/usr && mount --bind {bin_dir} {r}/srv && exec chroot {r} /srv/wedged-server 127.0.0.1:0 2", r = root.display());
    let server = Peer::spawn("unshare", &["--mount", "--propagation", "private", "sh", "-c", &script]);
    let addr = server.expect("LISTEN", Duration::from_secs(5));
    let _healthy = Peer::spawn(&stream_peer(), &["client", &addr, "read"]);
    server.expect("SEAT taken", Duration::from_secs(5));
    let _dead = Peer::spawn(&stream_peer(), &["client", &addr, "none"]);
    server.expect("SEAT taken", Duration::from_secs(5));
    let port = addr.rsplit(':').next().unwrap();
    let p = policy(
        &dir,
        &toml(
            r#"
[[selector]]
name = "t"
match = { local_port = $port }
actions = [{ action = "rpc", unix = "/run/reap.sock", path = "/reap", retries = 0 }]
"#,
            &[("port", &port)],
        ),
    );
    let a = Agent::start("2s", &args(&p));
    assert!(a.logged(&["\"action\":\"rpc\"", "\"result\":\"failed\""], GRACE + Duration::from_secs(6)), "no failed rpc:\n{}", a.log());
    assert!(host.accept().is_err(), "the agent connected to the host's socket through the owner's symlink:\n{}", a.log());
}

// A walk of socket storage that skips a stalled socket (an iterator resumed after a read may
// skip entries when others are freed; here every other walk leaves it out) proves nothing: the
// socket is looked up by cookie, found, and kept, and its ladder goes on: the rpc ran once,
// the destroy after it runs on time, never stage 0 again.
#[test]
fn a_walk_that_skips_a_socket_neither_forgets_it_nor_restarts_its_ladder() {
    require_root!();
    if !detector_tests::kernel_runs("storage-walk") {
        return detector_tests::refused("configuration storage-walk (detector check did not load it): a walk that skips a socket is not proven here");
    }
    let _s = serial();
    let dir = Scratch::new("walk-skip");
    let (endpoint, calls) = counting_endpoint();
    let (server, addr, dead_fd, _h, _clients) = seated(&[]);
    let port = addr.rsplit(':').next().unwrap();
    let p = policy(&dir, &rpc_then_destroy(port, &endpoint));
    let mut a = args(&p);
    a.extend(["--configuration", "storage-walk"]);
    let agent = AgentBuilder::new("2s").args(&a).env("DETECTOR_FAULT", &format!("walk-skip:{port}")).start();
    let freed = server.expect_where("SEAT freed", Duration::from_secs(12), |l| field(l, "fd") == dead_fd);
    assert!(freed.is_some(), "the ladder did not reach its destroy:\n{}", agent.log());
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1, "stage 0 ran again:\n{}", agent.log());
}

// A protected process that shares the socket (here a forked child, protected by its pid) keeps
// it from being destroyed although the selector matches and the sender is not protected: the
// protected list sees every holder, not the sender alone.
#[test]
fn a_socket_shared_with_a_protected_process_is_never_destroyed() {
    require_root!();
    let _s = serial();
    let peer = stream_peer();
    let server = Peer::spawn(&peer, &["server", "127.0.0.1:0", "fill-fork"]);
    let listen = server.expect("LISTEN", Duration::from_secs(5));
    let port = listen.rsplit(':').next().unwrap();
    let _client = Peer::spawn(&peer, &["client", &listen, "none"]);
    let local = field(&server.expect("ACCEPTED", Duration::from_secs(5)), "local").to_string();
    let child: u32 = field(&server.expect("HANDOFF", Duration::from_secs(10)), "child").parse().unwrap();
    let _child = detector_tests::KillOnDrop(child);
    let dir = Scratch::new("shared-protected");
    let p = policy(
        &dir,
        &toml(
            r#"
[protect]
pids = [$child]
[[selector]]
name = "t"
match = { local_port = $port }
actions = [{ action = "destroy" }]
"#,
            &[("child", &child), ("port", &port)],
        ),
    );
    let a = Agent::start("2s", &args(&p));
    assert!(a.logged(&["\"why\":\"protected\""], GRACE + Duration::from_secs(5)), "not skipped as protected:\n{}", a.log());
    std::thread::sleep(Duration::from_secs(1));
    assert!(a.stalled(&local).is_some(), "the shared socket was destroyed:\n{}", a.log());
    assert!(!a.log().contains("\"result\":\"ok\""), "{}", a.log());
}

// A socket in TCP_REPAIR (CRIU checkpointing it: its queue held on purpose) is never judged
// where the kernel walk samples (it is not listed), and never acted on anywhere (sock_diag
// cannot tell: the reaper asks the socket itself, through its owner's fd, before acting).
#[test]
fn a_socket_in_tcp_repair_is_never_acted_on() {
    require_root!();
    let _s = serial();
    let peer = stream_peer();
    let server = Peer::spawn(&peer, &["server", "127.0.0.1:0", "fill-repair"]);
    let listen = server.expect("LISTEN", Duration::from_secs(5));
    let port = listen.rsplit(':').next().unwrap();
    let dir = Scratch::new("repair");
    let p = policy(&dir, &destroy_on_port(port));
    let a = Agent::start("2s", &args(&p));
    let _client = Peer::spawn(&peer, &["client", &listen, "none"]);
    let local = field(&server.expect("REPAIR", Duration::from_secs(10)), "local").to_string();
    let walks = a.query("status").unwrap()["configuration"] == "storage-walk";
    let until = Instant::now() + GRACE + Duration::from_secs(4);
    while Instant::now() < until {
        if walks {
            assert!(a.stalled(&local).is_none(), "a socket in TCP_REPAIR was judged:\n{}", a.log());
        }
        assert!(!a.log().contains("destroyed by SOCK_DESTROY"), "a socket in TCP_REPAIR was destroyed:\n{}", a.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    if !walks {
        assert!(a.log().contains("\"why\":\"in_repair\""), "no in_repair skip:\n{}", a.log());
    }
}
