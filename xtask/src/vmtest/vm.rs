//! Booting a kernel: qemu through virtme-ng, with a time limit on everything it starts.
use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// qemu through virtme-ng, with KVM when a guest boots with it, software emulation otherwise.
pub(super) struct Vm {
    pub(super) vng: PathBuf,
    pub(super) kvm: bool,
}

impl Vm {
    /// `vng` with its own directory first on PATH: it runs its helpers (`virtme-run`) by name,
    /// and in a virtualenv they are only there.
    pub(super) fn vng(&self) -> Command {
        let mut cmd = Command::new(&self.vng);
        let dir = self.vng.parent().unwrap_or(Path::new("/"));
        let path = std::env::var_os("PATH").unwrap_or_default();
        let joined = std::env::join_paths(std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&path))).unwrap_or(path);
        cmd.env("PATH", joined);
        cmd
    }

    pub(super) fn ensure(image: &Path) -> anyhow::Result<Vm> {
        crate::packages::ensure("qemu-system-x86_64", "qemu-system-x86")?;
        crate::packages::ensure("busybox", "busybox-static")?;
        let vng = ensure_vng()?;
        let mut vm = Vm { vng, kvm: false };
        vm.kvm = match std::env::var("DETECTOR_VM_ACCEL").as_deref() {
            Ok("kvm") => true,
            Ok("tcg") => false,
            Ok(other) => bail!("DETECTOR_VM_ACCEL={other:?}: expected kvm or tcg"),
            Err(_) => vm.kvm_boots(image)?,
        };
        eprintln!("xtask vmtest: guests run under {}", if vm.kvm { "KVM" } else { "software emulation (TCG)" });
        Ok(vm)
    }

    /// Whether a KVM guest of `kernel` boots within 30 s (on some hosts one hangs early in boot).
    pub(super) fn kvm_boots(&self, kernel: &Path) -> anyhow::Result<bool> {
        if !Path::new("/dev/kvm").exists() {
            return Ok(false);
        }
        let mut cmd = self.vng();
        cmd.args(["--memory", "512M", "-r"]).arg(kernel).args(["--", "true"]).stdout(Stdio::null()).stderr(Stdio::null());
        Ok(matches!(run_for(cmd, Duration::from_secs(30))?, Some(true)))
    }

    /// Boots `kernel` (with the kernel parameters `append`) and runs the guest half in it,
    /// the results going to `out`.
    pub(super) fn boot(&self, root: &Path, kernel: &Path, append: Option<&str>, out: &Path, limit: Duration) -> anyhow::Result<()> {
        let console = std::fs::File::create(out.join("console.log")).context("creating console.log")?;
        let mut cmd = self.vng();
        // The guest kernel's log on the console too: a guest that dies before its script ends
        // (vng's exit status 255) leaves why in console.log.
        cmd.arg("--verbose");
        if !self.kvm {
            cmd.arg("--disable-kvm");
        }
        if let Some(a) = append {
            cmd.arg(format!("--append={a}"));
        }
        cmd.args(["--memory", "2G", "--cpus", "2"])
            .arg(format!("--rwdir={}", out.display()))
            .arg("-r")
            .arg(kernel)
            .arg("--")
            .arg(format!("{} vm-guest {}", root.join("target/debug/xtask").display(), out.display()))
            .stdin(Stdio::null())
            .stdout(console.try_clone()?)
            .stderr(console);
        eprintln!("xtask vmtest: booting {} (console: {})", kernel.display(), out.join("console.log").display());
        match run_for_status(cmd, limit)? {
            Some(0) => Ok(()),
            Some(255) => bail!("the guest died before its script ended (vng exit 255: a kernel panic or a QEMU crash; see console.log)"),
            Some(code) => bail!("vng exited with status {code} (see console.log)"),
            None => bail!("the VM did not finish within {} min and was killed", limit.as_secs() / 60),
        }
    }
}

/// Runs `cmd` in its own process group for at most `limit`: `Some(success)`, or `None` when
/// it was killed (with everything it started) at the limit.
pub(super) fn run_for(cmd: Command, limit: Duration) -> anyhow::Result<Option<bool>> {
    Ok(run_for_status(cmd, limit)?.map(|code| code == 0))
}

/// As [`run_for`], with the exit status (-1 for a signal).
pub(super) fn run_for_status(mut cmd: Command, limit: Duration) -> anyhow::Result<Option<i32>> {
    let mut child = cmd.process_group(0).spawn().context("starting it")?;
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status.code().unwrap_or(-1)));
        }
        if Instant::now() > deadline {
            // SAFETY: signals the process group this function created.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// virtme-ng's `vng`: on PATH or where this python's pip put it; otherwise installed from PyPI
/// into a virtualenv of its own (Debian's python refuses a system-wide pip install, PEP 668).
pub(super) fn ensure_vng() -> anyhow::Result<PathBuf> {
    if let Some(vng) = crate::packages::find("vng") {
        return Ok(vng);
    }
    let scripts = Command::new("python3").args(["-c", "import sysconfig; print(sysconfig.get_path('scripts'))"]).output().context("running python3")?;
    let vng = PathBuf::from(String::from_utf8_lossy(&scripts.stdout).trim()).join("vng");
    if vng.is_file() {
        return Ok(vng);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    let venv = home.join(".cache/detector/virtme-ng");
    let vng = venv.join("bin/vng");
    if vng.is_file() {
        return Ok(vng);
    }
    eprintln!("xtask: installing virtme-ng (pip, in a virtualenv at {})", venv.display());
    let make_venv = || Command::new("python3").arg("-m").arg("venv").arg(&venv).status().is_ok_and(|s| s.success());
    if !make_venv() {
        crate::packages::install("python3-venv")?;
        if !make_venv() {
            bail!("`python3 -m venv {}` failed; install python3-venv and re-run", venv.display());
        }
    }
    let ok = Command::new(venv.join("bin/pip")).args(["install", "-q", "virtme-ng"]).status().context("running pip")?.success();
    if !ok || !vng.is_file() {
        bail!("installing virtme-ng failed; install it by hand ({}/bin/pip install virtme-ng) and re-run", venv.display());
    }
    Ok(vng)
}
