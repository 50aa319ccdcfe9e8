//! The detection loop, once per `--interval`, on its own thread (it enters network namespaces,
//! which is per-thread state). It owns the socket table: applies the kernel's events, samples
//! and judges (`pass`), attributes (`attribute`), reconciles with dumps (`reconcile`), hands
//! stalls to the reaper and publishes the report.
use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
        mpsc::{Receiver, RecvTimeoutError},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use detector_common::SockTuple;

use super::{Answer, Query, QueryRequest, attribute::Attribution, kernel_link::KernelLink, schedule::Schedule};
use crate::{
    metrics::Metrics,
    reaper::Reaper,
    report::{self, Published},
    sample::netns::NetnsPool,
    tracker::{Forget, Tracked, Tracker},
    verdict::Grace,
};

#[derive(Debug, Clone)]
pub struct Config {
    pub grace: Duration,
    /// The grace of a CLOSE_WAIT socket with nothing queued (`--close-wait-grace`).
    pub close_wait_grace: Duration,
    pub trickle: crate::verdict::TrickleRule,
    /// Most sockets kept in the table (`--max-tracked`).
    pub max_tracked: usize,
    pub interval: Duration,
    /// The reconcile's CPU budget, a fraction of a core (see `Schedule::reconcile_every`).
    pub reconcile_cpu: f64,
    pub pod_logs_dir: std::path::PathBuf,
}

/// Everything the loop works with besides its own state.
pub struct Context {
    pub kernel: KernelLink,
    pub queries: Receiver<QueryRequest>,
    pub published: Arc<RwLock<Published>>,
    pub metrics: Arc<Metrics>,
    pub reaper: Reaper,
    pub stop: Arc<AtomicBool>,
}

pub struct Sweep {
    pub(super) cfg: Config,
    pub(super) tracker: Tracker,
    /// Who holds the stalled sockets (see `attribute`).
    pub(super) attribution: Attribution,
    /// Deadlines, early passes, reconcile pacing.
    pub(super) schedule: Schedule,
    /// Whether a reconcile has run (the first passes over each namespace; see `reconcile`).
    pub(super) reconciled: bool,
    /// Whether the last pass over every process's files failed (its warning is said once).
    pub(super) files_pass_failing: bool,
    /// Sockets announced by a send hook that samples found gone since the last full pass.
    pub(super) gone_hooked: Vec<(u64, SockTuple)>,
    /// Sockets the last pass found idle but kept, announced in the current epoch (see
    /// `kernel_link::Epochs`): a new epoch lets the next pass forget them.
    pub(super) idle_kept: usize,
    /// Stalled sockets past the detail cap, by reason (see `detail`).
    pub(super) undetailed: HashMap<crate::verdict::Reason, usize>,
    /// `tracker.refused` as already counted in the metrics.
    refused_seen: u64,
    kernel_map_entries: Option<usize>,
    sweeps: u64,
}

/// The thread: runs until `stop`; an error (sock_diag unusable) ends it, and the agent with it.
pub fn run(cfg: Config, mut ctx: Context) -> anyhow::Result<()> {
    let mut pool = NetnsPool::new().context("opening sock_diag: no socket could be sampled")?;
    let mut s = Sweep::new(cfg);
    // Sockets wedged before the agent started (a send blocked since then fires no hook) are
    // found by one dump per network namespace.
    let found = s.reconcile(&mut pool, ctx.kernel.kernel_dump.as_mut());
    log::info!("start-up scan: {found} sockets stuck (bytes queued, or in CLOSE_WAIT)");
    super::give_back_memory();
    ctx.kernel.resync(&mut s.tracker);
    // Fault injection for the tests: the agent must exit, not serve a frozen report.
    let panic_after_first = crate::fault::sweep_panic();
    while !ctx.stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        s.full_pass(&mut ctx, &mut pool);
        assert!(!(panic_after_first && s.sweeps > 1), "DETECTOR_FAULT=sweep-panic: the sweep thread panics on purpose");
        let took = started.elapsed();
        ctx.metrics.sweep_duration.observe(took.as_secs_f64());
        s.publish(&ctx, took);
        s.wait(&mut ctx, &mut pool, started + s.cfg.interval);
    }
    Ok(())
}

impl Sweep {
    pub fn new(cfg: Config) -> Self {
        Sweep {
            tracker: Tracker::with_cap(cfg.max_tracked),
            attribution: Attribution::new(cfg.pod_logs_dir.clone()),
            schedule: Schedule::new(cfg.grace, cfg.reconcile_cpu),
            cfg,
            reconciled: false,
            files_pass_failing: false,
            gone_hooked: Vec::new(),
            idle_kept: 0,
            undetailed: HashMap::new(),
            refused_seen: 0,
            kernel_map_entries: None,
            sweeps: 0,
        }
    }

    /// The sample clock: CLOCK_MONOTONIC in milliseconds (time since boot, as the kernel's own
    /// clocks and `bpf_ktime_get_ns` count), so an onset the kernel proves to lie before the
    /// agent started is still a point on it.
    pub(super) fn now_ms(&self) -> u64 {
        monotonic_ns() / 1_000_000
    }

    /// Events, a reconcile when one is due, counters, then every socket sampled and judged,
    /// attributed and reaped.
    fn full_pass(&mut self, ctx: &mut Context, pool: &mut NetnsPool) {
        self.drain(&mut ctx.kernel, &ctx.metrics);
        if self.schedule.reconcile_due() {
            let found = self.reconcile(pool, ctx.kernel.kernel_dump.as_mut());
            ctx.metrics.reconcile_cpu.observe(self.schedule.reconcile_took().as_secs_f64());
            super::give_back_memory();
            if found > 0 {
                log::debug!("reconcile: {found} sockets no hook announced");
            }
        }
        if ctx.kernel.read_counters(&ctx.metrics) {
            ctx.kernel.resync(&mut self.tracker);
        }
        self.next_epoch(&mut ctx.kernel);
        let stalled = self.pass(pool, Some(&mut ctx.kernel), &ctx.metrics, None);
        ctx.kernel.prune(self.gone_hooked.drain(..));
        self.kernel_map_entries = ctx.kernel.map_entries();
        self.reap(&mut ctx.reaper, &stalled, pool);
        self.sweeps += 1;
        if let Ok(mut p) = ctx.published.write() {
            p.stalled = stalled;
        }
    }

    /// Where sock_diag samples socket storage: a new epoch when the last pass kept idle
    /// sockets (at most every `EPOCH_AT_LEAST`), so this pass may forget them.
    fn next_epoch(&mut self, kernel: &mut KernelLink) {
        let Some(e) = kernel.epochs.as_mut() else { return };
        if self.idle_kept > 0
            && e.due()
            && let Err(err) = e.advance()
        {
            log::warn!("moving the epoch on: {err}; idle sockets stay tracked until it works");
        }
    }

    /// Applies the kernel's waiting events to the table.
    pub(super) fn drain(&mut self, kernel: &mut KernelLink, m: &Metrics) {
        let now = self.now_ms();
        kernel.drain(&mut self.tracker, |t, why| {
            m.forgot(why.as_str());
            if let Some(age) = t.verdict.and_then(|v| v.stalled_for_ms(now)) {
                m.stall_duration.observe(age as f64 / 1e3);
            }
        });
    }

    fn publish(&mut self, ctx: &Context, took: Duration) {
        let m = &ctx.metrics;
        m.sockets_tracked.set(self.tracker.len() as i64);
        m.sockets_refused.inc_by(self.tracker.refused - std::mem::replace(&mut self.refused_seen, self.tracker.refused));
        let now = self.now_ms();
        for t in std::mem::take(&mut self.tracker.evicted) {
            m.forgot(Forget::Evicted.as_str());
            if let Some(age) = t.verdict.and_then(|v| v.stalled_for_ms(now)) {
                m.stall_duration.observe(age as f64 / 1e3);
            }
        }
        let dropped = crate::logging::LOG_LINES_DROPPED.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            m.log_lines_dropped.inc_by(dropped);
        }
        m.ready.store(true, Ordering::Relaxed);
        m.beat();
        if let Ok(mut p) = ctx.published.write() {
            p.tracked = self.tracker.len();
            p.kernel_map_entries = self.kernel_map_entries;
            p.sweeps = self.sweeps;
            p.last_sweep_ms = took.as_secs_f64() * 1e3;
            p.reconcile_cpu_ms = self.schedule.reconcile_took().as_secs_f64() * 1e3;
            p.reconcile_every_ms = self.schedule.reconcile_every().as_millis() as u64;
            p.stalled_undetailed = self.undetailed.iter().map(|(r, n)| (*r, *n)).collect();
        }
    }

    /// Until `deadline`: answers queries (as they come), drains events (at least every
    /// `DRAIN_EVERY`), and samples a socket whose grace window ends before then right when it
    /// does (early passes spaced by the [`Schedule`]), so detection lags a deadline by
    /// milliseconds, not by up to an interval.
    fn wait(&mut self, ctx: &mut Context, pool: &mut NetnsPool, deadline: Instant) {
        self.schedule.interval_began(Instant::now());
        while !ctx.stop.load(Ordering::Relaxed) {
            self.drain(&mut ctx.kernel, &ctx.metrics);
            while let Ok((q, reply)) = ctx.queries.try_recv() {
                let _ = reply.send(self.answer(q, &ctx.kernel));
            }
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            let now_ms = self.now_ms();
            if self.schedule.early_pass_due(now_ms, now) {
                let stalled = self.pass(pool, Some(&mut ctx.kernel), &ctx.metrics, Some(now_ms));
                self.reap(&mut ctx.reaper, &stalled, pool);
                if let Ok(mut p) = ctx.published.write() {
                    p.stalled = stalled;
                }
                self.schedule.early_pass_ran(now);
                continue;
            }
            let nap = self.schedule.nap(now_ms, now, deadline);
            // A query wakes the thread at once; otherwise it sleeps until the next drain.
            match ctx.queries.recv_timeout(nap) {
                Ok((q, reply)) => {
                    let _ = reply.send(self.answer(q, &ctx.kernel));
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => std::thread::sleep(nap),
            }
        }
    }

    /// A question about the table (`detector sockets`, `detector explain`).
    fn answer(&mut self, q: Query, kernel: &KernelLink) -> Answer {
        match q {
            Query::Sockets => Answer::Sockets(self.rows()),
            Query::Explain(id) => {
                let t = self.tracker.iter().find(|t| t.last.is_some_and(|d| d.cookie == id) || t.sk == id);
                Answer::Explain(t.map(|t| Box::new(report::explain(t, kernel.record(t, monotonic_ns()), self.now_ms(), self.grace_ms()))))
            }
        }
    }

    pub(super) fn grace_ms(&self) -> u64 {
        self.cfg.grace.as_millis() as u64
    }

    /// The grace windows the verdict judges by.
    pub(super) fn grace(&self) -> Grace {
        Grace { stuck_ms: self.grace_ms(), close_wait_idle_ms: self.cfg.close_wait_grace.as_millis() as u64, trickle: self.cfg.trickle }
    }

    /// Every tracked socket, for `detector sockets`.
    fn rows(&mut self) -> Vec<report::TrackedSocket> {
        // Pods of senders, resolved once per pid and forgotten every minute.
        let mut refresh = self.sweeps.is_multiple_of(60);
        let mut out = Vec::with_capacity(self.tracker.len());
        for t in self.tracker.iter() {
            let pod = self.attribution.pod_of_sender(t.sender.tgid, std::mem::take(&mut refresh));
            out.push(report::tracked(t, pod));
        }
        out
    }

    /// Drops `gone` from the table, counting why.
    pub(super) fn forget(&mut self, gone: Vec<(u64, Forget)>, m: &Metrics) {
        let now = self.now_ms();
        for (sk, why) in gone {
            let Some(t) = self.tracker.remove(sk) else { continue };
            m.forgot(why.as_str());
            if why == Forget::Gone {
                // Its kernel entry, if any (hash map), goes too: see `KernelLink::prune`.
                self.gone_hooked.push((sk, t.tuple));
            }
            if let Some(age) = t.verdict.and_then(|v| v.stalled_for_ms(now)) {
                m.stall_duration.observe(age as f64 / 1e3);
            }
        }
    }

    /// The table entry of a reported socket.
    pub(super) fn by_cookie(&self, cookie: u64) -> Option<&Tracked> {
        self.tracker.iter().find(|t| t.last.is_some_and(|d| d.cookie == cookie))
    }
}

pub(super) fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use detector_common::{SockState, TCP_ESTABLISHED};

    use super::{Config, Sweep};
    use crate::{sample::Sample, verdict::SocketVerdict};

    #[test]
    fn a_deadline_a_pass_has_tried_is_not_chased_by_early_passes() {
        let mut s = Sweep::new(Config {
            grace: Duration::from_secs(3),
            close_wait_grace: Duration::from_secs(300),
            trickle: Default::default(),
            max_tracked: 25_000,
            interval: Duration::from_secs(1),
            reconcile_cpu: 0.001,
            pod_logs_dir: "/nonexistent".into(),
        });
        s.tracker.adopt(1, &SockState::default());
        // Bytes in flight, first seen at 1,000 ms: due at 4,000 ms.
        let mut v = SocketVerdict::new();
        v.observe(&Sample { at_ms: 1_000, state: TCP_ESTABLISHED, queued: 10, unacked: 1, snd_wnd: Some(100), rto_ms: 204, ..Default::default() }, 3_000);
        s.tracker.get_mut(1).unwrap().verdict = Some(v);
        assert_eq!(s.next_due(3_999), Some(4_000));
        // A pass that began at the deadline sampled it after; still not stalled, its sample
        // failed: the next interval's pass tries again, not an early pass every few ms.
        assert_eq!(s.next_due(4_000), None);
    }
}
