//! The running agent: loads the kernel side and runs the sweep thread (events → table →
//! samples and verdicts → report → reaper). What it publishes is read through [`Handle`]; the
//! surfaces (API, metrics, CLI) live elsewhere and are wired to it by `daemon`.
mod attribute;
pub mod kernel_side;
mod pass;
pub mod reconcile;
pub mod sweep;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, RwLock, atomic::AtomicBool, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{HashMap as BpfHashMap, PerCpuArray, RingBuf};
use detector_common::{SendHook, SockState};

use crate::{
    kernel::{self, btf::KernelBtf, caps, loader, tracefs::Tracefs},
    metrics::{HookLabel, Metrics},
    reaper::{Reaper, config::Policy},
    report::{AgentSetup, Explain, Published, TrackedSocket},
    sample::{scan::Scanner, walk::Walker},
};

#[derive(Debug, Clone)]
pub struct Options {
    pub grace: Duration,
    pub interval: Duration,
    /// The reconcile's CPU budget, a fraction of a core.
    pub reconcile_cpu: f64,
    pub api_socket: PathBuf,
    pub metrics_addr: Option<SocketAddr>,
    pub max_sockets: u32,
    pub ring_buffer_bytes: u32,
    pub send_hook: Option<SendHook>,
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
    pub hooks: Vec<loader::HookStatus>,
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

impl Agent {
    /// Checks privileges, loads and attaches the programs, and starts the sweep thread.
    pub fn start(opts: &Options, rt: tokio::runtime::Handle) -> anyhow::Result<Agent> {
        caps::check_self()?;
        let tracefs = Tracefs::find_or_mount()?;
        // The parsed kernel BTF is tens of MiB: keep only the offsets taken from it.
        let cfg = loader::kernel_config(&tracefs, &KernelBtf::load()?)?;
        let sizes = loader::Sizes { max_sockets: opts.max_sockets, ring_buffer_bytes: opts.ring_buffer_bytes };
        let mut loaded = loader::load(kernel::object(), &cfg, sizes, opts.send_hook)?;
        let walker = start_walk(&mut loaded)?;
        let sampling = walker.as_ref().map_or("sock_diag lookups".into(), |w| format!("kernel walk of socket storage (HZ {})", w.hz()));
        let status = Arc::new(status_info(opts, &loaded, sampling));
        log_hooks(&status);
        let metrics = Arc::new(Metrics::new().with_pod_series(opts.pod_metrics_max_series));
        for h in &loaded.hooks {
            metrics.hook_attached.get_or_create(&HookLabel { role: h.role.as_str().into(), hook: h.hook.into() }).set(h.attached() as i64);
        }
        let programs = loaded.ebpf.programs().filter_map(|(name, p)| p.info().ok().map(|i| (name.to_string(), i.id()))).collect();
        let kernel = kernel_side(&mut loaded, walker)?;
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
        let cfg = sweep::Config { grace: opts.grace, interval: opts.interval, reconcile_cpu: opts.reconcile_cpu, pod_logs_dir: opts.pod_logs_dir.clone() };
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
        Ok(Agent { handle, stop, sweep: Some(sweep), ended, _ebpf: loaded.ebpf })
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

fn status_info(opts: &Options, loaded: &loader::Loaded, sampling: String) -> StatusInfo {
    let destroy = crate::reaper::probe_destroy();
    let setup = AgentSetup {
        version: env!("CARGO_PKG_VERSION").into(),
        kernel: kernel::kernel_release(),
        send_hook: loaded.send_label().into(),
        storage: if loaded.send_hook.socket_storage() { "socket storage" } else { "hash map" }.into(),
        sampling,
        grace_ms: opts.grace.as_millis() as u64,
        interval_ms: opts.interval.as_millis() as u64,
        max_sockets: opts.max_sockets,
        destroy_supported: destroy.is_ok(),
        destroy_detail: destroy.err().unwrap_or_else(|| "supported".into()),
        dry_run: opts.policy.dry_run,
        selectors: opts.policy.selectors.iter().map(|s| s.name.clone()).collect(),
    };
    StatusInfo { setup, hooks: loaded.hooks.clone() }
}

fn log_hooks(info: &StatusInfo) {
    let s = &info.setup;
    if s.destroy_supported {
        log::info!("socket destroy (sock_diag SOCK_DESTROY): supported");
    } else {
        log::warn!("socket destroy (sock_diag SOCK_DESTROY): not supported: {}", s.destroy_detail);
    }
    log::info!("policy: {} selector(s){}", s.selectors.len(), if s.dry_run { ", dry run" } else { "" });
    log::info!("kernel {}; send-path hook: {} ({}); sampling: {}", s.kernel, s.send_hook, s.storage, s.sampling);
    for h in &info.hooks {
        log::info!("hook {} ({}): {}", h.hook, h.role.as_str(), loader::describe(&h.state));
    }
}

/// The sampling walk, with the kernel's HZ measured; when that fails, the hook table says why
/// and sock_diag samples instead.
/// The kernel walk, which sampling needs with socket storage: there its sockets reach the
/// agent only through the walk, so an agent without one would be blind and must not start.
fn start_walk(loaded: &mut loader::Loaded) -> anyhow::Result<Option<Walker>> {
    let storage = loaded.send_hook.socket_storage();
    let Some(link) = loaded.walk.take() else {
        anyhow::ensure!(
            !storage,
            "the kernel walk of socket storage (iter bpf_sk_storage_map) did not attach, and the send hook keeps its sockets there; pass --send-hook sock-send-length to use the hash map instead"
        );
        return Ok(None);
    };
    match Walker::start(link) {
        Ok(w) => Ok(Some(w)),
        Err(e) if storage => {
            anyhow::bail!("the kernel walk of socket storage cannot start: {e}; pass --send-hook sock-send-length to use the hash map instead")
        }
        Err(e) => {
            if let Some(h) = loaded.hooks.iter_mut().find(|h| h.id == loader::HookId::Walk) {
                h.state = loader::HookState::Refused(format!("{e} (sock_diag samples)"));
            }
            Ok(None)
        }
    }
}

fn kernel_side(loaded: &mut loader::Loaded, walker: Option<Walker>) -> anyhow::Result<kernel_side::KernelSide> {
    let mut take = |name: &str| loaded.ebpf.take_map(name).with_context(|| format!("map {name} missing from the eBPF object"));
    let ring = RingBuf::try_from(take("EVENTS")?)?;
    // The hash map holds state only with the fallback send hooks.
    let socks: Option<BpfHashMap<_, u64, SockState>> = if loaded.send_hook.socket_storage() { None } else { Some(BpfHashMap::try_from(take("SOCKS")?)?) };
    let counters: PerCpuArray<_, u64> = PerCpuArray::try_from(take("COUNTERS")?)?;
    let programs = loaded.ebpf.programs().filter_map(|(name, p)| Some((name.to_string(), p.fd().ok()?.try_clone().ok()?))).collect();
    let mut side = kernel_side::KernelSide::new(ring, socks, counters, programs);
    side.walker = walker;
    side.scanner = loaded.scan.take().map(|tcp| Scanner::new(tcp, loaded.scan_files.take()));
    Ok(side)
}

/// For `detector bench-control`: the empty program of `hook`, attached with this kernel's
/// offsets.
pub fn attach_control(hook: SendHook) -> anyhow::Result<aya::Ebpf> {
    let tracefs = Tracefs::find_or_mount()?;
    let cfg = loader::kernel_config(&tracefs, &KernelBtf::load()?)?;
    loader::attach_control(kernel::object(), &cfg, hook).map_err(|e| anyhow::anyhow!(e))
}

/// (run count, run time ns) summed over the programs of `ebpf`, from the kernel's accounting.
pub fn program_runs(ebpf: &aya::Ebpf) -> (u64, u64) {
    ebpf.programs().filter_map(|(_, p)| p.info().ok()).fold((0, 0), |(c, t), i| (c + i.run_count(), t + i.run_time().as_nanos() as u64))
}
