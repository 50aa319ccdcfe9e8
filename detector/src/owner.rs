//! Who holds a socket now: the process and its fd, verified against /proc/<pid>/fd.
//! Done for stalled sockets only, never as a full /proc scan per tick.
use procfs::process::{FDTarget, Process};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    /// Process name (`/proc/<pid>/comm`, the main thread's).
    pub comm: String,
    /// Every fd of this process that refers to the socket.
    pub fds: Vec<i32>,
    /// Start time in clock ticks since boot, to tell a reused pid apart.
    pub start_time: u64,
}

/// The process `pid` and its fds for socket inode `inode`; `None` if the process is gone.
pub fn resolve(pid: u32, inode: u32) -> Option<Owner> {
    let p = Process::new(pid as i32).ok()?;
    let stat = p.stat().ok()?;
    let fds = p
        .fd()
        .map(|it| {
            it.filter_map(Result::ok)
                .filter(|fd| matches!(fd.target, FDTarget::Socket(i) if i == inode as u64))
                .map(|fd| fd.fd)
                .collect()
        })
        .unwrap_or_default();
    Some(Owner {
        pid,
        comm: stat.comm,
        fds,
        start_time: stat.starttime,
    })
}
