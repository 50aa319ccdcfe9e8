//! A TCP peer for the integration tests, run as its own process (often inside a test network
//! namespace) so the agent attributes sockets to a real pid and comm. It prints one line per
//! milestone on stdout for the test to read.
//!
//!   stream-peer server <bind-addr> [<mode>] [<conns>]
//!     Accepts <conns> clients (default 1), one thread each. Modes:
//!       stream        write 256 KiB per send as fast as the socket takes it, until an error,
//!                     then once more (default)
//!       burst:<n>     write n bytes, then hold the socket open and idle, never reading
//!       burst-close:<n>  write n bytes, then read until the client's EOF and close (clean close)
//!       paced:<r>     write r bytes per second, in 10 chunks a second
//!       bursts:<n>:<ms>  write n bytes (blocking), then nothing for ms milliseconds, again and
//!                     again; prints `BURST <k> local=<addr>` as burst k begins
//!       fill-idle     fill the send path (until the socket takes no more), then hold it idle
//!       fill-close    fill the send path (prints `FILLED local=<addr>`), then read until the
//!                     client's EOF and close
//!       fill-shut-wr  fill the send path, then shutdown(SHUT_WR) (FIN queued behind the data)
//!                     and hold the socket
//!       fill-abandon  fill the send path, then close the socket (the kernel keeps it, orphaned)
//!       fill-exec:<ms>  fill the send path, wait ms, then exec `stream-peer hold` keeping the
//!                     socket (not close-on-exec): same pid, another image
//!       silent        never write, never close (the app that misses the peer's FIN)
//!       sendall:<n>   one blocking send() call of n bytes
//!       respond-after-eof:<n>  read until the client's EOF, then write n bytes and close; prints
//!                     `RESPONDED local=<addr>` when all n bytes were handed to the kernel
//!       answer-late:<ms>:<n>  read until the client's EOF, wait ms (a slow backend), then write
//!                     n bytes and close; prints `ANSWERED local=<addr>` when they are written
//!       fill-handoff  fill the send path, fork; the child keeps the socket (never sends again),
//!                     the parent closes its copy. Prints `HANDOFF child=<pid> fd=<n>`.
//!       fill-fork     as fill-handoff, but the parent keeps its copy too: two processes hold
//!                     the socket.
//!       fill-repair   fill the send path, then put the socket in TCP_REPAIR (as CRIU does to
//!                     checkpoint it) and hold it; prints `REPAIR local=<addr>`
//!       fill-inflight fill the send path, put the fd in flight in a unix socket message
//!                     (SCM_RIGHTS, never received), close it: no process holds it. Prints
//!                     `INFLIGHT`.
//!     A trailing `dev=<ifname>` binds the listener to that device (SO_BINDTODEVICE), so the
//!     accepted sockets are bound to it too. A trailing `watch` reads every accepted socket's
//!     acknowledged bytes (TCP_INFO) every 5 ms and prints `STOPPED local=<addr> peer=<addr>
//!     acked_at_ns=<n> moved_after_ns=<m>` once they have not moved for a second: n is when they
//!     were seen to have last moved (CLOCK_MONOTONIC), the connection's true last progress as its
//!     own sender saw it; m a time before the poll that still saw them as they were before, so
//!     the last progress came after m.
//!     Prints `LISTEN <addr>`, then per client `ACCEPTED fd=<n> local=<addr> peer=<addr>`,
//!     and `SEND_ERROR local=<addr> <err>` when a send fails (the thread then closes it).
//!
//!   stream-peer hold
//!     Holds every fd it inherited (the image a `fill-exec` server executes), prints
//!     `HOLDING pid=<n>`, and dies of any signal it did not ask for.
//!
//!   With STREAM_PEER_COMM set, the process renames itself to it first (prctl PR_SET_NAME),
//!   control characters and all.
//!
//!   stream-peer client <addr> <mode> [<conns>]
//!     Opens <conns> connections (default 1). Modes:
//!       read          read everything as fast as it comes
//!       read-rcvbuf:<n>  as read, with the receive buffer fixed at n bytes (SO_RCVBUF right
//!                     after connecting: no autotuning, so a frozen reader's window closes at
//!                     once instead of after up to tcp_rmem's maximum)
//!       none          never read
//!       none-rcvbuf:<n>  shrink the receive buffer to n bytes (SO_RCVBUF) after connecting,
//!                     then never read
//!       half-close:<r>  shutdown(SHUT_WR) at once (the server sees EOF), then read r bytes per
//!                     second (0: never read) until EOF; prints `EOF local=<addr>` then
//!       slow:<r>      read r bytes per second
//!       slow-rcvbuf:<r>:<n>  as slow, with the receive buffer fixed at n bytes before connecting: the
//!                     window reopens by a segment as soon as one is free (an autotuned buffer
//!                     reopens it only once a sixteenth of it is)
//!       late:<ms>     read nothing for ms milliseconds (the server's bytes wait), then read
//!                     everything as fast as it comes
//!       late-close:<ms>  as late, but close (FIN) once 500 ms pass without data
//!       gate-close    read nothing until the process gets SIGUSR1 (one connection per signal),
//!                     then as late-close: the test, not a clock, decides how long bytes wait
//!       gate-rst      read nothing until SIGUSR1 (likewise), then abort the connection (RST)
//!       gate-all-close  as gate-close, but one SIGUSR1 releases every connection at once
//!       close:<ms>    read for ms milliseconds, then close (FIN)
//!       rst:<ms>      read for ms milliseconds, then abort the connection (RST)
//!       get:<n>       send `GET /big HTTP/1.1` (an HTTP server's large file), read n bytes of
//!                     the answer, then never read again; prints `READ <n>` then
//!     Prints `CONNECTED local=<addr>` per connection.
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn arg_num(mode: &str) -> u64 {
    mode.split_once(':').and_then(|(_, n)| n.parse().ok()).unwrap_or_else(|| panic!("mode {mode:?} needs a number after ':'"))
}

fn main() {
    if let Ok(name) = std::env::var("STREAM_PEER_COMM") {
        let c = std::ffi::CString::new(name).expect("a name without NUL");
        // SAFETY: PR_SET_NAME reads a NUL-terminated string (truncated to 15 bytes).
        unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr()) };
    }
    let args: Vec<String> = std::env::args().collect();
    let conns = |i: usize| args.get(i).map_or(1, |n| n.parse::<usize>().expect("conns"));
    match args.get(1).map(String::as_str) {
        Some("server") => {
            let dev = args.iter().find_map(|a| a.strip_prefix("dev="));
            let watch = args.iter().skip(3).any(|a| a == "watch");
            server(&args[2], args.get(3).map_or("stream", String::as_str), conns(4), dev, watch)
        }
        Some("client") => client(&args[2], args.get(3).map_or("read", String::as_str), conns(4)),
        Some("hold") => {
            say(format!("HOLDING pid={}", std::process::id()));
            loop {
                std::thread::park();
            }
        }
        _ => {
            eprintln!("usage: stream-peer server <bind> [mode] [conns] | client <addr> <mode> [conns]");
            std::process::exit(2);
        }
    }
}

/// A listener on `bind`, bound to network device `dev` if given.
fn listen(bind: &str, dev: Option<&str>) -> TcpListener {
    let Some(dev) = dev else { return TcpListener::bind(bind).expect("bind") };
    use std::os::fd::FromRawFd;
    let addr: std::net::SocketAddr = bind.parse().expect("a numeric bind address");
    let family = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket calls on a descriptor we own until it is handed to TcpListener.
    unsafe {
        let fd = libc::socket(family, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let r = libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, dev.as_ptr().cast(), dev.len() as u32);
        assert!(r == 0, "SO_BINDTODEVICE {dev}: {}", std::io::Error::last_os_error());
        let (sa, len) = sockaddr(&addr);
        assert!(libc::bind(fd, (&raw const sa).cast(), len) == 0, "bind: {}", std::io::Error::last_os_error());
        assert!(libc::listen(fd, 128) == 0, "listen: {}", std::io::Error::last_os_error());
        TcpListener::from_raw_fd(fd)
    }
}

fn sockaddr(a: &std::net::SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid; we fill one of its variants.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        std::net::SocketAddr::V4(v4) => {
            let sin = (&raw mut ss).cast::<libc::sockaddr_in>();
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            unsafe {
                (*sin).sin_family = libc::AF_INET as u16;
                (*sin).sin_port = v4.port().to_be();
                (*sin).sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
            }
            std::mem::size_of::<libc::sockaddr_in>()
        }
        std::net::SocketAddr::V6(v6) => {
            let sin6 = (&raw mut ss).cast::<libc::sockaddr_in6>();
            // SAFETY: as above, for sockaddr_in6.
            unsafe {
                (*sin6).sin6_family = libc::AF_INET6 as u16;
                (*sin6).sin6_port = v6.port().to_be();
                (*sin6).sin6_addr.s6_addr = v6.ip().octets();
                (*sin6).sin6_scope_id = v6.scope_id();
            }
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn server(bind: &str, mode: &str, conns: usize, dev: Option<&str>, watch: bool) {
    let l = listen(bind, dev);
    say(format!("LISTEN {}", l.local_addr().expect("local addr")));
    let mut threads = Vec::new();
    let mut watched = Vec::new();
    for _ in 0..conns {
        let (s, peer) = l.accept().expect("accept");
        let local = s.local_addr().expect("local addr");
        say(format!("ACCEPTED fd={} local={local} peer={peer}", s.as_raw_fd()));
        if watch {
            watched.push((s.try_clone().expect("dup"), format!("local={local} peer={peer}")));
        }
        let mode = mode.to_string();
        threads.push(std::thread::spawn(move || {
            if let Err(e) = serve_one(s, &mode) {
                say(format!("SEND_ERROR local={local} {e}"));
            }
        }));
    }
    if watch {
        std::thread::spawn(move || watch_progress(watched));
    }
    for t in threads {
        let _ = t.join();
    }
}

/// `tcpi_bytes_acked` (struct tcp_info's u64 at byte 120, uapi since 4.1), or `None` once the
/// socket is gone.
fn bytes_acked(s: &TcpStream) -> Option<u64> {
    let mut b = [0u8; 128];
    let mut len = b.len() as libc::socklen_t;
    // SAFETY: a valid socket and a buffer of the length given.
    let r = unsafe { libc::getsockopt(s.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, b.as_mut_ptr().cast(), &mut len) };
    (r == 0 && len >= 128).then(|| u64::from_ne_bytes(b[120..128].try_into().expect("8 bytes")))
}

/// See `watch` in the module doc: the time each connection's acknowledged bytes last moved,
/// printed once they have stood still for a second (again if they move and stop again).
fn watch_progress(socks: Vec<(TcpStream, String)>) {
    let start = detector_tests::monotonic_ns();
    // (acked bytes, when first seen, a time before the poll that saw the value before, told)
    let mut last: Vec<(Option<u64>, u64, u64, bool)> = socks.iter().map(|_| (None, start, start, false)).collect();
    let mut before = start;
    loop {
        let now = detector_tests::monotonic_ns();
        for ((s, name), (acked, at, after, told)) in socks.iter().zip(last.iter_mut()) {
            let Some(a) = bytes_acked(s) else { continue };
            if *acked != Some(a) {
                (*acked, *at, *after, *told) = (Some(a), now, before, false);
            } else if !*told && now - *at >= 1_000_000_000 {
                *told = true;
                say(format!("STOPPED {name} acked_at_ns={at} moved_after_ns={after}"));
            }
        }
        before = now;
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Never returns: the thread (and its socket) stays as it is until the process is killed.
fn hold() -> ! {
    loop {
        std::thread::park();
    }
}

/// Writes `n` bytes.
fn write_n(s: &mut TcpStream, n: u64) -> std::io::Result<()> {
    let buf = vec![b'x'; 16 * 1024];
    let mut left = n as usize;
    while left > 0 {
        let k = left.min(buf.len());
        s.write_all(&buf[..k])?;
        left -= k;
    }
    Ok(())
}

/// Reads until EOF (or an error).
fn drain(s: &mut TcpStream) {
    let mut sink = [0u8; 4096];
    while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
}

fn serve_one(mut s: TcpStream, mode: &str) -> std::io::Result<()> {
    let (name, _) = mode.split_once(':').unwrap_or((mode, ""));
    match name {
        "stream" => {
            let big = vec![b'x'; 256 * 1024];
            let err = loop {
                if let Err(e) = s.write_all(&big) {
                    break e;
                }
            };
            // As an application that does not stop at its first error: one more send on the
            // failed socket (a hook on the entry of a send sees the socket closed only now).
            let _ = s.write(&big);
            Err(err)
        }
        "silent" => hold(),
        "sendall" => {
            // One call: a blocking send of more than the socket takes blocks inside the kernel.
            let n = s.write(&vec![b'x'; arg_num(mode) as usize])?;
            say(format!("SENT {n}"));
            hold()
        }
        "respond-after-eof" => {
            drain(&mut s);
            write_n(&mut s, arg_num(mode))?;
            say(format!("RESPONDED local={}", s.local_addr()?));
            Ok(())
        }
        "answer-late" => {
            let (ms, n) = mode.trim_start_matches("answer-late:").split_once(':').expect("answer-late:<ms>:<n>");
            drain(&mut s);
            std::thread::sleep(Duration::from_millis(ms.parse().expect("ms")));
            write_n(&mut s, n.parse().expect("bytes"))?;
            say(format!("ANSWERED local={}", s.local_addr()?));
            Ok(())
        }
        name if name.starts_with("fill-") => serve_filled(s, name, mode),
        "burst-close" => {
            write_n(&mut s, arg_num(mode))?;
            drain(&mut s);
            say(format!("CLOSED local={}", s.local_addr()?));
            Ok(())
        }
        // Hold the socket, idle, and never read: the app that missed the EOF.
        "burst" => write_n(&mut s, arg_num(mode)).map(|()| hold()),
        "paced" => paced(s, arg_num(mode)),
        "bursts" => {
            let (n, gap) = mode.trim_start_matches("bursts:").split_once(':').expect("bursts:<n>:<ms>");
            let (n, gap) = (n.parse::<u64>().expect("bytes"), Duration::from_millis(gap.parse().expect("ms")));
            for k in 1u64.. {
                say(format!("BURST {k} local={}", s.local_addr()?));
                write_n(&mut s, n)?;
                std::thread::sleep(gap);
            }
            Ok(())
        }
        _ => panic!("unknown server mode {mode:?}"),
    }
}

/// The `fill-*` modes: the send buffer filled first, then what the mode does with the socket.
fn serve_filled(mut s: TcpStream, name: &str, mode: &str) -> std::io::Result<()> {
    if name == "fill-exec" {
        return fill_exec(s, arg_num(mode));
    }
    fill(&mut s)?;
    match name {
        "fill-abandon" => {
            say(format!("ABANDONED local={}", s.local_addr()?));
            Ok(())
        }
        "fill-shut-wr" => {
            s.shutdown(std::net::Shutdown::Write)?;
            say(format!("SHUT_WR local={}", s.local_addr()?));
            hold()
        }
        "fill-idle" => hold(),
        "fill-close" => {
            say(format!("FILLED local={}", s.local_addr()?));
            s.set_nonblocking(false)?;
            drain(&mut s);
            say(format!("CLOSED local={}", s.local_addr()?));
            Ok(())
        }
        "fill-handoff" => handoff(s, false),
        "fill-fork" => handoff(s, true),
        "fill-repair" => {
            let on: libc::c_int = 1;
            // SAFETY: TCP_REPAIR (19) reads an int from our buffer.
            if unsafe { libc::setsockopt(s.as_raw_fd(), libc::IPPROTO_TCP, 19, (&raw const on).cast(), std::mem::size_of::<libc::c_int>() as u32) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            say(format!("REPAIR local={}", s.local_addr()?));
            hold()
        }
        "fill-inflight" => inflight(s),
        _ => panic!("unknown server mode {mode:?}"),
    }
}

/// `rate` bytes a second, in ten writes a second.
fn paced(mut s: TcpStream, rate: u64) -> std::io::Result<()> {
    let chunk = vec![b'x'; (rate / 10).max(1) as usize];
    let start = Instant::now();
    for tick in 1u32.. {
        s.write_all(&chunk)?;
        let next = start + Duration::from_millis(100) * tick;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    Ok(())
}

/// Fills the send path, waits `ms`, then executes `stream-peer hold` keeping the socket.
fn fill_exec(mut s: TcpStream, ms: u64) -> std::io::Result<()> {
    fill(&mut s)?;
    std::thread::sleep(Duration::from_millis(ms));
    // Keep the socket across exec: clear close-on-exec.
    // SAFETY: fcntl on our own descriptor.
    unsafe { libc::fcntl(s.as_raw_fd(), libc::F_SETFD, 0) };
    let exe = std::ffi::CString::new("/proc/self/exe").unwrap();
    let (a0, a1) = (std::ffi::CString::new("stream-peer").unwrap(), std::ffi::CString::new("hold").unwrap());
    let argv = [a0.as_ptr(), a1.as_ptr(), std::ptr::null()];
    say(format!("EXEC fd={}", s.as_raw_fd()));
    // SAFETY: valid NUL-terminated strings and a NULL-terminated argv.
    unsafe { libc::execv(exe.as_ptr(), argv.as_ptr()) };
    Err(std::io::Error::last_os_error())
}

/// Connects to `addr`; for `slow-rcvbuf`, with the receive buffer fixed before the handshake
/// (set after it, the window already offered exceeds the buffer and the peer's bytes beyond it
/// are dropped and sent again).
fn connect(addr: &str, mode: &str) -> TcpStream {
    let Some(rcvbuf) = mode.strip_prefix("slow-rcvbuf:").and_then(|m| m.split_once(':')).map(|(_, n)| n.parse::<libc::c_int>().expect("rcvbuf")) else {
        return TcpStream::connect(addr).expect("connect");
    };
    let a: std::net::SocketAddr = addr.parse().expect("a numeric address");
    let family = if a.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket calls on a descriptor handed to TcpStream.
    unsafe {
        let fd = libc::socket(family, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let r = libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, (&raw const rcvbuf).cast(), 4);
        assert!(r == 0, "SO_RCVBUF: {}", std::io::Error::last_os_error());
        let (sa, len) = sockaddr(&a);
        assert!(libc::connect(fd, (&raw const sa).cast(), len) == 0, "connect: {}", std::io::Error::last_os_error());
        <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd)
    }
}

fn client(addr: &str, mode: &str, conns: usize) {
    if mode.starts_with("gate-") {
        // Blocked before any thread starts, so every thread inherits it and the signal waits
        // for `sigwait` instead of killing the process.
        // SAFETY: a valid set; only this thread's mask changes.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &sigusr1(), std::ptr::null_mut()) };
    }
    if mode == "gate-all-close" {
        std::thread::spawn(|| {
            wait_for_sigusr1();
            *RELEASED.lock().unwrap() = true;
            RELEASE.notify_all();
        });
    }
    let mut threads = Vec::new();
    for _ in 0..conns {
        let s = connect(addr, mode);
        say(format!("CONNECTED local={}", s.local_addr().expect("local addr")));
        let mode = mode.to_string();
        threads.push(std::thread::spawn(move || read_one(s, &mode)));
    }
    for t in threads {
        let _ = t.join();
    }
    // Keep the process (and any sockets a mode left open) alive until killed.
    loop {
        std::thread::park();
    }
}

fn read_one(mut s: TcpStream, mode: &str) {
    let mut buf = vec![0u8; 64 * 1024];
    let (name, _) = mode.split_once(':').unwrap_or((mode, ""));
    match name {
        "none" => hold(),
        "none-rcvbuf" => {
            set_rcvbuf(&s, arg_num(mode));
            hold()
        }
        "read" => while matches!(s.read(&mut buf), Ok(n) if n > 0) {},
        "read-rcvbuf" => {
            set_rcvbuf(&s, arg_num(mode));
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        }
        "half-close" => {
            s.shutdown(std::net::Shutdown::Write).expect("shutdown");
            let rate = arg_num(mode);
            if rate == 0 {
                hold()
            }
            let got = read_at(&mut s, rate);
            say(format!("EOF local={} bytes={got}", s.local_addr().expect("local addr")));
            hold()
        }
        "slow" => {
            read_at(&mut s, arg_num(mode));
        }
        "slow-rcvbuf" => {
            let (r, _) = mode.trim_start_matches("slow-rcvbuf:").split_once(':').expect("slow-rcvbuf:<r>:<n>");
            read_at(&mut s, r.parse().expect("rate"));
        }
        "late" => {
            std::thread::sleep(Duration::from_millis(arg_num(mode)));
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            hold()
        }
        "late-close" | "gate-close" | "gate-all-close" => {
            if name == "gate-close" {
                wait_for_sigusr1();
            } else if name == "gate-all-close" {
                wait_for_release();
            } else {
                std::thread::sleep(Duration::from_millis(arg_num(mode)));
            }
            s.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        }
        "gate-rst" => {
            wait_for_sigusr1();
            linger_zero(&s);
        }
        "get" => {
            s.write_all(b"GET /big HTTP/1.1\r\nHost: detector-test\r\n\r\n").expect("request");
            let mut left = arg_num(mode) as usize;
            while left > 0 {
                match s.read(&mut buf[..left.min(64 * 1024)]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left -= n,
                }
            }
            say(format!("READ {}", arg_num(mode) as usize - left));
            hold()
        }
        "close" | "rst" => {
            read_for(&mut s, Duration::from_millis(arg_num(mode)));
            if name == "rst" {
                linger_zero(&s);
            }
        }
        _ => panic!("unknown client mode {mode:?}"),
    }
}

/// Reads `rate` bytes a second, in ten reads a second, until EOF; returns how many it read.
fn read_at(s: &mut TcpStream, rate: u64) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let per_tick = (rate / 10).max(1) as usize;
    let start = Instant::now();
    let mut got = 0;
    for tick in 1u32.. {
        let mut left = per_tick;
        while left > 0 {
            match s.read(&mut buf[..left.min(64 * 1024)]) {
                Ok(0) | Err(_) => return got,
                Ok(n) => {
                    left -= n;
                    got += n as u64;
                }
            }
        }
        let next = start + Duration::from_millis(100) * tick;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    got
}

/// Reads for `d` (or until EOF).
fn read_for(s: &mut TcpStream, d: Duration) {
    let mut buf = vec![0u8; 64 * 1024];
    let until = Instant::now() + d;
    s.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
    while Instant::now() < until {
        if matches!(s.read(&mut buf), Ok(0)) {
            break;
        }
    }
}

/// SO_LINGER {on, 0}: close() sends RST instead of FIN.
fn linger_zero(s: &TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid socket and a linger struct of the size given.
    unsafe { libc::setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, (&raw const linger).cast(), std::mem::size_of::<libc::linger>() as u32) };
}

fn set_rcvbuf(s: &TcpStream, bytes: u64) {
    let n = bytes as libc::c_int;
    // SAFETY: a valid socket and an int option value.
    let r = unsafe { libc::setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, (&raw const n).cast(), 4) };
    assert!(r == 0, "SO_RCVBUF: {}", std::io::Error::last_os_error());
}

/// Writes until the socket's send buffer is full and the peer's window closed.
fn fill(s: &mut TcpStream) -> std::io::Result<()> {
    let buf = vec![b'x'; 16 * 1024];
    s.set_nonblocking(true)?;
    let mut idle = 0;
    while idle < 20 {
        match s.write(&buf) {
            Ok(_) => idle = 0,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                idle += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Forks; the child keeps `s` (and prints HANDOFF); the parent closes its copy unless `keep`.
fn handoff(s: TcpStream, keep: bool) -> std::io::Result<()> {
    let fd = s.as_raw_fd();
    // SAFETY: the child only calls async-signal-safe functions (getpid, write, pause).
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => {
            let msg = format!("HANDOFF child={} fd={fd}\n", unsafe { libc::getpid() });
            unsafe { libc::write(1, msg.as_ptr().cast(), msg.len()) };
            loop {
                unsafe { libc::pause() };
            }
        }
        _child => {
            if !keep {
                drop(s);
            }
            loop {
                std::thread::park();
            }
        }
    }
}

fn inflight(s: TcpStream) -> std::io::Result<()> {
    let mut pair = [0i32; 2];
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, pair.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = s.as_raw_fd();
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space;
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as usize;
        std::ptr::copy_nonoverlapping((&fd as *const i32).cast::<u8>(), libc::CMSG_DATA(c), 4);
        if libc::sendmsg(pair[0], &msg, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    drop(s);
    say("INFLIGHT".into());
    loop {
        std::thread::park();
    }
}

/// The signal set {SIGUSR1}.
fn sigusr1() -> libc::sigset_t {
    // SAFETY: the set is initialised by sigemptyset before use; the calls only touch it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        set
    }
}

static RELEASED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
static RELEASE: std::sync::Condvar = std::sync::Condvar::new();

/// Waits until the process's first SIGUSR1 has come (taken by the thread `client` starts
/// for `gate-all-close`).
fn wait_for_release() {
    let mut released = RELEASED.lock().unwrap();
    while !*released {
        released = RELEASE.wait(released).unwrap();
    }
}

/// Waits for SIGUSR1 (blocked in every thread by `client`).
fn wait_for_sigusr1() {
    let mut sig = 0;
    // SAFETY: a valid set; sigwait writes the signal number into `sig`.
    unsafe { libc::sigwait(&sigusr1(), &mut sig) };
}
