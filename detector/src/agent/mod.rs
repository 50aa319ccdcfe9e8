//! The running agent: loads the kernel side and runs the sweep thread (events → table →
//! samples and verdicts → report → reaper). What it publishes is read through [`Handle`]; the
//! surfaces (API, metrics, CLI) live elsewhere and are wired to it by `daemon`.
mod attribute;
mod detail;
mod judge;
pub mod kernel_link;
mod pass;
mod reap;
pub mod reconcile;
pub mod schedule;
pub mod sweep;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, RwLock, atomic::AtomicBool, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{Array, HashMap as BpfHashMap, PerCpuArray, RingBuf};
use detector_common::{KernelConfig, SockState};

use crate::{
    kernel::{
        self,
        btf::KernelBtf,
        caps,
        configuration::{self, Kind, Trials, Want},
        hooks::{self, HookId, HookState, HookStatus},
        loader,
        tracefs::Tracefs,
    },
    metrics::{HookLabel, KnownLabels, Metrics},
    reaper::{Reaper, config::Policy},
    report::{AgentSetup, Explain, Published, TrackedSocket},
    sample::{kernel_dump::KernelDump, walk::Walker},
};

#[derive(Debug, Clone)]
pub struct Options {
    pub grace: Duration,
    /// The grace of a CLOSE_WAIT socket with nothing queued (a leak suspect).
    pub close_wait_grace: Duration,
    pub trickle: crate::verdict::TrickleRule,
    pub interval: Duration,
    /// The reconcile's CPU budget, a fraction of a core.
    pub reconcile_cpu: f64,
    pub api_socket: PathBuf,
    pub metrics_addr: Option<SocketAddr>,
    pub max_sockets: u32,
    /// Most sockets the agent keeps state for (see `tracker::Tracker::with_cap`).
    pub max_tracked: usize,
    pub ring_buffer_bytes: u32,
    /// The configuration or send hook forced by flags (none: the best this kernel runs).
    pub want: Want,
    pub pod_logs_dir: PathBuf,
    /// The pod metric family's series cap (0: no pod family).
    pub pod_metrics_max_series: usize,
    /// Where the reaper keeps its ladders across restarts.
    pub state_file: Option<PathBuf>,
    pub policy: Policy,
}

/// Questions only the sweep thread can answer, since it owns the socket table. Answered
/// between passes, built only when asked (the table is never copied out on every pass).
#[derive(Debug, Clone, Copy)]
pub enum Query {
    /// Every tracked socket (`detector sockets`).
    Sockets,
    /// One socket's history (`detector explain <id>`).
    Explain(u64),
}

#[derive(Debug)]
pub enum Answer {
    Sockets(Vec<TrackedSocket>),
    /// `None` when no tracked socket has that id.
    Explain(Option<Box<Explain>>),
}

pub type QueryRequest = (Query, tokio::sync::oneshot::Sender<Answer>);

/// What the agent is and runs with, fixed at start-up (`detector status`), and how each hook
/// fared.
#[derive(Debug, Clone)]
pub struct StatusInfo {
    pub setup: AgentSetup,
    pub hooks: Vec<HookStatus>,
}

/// The surfaces' view of a running agent.
#[derive(Clone)]
pub struct Handle {
    pub published: Arc<RwLock<Published>>,
    pub queries: mpsc::Sender<QueryRequest>,
    pub metrics: Arc<Metrics>,
    pub status: Arc<StatusInfo>,
    /// (name, kernel id) of the programs this agent attached, for their run-time statistics.
    pub programs: Arc<Vec<(String, u32)>>,
    pub started: Instant,
}

pub struct Agent {
    pub handle: Handle,
    stop: Arc<AtomicBool>,
    sweep: Option<JoinHandle<anyhow::Result<()>>>,
    /// Told when the sweep thread ends, however it ends (see [`Agent::ended`]).
    ended: Arc<tokio::sync::Notify>,
    /// Keeps the programs loaded and attached for as long as the agent runs.
    _ebpf: aya::Ebpf,
}

/// Every value of the metrics' bounded labels, from the domain's own lists.
pub fn known_labels() -> KnownLabels {
    KnownLabels {
        reasons: crate::verdict::Reason::ALL.iter().map(|r| r.as_str()).collect(),
        forgotten: crate::tracker::Forget::ALL.iter().map(|f| f.as_str()).collect(),
        actions: crate::reaper::Action::ALL.iter().map(|a| a.as_str()).collect(),
        skip_whys: crate::reaper::SkipWhy::ALL.iter().map(|w| w.as_str()).collect(),
        kernel: crate::kernel::kernel_release(),
    }
}

impl Agent {
    /// Checks privileges, loads the best configuration the kernel runs, and starts the sweep
    /// thread.
    pub fn start(opts: &Options, rt: tokio::runtime::Handle) -> anyhow::Result<Agent> {
        caps::check_self()?;
        if let Some(w) = crate::fault::ignored() {
            log::warn!("{w}");
        }
        let sizes = loader::Sizes { max_sockets: opts.max_sockets, ring_buffer_bytes: opts.ring_buffer_bytes };
        let mut k = start_kernel(opts.want, sizes)?;
        // The kernel's BTF, parsed to find offsets (tens of MiB), is freed by now.
        give_back_memory();
        let status = Arc::new(status_info(opts, &k));
        log_hooks(&status);
        let metrics = Arc::new(
            Metrics::new()
                .with_known_labels(&known_labels())
                .with_pod_series(opts.pod_metrics_max_series)
                .with_configuration(k.loaded.configuration.kind.as_str(), k.loaded.configuration.kind == Kind::ALL[0]),
        );
        for h in &k.hooks {
            metrics.hook_attached.get_or_create(&HookLabel { role: h.role.as_str().into(), hook: h.hook.into() }).set(h.attached() as i64);
        }
        let programs = k.loaded.ebpf.programs().filter_map(|(name, p)| p.info().ok().map(|i| (name.to_string(), i.id()))).collect();
        let kernel = kernel_link(&mut k)?;
        let (query_tx, query_rx) = mpsc::channel();
        let published = Arc::new(RwLock::new(Published::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = sweep::Context {
            kernel,
            queries: query_rx,
            published: published.clone(),
            metrics: metrics.clone(),
            reaper: Reaper::new(opts.policy.clone(), opts.grace, rt, metrics.clone(), opts.state_file.clone()),
            stop: stop.clone(),
        };
        let cfg = sweep::Config {
            grace: opts.grace,
            close_wait_grace: opts.close_wait_grace,
            trickle: opts.trickle,
            max_tracked: opts.max_tracked,
            interval: opts.interval,
            reconcile_cpu: opts.reconcile_cpu,
            pod_logs_dir: opts.pod_logs_dir.clone(),
        };
        metrics.set_heartbeat_limit(opts.interval * 10 + Duration::from_secs(30));
        let ended = Arc::new(tokio::sync::Notify::new());
        let tell = EndedGuard(ended.clone());
        let sweep = std::thread::Builder::new()
            .name("sweep".into())
            .spawn(move || {
                let _tell = tell;
                sweep::run(cfg, ctx)
            })
            .context("starting the sweep thread")?;
        let handle = Handle { published, queries: query_tx, metrics, status, programs: Arc::new(programs), started: Instant::now() };
        Ok(Agent { handle, stop, sweep: Some(sweep), ended, _ebpf: k.loaded.ebpf })
    }

    /// The sweep thread ended (an error, or a panic): the agent must not go on serving a frozen
    /// report. Returns why, once.
    pub fn failure(&mut self) -> Option<anyhow::Error> {
        if !self.sweep.as_ref().is_some_and(JoinHandle::is_finished) {
            return None;
        }
        let why = match self.sweep.take()?.join() {
            Ok(Ok(())) => anyhow::anyhow!("the sweep thread stopped"),
            Ok(Err(e)) => e.context("the sweep thread failed"),
            Err(_) => anyhow::anyhow!("the sweep thread panicked"),
        };
        Some(why)
    }

    /// Resolves once the sweep thread has ended (an error or a panic), with why: no polling,
    /// so an idle agent's runtime sleeps until something happens.
    pub async fn ended(&mut self) -> anyhow::Error {
        let ended = self.ended.clone();
        loop {
            // Created before the check; and `notify_one` leaves a permit when nobody waits, so
            // an end between the two is not missed.
            let told = ended.notified();
            if let Some(why) = self.failure() {
                return why;
            }
            told.await;
            // Told by the thread's last drop: it is ending (unwinding, say), not yet ended, so
            // `failure` above could still find it running; it ends within moments.
            while self.sweep.as_ref().is_some_and(|t| !t.is_finished()) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }

    pub fn stop(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.sweep.take() {
            let _ = t.join();
        }
    }
}

/// Tells the agent's runtime when the sweep thread ends: dropped as the thread returns or
/// unwinds from a panic.
struct EndedGuard(Arc<tokio::sync::Notify>);

impl Drop for EndedGuard {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

fn status_info(opts: &Options, k: &KernelStart) -> StatusInfo {
    let destroy = crate::reaper::probe_destroy();
    let c = &k.loaded.configuration;
    let sampling = match &k.walker {
        Some(w) => format!("kernel walk of socket storage (HZ {})", w.hz()),
        None => "sock_diag lookups".into(),
    };
    let setup = AgentSetup {
        version: env!("CARGO_PKG_VERSION").into(),
        kernel: kernel::kernel_release(),
        configuration: c.kind.as_str().into(),
        configuration_detail: c.describe(),
        not_best: k.not_best.clone(),
        send_hook: hooks::spec(HookId::Send(c.send)).label.into(),
        storage: if c.kind.socket_storage() { "socket storage" } else { "hash map" }.into(),
        sampling,
        grace_ms: opts.grace.as_millis() as u64,
        interval_ms: opts.interval.as_millis() as u64,
        max_sockets: opts.max_sockets,
        destroy_supported: destroy.is_ok(),
        destroy_detail: destroy.err().unwrap_or_else(|| "supported".into()),
        dry_run: opts.policy.dry_run,
        selectors: opts.policy.selectors.iter().map(|s| s.name.clone()).collect(),
    };
    StatusInfo { setup, hooks: k.hooks.clone() }
}

fn log_hooks(info: &StatusInfo) {
    let s = &info.setup;
    if s.destroy_supported {
        log::info!("socket destroy (sock_diag SOCK_DESTROY): supported");
    } else {
        log::warn!("socket destroy (sock_diag SOCK_DESTROY): not supported: {}", s.destroy_detail);
    }
    log::info!("policy: {} selector(s){}", s.selectors.len(), if s.dry_run { ", dry run" } else { "" });
    log::info!("kernel {}; configuration {}; sampling: {}", s.kernel, s.configuration_detail, s.sampling);
    for why in &s.not_best {
        log::warn!("not the best configuration: {why}");
    }
    for h in &info.hooks {
        log::info!("hook {} ({}): {}", h.hook, h.role.as_str(), hooks::describe(&h.state));
    }
}

/// What the kernel runs for the agent: the configuration loaded (and its walk, started), every
/// hook's state, and why the configuration is not the best the agent knows.
pub struct KernelStart {
    pub loaded: loader::Loaded,
    pub walker: Option<Walker>,
    pub hooks: Vec<HookStatus>,
    pub not_best: Vec<String>,
}

/// What the kernel said of every hook tried alone, with the offsets they were loaded with.
pub struct Probed {
    cfg: KernelConfig,
    pub hooks: Vec<HookStatus>,
    pub trials: Trials,
}

/// Reads this kernel's offsets and tries every hook alone.
pub fn probe_kernel() -> anyhow::Result<Probed> {
    probe_kernel_ignoring(std::process::id())
}

/// As [`probe_kernel`], the programs ignoring the sends of process `tgid` (the agent's own; 0:
/// none, for a test that tracks its own sockets).
pub fn probe_kernel_ignoring(tgid: u32) -> anyhow::Result<Probed> {
    let tracefs = match Tracefs::find_or_mount() {
        Ok(t) => Some(t),
        Err(e) => {
            log::warn!("{e}: the classic tracepoints cannot be used");
            None
        }
    };
    // The parsed kernel BTF is tens of MiB: keep only the offsets taken from it.
    let btf = KernelBtf::load()?;
    let mut cfg = loader::kernel_config(tracefs.as_ref(), &btf)?;
    let functions = loader::Functions::of(&btf);
    drop(btf);
    cfg.agent_tgid = tgid;
    let hooks = loader::probe(kernel::object(), &cfg, functions)?;
    let trials = Trials::new(hooks.iter().map(|h| (h.id, h.state.clone())));
    Ok(Probed { cfg, hooks, trials })
}

/// Probes the kernel and starts the best configuration within `want`.
pub fn start_kernel(want: Want, sizes: loader::Sizes) -> anyhow::Result<KernelStart> {
    probe_kernel()?.start(want, sizes)
}

impl Probed {
    /// Chooses the best configuration within `want` and loads it whole; when the kernel refuses
    /// a piece of it there (or its walk cannot start), chooses again with that known, until one
    /// runs or none is left. `detector run` and `detector check` both start here.
    pub fn start(&mut self, want: Want, sizes: loader::Sizes) -> anyhow::Result<KernelStart> {
        loop {
            let c = configuration::choose(&self.trials, want)?;
            let mut loaded = match loader::load(kernel::object(), &self.cfg, sizes, &c) {
                Ok(l) => l,
                Err((id, why)) => {
                    log::warn!("configuration {}: {} refused when loaded with the rest: {why}", c.kind.as_str(), hooks::spec(id).label);
                    self.trials.fail(c.kind, id, hooks::summarize(&why).0);
                    continue;
                }
            };
            let walker = match loaded.walk.take().map(Walker::start) {
                None => None,
                Some(Ok(w)) => Some(w),
                Some(Err(e)) => {
                    self.trials.fail(c.kind, HookId::Walk, format!("it cannot start: {e}"));
                    continue;
                }
            };
            let hooks = hook_table(&self.hooks, &self.trials, &loaded);
            let not_best = configuration::not_best(&self.trials, &loaded.configuration);
            return Ok(KernelStart { loaded, walker, hooks, not_best });
        }
    }
}

/// Every hook's state once `loaded` runs: attached if it is part of it; else what loading it
/// (alone, or with the rest) said.
fn hook_table(probed: &[HookStatus], trials: &Trials, loaded: &loader::Loaded) -> Vec<HookStatus> {
    let used = loaded.configuration.hooks();
    let kind = loaded.configuration.kind;
    probed
        .iter()
        .map(|p| {
            if used.contains(&p.id) {
                return HookStatus { state: HookState::Attached, log: None, ..p.clone() };
            }
            if let Some(r) = loaded.refused.iter().find(|r| r.id == p.id) {
                return r.clone();
            }
            match trials.failures().iter().find(|(k, id, _)| *k == kind && *id == p.id) {
                Some((_, _, why)) => HookStatus { state: HookState::Refused(format!("when loaded with the rest: {why}")), ..p.clone() },
                None => p.clone(),
            }
        })
        .collect()
}

fn kernel_link(k: &mut KernelStart) -> anyhow::Result<kernel_link::KernelLink> {
    let loaded = &mut k.loaded;
    let kind = loaded.configuration.kind;
    let mut take = |name: &str| loaded.ebpf.take_map(name).with_context(|| format!("map {name} missing from the eBPF object"));
    let ring = RingBuf::try_from(take("EVENTS")?)?;
    // The hash map holds state only with the hash-map configuration.
    let socks: Option<BpfHashMap<_, u64, SockState>> = if kind.socket_storage() { None } else { Some(BpfHashMap::try_from(take("SOCKS")?)?) };
    // Where sock_diag samples socket storage, and for MPTCP connections' records, which it
    // samples whatever the configuration.
    let epochs =
        if kind == Kind::StorageDiag || loaded.configuration.mptcp() { Some(kernel_link::Epochs::new(Array::try_from(take("EPOCH")?)?)) } else { None };
    let counters: PerCpuArray<_, u64> = PerCpuArray::try_from(take("COUNTERS")?)?;
    let programs = loaded.ebpf.programs().filter_map(|(name, p)| Some((name.to_string(), p.fd().ok()?.try_clone().ok()?))).collect();
    let mut side = kernel_link::KernelLink::new(ring, socks, counters, programs);
    side.walker = k.walker.take();
    side.epochs = epochs;
    side.kernel_dump = loaded.scan.take().map(|tcp| KernelDump::new(tcp, loaded.scan_files.take()));
    Ok(side)
}

/// Returns freed heap to the system where the allocator keeps it (glibc's arenas; musl's, which
/// the shipped image uses, returns it by itself): after start-up's BTF parse and after each
/// reconcile (both allocate in bulk and free it), so the agent's RSS follows what it keeps.
pub fn give_back_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// For `detector bench-control`: the empty program of `hook`, attached with this kernel's
/// offsets.
#[cfg(feature = "bench-control")]
pub fn attach_control(hook: detector_common::SendHook) -> anyhow::Result<aya::Ebpf> {
    let tracefs = Tracefs::find_or_mount().ok();
    let cfg = loader::kernel_config(tracefs.as_ref(), &KernelBtf::load()?)?;
    loader::attach_control(kernel::object(), &cfg, hook).map_err(|e| anyhow::anyhow!(e))
}

/// (run count, run time ns) summed over the programs of `ebpf`, from the kernel's accounting.
pub fn program_runs(ebpf: &aya::Ebpf) -> (u64, u64) {
    ebpf.programs().filter_map(|(_, p)| p.info().ok()).fold((0, 0), |(c, t), i| (c + i.run_count(), t + i.run_time().as_nanos() as u64))
}
