//! Debian packages the benchmarks and tests drive (nginx, ab, iperf3, prometheus, …): installed
//! when missing, the way `cargo xtask setup` installs bpf-linker, so `cargo xtask bench` and
//! `cargo xtask test` are one command each.
use std::process::Command;

use anyhow::{Context as _, bail};

/// Makes sure `command` exists, installing Debian `package` if not.
pub fn ensure(command: &str, package: &str) -> anyhow::Result<()> {
    if which(command) {
        return Ok(());
    }
    eprintln!("xtask: installing {package} (for {command})");
    install(package)?;
    if !which(command) {
        bail!("installing {package} did not give {command}; install it by hand (apt-get install {package}) and re-run");
    }
    Ok(())
}

/// Installs Debian `package` (apt-get, non-interactive, no recommends).
pub fn install(package: &str) -> anyhow::Result<()> {
    // A fresh machine's package lists may be stale or empty.
    let _ = Command::new("apt-get").args(["update", "-qq"]).status();
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("installing {package} failed; install it by hand (apt-get install {package}) and re-run");
    }
    Ok(())
}

pub fn which(command: &str) -> bool {
    find(command).is_some()
}

/// Where `command` is: on PATH, or in the sbin directories a non-login PATH may lack.
pub fn find(command: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).chain(["/usr/sbin".into(), "/sbin".into()]).map(|d| d.join(command)).find(|p| p.is_file())
}
