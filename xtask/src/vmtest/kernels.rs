//! The kernels the matrix boots: Debian's series in the shapes fleets run them, found or
//! installed from Debian's archive.
use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use super::*;

/// A kernel the matrix runs on: a Debian kernel series, in the shape a fleet runs it (plain,
/// locked down as Secure Boot does, PREEMPT_RT), or this machine's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kernel {
    /// Debian 12's 6.1 LTS (`linux-image-6.1.0-N-amd64-unsigned`).
    #[value(name = "6.1")]
    V6_1,
    /// The same, booted with `lockdown=integrity`.
    #[value(name = "6.1-lockdown-integrity")]
    V6_1Integrity,
    /// Debian 12's backported 6.12 LTS (`linux-image-6.12.N+deb12-amd64-unsigned`).
    #[value(name = "6.12")]
    V6_12,
    /// Its PREEMPT_RT flavour (`linux-image-6.12.N+deb12-rt-amd64-unsigned`).
    #[value(name = "6.12-rt")]
    V6_12Rt,
    /// 6.12 booted with `lockdown=confidentiality` (Secure Boot's strict mode: no tracefs, no
    /// kprobes, no `bpf_probe_read_kernel`).
    #[value(name = "6.12-lockdown-confidentiality")]
    V6_12Confidentiality,
    /// The kernel this machine runs, without a VM.
    Host,
    /// All of the above.
    All,
}

impl Kernel {
    /// The kernels VMs boot (what `cargo xtask test` adds to the host's run).
    pub const VMS: [Kernel; 5] = [Kernel::V6_1, Kernel::V6_12, Kernel::V6_1Integrity, Kernel::V6_12Rt, Kernel::V6_12Confidentiality];

    pub fn each(self) -> Vec<Kernel> {
        match self {
            Kernel::All => Self::VMS.into_iter().chain([Kernel::Host]).collect(),
            k => vec![k],
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Kernel::V6_1 => "6.1",
            Kernel::V6_1Integrity => "6.1-lockdown-integrity",
            Kernel::V6_12 => "6.12",
            Kernel::V6_12Rt => "6.12-rt",
            Kernel::V6_12Confidentiality => "6.12-lockdown-confidentiality",
            Kernel::Host => "host",
            Kernel::All => "all",
        }
    }

    /// Debian's package names for this series (newest wins) and the `/boot/vmlinuz-*` names
    /// they install: `(prefix, suffix)` around the version.
    pub(super) fn debian(self) -> Option<(&'static str, &'static str)> {
        match self {
            Kernel::V6_1 | Kernel::V6_1Integrity => Some(("6.1.0-", "-amd64")),
            Kernel::V6_12 | Kernel::V6_12Confidentiality => Some(("6.12.", "+deb12-amd64")),
            Kernel::V6_12Rt => Some(("6.12.", "+deb12-rt-amd64")),
            _ => None,
        }
    }

    /// Kernel parameters the shape boots with.
    pub(super) fn append(self) -> Option<&'static str> {
        match self {
            Kernel::V6_1Integrity => Some("lockdown=integrity"),
            Kernel::V6_12Confidentiality => Some("lockdown=confidentiality"),
            _ => None,
        }
    }

    /// What `cargo xtask test` runs on it: the plain LTS kernels the subset, each other shape
    /// the walking skeleton with no agent flags.
    pub(super) fn subset(self) -> Selection {
        match self {
            Kernel::V6_1 | Kernel::V6_12 | Kernel::Host => Selection::Subset,
            _ => Selection::Skeleton,
        }
    }
}

/// The newest installed `/boot/vmlinuz-<prefix>N<suffix>`.
pub(super) fn installed_kernel((prefix, suffix): (&str, &str)) -> Option<PathBuf> {
    let mut found: Vec<(Vec<u64>, PathBuf)> = std::fs::read_dir("/boot")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let v = name.strip_prefix("vmlinuz-")?.strip_prefix(prefix)?.strip_suffix(suffix)?.to_string();
            v.bytes().all(|b| b.is_ascii_digit()).then(|| (version_key(&format!("{prefix}{v}")), e.path()))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

/// `6.12.117` → `[6, 12, 117]`, for ordering versions.
pub(super) fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect()
}

/// `apt-cache search --names-only` pattern of Debian's generic unsigned images of a series.
pub(super) fn package_pattern((prefix, suffix): (&str, &str)) -> String {
    let esc = |s: &str| s.replace('.', "\\.").replace('+', "\\+");
    format!("^linux-image-{}[0-9]+{}-unsigned$", esc(prefix), esc(suffix))
}

/// The installed kernel of a series, installing Debian's newest when there is none.
pub(super) fn ensure_kernel(series: (&str, &str)) -> anyhow::Result<PathBuf> {
    if let Some(k) = installed_kernel(series) {
        return Ok(k);
    }
    let (prefix, suffix) = series;
    // A fresh machine's package lists may be stale or empty.
    let _ = Command::new("apt-get").args(["update", "-qq"]).status();
    let pattern = package_pattern(series);
    let out = Command::new("apt-cache").args(["search", "--names-only", &pattern]).output().context("running apt-cache")?;
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect();
    names.sort_by_key(|n| version_key(n.trim_start_matches("linux-image-")));
    let Some(pkg) = names.pop() else { bail!("no Debian package matches {pattern}: is the bookworm archive in the apt sources?") };
    eprintln!("xtask: installing {pkg} (a kernel for the VM matrix)");
    crate::packages::install(&pkg)?;
    installed_kernel(series).with_context(|| format!("{pkg} is installed but no /boot/vmlinuz-{prefix}N{suffix} appeared"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_numerically() {
        assert!(version_key("6.12.117+deb12-amd64") > version_key("6.12.99+deb12-amd64"));
        assert!(version_key("6.1.0-56-amd64") > version_key("6.1.0-9-amd64"));
    }

    #[test]
    fn package_patterns_name_the_generic_unsigned_images() {
        assert_eq!(package_pattern(Kernel::V6_1.debian().unwrap()), "^linux-image-6\\.1\\.0-[0-9]+-amd64-unsigned$");
        assert_eq!(package_pattern(Kernel::V6_12.debian().unwrap()), "^linux-image-6\\.12\\.[0-9]+\\+deb12-amd64-unsigned$");
    }

    #[test]
    fn every_shape_boots_a_debian_series_with_its_parameters() {
        assert_eq!(Kernel::V6_12Rt.debian(), Some(("6.12.", "+deb12-rt-amd64")));
        assert_eq!(package_pattern(Kernel::V6_12Rt.debian().unwrap()), "^linux-image-6\\.12\\.[0-9]+\\+deb12-rt-amd64-unsigned$");
        assert_eq!(Kernel::V6_12Confidentiality.append(), Some("lockdown=confidentiality"));
        assert_eq!(Kernel::V6_1Integrity.append(), Some("lockdown=integrity"));
        assert!(Kernel::VMS.iter().all(|k| k.debian().is_some()));
        assert_eq!(Kernel::All.each().len(), Kernel::VMS.len() + 1);
    }
}
