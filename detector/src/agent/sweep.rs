//! The detection loop, once per `--interval`, on its own thread (it enters network namespaces,
//! which is per-thread state). It composes three parts it owns: the `judge` (the socket table
//! and the verdict over samples), the `schedule` (deadlines, early passes, reconcile pacing) and
//! the `attribution` (who holds each stalled socket). Each pass applies the kernel's events,
//! samples and judges (`pass`), reconciles with dumps when due (`reconcile`), hands stalls to
//! the reaper (`reap`) and publishes the report.
use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
        mpsc::{Receiver, RecvTimeoutError},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{
    Answer, Query, QueryRequest,
    attribute::Attribution,
    judge::{self, Judge},
    kernel_link::KernelLink,
    schedule::Schedule,
};
use crate::{
    metrics::Metrics,
    reaper::Reaper,
    report::{self, Published},
    sample::netns::NetnsPool,
    tracker::Forget,
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
    /// The socket table and the verdict over samples (see `judge`).
    pub(super) judge: Judge,
    /// Who holds the stalled sockets (see `attribute`).
    pub(super) attribution: Attribution,
    /// Deadlines, early passes, reconcile pacing.
    pub(super) schedule: Schedule,
    /// Whether a reconcile has run (the first passes over each namespace; see `reconcile`).
    pub(super) reconciled: bool,
    /// Whether the last pass over every process's files failed (its warning is said once).
    pub(super) files_pass_failing: bool,
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
    ctx.kernel.resync(&mut s.judge.tracker);
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
            judge: Judge::new(cfg.max_tracked, grace(&cfg)),
            attribution: Attribution::new(cfg.pod_logs_dir.clone()),
            schedule: Schedule::new(cfg.grace, cfg.reconcile_cpu),
            cfg,
            reconciled: false,
            files_pass_failing: false,
            refused_seen: 0,
            kernel_map_entries: None,
            sweeps: 0,
        }
    }

    /// The sample clock (see [`judge::now_ms`]).
    pub(super) fn now_ms(&self) -> u64 {
        judge::now_ms()
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
            ctx.kernel.resync(&mut self.judge.tracker);
        }
        self.next_epoch(&mut ctx.kernel);
        let stalled = self.pass(pool, Some(&mut ctx.kernel), &ctx.metrics, None);
        ctx.kernel.prune(self.judge.gone_hooked.drain(..));
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
        if self.judge.idle_kept > 0
            && e.due()
            && let Err(err) = e.advance()
        {
            log::warn!("moving the epoch on: {err}; idle sockets stay tracked until it works");
        }
    }

    /// Applies the kernel's waiting events to the table.
    pub(super) fn drain(&mut self, kernel: &mut KernelLink, m: &Metrics) {
        let now = self.now_ms();
        kernel.drain(&mut self.judge.tracker, |t, why| {
            m.forgot(why.as_str());
            if let Some(age) = t.verdict.and_then(|v| v.stalled_for_ms(now)) {
                m.stall_duration.observe(age as f64 / 1e3);
            }
        });
    }

    fn publish(&mut self, ctx: &Context, took: Duration) {
        let m = &ctx.metrics;
        m.sockets_tracked.set(self.judge.tracker.len() as i64);
        m.sockets_refused.inc_by(self.judge.tracker.refused - std::mem::replace(&mut self.refused_seen, self.judge.tracker.refused));
        let now = self.now_ms();
        for t in std::mem::take(&mut self.judge.tracker.evicted) {
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
            p.tracked = self.judge.tracker.len();
            p.kernel_map_entries = self.kernel_map_entries;
            p.sweeps = self.sweeps;
            p.last_sweep_ms = took.as_secs_f64() * 1e3;
            p.reconcile_cpu_ms = self.schedule.reconcile_took().as_secs_f64() * 1e3;
            p.reconcile_every_ms = self.schedule.reconcile_every().as_millis() as u64;
            p.stalled_undetailed = self.judge.undetailed.iter().map(|(r, n)| (*r, *n)).collect();
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
                let t = self.judge.tracker.iter().find(|t| t.last.is_some_and(|d| d.cookie == id) || t.sk == id);
                Answer::Explain(t.map(|t| Box::new(report::explain(t, kernel.record(t, judge::monotonic_ns()), self.now_ms(), self.judge.grace().stuck_ms))))
            }
        }
    }

    /// Every tracked socket, for `detector sockets`.
    fn rows(&mut self) -> Vec<report::TrackedSocket> {
        // Pods of senders, resolved once per pid and forgotten every minute.
        let mut refresh = self.sweeps.is_multiple_of(60);
        let mut out = Vec::with_capacity(self.judge.tracker.len());
        for t in self.judge.tracker.iter() {
            let pod = self.attribution.pod_of_sender(t.sender.tgid, std::mem::take(&mut refresh));
            out.push(report::tracked(t, pod));
        }
        out
    }
}

/// The grace windows the verdict judges by.
fn grace(cfg: &Config) -> Grace {
    Grace { stuck_ms: cfg.grace.as_millis() as u64, close_wait_idle_ms: cfg.close_wait_grace.as_millis() as u64, trickle: cfg.trickle }
}
