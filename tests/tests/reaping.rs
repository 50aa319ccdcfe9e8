//! Reaping, end to end, on a real wedged server (`wedged-server`): a client goes dead, the
//! agent acts, the seat comes back and a new client gets it; a healthy client on the same
//! server at the same time is never touched; report and dry run change nothing.
use std::time::{Duration, Instant};

use detector_tests::{Agent, NS_A_ADDR, NetnsPair, Peer, Scratch, detector_cmd, field, patient, require_root, serial, stream_peer, toml, wedged_server};

const GRACE: Duration = Duration::from_secs(2);

// These agents act on every matching socket of the node, so two at once would act on each
// other's servers: the tests of this file run one at a time.

struct Setup {
    server: Peer,
    addr: String,
    rpc: String,
    healthy: Peer,
    healthy_fd: String,
    dead: Vec<(Peer, String)>,
}

/// A server with `seats` seats: one healthy reader and `dead` clients that never read.
fn setup(dead: usize, seats: usize) -> Setup {
    let server = Peer::wedged(&["127.0.0.1:0", &seats.to_string(), "--rpc", "127.0.0.1:0"]);
    let rpc = server.expect("RPC", Duration::from_secs(5));
    let addr = server.expect("LISTEN", Duration::from_secs(5));
    let healthy = Peer::stream(&["client", &addr, "read"]);
    let taken = server.expect("SEAT taken", Duration::from_secs(5));
    let healthy_fd = field(&taken, "fd").to_string();
    let dead = (0..dead)
        .map(|_| {
            let c = Peer::stream(&["client", &addr, "none"]);
            let taken = server.expect("SEAT taken", Duration::from_secs(5));
            (c, field(&taken, "fd").to_string())
        })
        .collect();
    Setup { server, addr, rpc, healthy, healthy_fd, dead }
}

/// The dead client's seat is freed within grace + `slack`; a new client then gets a seat; the
/// healthy client's seat is never freed.
fn expect_reaped(agent: &Agent, s: &Setup, fd: &str, slack: Duration) -> Duration {
    let t0 = Instant::now();
    let freed = s
        .server
        .expect_where("SEAT freed", GRACE + slack, |l| field(l, "fd") == fd)
        .unwrap_or_else(|| panic!("seat fd={fd} not freed within grace + {slack:?}\n{}", agent.log()));
    let took = t0.elapsed();
    eprintln!("freed after {:.2} s: {freed}", took.as_secs_f64());
    let newcomer = Peer::stream(&["client", &s.addr, "read"]);
    let taken = s.server.expect_where("SEAT taken", Duration::from_secs(5), |_| true);
    assert!(taken.is_some(), "the new client got no seat:\n{}", agent.log());
    drop(newcomer);
    let healthy_freed = s.server.saw("SEAT freed", |l| field(l, "fd") == s.healthy_fd);
    let busy = s.server.saw("BUSY", |_| true);
    assert!(!healthy_freed && !busy, "the healthy client was touched ({healthy_freed}) or a client was turned away ({busy}):\n{}", agent.log());
    took
}

/// An agent with the reaping tests' grace, stretched by the tests' slack under emulation: a
/// healthy client there may not get the CPU to read for a whole unstretched grace window, and
/// acting on it would be the agent's rule, not a fault (the waits below stretch likewise).
fn agent(args: &[&str]) -> Agent {
    Agent::start(&grace_arg(), args)
}

fn grace_arg() -> String {
    format!("{}ms", patient(GRACE).as_millis())
}

#[test]
fn destroy_frees_the_seat_of_a_dead_client() {
    require_root!();
    let _serial = serial();
    let a = agent(&["--action", "destroy"]);
    let s = setup(1, 2);
    expect_reaped(&a, &s, &s.dead[0].1, Duration::from_secs(3));
    assert!(a.logged(&["\"action\":\"destroy\"", "\"result\":\"ok\""], Duration::from_secs(3)), "{}", a.log());
    drop(s.healthy);
}

#[test]
fn destroy_frees_a_seat_held_by_an_unreachable_peer_in_another_namespace() {
    require_root!();
    let _serial = serial();
    let net = NetnsPair::new();
    let a = agent(&["--action", "destroy"]);
    let server = net.peer(&net.a, &wedged_server(), &["0.0.0.0:0", "1"]);
    let port = server.expect("LISTEN", Duration::from_secs(5)).rsplit(':').next().unwrap().to_string();
    let _client = net.peer(&net.b, &stream_peer(), &["client", &format!("{NS_A_ADDR}:{port}"), "read"]);
    let taken = server.expect("SEAT taken", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(500));
    net.cut_b();
    let freed = server
        .expect_where("SEAT freed", GRACE + Duration::from_secs(4), |l| field(l, "fd") == field(&taken, "fd"))
        .unwrap_or_else(|| panic!("not freed:\n{}", a.log()));
    assert!(freed.contains("abort"), "the blocked send should fail with ECONNABORTED: {freed}");
    assert!(a.logged(&["peer_unreachable"], Duration::from_secs(3)), "{}", a.log());
}

#[test]
fn signal_with_the_fd_lets_the_server_tear_the_session_down() {
    require_root!();
    let _serial = serial();
    let a = agent(&["--action", "signal", "--signal", "SIGRTMIN+1"]);
    let s = setup(1, 2);
    expect_reaped(&a, &s, &s.dead[0].1, Duration::from_secs(3));
    assert!(s.server.saw("REAP via=signal", |l| field(l, "fd") == s.dead[0].1), "server did not get the fd");
}

#[test]
fn rpc_lets_the_server_tear_the_session_down() {
    require_root!();
    let _serial = serial();
    // The RPC URL must be known before the agent starts: start the server first.
    let s = setup(0, 2);
    let url = format!("http://{}/reap", s.rpc);
    let a = agent(&["--action", "rpc", "--rpc-url", &url]);
    let dead = Peer::stream(&["client", &s.addr, "none"]);
    let fd = field(&s.server.expect("SEAT taken", Duration::from_secs(5)), "fd").to_string();
    let _ = &dead;
    let freed =
        s.server.expect_where("SEAT freed", GRACE + Duration::from_secs(4), |l| field(l, "fd") == fd).unwrap_or_else(|| panic!("not freed:\n{}", a.log()));
    eprintln!("{freed}");
    assert!(s.server.saw("REAP via=rpc", |l| field(l, "fd") == fd));
    let answered = (0..30).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        a.log().contains("\"action\":\"rpc\"") && a.log().contains("released")
    });
    assert!(answered, "the server's answer was not recorded:\n{}", a.log());
    assert!(!s.server.saw("SEAT freed", |l| field(l, "fd") == s.healthy_fd));
}

#[test]
fn shutdown_through_the_owners_fd_frees_the_seat() {
    require_root!();
    let _serial = serial();
    let a = agent(&["--action", "shutdown"]);
    let s = setup(1, 2);
    expect_reaped(&a, &s, &s.dead[0].1, Duration::from_secs(3));
}

#[test]
fn report_and_dry_run_change_nothing() {
    require_root!();
    let _serial = serial();
    for args in [&["--action", "report"][..], &["--action", "destroy", "--dry-run"][..]] {
        let a = agent(args);
        let s = setup(1, 2);
        let freed = s.server.expect_where("SEAT freed", GRACE + Duration::from_secs(3), |_| true);
        assert!(freed.is_none(), "{args:?} freed a seat: {freed:?}\n{}", a.log());
        let dead_local = &s.addr;
        let stalled = a.stalled(dead_local).unwrap_or_else(|| panic!("not even reported:\n{}", a.log()));
        assert_eq!(stalled["reason"], "peer_not_reading");
        let want = if args.contains(&"--dry-run") { "\"result\":\"dry_run\"" } else { "\"action\":\"report\"" };
        assert!(a.logged(&[want], Duration::from_secs(3)), "{args:?}: no {want} audit line:\n{}", a.log());
    }
}

fn policy_agent(policy: &str) -> (Agent, Scratch) {
    let dir = Scratch::new("policy");
    let path = dir.0.join("policy.toml");
    std::fs::write(&path, policy).unwrap();
    let p = path.display().to_string();
    (Agent::start(&grace_arg(), &["--policy", &p]), dir)
}

#[test]
fn protected_processes_are_never_acted_on() {
    require_root!();
    let _serial = serial();
    let (a, _d) = policy_agent(
        r#"
[protect]
comms = ["wedged-server"]
[[selector]]
name = "all"
actions = [{ action = "destroy" }]
"#,
    );
    let s = setup(1, 2);
    let freed = s.server.expect_where("SEAT freed", GRACE + Duration::from_secs(3), |_| true);
    assert!(freed.is_none(), "a protected process was acted on: {freed:?}");
    assert!(a.logged(&["\"result\":\"skipped\"", "protected"], Duration::from_secs(3)), "{}", a.log());
}

#[test]
fn rate_limit_and_cooldown_hold_back_further_actions() {
    require_root!();
    let _serial = serial();
    for (name, limits) in [("rate", "per_minute = 1\ncooldown = \"0s\""), ("cooldown", "per_minute = 100\ncooldown = \"60s\"")] {
        let (a, _d) = policy_agent(&toml(
            r#"
[limits]
$limits
[[selector]]
name = "all"
match = { comm = "wedged-server" }
actions = [{ action = "destroy" }]
"#,
            &[("limits", &limits)],
        ));
        let s = setup(3, 4);
        let first = s.server.expect_where("SEAT freed", GRACE + Duration::from_secs(3), |_| true);
        assert!(first.is_some(), "{name}: nothing acted on:\n{}", a.log());
        let more = s.server.expect_where("SEAT freed", Duration::from_secs(3), |_| true);
        assert!(more.is_none(), "{name}: a second action went through: {more:?}\n{}", a.log());
        let why = if name == "rate" { "rate_limited" } else { "cooldown" };
        assert!(a.logged(&[why], Duration::from_secs(3)), "{name}: no {why} audit line:\n{}", a.log());
    }
}

// An RPC endpoint nobody listens on: the stage failed, it is logged and counted, and tried
// again; the destroy after it waits for it (a stage is done only once it ran), so the seat stays
// taken and `DetectorReapsFailing` is what tells the operator.
#[test]
fn unreachable_rpc_endpoint_is_logged_counted_and_tried_again_never_skipped_past() {
    require_root!();
    let _serial = serial();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (a, _d) = policy_agent(&toml(
        r#"
[[selector]]
name = "ws"
match = { comm = "wedged-server" }
actions = [
  { action = "rpc", url = "http://127.0.0.1:$port/reap", timeout = "300ms", retries = 1 },
  { action = "destroy", after = "2s" },
]
"#,
        &[("port", &port)],
    ));
    let s = setup(1, 2);
    let fd = s.dead[0].1.clone();
    let freed = s.server.expect_where("SEAT freed", GRACE + Duration::from_secs(9), |l| field(l, "fd") == fd);
    assert!(freed.is_none(), "destroyed although the rpc before it never ran:\n{}", a.log());
    let failed = a.log().matches("\"action\":\"rpc\"").count();
    assert!(failed >= 2 && a.log().contains("\"result\":\"failed\""), "the failed rpc was not tried again ({failed} rpc lines):\n{}", a.log());
    assert!(!a.log().contains("\"action\":\"destroy\""), "{}", a.log());
}

#[test]
fn a_bad_policy_file_is_refused_with_file_line_and_field() {
    let _serial = serial();
    let dir = Scratch::new("badpolicy");
    let path = dir.0.join("policy.toml");
    std::fs::write(
        &path,
        // The bad value on line 3, which the error must name.
        r#"[[selector]]
name = "x"
actions = [{ action = "signal", signal = "SIGNOPE" }]
"#,
    )
    .unwrap();
    let out = detector_cmd().args(["run", "--metrics-addr", "off", "--policy"]).arg(&path).arg("--api-socket").arg(dir.0.join("api.sock")).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&path.display().to_string()) && err.contains("line 3") && err.contains("SIGNOPE"), "{err}");
}

#[test]
fn rpc_over_a_unix_socket_from_a_policy_selector() {
    require_root!();
    let _serial = serial();
    let dir = Scratch::new("rpcunix");
    let sock = dir.0.join("reap.sock").display().to_string();
    let server = Peer::wedged(&["127.0.0.1:0", "2", "--rpc-unix", &sock]);
    server.expect("RPC_UNIX", Duration::from_secs(5));
    let addr = server.expect("LISTEN", Duration::from_secs(5));
    let (a, _d) = policy_agent(&toml(
        r#"
[[selector]]
name = "unix-rpc"
match = { comm = "wedged-server", reason = "peer_not_reading" }
actions = [{ action = "rpc", unix = "$sock", path = "/reap" }]
"#,
        &[("sock", &sock)],
    ));
    let _healthy = Peer::stream(&["client", &addr, "read"]);
    let healthy_fd = field(&server.expect("SEAT taken", Duration::from_secs(5)), "fd").to_string();
    let _dead = Peer::stream(&["client", &addr, "none"]);
    let fd = field(&server.expect("SEAT taken", Duration::from_secs(5)), "fd").to_string();
    let freed = server.expect_where("SEAT freed", GRACE + Duration::from_secs(4), |l| field(l, "fd") == fd);
    assert!(freed.is_some(), "not freed over the unix socket:\n{}", a.log());
    assert!(server.saw("REAP via=rpc", |l| field(l, "fd") == fd));
    assert!(!server.saw("SEAT freed", |l| field(l, "fd") == healthy_fd));
}
