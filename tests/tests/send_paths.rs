//! Every way a server sends, on a real kernel: sendfile (nginx with `sendfile on` serving a
//! large file), splice, MSG_ZEROCOPY, io_uring, kernel TLS and Multipath TCP. A reader that
//! stops must be found from the send side, within grace and the sampling interval, with the
//! right owner: the agent's reconcile is spaced out here (`--reconcile-cpu 0.01%`, as 200k
//! sockets space it on a busy node), and the report's kernel record must name the send hook
//! that announced the socket (a socket the reconcile found has none).
use std::time::{Duration, Instant};

use detector_tests::{Agent, Peer, Scratch, destroy_on_port, expect_never, field, free_port, patient, policy_file, poll, refused, require_root};
use serde_json::Value;

const SEND_PEER: &str = env!("CARGO_BIN_EXE_send-peer");
const STREAM_PEER: &str = env!("CARGO_BIN_EXE_stream-peer");
const GRACE: Duration = Duration::from_secs(3);
/// Sampling interval, plus scheduling slack.
const SLACK: Duration = Duration::from_secs(3);

/// An agent whose reconcile runs at start-up and then, within its tiny CPU budget, minutes
/// apart: what it finds within a test was announced by a send hook.
fn agent(extra: &[&str]) -> Agent {
    let mut args = vec!["--reconcile-cpu", "0.01%"];
    args.extend_from_slice(extra);
    Agent::start("3s", &args)
}

/// The client of a send-peer server.
#[derive(Clone, Copy, PartialEq)]
enum Client {
    /// A plain TCP reader that never reads.
    Stops,
    /// A plain TCP reader that reads everything.
    Reads,
    /// An MPTCP reader that never reads.
    MptcpStops,
    /// An MPTCP reader that reads everything.
    MptcpReads,
}

struct Served {
    server: Peer,
    _client: Peer,
    local: String,
    fd: String,
}

/// A `send-peer <path>` server with one client; `None` when this kernel lacks the path (named
/// as refused, never skipped silently).
fn serve(path: &str, client: Client) -> Option<Served> {
    serve_on(path, "127.0.0.1:0", client)
}

/// [`serve`], listening on `listen`.
fn serve_on(path: &str, listen: &str, client: Client) -> Option<Served> {
    let server = Peer::spawn(SEND_PEER, &[path, listen]);
    let addr = server.expect("LISTEN", Duration::from_secs(5));
    let client = match client {
        Client::Stops => Peer::spawn(STREAM_PEER, &["client", &addr, "none"]),
        Client::Reads => Peer::spawn(STREAM_PEER, &["client", &addr, "read"]),
        Client::MptcpStops => Peer::spawn(SEND_PEER, &["mptcp-client", &addr]),
        Client::MptcpReads => Peer::spawn(SEND_PEER, &["mptcp-client", &addr, "read"]),
    };
    let accepted = server.expect("ACCEPTED", Duration::from_secs(5));
    let (local, fd) = (field(&accepted, "local").to_string(), field(&accepted, "fd").to_string());
    let line = server.expect_where("", Duration::from_secs(10), |l| l.starts_with("SENDING") || l.starts_with("UNAVAILABLE"));
    match line {
        Some(l) if l.starts_with("UNAVAILABLE") => {
            refused(&format!("send path {path}: {l}"));
            None
        }
        Some(_) => Some(Served { server, _client: client, local, fd }),
        None => panic!("send-peer {path} never started sending"),
    }
}

/// Waits for `local` to be listed, owned by `pid` at `fd`, announced by a send hook.
fn found_from_the_send_side(a: &Agent, local: &str, pid: u32, fd: &str) -> Value {
    let t0 = Instant::now();
    let e = poll(patient(GRACE + SLACK), || a.stalled(local)).unwrap_or_else(|| panic!("{local} not found within grace and the interval:\n{}", a.log()));
    eprintln!("{local}: found after {:?}", t0.elapsed());
    assert_eq!((e["pid"].as_u64(), e["fd"].to_string()), (Some(u64::from(pid)), fd.to_string()), "{e}");
    let x = a.explain(&e["socket_cookie"].to_string()).expect("explain");
    assert!(x["kernel"]["send_hook"].is_string(), "not announced by a send hook (found by the reconcile?): {x}");
    e
}

/// A reader that stops is found from the send side of `path`; one that reads is never listed.
fn path_is_seen(path: &str, stops: Client, reads: Client) -> Option<Value> {
    let a = agent(&[]);
    let dead = serve(path, stops)?;
    let alive = serve(path, reads)?;
    let e = found_from_the_send_side(&a, &dead.local, dead.server.pid(), &dead.fd);
    expect_never(&a, &[&alive.local], GRACE);
    Some(e)
}

#[test]
fn sendfile_to_a_reader_that_stopped_is_found_from_the_send_side() {
    require_root!();
    path_is_seen("sendfile", Client::Stops, Client::Reads);
}

#[test]
fn splice_to_a_reader_that_stopped_is_found_from_the_send_side() {
    require_root!();
    path_is_seen("splice", Client::Stops, Client::Reads);
}

#[test]
fn zerocopy_sends_to_a_reader_that_stopped_are_found_from_the_send_side() {
    require_root!();
    path_is_seen("zerocopy", Client::Stops, Client::Reads);
}

#[test]
fn io_uring_sends_to_a_reader_that_stopped_are_found_from_the_send_side() {
    require_root!();
    path_is_seen("io_uring", Client::Stops, Client::Reads);
}

#[test]
fn kernel_tls_records_to_a_reader_that_stopped_are_found_from_the_send_side() {
    require_root!();
    path_is_seen("ktls", Client::Stops, Client::Reads);
}

// The MPTCP socket's bytes wait at the MPTCP level; its first subflow (a TCP socket the MPTCP
// layer sends on) shows the stall. Listed with the owner of the MPTCP socket.
#[test]
fn mptcp_to_a_reader_that_stopped_is_found_from_the_send_side() {
    require_root!();
    if let Some(e) = path_is_seen("mptcp", Client::MptcpStops, Client::MptcpReads) {
        assert_eq!(e["mptcp"], true, "{e}");
    }
}

// An MPTCP listener takes a plain TCP client as a fallback connection (Go listens with MPTCP
// by default from 1.24): still sent on by the MPTCP layer, still found.
#[test]
fn an_mptcp_fallback_connection_to_a_reader_that_stopped_is_found() {
    require_root!();
    path_is_seen("mptcp", Client::Stops, Client::Reads);
}

// `destroy` on an MPTCP connection: the kernel has no SOCK_DESTROY for an MPTCP socket (and
// destroying its subflow leaves the sender blocked), so the MPTCP socket is shut down through
// the owner's fd: the blocked send fails, the server lives. The agent acts on its own server's
// port only: the other tests' stalls run side by side and are theirs to find.
#[test]
fn destroy_ends_an_mptcp_connection_through_its_owners_socket() {
    require_root!();
    let port = free_port();
    let dir = Scratch::new("mptcp-destroy");
    let a = agent(&["--policy", &policy_file(&dir, &destroy_on_port(port))]);
    let Some(mut dead) = serve_on("mptcp", &format!("127.0.0.1:{port}"), Client::MptcpStops) else { return };
    let err = dead.server.expect_where("SEND_ERROR", patient(GRACE + SLACK + Duration::from_secs(2)), |_| true);
    assert!(err.is_some(), "the MPTCP sender is still blocked:\n{}", a.log());
    // The reap is logged once the action returned: after the sender saw its error.
    let logged = poll(Duration::from_secs(4), || a.log().contains("an MPTCP connection, which SOCK_DESTROY cannot end").then_some(()));
    assert!(logged.is_some(), "{}", a.log());
    assert!(!dead.server.wait_exit(Duration::from_millis(300)), "the server died");
}

/// Debian's nginx (`nginx-light`): one process, `sendfile on`, a 64 MiB file.
struct Nginx {
    proc: Peer,
    port: u16,
    _dir: Scratch,
}

fn nginx() -> Nginx {
    let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|p| std::path::Path::new(p).exists());
    let bin = bin.expect("nginx is installed (cargo xtask test installs Debian's nginx-light)");
    let dir = Scratch::new("nginx-sendfile");
    for d in ["html", "logs", "tmp"] {
        std::fs::create_dir_all(dir.0.join(d)).unwrap();
    }
    std::fs::write(dir.0.join("html/big"), vec![b'n'; 64 << 20]).unwrap();
    let port = free_port();
    let conf = format!(
        "daemon off;\nmaster_process off;\nerror_log {d}/logs/error.log;\npid {d}/nginx.pid;\nevents {{ worker_connections 64; }}\nhttp {{\n  access_log off;\n  sendfile on;\n  client_body_temp_path {d}/tmp;\n  server {{ listen 127.0.0.1:{port}; root {d}/html; }}\n}}\n",
        d = dir.0.display()
    );
    std::fs::write(dir.0.join("nginx.conf"), conf).unwrap();
    let conf = dir.0.join("nginx.conf").display().to_string();
    let prefix = dir.0.display().to_string();
    let proc = Peer::spawn(bin, &["-c", &conf, "-p", &prefix]);
    poll(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).ok()).expect("nginx listens");
    Nginx { proc, port, _dir: dir }
}

// The case: nginx with `sendfile on` serving a large file to a client that read 256 KiB
// and stopped. Before 6.5 the file goes through `do_tcp_sendpages`, from 6.5 through
// `tcp_sendmsg_locked`; either way it is found from the send side, owned by nginx.
#[test]
fn nginx_sendfile_to_a_client_that_stopped_reading_is_found_from_the_send_side() {
    require_root!();
    let a = agent(&[]);
    let ng = nginx();
    let client = Peer::spawn(STREAM_PEER, &["client", &format!("127.0.0.1:{}", ng.port), "get:262144"]);
    let conn = client.expect("CONNECTED", Duration::from_secs(5));
    client.expect("READ 262144", Duration::from_secs(10));
    // nginx's side of the connection: the client's peer.
    let client_local = field(&conn, "local").to_string();
    let server_local = format!("127.0.0.1:{}", ng.port);
    let t0 = Instant::now();
    let e = poll(patient(GRACE + SLACK), || {
        let all = a.query("stalled").ok()?;
        all.as_array()?.iter().find(|e| e["local"] == server_local && e["remote"] == client_local).cloned()
    })
    .unwrap_or_else(|| panic!("nginx's sendfile stall not found within grace and the interval:\n{}", a.log()));
    eprintln!("nginx: found after {:?}", t0.elapsed());
    assert_eq!(e["pid"].as_u64(), Some(u64::from(ng.proc.pid())), "{e}");
    assert_eq!(e["comm"], "nginx", "{e}");
    let x = a.explain(&e["socket_cookie"].to_string()).expect("explain");
    assert!(x["kernel"]["send_hook"].is_string(), "not announced by a send hook: {x}");
}
