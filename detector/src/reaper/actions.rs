//! Carrying out actions. Every action aimed at a process first proves, right before acting,
//! that the process is the one seen at detection and that its fd still is the socket:
//! a pidfd (so a pid reused afterwards is never hit), the same start time and image (not
//! re-executed), and the fd duplicated through the pidfd with the socket's inode and cookie.
//! Anything else is skipped and audited, never acted on.
use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    time::Duration,
};

use serde::Serialize;

use super::{
    SkipWhy,
    targets::{RpcTarget, Sig},
};
use crate::report::StalledSocket;

#[derive(Debug)]
pub enum ActionError {
    /// Not done, for a reason that made it unsafe (audited as skipped).
    Skip(SkipWhy, String),
    Failed(String),
}

fn os_err(what: &str) -> ActionError {
    ActionError::Failed(format!("{what}: {}", std::io::Error::last_os_error()))
}

/// The owner of a stalled socket, proven right now to be what detection saw.
#[derive(Debug)]
pub struct VerifiedOwner {
    pub pid: u32,
    pub fd: i32,
    pidfd: OwnedFd,
    /// The owner's fd, duplicated into the agent: the socket itself.
    dup: OwnedFd,
}

fn pidfd_open(pid: u32) -> Result<OwnedFd, ActionError> {
    // An error means the process is gone.
    crate::owner::pidfd_open(pid).map_err(|e| ActionError::Skip(SkipWhy::OwnerChanged, format!("pidfd_open({pid}): {e}")))
}

/// Proves the owner and its fd, or says why not.
pub fn verify_owner(s: &StalledSocket) -> Result<VerifiedOwner, ActionError> {
    let (Some(pid), Some(start), Some(fd)) = (s.pid, s.start_time, s.fd) else {
        return Err(ActionError::Skip(SkipWhy::OwnerUnknown, "owner unknown".into()));
    };
    // The pidfd names one process for good; now check it is the one we saw.
    let pidfd = pidfd_open(pid)?;
    let changed = |why: String| ActionError::Skip(SkipWhy::OwnerChanged, why);
    let proc = procfs::process::Process::new(pid as i32).map_err(|e| changed(format!("pid {pid}: {e}")))?;
    let stat = proc.stat().map_err(|e| changed(format!("pid {pid}: {e}")))?;
    if stat.starttime != start {
        return Err(changed(format!("pid {pid} is another process now (start time {}, expected {start})", stat.starttime)));
    }
    let seen = s.holders.iter().find(|h| h.pid == pid).and_then(|h| h.image.clone());
    let now = crate::owner::image_of(&proc);
    if seen.is_some() && seen.as_deref() != now.as_deref() {
        return Err(changed(format!("pid {pid} executed another image since detection ({seen:?} -> {now:?})")));
    }
    // SAFETY: plain syscall; the returned descriptor is ours.
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if dup < 0 {
        return Err(ActionError::Skip(SkipWhy::FdChanged, format!("pidfd_getfd({pid}, {fd}): {}", std::io::Error::last_os_error())));
    }
    // SAFETY: a new descriptor owned by no one else.
    let dup = unsafe { OwnedFd::from_raw_fd(dup as RawFd) };
    let (ino, cookie) = socket_identity(&dup);
    // An MPTCP connection is sampled by its subflow; the owner holds the MPTCP socket (same
    // inode, its own cookie), which must still have that subflow.
    let same = if s.mptcp { mptcp_has_subflow(&dup, s.local, s.remote) } else { cookie == Some(s.socket_cookie) };
    if ino != Some(u64::from(s.inode)) || !same {
        return Err(ActionError::Skip(
            SkipWhy::FdChanged,
            format!("fd {fd} of pid {pid} is no longer socket {} (cookie {}): inode {ino:?}, cookie {cookie:?}", s.inode, s.socket_cookie),
        ));
    }
    if in_repair(&dup) {
        return Err(ActionError::Skip(SkipWhy::InRepair, format!("fd {fd} of pid {pid} is in TCP_REPAIR: a checkpoint holds it")));
    }
    Ok(VerifiedOwner { pid, fd, pidfd, dup })
}

/// `TCP_REPAIR` (include/uapi/linux/tcp.h).
const TCP_REPAIR: libc::c_int = 19;

/// Whether the TCP socket behind `fd` is in repair mode (a checkpoint in progress): what no
/// sample through sock_diag shows.
fn in_repair(fd: &OwnedFd) -> bool {
    let mut on: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: TCP_REPAIR writes an int into our buffer.
    let ok = unsafe { libc::getsockopt(fd.as_raw_fd(), libc::IPPROTO_TCP, TCP_REPAIR, (&raw mut on).cast(), &mut len) } == 0;
    ok && on != 0
}

/// Whether the socket process `pid` holds at `fd` is in TCP_REPAIR (asked through a duplicate
/// of that fd); `false` when it cannot be asked (the holders' proof says why separately).
pub fn holder_in_repair(pid: u32, fd: i32) -> bool {
    let Ok(pidfd) = crate::owner::pidfd_open(pid) else { return false };
    // SAFETY: plain syscall; the returned descriptor is ours.
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if dup < 0 {
        return false;
    }
    // SAFETY: a new descriptor owned by no one else.
    in_repair(&unsafe { OwnedFd::from_raw_fd(dup as RawFd) })
}

/// `SOL_MPTCP` and its `MPTCP_SUBFLOW_ADDRS` (include/uapi/linux/mptcp.h, 5.16+).
const SOL_MPTCP: libc::c_int = 284;
const MPTCP_SUBFLOW_ADDRS: libc::c_int = 3;
/// Subflows asked about at most (the kernel's own limit is 8 per connection).
const MPTCP_SUBFLOWS: usize = 8;

/// `struct mptcp_subflow_data`, then `struct mptcp_subflow_addrs` (two sockaddr_storage) each.
#[repr(C)]
struct SubflowAddrs {
    size_subflow_data: u32,
    num_subflows: u32,
    size_kernel: u32,
    size_user: u32,
    addrs: [[libc::sockaddr_storage; 2]; MPTCP_SUBFLOWS],
}

/// Whether the MPTCP socket behind `fd` has a subflow from `local` to `remote`.
fn mptcp_has_subflow(fd: &OwnedFd, local: std::net::SocketAddr, remote: std::net::SocketAddr) -> bool {
    // SAFETY: an all-zero buffer of plain integers is valid.
    let mut data: SubflowAddrs = unsafe { std::mem::zeroed() };
    data.size_subflow_data = 16;
    data.size_user = std::mem::size_of::<[libc::sockaddr_storage; 2]>() as u32;
    let mut len = std::mem::size_of::<SubflowAddrs>() as libc::socklen_t;
    // SAFETY: MPTCP_SUBFLOW_ADDRS fills at most `len` bytes of our buffer.
    if unsafe { libc::getsockopt(fd.as_raw_fd(), SOL_MPTCP, MPTCP_SUBFLOW_ADDRS, (&raw mut data).cast(), &mut len) } != 0 {
        return false;
    }
    let n = (data.num_subflows as usize).min(MPTCP_SUBFLOWS);
    data.addrs[..n].iter().any(|[l, r]| sockaddr(l) == Some(local) && sockaddr(r) == Some(remote))
}

/// A `sockaddr_storage` as an address, v4-mapped peers as IPv4 (as the report shows them).
fn sockaddr(ss: &libc::sockaddr_storage) -> Option<std::net::SocketAddr> {
    let canon = |a: std::net::SocketAddr| std::net::SocketAddr::new(a.ip().to_canonical(), a.port());
    match ss.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says it is a sockaddr_in, which fits in the storage.
            let sin = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(std::net::SocketAddr::from((u32::from_be(sin.sin_addr.s_addr).to_be_bytes(), u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(canon(std::net::SocketAddr::from((sin6.sin6_addr.s6_addr, u16::from_be(sin6.sin6_port)))))
        }
        _ => None,
    }
}

/// Inode and socket cookie of a descriptor (`None` when it is not a socket).
fn socket_identity(fd: &OwnedFd) -> (Option<u64>, Option<u64>) {
    // SAFETY: a zeroed stat buffer filled by fstat on our own descriptor.
    let ino = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        (libc::fstat(fd.as_raw_fd(), &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFSOCK).then_some(st.st_ino)
    };
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: SO_COOKIE writes a u64 into our buffer.
    let ok = unsafe { libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_COOKIE, (&raw mut cookie).cast(), &mut len) } == 0;
    (ino, ok.then_some(cookie))
}

/// Sends `sig` to the verified owner, if it catches it. A real-time signal is queued with the fd
/// as its value (`si_value.sival_int`), so the server knows which connection to drop.
pub fn signal(s: &StalledSocket, sig: Sig) -> Result<String, ActionError> {
    let o = verify_owner(s)?;
    if !catches(&o, sig)? {
        return Err(ActionError::Skip(
            SkipWhy::NoHandler,
            format!("pid {} does not catch signal {}: its default action would end the process and every session it serves", o.pid, sig.0),
        ));
    }
    // siginfo_t for SI_QUEUE on Linux: signo, errno, code, then (at 16) pid, uid, value.
    let mut info = [0u8; 128];
    info[0..4].copy_from_slice(&sig.0.to_ne_bytes());
    info[8..12].copy_from_slice(&(-1i32).to_ne_bytes()); // SI_QUEUE
    info[16..20].copy_from_slice(&(std::process::id() as i32).to_ne_bytes());
    // SAFETY: getuid has no preconditions.
    info[20..24].copy_from_slice(&unsafe { libc::getuid() }.to_ne_bytes());
    info[24..32].copy_from_slice(&(o.fd as i64).to_ne_bytes());
    let info_ptr = if sig.is_realtime() { info.as_ptr() } else { std::ptr::null() };
    // SAFETY: a valid pidfd and a 128-byte siginfo buffer (or null).
    if unsafe { libc::syscall(libc::SYS_pidfd_send_signal, o.pidfd.as_raw_fd(), sig.0, info_ptr, 0) } < 0 {
        return Err(os_err(&format!("pidfd_send_signal({}, {})", o.pid, sig.0)));
    }
    Ok(format!("signal {} sent to pid {}{}", sig.0, o.pid, if sig.is_realtime() { format!(" with fd {}", o.fd) } else { String::new() }))
}

/// Whether the verified owner catches `sig` (the `SigCgt` mask of /proc/<pid>/status: a handler
/// installed, neither the default action nor ignored). Read through /proc by pid, so the pidfd
/// is asked afterwards whether that process still lives: a pid is not reused while it does.
fn catches(o: &VerifiedOwner, sig: Sig) -> Result<bool, ActionError> {
    let changed = |why: String| ActionError::Skip(SkipWhy::OwnerChanged, why);
    let status = std::fs::read_to_string(format!("/proc/{}/status", o.pid)).map_err(|e| changed(format!("pid {}: {e}", o.pid)))?;
    let caught = parse_sig_cgt(&status).ok_or_else(|| ActionError::Failed(format!("pid {}: no SigCgt line in its status", o.pid)))?;
    // SAFETY: signal 0 through our pidfd only checks that its process lives.
    if unsafe { libc::syscall(libc::SYS_pidfd_send_signal, o.pidfd.as_raw_fd(), 0, std::ptr::null::<u8>(), 0) } < 0 {
        return Err(changed(format!("pid {} exited", o.pid)));
    }
    Ok(sig.0 >= 1 && sig.0 <= 64 && caught & (1u64 << (sig.0 - 1)) != 0)
}

/// The caught-signals mask of a /proc/<pid>/status text (bit n-1 for signal n).
fn parse_sig_cgt(status: &str) -> Option<u64> {
    status.lines().find_map(|l| l.strip_prefix("SigCgt:")).and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// `shutdown(SHUT_RDWR)` on the owner's own socket: its blocked send fails with EPIPE and its
/// reads see EOF, as if it had done it itself.
pub fn shutdown(s: &StalledSocket) -> Result<String, ActionError> {
    let o = verify_owner(s)?;
    // SAFETY: a socket descriptor we own.
    if unsafe { libc::shutdown(o.dup.as_raw_fd(), libc::SHUT_RDWR) } != 0 {
        return Err(os_err("shutdown"));
    }
    Ok(format!("shut down fd {} of pid {}", o.fd, o.pid))
}

/// What the RPC endpoint receives.
#[derive(Debug, Clone, Serialize)]
pub struct RpcBody {
    pid: Option<u32>,
    fd: Option<i32>,
    local: std::net::SocketAddr,
    remote: std::net::SocketAddr,
    reason: crate::verdict::Reason,
    stalled_for_ms: u64,
    queued_bytes: u32,
    socket_cookie: u64,
    inode: u32,
}

impl RpcBody {
    pub fn of(s: &StalledSocket) -> Self {
        Self {
            pid: s.pid,
            fd: s.fd,
            local: s.local,
            remote: s.remote,
            reason: s.reason,
            stalled_for_ms: s.stalled_for_ms,
            queued_bytes: s.queued_bytes,
            socket_cookie: s.socket_cookie,
            inode: s.inode,
        }
    }
}

/// A TCP connection to `authority` made from inside the network namespace of the process
/// behind `pidfd`, on a thread of its own (setns changes only the calling thread).
async fn connect_in_netns(pidfd: RawFd, authority: &str, timeout: Duration) -> Result<tokio::net::TcpStream, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let authority = authority.to_string();
    std::thread::Builder::new()
        .name("rpc-connect".into())
        .spawn(move || {
            let r = (|| -> Result<std::net::TcpStream, String> {
                // SAFETY: plain syscall; a pidfd names the network namespace of its process.
                if unsafe { libc::setns(pidfd, libc::CLONE_NEWNET) } != 0 {
                    return Err(format!("entering the owner's network namespace: {}", std::io::Error::last_os_error()));
                }
                let addrs: Vec<std::net::SocketAddr> =
                    std::net::ToSocketAddrs::to_socket_addrs(&authority).map_err(|e| format!("resolving {authority}: {e}"))?.collect();
                let mut last = format!("{authority} resolved to no address");
                for a in addrs {
                    match std::net::TcpStream::connect_timeout(&a, timeout) {
                        Ok(s) => return s.set_nonblocking(true).map(|()| s).map_err(|e| e.to_string()),
                        Err(e) => last = format!("connect {a}: {e}"),
                    }
                }
                Err(last)
            })();
            let _ = tx.send(r);
        })
        .map_err(|e| e.to_string())?;
    let std_stream = rx.await.map_err(|_| "the connecting thread died".to_string())??;
    tokio::net::TcpStream::from_std(std_stream).map_err(|e| e.to_string())
}

/// `struct open_how` of openat2(2), and its `resolve` bits.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;

/// A connection to the unix socket at `path` as the verified owner sees it, and nowhere else: its
/// root directory is opened through /proc while the pidfd proves the process lives (so the pid
/// names it, not a successor), and the path is resolved with `openat2(RESOLVE_IN_ROOT)` from
/// there: `..` and absolute symlinks the owner planted stay inside its root (a container cannot
/// point the privileged agent at a host socket). The socket is then connected through
/// `/proc/self/fd/N`, the file just resolved.
fn connect_in_root(owner: &VerifiedOwner, path: &std::path::Path) -> std::io::Result<std::os::unix::net::UnixStream> {
    use std::os::unix::ffi::OsStrExt as _;
    let root = std::fs::File::open(format!("/proc/{}/root", owner.pid))?;
    // SAFETY: signal 0 through our pidfd only checks that its process lives.
    if unsafe { libc::syscall(libc::SYS_pidfd_send_signal, owner.pidfd.as_raw_fd(), 0, std::ptr::null::<u8>(), 0) } < 0 {
        return Err(std::io::Error::other(format!("pid {} exited", owner.pid)));
    }
    let rel = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let how = OpenHow { flags: (libc::O_PATH | libc::O_CLOEXEC) as u64, mode: 0, resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS };
    // SAFETY: a directory fd we hold, a NUL-terminated path and an open_how of the size given.
    let fd = unsafe { libc::syscall(libc::SYS_openat2, root.as_raw_fd(), rel.as_ptr(), &how as *const OpenHow, std::mem::size_of::<OpenHow>()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor owned by no one else.
    let file = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let s = std::os::unix::net::UnixStream::connect(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    s.set_nonblocking(true)?;
    Ok(s)
}

async fn post_once(target: &RpcTarget, owner: &VerifiedOwner, body: &[u8], timeout: Duration) -> Result<String, String> {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    let (host, path) = match target {
        RpcTarget::Http { authority, path } => (authority.clone(), path.clone()),
        RpcTarget::Unix { path, .. } => ("localhost".to_string(), path.clone()),
    };
    let req = hyper::Request::post(path)
        .header("host", host)
        .header("content-type", "application/json")
        .header("user-agent", concat!("detector/", env!("CARGO_PKG_VERSION")))
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(|e| e.to_string())?;
    macro_rules! send {
        ($stream:expr) => {{
            let (mut tx, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new($stream)).await.map_err(|e| format!("HTTP handshake: {e}"))?;
            tokio::spawn(conn);
            tx.send_request(req).await.map_err(|e| format!("HTTP request: {e}"))?
        }};
    }
    let resp = match target {
        RpcTarget::Http { authority, .. } => send!(connect_in_netns(owner.pidfd.as_raw_fd(), authority, timeout).await?),
        RpcTarget::Unix { socket, .. } => {
            let s = connect_in_root(owner, socket).map_err(|e| format!("connect {} in the owner's root: {e}", socket.display()))?;
            send!(tokio::net::UnixStream::from_std(s).map_err(|e| e.to_string())?)
        }
    };
    let status = resp.status();
    let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let text: String = String::from_utf8_lossy(&body).chars().take(200).collect();
    if status.is_success() { Ok(format!("{status}: {}", text.trim())) } else { Err(format!("{status}: {}", text.trim())) }
}

/// POSTs `body` to the verified owner's endpoint, with a per-attempt timeout and up to
/// `retries` retries.
pub async fn rpc(target: &RpcTarget, owner: &VerifiedOwner, body: &RpcBody, timeout: Duration, retries: u32) -> Result<String, String> {
    let body = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    let mut last = String::new();
    for attempt in 0..=retries {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
        }
        match tokio::time::timeout(timeout, post_once(target, owner, &body, timeout)).await {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => last = e,
            Err(_) => last = format!("no answer within {timeout:?}"),
        }
    }
    Err(format!("{} after {} attempts: {last}", target.describe(), retries + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This very process as the owner of a listening socket it holds.
    fn own_socket() -> (std::net::TcpListener, StalledSocket) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (ino, cookie) = socket_identity(&l.try_clone().unwrap().into());
        let me = procfs::process::Process::myself().unwrap();
        let mut s = StalledSocket::example();
        (s.pid, s.fd, s.start_time) = (Some(std::process::id()), Some(l.as_raw_fd()), Some(me.stat().unwrap().starttime));
        (s.inode, s.socket_cookie) = (ino.unwrap() as u32, cookie.unwrap());
        let hs = std::sync::Arc::get_mut(&mut s.holders).expect("one report line holds them");
        hs[0].pid = std::process::id();
        hs[0].image = crate::owner::image_of(&me).map(Into::into);
        (l, s)
    }

    fn skip_why(r: Result<VerifiedOwner, ActionError>) -> SkipWhy {
        match r {
            Err(ActionError::Skip(why, _)) => why,
            other => panic!("not skipped: {other:?}"),
        }
    }

    #[test]
    fn the_owner_seen_at_detection_is_verified() {
        let (_l, s) = own_socket();
        let o = verify_owner(&s).unwrap();
        assert_eq!((o.pid, o.fd), (std::process::id(), s.fd.unwrap()));
    }

    #[test]
    fn another_process_under_the_same_pid_is_not_the_owner() {
        let (_l, mut s) = own_socket();
        s.start_time = Some(s.start_time.unwrap() + 1);
        assert_eq!(skip_why(verify_owner(&s)), SkipWhy::OwnerChanged);
        s.start_time = Some(s.start_time.unwrap() - 1);
        std::sync::Arc::get_mut(&mut s.holders).expect("one report line holds them")[0].image = Some("another image".into());
        assert_eq!(skip_why(verify_owner(&s)), SkipWhy::OwnerChanged);
    }

    #[test]
    fn an_fd_that_now_holds_another_socket_is_not_acted_on() {
        let (l, s) = own_socket();
        // The same fd number, another socket (what a close and a new accept look like).
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // SAFETY: dup2 onto a descriptor this test owns; `l` is forgotten, not closed twice.
        assert!(unsafe { libc::dup2(other.as_raw_fd(), l.as_raw_fd()) } >= 0);
        let fd = l.as_raw_fd();
        std::mem::forget(l);
        assert_eq!(skip_why(verify_owner(&s)), SkipWhy::FdChanged);
        // SAFETY: closing the descriptor dup2 made.
        unsafe { libc::close(fd) };
        assert_eq!(skip_why(verify_owner(&s)), SkipWhy::FdChanged, "a closed fd");
    }

    #[test]
    fn caught_signals_are_read_from_the_status_mask() {
        let status = "Name:\tws\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000001000\nSigCgt:\t0000000400004002\n";
        let m = parse_sig_cgt(status).unwrap();
        assert!(m & (1 << (2 - 1)) != 0, "SIGINT caught");
        assert!(m & (1 << (13 - 1)) == 0, "SIGPIPE only ignored: not caught");
        assert!(m & (1 << (35 - 1)) != 0, "SIGRTMIN+1 (35) caught");
        assert_eq!(parse_sig_cgt("Name:\tws\n"), None);
    }

    #[test]
    fn a_signal_the_owner_does_not_catch_is_never_sent() {
        // This test process catches no SIGUSR2 (the test harness installs none).
        let (_l, s) = own_socket();
        match signal(&s, Sig(libc::SIGUSR2)) {
            Err(ActionError::Skip(SkipWhy::NoHandler, why)) => assert!(why.contains("does not catch"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unknown_owner_is_never_acted_on() {
        let mut s = StalledSocket::example();
        (s.pid, s.fd, s.start_time, s.owner_known) = (None, None, None, false);
        s.holders = Vec::new().into();
        assert!(matches!(verify_owner(&s), Err(ActionError::Skip(SkipWhy::OwnerUnknown, _))));
        assert!(matches!(shutdown(&s), Err(ActionError::Skip(SkipWhy::OwnerUnknown, _))));
    }
}
