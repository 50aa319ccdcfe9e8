//! The running agent: loads the kernel side, then wires events → tracker → sweep (samples and
//! verdicts) → snapshot, which the API and metrics read.
pub mod sweep;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, RwLock, atomic::AtomicBool, mpsc},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{HashMap as BpfHashMap, PerCpuArray, RingBuf};
use detector_common::SockState;
use serde_json::json;

use crate::{
    api::{self, Request, StalledSocket},
    kernel::{self, btf::KernelBtf, caps, loader, tracefs::Tracefs},
    metrics::{self, HookLabel, Metrics},
};

#[derive(Debug, Clone)]
pub struct Options {
    pub grace: Duration,
    pub interval: Duration,
    pub api_socket: PathBuf,
    pub metrics_addr: Option<SocketAddr>,
    pub max_sockets: u32,
    pub ring_buffer_bytes: u32,
    pub send_hook: Option<detector_common::SendHook>,
    pub pod_logs_dir: PathBuf,
    pub policy: crate::reaper::config::Policy,
}

/// What a sweep publishes.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub stalled: Vec<StalledSocket>,
    pub tracked: usize,
    /// Entries in the kernel's hash map (fallback hooks only).
    pub kernel_map_entries: Option<usize>,
    pub sweeps: u64,
    pub last_sweep_ms: f64,
}

/// State shared by the sweep thread, the API and metrics.
pub struct Shared {
    pub snapshot: RwLock<Snapshot>,
    /// (name, kernel id) of the programs this agent attached, for their run-time statistics.
    pub programs: Vec<(String, u32)>,
    /// Questions only the sweep thread can answer (it owns the socket table).
    pub queries: std::sync::Mutex<Option<mpsc::Sender<sweep::QueryRequest>>>,
    pub metrics: Arc<Metrics>,
    pub started: Instant,
    pub status: serde_json::Value,
}

impl Shared {
    pub fn answer(&self, req: &Request) -> serde_json::Value {
        let snap = self.snapshot.read().map(|s| s.clone()).unwrap_or_default();
        match req {
            Request::Stalled => serde_json::to_value(&snap.stalled).unwrap_or_default(),
            Request::Sockets | Request::Explain { .. } => json!({"error": "answered by the sweep thread"}),
            Request::Status => {
                let mut v = self.status.clone();
                v["uptime_s"] = json!(self.started.elapsed().as_secs());
                v["sockets_tracked"] = json!(snap.tracked);
                v["kernel_map_entries"] = json!(snap.kernel_map_entries);
                v["sockets_stalled"] = json!(snap.stalled.len());
                v["sweeps"] = json!(snap.sweeps);
                v["last_sweep_ms"] = json!(snap.last_sweep_ms);
                v["programs"] = json!(self.program_stats());
                v
            }
        }
    }
}

impl Shared {
    /// Kernel accounting per program (counted only while kernel.bpf_stats_enabled=1).
    fn program_stats(&self) -> Vec<serde_json::Value> {
        aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter_map(|info| {
                let (name, _) = self.programs.iter().find(|(_, id)| *id == info.id())?;
                let runs = info.run_count();
                let ns = info.run_time().as_nanos() as u64;
                Some(json!({
                    "name": name,
                    "run_count": runs,
                    "run_time_ns": ns,
                    "avg_ns": if runs > 0 { ns as f64 / runs as f64 } else { 0.0 },
                }))
            })
            .collect()
    }
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    caps::check_self()?;
    let tracefs = Tracefs::find_or_mount()?;
    // The parsed kernel BTF is tens of MiB: keep only the offsets taken from it.
    let cfg = loader::kernel_config(&tracefs, &KernelBtf::load()?)?;
    let mut loaded = loader::load(
        kernel::object(),
        &cfg,
        loader::Sizes {
            max_sockets: opts.max_sockets,
            ring_buffer_bytes: opts.ring_buffer_bytes,
        },
        opts.send_hook,
    )?;
    let kernel_release = kernel::kernel_release();
    let destroy_support = crate::reaper::probe_destroy();
    match &destroy_support {
        Ok(()) => log::info!("socket destroy (sock_diag SOCK_DESTROY): supported"),
        Err(e) => log::warn!("socket destroy (sock_diag SOCK_DESTROY): not supported: {e}"),
    }
    log::info!(
        "policy: {} selector(s){}",
        opts.policy.selectors.len(),
        if opts.policy.dry_run { ", dry run" } else { "" }
    );
    let storage = if loaded.send_hook.socket_storage() { "socket storage" } else { "hash map" };
    log::info!("kernel {kernel_release}; send-path hook: {} ({storage})", loaded.send_label());
    for h in &loaded.hooks {
        log::info!("hook {} ({}): {}", h.hook, h.role.as_str(), loader::describe(&h.state));
    }

    let metrics = Metrics::new();
    for h in &loaded.hooks {
        metrics
            .hook_attached
            .get_or_create(&HookLabel {
                role: h.role.as_str().into(),
                hook: h.hook.into(),
            })
            .set(h.attached() as i64);
    }
    let programs = loaded
        .ebpf
        .programs()
        .filter_map(|(name, p)| p.info().ok().map(|i| (name.to_string(), i.id())))
        .collect();
    let shared = Arc::new(Shared {
        programs,
        snapshot: RwLock::new(Snapshot::default()),
        queries: std::sync::Mutex::new(None),
        metrics: Arc::new(metrics),
        started: Instant::now(),
        status: json!({
            "version": env!("CARGO_PKG_VERSION"),
            "kernel": kernel_release,
            "send_hook": loaded.send_label(),
            "storage": storage,
            "hooks": loaded.hooks,
            "grace_ms": opts.grace.as_millis() as u64,
            "interval_ms": opts.interval.as_millis() as u64,
            "max_sockets": opts.max_sockets,
            "destroy_supported": destroy_support.is_ok(),
            "destroy_detail": destroy_support.err().unwrap_or_else(|| "supported".into()),
            "dry_run": opts.policy.dry_run,
            "selectors": opts.policy.selectors.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        }),
    });

    let mut take = |name: &str| {
        loaded
            .ebpf
            .take_map(name)
            .with_context(|| format!("map {name} missing from the eBPF object"))
    };
    let ring = RingBuf::try_from(take("EVENTS")?)?;
    // The hash map holds state only with the fallback send hooks.
    let socks: Option<BpfHashMap<_, u64, SockState>> = if loaded.send_hook.socket_storage() {
        None
    } else {
        Some(BpfHashMap::try_from(take("SOCKS")?)?)
    };
    let counters: PerCpuArray<_, u64> = PerCpuArray::try_from(take("COUNTERS")?)?;

    let listener = api::server::bind(&opts.api_socket)?;
    let _socket_file = api::server::SocketFile(opts.api_socket.clone());
    let metrics_listener = match opts.metrics_addr {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    if let Some(l) = &metrics_listener {
        log::info!("metrics on http://{}/metrics", l.local_addr()?);
    }
    log::info!("API on {}; grace {:?}", opts.api_socket.display(), opts.grace);

    let (query_tx, query_rx) = mpsc::channel();
    if let Ok(mut q) = shared.queries.lock() {
        *q = Some(query_tx);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sweeper = {
        let shared = shared.clone();
        let stop = stop.clone();
        let cfg = sweep::Config {
            grace: opts.grace,
            interval: opts.interval,
            pod_logs_dir: opts.pod_logs_dir.clone(),
        };
        let reaper = crate::reaper::Reaper::new(
            opts.policy.clone(),
            opts.grace,
            tokio::runtime::Handle::current(),
            shared.metrics.clone(),
        );
        std::thread::Builder::new()
            .name("sweep".into())
            .spawn(move || sweep::run(cfg, ring, query_rx, socks, counters, shared, reaper, stop))
            .context("starting the sweep thread")?
    };
    let api_task = tokio::spawn(api::server::serve(listener, shared.clone()));
    let metrics_task = metrics_listener.map(|l| tokio::spawn(metrics::serve(l, shared.metrics.clone())));

    wait_for_signal().await;
    log::info!("stopping");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    api_task.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    let _ = sweeper.join();
    Ok(())
}

/// For `detector bench-control`: the empty program of `hook`, attached with this kernel's
/// offsets.
pub fn attach_control(hook: detector_common::SendHook) -> anyhow::Result<aya::Ebpf> {
    let tracefs = Tracefs::find_or_mount()?;
    let cfg = loader::kernel_config(&tracefs, &KernelBtf::load()?)?;
    loader::attach_control(kernel::object(), &cfg, hook).map_err(|e| anyhow::anyhow!(e))
}

/// (run count, run time ns) summed over the programs of `ebpf`, from the kernel's accounting.
pub fn program_runs(ebpf: &aya::Ebpf) -> (u64, u64) {
    ebpf.programs()
        .filter_map(|(_, p)| p.info().ok())
        .fold((0, 0), |(c, t), i| (c + i.run_count(), t + i.run_time().as_nanos() as u64))
}

/// Blocks until SIGTERM or SIGINT.
pub fn wait_for_termination() {
    if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
        rt.block_on(wait_for_signal());
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
