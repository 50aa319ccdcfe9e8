//! BENCHMARKS.md: the machine, every section, and the trend: one row per full run, the rows
//! of earlier runs kept from the file being replaced, so the numbers' history shows.
use std::fmt::Write as _;

use super::{churn::Churn, latency::Latency, scale::Scale, send::Send};

pub struct Results {
    /// The configuration the agent runs here with no flags (`host::default_configuration`).
    pub configuration: String,
    pub churn: Churn,
    pub send: Send,
    pub scale: Vec<Scale>,
    pub latency: Vec<Latency>,
    pub took_s: f64,
}

const TREND_HEADER: &str = "| date | kernel | commit | churn req/s | send: CPU per 64 B send over off | 50k conns CPU | 200k conns CPU | 50k in 100 netns CPU | latency p99 past grace: from the kill (/ from the last progress) |";

/// The row of the last BENCHMARKS.md written before the trend table existed (2026-11-24,
/// before socket storage, the walk and the onset rule), for comparison.
const FIRST_ROW: &str = "| 2026-11-24 | 6.18.44 | 6540945 | −35 % (issue 13: nginx + ab) | −21.5 % throughput at 64 B, 111 ns per run | 2.95 % | | | 1.09 s |";

fn sh(cmd: &str, args: &[&str]) -> String {
    detector_tests::run(cmd, args).unwrap_or_default().trim().to_string()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|x| x.1.trim().to_string()))
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default().lines().next().unwrap_or("").replace("MemTotal:", "").trim().to_string();
    format!("{cpu} ({} cores, {mem})", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0))
}

/// The CPU mitigations that tax every indirect call and return, so every hook's dispatch
/// (the kernel calls a BPF program through a pointer): what sets this machine's floor under
/// any per-send program. Read from sysfs; empty where the kernel does not say.
fn mitigations() -> String {
    let read = |f: &str| std::fs::read_to_string(format!("/sys/devices/system/cpu/vulnerabilities/{f}")).ok();
    describe_mitigations(read("spectre_v2").as_deref(), read("spec_rstack_overflow").as_deref())
}

fn describe_mitigations(spectre_v2: Option<&str>, srso: Option<&str>) -> String {
    let said: Vec<String> =
        [("spectre_v2", spectre_v2), ("spec_rstack_overflow", srso)].iter().filter_map(|&(k, v)| Some(format!("{k}: {}", v?.trim()))).collect();
    if said.is_empty() {
        return String::new();
    }
    format!(" CPU mitigations, which tax every indirect call and return and so every hook's dispatch: {}.", said.join("; "))
}

/// The trend rows of the file being replaced (or the first row), then this run's.
fn trend(previous: &str, r: &Results) -> Vec<String> {
    let mut rows: Vec<String> =
        previous.split("## Trend").nth(1).map(|t| t.lines().filter(|l| l.starts_with("| 2")).map(str::to_string).collect()).unwrap_or_default();
    if rows.is_empty() {
        rows.push(FIRST_ROW.into());
    }
    let cpu =
        |n: usize, ns: usize| r.scale.iter().find(|s| s.case_conns == n && s.namespaces == ns).map_or(String::new(), |s| format!("{:.2} %", s.total_pct()));
    let churn = r.churn.configs.first().map_or(String::new(), |(_, c, _)| format!("{:+.1} %", c.median));
    let send = r.send.cpu_delta_64().map_or(String::new(), |d| format!("{d:+.1} ns"));
    let p99 = r.latency.iter().map(|l| l.p99).fold(f64::NAN, f64::max);
    let stopped = r.latency.iter().map(|l| l.stopped_p99).fold(f64::NAN, f64::max);
    let kernel = format!("{} ({})", sh("uname", &["-r"]), r.configuration.split(' ').next().unwrap_or("?"));
    rows.push(format!(
        "| {} | {} | {} | {churn} | {send} | {} | {} | {} | {p99:.2} s / {stopped:.2} s |",
        sh("date", &["-u", "+%Y-%m-%d"]),
        kernel,
        sh("git", &["rev-parse", "--short", "HEAD"]),
        cpu(50_000, 0),
        cpu(200_000, 0),
        cpu(50_000, 100),
    ));
    rows
}

pub fn write(previous: &str, r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "Written by `cargo xtask bench` on {}, kernel {}, {}; the run took {:.0} s. With no flags the agent runs configuration `{}` on this kernel (README, Supported kernels): the \"default\" rows below measure it.{} Every figure is a median over interleaved rounds with its spread (quartiles in brackets, range in parentheses), judged against an off/off control measured in the same rounds: a target the control's spread covers is \"not resolved\", neither met nor missed. This machine kind's throughput is noisy (single off/off runs differ by up to ±30 %); the medians of paired rounds are what these numbers rest on.\n",
        machine(),
        sh("uname", &["-r"]),
        sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        r.took_s,
        r.configuration,
        mitigations()
    );
    super::churn::report(&mut s, &r.churn);
    super::send::report(&mut s, &r.send);
    super::scale::report(&mut s, &r.scale);
    super::latency::report(&mut s, &r.latency);
    let _ = writeln!(s, "## Trend\n");
    let _ = writeln!(s, "One row per full `cargo xtask bench` on this machine kind, oldest first (medians).\n");
    let _ = writeln!(s, "{TREND_HEADER}");
    let _ = writeln!(s, "{}", TREND_HEADER.split('|').map(|c| if c.is_empty() { "" } else { " --- " }).collect::<Vec<_>>().join("|"));
    for row in trend(previous, r) {
        let _ = writeln!(s, "{row}");
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_mitigations_are_said_as_sysfs_says_them_or_not_at_all() {
        let d = super::describe_mitigations(Some("Mitigation: Retpolines; STIBP: disabled\n"), Some("Vulnerable: Safe RET, no microcode\n"));
        assert_eq!(
            d,
            " CPU mitigations, which tax every indirect call and return and so every hook's dispatch: spectre_v2: Mitigation: Retpolines; STIBP: disabled; spec_rstack_overflow: Vulnerable: Safe RET, no microcode."
        );
        assert_eq!(
            super::describe_mitigations(None, Some("Not affected")),
            " CPU mitigations, which tax every indirect call and return and so every hook's dispatch: spec_rstack_overflow: Not affected."
        );
        assert_eq!(super::describe_mitigations(None, None), "");
    }
}
