//! `cargo xtask test`: the whole suite. Unit tests and every privileged integration test run
//! once with the configuration the agent picks on this kernel (no flags); then the scenario
//! matrix and the walking skeleton run again with each other configuration this kernel runs
//! (each other kind, each other send hook, as `detector check` finds and loads them), so every
//! configuration a node could end up on is proven here; last, a subset in VMs booting Debian's
//! kernels in the shapes fleets run them (`vmtest/`). The pieces this kernel refused, which
//! the tests name instead of proving, are listed at the end.
use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::cargo;

/// Integration test files re-run per configuration.
const PER_HOOK: [&str; 4] = ["scenarios", "verdict_truth", "walking_skeleton", "kernel_matrix"];

pub fn run(root: &Path, args: &[String]) -> anyhow::Result<()> {
    if args.is_empty() {
        lint(root)?;
    }
    // The integration tests start the real agent binary and the peer helpers.
    cargo(root, &["build", "--package", "detector", "--package", "detector-tests", "--bins", "--features", crate::TEST_FEATURES])?;
    // The real Prometheus and promtool the fleet-surface tests drive.
    crate::packages::ensure("prometheus", "prometheus")?;
    crate::packages::ensure("promtool", "prometheus")?;
    // The send-path tests serve a large file with Debian's nginx (`sendfile on`).
    crate::packages::ensure("nginx", "nginx-light")?;
    // The image test builds deploy/Containerfile as `cargo xtask image` does.
    crate::packages::ensure("podman", "podman")?;
    crate::packages::ensure("systemd-analyze", "systemd")?;
    // The shipped image's build (static musl): reaping_safety signals a glibc server with it.
    crate::setup::ensure_musl_target()?;
    cargo(root, &["build", "--package", "detector", "--target", crate::setup::MUSL])?;
    let bin = root.join("target/debug/detector");
    // The eBPF crate only builds for the BPF target (build.rs does that).
    let refusals = root.join("target/test-refusals.txt");
    let _ = std::fs::remove_file(&refusals);
    // Testing the agent's crate builds its binary again: with the suite's feature, as above.
    let mut test = vec!["test", "--workspace", "--exclude", "detector-ebpf", "--features", crate::TEST_FEATURES];
    test.extend(args.iter().map(String::as_str));
    cargo_test(root, &test, None, &refusals)?;
    if !args.is_empty() {
        // A filtered run is for one test at hand, not the configuration matrix.
        return print_refusals(&refusals);
    }
    for (kind, hook) in other_configurations(&bin)? {
        eprintln!("xtask test: the matrix again with --configuration {kind} --send-hook {hook}");
        let mut t = vec!["test", "--package", "detector-tests"];
        for f in PER_HOOK {
            t.extend(["--test", f]);
        }
        cargo_test(root, &t, Some((&kind, &hook)), &refusals)?;
    }
    print_refusals(&refusals)?;
    // The kernels most nodes run, in VMs, in the shapes fleets run them: the configurations
    // and send hooks this kernel lacks (fentry, kprobe), lockdown, PREEMPT_RT.
    if std::env::var_os("DETECTOR_SKIP_VMTEST").is_some() {
        eprintln!("xtask test: the VM kernels were SKIPPED (DETECTOR_SKIP_VMTEST is set)");
        return Ok(());
    }
    eprintln!("xtask test: the VM subset on Debian's kernels (cargo xtask vmtest --subset)");
    crate::vmtest::run(root, &crate::vmtest::Kernel::VMS, crate::vmtest::Selection::Subset)
}

/// Formatting and clippy (warnings are errors) on the host crates and the eBPF crate.
fn lint(root: &Path) -> anyhow::Result<()> {
    crate::setup::ensure_lint_tools()?;
    cargo(root, &["fmt", "--all", "--check"]).context("code not formatted: run `cargo fmt --all`")?;
    cargo(root, &["clippy", "--workspace", "--exclude", "detector-ebpf", "--all-targets", "--all-features", "--", "-D", "warnings"])?;
    // The agent as production builds it: none of the test and bench features.
    cargo(root, &["clippy", "--package", "detector", "--all-targets", "--", "-D", "warnings"])?;
    let status = Command::new("cargo")
        .current_dir(root.join("detector-ebpf"))
        .env_remove("RUSTC")
        .env_remove("CARGO")
        .args(["+nightly", "clippy", "--target", "bpfel-unknown-none", "-Z", "build-std=core", "--", "-D", "warnings"])
        .status()
        .context("running clippy on the eBPF crate")?;
    if !status.success() {
        bail!("clippy found problems in detector-ebpf");
    }
    Ok(())
}

fn cargo_test(root: &Path, args: &[&str], configuration: Option<(&str, &str)>, refusals: &Path) -> anyhow::Result<()> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(root)
        .args(args)
        .env("DETECTOR_BIN", root.join("target/debug/detector"))
        .env("DETECTOR_MUSL_BIN", root.join("target").join(crate::setup::MUSL).join("debug/detector"))
        // Privileged tests must run, not skip, under `cargo xtask test`.
        .env("DETECTOR_REQUIRE_PRIVILEGED", "1")
        .env("DETECTOR_REFUSALS", refusals);
    if let Some((kind, hook)) = configuration {
        cmd.env("DETECTOR_TEST_CONFIGURATION", kind).env("DETECTOR_TEST_SEND_HOOK", hook);
    }
    let status = cmd.status().context("running cargo test")?;
    if !status.success() {
        bail!("tests failed{}", configuration.map(|(k, h)| format!(" with --configuration {k} --send-hook {h}")).unwrap_or_default());
    }
    Ok(())
}

/// The pieces this kernel refused that tests named instead of proving, once each.
fn print_refusals(path: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: std::collections::BTreeSet<&str> = text.lines().collect();
    if lines.is_empty() {
        eprintln!("xtask test: no test found a piece of the kernel side refused on this kernel");
    } else {
        eprintln!("xtask test: pieces this kernel refused, named by the tests instead of proven ({}):", path.display());
        for l in lines {
            eprintln!("  REFUSED on {l}");
        }
    }
    Ok(())
}

/// The configurations this kernel runs besides the one the agent picks, as `detector check`
/// loaded them: (`--configuration`, `--send-hook`).
fn other_configurations(bin: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let out = Command::new(bin).args(["check", "--output", "json"]).output().context("running detector check")?;
    let checks: serde_json::Value =
        serde_json::from_slice(&out.stdout).with_context(|| format!("detector check printed no JSON: {}", String::from_utf8_lossy(&out.stderr)))?;
    Ok(alternatives(&checks))
}

fn alternatives(checks: &serde_json::Value) -> Vec<(String, String)> {
    checks
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["ok"] == true && c["chosen"] != true)
        .filter_map(|c| Some((c["configuration"].as_str()?.to_string(), c["send_hook"].as_str()?.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_other_configurations_are_those_check_loaded_besides_the_chosen_one() {
        let checks = serde_json::json!([
            {"name": "hook tp_btf tcp_sendmsg_locked (send)", "ok": true, "detail": "attached", "send_hook": "tcp-sendmsg-locked"},
            {"name": "configuration storage-diag", "ok": true, "chosen": true, "configuration": "storage-diag", "send_hook": "tcp-sendmsg-locked"},
            {"name": "configuration hash-map", "ok": true, "configuration": "hash-map", "send_hook": "sock-send-length"},
            {"name": "configuration --configuration storage-walk", "ok": false, "detail": "refused"},
            {"name": "configuration storage-diag", "ok": true, "configuration": "storage-diag", "send_hook": "sock-send-length-btf"},
        ]);
        assert_eq!(super::alternatives(&checks), vec![("hash-map".into(), "sock-send-length".into()), ("storage-diag".into(), "sock-send-length-btf".into())]);
    }
}
