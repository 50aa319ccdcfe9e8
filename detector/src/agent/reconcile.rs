//! The reconcile adds what no send hook announced: at start-up, one pass per network
//! namespace (the kernel's TCP iterator, or a sock_diag dump); after it, one pass over every
//! process's files, whatever their namespaces, where the kernel runs it (else per namespace
//! again).
use std::{collections::HashSet, time::Instant};

use detector_common::{SockTuple, TCP_CLOSE_WAIT};

use super::{schedule::thread_cpu, sweep::Sweep};
use crate::sample::{
    Dumped,
    kernel_dump::KernelDump,
    netns::{self, NetnsPool},
};

impl Sweep {
    /// Adds every socket that is stuck (bytes queued, or CLOSE_WAIT) and not tracked: sockets
    /// wedged before the agent started, CLOSE_WAIT sockets that never sent, sends that block on
    /// their first call; the first one also sockets no process holds any more (owners that
    /// closed with data queued) and kernel sockets. Returns how many it added.
    pub fn reconcile(&mut self, pool: &mut NetnsPool, kernel_dump: Option<&mut KernelDump>) -> usize {
        let began = Instant::now();
        let (first, over_files) = (!self.reconciled, kernel_dump.as_ref().is_some_and(|s| s.over_files()));
        // CPU time, not wall time: a busy machine that delays the thread costs it nothing.
        let cpu = thread_cpu();
        let seeded = self.reconcile_all(pool, kernel_dump);
        self.schedule.reconciled(began, thread_cpu().saturating_sub(cpu), first, over_files);
        seeded
    }

    fn reconcile_all(&mut self, pool: &mut NetnsPool, kernel_dump: Option<&mut KernelDump>) -> usize {
        let found = match kernel_dump {
            // The pass over files sees only sockets some process holds; the first reconcile
            // also finds those stuck before the agent started that nobody holds any more.
            Some(s) if self.reconciled => match s.stuck_held(pool) {
                Some(Ok(held)) => {
                    if std::mem::take(&mut self.files_pass_failing) {
                        log::info!("pass over every process's files works again");
                    }
                    held.into_iter().map(|h| (h.netns, h.pid, h.row)).collect()
                }
                Some(Err(e)) => {
                    // Said once while it keeps failing, not at every reconcile.
                    if !std::mem::replace(&mut self.files_pass_failing, true) {
                        log::warn!("pass over every process's files: {e}; each namespace is passed over instead until it works again");
                    } else {
                        log::debug!("pass over every process's files: {e}");
                    }
                    per_namespace(pool, Some(s))
                }
                None => per_namespace(pool, Some(s)),
            },
            s => per_namespace(pool, s),
        };
        self.reconciled = true;
        let mut seeded = 0;
        for (inum, pid, d) in found.into_iter().filter(|(_, _, d)| d.send_queue > 0 || d.state == TCP_CLOSE_WAIT) {
            let mut tuple =
                SockTuple { family: d.family, sport: d.local_port, dport: d.remote_port, netns: inum, bound_dev_if: d.ifindex, ..SockTuple::default() };
            put_addr(&mut tuple.saddr, d.local);
            put_addr(&mut tuple.daddr, d.remote);
            seeded += usize::from(self.judge.tracker.seed(d.cookie, tuple, d.state, pid));
        }
        let used: HashSet<u32> = self.judge.tracker.iter().map(|t| t.tuple.netns).collect();
        pool.retain(|inum| used.contains(&inum));
        seeded
    }
}

/// One pass per network namespace that has a process in it: (namespace, a pid in it, row).
fn per_namespace(pool: &mut NetnsPool, mut kernel_dump: Option<&mut KernelDump>) -> Vec<(u32, u32, Dumped)> {
    let mut found = Vec::new();
    for (inum, pid) in netns::all_netns() {
        let dumped = match kernel_dump.as_deref_mut() {
            Some(s) => s.stuck(pool, inum, Some(pid)),
            None => pool.conn(inum, Some(pid)).and_then(|c| Ok(c.dump_judged()?)),
        };
        match dumped {
            Ok(d) => found.extend(d.into_iter().map(|d| (inum, pid, d))),
            Err(e) => log::warn!("dump of network namespace {inum}: {e}"),
        }
    }
    found
}

fn put_addr(out: &mut [u8; 16], a: std::net::IpAddr) {
    match a {
        std::net::IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        std::net::IpAddr::V6(v6) => *out = v6.octets(),
    }
}
