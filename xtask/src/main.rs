//! Build, run and test helper: `cargo xtask setup|build|run|test`.
//!
//! `run` and `test` install what they need first (nightly's rust-src and a bpf-linker built
//! against nightly's own LLVM), so each is one command on a fresh machine.
mod bench;
mod image;
mod packages;
mod setup;
mod test;
mod vmtest;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install nightly rust-src and bpf-linker when missing (a no-op when present).
    Setup,
    /// Build the agent (release).
    Build,
    /// Build and run the agent in the foreground, as root, on built-in defaults.
    /// Extra arguments go to `detector run`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the benchmarks (churn, send path, scale, latency) and write BENCHMARKS.md. Needs root.
    Bench {
        /// A shorter run (two rounds, 10k connections only), for trying it out.
        #[arg(long)]
        quick: bool,
        /// Run one section only (churn, send, scale or latency) and print it; BENCHMARKS.md is
        /// left alone.
        #[arg(long)]
        only: Option<String>,
    },
    /// Run the whole test suite: unit tests and the privileged integration tests.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the privileged integration tests on Debian's 6.1 and 6.12 kernels (booted under qemu
    /// with virtme-ng) and on this one, with every send hook each kernel offers. Installs qemu,
    /// the kernels and virtme-ng when missing. Needs root.
    Vmtest {
        #[arg(long, value_enum, default_value = "all")]
        kernel: vmtest::Kernel,
        /// Only the subset `cargo xtask test` runs.
        #[arg(long)]
        subset: bool,
    },
    /// The half of `vmtest` that runs inside a VM: the plan in DIR, results into DIR.
    #[command(hide = true)]
    VmGuest { dir: PathBuf },
    /// Build the agent's OCI image (static binary, `FROM scratch`) without a registry pull.
    Image {
        /// The image's name and tag.
        #[arg(long, default_value = concat!("localhost/detector:", env!("CARGO_PKG_VERSION")))]
        tag: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.cmd {
        Cmd::Setup => setup::ensure(),
        Cmd::Image { tag } => image::build(&root, &tag),
        Cmd::Build => {
            setup::ensure()?;
            cargo(&root, &["build", "--release", "--package", "detector"])
        }
        Cmd::Run { args } => {
            setup::ensure()?;
            cargo(&root, &["build", "--release", "--package", "detector"])?;
            let bin = root.join("target/release/detector");
            let mut cmd = if nix_is_root() {
                Command::new(&bin)
            } else {
                eprintln!("the agent needs root; re-running under sudo");
                let mut c = Command::new("sudo");
                c.arg(&bin);
                c
            };
            cmd.arg("run").args(&args);
            let status = cmd.status().with_context(|| format!("starting {}", bin.display()))?;
            if !status.success() {
                bail!("detector run exited with {status}");
            }
            Ok(())
        }
        Cmd::Bench { quick, only } => {
            setup::ensure()?;
            cargo(&root, &["build", "--release", "--package", "detector", "--package", "detector-tests", "--bins", "--features", "detector/bench-control"])?;
            bench::run(&root, quick, only.as_deref())
        }
        Cmd::Vmtest { kernel, subset } => {
            setup::ensure()?;
            vmtest::run(&root, &kernel.each(), if subset { vmtest::Selection::Subset } else { vmtest::Selection::Full })
        }
        Cmd::VmGuest { dir } => vmtest::guest(&dir),
        Cmd::Test { args } => {
            setup::ensure()?;
            test::run(&root, &args)
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// The agent's feature the suite needs: fault injection (`DETECTOR_FAULT`). Production builds
/// have none; `cargo test` builds the agent with it too (see `test::cargo_test`), so the
/// binary the tests run keeps it.
pub(crate) const TEST_FEATURES: &str = "detector/fault-injection";

pub(crate) fn cargo(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(env!("CARGO")).current_dir(root).args(args).status().with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0")))
        .unwrap_or(false)
}
