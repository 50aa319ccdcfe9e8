//! Prometheus metrics (OpenMetrics text) on `--metrics-addr`. Labels are bounded: reasons,
//! hooks and counters, never a socket, a peer address or a pid.
use std::{net::SocketAddr, sync::Arc};

use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
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
use tokio::net::TcpListener;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

impl ReasonLabel {
    pub fn of(r: crate::verdict::Reason) -> Self {
        Self { reason: r.as_str().into() }
    }
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    pub action: String,
    pub result: String,
    /// Why it was skipped (a fixed set); "none" otherwise.
    pub why: String,
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
    pub sample_errors: Counter,
    pub sweep_duration: Histogram,
    pub stall_duration: Histogram,
    pub hook_attached: Family<HookLabel, Gauge>,
    pub reaps: Family<ActionLabel, Counter>,
    pub audit_lines_dropped: Counter,
    pub log_lines_dropped: Counter,
    pub build_info: Family<BuildLabel, Gauge>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("detector");
        let m = Self {
            stalls_detected: Family::default(),
            stalls_open: Family::default(),
            stalls_recovered: Counter::default(),
            sockets_tracked: Gauge::default(),
            sockets_forgotten: Family::default(),
            kernel_events_dropped: Counter::default(),
            kernel_map_full: Counter::default(),
            kernel_read_errors: Counter::default(),
            kernel_retransmits: Counter::default(),
            sample_errors: Counter::default(),
            sweep_duration: Histogram::new(exponential_buckets(0.000_25, 2.0, 14)),
            stall_duration: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            hook_attached: Family::default(),
            reaps: Family::default(),
            audit_lines_dropped: Counter::default(),
            log_lines_dropped: Counter::default(),
            build_info: Family::default(),
            registry: Registry::default(),
            ready: std::sync::atomic::AtomicBool::new(false),
            heartbeat_ms: std::sync::atomic::AtomicU64::new(0),
            heartbeat_limit_ms: std::sync::atomic::AtomicU64::new(u64::MAX),
        };
        registry.register("stalls_detected", "Stalls detected, by reason", m.stalls_detected.clone());
        registry.register("stalled_sockets", "Sockets stalled now, by reason", m.stalls_open.clone());
        registry.register("stalls_recovered", "Stalls that ended because progress resumed", m.stalls_recovered.clone());
        registry.register("sockets_tracked", "Sockets the agent tracks now", m.sockets_tracked.clone());
        registry.register(
            "sockets_forgotten",
            "Tracked sockets dropped from the table, by why: closed (close event), gone (a sample found it closed), idle (found by a dump, no longer stuck), replaced (its address taken by a new socket)",
            m.sockets_forgotten.clone(),
        );
        registry.register("kernel_events_dropped", "Kernel events lost to a full ring buffer", m.kernel_events_dropped.clone());
        registry.register("kernel_map_full", "Sockets not tracked because the socket map was full", m.kernel_map_full.clone());
        registry.register("kernel_read_errors", "Failed kernel memory reads in the eBPF programs", m.kernel_read_errors.clone());
        registry.register("retransmits", "Retransmits on tracked sockets, as tcp:tcp_retransmit_skb sees them", m.kernel_retransmits.clone());
        registry.register("sample_errors", "Failed sock_diag samples", m.sample_errors.clone());
        registry.register("sweep_duration_seconds", "Time one detection pass takes", m.sweep_duration.clone());
        registry.register("stall_duration_seconds", "How long stalls lasted when they ended (recovered, closed or reaped)", m.stall_duration.clone());
        registry.register("hook_attached", "1 for each kernel hook attached", m.hook_attached.clone());
        registry.register("reaps", "Reaping decisions, by action, result (ok, failed, dry_run, skipped) and, for skipped, why", m.reaps.clone());
        registry.register("audit_lines_dropped", "Audit lines dropped because stdout did not keep up", m.audit_lines_dropped.clone());
        registry.register("log_lines_dropped", "Log lines dropped because stderr did not keep up", m.log_lines_dropped.clone());
        registry.register("build_info", "Agent version and kernel release", m.build_info.clone());
        for r in crate::verdict::Reason::ALL {
            // Export zeros from the start so alerts see every series.
            let l = ReasonLabel { reason: r.as_str().into() };
            let _ = m.stalls_detected.get_or_create(&l);
            let _ = m.stalls_open.get_or_create(&l);
        }
        for why in crate::tracker::Forget::ALL {
            let _ = m.sockets_forgotten.get_or_create(&WhyLabel { why: why.as_str().into() });
        }
        for action in crate::reaper::Action::ALL {
            for result in ["ok", "failed", "dry_run"] {
                let _ = m.reaps.get_or_create(&ActionLabel { action: action.as_str().into(), result: result.into(), why: "none".into() });
            }
        }
        // Every series an alert may look for exists from the start (bounded: 5 actions × 10 whys).
        for action in crate::reaper::Action::ALL {
            for why in crate::reaper::SkipWhy::ALL {
                let _ = m.reaps.get_or_create(&ActionLabel { action: action.as_str().into(), result: "skipped".into(), why: why.as_str().into() });
            }
        }
        m.build_info.get_or_create(&BuildLabel { version: env!("CARGO_PKG_VERSION").into(), kernel: crate::kernel::kernel_release() }).set(1);
        Self { registry, ..m }
    }

    /// Counts one reaping decision (the audit line goes out separately).
    pub fn reaped(&self, action: crate::reaper::Action, result: &str, why: Option<crate::reaper::SkipWhy>) {
        let label = ActionLabel { action: action.as_str().into(), result: result.into(), why: why.map_or("none", |w| w.as_str()).into() };
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

    pub fn forgot(&self, why: crate::tracker::Forget) {
        self.sockets_forgotten.get_or_create(&WhyLabel { why: why.as_str().into() }).inc();
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

/// Serves `/metrics` (and `/healthz`) until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let resp = match req.uri().path() {
                        "/metrics" => Response::builder()
                            .header("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")
                            .body(Full::new(Bytes::from(metrics.render()))),
                        "/healthz" if metrics.alive() => Response::builder().body(Full::new(Bytes::from("ok\n"))),
                        "/healthz" => Response::builder().status(503).body(Full::new(Bytes::from("the detection loop has not run for too long\n"))),
                        "/readyz" if metrics.ready.load(std::sync::atomic::Ordering::Relaxed) => Response::builder().body(Full::new(Bytes::from("ready\n"))),
                        "/readyz" => Response::builder().status(503).body(Full::new(Bytes::from("starting: no detection pass yet\n"))),
                        _ => Response::builder().status(404).body(Full::new(Bytes::from("not found; try /metrics\n"))),
                    };
                    Ok::<_, hyper::http::Error>(resp.expect("static response parts are valid"))
                }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

fn monotonic_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map(|t| t.tv_sec() as u64 * 1_000 + t.tv_nsec() as u64 / 1_000_000).unwrap_or(0)
}

pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("binding --metrics-addr {addr}: {e}; pick a free address or pass --metrics-addr off"))
}
