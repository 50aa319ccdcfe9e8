//! Compiles `detector-ebpf` for the BPF target with the nightly toolchain and bpf-linker
//! (`cargo xtask setup` installs both) and leaves the object in OUT_DIR for
//! `include_bytes_aligned!`. The rest of the agent builds on stable.
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    // aya-build turns every line the inner cargo prints into a build warning; its progress
    // lines ("Compiling", "Finished") are not warnings. Compiler messages still come through.
    // SAFETY: the build script is single-threaded here; nothing reads the environment
    // concurrently.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../detector-ebpf");
    // The bench's empty control programs go into the object only with the agent's feature.
    let features: &[&str] = if std::env::var_os("CARGO_FEATURE_BENCH_CONTROL").is_some() { &["bench-control"] } else { &[] };
    aya_build::build_ebpf([Package { name: "detector-ebpf", root_dir: root, features, ..Default::default() }], Toolchain::default())
}
