//! `cargo xtask bench`: connection churn, the send path, scale and detection latency, on this
//! machine, written to BENCHMARKS.md with the trend of earlier runs. Every figure is a median
//! over interleaved rounds with its spread and an off/off control; per-program BPF time comes
//! from the kernel's own accounting in runs of its own (kernel.bpf_stats_enabled).
mod churn;
mod host;
mod latency;
mod report;
mod scale;
mod send;
mod stats;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::bail;
use host::Bins;

/// The sections that run alone (`--only`), printing their part of the report.
const SECTIONS: [&str; 4] = ["churn", "send", "scale", "latency"];

/// How many rounds and cases a run takes.
struct Plan {
    churn_rounds: usize,
    send_rounds: usize,
    scale: Vec<scale::Case>,
    scale_window: Duration,
    latency_runs: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        let case = |conns, namespaces, baseline| scale::Case { conns, namespaces, baseline, stalled_pct: 1 };
        let flood = |conns| scale::Case { conns, namespaces: 0, baseline: false, stalled_pct: 100 };
        if quick {
            Plan { churn_rounds: 2, send_rounds: 2, scale: vec![case(10_000, 0, true), flood(5_000)], scale_window: Duration::from_secs(20), latency_runs: 1 }
        } else {
            Plan {
                churn_rounds: 10,
                send_rounds: 10,
                scale: vec![case(50_000, 0, true), case(200_000, 0, false), case(50_000, 100, false), flood(20_000), flood(40_000), flood(80_000)],
                scale_window: Duration::from_secs(40),
                latency_runs: 3,
            }
        }
    }
}

pub fn run(root: &Path, quick: bool, only: Option<&str>) -> anyhow::Result<()> {
    let release = root.join("target/release");
    let b = Bins { detector: release.join("detector"), loadgen: release.join("loadgen"), peer: release.join("stream-peer") };
    let plan = Plan::new(quick);
    let started = Instant::now();
    if let Some(section) = only {
        let mut s = String::new();
        match section {
            "churn" => churn::report(&mut s, &churn::run(&b, plan.churn_rounds)?),
            "send" => send::report(&mut s, &send::run(&b, plan.send_rounds)?),
            "scale" => scale::report(&mut s, &scale_all(&b, &plan)?),
            "latency" => latency::report(&mut s, &latency_all(&b, &plan)?),
            other => bail!("--only {other}: the sections are {}", SECTIONS.join(", ")),
        }
        println!("{s}");
        return Ok(());
    }
    eprintln!("bench: connection churn (nginx + ab), {} rounds", plan.churn_rounds);
    let churn = churn::run(&b, plan.churn_rounds)?;
    eprintln!("bench: send path, {} rounds", plan.send_rounds);
    let send = send::run(&b, plan.send_rounds)?;
    let scale = scale_all(&b, &plan)?;
    let latency = latency_all(&b, &plan)?;
    let configuration = host::default_configuration(&b);
    let results = report::Results { configuration, churn, send, scale, latency, took_s: started.elapsed().as_secs_f64() };
    let path = root.join("BENCHMARKS.md");
    let text = report::write(&std::fs::read_to_string(&path).unwrap_or_default(), &results);
    std::fs::write(&path, &text)?;
    println!("{text}");
    Ok(())
}

fn scale_all(b: &Bins, plan: &Plan) -> anyhow::Result<Vec<scale::Scale>> {
    plan.scale
        .iter()
        .map(|c| {
            eprintln!("bench: scale, {} connections in {} namespace(s), {} % stalled", c.conns, c.namespaces.max(1), c.stalled_pct);
            scale::run(b, c, plan.scale_window)
        })
        .collect()
}

fn latency_all(b: &Bins, plan: &Plan) -> anyhow::Result<Vec<latency::Latency>> {
    (0..plan.latency_runs)
        .map(|i| {
            eprintln!("bench: detection latency, run {}/{}", i + 1, plan.latency_runs);
            latency::run(b, 5)
        })
        .collect()
}
