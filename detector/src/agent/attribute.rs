//! Who holds each stalled socket: the attribution, owned by the sweep and asked through a
//! narrow interface (find the holders of these sockets, name them, prove them before an
//! action, forget the sockets no longer stalled). It knows no socket table: the sweep hands it
//! each stalled socket's id, inode and last sender.
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::owner::{
    self,
    pods::{PodName, PodNames},
};

/// How long a stalled socket's holders are trusted without reading their fd again. Whether
/// each holder is still the same process (its pidfd, one poll per pass for all holders: see
/// [`owner::Pinned`]) is checked every pass; the readlink of its fd, one per socket, only
/// this often.
/// Actions do not rely on it: each one proves its target right before acting (see
/// `reaper::actions` and `agent::reap`).
pub const HOLDERS_RECHECK: Duration = Duration::from_secs(30);

/// The processes found holding a stalled socket, and when their fds were last read.
#[derive(Debug, Clone)]
pub struct Holders {
    pub list: std::sync::Arc<[owner::Holder]>,
    pub checked: Instant,
}

impl Holders {
    fn new(list: Vec<owner::Holder>, now: Instant) -> Self {
        Holders { list: list.into(), checked: now }
    }

    /// Still the same processes (pinned, see [`owner::Pinned`]); and, when their fds were last
    /// read `HOLDERS_RECHECK` ago or more, still holding the socket through them (then
    /// `checked` moves to `now`).
    fn still_valid(&mut self, inode: u32, pinned: &mut owner::Pinned, starts: &mut owner::StartTimes, now: Instant) -> bool {
        if self.list.is_empty() || !self.list.iter().all(|h| pinned.alive(h.pid, h.start_time, starts)) {
            return false;
        }
        if now.duration_since(self.checked) < HOLDERS_RECHECK {
            return true;
        }
        self.checked = now;
        self.list.iter().all(|h| owner::holds_fd(h, inode))
    }
}

/// A stalled socket to attribute: its id in the table, its inode (0: no file, closed by its
/// owner) and its last sender's pid (0: none known).
#[derive(Debug, Clone, Copy)]
pub struct Stalled {
    pub sk: u64,
    pub inode: u32,
    pub sender: u32,
}

/// The holders of the stalled sockets, what pins them, and the pods they run in.
pub struct Attribution {
    /// Stalled socket → its holders (re-verified as `HOLDERS_RECHECK` says).
    holders: HashMap<u64, Holders>,
    /// The processes among those holders, pinned by pidfds (see [`owner::Pinned`]).
    pinned: owner::Pinned,
    /// Stalled sockets no process was found to hold: not scanned for again before this time.
    unknown_until: HashMap<u64, Instant>,
    /// Stalled sockets an action found held by a process their attribution did not name: their
    /// holders are found by a pass over /proc next time.
    full_scan: HashSet<u64>,
    pods: PodNames,
    /// Sender pid → its pod (`namespace/name`), for `detector sockets`.
    pod_of: HashMap<u32, Option<String>>,
}

impl Attribution {
    pub fn new(pod_logs_dir: std::path::PathBuf) -> Self {
        Attribution {
            holders: HashMap::new(),
            pinned: owner::Pinned::default(),
            unknown_until: HashMap::new(),
            full_scan: HashSet::new(),
            pods: PodNames::new(pod_logs_dir),
            pod_of: HashMap::new(),
        }
    }

    /// Finds who holds each stalled socket. Cached holders are re-verified (see
    /// [`Holders::still_valid`]); else the fds of each last sender and of its relatives (the
    /// processes a fork can have handed the socket to: its workers, its parent) are read once
    /// for all its sockets. Sockets none of them holds, and those an action found held by
    /// another process too (`full_scan`: an fd passed to an unrelated process), go into one
    /// /proc scan; a socket nobody holds is not scanned for again for 30 s.
    pub fn attribute(&mut self, stalled: impl IntoIterator<Item = Stalled>) {
        let now = Instant::now();
        // Sender → (inode → socket) of the sockets whose holders must be found again.
        let mut by_sender: HashMap<u32, HashMap<u32, u64>> = HashMap::new();
        let mut starts = owner::StartTimes::default();
        self.pinned.refresh();
        for Stalled { sk, inode, sender } in stalled {
            if inode == 0 {
                // No file (closed by its owner): nobody can hold it.
                self.holders.remove(&sk);
                continue;
            }
            if self.holders.get_mut(&sk).is_some_and(|hs| hs.still_valid(inode, &mut self.pinned, &mut starts, now)) {
                continue;
            }
            self.holders.remove(&sk);
            let pid = if self.full_scan.contains(&sk) { 0 } else { sender };
            by_sender.entry(pid).or_default().insert(inode, sk);
        }
        let mut scan: HashMap<u32, u64> = HashMap::new();
        for (pid, socks) in by_sender {
            let inodes: HashSet<u32> = socks.keys().copied().collect();
            let mut found = if pid == 0 { HashMap::new() } else { owner::holders_near(pid, &inodes) };
            for (inode, sk) in socks {
                match found.remove(&inode) {
                    Some(hs) => {
                        self.holders.insert(sk, Holders::new(hs, now));
                    }
                    None if self.unknown_until.get(&sk).is_none_or(|&u| now >= u) => {
                        scan.insert(inode, sk);
                    }
                    None => {}
                }
            }
        }
        self.scan_for(scan, now);
    }

    /// The holders found for `sk` (none known: empty).
    pub fn holders_of(&self, sk: u64) -> Arc<[owner::Holder]> {
        self.holders.get(&sk).map_or_else(|| Arc::new([]) as Arc<[owner::Holder]>, |h| h.list.clone())
    }

    /// The pod a holder's cgroup names, if the node's pod logs know it.
    pub fn pod(&mut self, uid: &str) -> Option<&PodName> {
        self.pods.get(uid)
    }

    /// Forgets every socket but `live` (the stalled sockets reported in detail), and unpins the
    /// processes no remaining socket names.
    pub fn keep_only(&mut self, live: &HashSet<u64>) {
        self.holders.retain(|sk, _| live.contains(sk));
        self.unknown_until.retain(|sk, _| live.contains(sk));
        self.full_scan.retain(|sk| live.contains(sk));
        let held: HashSet<(u32, u64)> = self.holders.values().flat_map(|hs| hs.list.iter().map(|h| (h.pid, h.start_time))).collect();
        self.pinned.retain(|pid, start| held.contains(&(pid, start)));
    }

    /// An action found `sk` held by a process its attribution did not name: its holders are
    /// found afresh at the next pass, by a pass over /proc.
    pub fn suspect(&mut self, sk: u64) {
        self.holders.remove(&sk);
        self.full_scan.insert(sk);
    }

    /// Whether every holder of the stalled socket `sk` holds it right now (one readlink each,
    /// whatever `HOLDERS_RECHECK` says): what a destroy proves before it runs, since its
    /// selector may have matched on them. A socket held by nobody known has nothing to prove.
    pub fn hold_now(&self, sk: u64, inode: u32) -> Result<(), String> {
        let mut starts = owner::StartTimes::default();
        match self.holders.get(&sk) {
            Some(hs) if !hs.list.iter().all(|h| owner::still_holds(h, inode, &mut starts)) => {
                Err(format!("its holders changed since detection (pid {:?}); attributed again next pass", hs.list.iter().map(|h| h.pid).collect::<Vec<_>>()))
            }
            _ => Ok(()),
        }
    }

    /// Whether the holders the report names are every process holding the socket right now:
    /// one pass over /proc, made before any action (so the protected list and the selector saw
    /// them all, an fd passed to an unrelated process included). Actions are rate-limited, and
    /// so is this.
    pub fn are_all(&self, sk: u64, inode: u32) -> Result<(), String> {
        let known: HashSet<u32> = self.holders.get(&sk).map(|hs| hs.list.iter().map(|h| h.pid).collect()).unwrap_or_default();
        let mut found = owner::holders_anywhere(&HashSet::from([inode]));
        let now: HashSet<u32> = found.remove(&inode).unwrap_or_default().iter().map(|h| h.pid).collect();
        if now.is_subset(&known) {
            return Ok(());
        }
        let extra: Vec<u32> = now.difference(&known).copied().collect();
        Err(format!("held also by pid {extra:?}, not among its holders yet; attributed again next pass"))
    }

    /// The pod (`namespace/name`) of a sender, for `detector sockets`: resolved once per pid,
    /// all forgotten when `refresh` says so (every minute of passes).
    pub fn pod_of_sender(&mut self, pid: u32, refresh: bool) -> Option<String> {
        if refresh {
            self.pod_of.clear();
        }
        if pid == 0 {
            return None;
        }
        let pods = &mut self.pods;
        self.pod_of
            .entry(pid)
            .or_insert_with(|| {
                let uid = owner::cgroup_of(pid).and_then(|p| owner::cgroup::pod_uid(&p))?;
                pods.get(&uid).map(|p| format!("{}/{}", p.namespace, p.name))
            })
            .clone()
    }

    /// One /proc pass for the sockets their sender does not hold.
    fn scan_for(&mut self, scan: HashMap<u32, u64>, now: Instant) {
        if scan.is_empty() {
            return;
        }
        let inodes: HashSet<u32> = scan.keys().copied().collect();
        let mut found = owner::holders_anywhere(&inodes);
        for (inode, sk) in scan {
            self.full_scan.remove(&sk);
            match found.remove(&inode) {
                Some(hs) if !hs.is_empty() => {
                    self.unknown_until.remove(&sk);
                    self.holders.insert(sk, Holders::new(hs, now));
                }
                _ => {
                    self.unknown_until.insert(sk, now + Duration::from_secs(30));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashSet,
        os::{fd::AsRawFd, unix::fs::MetadataExt},
        time::{Duration, Instant},
    };

    use super::{HOLDERS_RECHECK, Holders};
    use crate::owner::{self, Pinned, StartTimes};

    /// This process as the holder of a fresh socket, found the way attribution finds holders.
    fn me_holding() -> (std::net::UdpSocket, u32, Holders) {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let inode = std::fs::metadata(format!("/proc/self/fd/{}", sock.as_raw_fd())).unwrap().ino() as u32;
        let mut found = owner::holders_in(std::process::id(), &HashSet::from([inode]));
        let h = found.remove(&inode).expect("this process holds its own socket");
        (sock, inode, Holders::new(vec![h], Instant::now()))
    }

    #[test]
    fn holders_are_trusted_between_fd_reads_and_dropped_once_a_read_finds_the_fd_gone() {
        let (sock, inode, mut hs) = me_holding();
        let now = Instant::now();
        assert!(hs.still_valid(inode, &mut Pinned::default(), &mut StartTimes::default(), now));
        drop(sock);
        assert!(hs.still_valid(inode, &mut Pinned::default(), &mut StartTimes::default(), now), "within the recheck window the fd is not read again");
        let later = now + HOLDERS_RECHECK;
        assert!(!hs.still_valid(inode, &mut Pinned::default(), &mut StartTimes::default(), later), "the fd is read again and found closed");
    }

    #[test]
    fn a_holder_that_is_another_process_now_is_dropped_at_once() {
        let (_sock, inode, mut hs) = me_holding();
        std::sync::Arc::get_mut(&mut hs.list).expect("held here only")[0].start_time += 1;
        assert!(
            !hs.still_valid(inode, &mut Pinned::default(), &mut StartTimes::default(), Instant::now()),
            "a pid reused by another process is seen every pass"
        );
        let (_sock, inode, mut hs) = me_holding();
        hs.list = Vec::new().into();
        assert!(!hs.still_valid(inode, &mut Pinned::default(), &mut StartTimes::default(), Instant::now() + Duration::from_millis(1)));
    }

    #[test]
    fn a_destroy_proves_the_holders_again_whatever_the_recheck_window_says() {
        let mut a = super::Attribution::new("/nonexistent".into());
        let (sock, inode, hs) = me_holding();
        a.holders.insert(7, hs);
        assert!(a.hold_now(7, inode).is_ok());
        assert!(a.hold_now(8, inode).is_ok(), "held by nobody known: nothing to prove");
        drop(sock);
        let err = a.hold_now(7, inode).unwrap_err();
        assert!(err.contains("holders changed"), "{err}");
    }
}
