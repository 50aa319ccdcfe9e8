//! A server that sends through one of the kernel's other send paths, for the tests that prove
//! the agent sees each of them from the send side (not at its next reconcile). Run as its own
//! process so the agent attributes the socket to a real pid.
//!
//!   send-peer <path> <bind-addr>
//!     Accepts one client and sends to it through <path> until the send fails:
//!       sendfile   sendfile(2) from a 64 MiB file (nginx's `sendfile on`, static file servers)
//!       splice     splice(2) from a pipe filled with vmsplice (HAProxy, proxies)
//!       zerocopy   send(MSG_ZEROCOPY) with SO_ZEROCOPY, completions read off the error queue
//!       io_uring   IORING_OP_SEND on an io_uring, one send in flight
//!       ktls       write(2) on a kernel TLS socket (TCP_ULP "tls", TLS 1.2 AES-GCM-128 keys set
//!                  with SOL_TLS/TLS_TX; the bytes on the wire are TLS records)
//!       mptcp      write(2) on a Multipath TCP socket (IPPROTO_MPTCP; the client must be MPTCP
//!                  too, or the connection falls back to plain TCP)
//!     Prints `LISTEN <addr>`, `ACCEPTED fd=<n> local=<addr> peer=<addr>`, then `SENDING <path>`
//!     once the path is set up, or `UNAVAILABLE <path> <why>` when this kernel lacks it (the
//!     process then exits 3), and `SEND_ERROR <err>` when a send fails.
//!
//!   send-peer mptcp-client <addr> [read]
//!     Connects with IPPROTO_MPTCP, prints `CONNECTED local=<addr>`, and never reads (with
//!     `read`: reads everything as fast as it comes).
use std::{
    io::Write,
    net::{TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, RawFd},
};

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(path), Some(bind)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: send-peer sendfile|splice|zerocopy|io_uring|ktls|mptcp <bind-addr> | mptcp-client <addr>");
        std::process::exit(2);
    };
    if path == "mptcp-client" {
        let mut s = mptcp_connect(bind);
        say(format!("CONNECTED local={}", s.local_addr().expect("local addr")));
        if args.get(3).is_some_and(|a| a == "read") {
            let mut buf = vec![0u8; 64 * 1024];
            while matches!(std::io::Read::read(&mut s, &mut buf), Ok(n) if n > 0) {}
        }
        loop {
            std::thread::park();
        }
    }
    let l = if path == "mptcp" { mptcp_listener(bind) } else { TcpListener::bind(bind).expect("bind") };
    say(format!("LISTEN {}", l.local_addr().expect("local addr")));
    let (s, peer) = l.accept().expect("accept");
    say(format!("ACCEPTED fd={} local={} peer={peer}", s.as_raw_fd(), s.local_addr().expect("local addr")));
    let result = match path.as_str() {
        "sendfile" => sendfile(&s),
        "splice" => splice(&s),
        "zerocopy" => zerocopy(&s),
        "io_uring" => io_uring(&s),
        "ktls" => ktls(&s),
        "mptcp" => plain(&s, "mptcp"),
        other => panic!("unknown path {other:?}"),
    };
    match result {
        Err(Setup::Unavailable(why)) => {
            say(format!("UNAVAILABLE {path} {why}"));
            std::process::exit(3);
        }
        Err(Setup::Failed(e)) => say(format!("SEND_ERROR {e}")),
        Ok(()) => {}
    }
    // Keep the socket (and the process) as it is until killed.
    loop {
        std::thread::park();
    }
}

enum Setup {
    /// This kernel does not have the path (module, sysctl, protocol).
    Unavailable(String),
    /// A send failed (the peer reset, the agent destroyed the socket).
    Failed(std::io::Error),
}

fn last_error() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Checks a libc return value: `Failed` with errno when negative.
fn check(r: libc::c_long) -> Result<usize, Setup> {
    if r < 0 { Err(Setup::Failed(last_error())) } else { Ok(r as usize) }
}

/// Sends `buf` through `send` until it fails.
fn until_error(mut send: impl FnMut() -> Result<usize, Setup>) -> Result<(), Setup> {
    loop {
        send()?;
    }
}

fn plain(s: &TcpStream, path: &str) -> Result<(), Setup> {
    say(format!("SENDING {path}"));
    let big = vec![b'x'; 256 * 1024];
    let mut s = s;
    until_error(|| s.write(&big).map_err(Setup::Failed))
}

fn sendfile(s: &TcpStream) -> Result<(), Setup> {
    let path = std::env::temp_dir().join(format!("send-peer-{}", std::process::id()));
    let mut f = std::fs::File::create(&path).map_err(Setup::Failed)?;
    f.write_all(&vec![b'f'; 64 << 20]).map_err(Setup::Failed)?;
    let f = std::fs::File::open(&path).map_err(Setup::Failed)?;
    let _ = std::fs::remove_file(&path);
    say("SENDING sendfile".into());
    let mut off: libc::off_t = 0;
    until_error(|| {
        if off >= 64 << 20 {
            off = 0;
        }
        // SAFETY: valid descriptors and an offset we own.
        check(unsafe { libc::sendfile(s.as_raw_fd(), f.as_raw_fd(), &mut off, 1 << 20) } as libc::c_long)
    })
}

fn splice(s: &TcpStream) -> Result<(), Setup> {
    let mut p = [0 as RawFd; 2];
    // SAFETY: a two-int array for the pipe's ends.
    check(unsafe { libc::pipe(p.as_mut_ptr()) } as libc::c_long)?;
    let buf = vec![b's'; 64 * 1024];
    say("SENDING splice".into());
    until_error(|| {
        let iov = libc::iovec { iov_base: buf.as_ptr() as *mut _, iov_len: buf.len() };
        // SAFETY: the iovec points at `buf`, alive across the call (vmsplice copies without
        // SPLICE_F_GIFT).
        let n = check(unsafe { libc::vmsplice(p[1], &iov, 1, 0) } as libc::c_long)?;
        let mut left = n;
        while left > 0 {
            // SAFETY: valid descriptors; null offsets for a pipe and a socket.
            left -= check(unsafe { libc::splice(p[0], std::ptr::null_mut(), s.as_raw_fd(), std::ptr::null_mut(), left, libc::SPLICE_F_MOVE) } as libc::c_long)?;
        }
        Ok(n)
    })
}

fn zerocopy(s: &TcpStream) -> Result<(), Setup> {
    let one: libc::c_int = 1;
    // SAFETY: an int option on our socket.
    if unsafe { libc::setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_ZEROCOPY, (&raw const one).cast(), 4) } != 0 {
        return Err(Setup::Unavailable(format!("SO_ZEROCOPY: {}", last_error())));
    }
    let buf = vec![b'z'; 256 * 1024];
    say("SENDING zerocopy".into());
    until_error(|| {
        drain_error_queue(s.as_raw_fd());
        // SAFETY: `buf` outlives the process's sends (it is never freed before exit).
        let r = unsafe { libc::send(s.as_raw_fd(), buf.as_ptr().cast(), buf.len(), libc::MSG_ZEROCOPY) };
        if r < 0 && last_error().raw_os_error() == Some(libc::ENOBUFS) {
            // Completions not read yet (optmem): read them and send again.
            return Ok(0);
        }
        check(r as libc::c_long)
    })
}

/// Reads the zero-copy completions waiting on the error queue, without blocking.
fn drain_error_queue(fd: RawFd) {
    let mut control = [0u8; 256];
    loop {
        // SAFETY: an all-zero msghdr with a control buffer we own.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len();
        // SAFETY: as above.
        if unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) } < 0 {
            return;
        }
    }
}

fn io_uring(s: &TcpStream) -> Result<(), Setup> {
    let mut ring = io_uring::IoUring::new(8).map_err(|e| Setup::Unavailable(format!("io_uring_setup: {e}")))?;
    let buf = vec![b'u'; 256 * 1024];
    say("SENDING io_uring".into());
    until_error(|| {
        let send = io_uring::opcode::Send::new(io_uring::types::Fd(s.as_raw_fd()), buf.as_ptr(), buf.len() as u32).build();
        // SAFETY: `buf` lives until the completion below is reaped.
        unsafe { ring.submission().push(&send) }.expect("a free submission entry");
        ring.submit_and_wait(1).map_err(Setup::Failed)?;
        let c = ring.completion().next().expect("one completion");
        check(c.result() as libc::c_long).map_err(|_| Setup::Failed(std::io::Error::from_raw_os_error(-c.result())))
    })
}

/// `struct tls12_crypto_info_aes_gcm_128` (include/uapi/linux/tls.h).
#[repr(C)]
struct Tls12AesGcm128 {
    version: u16,
    cipher_type: u16,
    iv: [u8; 8],
    key: [u8; 16],
    salt: [u8; 4],
    rec_seq: [u8; 8],
}

const SOL_TLS: libc::c_int = 282;
const TLS_TX: libc::c_int = 1;
const TLS_1_2_VERSION: u16 = 0x0303;
const TLS_CIPHER_AES_GCM_128: u16 = 51;

fn ktls(s: &TcpStream) -> Result<(), Setup> {
    let fd = s.as_raw_fd();
    // SAFETY: a NUL-free name of the length given.
    if unsafe { libc::setsockopt(fd, libc::SOL_TCP, libc::TCP_ULP, c"tls".as_ptr().cast(), 3) } != 0 {
        return Err(Setup::Unavailable(format!("TCP_ULP tls: {} (no tls module?)", last_error())));
    }
    // Fixed test keys: the bytes are encrypted for real; nobody decrypts them.
    let info = Tls12AesGcm128 { version: TLS_1_2_VERSION, cipher_type: TLS_CIPHER_AES_GCM_128, iv: [1; 8], key: [2; 16], salt: [3; 4], rec_seq: [0; 8] };
    // SAFETY: the uapi struct, by size.
    if unsafe { libc::setsockopt(fd, SOL_TLS, TLS_TX, (&raw const info).cast(), std::mem::size_of::<Tls12AesGcm128>() as u32) } != 0 {
        return Err(Setup::Unavailable(format!("SOL_TLS TLS_TX: {}", last_error())));
    }
    plain(s, "ktls")
}

fn sockaddr_in(addr: &str) -> libc::sockaddr_in {
    let addr: std::net::SocketAddrV4 = addr.parse().expect("an IPv4 address and port");
    libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(addr.ip().octets()) },
        sin_zero: [0; 8],
    }
}

fn mptcp_socket() -> RawFd {
    // SAFETY: a plain socket call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_MPTCP) };
    if fd < 0 {
        say(format!("UNAVAILABLE mptcp socket(IPPROTO_MPTCP): {}", last_error()));
        std::process::exit(3);
    }
    fd
}

/// A connection of protocol IPPROTO_MPTCP to `addr`.
fn mptcp_connect(addr: &str) -> TcpStream {
    let (fd, sa) = (mptcp_socket(), sockaddr_in(addr));
    // SAFETY: a socket we own and a sockaddr_in of the size given.
    assert!(unsafe { libc::connect(fd, (&raw const sa).cast(), std::mem::size_of::<libc::sockaddr_in>() as u32) } == 0, "connect: {}", last_error());
    // SAFETY: the descriptor is ours, handed over.
    unsafe { TcpStream::from_raw_fd(fd) }
}

/// A listener of protocol IPPROTO_MPTCP.
fn mptcp_listener(bind: &str) -> TcpListener {
    let (fd, sa) = (mptcp_socket(), sockaddr_in(bind));
    // SAFETY: a socket we own, a sockaddr_in of the size given; handed to TcpListener.
    unsafe {
        assert!(libc::bind(fd, (&raw const sa).cast(), std::mem::size_of::<libc::sockaddr_in>() as u32) == 0, "bind: {}", last_error());
        assert!(libc::listen(fd, 16) == 0, "listen: {}", last_error());
        TcpListener::from_raw_fd(fd)
    }
}
