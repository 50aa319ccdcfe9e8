//! Prometheus metrics (OpenMetrics text) on `--metrics-addr`. Labels are bounded: reasons,
//! hooks and counters, never a socket, a peer address or a pid. A leaf: it names no type of
//! the domain; the agent hands it the label values (`KnownLabels`) and counts by their names.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

impl ReasonLabel {
    pub fn of(reason: &str) -> Self {
        Self { reason: reason.into() }
    }
}

/// Every value a bounded label can take, known up front: every series an alert may look for
/// is exported (as zero) from the start.
#[derive(Debug, Clone, Default)]
pub struct KnownLabels {
    pub reasons: Vec<&'static str>,
    /// Why a socket left the table.
    pub forgotten: Vec<&'static str>,
    pub actions: Vec<&'static str>,
    /// Why an action was skipped.
    pub skip_whys: Vec<&'static str>,
    pub kernel: String,
}

/// A stalled socket whose pod is named, for the opt-in pod family.
#[derive(Debug, Clone, Copy)]
pub struct PodStall<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    pub reason: &'a str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WhyLabel {
    pub why: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabel {
    pub role: String,
    pub hook: String,
}

/// The configuration running (`storage-walk`, `storage-diag`, `hash-map`), and whether it is
/// of the best kind (`false`: the kernel refused a piece every better kind needs; a better send
/// hook an older kernel lacks does not count: `detector status` lists those).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConfigurationLabel {
    pub configuration: String,
    pub best: String,
}

/// One of the agent's eBPF programs, by its name in the object (a fixed set).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProgramLabel {
    pub program: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    pub action: String,
    pub result: String,
    /// Why it was skipped (a fixed set); "none" otherwise.
    pub why: String,
}

/// A pod's stalled sockets by reason (opt-in, capped: see `pod_series`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct PodLabel {
    pub namespace: String,
    pub pod: String,
    pub reason: String,
}

/// The pod series of a report: stalled sockets per (namespace, pod, reason) for sockets whose
/// pod is named, at most `max` series (the pods with the most stalls first, then by name, so
/// the same series stay while nothing changes), and how many stalled sockets did not fit.
pub fn pod_series<'a>(stalls: impl IntoIterator<Item = PodStall<'a>>, max: usize) -> (Vec<(PodLabel, i64)>, i64) {
    let mut by: std::collections::BTreeMap<PodLabel, i64> = std::collections::BTreeMap::new();
    for s in stalls {
        *by.entry(PodLabel { namespace: s.namespace.into(), pod: s.pod.into(), reason: s.reason.into() }).or_default() += 1;
    }
    let mut series: Vec<(PodLabel, i64)> = by.into_iter().collect();
    series.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let overflow = series.iter().skip(max).map(|(_, n)| n).sum();
    series.truncate(max);
    (series, overflow)
}

/// The opt-in pod family and what it exported last (to remove series whose stalls ended).
struct PodSeries {
    max: usize,
    stalled: Family<PodLabel, Gauge>,
    overflow: Gauge,
    shown: std::sync::Mutex<Vec<PodLabel>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabel {
    pub version: String,
    pub kernel: String,
}

pub struct Metrics {
    registry: Registry,
    /// Set after the first detection pass: the agent is ready.
    pub ready: std::sync::atomic::AtomicBool,
    /// CLOCK_MONOTONIC ms of the sweep's last pass, and how old it may get before /healthz
    /// fails (the sweep is stuck or gone: the report is frozen).
    heartbeat_ms: std::sync::atomic::AtomicU64,
    heartbeat_limit_ms: std::sync::atomic::AtomicU64,
    pub stalls_detected: Family<ReasonLabel, Counter>,
    pub stalls_open: Family<ReasonLabel, Gauge>,
    pub stalls_recovered: Counter,
    pub sockets_tracked: Gauge,
    pub sockets_forgotten: Family<WhyLabel, Counter>,
    pub kernel_events_dropped: Counter,
    pub kernel_map_full: Counter,
    pub kernel_read_errors: Counter,
    pub kernel_retransmits: Counter,
    /// Runs of a program the kernel skipped (another tracing program was running on that CPU).
    pub kernel_program_misses: Family<ProgramLabel, Counter>,
    pub sample_errors: Counter,
    /// Samples taken with a sock_diag lookup (with socket storage, only of sockets the kernel
    /// walk does not reach): the per-socket cost the walk exists to avoid.
    pub sock_diag_lookups: Counter,
    pub sweep_duration: Histogram,
    pub reconcile_cpu: Histogram,
    pub stall_duration: Histogram,
    pub hook_attached: Family<HookLabel, Gauge>,
    pub reaps: Family<ActionLabel, Counter>,
    pub audit_lines_dropped: Counter,
    pub log_lines_dropped: Counter,
    /// Metrics connections closed at once because `MAX_CONNECTIONS` were open.
    pub metrics_connections_refused: Counter,
    /// Stalled sockets past the detail cap (counted by reason, not reported one by one).
    pub stalls_undetailed: Gauge,
    /// Sockets not taken into the full table.
    pub sockets_refused: Counter,
    pub build_info: Family<BuildLabel, Gauge>,
    pods: Option<PodSeries>,
}

impl Metrics {
    /// Every family registered, no series yet (`with_known_labels` adds the zeros).
    pub fn new() -> Self {
        let mut m = Self {
            stalls_detected: Family::default(),
            stalls_open: Family::default(),
            stalls_recovered: Counter::default(),
            sockets_tracked: Gauge::default(),
            sockets_forgotten: Family::default(),
            kernel_events_dropped: Counter::default(),
            kernel_map_full: Counter::default(),
            kernel_read_errors: Counter::default(),
            kernel_retransmits: Counter::default(),
            kernel_program_misses: Family::default(),
            sample_errors: Counter::default(),
            sock_diag_lookups: Counter::default(),
            sweep_duration: Histogram::new(exponential_buckets(0.000_25, 2.0, 14)),
            reconcile_cpu: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            stall_duration: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            hook_attached: Family::default(),
            reaps: Family::default(),
            audit_lines_dropped: Counter::default(),
            log_lines_dropped: Counter::default(),
            metrics_connections_refused: Counter::default(),
            stalls_undetailed: Gauge::default(),
            sockets_refused: Counter::default(),
            build_info: Family::default(),
            pods: None,
            registry: Registry::default(),
            ready: std::sync::atomic::AtomicBool::new(false),
            heartbeat_ms: std::sync::atomic::AtomicU64::new(0),
            heartbeat_limit_ms: std::sync::atomic::AtomicU64::new(u64::MAX),
        };
        m.registry = Registry::with_prefix("detector");
        m.register();
        m
    }

    fn register(&mut self) {
        let mut registry = std::mem::take(&mut self.registry);
        let m = &*self;
        registry.register("stalls_detected", "Stalls detected, by reason", m.stalls_detected.clone());
        registry.register("stalled_sockets", "Sockets stalled now, by reason", m.stalls_open.clone());
        registry.register("stalls_recovered", "Stalls that ended because progress resumed", m.stalls_recovered.clone());
        registry.register("sockets_tracked", "Sockets the agent tracks now", m.sockets_tracked.clone());
        registry.register(
            "sockets_forgotten",
            "Tracked sockets dropped from the table, by why: closed (its close event, or a sample where no event exists), gone (found closed by a sample, its close event missed), idle (no longer stuck), replaced (its address taken by a new socket)",
            m.sockets_forgotten.clone(),
        );
        registry.register("kernel_events_dropped", "Kernel events lost to a full ring buffer", m.kernel_events_dropped.clone());
        registry.register("kernel_map_full", "Sockets not tracked because the socket map was full", m.kernel_map_full.clone());
        registry.register("kernel_read_errors", "Failed kernel memory reads in the eBPF programs", m.kernel_read_errors.clone());
        registry.register("retransmits", "Retransmits on tracked sockets, as tcp:tcp_retransmit_skb sees them", m.kernel_retransmits.clone());
        registry.register(
            "kernel_program_misses",
            "Runs of an eBPF program the kernel skipped because another tracing program was running on that CPU (its event is lost: a close missed this way is found by the next sample)",
            m.kernel_program_misses.clone(),
        );
        registry.register("sample_errors", "Failed sock_diag samples", m.sample_errors.clone());
        registry.register(
            "sock_diag_lookups",
            "Sockets sampled with a sock_diag lookup (with socket storage, only those the kernel walk does not reach)",
            m.sock_diag_lookups.clone(),
        );
        registry.register("sweep_duration_seconds", "Time one detection pass takes", m.sweep_duration.clone());
        registry.register(
            "reconcile_cpu_seconds",
            "CPU time one reconcile (every namespace searched for stuck sockets no hook announced) takes; it is kept under 0.5 % of a core",
            m.reconcile_cpu.clone(),
        );
        registry.register("stall_duration_seconds", "How long stalls lasted when they ended (recovered, closed or reaped)", m.stall_duration.clone());
        registry.register("hook_attached", "1 for each kernel hook attached", m.hook_attached.clone());
        registry.register("reaps", "Reaping decisions, by action, result (ok, failed, dry_run, skipped) and, for skipped, why", m.reaps.clone());
        registry.register("audit_lines_dropped", "Audit lines dropped because stdout did not keep up", m.audit_lines_dropped.clone());
        registry.register("log_lines_dropped", "Log lines dropped because stderr did not keep up", m.log_lines_dropped.clone());
        registry.register(
            "stalled_sockets_undetailed",
            "Stalled sockets past the detail cap: counted in stalled_sockets, not reported one by one, never reaped (a flood)",
            m.stalls_undetailed.clone(),
        );
        registry.register("sockets_refused", "Sockets not taken into the table because it was full (--max-tracked)", m.sockets_refused.clone());
        registry.register(
            "metrics_connections_refused",
            "Connections to this endpoint closed at once because the most it serves at a time were open",
            m.metrics_connections_refused.clone(),
        );
        registry.register("build_info", "Agent version and kernel release", m.build_info.clone());
        self.registry = registry;
    }

    /// Exports a zero for every series an alert may look for, and the build's labels.
    pub fn with_known_labels(self, k: &KnownLabels) -> Self {
        for r in &k.reasons {
            let _ = self.stalls_detected.get_or_create(&ReasonLabel::of(r));
            let _ = self.stalls_open.get_or_create(&ReasonLabel::of(r));
        }
        for why in &k.forgotten {
            let _ = self.sockets_forgotten.get_or_create(&WhyLabel { why: (*why).into() });
        }
        for action in &k.actions {
            for result in ["ok", "failed", "dry_run"] {
                let _ = self.reaps.get_or_create(&ActionLabel { action: (*action).into(), result: result.into(), why: "none".into() });
            }
            // Bounded: 5 actions × 10 whys.
            for why in &k.skip_whys {
                let _ = self.reaps.get_or_create(&ActionLabel { action: (*action).into(), result: "skipped".into(), why: (*why).into() });
            }
        }
        self.build_info.get_or_create(&BuildLabel { version: env!("CARGO_PKG_VERSION").into(), kernel: k.kernel.clone() }).set(1);
        self
    }

    /// Adds `configuration{configuration,best}` = 1 for the configuration the agent runs: a
    /// fleet sees which nodes run a lesser kind.
    pub fn with_configuration(mut self, configuration: &str, best: bool) -> Self {
        let f: Family<ConfigurationLabel, Gauge> = Family::default();
        f.get_or_create(&ConfigurationLabel { configuration: configuration.into(), best: best.to_string() }).set(1);
        self.registry.register("configuration", "The configuration the agent runs (1), and whether it is of the best kind", f);
        self
    }

    /// Adds the pod family, capped at `max` series (0: no pod family).
    pub fn with_pod_series(mut self, max: usize) -> Self {
        if max == 0 {
            return self;
        }
        let p = PodSeries { max, stalled: Family::default(), overflow: Gauge::default(), shown: Default::default() };
        self.registry.register("pod_stalled_sockets", "Sockets stalled now, by the pod that holds them and reason (opt-in, capped)", p.stalled.clone());
        self.registry.register(
            "pod_stalled_sockets_overflow",
            "Stalled sockets of pods left out of detector_pod_stalled_sockets by its series cap",
            p.overflow.clone(),
        );
        self.pods = Some(p);
        self
    }

    /// Sets the pod family from a pass's report; series whose stalls ended are removed.
    pub fn set_pod_stalls<'a>(&self, stalls: impl IntoIterator<Item = PodStall<'a>>) {
        let Some(p) = &self.pods else { return };
        let (series, overflow) = pod_series(stalls, p.max);
        let mut shown = p.shown.lock().unwrap_or_else(|e| e.into_inner());
        for gone in shown.iter().filter(|l| !series.iter().any(|(s, _)| s == *l)) {
            p.stalled.remove(gone);
        }
        for (l, n) in &series {
            p.stalled.get_or_create(l).set(*n);
        }
        p.overflow.set(overflow);
        *shown = series.into_iter().map(|(l, _)| l).collect();
    }

    /// Counts one reaping decision (the audit line goes out separately).
    pub fn reaped(&self, action: &str, result: &str, why: Option<&str>) {
        let label = ActionLabel { action: action.into(), result: result.into(), why: why.unwrap_or("none").into() };
        self.reaps.get_or_create(&label).inc();
    }

    /// The sweep finished a pass.
    pub fn beat(&self) {
        self.heartbeat_ms.store(monotonic_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    pub fn set_heartbeat_limit(&self, d: std::time::Duration) {
        self.heartbeat_limit_ms.store(d.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Alive: no pass yet (starting), or the last one recent enough.
    pub fn alive(&self) -> bool {
        let last = self.heartbeat_ms.load(std::sync::atomic::Ordering::Relaxed);
        last == 0 || monotonic_ms().saturating_sub(last) <= self.heartbeat_limit_ms.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn forgot(&self, why: &str) {
        self.sockets_forgotten.get_or_create(&WhyLabel { why: why.into() }).inc();
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut s, &self.registry);
        s
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn monotonic_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map(|t| t.tv_sec() as u64 * 1_000 + t.tv_nsec() as u64 / 1_000_000).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stalled_in<'a>(namespace: &'a str, pod: &'a str) -> PodStall<'a> {
        PodStall { namespace, pod, reason: "peer_not_reading" }
    }

    #[test]
    fn pod_series_are_capped_busiest_first_and_count_what_did_not_fit() {
        let report = [stalled_in("shop", "b"), stalled_in("shop", "a"), stalled_in("shop", "b"), stalled_in("web", "c")];
        let (series, overflow) = pod_series(report, 2);
        let names: Vec<(&str, i64)> = series.iter().map(|(l, n)| (l.pod.as_str(), *n)).collect();
        assert_eq!(names, [("b", 2), ("a", 1)]);
        assert_eq!(overflow, 1, "web/c did not fit");
    }

    #[test]
    fn pod_family_is_absent_by_default_and_its_series_leave_when_stalls_end() {
        assert!(!Metrics::new().render().contains("pod_stalled"), "opt-in");
        let m = Metrics::new().with_pod_series(200);
        m.set_pod_stalls([stalled_in("shop", "a"), stalled_in("web", "c")]);
        let text = m.render();
        assert!(text.contains("detector_pod_stalled_sockets{namespace=\"shop\",pod=\"a\",reason="), "{text}");
        m.set_pod_stalls([stalled_in("web", "c")]);
        let text = m.render();
        assert!(!text.contains("pod=\"a\""), "{text}");
        assert!(text.contains("pod=\"c\""), "{text}");
        assert!(text.contains("detector_pod_stalled_sockets_overflow 0"), "{text}");
    }
}
