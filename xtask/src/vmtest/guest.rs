//! The guest half: runs inside the VM (or on the host for `--kernel host`).
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::Context as _;
use serde_json::{Value, json};

use super::*;

/// Runs the plan in `dir`: `detector check`, then each case with each configuration it needs.
/// Results are appended to `dir/results.jsonl` as they come.
pub fn guest(dir: &Path) -> anyhow::Result<()> {
    let plan: Value = serde_json::from_slice(&std::fs::read(dir.join("plan.json")).context("reading plan.json")?).context("parsing plan.json")?;
    let detector = PathBuf::from(plan["detector"].as_str().context("plan: detector")?);
    let slack = plan["slack"].as_u64().unwrap_or(1);
    std::fs::write(dir.join("lockdown.txt"), lockdown())?;
    let check = Command::new(&detector).args(["check", "--output", "json"]).output().context("running detector check")?;
    std::fs::write(dir.join("check.json"), &check.stdout)?;
    let checks: Value = serde_json::from_slice(&check.stdout).context("detector check printed no JSON")?;
    let (mut all, picked) = configurations(&checks);
    let skip: Vec<&str> = plan["skip_configurations"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    all.retain(|c| !skip.contains(&c.as_str()) || picked.as_deref() == Some(c));
    let mut results = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("results.jsonl"))?;
    for case in plan["cases"].as_array().context("plan: cases")? {
        // With no flags, the configuration the agent picks; per configuration, each forced.
        let run_with: Vec<Option<&str>> =
            if case["per_config"].as_bool().unwrap_or(false) { all.iter().map(|c| Some(c.as_str())).collect() } else { vec![None] };
        for forced in run_with {
            let label = forced.or(picked.as_deref()).unwrap_or("none");
            for (test, outcome, secs) in run_case(dir, &detector, case, forced, slack)? {
                let line = json!({"binary": case["binary"], "test": test, "configuration": label, "outcome": outcome, "secs": secs});
                writeln!(results, "{line}")?;
                eprintln!("vm-guest: {label} {}::{test} {outcome}", case["binary"].as_str().unwrap_or("?"));
            }
        }
    }
    Ok(())
}

/// The kernel's lockdown mode (`none`, `integrity`, `confidentiality`), as securityfs says.
pub(super) fn lockdown() -> String {
    let path = Path::new("/sys/kernel/security/lockdown");
    if !path.exists() {
        let _ = Command::new("mount").args(["-t", "securityfs", "securityfs", "/sys/kernel/security"]).status();
    }
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.split_whitespace().find_map(|w| w.strip_prefix('[')?.strip_suffix(']').map(str::to_string)).unwrap_or_else(|| "unknown".into())
}

/// Every configuration `detector check` loaded on this kernel (`kind/send-hook`), and the one
/// the agent picks.
pub(super) fn configurations(checks: &Value) -> (Vec<String>, Option<String>) {
    let mut all = vec![];
    let mut picked = None;
    for c in checks.as_array().into_iter().flatten() {
        let (Some(kind), Some(hook)) = (c["configuration"].as_str(), c["send_hook"].as_str()) else { continue };
        if c["ok"] == true {
            let name = format!("{kind}/{hook}");
            if c["chosen"] == true {
                picked = Some(name.clone());
            }
            all.push(name);
        }
    }
    (all, picked)
}

/// Runs one case's tests, with the configuration `forced` (`kind/send-hook`) or with none; each
/// test's name, `ok`/`FAILED`, and the seconds the whole binary took. A test that never printed
/// a result (the binary crashed) is `FAILED`.
/// The file in a kernel's directory where its tests name what the kernel refused.
pub(super) const REFUSALS: &str = "refusals.txt";

/// What the tests on one kernel named as refused, each once.
pub(super) fn refusals(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join(REFUSALS)).unwrap_or_default();
    let set: std::collections::BTreeSet<&str> = text.lines().map(|l| l.split_once(": ").map_or(l, |(_, what)| what)).collect();
    set.into_iter().map(str::to_string).collect()
}

pub(super) fn run_case(dir: &Path, detector: &Path, case: &Value, forced: Option<&str>, slack: u64) -> anyhow::Result<Vec<(String, String, f64)>> {
    let binary = case["binary"].as_str().context("plan: binary")?;
    let tests: Vec<&str> = case["tests"].as_array().context("plan: tests")?.iter().filter_map(Value::as_str).collect();
    let log = dir.join(format!("{binary}-{}.log", forced.unwrap_or("picked").replace('/', "-")));
    let logf = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let t = Instant::now();
    let mut cmd = Command::new(case["path"].as_str().context("plan: path")?);
    cmd.args(["--exact", "--test-threads=1"])
        .args(&tests)
        .env("DETECTOR_BIN", detector)
        .env("DETECTOR_REQUIRE_PRIVILEGED", "1")
        // What this kernel refused, which a test names instead of proving: kept beside the
        // results (libtest keeps a passing test's stderr to itself).
        .env("DETECTOR_REFUSALS", dir.join(REFUSALS))
        .env("DETECTOR_TEST_SLACK", slack.to_string())
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf);
    if let Some((kind, hook)) = forced.and_then(|f| f.split_once('/')) {
        cmd.env("DETECTOR_TEST_CONFIGURATION", kind).env("DETECTOR_TEST_SEND_HOOK", hook);
    }
    // A test that hangs fails alone (killed with what it started), not the whole VM run.
    let limit = TEST_LIMIT * tests.len() as u32;
    if run_for(cmd, limit).with_context(|| format!("running {binary}"))?.is_none() {
        let mut f = std::fs::OpenOptions::new().append(true).open(&log)?;
        writeln!(f, "vm-guest: killed after {} s", limit.as_secs())?;
    }
    let secs = t.elapsed().as_secs_f64();
    let text = std::fs::read(&log)?;
    let text = String::from_utf8_lossy(&text);
    Ok(tests
        .iter()
        .map(|name| {
            let ok = text.lines().any(|l| l.trim_end() == format!("test {name} ... ok"));
            (name.to_string(), if ok { "ok" } else { "FAILED" }.to_string(), secs)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_picked_configuration_is_the_chosen_one() {
        let checks = json!([
            {"name": "hook fentry tcp_sendmsg_locked (send)", "ok": true, "detail": "attached", "send_hook": "fentry"},
            {"name": "configuration storage-walk", "ok": true, "chosen": true, "configuration": "storage-walk", "send_hook": "fentry"},
            {"name": "configuration hash-map", "ok": true, "configuration": "hash-map", "send_hook": "kprobe"},
            {"name": "configuration --configuration storage-diag", "ok": false, "detail": "refused"},
        ]);
        assert_eq!(configurations(&checks), (vec!["storage-walk/fentry".to_string(), "hash-map/kprobe".to_string()], Some("storage-walk/fentry".to_string())));
    }

    #[test]
    fn refusals_are_listed_once_without_the_release() {
        let dir = std::env::temp_dir().join(format!("xtask-refusals-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(REFUSALS),
            "6.1.0-57-amd64: send path ktls: UNAVAILABLE no tls\n6.1.0-57-amd64: send path ktls: UNAVAILABLE no tls\n6.1.0-57-amd64: iter x\n",
        )
        .unwrap();
        assert_eq!(refusals(&dir), ["iter x", "send path ktls: UNAVAILABLE no tls"]);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(refusals(&dir).is_empty(), "no file: nothing refused");
    }
}
