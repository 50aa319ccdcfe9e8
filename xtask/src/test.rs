//! `cargo xtask test`: the whole suite. Unit tests and every privileged integration test run
//! once with the send hook the agent picks on this kernel; then the scenario matrix and the
//! walking skeleton run again with each other send hook this kernel offers (as `detector
//! check` finds them), so every hook a node could end up on is proven here; last, a subset in
//! VMs booting Debian's 6.1 and 6.12 kernels, for the hooks this kernel lacks (`vmtest.rs`).
use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::cargo;

/// Integration test files re-run per send hook.
const PER_HOOK: [&str; 4] = ["scenarios", "verdict_truth", "walking_skeleton", "kernel_matrix"];

pub fn run(root: &Path, args: &[String]) -> anyhow::Result<()> {
    if args.is_empty() {
        lint(root)?;
    }
    // The integration tests start the real agent binary and the peer helpers.
    cargo(root, &["build", "--package", "detector", "--package", "detector-tests", "--bins"])?;
    // The real Prometheus and promtool the fleet-surface tests drive.
    crate::packages::ensure("prometheus", "prometheus")?;
    crate::packages::ensure("promtool", "prometheus")?;
    // The image test builds deploy/Containerfile as `cargo xtask image` does.
    crate::packages::ensure("podman", "podman")?;
    crate::packages::ensure("systemd-analyze", "systemd")?;
    // The shipped image's build (static musl): reaping_safety signals a glibc server with it.
    crate::setup::ensure_musl_target()?;
    cargo(root, &["build", "--package", "detector", "--target", crate::setup::MUSL])?;
    let bin = root.join("target/debug/detector");
    // The eBPF crate only builds for the BPF target (build.rs does that).
    let mut test = vec!["test", "--workspace", "--exclude", "detector-ebpf"];
    test.extend(args.iter().map(String::as_str));
    cargo_test(root, &test, None)?;
    if !args.is_empty() {
        // A filtered run is for one test at hand, not the hook matrix.
        return Ok(());
    }
    for hook in other_send_hooks(&bin)? {
        eprintln!("xtask test: the matrix again with --send-hook {hook}");
        let mut t = vec!["test", "--package", "detector-tests"];
        for f in PER_HOOK {
            t.extend(["--test", f]);
        }
        cargo_test(root, &t, Some(&hook))?;
    }
    // The kernels most nodes run, in VMs: the send hooks this kernel lacks (fentry, kprobe).
    if std::env::var_os("DETECTOR_SKIP_VMTEST").is_some() {
        eprintln!("xtask test: the VM kernels were SKIPPED (DETECTOR_SKIP_VMTEST is set)");
        return Ok(());
    }
    eprintln!("xtask test: the VM subset on Debian's 6.1 and 6.12 kernels (cargo xtask vmtest --subset)");
    crate::vmtest::run(root, &crate::vmtest::Kernel::VMS, crate::vmtest::Selection::Subset)
}

/// Formatting and clippy (warnings are errors) on the host crates and the eBPF crate.
fn lint(root: &Path) -> anyhow::Result<()> {
    crate::setup::ensure_lint_tools()?;
    cargo(root, &["fmt", "--all", "--check"]).context("code not formatted: run `cargo fmt --all`")?;
    cargo(root, &["clippy", "--workspace", "--exclude", "detector-ebpf", "--all-targets", "--", "-D", "warnings"])?;
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

fn cargo_test(root: &Path, args: &[&str], hook: Option<&str>) -> anyhow::Result<()> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(root)
        .args(args)
        .env("DETECTOR_BIN", root.join("target/debug/detector"))
        .env("DETECTOR_MUSL_BIN", root.join("target").join(crate::setup::MUSL).join("debug/detector"))
        // Privileged tests must run, not skip, under `cargo xtask test`.
        .env("DETECTOR_REQUIRE_PRIVILEGED", "1");
    if let Some(h) = hook {
        cmd.env("DETECTOR_TEST_SEND_HOOK", h);
    }
    let status = cmd.status().context("running cargo test")?;
    if !status.success() {
        bail!("tests failed{}", hook.map(|h| format!(" with --send-hook {h}")).unwrap_or_default());
    }
    Ok(())
}

/// The `--send-hook` values of the send hooks this kernel can run, besides the one the agent
/// picks by itself.
fn other_send_hooks(bin: &Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new(bin).args(["check", "--output", "json"]).output().context("running detector check")?;
    let checks: serde_json::Value =
        serde_json::from_slice(&out.stdout).with_context(|| format!("detector check printed no JSON: {}", String::from_utf8_lossy(&out.stderr)))?;
    Ok(checks
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["ok"] == true && c["detail"] != "attached")
        .filter_map(|c| c["send_hook"].as_str().map(str::to_string))
        .collect())
}
