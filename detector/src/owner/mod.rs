//! Who holds a socket now: processes and their fds, verified against /proc/<pid>/fd, with
//! their cgroup, container and pod. Done for stalled sockets only: the last sender is checked
//! first (one /proc/<pid>/fd walk); only when it no longer holds the socket (it exited, forked
//! and closed, or passed the fd on) is /proc scanned, once per sweep for all such sockets.
pub mod cgroup;
pub mod pods;

use std::{
    collections::{HashMap, HashSet},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use procfs::process::{FDTarget, Process};
use serde::{Deserialize, Serialize};

/// Text shared between a holder and every report line that names it: the sweep rebuilds the
/// report of each stalled socket every pass, and a clone of these is a reference count, not a
/// copy of a command line or a cgroup path.
pub type Text = std::sync::Arc<str>;

/// One process holding the socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    /// Process name (`/proc/<pid>/comm`, the main thread's).
    pub comm: Text,
    pub exe: Option<Text>,
    /// The command line, shortened.
    pub cmdline: Text,
    /// Start time in clock ticks since boot: with the pid, names the process even if the pid
    /// is reused later.
    pub start_time: u64,
    /// Every fd of this process that refers to the socket.
    pub fds: Vec<i32>,
    /// cgroup path (v2, else the v1 path naming a container).
    pub cgroup: Option<Text>,
    pub container_id: Option<Text>,
    pub pod_uid: Option<Text>,
    /// The program image the process runs (executable's device and inode, and where exec
    /// placed its code and stack): another value after an exec, even of the same file.
    #[serde(default)]
    pub image: Option<Text>,
}

const CMDLINE_MAX: usize = 160;

/// Process `pid` as the holder of each of `inodes` it holds, from one pass over its fds (a
/// server with 10,000 connections is read once, not once per socket).
pub fn holders_in(pid: u32, inodes: &HashSet<u32>) -> HashMap<u32, Holder> {
    let Ok(p) = Process::new(pid as i32) else { return HashMap::new() };
    socket_fds(&p, inodes).into_iter().filter_map(|(inode, fds)| Some((inode, describe(&p, fds)?))).collect()
}

/// The fds of `p` that are any of `inodes`, by inode.
fn socket_fds(p: &Process, inodes: &HashSet<u32>) -> HashMap<u32, Vec<i32>> {
    let mut mine: HashMap<u32, Vec<i32>> = HashMap::new();
    for fd in p.fd().into_iter().flatten().filter_map(Result::ok) {
        if let FDTarget::Socket(i) = fd.target
            && inodes.contains(&(i as u32))
        {
            mine.entry(i as u32).or_default().push(fd.fd);
        }
    }
    mine
}

/// See [`Holder::image`].
pub fn image_of(p: &Process) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let stat = p.stat().ok()?;
    let exe = std::fs::metadata(format!("/proc/{}/exe", p.pid)).ok()?;
    Some(format!("{}:{}:{:x}:{:x}", exe.dev(), exe.ino(), stat.startcode, stat.startstack))
}

fn describe(p: &Process, fds: Vec<i32>) -> Option<Holder> {
    let stat = p.stat().ok()?;
    let mut cmdline = p.cmdline().map(|a| a.join(" ")).unwrap_or_default();
    if cmdline.len() > CMDLINE_MAX {
        let mut cut = CMDLINE_MAX;
        while !cmdline.is_char_boundary(cut) {
            cut -= 1;
        }
        cmdline.truncate(cut);
        cmdline.push('…');
    }
    let cg = cgroup_of(p.pid as u32);
    Some(Holder {
        pid: p.pid as u32,
        comm: stat.comm.into(),
        exe: p.exe().ok().map(|e| e.display().to_string().into()),
        cmdline: cmdline.into(),
        start_time: stat.starttime,
        fds,
        container_id: cg.as_deref().and_then(cgroup::container_id).map(Into::into),
        pod_uid: cg.as_deref().and_then(cgroup::pod_uid).map(Into::into),
        cgroup: cg.map(Into::into),
        image: image_of(p).map(Into::into),
    })
}

/// The cgroup path of process `pid` (v2, else the v1 path naming a container).
pub fn cgroup_of(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok().and_then(|s| cgroup::primary_path(&s))
}

/// Processes' start times, each read at most once (per pass: a holder of many stalled
/// sockets is checked once, not once per socket).
#[derive(Default)]
pub struct StartTimes(HashMap<u32, Option<u64>>);

impl StartTimes {
    pub fn of(&mut self, pid: u32) -> Option<u64> {
        *self.0.entry(pid).or_insert_with(|| std::fs::read(format!("/proc/{pid}/stat")).ok().and_then(|b| start_time_in(&b)))
    }
}

/// The start time (field 22) in the text of `/proc/<pid>/stat`: counted from after the last
/// `)`, since the name before it (field 2) may hold spaces and parentheses. Read when a holder
/// is pinned (see [`Pinned`]) and when an action proves its target.
fn start_time_in(stat: &[u8]) -> Option<u64> {
    let after = stat.iter().rposition(|&b| b == b')')? + 1;
    // Fields 3.. follow the name: the start time is the 20th of them.
    let field = stat[after..].split(|&b| b == b' ').filter(|f| !f.is_empty()).nth(19)?;
    std::str::from_utf8(field).ok()?.trim().parse().ok()
}

/// Still the same process (its start time, read once per pass through `starts`), still holding
/// the socket through its first fd (one readlink).
pub fn still_holds(h: &Holder, inode: u32, starts: &mut StartTimes) -> bool {
    starts.of(h.pid) == Some(h.start_time) && holds_fd(h, inode)
}

/// Whether the holder's first fd is the socket (one readlink; the process is checked apart).
pub fn holds_fd(h: &Holder, inode: u32) -> bool {
    h.fds.first().is_some_and(|fd| std::fs::read_link(format!("/proc/{}/fd/{fd}", h.pid)).is_ok_and(|l| l.to_string_lossy() == format!("socket:[{inode}]")))
}

/// Holder processes pinned by pidfds, kept from pass to pass. A pidfd names one process for
/// good and becomes readable when it exits, so whether every holder is still the process that
/// was found is one `poll` over all of them per pass, instead of reading each one's
/// /proc/<pid>/stat (an open, a read and a parse per holder per pass). A process is pinned
/// the first time it is asked about: its pidfd is opened, then its start time read and
/// compared (the pid could name another process by then), then the pidfd polled once (a
/// zombie keeps its start time but holds no files).
pub struct Pinned {
    /// (pid, start time) → its pidfd; `None` where no pidfd could be opened for a process
    /// that is there (no pidfd support): its start time is read at every check instead.
    fds: HashMap<(u32, u64), Option<OwnedFd>>,
    /// At most this many pins ([`PIN_MAX`]).
    cap: usize,
}

impl Default for Pinned {
    fn default() -> Self {
        Pinned::with_cap(PIN_MAX)
    }
}

impl Pinned {
    /// Pins at most `cap` processes; past it, the others are checked by their start time.
    pub fn with_cap(cap: usize) -> Self {
        Pinned { fds: HashMap::new(), cap }
    }

    /// Drops the processes that exited since the last call: one `poll` for all.
    pub fn refresh(&mut self) {
        let (keys, mut polls): (Vec<(u32, u64)>, Vec<libc::pollfd>) =
            self.fds.iter().filter_map(|(k, fd)| Some((*k, libc::pollfd { fd: fd.as_ref()?.as_raw_fd(), events: libc::POLLIN, revents: 0 }))).unzip();
        if polls.is_empty() || poll_now(&mut polls).is_err() {
            // Nothing pinned, or the poll failed: forget every pin, each is opened and
            // checked again when next asked about.
            self.fds.clear();
            return;
        }
        for (k, p) in keys.iter().zip(&polls) {
            if p.revents != 0 {
                self.fds.remove(k);
            }
        }
    }

    /// Whether `pid` is still the process that started at `start_time`.
    pub fn alive(&mut self, pid: u32, start_time: u64, starts: &mut StartTimes) -> bool {
        match self.fds.get(&(pid, start_time)) {
            Some(Some(_)) => return true,
            Some(None) => return starts.of(pid) == Some(start_time),
            None if self.fds.len() >= self.cap => return starts.of(pid) == Some(start_time),
            None => {}
        }
        match pin(pid, start_time, starts) {
            Ok(fd) => {
                self.fds.insert((pid, start_time), fd);
                true
            }
            Err(()) => false,
        }
    }

    /// Keeps the pins of the processes `keep` says are still of use.
    pub fn retain(&mut self, mut keep: impl FnMut(u32, u64) -> bool) {
        self.fds.retain(|&(pid, start), _| keep(pid, start));
    }

    pub fn len(&self) -> usize {
        self.fds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }
}

/// At most this many processes are pinned (one descriptor each, in an agent whose descriptor
/// limit is the node's default); past it, holders are checked by their start time, as each
/// was before pinning.
pub const PIN_MAX: usize = 256;

/// Opens the pidfd of `pid` and proves it is the process that started at `start_time` and has
/// not exited: `Ok(None)` when the kernel gives no pidfd but the start time matches.
fn pin(pid: u32, start_time: u64, starts: &mut StartTimes) -> Result<Option<OwnedFd>, ()> {
    let fd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            let gone = e.raw_os_error() == Some(libc::ESRCH);
            return if !gone && starts.of(pid) == Some(start_time) { Ok(None) } else { Err(()) };
        }
    };
    // Read after the open: a match means the pidfd names that process (the start time of a
    // process that took the pid after the one pinned exited would differ).
    if StartTimes::default().of(pid) != Some(start_time) {
        return Err(());
    }
    let mut p = [libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
    match poll_now(&mut p) {
        Ok(()) if p[0].revents == 0 => Ok(Some(fd)),
        _ => Err(()),
    }
}

/// A pidfd naming process `pid` (`ESRCH` when there is none).
pub fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: a plain syscall with integer arguments; the descriptor returned is ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `poll` without waiting.
fn poll_now(fds: &mut [libc::pollfd]) -> std::io::Result<()> {
    // SAFETY: `fds` is a valid array of `fds.len()` pollfd structures for the call.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// The most relatives of a sender searched for holders (a pre-forking server's workers, its
/// supervisor): past it, a socket held elsewhere is found by the pass over /proc an action
/// makes anyway (see `agent::attribute`).
const RELATIVES_MAX: usize = 256;

/// The processes a socket can have reached by fork from `pid`: its ancestors up to (not
/// including) init, and its descendants (the children of each of its threads), breadth first.
pub fn relatives(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut up = pid;
    while out.len() < RELATIVES_MAX {
        let Some(ppid) = std::fs::read(format!("/proc/{up}/stat")).ok().and_then(|b| parent_in(&b)) else { break };
        if ppid <= 1 || out.contains(&ppid) {
            break;
        }
        out.push(ppid);
        up = ppid;
    }
    let mut queue = std::collections::VecDeque::from([pid]);
    while let Some(p) = queue.pop_front() {
        for t in std::fs::read_dir(format!("/proc/{p}/task")).into_iter().flatten().flatten() {
            let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            for c in kids.split_whitespace().filter_map(|c| c.parse::<u32>().ok()) {
                if out.len() >= RELATIVES_MAX {
                    return out;
                }
                if c != pid && !out.contains(&c) {
                    out.push(c);
                    queue.push_back(c);
                }
            }
        }
    }
    out
}

/// The parent pid (field 4) in the text of `/proc/<pid>/stat`.
fn parent_in(stat: &[u8]) -> Option<u32> {
    let after = stat.iter().rposition(|&b| b == b')')? + 1;
    let field = stat[after..].split(|&b| b == b' ').filter(|f| !f.is_empty()).nth(1)?;
    std::str::from_utf8(field).ok()?.trim().parse().ok()
}

/// Every holder of `inodes` among `pid` and its relatives (see [`relatives`]).
pub fn holders_near(pid: u32, inodes: &HashSet<u32>) -> HashMap<u32, Vec<Holder>> {
    let mut found: HashMap<u32, Vec<Holder>> = HashMap::new();
    for p in std::iter::once(pid).chain(relatives(pid)) {
        for (inode, h) in holders_in(p, inodes) {
            found.entry(inode).or_default().push(h);
        }
    }
    found
}

/// One pass over /proc: every process holding any of `inodes`.
pub fn holders_anywhere(inodes: &HashSet<u32>) -> HashMap<u32, Vec<Holder>> {
    let mut found: HashMap<u32, Vec<Holder>> = HashMap::new();
    if inodes.is_empty() {
        return found;
    }
    let Ok(all) = procfs::process::all_processes() else {
        return found;
    };
    for p in all.filter_map(Result::ok) {
        for (inode, fds) in socket_fds(&p, inodes) {
            if let Some(h) = describe(&p, fds) {
                found.entry(inode).or_default().push(h);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use detector_tests::Peer;

    use super::start_time_in;

    /// A `sleep` child, killed and reaped when dropped (so a failing test leaves no process).
    fn sleeper() -> Peer {
        Peer::spawn("sleep", &["600"])
    }

    #[test]
    fn a_child_and_the_parent_chain_are_relatives() {
        let child = sleeper();
        let rel = super::relatives(std::process::id());
        assert!(rel.contains(&child.pid()), "{rel:?}");
        assert!(!rel.contains(&1) && !rel.contains(&std::process::id()), "{rel:?}");
        let up = super::relatives(child.pid());
        assert!(up.contains(&std::process::id()), "its parent: {up:?}");
        assert_eq!(super::parent_in(b"42 (a) b) S 7 42 42 0\n"), Some(7));
    }

    #[test]
    fn the_start_time_is_read_after_a_name_with_spaces_and_parentheses() {
        let stat = b"4242 (a b) (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 1 0 987654 1000 10 18446744073709551615\n";
        assert_eq!(start_time_in(stat), Some(987654));
        assert_eq!(start_time_in(b"4242 (x) S 1"), None, "cut short");
        assert_eq!(start_time_in(b"no name here"), None);
    }

    #[test]
    fn a_pinned_process_is_alive_until_it_exits_zombie_or_reaped_and_never_another() {
        let mut child = sleeper();
        let pid = child.pid();
        let start = super::StartTimes::default().of(pid).unwrap();
        let (mut pinned, mut starts) = (super::Pinned::default(), super::StartTimes::default());
        assert!(!pinned.alive(pid, start + 1, &mut starts), "another start time: another process");
        assert!(pinned.is_empty(), "nothing pinned for a process that is not the one asked about");
        assert!(pinned.alive(pid, start, &mut starts));
        pinned.refresh();
        assert!(pinned.alive(pid, start, &mut starts), "pinned and running");
        assert_eq!(pinned.len(), 1);
        child.signal(libc::SIGKILL);
        // A zombie until waited for: its start time is still there, but it holds nothing.
        let zombie = || procfs::process::Process::new(pid as i32).and_then(|p| p.stat()).is_ok_and(|s| s.state == 'Z');
        let t0 = std::time::Instant::now();
        while !zombie() {
            assert!(t0.elapsed() < std::time::Duration::from_secs(60), "the killed child never became a zombie");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        pinned.refresh();
        assert!(pinned.is_empty(), "the exit is seen by the poll");
        assert!(!pinned.alive(pid, start, &mut super::StartTimes::default()), "a zombie is not pinned again");
        assert!(child.wait_exit(std::time::Duration::from_secs(60)), "the killed child was not reaped");
        pinned.refresh();
        assert!(!pinned.alive(pid, start, &mut super::StartTimes::default()), "reaped");
        assert!(pinned.is_empty());
    }

    #[test]
    fn past_the_cap_a_holder_is_checked_by_its_start_time_and_never_pinned() {
        let mut children: Vec<Peer> = (0..2).map(|_| sleeper()).collect();
        let ids: Vec<(u32, u64)> = children.iter().map(|c| (c.pid(), super::StartTimes::default().of(c.pid()).unwrap())).collect();
        let mut pinned = super::Pinned::with_cap(1);
        assert!(pinned.alive(ids[0].0, ids[0].1, &mut super::StartTimes::default()));
        for _ in 0..2 {
            assert!(pinned.alive(ids[1].0, ids[1].1, &mut super::StartTimes::default()), "past the cap, running: alive");
            assert!(!pinned.alive(ids[1].0, ids[1].1 + 1, &mut super::StartTimes::default()), "past the cap, another start time");
            assert_eq!(pinned.len(), 1, "nothing pinned past the cap");
        }
        drop(children.pop());
        pinned.refresh();
        assert!(!pinned.alive(ids[1].0, ids[1].1, &mut super::StartTimes::default()), "past the cap, exited");
        assert!(pinned.alive(ids[0].0, ids[0].1, &mut super::StartTimes::default()), "the pinned one still runs");
        drop(children);
        pinned.refresh();
        assert!(pinned.is_empty());
    }

    #[test]
    fn pins_of_processes_no_longer_holding_anything_are_released() {
        let me = super::StartTimes::default().of(std::process::id()).unwrap();
        let mut pinned = super::Pinned::default();
        assert!(pinned.alive(std::process::id(), me, &mut super::StartTimes::default()));
        pinned.retain(|_, _| true);
        assert_eq!(pinned.len(), 1);
        pinned.retain(|_, _| false);
        assert!(pinned.is_empty());
    }

    #[test]
    fn the_start_time_of_this_process_is_what_procfs_reads() {
        let me = procfs::process::Process::myself().unwrap().stat().unwrap().starttime;
        assert_eq!(super::StartTimes::default().of(std::process::id()), Some(me));
    }
}
