//! Processes and files a test makes, cleaned up on drop, and commands it runs.
use std::{
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

/// A process this test did not spawn itself (a peer's forked child), killed when dropped.
pub struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: a signal to a pid the test was handed; at worst it is gone already.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

pub(crate) static SEQ: AtomicU32 = AtomicU32::new(0);

/// A private scratch directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("detector-test-{tag}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("creating {}: {e}", p.display()));
        Self(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on the host (`stream-peer
/// ... watch` prints it, the latency bench compares with it).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Runs a command, panicking with its output when it fails.
pub fn sh(cmd: &str, args: &[&str]) {
    run(cmd, args).unwrap_or_else(|e| panic!("{e}"));
}

/// Runs a command; its stdout, or an error with its stderr.
pub fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd).args(args).output().map_err(|e| format!("running {cmd} {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One test at a time within a test binary (the tests of a file whose agents act on sockets, or
/// fill the host): hold the guard for the test's length. A test that panicked releases it.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
