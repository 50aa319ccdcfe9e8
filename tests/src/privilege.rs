//! Root, and what the kernel refused: a privileged test runs as root or says why not.
use serde_json::Value;

use crate::*;

/// Whether this process runs as root (effective uid 0): the one test of it.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Opens a test that needs root (eBPF, sock_diag, namespaces): returns from it, named on
/// stderr, when not root; under `cargo xtask test` (DETECTOR_REQUIRE_PRIVILEGED=1) fails it
/// instead, so CI never passes by skipping. The test is named by its own function.
#[macro_export]
macro_rules! require_root {
    () => {{
        fn here() {}
        let name = std::any::type_name_of_val(&here);
        if !$crate::privileged(name.strip_suffix("::here").unwrap_or(name)) {
            return;
        }
    }};
}

/// `true` when privileged tests can run (see [`require_root!`]).
pub fn privileged(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var_os("DETECTOR_REQUIRE_PRIVILEGED").is_some() {
        panic!("{test}: needs root (eBPF, sock_diag), and DETECTOR_REQUIRE_PRIVILEGED is set");
    }
    eprintln!("skipped {test}: needs root to load eBPF programs");
    false
}

/// Names a piece of the kernel side this kernel refused, which a test would otherwise have
/// proven: on stderr, and under `cargo xtask test` in the file `DETECTOR_REFUSALS` names, which
/// the run prints at its end. A refused piece is never skipped silently.
pub fn refused(what: &str) {
    use std::io::Write as _;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let line = format!("{}: {}\n", release.trim(), what.replace('\n', " "));
    eprint!("REFUSED on {line}");
    if let Some(path) = std::env::var_os("DETECTOR_REFUSALS") {
        // One write of one line with O_APPEND: lines of tests running side by side never mix.
        let f = std::fs::OpenOptions::new().create(true).append(true).open(&path);
        if let Err(e) = f.and_then(|mut f| f.write_all(line.as_bytes())) {
            panic!("recording a refusal in {}: {e}", std::path::Path::new(&path).display());
        }
    }
}

/// Whether `detector check` loaded configuration `kind` (`storage-walk`, ...) on this kernel.
pub fn kernel_runs(kind: &str) -> bool {
    let out = detector_cmd().args(["check", "--output", "json"]).output().expect("detector check");
    let checks: Value = serde_json::from_slice(&out.stdout).expect("check prints JSON");
    checks.as_array().expect("check prints an array").iter().any(|c| c["configuration"] == kind && c["ok"] == true)
}
