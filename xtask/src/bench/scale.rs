//! Scale: what the agent costs with many connections on the node, by how many it tracks (bytes
//! waiting) and reports (stalled), on loopback and spread over many network namespaces; and
//! the userspace baseline a team writes today (one `ss -tin` dump per second).
use std::{
    collections::HashMap,
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::bail;
use detector_tests::{Namespaces, Peer};

use super::{
    host::{self, Bins},
    stats::{Spread, median},
};

/// One case: connections, namespaces they are spread over, and whether to run the baseline.
pub struct Case {
    pub conns: usize,
    pub namespaces: usize,
    pub baseline: bool,
    /// Percent of the connections stalled: 1 on a node at work, 100 for a flood (one client
    /// stalling every connection it opens).
    pub stalled_pct: u32,
}

/// The agent's default `--max-tracked`.
const TRACKED_MAX: usize = 25_000;

pub struct Scale {
    pub case_conns: usize,
    pub stalled_pct: u32,
    pub namespaces: usize,
    pub tracked: f64,
    pub stalled: f64,
    /// The agent's CPU between reconciles (passes, events, API), per 10 s slice.
    pub passes_pct: Spread,
    /// The reconcile's share: its CPU time over the time between reconciles.
    pub reconcile_pct: f64,
    pub reconcile_cpu_ms: f64,
    pub reconcile_every_s: f64,
    pub rss_mib: f64,
    pub map_mib: f64,
    pub pass_ms: f64,
    pub sock_diag_lookups_per_s: f64,
    /// How long `detector stalled` took to answer (median of three).
    pub stalled_answer_ms: f64,
    /// CPU seconds of the agent's first 45 s (start-up scan, the first reconcile, listing the
    /// stalls and finding their owners).
    pub startup_cpu_s: f64,
    pub base: Option<(f64, f64)>,
}

impl Scale {
    /// Everything the agent costs: between reconciles, plus the reconciles spread over their
    /// interval.
    pub fn total_pct(&self) -> f64 {
        self.passes_pct.median + self.reconcile_pct
    }
}

/// `loadgen hold` processes: 10 % of the connections send 512 B twice a second (and are read),
/// `stalled_pct` % are stalled (a reader that never reads), the rest idle; a flood (100 %)
/// sends on none but the stalled. Per process, as many as its fd
/// limit holds (two per connection) and at most 25,000 (one listener's ephemeral ports),
/// spread over `namespaces` (loopback in each).
fn hold(b: &Bins, conns: usize, stalled_pct: u32, ns: &Namespaces) -> anyhow::Result<Vec<Peer>> {
    let (sending, stalled) = if stalled_pct >= 100 { ("0", "100".to_string()) } else { ("10", stalled_pct.to_string()) };
    let most = ((host::raise_nofile(1 << 20) as usize).saturating_sub(200) / 2).clamp(1000, 25_000);
    let places = ns.0.len().max(1);
    let per_place = conns.div_ceil(places);
    let mut procs = Vec::new();
    for p in 0..places {
        let mut left = per_place.min(conns - (p * per_place).min(conns));
        while left > 0 {
            let n = left.min(most).to_string();
            let peer = match ns.0.get(p) {
                Some(name) => Peer::spawn("ip", &["netns", "exec", name, b.loadgen(), "hold", &n, sending, &stalled]),
                None => Peer::spawn(b.loadgen(), &["hold", &n, sending, &stalled]),
            };
            if let Err(e) = peer.try_expect("READY", Duration::from_secs(120)) {
                bail!("loadgen hold {n}: {e}");
            }
            procs.push(peer);
            left -= left.min(most);
        }
    }
    Ok(procs)
}

pub fn run(b: &Bins, case: &Case, window: Duration) -> anyhow::Result<Scale> {
    let ns = Namespaces::create("scale", case.namespaces).map_err(anyhow::Error::msg)?;
    let load = hold(b, case.conns, case.stalled_pct, &ns)?;
    let metrics = format!("127.0.0.1:{}", detector_tests::free_port());
    let agent = host::agent(b, "30s", &["--interval", "1s", "--max-sockets", "262144", "--metrics-addr", &metrics]);
    // Past the start-up scan and the first grace window (30 s): the stalls are listed and their
    // owners found, once (a /proc pass over every process's fds, since no send hook named
    // them), and the slices measure the steady state. The start-up's own cost is counted apart.
    let pid = agent.pid();
    std::thread::sleep(Duration::from_secs(45));
    let startup_cpu_s = host::cpu_secs(pid);
    let counter = |name: &str| detector_tests::metric(&detector_tests::http_get(&metrics, "/metrics").1, name).unwrap_or(0.0);
    let (mut passes, mut cpu) = (Vec::new(), Vec::new());
    let (t0, lookups0) = (Instant::now(), counter("detector_sock_diag_lookups_total"));
    while t0.elapsed() < window {
        // 10 s slices, less the CPU of any reconcile that ran in them (counted apart below).
        let (c0, r0, s0) = (host::cpu_secs(pid), counter("detector_reconcile_cpu_seconds_sum"), Instant::now());
        std::thread::sleep(Duration::from_secs(10));
        let reconciled = counter("detector_reconcile_cpu_seconds_sum") - r0;
        cpu.push((host::cpu_secs(pid) - c0 - reconciled).max(0.0) / s0.elapsed().as_secs_f64() * 100.0);
        let st = agent.query("status").map_err(anyhow::Error::msg)?;
        passes.push(st["last_sweep_ms"].as_f64().unwrap_or(f64::NAN));
    }
    let lookups = (counter("detector_sock_diag_lookups_total") - lookups0) / t0.elapsed().as_secs_f64();
    let st = agent.query("status").map_err(anyhow::Error::msg)?;
    let num = |k: &str| st[k].as_f64().unwrap_or(0.0);
    let (reconcile_cpu_ms, reconcile_every_s) = (num("reconcile_cpu_ms"), num("reconcile_every_ms") / 1e3);
    let mut answers: Vec<f64> = (0..3)
        .map(|_| {
            let asked = Instant::now();
            let _ = agent.query("stalled");
            asked.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    let (rss_mib, map_mib) = (host::rss_mib(pid), host::bpf_map_mib(pid));
    drop(agent);
    let base = if case.baseline { Some(baseline(window)?) } else { None };
    drop(load);
    Ok(Scale {
        case_conns: case.conns,
        stalled_pct: case.stalled_pct,
        namespaces: case.namespaces,
        tracked: num("sockets_tracked"),
        stalled: num("sockets_stalled"),
        passes_pct: Spread::of(&cpu),
        reconcile_pct: if reconcile_every_s > 0.0 { reconcile_cpu_ms / 1e3 / reconcile_every_s * 100.0 } else { 0.0 },
        reconcile_cpu_ms,
        reconcile_every_s,
        rss_mib,
        map_mib,
        pass_ms: median(&mut passes),
        sock_diag_lookups_per_s: lookups,
        stalled_answer_ms: median(&mut answers),
        startup_cpu_s,
        base,
    })
}

/// What a team writes today: one `ss -tin` dump of every socket per second, parsed for Send-Q
/// and bytes_acked (host namespace only). Returns (CPU % of a core, ms per dump).
fn baseline(window: Duration) -> anyhow::Result<(f64, f64)> {
    let cpu0 = host::own_and_children_cpu_secs();
    let t0 = Instant::now();
    let mut pass = Vec::new();
    let mut seen = HashMap::new();
    while t0.elapsed() < window {
        let tick = Instant::now();
        let out = detector_tests::run("ss", &["-tinH", "state", "established"]).map_err(anyhow::Error::msg)?;
        parse_ss(&out, &mut seen);
        pass.push(tick.elapsed().as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed()));
    }
    Ok(((host::own_and_children_cpu_secs() - cpu0) / t0.elapsed().as_secs_f64() * 100.0, median(&mut pass)))
}

/// `ss -tinH` prints a socket line (state, Recv-Q, Send-Q, local, peer) followed by an info
/// line with `bytes_acked:N`. Keeps (send_q, bytes_acked) per connection.
pub fn parse_ss(out: &str, seen: &mut HashMap<String, (u64, u64)>) {
    let mut key = None;
    let mut sendq = 0;
    for line in out.lines() {
        if !line.starts_with(|c: char| c.is_whitespace()) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 4 {
                sendq = f[1].parse().unwrap_or(0);
                key = Some(format!("{} {}", f[2], f[3]));
            }
        } else if let Some(k) = key.take() {
            let acked = line.split_whitespace().find_map(|w| w.strip_prefix("bytes_acked:")).and_then(|v| v.parse().ok()).unwrap_or(0);
            seen.insert(k, (sendq, acked));
        }
    }
}

pub fn report(s: &mut String, all: &[Scale]) {
    let _ = writeln!(s, "## 2. Scale (and 4. the userspace baseline)\n");
    let _ = writeln!(
        s,
        "Connections held by `loadgen hold` processes, opened before the agent starts (loopback; in the namespace case, loopback inside each namespace): 10 % send 512 B twice a second and are read, 1 % are stalled (a reader that never reads, small buffers), the rest idle; in the flood case every connection is stalled, all from one client process and address (what any remote client can do: ask for a large answer, never read), past the default `--max-tracked` and the 1,024 stalls kept in full. Agent: release build, `--grace 30s --interval 1s`, measured from 45 s after its start (the stalls listed and their owners found; that start-up's CPU is its own column). Its CPU is counted in two parts: between reconciles (10 s slices, less any reconcile in them: median [quartiles]), and the reconcile (after the start-up pass over each namespace's TCP sockets, which is counted in the start-up, one pass over every process's open files; its interval stretches to stay within its CPU budget) as its last CPU time over its interval. Tracked: sockets with bytes waiting (the walk's records) and those found by the reconcile. sock_diag lookups: per-socket samples the kernel walk could not take. Baseline: what a team writes today, one `ss -tin` dump of every socket per second, parsed for Send-Q and bytes_acked (it sees one namespace).\n"
    );
    let _ = writeln!(
        s,
        "| connections | namespaces | tracked | stalled | agent CPU (% of a core) | between reconciles | reconcile | sock_diag lookups | agent RSS | BPF maps | pass | `detector stalled` | start-up CPU | baseline CPU | baseline dump |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for x in all {
        let (bc, bp) = x.base.map_or(("".into(), "".into()), |(c, p)| (format!("{c:.1} %"), format!("{p:.0} ms")));
        let _ = writeln!(
            s,
            "| {}{} | {} | {:.0} | {:.0} | {:.2} % | {:.2} [{:.2}…{:.2}] % | {:.2} % ({:.0} ms every {:.0} s) | {:.1}/s | {:.1} MiB | {:.1} MiB | {:.1} ms | {:.0} ms | {:.1} s | {bc} | {bp} |",
            x.case_conns,
            if x.stalled_pct >= 100 { " (flood: all stalled)" } else { "" },
            x.namespaces.max(1),
            x.tracked,
            x.stalled,
            x.total_pct(),
            x.passes_pct.median,
            x.passes_pct.p25,
            x.passes_pct.p75,
            x.reconcile_pct,
            x.reconcile_cpu_ms,
            x.reconcile_every_s,
            x.sock_diag_lookups_per_s,
            x.rss_mib,
            x.map_mib,
            x.pass_ms,
            x.stalled_answer_ms,
            x.startup_cpu_s
        );
    }
    let _ = writeln!(s, "\nTargets:\n");
    let verdict = |ok: bool| if ok { "met" } else { "not met" };
    for x in all.iter().filter(|x| x.stalled_pct < 100) {
        let target = if x.case_conns >= 200_000 { 1.0 } else { 0.3 };
        let _ = writeln!(
            s,
            "- {} connections in {} namespace(s): CPU ≤ {target} %: {} ({:.2} %); RSS ≤ 48 MiB: {} ({:.1} MiB)",
            x.case_conns,
            x.namespaces.max(1),
            verdict(x.total_pct() <= target),
            x.total_pct(),
            verdict(x.rss_mib <= 48.0),
            x.rss_mib
        );
    }
    let floods: Vec<&Scale> = all.iter().filter(|x| x.stalled_pct >= 100).collect();
    for x in &floods {
        let _ = writeln!(
            s,
            "- a flood of {} stalled connections from one client: RSS ≤ 64 MiB: {} ({:.1} MiB); `detector stalled` ≤ 1 s: {} ({:.0} ms)",
            x.case_conns,
            verdict(x.rss_mib <= 64.0),
            x.rss_mib,
            verdict(x.stalled_answer_ms <= 1000.0),
            x.stalled_answer_ms
        );
    }
    // Flat: once the table is full (`--max-tracked`, 25,000 by default), more stalled sockets
    // add at most a tenth to the RSS. Rows below the cap still grow with what they track.
    let full: Vec<&&Scale> = floods.iter().filter(|x| x.case_conns > TRACKED_MAX).collect();
    if let [small, .., big] = full[..] {
        let _ = writeln!(
            s,
            "- flat beyond the table's cap ({TRACKED_MAX} tracked): {} stalled sockets cost {:.1} MiB, {} cost {:.1} MiB ({:+.0} %; target ≤ +10 %): {}",
            small.case_conns,
            small.rss_mib,
            big.case_conns,
            big.rss_mib,
            (big.rss_mib / small.rss_mib - 1.0) * 100.0,
            verdict(big.rss_mib <= small.rss_mib * 1.1)
        );
    }
    let _ = writeln!(s);
}
