//! The reconcile adds what no send hook announced: at start-up, one pass per network
//! namespace (the kernel's TCP iterator, or a sock_diag dump); after it, one pass over every
//! process's files, whatever their namespaces, where the kernel runs it (else per namespace
//! again).
use std::{collections::HashSet, time::Duration, time::Instant};

use detector_common::{SockTuple, TCP_CLOSE_WAIT};

use super::sweep::Sweep;
use crate::sample::{
    Dumped,
    kernel_dump::KernelDump,
    netns::{self, NetnsPool},
};

/// The reconcile's CPU budget by default: 0.1 % of a core (`--reconcile-cpu`). A pass per
/// namespace costs mostly the kernel's walk of its established hash table, which all
/// namespaces share, once per namespace; the pass over every process's files that serves after
/// start-up costs a look at each open file instead. What they cost is in BENCHMARKS.md (scale:
/// the reconcile column).
pub const RECONCILE_CPU: f64 = 0.001;
/// ...but runs at least every 5 minutes (a socket found late is listed with its proven age).
const RECONCILE_LONGEST: Duration = Duration::from_secs(300);

/// This thread's CPU time so far.
fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).map(Duration::from).unwrap_or_default()
}

impl Sweep {
    /// How often: often enough that a socket found only by a dump (its wedged send began before
    /// the agent, or it never filled its send buffer) is judged well within a grace window;
    /// rarely enough that the dump stays cheap. A pass per namespace walks the kernel's whole
    /// established hash table once per namespace (it is shared by all of them), so with many
    /// namespaces and no pass over files it can take a second: the interval then stretches to
    /// keep reconciling within `--reconcile-cpu` of a core in CPU time, up to
    /// `RECONCILE_LONGEST` (a socket found late is still listed with the age its kernel clocks
    /// prove).
    pub fn reconcile_every(&self) -> Duration {
        let base = (self.cfg.grace / 3).clamp(Duration::from_millis(250), Duration::from_secs(10));
        let budgeted = Duration::try_from_secs_f64(self.reconcile_took.as_secs_f64() / self.cfg.reconcile_cpu.max(1e-4)).unwrap_or(RECONCILE_LONGEST);
        base.max(budgeted.min(RECONCILE_LONGEST))
    }

    /// Adds every socket that is stuck (bytes queued, or CLOSE_WAIT) and not tracked: sockets
    /// wedged before the agent started, CLOSE_WAIT sockets that never sent, sends that block on
    /// their first call; the first one also sockets no process holds any more (owners that
    /// closed with data queued) and kernel sockets. Returns how many it added.
    pub fn reconcile(&mut self, pool: &mut NetnsPool, kernel_dump: Option<&mut KernelDump>) -> usize {
        self.last_reconcile = Instant::now();
        let (first, over_files) = (!self.reconciled, kernel_dump.as_ref().is_some_and(|s| s.over_files()));
        // CPU time, not wall time: a busy machine that delays the thread costs it nothing.
        let cpu = thread_cpu();
        let seeded = self.reconcile_all(pool, kernel_dump);
        self.reconcile_took = pace_from(first, over_files, thread_cpu().saturating_sub(cpu));
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
            seeded += usize::from(self.tracker.seed(d.cookie, tuple, d.state, pid));
        }
        let used: HashSet<u32> = self.tracker.iter().map(|t| t.tuple.netns).collect();
        pool.retain(|inum| used.contains(&inum));
        seeded
    }
}

/// The cost that sets the pace of the next reconciles: the start-up pass over each namespace
/// says nothing of what the passes over files after it cost (with 100 namespaces, 3 s against
/// milliseconds), so then the first of those runs at the base interval and sets it.
fn pace_from(first: bool, over_files: bool, took: Duration) -> Duration {
    if first && over_files { Duration::ZERO } else { took }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{
        super::sweep::{Config, Sweep},
        RECONCILE_CPU,
    };

    fn config(grace: Duration, reconcile_cpu: f64) -> Config {
        Config {
            grace,
            close_wait_grace: Duration::from_secs(300),
            trickle: Default::default(),
            max_tracked: 25_000,
            interval: Duration::from_secs(1),
            reconcile_cpu,
            pod_logs_dir: "/nonexistent".into(),
        }
    }

    #[test]
    fn the_start_up_pass_over_each_namespace_does_not_space_out_the_passes_over_files() {
        let took = Duration::from_secs(3);
        assert_eq!(super::pace_from(true, true, took), Duration::ZERO, "the passes over files set their own pace");
        assert_eq!(super::pace_from(true, false, took), took, "the same passes follow: they keep its pace");
        assert_eq!(super::pace_from(false, true, took), took);
        let mut s = Sweep::new(config(Duration::from_secs(30), RECONCILE_CPU));
        s.reconcile_took = super::pace_from(true, true, took);
        assert_eq!(s.reconcile_every(), Duration::from_secs(10));
    }

    #[test]
    fn reconcile_runs_a_third_of_grace_apart_unless_it_costs_more_than_its_budget() {
        let mut s = Sweep::new(config(Duration::from_secs(30), RECONCILE_CPU));
        assert_eq!(s.reconcile_every(), Duration::from_secs(10));
        s.reconcile_took = Duration::from_millis(5);
        assert_eq!(s.reconcile_every(), Duration::from_secs(10), "a cheap reconcile keeps its pace");
        s.reconcile_took = Duration::from_millis(75);
        assert_eq!(s.reconcile_every(), Duration::from_secs(75), "50,000 connections: at most 0.1 % of a core");
        s.reconcile_took = Duration::from_secs(1);
        assert_eq!(s.reconcile_every(), Duration::from_secs(300), "and at least every 5 minutes");
        let s = Sweep::new(config(Duration::from_millis(600), RECONCILE_CPU));
        assert_eq!(s.reconcile_every(), Duration::from_millis(250));
        // A larger budget (`--reconcile-cpu 1%`) keeps a 75 ms reconcile at 7.5 s.
        let mut s = Sweep::new(config(Duration::from_secs(30), 0.01));
        s.reconcile_took = Duration::from_millis(75);
        assert_eq!(s.reconcile_every(), Duration::from_millis(10_000), "never more often than a third of grace");
        s.reconcile_took = Duration::from_millis(150);
        assert_eq!(s.reconcile_every(), Duration::from_secs(15));
    }
}
