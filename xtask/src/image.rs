//! `cargo xtask image`: the agent's OCI image with no registry pull. The static (musl)
//! release binary is built here, then deploy/Containerfile (`FROM scratch`) with podman, or
//! buildah when only it is installed (podman is installed from Debian when neither is).
use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::{cargo, packages, setup};

pub fn build(root: &Path, tag: &str) -> anyhow::Result<()> {
    setup::ensure()?;
    setup::ensure_musl_target()?;
    cargo(root, &["build", "--release", "--package", "detector", "--target", setup::MUSL])?;
    let bin = root.join("target").join(setup::MUSL).join("release/detector");
    let tool = if !packages::which("podman") && packages::which("buildah") { "buildah" } else { "podman" };
    packages::ensure(tool, tool)?;
    // The build context holds nothing but the binary.
    let ctx = root.join("target/image");
    let _ = std::fs::remove_dir_all(&ctx);
    std::fs::create_dir_all(&ctx).with_context(|| format!("creating {}", ctx.display()))?;
    std::fs::copy(&bin, ctx.join("detector")).with_context(|| format!("copying {}", bin.display()))?;
    let file = root.join("deploy/Containerfile");
    let mut cmd = Command::new(tool);
    if tool == "buildah" {
        cmd.arg("bud");
    } else {
        cmd.arg("build");
    }
    let status = cmd.arg("-f").arg(&file).arg("-t").arg(tag).arg(&ctx).status().with_context(|| format!("running {tool}"))?;
    if !status.success() {
        bail!("{tool} could not build {tag} from {}", file.display());
    }
    eprintln!("built {tag}; `{tool} push {tag} <registry>/detector:<version>` and set it in deploy/daemonset.yaml");
    Ok(())
}
