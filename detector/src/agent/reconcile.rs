//! The reconcile: one pass per network namespace (the kernel's TCP iterator, or a sock_diag
//! dump) adds what no send hook announced.
use std::{collections::HashSet, time::Duration, time::Instant};

use detector_common::{SockTuple, TCP_CLOSE_WAIT};

use super::sweep::Sweep;
use crate::sample::{
    netns::{self, NetnsPool},
    scan::Scanner,
};

impl Sweep {
    /// How often: often enough that a socket found only by a dump (its wedged send began before
    /// the agent, or it never filled its send buffer) is judged well within a grace window;
    /// rarely enough that the dump (every socket of the node) stays cheap.
    pub fn reconcile_every(&self) -> Duration {
        (self.cfg.grace / 3).clamp(Duration::from_millis(250), Duration::from_secs(10))
    }

    /// Adds every socket that is stuck (bytes queued, or CLOSE_WAIT) and not tracked: sockets
    /// wedged before the agent started, CLOSE_WAIT sockets that never sent, sends that block on
    /// their first call, owners that closed with data queued. Returns how many it added.
    pub fn reconcile(&mut self, pool: &mut NetnsPool, mut scanner: Option<&mut Scanner>) -> usize {
        self.last_reconcile = Instant::now();
        let mut seeded = 0;
        for (inum, pid) in netns::all_netns() {
            let found = match scanner.as_deref_mut() {
                Some(s) => s.stuck(pool, inum, Some(pid)),
                None => pool.conn(inum, Some(pid)).and_then(|c| Ok(c.dump_judged()?)),
            };
            let dumped = match found {
                Ok(d) => d,
                Err(e) => {
                    log::warn!("dump of network namespace {inum}: {e}");
                    continue;
                }
            };
            for d in dumped.into_iter().filter(|d| d.send_queue > 0 || d.state == TCP_CLOSE_WAIT) {
                let mut tuple =
                    SockTuple { family: d.family, sport: d.local_port, dport: d.remote_port, netns: inum, bound_dev_if: d.ifindex, ..SockTuple::default() };
                put_addr(&mut tuple.saddr, d.local);
                put_addr(&mut tuple.daddr, d.remote);
                seeded += usize::from(self.tracker.seed(d.cookie, tuple, d.state, pid));
            }
        }
        let used: HashSet<u32> = self.tracker.iter().map(|t| t.tuple.netns).collect();
        pool.retain(|inum| used.contains(&inum));
        seeded
    }
}

fn put_addr(out: &mut [u8; 16], a: std::net::IpAddr) {
    match a {
        std::net::IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        std::net::IpAddr::V6(v6) => *out = v6.octets(),
    }
}
