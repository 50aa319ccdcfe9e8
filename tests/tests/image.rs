//! The shipped image, built as `cargo xtask image` builds it (deploy/Containerfile, `FROM
//! scratch`, podman, no registry pull) from the static binary: its root holds the binary and
//! nothing else, and that binary runs alone there — `--version`, and `detector check` against
//! this kernel with only /proc and /sys mounted, as the DaemonSet gives it.
use std::process::{Command, Stdio};

use detector_tests::{Scratch, require_root};

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");

/// Everything the test made, undone even when it fails: mounts, the container, the image.
struct Built {
    tag: String,
    container: Option<String>,
    root: Scratch,
    mounted: Vec<std::path::PathBuf>,
}

impl Drop for Built {
    fn drop(&mut self) {
        for m in self.mounted.iter().rev() {
            let _ = Command::new("umount").args(["-R", "-l"]).arg(m).status();
        }
        if let Some(c) = &self.container {
            let _ = Command::new("podman").args(["rm", "-f", c]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
        let _ = Command::new("podman").args(["rmi", "-f", &self.tag]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

fn files_under(dir: &std::path::Path, base: &std::path::Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, base, out);
        } else {
            out.push(p.strip_prefix(base).unwrap().display().to_string());
        }
    }
}

#[test]
fn the_scratch_image_holds_a_static_agent_that_runs_alone() {
    require_root!();
    let found = Command::new("podman").arg("--version").output().is_ok();
    assert!(found, "podman not found: `cargo xtask test` installs Debian's podman package");
    let bin = std::env::var("DETECTOR_MUSL_BIN").expect("DETECTOR_MUSL_BIN: the static build (`cargo xtask test` builds it)");
    let ctx = Scratch::new("image-ctx");
    std::fs::copy(&bin, ctx.0.join("detector")).unwrap_or_else(|e| panic!("{bin}: {e}"));
    let mut b =
        Built { tag: format!("localhost/detector-image-test:{}", std::process::id()), container: None, root: Scratch::new("image-root"), mounted: Vec::new() };
    ok(Command::new("podman").args(["build", "-q", "-f", &format!("{DEPLOY}/Containerfile"), "-t", &b.tag]).arg(&ctx.0));
    let cid = ok(Command::new("podman").args(["create", &b.tag])).trim().to_string();
    b.container = Some(cid.clone());
    // The image's root, as a container runtime would unpack it.
    let mut export = Command::new("podman").args(["export", &cid]).stdout(Stdio::piped()).spawn().unwrap();
    ok(Command::new("tar").args(["-x", "-C"]).arg(&b.root.0).stdin(export.stdout.take().unwrap()));
    assert!(export.wait().unwrap().success(), "podman export failed");
    let mut files = Vec::new();
    files_under(&b.root.0, &b.root.0, &mut files);
    assert_eq!(files, ["usr/local/bin/detector"], "a scratch image holds the agent and nothing else");

    let root = b.root.0.clone();
    let version = ok(Command::new("chroot").arg(&root).args(["/usr/local/bin/detector", "--version"]));
    assert!(version.starts_with(&format!("detector {}", env!("CARGO_PKG_VERSION"))), "{version}");
    for (dir, how) in [("proc", vec!["-t", "proc", "proc"]), ("sys", vec!["--rbind", "/sys"])] {
        let m = root.join(dir);
        std::fs::create_dir_all(&m).unwrap();
        ok(Command::new("mount").args(how).arg(&m));
        b.mounted.push(m);
    }
    let check = ok(Command::new("chroot").arg(&root).args(["/usr/local/bin/detector", "check"]));
    assert!(check.contains("the agent can run here"), "{check}");
}
