//! Connection churn: nginx serving a 1 KiB file to `ab` without keep-alive, agent off and on,
//! interleaved. Every request is a new TCP connection, so this measures what a short-lived
//! socket costs the node (an ingress, an API without keep-alive, a sidecar).
use std::{
    fmt::Write as _,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use detector_tests::{Peer, Scratch, free_port};

use crate::packages;

use super::{
    host::{self, Bins, BpfStats, Control, cpu_secs},
    stats::{Show, ShowPct, Spread, loss_verdict},
};

/// Requests per `ab` run (a few seconds at the rates BENCHMARKS.md records) and concurrency.
const REQUESTS: u64 = 40_000;
const CONCURRENCY: &str = "20";

/// The agent configurations measured against "off".
const CONFIGS: [(&str, &[&str]); 2] =
    [("default configuration (no flags)", &[]), ("fallback hook (tracepoint sock:sock_send_length, hash map)", &["--send-hook", "sock-send-length"])];

pub struct Churn {
    pub rounds: usize,
    pub off_rps: Spread,
    /// offB / offA − 1 within a round, in %: the noise floor.
    pub control: Spread,
    /// Per configuration: label, change vs. the round's off mean (%), agent CPU (% of a core).
    pub configs: Vec<(String, Spread, Spread)>,
    /// Per configuration: BPF time per connection.
    pub bpf: Vec<BpfTime>,
}

/// BPF time of one agent configuration under churn.
pub struct BpfTime {
    pub label: String,
    /// ns per connection, all programs together.
    pub per_conn: f64,
    /// Per program: (name, runs per connection, ns per run).
    pub programs: Vec<(String, f64, f64)>,
    /// The empty program on the agent's send hook (the floor), not an agent.
    pub control: bool,
}

struct Nginx {
    _proc: Peer,
    url: String,
    _dir: Scratch,
}

/// nginx as one process (no master) pinned to CPU 1, no access log, no keep-alive.
fn nginx() -> anyhow::Result<Nginx> {
    packages::ensure("nginx", "nginx-light")?;
    let dir = Scratch::new("nginx");
    std::fs::create_dir_all(dir.0.join("html"))?;
    std::fs::create_dir_all(dir.0.join("logs"))?;
    std::fs::write(dir.0.join("html/1k.txt"), vec![b'x'; 1024])?;
    let port = free_port();
    let conf = format!(
        "daemon off;\nmaster_process off;\nerror_log {d}/logs/error.log;\npid {d}/nginx.pid;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  keepalive_timeout 0;\n  client_body_temp_path {d}/tmp;\n  server {{ listen 127.0.0.1:{port} backlog=4096; root {d}/html; }}\n}}\n",
        d = dir.0.display()
    );
    let conf_path = dir.0.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let (bin, conf_s, prefix) = (nginx_bin(), conf_path.display().to_string(), dir.0.display().to_string());
    let proc = Peer::spawn("taskset", &["-c", "1", bin.to_str().unwrap_or("nginx"), "-c", &conf_s, "-p", &prefix]);
    let n = Nginx { _proc: proc, url: format!("http://127.0.0.1:{port}/1k.txt"), _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nginx did not start listening on port {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(n)
}

fn nginx_bin() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx"].iter().map(PathBuf::from).find(|p| p.exists()).unwrap_or_else(|| "nginx".into())
}

/// One `ab` run pinned to CPU 0: requests per second.
fn ab(url: &str) -> anyhow::Result<f64> {
    let out = Command::new("taskset").args(["-c", "0", "ab", "-q", "-n", &REQUESTS.to_string(), "-c", CONCURRENCY, url]).output().context("running ab")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let num = |key: &str| text.lines().find_map(|l| l.strip_prefix(key)).and_then(|r| r.split_whitespace().next()).and_then(|v| v.parse::<f64>().ok());
    match (num("Requests per second:"), num("Failed requests:")) {
        (Some(rps), Some(0.0)) => Ok(rps),
        (Some(_), Some(failed)) => bail!("ab: {failed} requests failed"),
        _ => bail!("ab printed no rate: {text}{}", String::from_utf8_lossy(&out.stderr)),
    }
}

pub fn run(b: &Bins, rounds: usize) -> anyhow::Result<Churn> {
    packages::ensure("ab", "apache2-utils")?;
    let ng = nginx()?;
    ab(&ng.url)?; // warm up
    let mut off = Vec::new();
    let mut control = Vec::new();
    let mut change: Vec<Vec<f64>> = vec![Vec::new(); CONFIGS.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); CONFIGS.len()];
    for round in 0..rounds {
        // off, each configuration, off again; the start rotates so no configuration always
        // runs right after the agent started or stopped.
        let off_a = ab(&ng.url)?;
        let mut on = vec![(0.0, 0.0); CONFIGS.len()];
        for k in 0..CONFIGS.len() {
            let i = (k + round) % CONFIGS.len();
            let agent = host::agent(b, "30s", CONFIGS[i].1);
            std::thread::sleep(Duration::from_secs(1));
            let (c0, t0) = (cpu_secs(agent.pid()), Instant::now());
            let rps = ab(&ng.url)?;
            on[i] = (rps, (cpu_secs(agent.pid()) - c0) / t0.elapsed().as_secs_f64() * 100.0);
        }
        let off_b = ab(&ng.url)?;
        let base = (off_a + off_b) / 2.0;
        off.extend([off_a, off_b]);
        control.push((off_b / off_a - 1.0) * 100.0);
        for (i, (rps, c)) in on.into_iter().enumerate() {
            change[i].push((rps / base - 1.0) * 100.0);
            cpu[i].push(c);
        }
        eprintln!(
            "bench: churn round {}/{rounds}: off {off_a:.0}/{off_b:.0} req/s, on {:?}",
            round + 1,
            change.iter().map(|c| c.last().copied().unwrap_or(0.0)).collect::<Vec<_>>()
        );
    }
    let mut bpf = Vec::new();
    for (label, args) in CONFIGS {
        bpf.push(bpf_time(b, &ng.url, label, args)?);
    }
    if let Some(flag) = host::default_send_hook(b)? {
        bpf.push(control_time(b, &ng.url, &flag)?);
    }
    Ok(Churn {
        rounds,
        off_rps: Spread::of(&off),
        control: Spread::of(&control),
        configs: CONFIGS.iter().enumerate().map(|(i, (l, _))| (l.to_string(), Spread::of(&change[i]), Spread::of(&cpu[i]))).collect(),
        bpf,
    })
}

/// A separate run with kernel.bpf_stats_enabled (its clock reads cost time of their own, so
/// the throughput runs keep it off): BPF time per request over every program of the agent.
fn bpf_time(b: &Bins, url: &str, label: &str, args: &[&str]) -> anyhow::Result<BpfTime> {
    let _stats = BpfStats::enable()?;
    let agent = host::agent(b, "30s", args);
    std::thread::sleep(Duration::from_secs(1));
    let before = host::program_stats(&agent)?;
    ab(url)?;
    let after = host::program_stats(&agent)?;
    let reqs = REQUESTS as f64;
    let mut total = 0.0;
    let mut progs = Vec::new();
    for (name, (c1, t1)) in after {
        let (c0, t0) = before.get(&name).copied().unwrap_or((0.0, 0.0));
        if c1 > c0 {
            total += t1 - t0;
            progs.push((name, (c1 - c0) / reqs, (t1 - t0) / (c1 - c0)));
        }
    }
    progs.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(BpfTime { label: label.to_string(), per_conn: total / reqs, programs: progs, control: false })
}

/// The same for an empty program on the default send hook: what the kernel's dispatch and its
/// accounting cost per run on this machine, before any code of ours.
fn control_time(b: &Bins, url: &str, flag: &str) -> anyhow::Result<BpfTime> {
    let _stats = BpfStats::enable()?;
    let control = Control::attach(b, flag)?;
    ab(url)?;
    let (runs, ns) = control.stop()?;
    let reqs = REQUESTS as f64;
    Ok(BpfTime {
        label: format!("empty program on the same hook (`--send-hook {flag}`): the floor"),
        per_conn: ns / reqs,
        programs: vec![("empty".into(), runs / reqs, if runs > 0.0 { ns / runs } else { 0.0 })],
        control: true,
    })
}

/// The 100 ns target for one row, against the floor an empty program on the same hook measures
/// (for an agent row).
fn per_conn_verdict(per_conn: f64, floor: Option<f64>) -> String {
    match floor {
        _ if per_conn <= 100.0 => "met".into(),
        Some(floor) if floor > 100.0 => format!("not met: the floor is {floor:.0} ns on this machine, our code {:+.0} ns over it", per_conn - floor),
        _ => "not met".into(),
    }
}

pub fn report(s: &mut String, c: &Churn) {
    let _ = writeln!(s, "## 0. Connection churn\n");
    let _ = writeln!(
        s,
        "nginx (Debian's nginx-light, one process pinned to CPU 1) serves a 1 KiB file to `ab -n {REQUESTS} -c {CONCURRENCY}` without keep-alive (pinned to CPU 0): every request is a new connection. {} rounds, each: off, every agent configuration (order rotating), off again; a configuration's change is against the mean of its round's two off runs, and the two off runs of a round give the noise floor (off/off). Agent: release build, report only, default flags. Medians, with the range over the rounds in brackets.\n",
        c.rounds
    );
    let _ = writeln!(s, "| agent | req/s change | agent CPU (% of a core) | target ≤ 2 % loss |");
    let _ = writeln!(s, "| --- | --- | --- | --- |");
    let _ = writeln!(s, "| off (req/s) | {} | | |", Show(c.off_rps, 0));
    let _ = writeln!(s, "| off/off control | {} | | |", ShowPct(c.control));
    for (label, change, cpu) in &c.configs {
        let _ = writeln!(s, "| {label} | {} | {} | {} |", ShowPct(*change), Show(*cpu, 2), loss_verdict(*change, c.control, 2.0));
    }
    let _ = writeln!(
        s,
        "\nBPF time per connection (one request = one client and one server socket), from a separate run with `kernel.bpf_stats_enabled=1` (which adds its own clock reads to every run):\n"
    );
    let _ = writeln!(s, "| agent | BPF ns per connection | programs (runs per connection × ns per run) | target ≤ 100 ns |");
    let _ = writeln!(s, "| --- | --- | --- | --- |");
    let floor = c.bpf.iter().find(|t| t.control).map(|t| t.per_conn);
    for t in &c.bpf {
        let detail: Vec<String> = t.programs.iter().map(|(n, r, ns)| format!("{n} {r:.2} × {ns:.0}")).collect();
        let _ = writeln!(s, "| {} | {:.0} | {} | {} |", t.label, t.per_conn, detail.join(", "), per_conn_verdict(t.per_conn, floor.filter(|_| !t.control)));
    }
    let _ = writeln!(s);
}

#[cfg(test)]
mod tests {
    use super::per_conn_verdict;

    #[test]
    fn the_per_connection_target_names_a_floor_above_it() {
        assert_eq!(per_conn_verdict(90.0, Some(150.0)), "met");
        assert_eq!(per_conn_verdict(169.0, Some(164.0)), "not met: the floor is 164 ns on this machine, our code +5 ns over it");
        assert_eq!(per_conn_verdict(169.0, Some(80.0)), "not met", "a floor under the target excuses nothing");
        assert_eq!(per_conn_verdict(164.0, None), "not met", "the floor row itself");
    }
}
