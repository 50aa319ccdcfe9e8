//! Who holds a socket now: processes and their fds, verified against /proc/<pid>/fd, with
//! their cgroup, container and pod. Done for stalled sockets only: the last sender is checked
//! first (one /proc/<pid>/fd walk); only when it no longer holds the socket (it exited, forked
//! and closed, or passed the fd on) is /proc scanned, once per sweep for all such sockets.
pub mod cgroup;
pub mod pods;

use std::collections::{HashMap, HashSet};

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
/// `)`, since the name before it (field 2) may hold spaces and parentheses. One read of one
/// file, every pass for every holder of a stalled socket.
fn start_time_in(stat: &[u8]) -> Option<u64> {
    let after = stat.iter().rposition(|&b| b == b')')? + 1;
    // Fields 3.. follow the name: the start time is the 20th of them.
    let field = stat[after..].split(|&b| b == b' ').filter(|f| !f.is_empty()).nth(19)?;
    std::str::from_utf8(field).ok()?.trim().parse().ok()
}

/// Still the same process (its start time, read once per pass through `starts`), still holding
/// the socket through its first fd (one readlink).
pub fn still_holds(h: &Holder, inode: u32, starts: &mut StartTimes) -> bool {
    starts.of(h.pid) == Some(h.start_time)
        && h.fds
            .first()
            .is_some_and(|fd| std::fs::read_link(format!("/proc/{}/fd/{fd}", h.pid)).is_ok_and(|l| l.to_string_lossy() == format!("socket:[{inode}]")))
}

/// One pass over /proc: every process holding any of `inodes`.
pub fn scan_holders(inodes: &HashSet<u32>) -> HashMap<u32, Vec<Holder>> {
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
    use super::start_time_in;

    #[test]
    fn the_start_time_is_read_after_a_name_with_spaces_and_parentheses() {
        let stat = b"4242 (a b) (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 1 0 987654 1000 10 18446744073709551615\n";
        assert_eq!(start_time_in(stat), Some(987654));
        assert_eq!(start_time_in(b"4242 (x) S 1"), None, "cut short");
        assert_eq!(start_time_in(b"no name here"), None);
    }

    #[test]
    fn the_start_time_of_this_process_is_what_procfs_reads() {
        let me = procfs::process::Process::myself().unwrap().stat().unwrap().starttime;
        assert_eq!(super::StartTimes::default().of(std::process::id()), Some(me));
    }
}
