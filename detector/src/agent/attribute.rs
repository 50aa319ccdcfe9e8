//! Who holds each stalled socket, and handing stalls to the reaper.
use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use super::sweep::Sweep;
use crate::{
    owner,
    reaper::{Reaper, actions::ActionError},
    report::StalledSocket,
    sample::netns::NetnsPool,
};

impl Sweep {
    /// Finds who holds each stalled socket. Cached holders are re-verified (same start time,
    /// fd still the socket); else each last sender's fds are read once for all its sockets;
    /// only sockets their sender no longer holds go into one /proc scan, and a socket nobody
    /// holds is not scanned for again for 30 s.
    pub(super) fn attribute(&mut self, stalled: &[u64]) {
        let now = Instant::now();
        // Sender → (inode → socket) of the sockets whose holders must be found again.
        let mut by_sender: HashMap<u32, HashMap<u32, u64>> = HashMap::new();
        let mut starts = owner::StartTimes::default();
        for &sk in stalled {
            let Some(t) = self.tracker.get(sk) else { continue };
            let Some(inode) = t.last.map(|d| d.inode).filter(|&i| i != 0) else {
                // No file (closed by its owner): nobody can hold it.
                self.holders.remove(&sk);
                continue;
            };
            if self.holders.get(&sk).is_some_and(|hs| !hs.is_empty() && hs.iter().all(|h| owner::still_holds(h, inode, &mut starts))) {
                continue;
            }
            self.holders.remove(&sk);
            by_sender.entry(t.sender.tgid).or_default().insert(inode, sk);
        }
        let mut scan: HashMap<u32, u64> = HashMap::new();
        for (pid, socks) in by_sender {
            let inodes: HashSet<u32> = socks.keys().copied().collect();
            let mut found = if pid == 0 { HashMap::new() } else { owner::holders_in(pid, &inodes) };
            for (inode, sk) in socks {
                match found.remove(&inode) {
                    Some(h) => {
                        self.holders.insert(sk, vec![h]);
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

    /// One /proc pass for the sockets their sender does not hold.
    fn scan_for(&mut self, scan: HashMap<u32, u64>, now: Instant) {
        if scan.is_empty() {
            return;
        }
        let inodes: HashSet<u32> = scan.keys().copied().collect();
        let mut found = owner::scan_holders(&inodes);
        for (inode, sk) in scan {
            match found.remove(&inode) {
                Some(hs) if !hs.is_empty() => {
                    self.unknown_until.remove(&sk);
                    self.holders.insert(sk, hs);
                }
                _ => {
                    self.unknown_until.insert(sk, now + Duration::from_secs(30));
                }
            }
        }
    }

    /// Hands this pass's stalled sockets to the reaper; destroy runs here, in each socket's
    /// own network namespace (the sweep owns the namespace sockets).
    pub(super) fn reap(&self, reaper: &mut Reaper, stalled: &[StalledSocket], pool: &mut NetnsPool) {
        let mut destroy = |s: &StalledSocket| -> Result<(), ActionError> {
            let failed = |e: String| ActionError::Failed(e);
            let t = self.by_cookie(s.socket_cookie).ok_or_else(|| failed("socket no longer tracked".into()))?;
            let conn = pool.conn(t.tuple.netns, Some(t.netns_hint.unwrap_or(t.sender.tgid))).map_err(|e| failed(e.to_string()))?;
            conn.destroy(&t.lookup()).map_err(|e| failed(e.to_string()))
        };
        reaper.tick(stalled, self.now_ms(), &mut destroy);
    }
}
