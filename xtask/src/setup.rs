//! Toolchain set-up for the eBPF build: nightly's `rust-src` (for `-Z build-std=core`) and a
//! `bpf-linker` linked against nightly's own libLLVM, so its LLVM matches rustc's exactly.
use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

pub fn ensure() -> anyhow::Result<()> {
    let sysroot = nightly_sysroot()?;
    ensure_rust_src(&sysroot)?;
    ensure_bpf_linker(&sysroot)
}

/// The lint tools the suite runs: rustfmt and clippy on the default toolchain, clippy on nightly
/// (for the eBPF crate).
pub fn ensure_lint_tools() -> anyhow::Result<()> {
    for (toolchain, component) in [("stable", "rustfmt"), ("stable", "clippy"), ("nightly", "clippy")] {
        let out =
            Command::new("rustup").args(["component", "list", "--installed", "--toolchain", toolchain]).output().context("running `rustup component list`")?;
        if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.starts_with(component)) {
            continue;
        }
        eprintln!("xtask: installing {component} for {toolchain}");
        if !run_ok(Command::new("rustup").args(["component", "add", component, "--toolchain", toolchain])) {
            bail!("`rustup component add {component} --toolchain {toolchain}` failed");
        }
    }
    Ok(())
}

/// The static (musl) target the shipped image is built for; the test suite runs that build too
/// (its libc numbers real-time signals differently from glibc).
pub const MUSL: &str = "x86_64-unknown-linux-musl";

pub fn ensure_musl_target() -> anyhow::Result<()> {
    let out = Command::new("rustup").args(["target", "list", "--installed"]).output().context("running `rustup target list`")?;
    if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == MUSL) {
        return Ok(());
    }
    eprintln!("xtask: installing the {MUSL} target");
    if !run_ok(Command::new("rustup").args(["target", "add", MUSL])) {
        bail!("`rustup target add {MUSL}` failed");
    }
    Ok(())
}

fn run_ok(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .env_remove("RUSTC")
        .output()
        .context("running `rustc +nightly --print sysroot` (is rustup installed?)")?;
    if !out.status.success() {
        bail!(
            "no nightly toolchain: the eBPF programs build with nightly. Install it with `rustup toolchain install nightly` ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

fn ensure_rust_src(sysroot: &std::path::Path) -> anyhow::Result<()> {
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Ok(());
    }
    eprintln!("xtask: installing rust-src for nightly");
    if !run_ok(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"])) {
        bail!("`rustup component add rust-src --toolchain nightly` failed");
    }
    Ok(())
}

/// The libLLVM shared object shipped with nightly (e.g. libLLVM.so.22.1-rust-1.97.0-nightly).
fn nightly_llvm(sysroot: &std::path::Path) -> anyhow::Result<(PathBuf, String, u32)> {
    let lib = sysroot.join("lib");
    for entry in std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(ver) = name.strip_prefix("libLLVM.so.") {
            let major: u32 = ver.split('.').next().and_then(|m| m.parse().ok()).with_context(|| format!("cannot read the LLVM version from {name}"))?;
            return Ok((lib.join(&name), name, major));
        }
    }
    bail!("no libLLVM.so.* in {}: is this a rustup nightly toolchain?", lib.display())
}

fn ensure_bpf_linker(sysroot: &std::path::Path) -> anyhow::Result<()> {
    if run_ok(Command::new("bpf-linker").arg("--version")) {
        return Ok(());
    }
    let (llvm, name, major) = nightly_llvm(sysroot)?;
    // The linker's rpath points into this directory, so it lives with cargo's own files.
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let prefix = cargo_home.join("detector-llvm");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for link in ["libLLVM.so".to_string(), name] {
        let p = lib.join(link);
        let _ = std::fs::remove_file(&p);
        std::os::unix::fs::symlink(&llvm, &p).with_context(|| format!("linking {} to {}", p.display(), llvm.display()))?;
    }
    eprintln!("xtask: building bpf-linker against nightly's LLVM {major} (about a minute)");
    let status = Command::new("cargo")
        .args(["+nightly", "install", "bpf-linker", "--locked", "--no-default-features", "--features", &format!("llvm-{major}")])
        .env("LLVM_PREFIX", &prefix)
        .env_remove("RUSTC")
        .env_remove("CARGO")
        .status()
        .context("running cargo install bpf-linker")?;
    if !status.success() || !run_ok(Command::new("bpf-linker").arg("--version")) {
        bail!("installing bpf-linker failed; see the cargo output above");
    }
    Ok(())
}
