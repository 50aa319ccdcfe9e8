//! `cargo xtask vmtest`: the privileged integration tests on the kernels nodes run, each booted
//! under qemu by virtme-ng (`vng`) over this machine's root file system (read-only, with
//! writable overlays), against the binaries just built here.
//!
//! In each kernel the guest half (`xtask vm-guest`, [`guest`]) asks `detector check` which
//! configurations the kernel runs and which one the agent picks, and runs the selected tests
//! with no flags and once per configuration (forcing it with `DETECTOR_TEST_CONFIGURATION` and
//! `DETECTOR_TEST_SEND_HOOK`). It writes one JSON line per test result into a directory shared
//! with the host, so a guest that crashes or hangs still leaves what it proved.
//!
//! Debian's kernel packages (the generic flavour: it has the 9p modules the guest's root needs),
//! qemu, busybox (virtme-ng's initramfs) and virtme-ng (PyPI) are installed when missing.
mod guest;
mod kernels;
mod plan;
mod summary;
mod vm;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

pub use guest::guest;
use guest::*;
pub use kernels::Kernel;
use kernels::*;
pub use plan::Selection;
use plan::*;
use summary::*;
use vm::*;

pub fn run(root: &Path, kernels: &[Kernel], sel: Selection) -> anyhow::Result<()> {
    let started = Instant::now();
    let binaries = build(root)?;
    let out_root = root.join("target/vmtest").join(match sel {
        Selection::Skeleton | Selection::Subset => "subset",
        Selection::Full => "full",
    });
    // The subset leaves out, in VMs, the configurations the host's suite proves (on a newer
    // kernel) unless the VM's kernel picks one of them.
    let skip = match sel {
        Selection::Skeleton | Selection::Subset => host_configurations(root)?,
        Selection::Full => vec![],
    };
    // Kernel images first: the KVM probe boots one.
    let images: BTreeMap<&str, PathBuf> =
        kernels.iter().filter_map(|k| k.debian().map(|d| (k, d))).map(|(k, d)| Ok((k.name(), ensure_kernel(d)?))).collect::<anyhow::Result<_>>()?;
    let vm = if images.is_empty() { None } else { Some(Vm::ensure(images.values().next().expect("one image"))?) };
    let mut summaries = vec![];
    for &k in kernels {
        let out = out_root.join(k.name());
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        let t = Instant::now();
        let slack = match (&vm, k) {
            (_, Kernel::Host) => 1,
            (Some(vm), _) if vm.kvm => SLACK_KVM,
            _ => SLACK_TCG,
        };
        // In the subset, each shape beyond the plain LTS kernels runs the walking skeleton.
        let sel = if sel == Selection::Subset { k.subset() } else { sel };
        write_plan(&out, root, &binaries, sel, slack, &skip)?;
        let _ = std::fs::remove_file(out.join(REFUSALS));
        let ran = match (&vm, images.get(k.name())) {
            (Some(vm), Some(image)) => vm.boot(root, image, k.append(), &out, vm_timeout(sel)),
            _ => guest(&out),
        };
        if let Err(e) = &ran {
            std::fs::write(out.join("error.txt"), format!("{e:#}"))?;
        }
        let summary = Summary::read(k, &out, t.elapsed())?;
        // This kernel's run ended (passed or not): a run cut short leaves no marker and never
        // reaches the README's table.
        std::fs::write(out.join("finished"), summary.line())?;
        eprintln!("{}", summary.line());
        for what in refusals(&out) {
            eprintln!("xtask vmtest: {}: REFUSED, named instead of proven: {what}", k.name());
        }
        summaries.push(summary);
    }
    println!("{}", table(&summaries));
    if sel == Selection::Full {
        // The README's table: the last full run on each kernel.
        let last: Vec<Summary> = Kernel::All
            .each()
            .into_iter()
            .filter(|k| out_root.join(k.name()).join("finished").exists())
            .map(|k| Summary::read(k, &out_root.join(k.name()), Duration::ZERO))
            .collect::<anyhow::Result<_>>()?;
        update_readme(&root.join("README.md"), &table(&last))?;
    }
    eprintln!("xtask vmtest: {:.0} s in all; logs in {}", started.elapsed().as_secs_f64(), out_root.display());
    let failed: Vec<_> = summaries.iter().filter(|s| !s.passed()).map(|s| s.kernel.name()).collect();
    if !failed.is_empty() {
        bail!("the kernel matrix failed on {}: see {}/<kernel>/", failed.join(", "), out_root.display());
    }
    Ok(())
}

/// Builds the agent, the peer helpers and the integration test binaries; returns the test
/// binaries by name.
fn build(root: &Path) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    crate::cargo(root, &["build", "--package", "detector", "--package", "detector-tests", "--bins", "--features", crate::TEST_FEATURES])?;
    // The agent as nodes run it: a debug build starts several times slower, which emulation
    // multiplies again.
    crate::cargo(root, &["build", "--release", "--package", "detector", "--features", crate::TEST_FEATURES])?;
    crate::cargo(root, &["build", "--package", "xtask"])?;
    let mut bins = BTreeMap::new();
    // The scenario tests, and the agent crate's own test of the kernel iterators.
    // (Testing the agent's crate builds its binary again: with the suite's feature, as above.)
    for args in [&["--package", "detector-tests"][..], &["--package", "detector", "--test", "kernel_iterators", "--features", crate::TEST_FEATURES]] {
        let out = Command::new(env!("CARGO"))
            .current_dir(root)
            .arg("test")
            .args(args)
            .args(["--no-run", "--message-format=json"])
            .stderr(Stdio::inherit())
            .output()
            .context("building the integration tests")?;
        if !out.status.success() {
            bail!("building the integration tests failed");
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
            if v["reason"] == "compiler-artifact"
                && v["target"]["kind"][0] == "test"
                && let (Some(name), Some(exe)) = (v["target"]["name"].as_str(), v["executable"].as_str())
            {
                bins.insert(name.to_string(), PathBuf::from(exe));
            }
        }
    }
    Ok(bins)
}
