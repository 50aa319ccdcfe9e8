//! What the benchmarks read off the host and the agent: CPU time, memory, the kernel's own
//! accounting of BPF programs, and the empty control program. Processes, namespaces and the
//! agent itself come from the test support library (`detector_tests`), shared with the tests.
use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, bail};
use detector_tests::{Agent, AgentBuilder};

pub struct Bins {
    pub detector: PathBuf,
    pub loadgen: PathBuf,
    pub peer: PathBuf,
}

impl Bins {
    pub fn loadgen(&self) -> &str {
        self.loadgen.to_str().unwrap_or("loadgen")
    }

    pub fn peer(&self) -> &str {
        self.peer.to_str().unwrap_or("stream-peer")
    }
}

/// The release agent with `grace`, the default interval (1 s) unless `args` give one, and
/// `args`, logging warnings only, once its API answers.
pub fn agent(b: &Bins, grace: &str, args: &[&str]) -> Agent {
    let mut builder = AgentBuilder::new(grace).bin(b.detector.clone()).log_level("warn");
    if !args.contains(&"--interval") {
        builder = builder.args(&["--interval", "1s"]);
    }
    builder.args(args).start()
}

/// Turns kernel.bpf_stats_enabled on for as long as it lives (and back to what it was). The
/// throughput and CPU runs keep it off: its clock reads cost time of their own.
pub struct BpfStats(String);

impl BpfStats {
    const PATH: &'static str = "/proc/sys/kernel/bpf_stats_enabled";

    pub fn enable() -> anyhow::Result<BpfStats> {
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

/// An empty program attached to a send hook by `detector bench-control`, detached on drop:
/// what the hook costs before any code of ours runs.
pub struct Control {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Control {
    pub fn attach(b: &Bins, flag: &str) -> anyhow::Result<Control> {
        let mut child = Command::new(&b.detector).args(["bench-control", "--hook", flag]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
        let out = BufReader::new(child.stdout.take().context("piped stdout")?);
        // Made first, so its drop kills the child on any error below.
        let mut c = Control { child, out };
        let mut line = String::new();
        c.out.read_line(&mut line)?;
        if line.trim() != "attached" {
            bail!("detector bench-control --hook {flag} did not attach");
        }
        Ok(c)
    }

    /// Detaches the program; returns its (run count, run time ns) while it was attached.
    pub fn stop(mut self) -> anyhow::Result<(f64, f64)> {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
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
/// control program (`detector check` says which is attached).
pub fn default_send_hook(b: &Bins) -> anyhow::Result<Option<String>> {
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

/// The configuration the agent runs on this kernel with no flags, as `detector check` loads it
/// (`storage-walk`, `storage-diag`, `hash-map`), with its send hook's flag.
pub fn default_configuration(b: &Bins) -> String {
    let chosen = Command::new(&b.detector).args(["check", "--output", "json"]).output().ok().and_then(|o| {
        let checks: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        let c = checks.as_array()?.iter().find(|c| c["chosen"] == true)?.clone();
        Some(format!("{} with {}", c["configuration"].as_str()?, c["send_hook"].as_str()?))
    });
    chosen.unwrap_or_else(|| "none (detector check loaded no configuration)".into())
}

/// Per program of the agent: (run count, run time ns), as the kernel accounts them.
pub fn program_stats(a: &Agent) -> anyhow::Result<HashMap<String, (f64, f64)>> {
    let st = a.query("status").map_err(anyhow::Error::msg)?;
    let mut out = HashMap::new();
    for p in st["programs"].as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or("").to_string();
        out.insert(name, (p["run_count"].as_f64().unwrap_or(0.0), p["run_time_ns"].as_f64().unwrap_or(0.0)));
    }
    Ok(out)
}

/// The programs of the agent's attached hooks of `role` (send, lifetime, sample), by the hook
/// table the agent reports (`detector status`).
pub fn programs_of(a: &Agent, role: &str) -> anyhow::Result<Vec<String>> {
    let st = a.query("status").map_err(anyhow::Error::msg)?;
    Ok(st["hooks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|h| h["role"] == role && h["state"] == "attached")
        .filter_map(|h| h["program"].as_str().map(str::to_string))
        .collect())
}

/// CPU time of a process, all its threads, in seconds: the scheduler's own nanosecond
/// accounting (`/proc/<pid>/task/*/schedstat`), not 10 ms ticks.
pub fn cpu_secs(pid: u32) -> f64 {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0.0 };
    rd.flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()))
        .sum::<f64>()
        / 1e9
}

pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next().and_then(|k| k.parse::<f64>().ok()))
        .unwrap_or(0.0)
        / 1024.0
}

/// Memory the kernel charges for the process's BPF maps (memlock in fdinfo).
pub fn bpf_map_mib(pid: u32) -> f64 {
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

/// CPU time (user + system) of this process and its reaped children, in seconds.
pub fn own_and_children_cpu_secs() -> f64 {
    let t = |who| {
        // SAFETY: getrusage fills a zeroed struct.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(who, &mut ru) };
        let s = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        s(ru.ru_utime) + s(ru.ru_stime)
    };
    t(libc::RUSAGE_SELF) + t(libc::RUSAGE_CHILDREN)
}

/// Raises this process's open-file limit as far as it may (its children inherit it; raising
/// the hard limit needs CAP_SYS_RESOURCE, which a sandbox may not grant) and returns the hard
/// limit in force: each `loadgen` holds two fds per connection.
pub fn raise_nofile(want: u64) -> u64 {
    // SAFETY: getrlimit/setrlimit on valid structs of this process.
    unsafe {
        let r = libc::rlimit { rlim_cur: want, rlim_max: want };
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        let mut now: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut now);
        now.rlim_max
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
