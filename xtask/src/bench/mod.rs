//! `cargo xtask bench`: send-path overhead, scale, detection latency and a userspace baseline,
//! on this machine, written to BENCHMARKS.md. Timings are medians of interleaved repetitions
//! inside one run (the machines are shared and noisy); per-hook costs come from the kernel's own
//! accounting (kernel.bpf_stats_enabled).
use std::{
    collections::HashMap,
    fmt::Write as _,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

mod churn;
mod packages;
mod stats;

use stats::{median, pct};

struct Bins {
    detector: PathBuf,
    loadgen: PathBuf,
    peer: PathBuf,
}

/// A child process killed (and reaped) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGCONT first: a stopped process would ignore nothing but keep its sockets.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGCONT) };
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sh(cmd: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(cmd).args(args).output().with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!("{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

struct Agent {
    proc: Proc,
    api: PathBuf,
    bins_detector: PathBuf,
}

impl Agent {
    fn start(b: &Bins, args: &[&str]) -> anyhow::Result<Agent> {
        let api = std::env::temp_dir().join(format!("detector-bench-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&api);
        let child = Command::new(&b.detector)
            .args(["run", "--metrics-addr", "off", "--api-socket"])
            .arg(&api)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let a = Agent { proc: Proc(child), api, bins_detector: b.detector.clone() };
        let deadline = Instant::now() + Duration::from_secs(30);
        while a.status().is_err() {
            if Instant::now() > deadline {
                bail!("agent did not start");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(a)
    }

    fn query(&self, what: &str) -> anyhow::Result<serde_json::Value> {
        let out = Command::new(&self.bins_detector).args([what, "-o", "json", "--api-socket"]).arg(&self.api).output()?;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    fn status(&self) -> anyhow::Result<serde_json::Value> {
        self.query("status")
    }

    fn pid(&self) -> u32 {
        self.proc.0.id()
    }
}

/// Turns kernel.bpf_stats_enabled on for as long as it lives (and back to what it was).
struct BpfStats(String);

impl BpfStats {
    const PATH: &'static str = "/proc/sys/kernel/bpf_stats_enabled";

    fn enable() -> anyhow::Result<BpfStats> {
        let before = std::fs::read_to_string(Self::PATH).unwrap_or_else(|_| "0".into());
        std::fs::write(Self::PATH, "1").context("enabling kernel.bpf_stats_enabled (needs root)")?;
        Ok(BpfStats(before.trim().to_string()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

/// An empty program attached to a send hook by `detector bench-control`, detached on drop.
struct Control {
    proc: Proc,
    out: BufReader<std::process::ChildStdout>,
}

impl Control {
    fn attach(b: &Bins, flag: &str) -> anyhow::Result<Control> {
        let mut child = Command::new(&b.detector).args(["bench-control", "--hook", flag]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
        let mut out = BufReader::new(child.stdout.take().context("piped stdout")?);
        let proc = Proc(child);
        let mut line = String::new();
        out.read_line(&mut line)?;
        if line.trim() != "attached" {
            bail!("detector bench-control --hook {flag} did not attach");
        }
        Ok(Control { proc, out })
    }

    /// Detaches the program; returns its (run count, run time ns) while it was attached.
    fn stop(mut self) -> anyhow::Result<(f64, f64)> {
        unsafe { libc::kill(self.proc.0.id() as i32, libc::SIGTERM) };
        let mut line = String::new();
        self.out.read_line(&mut line)?;
        let num = |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(k).and_then(|r| r.strip_prefix('='))).and_then(|v| v.parse::<f64>().ok());
        match (num("run_count"), num("run_time_ns")) {
            (Some(c), Some(t)) => Ok((c, t)),
            _ => bail!("detector bench-control printed no statistics: {line:?}"),
        }
    }
}

/// The `--send-hook` value of the hook the agent picks on this kernel, if it has an empty
/// control program.
fn default_send_hook(b: &Bins) -> anyhow::Result<Option<String>> {
    let out = Command::new(&b.detector).args(["check", "--output", "json"]).output()?;
    let checks: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(checks
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["detail"] == "attached" && c["send_hook"].is_string())
        .and_then(|c| c["send_hook"].as_str())
        .filter(|f| ["tcp-sendmsg-locked", "sock-send-length-btf", "sock-send-length"].contains(f))
        .map(str::to_string))
}

/// Per program of the agent: (run count, run time ns), as the kernel accounts them.
fn program_stats(a: &Agent) -> anyhow::Result<HashMap<String, (f64, f64)>> {
    let st = a.status()?;
    let mut out = HashMap::new();
    for p in st["programs"].as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or("").to_string();
        out.insert(name, (p["run_count"].as_f64().unwrap_or(0.0), p["run_time_ns"].as_f64().unwrap_or(0.0)));
    }
    Ok(out)
}

/// CPU time of a process, all its threads, in seconds: the scheduler's own nanosecond
/// accounting (`/proc/<pid>/task/*/schedstat`), not 10 ms ticks.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0.0 };
    rd.flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()))
        .sum::<f64>()
        / 1e9
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next().and_then(|k| k.parse::<f64>().ok()))
        .unwrap_or(0.0)
        / 1024.0
}

/// Memory the kernel charges for the process's BPF maps (memlock in fdinfo).
fn bpf_map_mib(pid: u32) -> f64 {
    let mut total = 0.0;
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) {
        for e in rd.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            if text.contains("map_type:")
                && let Some(v) = text.lines().find_map(|l| l.strip_prefix("memlock:"))
            {
                total += v.trim().parse::<f64>().unwrap_or(0.0);
            }
        }
    }
    total / (1024.0 * 1024.0)
}

fn children_cpu_secs() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn self_cpu_secs() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

// ---------------------------------------------------------------------------------------------
// 1. Send-path overhead

struct Overhead {
    msg: usize,
    off: f64,
    hooks: Vec<(String, f64, f64)>, // (mode, sends/s, avg ns per send-hook run)
}

fn throughput(b: &Bins, msg: usize, secs: u64) -> anyhow::Result<f64> {
    let out = sh(b.loadgen.to_str().unwrap(), &["throughput", "2", &msg.to_string(), &secs.to_string()])?;
    let field =
        |k: &str| out.split_whitespace().find_map(|w| w.strip_prefix(k).and_then(|r| r.strip_prefix('='))).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    Ok(field("sends") / field("secs"))
}

fn overhead(b: &Bins, rounds: usize, secs: u64) -> anyhow::Result<Vec<Overhead>> {
    let modes = [("off", None), ("sock_send_length", Some("sock-send-length")), ("tcp_sendmsg_locked (tp_btf)", Some("tcp-sendmsg-locked"))];
    let mut out = Vec::new();
    for msg in [64usize, 16384] {
        let mut rates: HashMap<&str, Vec<f64>> = HashMap::new();
        let mut costs: HashMap<&str, Vec<f64>> = HashMap::new();
        for _ in 0..rounds {
            for (name, hook) in modes {
                let agent = match hook {
                    Some(h) => Some(Agent::start(b, &["--send-hook", h, "--grace", "30s"])?),
                    None => None,
                };
                let before = agent.as_ref().map(send_hook_stats).transpose()?;
                let rate = throughput(b, msg, secs)?;
                rates.entry(name).or_default().push(rate);
                if let (Some(a), Some((c0, t0))) = (&agent, before) {
                    let (c1, t1) = send_hook_stats(a)?;
                    if c1 > c0 {
                        costs.entry(name).or_default().push((t1 - t0) / (c1 - c0));
                    }
                }
            }
        }
        let off = median(rates.get_mut("off").unwrap());
        let hooks = modes[1..].iter().map(|(n, _)| (n.to_string(), median(rates.get_mut(n).unwrap()), median(costs.entry(n).or_default()))).collect();
        out.push(Overhead { msg, off, hooks });
    }
    Ok(out)
}

/// (run count, run time ns) summed over the agent's send-path programs.
fn send_hook_stats(a: &Agent) -> anyhow::Result<(f64, f64)> {
    let st = a.status()?;
    let mut c = 0.0;
    let mut t = 0.0;
    for p in st["programs"].as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or("");
        if ["sock_send_length", "sock_send_length_btf", "tcp_sendmsg_locked", "fentry_tcp_sendmsg", "kprobe_tcp_sendmsg"].contains(&name) {
            c += p["run_count"].as_f64().unwrap_or(0.0);
            t += p["run_time_ns"].as_f64().unwrap_or(0.0);
        }
    }
    Ok((c, t))
}

// ---------------------------------------------------------------------------------------------
// 2 and 4. Scale, and the userspace baseline

struct Scale {
    conns: usize,
    tracked: f64,
    cpu_pct: f64,
    rss_mib: f64,
    map_mib: f64,
    pass_ms: f64,
    base_cpu_pct: f64,
    base_pass_ms: f64,
}

fn hold_load(b: &Bins, conns: usize) -> anyhow::Result<Vec<Proc>> {
    // 2 fds per connection; stay well under the fd limit of each process.
    let limit = {
        let mut r: libc::rlimit = unsafe { std::mem::zeroed() };
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
        r.rlim_cur as usize
    };
    let per = ((limit.saturating_sub(200)) / 2).clamp(1000, 8000);
    let mut procs = Vec::new();
    let mut left = conns;
    while left > 0 {
        let n = left.min(per);
        let mut child = Command::new(&b.loadgen).args(["hold", &n.to_string(), "10", "1"]).stdout(Stdio::piped()).spawn()?;
        let out = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
        if !line.starts_with("READY") {
            bail!("loadgen hold {n}: {line}");
        }
        procs.push(Proc(child));
        left -= n;
    }
    Ok(procs)
}

fn scale(b: &Bins, conns: usize, window: Duration) -> anyhow::Result<Scale> {
    let load = hold_load(b, conns)?;
    let agent = Agent::start(b, &["--grace", "30s", "--interval", "1s", "--max-sockets", "131072"])?;
    std::thread::sleep(Duration::from_secs(4));
    let pid = agent.pid();
    let c0 = cpu_secs(pid);
    let t0 = Instant::now();
    let mut passes = Vec::new();
    let mut tracked = 0.0;
    while t0.elapsed() < window {
        std::thread::sleep(Duration::from_secs(2));
        let st = agent.status()?;
        passes.push(st["last_sweep_ms"].as_f64().unwrap_or(f64::NAN));
        tracked = st["sockets_tracked"].as_f64().unwrap_or(0.0);
    }
    // The status queries themselves are answered by the agent; they are a few per window.
    let cpu_pct = (cpu_secs(pid) - c0) / t0.elapsed().as_secs_f64() * 100.0;
    let rss = rss_mib(pid);
    let map = bpf_map_mib(pid);
    drop(agent);

    // Baseline: what a team writes today: one `ss -tin` dump of every socket per second,
    // parsed for Send-Q and bytes_acked.
    let cpu0 = children_cpu_secs() + self_cpu_secs();
    let t0 = Instant::now();
    let mut base_pass = Vec::new();
    let mut seen: HashMap<String, (u64, u64)> = HashMap::new();
    while t0.elapsed() < window {
        let tick = Instant::now();
        let out = sh("ss", &["-tinH", "state", "established"])?;
        parse_ss(&out, &mut seen);
        base_pass.push(tick.elapsed().as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed()));
    }
    let base_cpu = (children_cpu_secs() + self_cpu_secs() - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
    drop(load);
    Ok(Scale {
        conns,
        tracked,
        cpu_pct,
        rss_mib: rss,
        map_mib: map,
        pass_ms: median(&mut passes),
        base_cpu_pct: base_cpu,
        base_pass_ms: median(&mut base_pass),
    })
}

/// `ss -tinH` prints a socket line (state, Recv-Q, Send-Q, local, peer) followed by an info
/// line with `bytes_acked:N`. Keeps (send_q, bytes_acked) per connection.
fn parse_ss(out: &str, seen: &mut HashMap<String, (u64, u64)>) {
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

// ---------------------------------------------------------------------------------------------
// 3. Detection latency

struct Latency {
    n: usize,
    grace: f64,
    /// Report time minus the onset the agent proved (minus grace): the agent's own delay.
    proven_p99: f64,
    p50: f64,
    p99: f64,
    max: f64,
    reasons: String,
    base_p50: f64,
    base_p99: f64,
}

fn spawn_peer(cmd: &mut Command) -> anyhow::Result<(Proc, std::sync::mpsc::Receiver<String>)> {
    let mut child = cmd.stdout(Stdio::piped()).spawn()?;
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    Ok((Proc(child), rx))
}

fn expect(rx: &std::sync::mpsc::Receiver<String>, prefix: &str) -> anyhow::Result<String> {
    loop {
        let l = rx.recv_timeout(Duration::from_secs(10)).with_context(|| format!("waiting for {prefix}"))?;
        if let Some(r) = l.strip_prefix(prefix) {
            return Ok(r.trim().to_string());
        }
    }
}

fn field(line: &str, key: &str) -> String {
    line.split_whitespace().find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('='))).unwrap_or_default().to_string()
}

struct Netns(Vec<String>);

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

fn latency(b: &Bins, grace_s: u64) -> anyhow::Result<Latency> {
    let grace = Duration::from_secs(grace_s);
    let agent = Agent::start(b, &["--grace", &format!("{grace_s}s"), "--interval", "1s"])?;
    let peer = b.peer.to_str().unwrap();
    // 50 loopback connections whose client process is frozen at the kill instant.
    let (lo_server, lo_rx) = spawn_peer(Command::new(peer).args(["server", "127.0.0.1:0", "stream", "50"]))?;
    let addr = expect(&lo_rx, "LISTEN")?;
    // Receive buffers fixed at 256 KiB: the stall begins at the kill. (Autotuned up to
    // tcp_rmem's 32 MiB, frozen clients' kernels keep accepting data for seconds: progress,
    // not detection delay.)
    let (lo_client, _c) = spawn_peer(Command::new(peer).args(["client", &addr, "read-rcvbuf:262144", "50"]))?;
    let mut keys: HashMap<String, &str> = HashMap::new();
    for _ in 0..50 {
        let a = expect(&lo_rx, "ACCEPTED")?;
        keys.insert(format!("{} {}", field(&a, "local"), field(&a, "peer")), "frozen");
    }
    // 50 connections to a peer in another namespace whose link is cut at the kill instant.
    let tag = std::process::id();
    let ns = Netns(vec![format!("dbench-{tag}-a"), format!("dbench-{tag}-b")]);
    sh("ip", &["netns", "add", &ns.0[0]])?;
    sh("ip", &["netns", "add", &ns.0[1]])?;
    sh("ip", &["netns", "exec", &ns.0[0], "ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", &ns.0[1]])?;
    for (n, dev, ip) in [(&ns.0[0], "veth0", "10.214.0.1/24"), (&ns.0[1], "veth1", "10.214.0.2/24")] {
        sh("ip", &["netns", "exec", n, "ip", "addr", "add", ip, "dev", dev])?;
        sh("ip", &["netns", "exec", n, "ip", "link", "set", dev, "up"])?;
    }
    let (ns_server, ns_rx) = spawn_peer(Command::new("ip").args(["netns", "exec", &ns.0[0], peer, "server", "10.214.0.1:0", "stream", "50"]))?;
    let addr = expect(&ns_rx, "LISTEN")?;
    let (ns_client, _c2) = spawn_peer(Command::new("ip").args(["netns", "exec", &ns.0[1], peer, "client", &addr, "read-rcvbuf:262144", "50"]))?;
    for _ in 0..50 {
        let a = expect(&ns_rx, "ACCEPTED")?;
        keys.insert(format!("{} {}", field(&a, "local"), field(&a, "peer")), "unreachable");
    }
    std::thread::sleep(Duration::from_secs(3));

    // The kill instant.
    let killed = Instant::now();
    unsafe { libc::kill(lo_client.0.id() as i32, libc::SIGSTOP) };
    sh("ip", &["netns", "exec", &ns.0[1], "ip", "link", "set", "veth1", "down"])?;

    let mut reported: HashMap<String, (f64, String)> = HashMap::new();
    let mut proven: Vec<f64> = Vec::new();
    let mut base_seen: HashMap<String, (u64, u64, Instant)> = HashMap::new();
    let mut base_reported: HashMap<String, f64> = HashMap::new();
    let mut next_base = Instant::now();
    let lo_keys = keys.values().filter(|v| **v == "frozen").count();
    while killed.elapsed() < grace + Duration::from_secs(8) && (reported.len() < keys.len() || base_reported.len() < lo_keys) {
        let st = if reported.len() < keys.len() { agent.query("stalled")? } else { serde_json::Value::Null };
        for e in st.as_array().into_iter().flatten() {
            let k = format!("{} {}", e["local"].as_str().unwrap_or(""), e["remote"].as_str().unwrap_or(""));
            if keys.contains_key(&k) && !reported.contains_key(&k) {
                let at = killed.elapsed().as_secs_f64();
                proven.push(e["stalled_for_ms"].as_f64().unwrap_or(0.0) / 1e3 - grace.as_secs_f64());
                reported.insert(k, (at, e["reason"].as_str().unwrap_or("").to_string()));
            }
        }
        // Baseline (host namespace only, as a per-host script would be): 1 s `ss` polls.
        if Instant::now() >= next_base {
            next_base += Duration::from_secs(1);
            let mut now_seen = HashMap::new();
            parse_ss(&sh("ss", &["-tinH", "state", "established"])?, &mut now_seen);
            for (k, (q, acked)) in now_seen {
                if !keys.contains_key(&k) {
                    continue;
                }
                let e = base_seen.entry(k.clone()).or_insert((q, acked, Instant::now()));
                if acked != e.1 || q == 0 {
                    *e = (q, acked, Instant::now());
                } else if e.2.elapsed() >= grace && !base_reported.contains_key(&k) {
                    base_reported.insert(k, killed.elapsed().as_secs_f64());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop((lo_server, lo_client, ns_server, ns_client));
    let mut over: Vec<f64> = reported.values().map(|(t, _)| t - grace.as_secs_f64()).collect();
    let mut by_reason: HashMap<&str, usize> = HashMap::new();
    for (k, (_, r)) in &reported {
        let expect = if keys[k] == "frozen" { "peer_not_reading" } else { "peer_unreachable" };
        *by_reason.entry(if r == expect { "right" } else { "wrong" }).or_default() += 1;
    }
    let mut base_over: Vec<f64> = base_reported.values().map(|t| t - grace.as_secs_f64()).collect();
    let group = |g: &str| -> (f64, f64) {
        let mut v: Vec<f64> = reported.iter().filter(|(k, _)| keys[*k] == g).map(|(_, (t, _))| t - grace.as_secs_f64()).collect();
        (pct(&mut v, 0.0), pct(&mut v, 100.0))
    };
    let (fmin, fmax) = group("frozen");
    let (umin, umax) = group("unreachable");
    Ok(Latency {
        n: reported.len(),
        grace: grace.as_secs_f64(),
        proven_p99: pct(&mut proven, 99.0),
        p50: pct(&mut over, 50.0),
        p99: pct(&mut over, 99.0),
        max: over.iter().cloned().fold(f64::NAN, f64::max),
        reasons: format!(
            "{} of {} killed connections reported, {} with the right reason (frozen: {fmin:.2}…{fmax:.2} s, unreachable: {umin:.2}…{umax:.2} s past grace)",
            reported.len(),
            keys.len(),
            by_reason.get("right").unwrap_or(&0)
        ),
        base_p50: pct(&mut base_over, 50.0),
        base_p99: pct(&mut base_over, 99.0),
    })
}

// ---------------------------------------------------------------------------------------------

pub fn run(root: &Path, quick: bool, only: Option<&str>) -> anyhow::Result<()> {
    let b =
        Bins { detector: root.join("target/release/detector"), loadgen: root.join("target/release/loadgen"), peer: root.join("target/release/stream-peer") };
    let started = Instant::now();
    match only {
        None => {}
        Some("churn") => {
            let mut s = String::new();
            churn::report(&mut s, &churn::run(&b, if quick { 2 } else { 10 })?);
            println!("{s}");
            return Ok(());
        }
        Some("latency") => {
            for _ in 0..if quick { 1 } else { 3 } {
                let lat = latency(&b, 5)?;
                println!(
                    "p50 {:.2} s, p99 {:.2} s, max {:.2} s (after the proven onset: p99 {:.2} s); {}",
                    lat.p50, lat.p99, lat.max, lat.proven_p99, lat.reasons
                );
            }
            return Ok(());
        }
        Some(other) => bail!("--only {other}: the sections that run alone are: churn, latency"),
    }
    eprintln!("bench: connection churn (nginx + ab)");
    let churn = churn::run(&b, if quick { 2 } else { 10 })?;
    let stats = BpfStats::enable()?;
    let result = (|| -> anyhow::Result<String> {
        let (rounds, secs, window) = if quick { (1, 2, Duration::from_secs(6)) } else { (3, 4, Duration::from_secs(20)) };
        eprintln!("bench: send-path overhead ({rounds} interleaved rounds of {secs} s per mode)");
        let oh = overhead(&b, rounds, secs)?;
        let mut sc = Vec::new();
        for n in if quick { vec![10_000] } else { vec![10_000, 50_000] } {
            eprintln!("bench: scale, {n} connections");
            sc.push(scale(&b, n, window)?);
        }
        eprintln!("bench: detection latency, 100 connections");
        let lat = latency(&b, 5)?;
        Ok(report(&churn, &oh, &sc, &lat, started.elapsed()))
    })();
    drop(stats);
    let text = result?;
    std::fs::write(root.join("BENCHMARKS.md"), &text)?;
    println!("{text}");
    Ok(())
}

fn report(churn: &churn::Churn, oh: &[Overhead], sc: &[Scale], lat: &Latency, took: Duration) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|x| x.1.trim().to_string()))
        .unwrap_or_default();
    let kernel = sh("uname", &["-r"]).unwrap_or_default();
    let date = sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default();
    let mut s = String::new();
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "Written by `cargo xtask bench` on {} ({} cores, {}), kernel {}, {}. The whole run took {:.0} s.\n",
        cpu,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        std::fs::read_to_string("/proc/meminfo").unwrap_or_default().lines().next().unwrap_or("").replace("MemTotal:", "").trim(),
        kernel.trim(),
        date.trim(),
        took.as_secs_f64()
    );
    churn::report(&mut s, churn);
    let _ = writeln!(s, "## 1. Send-path overhead\n");
    let _ = writeln!(
        s,
        "Loopback, 2 connections each with a writer and a reader thread, one `send` per message; agent off and on (each send hook forced in turn), interleaved; medians. The per-run cost is the kernel's own accounting (`run_time_ns / run_cnt`, kernel.bpf_stats_enabled).\n"
    );
    let _ = writeln!(s, "| message | agent | sends/s | change | ns per hook run | target |");
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- |");
    for o in oh {
        let _ = writeln!(s, "| {} B | off | {:.0} | | | |", o.msg, o.off);
        let target = if o.msg == 64 { 2.0 } else { 0.5 };
        for (mode, rate, ns) in &o.hooks {
            let change = (rate / o.off - 1.0) * 100.0;
            let _ = writeln!(
                s,
                "| {} B | {mode} | {rate:.0} | {change:+.1} % | {ns:.0} | ≤ {target} % loss, ≤ 100 ns: {} |",
                o.msg,
                if -change <= target && *ns <= 100.0 { "met" } else { "not met" }
            );
        }
    }
    let _ = writeln!(s, "\n## 2. Scale (and 4. the userspace baseline)\n");
    let _ = writeln!(
        s,
        "Loopback connections held by `loadgen hold` processes: 10 % send 512 B twice a second, 1 % are stalled (a reader that never reads), the rest idle. Agent: release build, `--interval 1s`. Baseline: what a team writes today, one `ss -tin` dump of every socket per second, parsed for Send-Q and bytes_acked.\n"
    );
    let _ = writeln!(s, "| connections | tracked | agent CPU (% of a core) | agent RSS | BPF maps | pass | baseline CPU | baseline pass |");
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- | --- |");
    for x in sc {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.2} % | {:.1} MiB | {:.1} MiB | {:.1} ms | {:.2} % | {:.1} ms |",
            x.conns, x.tracked, x.cpu_pct, x.rss_mib, x.map_mib, x.pass_ms, x.base_cpu_pct, x.base_pass_ms
        );
    }
    if let Some(x) = sc.iter().find(|x| x.conns == 50_000) {
        let _ = writeln!(
            s,
            "\nTargets at 50k: CPU ≤ 2 %: {}; RSS ≤ 64 MiB: {}; pass ≤ 50 ms: {}.",
            if x.cpu_pct <= 2.0 { "met" } else { "not met" },
            if x.rss_mib <= 64.0 { "met" } else { "not met" },
            if x.pass_ms <= 50.0 { "met" } else { "not met" }
        );
    }
    let _ = writeln!(s, "\n## 3. Detection latency\n");
    let _ = writeln!(
        s,
        "100 connections streaming as fast as they can, killed at one instant: 50 on loopback whose client process is frozen (SIGSTOP), 50 to a peer in another network namespace whose link goes down. `detector stalled` polled every 50 ms; latency = reported − killed − grace (grace {:.0} s, interval 1 s).\n",
        lat.grace
    );
    let _ = writeln!(s, "| | p50 | p99 | max |");
    let _ = writeln!(s, "| --- | --- | --- | --- |");
    let _ = writeln!(s, "| agent | {:.2} s | {:.2} s | {:.2} s |", lat.p50, lat.p99, lat.max);
    let _ = writeln!(s, "| baseline (1 s `ss` polls; loopback half only: it sees one namespace) | {:.2} s | {:.2} s | |", lat.base_p50, lat.base_p99);
    let _ = writeln!(s, "\n{}. Target p99 ≤ 1 s: {}.", lat.reasons, if lat.p99 <= 1.0 && lat.n == 100 { "met" } else { "not met" });
    let _ = writeln!(
        s,
        "\nWhere a connection's send queue happened to be empty at the sample before the kill (a reader keeping up), the stall clock starts at the first sample that sees bytes queued: the verdict never assumes an onset earlier than it can prove, so such connections are reported up to one interval late. Connections with bytes already queued start at their last ACK and are sampled at their deadline. `--interval 500ms` halves the bound at twice the sampling CPU."
    );
    s
}
