//! Who holds each stalled socket, and handing stalls to the reaper.
use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use super::sweep::Sweep;
use crate::{
    owner,
    reaper::{
        Reaper, SkipWhy,
        actions::{self, ActionError},
    },
    report::StalledSocket,
    sample::netns::NetnsPool,
};

/// How long a stalled socket's holders are trusted without reading their fd again. Whether
/// each holder is still the same process (its pidfd, one poll per pass for all holders: see
/// [`owner::Pinned`]) is checked every pass; the readlink of its fd, one per socket, only
/// this often.
/// Actions do not rely on it: each one proves its target right before acting (see
/// `reaper::actions` and [`Sweep::reap`]).
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

impl Sweep {
    /// Finds who holds each stalled socket. Cached holders are re-verified (see
    /// [`Holders::still_valid`]); else the fds of each last sender and of its relatives (the
    /// processes a fork can have handed the socket to: its workers, its parent) are read once
    /// for all its sockets. Sockets none of them holds, and those an action found held by
    /// another process too (`full_scan`: an fd passed to an unrelated process), go into one
    /// /proc scan; a socket nobody holds is not scanned for again for 30 s.
    pub(super) fn attribute(&mut self, stalled: &[u64]) {
        let now = Instant::now();
        // Sender → (inode → socket) of the sockets whose holders must be found again.
        let mut by_sender: HashMap<u32, HashMap<u32, u64>> = HashMap::new();
        let mut starts = owner::StartTimes::default();
        self.pinned.refresh();
        for &sk in stalled {
            let Some(t) = self.tracker.get(sk) else { continue };
            let Some(inode) = t.last.map(|d| d.inode).filter(|&i| i != 0) else {
                // No file (closed by its owner): nobody can hold it.
                self.holders.remove(&sk);
                continue;
            };
            if self.holders.get_mut(&sk).is_some_and(|hs| hs.still_valid(inode, &mut self.pinned, &mut starts, now)) {
                continue;
            }
            self.holders.remove(&sk);
            let pid = if self.full_scan.contains(&sk) { 0 } else { t.sender.tgid };
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

    /// Whether every holder of the stalled socket `sk` holds it right now (one readlink each,
    /// whatever `HOLDERS_RECHECK` says): what a destroy proves before it runs, since its
    /// selector may have matched on them. A socket held by nobody known has nothing to prove.
    fn holders_hold_now(&self, sk: u64, inode: u32) -> Result<(), String> {
        let mut starts = owner::StartTimes::default();
        match self.holders.get(&sk) {
            Some(hs) if !hs.list.iter().all(|h| owner::still_holds(h, inode, &mut starts)) => {
                Err(format!("its holders changed since detection (pid {:?}); attributed again next pass", hs.list.iter().map(|h| h.pid).collect::<Vec<_>>()))
            }
            _ => Ok(()),
        }
    }

    /// One /proc pass for the sockets their sender does not hold.
    fn scan_for(&mut self, scan: HashMap<u32, u64>, now: Instant) {
        if scan.is_empty() {
            return;
        }
        let inodes: HashSet<u32> = scan.keys().copied().collect();
        let mut found = owner::scan_holders(&inodes);
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

    /// Hands this pass's stalled sockets to the reaper; destroy runs here, in each socket's
    /// own network namespace (the sweep owns the namespace sockets). A socket whose action was
    /// skipped because its owner or holders changed is attributed afresh at the next pass, by a
    /// pass over /proc (a holder outside its sender's family was seen).
    pub(super) fn reap(&mut self, reaper: &mut Reaper, stalled: &[StalledSocket], pool: &mut NetnsPool) {
        for cookie in self.reap_once(reaper, stalled, pool) {
            if let Some(sk) = self.by_cookie(cookie).map(|t| t.sk) {
                self.holders.remove(&sk);
                self.full_scan.insert(sk);
            }
        }
    }

    fn reap_once(&self, reaper: &mut Reaper, stalled: &[StalledSocket], pool: &mut NetnsPool) -> Vec<u64> {
        let mut prove = |s: &StalledSocket| -> Result<(), ActionError> {
            let t = self.by_cookie(s.socket_cookie).ok_or_else(|| ActionError::Failed("socket no longer tracked".into()))?;
            if let Some(h) = s.holders.iter().find(|h| h.fds.first().is_some_and(|&fd| actions::holder_in_repair(h.pid, fd))) {
                return Err(ActionError::Skip(SkipWhy::InRepair, format!("pid {} holds it in TCP_REPAIR: a checkpoint holds it", h.pid)));
            }
            self.holders_are_all(t.sk, s.inode).map_err(|why| ActionError::Skip(SkipWhy::OwnerChanged, why))
        };
        let mut destroy = |s: &StalledSocket| -> Result<(), ActionError> {
            let failed = |e: String| ActionError::Failed(e);
            let t = self.by_cookie(s.socket_cookie).ok_or_else(|| failed("socket no longer tracked".into()))?;
            self.holders_hold_now(t.sk, s.inode).map_err(|why| ActionError::Skip(SkipWhy::OwnerChanged, why))?;
            // A process in the socket's namespace: the one that found it, its owner, its sender.
            let hint = t.netns_hint.or(s.pid).unwrap_or(t.sender.tgid);
            let conn = pool.conn(t.tuple.netns, Some(hint)).map_err(|e| failed(e.to_string()))?;
            conn.destroy(&t.lookup()).map_err(|e| failed(e.to_string()))
        };
        reaper.tick(stalled, self.now_ms(), &mut prove, &mut destroy)
    }

    /// Whether the holders the report names are every process holding the socket right now:
    /// one pass over /proc, made before any action (so the protected list and the selector saw
    /// them all, an fd passed to an unrelated process included). Actions are rate-limited, and
    /// so is this.
    fn holders_are_all(&self, sk: u64, inode: u32) -> Result<(), String> {
        let known: HashSet<u32> = self.holders.get(&sk).map(|hs| hs.list.iter().map(|h| h.pid).collect()).unwrap_or_default();
        let mut found = owner::scan_holders(&HashSet::from([inode]));
        let now: HashSet<u32> = found.remove(&inode).unwrap_or_default().iter().map(|h| h.pid).collect();
        if now.is_subset(&known) {
            return Ok(());
        }
        let extra: Vec<u32> = now.difference(&known).copied().collect();
        Err(format!("held also by pid {extra:?}, not among its holders yet; attributed again next pass"))
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
        use super::super::sweep::{Config, Sweep};
        let mut s = Sweep::new(Config {
            grace: Duration::from_secs(3),
            close_wait_grace: Duration::from_secs(300),
            trickle: Default::default(),
            max_tracked: 25_000,
            interval: Duration::from_secs(1),
            reconcile_cpu: 0.001,
            pod_logs_dir: "/nonexistent".into(),
        });
        let (sock, inode, hs) = me_holding();
        s.holders.insert(7, hs);
        assert!(s.holders_hold_now(7, inode).is_ok());
        assert!(s.holders_hold_now(8, inode).is_ok(), "held by nobody known: nothing to prove");
        drop(sock);
        let err = s.holders_hold_now(7, inode).unwrap_err();
        assert!(err.contains("holders changed"), "{err}");
    }
}
