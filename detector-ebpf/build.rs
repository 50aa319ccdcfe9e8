use which::which;

/// Rebuild when bpf-linker changes, so a linker built against a new LLVM relinks the programs.
fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(e) => println!("cargo:warning=bpf-linker not found ({e}); run `cargo xtask setup` to install it"),
    }
}
