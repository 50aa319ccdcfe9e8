//! An example streaming server with the production bug the detector exists for: a fixed number
//! of session seats, a blocking send loop with no write deadline, and no way of its own to
//! notice a dead client. A client that stops reading wedges `send` on a full window and holds
//! its seat forever.
//!
//! What it adds so the agent can tear a wedged session down (the two hooks a real server
//! would add, see README "Reaping"):
//! - an RPC endpoint (`--rpc ADDR`): `POST /reap` with the agent's JSON (`fd`, `remote`, ...)
//!   shuts that session's socket down, so the blocked send fails and the session ends;
//! - a signal handler for SIGRTMIN+1: the agent queues the signal with the fd as its value.
//!
//! The agent's `destroy` and `shutdown` actions need no cooperation at all.
//!
//!   wedged-server <listen-addr> <seats> [--rpc <addr>] [--rpc-unix <path>]
//!
//! Prints: `LISTEN <addr>`, `RPC <addr>`, `SEAT taken fd=<n> peer=<addr>`,
//! `BUSY peer=<addr>`, `SEAT freed fd=<n> peer=<addr> err=<e>`, `REAP via=<rpc|signal> fd=<n>`.
use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, RawFd},
    sync::{Arc, Mutex, OnceLock},
};

type Seats = Arc<Mutex<HashMap<RawFd, SocketAddr>>>;

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Shuts down a seated session's socket; the session thread then sees its send fail.
fn reap(seats: &Seats, fd: RawFd, remote: Option<&str>, via: &str) -> bool {
    let seats = seats.lock().unwrap();
    let Some(peer) = seats.get(&fd) else { return false };
    // The fd number alone could have been reused by a newer session: check the peer too.
    if remote.is_some_and(|r| r != peer.to_string()) {
        return false;
    }
    say(format!("REAP via={via} fd={fd} peer={peer}"));
    // SAFETY: fd is a socket owned by a live session (we hold the seat lock).
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    true
}

static SIGNAL_PIPE: OnceLock<RawFd> = OnceLock::new();

extern "C" fn on_signal(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // Async-signal-safe: read the value, write it to a pipe.
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let fd = unsafe { (*info).si_value().sival_ptr } as usize as i32;
    if let Some(&w) = SIGNAL_PIPE.get() {
        unsafe { libc::write(w, (&fd as *const i32).cast(), 4) };
    }
}

fn install_signal_handler(seats: Seats) {
    let mut p = [0i32; 2];
    unsafe { libc::pipe(p.as_mut_ptr()) };
    let _ = SIGNAL_PIPE.set(p[1]);
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigaction(libc::SIGRTMIN() + 1, &sa, std::ptr::null_mut());
    }
    let r = p[0];
    std::thread::spawn(move || {
        loop {
            let mut fd = 0i32;
            if unsafe { libc::read(r, (&mut fd as *mut i32).cast(), 4) } != 4 {
                return;
            }
            reap(&seats, fd, None, "signal");
        }
    });
}

fn rpc_server(addr: &str, seats: Seats) {
    let l = TcpListener::bind(addr).expect("bind rpc");
    say(format!("RPC {}", l.local_addr().unwrap()));
    std::thread::spawn(move || {
        for stream in l.incoming().flatten() {
            serve_rpc(stream, &seats);
        }
    });
}

fn rpc_unix_server(path: &str, seats: Seats) {
    let _ = std::fs::remove_file(path);
    let l = std::os::unix::net::UnixListener::bind(path).expect("bind rpc unix socket");
    say(format!("RPC_UNIX {path}"));
    std::thread::spawn(move || {
        for stream in l.incoming().flatten() {
            serve_rpc(stream, &seats);
        }
    });
}

/// One `POST /reap` (HTTP/1.1, one request per connection).
fn serve_rpc<S: Read + Write>(stream: S, seats: &Seats) {
    let mut r = BufReader::new(stream);
    let mut len = 0usize;
    let mut line = String::new();
    while r.read_line(&mut line).is_ok_and(|n| n > 0) {
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        line.clear();
    }
    let mut body = vec![0u8; len];
    let _ = r.read_exact(&mut body);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let released = v["fd"].as_i64().is_some_and(|fd| reap(seats, fd as RawFd, v["remote"].as_str(), "rpc"));
    let (status, answer) = if released { ("200 OK", "{\"released\":true}") } else { ("404 Not Found", "{\"released\":false}") };
    let mut s = r.into_inner();
    let _ = write!(s, "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}", answer.len());
}

fn session(mut s: TcpStream, peer: SocketAddr, seats: Seats) {
    let fd = s.as_raw_fd();
    let chunk = vec![b'x'; 16 * 1024];
    // The bug: a blocking send with no deadline and no liveness check.
    let err = loop {
        if let Err(e) = s.write_all(&chunk) {
            break e;
        }
    };
    seats.lock().unwrap().remove(&fd);
    say(format!("SEAT freed fd={fd} peer={peer} err={err}"));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen = args.get(1).map_or("127.0.0.1:0", String::as_str);
    let nseats: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
    let seats: Seats = Arc::default();
    install_signal_handler(seats.clone());
    if let Some(i) = args.iter().position(|a| a == "--rpc") {
        rpc_server(&args[i + 1], seats.clone());
    }
    if let Some(i) = args.iter().position(|a| a == "--rpc-unix") {
        rpc_unix_server(&args[i + 1], seats.clone());
    }
    let l = TcpListener::bind(listen).expect("bind");
    say(format!("LISTEN {}", l.local_addr().unwrap()));
    for stream in l.incoming().flatten() {
        let peer = stream.peer_addr().unwrap();
        let mut guard = seats.lock().unwrap();
        if guard.len() >= nseats {
            drop(guard);
            say(format!("BUSY peer={peer}"));
            let mut stream = stream;
            let _ = stream.write_all(b"BUSY\n");
            continue;
        }
        let fd = stream.as_raw_fd();
        guard.insert(fd, peer);
        drop(guard);
        say(format!("SEAT taken fd={fd} peer={peer}"));
        let seats = seats.clone();
        std::thread::spawn(move || session(stream, peer, seats));
    }
}
