//! When the sweep does what: the next grace deadline and the early passes that meet it, how
//! long it may sleep between drains of the events, and how often the reconcile runs within its
//! CPU budget. Pure arithmetic over clocks the sweep hands it; unit-tested alone.
use std::time::{Duration, Instant};

/// How long events may wait in the ring buffer: the sweep drains it at least this often (and at
/// every pass). Each wake-up costs the thread a sleep and a switch, which at a few a second is a
/// large share of an idle agent's CPU, so the ring is sized for the wait instead: 1 MiB by
/// default holds ~9,300 events, ~23,000 newly tracked sockets a second.
pub const DRAIN_EVERY: Duration = Duration::from_millis(400);

/// The reconcile's CPU budget by default: 0.1 % of a core (`--reconcile-cpu`). A pass per
/// namespace costs mostly the kernel's walk of its established hash table, which all
/// namespaces share, once per namespace; the pass over every process's files that serves after
/// start-up costs a look at each open file instead. What they cost is in BENCHMARKS.md (scale:
/// the reconcile column).
pub const RECONCILE_CPU: f64 = 0.001;
/// ...but runs at least every 5 minutes (a socket found late is listed with its proven age).
const RECONCILE_LONGEST: Duration = Duration::from_secs(300);

/// Early passes take at most this share of a core: each is followed by a gap this many times
/// its own cost.
const EARLY_PASS_SHARE: u32 = 10;
/// The shortest gap between early passes.
const EARLY_GAP_MIN: Duration = Duration::from_millis(10);

/// The sweep's clock work: deadlines, early passes, reconcile pacing.
#[derive(Debug)]
pub struct Schedule {
    grace: Duration,
    /// The reconcile's CPU budget, a fraction of a core.
    reconcile_cpu: f64,
    /// The earliest grace deadline (sample clock, ms), as of the last pass.
    due: Option<u64>,
    /// What the last pass's sampling and judging took (not its report: new stalls' owners are
    /// looked for once, however the passes are spaced), which every early pass costs again.
    sampling_took: Duration,
    /// No early pass before this.
    next_early: Instant,
    last_reconcile: Instant,
    /// The CPU time of the last reconcile that sets the pace (see `pace_from`).
    reconcile_took: Duration,
}

impl Schedule {
    pub fn new(grace: Duration, reconcile_cpu: f64) -> Self {
        let now = Instant::now();
        Schedule { grace, reconcile_cpu, due: None, sampling_took: Duration::ZERO, next_early: now, last_reconcile: now, reconcile_took: Duration::ZERO }
    }

    /// A pass ended: the next deadline it left (see `Sweep::next_due`) and what its sampling took.
    pub fn passed(&mut self, due: Option<u64>, sampling_took: Duration) {
        self.due = due;
        self.sampling_took = sampling_took;
    }

    /// Whether an early pass is due now: a deadline has come, and the gap after the last early
    /// pass is over.
    pub fn early_pass_due(&self, now_ms: u64, now: Instant) -> bool {
        self.due.is_some_and(|d| d <= now_ms) && now >= self.next_early
    }

    /// An early pass ran at `now`: the next waits [`early_gap`] of its cost.
    pub fn early_pass_ran(&mut self, now: Instant) {
        self.next_early = now + early_gap(self.sampling_took);
    }

    /// A new interval: early passes may run at once.
    pub fn interval_began(&mut self, now: Instant) {
        self.next_early = now;
    }

    /// How long to sleep before the next thing to do: the interval's end, the next drain, or
    /// the next deadline (not before the gap after an early pass ends).
    pub fn nap(&self, now_ms: u64, now: Instant, interval_ends: Instant) -> Duration {
        let until_due = self.due.map_or(Duration::MAX, |d| {
            Duration::from_millis(d.saturating_sub(now_ms)).max(self.next_early.saturating_duration_since(now)).max(Duration::from_millis(1))
        });
        interval_ends.saturating_duration_since(now).min(DRAIN_EVERY).min(until_due)
    }

    /// How often the reconcile runs: often enough that a socket found only by a dump (its
    /// wedged send began before the agent, or it never filled its send buffer) is judged well
    /// within a grace window; rarely enough that the dump stays cheap. A pass per namespace
    /// walks the kernel's whole established hash table once per namespace (it is shared by all
    /// of them), so with many namespaces and no pass over files it can take a second: the
    /// interval then stretches to keep reconciling within the CPU budget, up to
    /// `RECONCILE_LONGEST` (a socket found late is still listed with the age its kernel clocks
    /// prove).
    pub fn reconcile_every(&self) -> Duration {
        let base = (self.grace / 3).clamp(Duration::from_millis(250), Duration::from_secs(10));
        let budgeted = Duration::try_from_secs_f64(self.reconcile_took.as_secs_f64() / self.reconcile_cpu.max(1e-4)).unwrap_or(RECONCILE_LONGEST);
        base.max(budgeted.min(RECONCILE_LONGEST))
    }

    pub fn reconcile_due(&self) -> bool {
        self.last_reconcile.elapsed() >= self.reconcile_every()
    }

    /// A reconcile began at `began` and took `cpu` of the thread's CPU time; `first`: the
    /// start-up pass, `over_files`: what follows it is the pass over every process's files.
    pub fn reconciled(&mut self, began: Instant, cpu: Duration, first: bool, over_files: bool) {
        self.last_reconcile = began;
        self.reconcile_took = pace_from(first, over_files, cpu);
    }

    /// The CPU time of the last reconcile that sets the pace.
    pub fn reconcile_took(&self) -> Duration {
        self.reconcile_took
    }
}

/// The gap after an early pass whose sampling cost `cost`: deadlines that come in a burst (a
/// network partition) cost a tenth of a core at most in passes, and one that comes right after
/// another waits 10 ms at most while passes are cheap.
fn early_gap(cost: Duration) -> Duration {
    (cost * EARLY_PASS_SHARE).max(EARLY_GAP_MIN)
}

/// The cost that sets the pace of the next reconciles: the start-up pass over each namespace
/// says nothing of what the passes over files after it cost (with 100 namespaces, 3 s against
/// milliseconds), so then the first of those runs at the base interval and sets it.
fn pace_from(first: bool, over_files: bool, took: Duration) -> Duration {
    if first && over_files { Duration::ZERO } else { took }
}

/// This thread's CPU time so far.
pub fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).map(Duration::from).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{RECONCILE_CPU, Schedule, early_gap, pace_from};

    #[test]
    fn early_passes_take_a_tenth_of_a_core_at_most_and_wait_10_ms_at_least() {
        assert_eq!(early_gap(Duration::from_micros(300)), Duration::from_millis(10));
        assert_eq!(early_gap(Duration::from_millis(7)), Duration::from_millis(70), "200,000 connections, 2,000 suspects");
        let mut s = Schedule::new(Duration::from_secs(3), RECONCILE_CPU);
        let now = Instant::now();
        s.passed(Some(4_000), Duration::from_millis(7));
        assert!(!s.early_pass_due(3_999, now) && s.early_pass_due(4_000, now));
        s.early_pass_ran(now);
        assert!(!s.early_pass_due(4_000, now + Duration::from_millis(69)));
        assert_eq!(s.nap(4_000, now, now + Duration::from_secs(1)), Duration::from_millis(70), "until the gap ends");
        assert!(s.early_pass_due(4_000, now + Duration::from_millis(70)));
        s.passed(None, Duration::ZERO);
        assert_eq!(s.nap(4_000, now, now + Duration::from_secs(1)), super::DRAIN_EVERY, "nothing due: the next drain");
    }

    #[test]
    fn the_start_up_pass_over_each_namespace_does_not_space_out_the_passes_over_files() {
        let took = Duration::from_secs(3);
        assert_eq!(pace_from(true, true, took), Duration::ZERO, "the passes over files set their own pace");
        assert_eq!(pace_from(true, false, took), took, "the same passes follow: they keep its pace");
        assert_eq!(pace_from(false, true, took), took);
        let mut s = Schedule::new(Duration::from_secs(30), RECONCILE_CPU);
        s.reconciled(Instant::now(), took, true, true);
        assert_eq!(s.reconcile_every(), Duration::from_secs(10));
    }

    #[test]
    fn reconcile_runs_a_third_of_grace_apart_unless_it_costs_more_than_its_budget() {
        let at = |grace: Duration, cpu: f64, took: Duration| {
            let mut s = Schedule::new(grace, cpu);
            s.reconciled(Instant::now(), took, false, false);
            s.reconcile_every()
        };
        let g = Duration::from_secs(30);
        assert_eq!(at(g, RECONCILE_CPU, Duration::ZERO), Duration::from_secs(10));
        assert_eq!(at(g, RECONCILE_CPU, Duration::from_millis(5)), Duration::from_secs(10), "a cheap reconcile keeps its pace");
        assert_eq!(at(g, RECONCILE_CPU, Duration::from_millis(75)), Duration::from_secs(75), "50,000 connections: at most 0.1 % of a core");
        assert_eq!(at(g, RECONCILE_CPU, Duration::from_secs(1)), Duration::from_secs(300), "and at least every 5 minutes");
        assert_eq!(at(Duration::from_millis(600), RECONCILE_CPU, Duration::ZERO), Duration::from_millis(250));
        // A larger budget (`--reconcile-cpu 1%`) keeps a 75 ms reconcile at 7.5 s.
        assert_eq!(at(g, 0.01, Duration::from_millis(75)), Duration::from_millis(10_000), "never more often than a third of grace");
        assert_eq!(at(g, 0.01, Duration::from_millis(150)), Duration::from_secs(15));
    }
}
