//! `detector scan`: a one-shot stall scan with no agent and no eBPF, for a node where the agent
//! is not installed. It finds every stuck TCP socket (bytes queued, or in CLOSE_WAIT) in every
//! network namespace, samples them with sock_diag for the grace window, and reports those that
//! made no progress, with the same verdict and attribution as the agent.
use std::time::{Duration, Instant};

use crate::{
    agent::sweep::{Config, Sweep},
    metrics::Metrics,
    report::StalledSocket,
    sample::netns::NetnsPool,
};

pub fn run(grace: Duration, interval: Duration, pod_logs_dir: std::path::PathBuf) -> anyhow::Result<Vec<StalledSocket>> {
    let mut pool = NetnsPool::new()?;
    // One reconcile, at the start: its budget does not apply.
    let mut sweep = Sweep::new(Config {
        grace,
        close_wait_grace: grace,
        trickle: Default::default(),
        max_tracked: crate::tracker::TRACKED_MAX,
        interval,
        reconcile_cpu: crate::agent::schedule::RECONCILE_CPU,
        pod_logs_dir,
    });
    sweep.reconcile(&mut pool, None);
    // Counted nowhere: a scan exports no metrics.
    let metrics = Metrics::new();
    let end = Instant::now() + grace + interval;
    loop {
        let stalled = sweep.pass(&mut pool, None, &metrics, None);
        if Instant::now() >= end {
            return Ok(stalled);
        }
        std::thread::sleep(interval);
    }
}
