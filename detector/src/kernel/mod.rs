//! The kernel layer: finding offsets, loading and attaching the programs, reading their events
//! and counters. Thin on purpose; all judgement lives in `verdict`.
pub mod btf;
pub mod caps;
pub mod configuration;
pub mod events;
pub mod hooks;
pub mod iter;
pub mod loader;
pub mod prog_info;
pub mod tracefs;

/// The eBPF object built by `build.rs` (aya-build) from `detector-ebpf`.
pub fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/detector"))
}

/// `uname -r` of the running kernel.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_else(|_| "unknown".into())
}
