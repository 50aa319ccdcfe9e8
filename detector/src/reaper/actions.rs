//! Carrying out actions. Every action aimed at a process goes through a pidfd opened first and
//! checked against the process start time seen at detection, so a pid reused in between is
//! never signalled or touched.
use std::{os::fd::RawFd, time::Duration};

use super::config::Sig;
use crate::api::StalledSocket;

fn pidfd_open(pid: u32) -> Result<RawFd, String> {
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if fd < 0 {
        return Err(format!("pidfd_open({pid}): {}", std::io::Error::last_os_error()));
    }
    Ok(fd as RawFd)
}

struct Fd(RawFd);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own this descriptor.
        unsafe { libc::close(self.0) };
    }
}

/// A pidfd for the stalled socket's owner, proven to be the process seen at detection.
fn owner_pidfd(s: &StalledSocket) -> Result<(Fd, u32, i32), String> {
    let (Some(pid), Some(start), Some(fd)) = (s.pid, s.start_time, s.fd) else {
        return Err("owner unknown".into());
    };
    let pidfd = Fd(pidfd_open(pid)?);
    // The pidfd now names one process for good; if that process is not the one we saw, stop.
    let now = procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .map(|st| st.starttime)
        .map_err(|e| format!("reading /proc/{pid}/stat: {e}"))?;
    if now != start {
        return Err(format!("pid {pid} now belongs to another process (start time {now}, expected {start})"));
    }
    Ok((pidfd, pid, fd))
}

/// Sends `sig` to the owner. A real-time signal is queued with the fd as its value
/// (`si_value.sival_int`), so the server knows which connection to drop.
pub fn signal(s: &StalledSocket, sig: Sig) -> Result<String, String> {
    let (pidfd, pid, fd) = owner_pidfd(s)?;
    // siginfo_t for SI_QUEUE on Linux: signo, errno, code, then (at 16) pid, uid, value.
    let mut info = [0u8; 128];
    info[0..4].copy_from_slice(&sig.0.to_ne_bytes());
    info[8..12].copy_from_slice(&(-1i32).to_ne_bytes()); // SI_QUEUE
    info[16..20].copy_from_slice(&(std::process::id() as i32).to_ne_bytes());
    // SAFETY: getuid has no preconditions.
    info[20..24].copy_from_slice(&unsafe { libc::getuid() }.to_ne_bytes());
    info[24..32].copy_from_slice(&(fd as i64).to_ne_bytes());
    let info_ptr = if sig.is_realtime() { info.as_ptr() } else { std::ptr::null() };
    // SAFETY: a valid pidfd and a 128-byte siginfo buffer (or null).
    let r = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd.0, sig.0, info_ptr, 0) };
    if r < 0 {
        return Err(format!("pidfd_send_signal({pid}, {}): {}", sig.0, std::io::Error::last_os_error()));
    }
    Ok(format!("signal {} sent to pid {pid}{}", sig.0, if sig.is_realtime() { format!(" with fd {fd}") } else { String::new() }))
}

/// `shutdown(SHUT_RDWR)` on the owner's own fd, fetched with pidfd_getfd: the app's blocked
/// send fails with EPIPE and its reads see EOF, as if it had done it itself.
pub fn shutdown(s: &StalledSocket) -> Result<String, String> {
    let (pidfd, pid, fd) = owner_pidfd(s)?;
    // SAFETY: plain syscall; the returned descriptor is ours.
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.0, fd, 0) };
    if dup < 0 {
        return Err(format!("pidfd_getfd({pid}, {fd}): {}", std::io::Error::last_os_error()));
    }
    let dup = Fd(dup as RawFd);
    // The fd number may have been reused for something else: check it is our socket.
    let link = std::fs::read_link(format!("/proc/self/fd/{}", dup.0)).map_err(|e| e.to_string())?;
    if link.to_string_lossy() != format!("socket:[{}]", s.inode) {
        return Err(format!("fd {fd} of pid {pid} is no longer socket {}", s.inode));
    }
    // SAFETY: a socket descriptor we own.
    if unsafe { libc::shutdown(dup.0, libc::SHUT_RDWR) } != 0 {
        return Err(format!("shutdown: {}", std::io::Error::last_os_error()));
    }
    Ok(format!("shut down fd {fd} of pid {pid}"))
}

/// Where an RPC goes.
#[derive(Debug, Clone)]
pub enum RpcTarget {
    Http { authority: String, path: String },
    Unix { socket: std::path::PathBuf, path: String },
}

impl RpcTarget {
    pub fn from_url(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| format!("`{url}` is not an http:// URL"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let authority = if authority.contains(':') { authority.to_string() } else { format!("{authority}:80") };
        Ok(RpcTarget::Http {
            authority,
            path: path.to_string(),
        })
    }

    pub fn describe(&self) -> String {
        match self {
            RpcTarget::Http { authority, path } => format!("http://{authority}{path}"),
            RpcTarget::Unix { socket, path } => format!("unix:{}{path}", socket.display()),
        }
    }
}

async fn post_once(target: &RpcTarget, body: &[u8]) -> Result<String, String> {
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
            let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new($stream))
                .await
                .map_err(|e| format!("HTTP handshake: {e}"))?;
            tokio::spawn(conn);
            tx.send_request(req).await.map_err(|e| format!("HTTP request: {e}"))?
        }};
    }
    let resp = match target {
        RpcTarget::Http { authority, .. } => {
            send!(tokio::net::TcpStream::connect(authority).await.map_err(|e| format!("connect {authority}: {e}"))?)
        }
        RpcTarget::Unix { socket, .. } => send!(tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| format!("connect {}: {e}", socket.display()))?),
    };
    let status = resp.status();
    let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let text: String = String::from_utf8_lossy(&body).chars().take(200).collect();
    if status.is_success() {
        Ok(format!("{status}: {}", text.trim()))
    } else {
        Err(format!("{status}: {}", text.trim()))
    }
}

/// POSTs `body` with a per-attempt timeout and up to `retries` retries.
pub async fn rpc(target: &RpcTarget, body: &[u8], timeout: Duration, retries: u32) -> Result<String, String> {
    let mut last = String::new();
    for attempt in 0..=retries {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
        }
        match tokio::time::timeout(timeout, post_once(target, body)).await {
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

    #[test]
    fn urls() {
        match RpcTarget::from_url("http://127.0.0.1:9000/reap").unwrap() {
            RpcTarget::Http { authority, path } => assert_eq!((authority.as_str(), path.as_str()), ("127.0.0.1:9000", "/reap")),
            other => panic!("{other:?}"),
        }
        match RpcTarget::from_url("http://svc").unwrap() {
            RpcTarget::Http { authority, path } => assert_eq!((authority.as_str(), path.as_str()), ("svc:80", "/")),
            other => panic!("{other:?}"),
        }
        assert!(RpcTarget::from_url("ftp://x").is_err());
    }

    #[test]
    fn rpc_to_nowhere_fails_after_bounded_retries() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        // A port nobody listens on (bound then dropped).
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let t = RpcTarget::from_url(&format!("http://127.0.0.1:{port}/reap")).unwrap();
        let e = rt.block_on(rpc(&t, b"{}", Duration::from_millis(300), 1)).unwrap_err();
        assert!(e.contains("after 2 attempts") && e.contains("connect"), "{e}");
    }
}
