//! `detector scan`: a one-shot stall scan with no agent and no eBPF, for a node where the agent
//! is not installed. It finds every TCP socket with bytes queued (or in CLOSE_WAIT) in every
//! network namespace, samples them with sock_diag for the grace window, and reports those that
//! made no progress, with the same verdict and attribution as the agent.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    agent::{
        Shared, Snapshot,
        sweep::{Config, Sweep},
    },
    api::StalledSocket,
    metrics::Metrics,
    sample::netns::NetnsPool,
};

pub fn run(grace: Duration, interval: Duration, pod_logs_dir: std::path::PathBuf) -> anyhow::Result<Vec<StalledSocket>> {
    let mut pool = NetnsPool::new()?;
    let mut sweep = Sweep::new(Config {
        grace,
        interval,
        pod_logs_dir,
    });
    sweep.reconcile(&mut pool);
    let shared = Arc::new(Shared {
        programs: Vec::new(),
        snapshot: std::sync::RwLock::new(Snapshot::default()),
        queries: std::sync::Mutex::new(None),
        metrics: Arc::new(Metrics::new()),
        started: Instant::now(),
        status: serde_json::Value::Null,
    });
    let end = Instant::now() + grace + interval;
    loop {
        let stalled = sweep.pass(&mut pool, &shared, None);
        if Instant::now() >= end {
            return Ok(stalled);
        }
        std::thread::sleep(interval);
    }
}
