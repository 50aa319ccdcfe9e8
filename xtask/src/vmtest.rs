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
use std::{
    collections::BTreeMap,
    io::Write as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

/// A kernel the matrix runs on: a Debian kernel series, in the shape a fleet runs it (plain,
/// locked down as Secure Boot does, PREEMPT_RT), or this machine's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kernel {
    /// Debian 12's 6.1 LTS (`linux-image-6.1.0-N-amd64-unsigned`).
    #[value(name = "6.1")]
    V6_1,
    /// The same, booted with `lockdown=integrity`.
    #[value(name = "6.1-lockdown-integrity")]
    V6_1Integrity,
    /// Debian 12's backported 6.12 LTS (`linux-image-6.12.N+deb12-amd64-unsigned`).
    #[value(name = "6.12")]
    V6_12,
    /// Its PREEMPT_RT flavour (`linux-image-6.12.N+deb12-rt-amd64-unsigned`).
    #[value(name = "6.12-rt")]
    V6_12Rt,
    /// 6.12 booted with `lockdown=confidentiality` (Secure Boot's strict mode: no tracefs, no
    /// kprobes, no `bpf_probe_read_kernel`).
    #[value(name = "6.12-lockdown-confidentiality")]
    V6_12Confidentiality,
    /// The kernel this machine runs, without a VM.
    Host,
    /// All of the above.
    All,
}

impl Kernel {
    /// The kernels VMs boot (what `cargo xtask test` adds to the host's run).
    pub const VMS: [Kernel; 5] = [Kernel::V6_1, Kernel::V6_12, Kernel::V6_1Integrity, Kernel::V6_12Rt, Kernel::V6_12Confidentiality];

    pub fn each(self) -> Vec<Kernel> {
        match self {
            Kernel::All => Self::VMS.into_iter().chain([Kernel::Host]).collect(),
            k => vec![k],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kernel::V6_1 => "6.1",
            Kernel::V6_1Integrity => "6.1-lockdown-integrity",
            Kernel::V6_12 => "6.12",
            Kernel::V6_12Rt => "6.12-rt",
            Kernel::V6_12Confidentiality => "6.12-lockdown-confidentiality",
            Kernel::Host => "host",
            Kernel::All => "all",
        }
    }

    /// Debian's package names for this series (newest wins) and the `/boot/vmlinuz-*` names
    /// they install: `(prefix, suffix)` around the version.
    fn debian(self) -> Option<(&'static str, &'static str)> {
        match self {
            Kernel::V6_1 | Kernel::V6_1Integrity => Some(("6.1.0-", "-amd64")),
            Kernel::V6_12 | Kernel::V6_12Confidentiality => Some(("6.12.", "+deb12-amd64")),
            Kernel::V6_12Rt => Some(("6.12.", "+deb12-rt-amd64")),
            _ => None,
        }
    }

    /// Kernel parameters the shape boots with.
    fn append(self) -> Option<&'static str> {
        match self {
            Kernel::V6_1Integrity => Some("lockdown=integrity"),
            Kernel::V6_12Confidentiality => Some("lockdown=confidentiality"),
            _ => None,
        }
    }

    /// What `cargo xtask test` runs on it: the plain LTS kernels the subset, each other shape
    /// the walking skeleton with no agent flags.
    fn subset(self) -> Selection {
        match self {
            Kernel::V6_1 | Kernel::V6_12 | Kernel::Host => Selection::Subset,
            _ => Selection::Skeleton,
        }
    }
}

/// Which tests run, and how many times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// The walking skeleton with the configuration the agent picks, no flags: a kernel shape
    /// proven to run.
    Skeleton,
    /// What `cargo xtask test` runs on the plain LTS kernels: the walking skeleton, an
    /// unreachable peer and the closed-socket leak check with the configuration the kernel
    /// picks and each other it runs that the host's kernel cannot prove, the kernel iterators,
    /// one reap.
    Subset,
    /// The whole matrix of the kernel-matrix issue.
    Full,
}

/// One test binary and the test names in it to run (exact names).
struct Case {
    binary: &'static str,
    tests: &'static [&'static str],
    /// Run once per configuration the kernel runs (`true`) or once with the one the agent
    /// picks, with no flags.
    per_config: bool,
}

/// The walking skeleton's tests that run with any configuration (the fallback-hook one forces
/// the classic tracepoint, which 6.1 lacks: the per-configuration runs cover it where it
/// exists).
const WALKING: &[&str] = &[
    "non_reading_client_is_reported_with_owner_and_forgotten_on_close",
    "reading_client_is_tracked_but_never_reported",
    "socket_wedged_before_the_agent_started_is_found",
];

/// `detector/tests/kernel_iterators.rs`.
const ITERATORS: &[&str] = &[
    "the_walk_reports_what_sock_diag_reports_and_only_sockets_with_bytes_waiting",
    "the_tcp_pass_finds_what_a_dump_finds_in_every_namespace",
    "the_adopting_tcp_pass_hands_stuck_sockets_to_the_walk_in_every_namespace",
    "the_pass_over_files_finds_in_one_pass_what_the_tcp_passes_find_in_each_namespace",
    "the_adopting_pass_over_files_hands_stuck_sockets_of_every_namespace_to_the_walk",
    "the_agent_runs_the_best_configuration_this_kernel_accepts",
];

/// `tests/tests/send_paths.rs`, run with every configuration a kernel runs.
const SEND_PATHS_PER_CONFIG: &[&str] = &[
    "nginx_sendfile_to_a_client_that_stopped_reading_is_found_from_the_send_side",
    "kernel_tls_records_to_a_reader_that_stopped_are_found_from_the_send_side",
    "mptcp_to_a_reader_that_stopped_is_found_from_the_send_side",
];

/// ...and with the configuration the agent picks.
const SEND_PATHS: &[&str] = &[
    "sendfile_to_a_reader_that_stopped_is_found_from_the_send_side",
    "splice_to_a_reader_that_stopped_is_found_from_the_send_side",
    "zerocopy_sends_to_a_reader_that_stopped_are_found_from_the_send_side",
    "io_uring_sends_to_a_reader_that_stopped_are_found_from_the_send_side",
    "an_mptcp_fallback_connection_to_a_reader_that_stopped_is_found",
    "destroy_ends_an_mptcp_connection_through_its_owners_socket",
];

fn plan(sel: Selection) -> Vec<Case> {
    if sel == Selection::Skeleton {
        return vec![Case { binary: "walking_skeleton", tests: WALKING, per_config: false }];
    }
    let mut cases = vec![
        Case { binary: "walking_skeleton", tests: WALKING, per_config: true },
        Case { binary: "kernel_matrix", tests: &["closed_sockets_that_are_sent_on_leave_nothing_tracked"], per_config: true },
        // The iterators against sock_diag (each loads the programs itself, with the hooks it needs).
        Case { binary: "kernel_iterators", tests: ITERATORS, per_config: false },
    ];
    match sel {
        Selection::Skeleton => {}
        Selection::Subset => {
            cases.push(Case { binary: "scenarios", tests: &["s01_peer_unreachable_mid_stream"], per_config: true });
            cases.push(Case { binary: "reaping", tests: &["destroy_frees_the_seat_of_a_dead_client"], per_config: false });
            // The send paths whose hook differs by kernel and configuration (pages before 6.5,
            // kTLS's records, MPTCP), with each; the others with the one the agent picks.
            cases.push(Case { binary: "send_paths", tests: SEND_PATHS_PER_CONFIG, per_config: true });
            cases.push(Case { binary: "send_paths", tests: SEND_PATHS, per_config: false });
            // Walk-only faults the host may not run (its kernel refuses the walk).
            cases.push(Case {
                binary: "reaping_safety",
                tests: &["a_walk_that_skips_a_socket_neither_forgets_it_nor_restarts_its_ladder", "a_socket_in_tcp_repair_is_never_acted_on"],
                per_config: false,
            });
        }
        Selection::Full => {
            cases.push(Case { binary: "send_paths", tests: SEND_PATHS_PER_CONFIG, per_config: true });
            cases.push(Case { binary: "send_paths", tests: SEND_PATHS, per_config: true });
            cases.push(Case {
                binary: "scenarios",
                tests: &[
                    "s01_peer_unreachable_mid_stream",
                    "s01b_peer_whose_link_is_deleted_is_unreachable",
                    "s02_frozen_peer_is_not_reading",
                    "s03_peer_never_reads",
                    "s04_peer_closed_while_owner_holds_it",
                    "s05_clean_close_is_never_reported_and_forgotten",
                    "s10_idle_connection_never",
                ],
                per_config: true,
            });
            cases.push(Case {
                binary: "verdict_truth",
                tests: &[
                    "a_non_reading_stall_older_than_the_agent_is_listed_at_once_with_its_age",
                    "a_stall_older_than_the_agent_is_sampled_by_the_kernel_walk_with_socket_storage",
                    "a_restarted_agent_lists_an_existing_stall_at_once_and_keeps_its_age",
                    "a_close_wait_socket_that_never_sent_is_a_leak_suspect",
                    "a_first_send_that_blocks_forever_is_found",
                ],
                per_config: true,
            });
            cases.push(Case {
                binary: "attribution",
                tests: &[
                    "pod_container_cgroup_and_netns_of_a_stalled_socket",
                    "a_socket_handed_to_a_child_is_attributed_to_the_child",
                    "a_socket_no_process_holds_is_owner_unknown_never_a_wrong_pid",
                    "a_reused_sender_pid_is_never_reported_as_owner",
                ],
                per_config: true,
            });
            cases.push(Case {
                binary: "reaping",
                tests: &[
                    "destroy_frees_the_seat_of_a_dead_client",
                    "destroy_frees_a_seat_held_by_an_unreachable_peer_in_another_namespace",
                    "shutdown_through_the_owners_fd_frees_the_seat",
                ],
                per_config: true,
            });
        }
    }
    cases
}

/// How many times slower than this machine the tests may be in a guest (`DETECTOR_TEST_SLACK`):
/// software emulation runs the guest several times slower.
const SLACK_TCG: u32 = 4;
const SLACK_KVM: u32 = 2;

/// The longest one kernel's run may take before its VM is killed, per selection.
fn vm_timeout(sel: Selection) -> Duration {
    match sel {
        Selection::Skeleton => Duration::from_secs(15 * 60),
        Selection::Subset => Duration::from_secs(30 * 60),
        Selection::Full => Duration::from_secs(120 * 60),
    }
}

/// The longest one test may take in a guest before it is killed and counted failed.
const TEST_LIMIT: Duration = Duration::from_secs(5 * 60);

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

/// The configurations this machine's kernel runs (`kind/send-hook`).
fn host_configurations(root: &Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new(root.join("target/release/detector")).args(["check", "--output", "json"]).output().context("running detector check")?;
    let checks: Value = serde_json::from_slice(&out.stdout).context("detector check printed no JSON")?;
    Ok(configurations(&checks).0)
}

fn write_plan(out: &Path, root: &Path, binaries: &BTreeMap<String, PathBuf>, sel: Selection, slack: u32, skip: &[String]) -> anyhow::Result<()> {
    let mut cases = vec![];
    for c in plan(sel) {
        let bin = binaries.get(c.binary).with_context(|| format!("no integration test binary named {}", c.binary))?;
        cases.push(json!({"binary": c.binary, "path": bin, "tests": c.tests, "per_config": c.per_config}));
    }
    let plan = json!({
        "detector": root.join("target/release/detector"),
        "slack": slack,
        "skip_configurations": skip,
        "cases": cases,
    });
    std::fs::write(out.join("plan.json"), serde_json::to_vec_pretty(&plan)?).context("writing the VM plan")
}

/// qemu through virtme-ng, with KVM when a guest boots with it, software emulation otherwise.
struct Vm {
    vng: PathBuf,
    kvm: bool,
}

impl Vm {
    /// `vng` with its own directory first on PATH: it runs its helpers (`virtme-run`) by name,
    /// and in a virtualenv they are only there.
    fn vng(&self) -> Command {
        let mut cmd = Command::new(&self.vng);
        let dir = self.vng.parent().unwrap_or(Path::new("/"));
        let path = std::env::var_os("PATH").unwrap_or_default();
        let joined = std::env::join_paths(std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&path))).unwrap_or(path);
        cmd.env("PATH", joined);
        cmd
    }

    fn ensure(image: &Path) -> anyhow::Result<Vm> {
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
    fn kvm_boots(&self, kernel: &Path) -> anyhow::Result<bool> {
        if !Path::new("/dev/kvm").exists() {
            return Ok(false);
        }
        let mut cmd = self.vng();
        cmd.args(["--memory", "512M", "-r"]).arg(kernel).args(["--", "true"]).stdout(Stdio::null()).stderr(Stdio::null());
        Ok(matches!(run_for(cmd, Duration::from_secs(30))?, Some(true)))
    }

    /// Boots `kernel` (with the kernel parameters `append`) and runs the guest half in it,
    /// the results going to `out`.
    fn boot(&self, root: &Path, kernel: &Path, append: Option<&str>, out: &Path, limit: Duration) -> anyhow::Result<()> {
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
fn run_for(cmd: Command, limit: Duration) -> anyhow::Result<Option<bool>> {
    Ok(run_for_status(cmd, limit)?.map(|code| code == 0))
}

/// As [`run_for`], with the exit status (-1 for a signal).
fn run_for_status(mut cmd: Command, limit: Duration) -> anyhow::Result<Option<i32>> {
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
fn ensure_vng() -> anyhow::Result<PathBuf> {
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

/// The newest installed `/boot/vmlinuz-<prefix>N<suffix>`.
fn installed_kernel((prefix, suffix): (&str, &str)) -> Option<PathBuf> {
    let mut found: Vec<(Vec<u64>, PathBuf)> = std::fs::read_dir("/boot")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let v = name.strip_prefix("vmlinuz-")?.strip_prefix(prefix)?.strip_suffix(suffix)?.to_string();
            v.bytes().all(|b| b.is_ascii_digit()).then(|| (version_key(&format!("{prefix}{v}")), e.path()))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

/// `6.12.117` → `[6, 12, 117]`, for ordering versions.
fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect()
}

/// `apt-cache search --names-only` pattern of Debian's generic unsigned images of a series.
fn package_pattern((prefix, suffix): (&str, &str)) -> String {
    let esc = |s: &str| s.replace('.', "\\.").replace('+', "\\+");
    format!("^linux-image-{}[0-9]+{}-unsigned$", esc(prefix), esc(suffix))
}

/// The installed kernel of a series, installing Debian's newest when there is none.
fn ensure_kernel(series: (&str, &str)) -> anyhow::Result<PathBuf> {
    if let Some(k) = installed_kernel(series) {
        return Ok(k);
    }
    let (prefix, suffix) = series;
    // A fresh machine's package lists may be stale or empty.
    let _ = Command::new("apt-get").args(["update", "-qq"]).status();
    let pattern = package_pattern(series);
    let out = Command::new("apt-cache").args(["search", "--names-only", &pattern]).output().context("running apt-cache")?;
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect();
    names.sort_by_key(|n| version_key(n.trim_start_matches("linux-image-")));
    let Some(pkg) = names.pop() else { bail!("no Debian package matches {pattern}: is the bookworm archive in the apt sources?") };
    eprintln!("xtask: installing {pkg} (a kernel for the VM matrix)");
    crate::packages::install(&pkg)?;
    installed_kernel(series).with_context(|| format!("{pkg} is installed but no /boot/vmlinuz-{prefix}N{suffix} appeared"))
}

// ---------------------------------------------------------------------------------------------
// The guest half: runs inside the VM (or on the host for `--kernel host`).

/// Runs the plan in `dir`: `detector check`, then each case with each configuration it needs.
/// Results are appended to `dir/results.jsonl` as they come.
pub fn guest(dir: &Path) -> anyhow::Result<()> {
    let plan: Value = serde_json::from_slice(&std::fs::read(dir.join("plan.json")).context("reading plan.json")?).context("parsing plan.json")?;
    let detector = PathBuf::from(plan["detector"].as_str().context("plan: detector")?);
    let slack = plan["slack"].as_u64().unwrap_or(1);
    std::fs::write(dir.join("lockdown.txt"), lockdown())?;
    let check = Command::new(&detector).args(["check", "--output", "json"]).output().context("running detector check")?;
    std::fs::write(dir.join("check.json"), &check.stdout)?;
    let checks: Value = serde_json::from_slice(&check.stdout).context("detector check printed no JSON")?;
    let (mut all, picked) = configurations(&checks);
    let skip: Vec<&str> = plan["skip_configurations"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    all.retain(|c| !skip.contains(&c.as_str()) || picked.as_deref() == Some(c));
    let mut results = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("results.jsonl"))?;
    for case in plan["cases"].as_array().context("plan: cases")? {
        // With no flags, the configuration the agent picks; per configuration, each forced.
        let run_with: Vec<Option<&str>> =
            if case["per_config"].as_bool().unwrap_or(false) { all.iter().map(|c| Some(c.as_str())).collect() } else { vec![None] };
        for forced in run_with {
            let label = forced.or(picked.as_deref()).unwrap_or("none");
            for (test, outcome, secs) in run_case(dir, &detector, case, forced, slack)? {
                let line = json!({"binary": case["binary"], "test": test, "configuration": label, "outcome": outcome, "secs": secs});
                writeln!(results, "{line}")?;
                eprintln!("vm-guest: {label} {}::{test} {outcome}", case["binary"].as_str().unwrap_or("?"));
            }
        }
    }
    Ok(())
}

/// The kernel's lockdown mode (`none`, `integrity`, `confidentiality`), as securityfs says.
fn lockdown() -> String {
    let path = Path::new("/sys/kernel/security/lockdown");
    if !path.exists() {
        let _ = Command::new("mount").args(["-t", "securityfs", "securityfs", "/sys/kernel/security"]).status();
    }
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.split_whitespace().find_map(|w| w.strip_prefix('[')?.strip_suffix(']').map(str::to_string)).unwrap_or_else(|| "unknown".into())
}

/// Every configuration `detector check` loaded on this kernel (`kind/send-hook`), and the one
/// the agent picks.
fn configurations(checks: &Value) -> (Vec<String>, Option<String>) {
    let mut all = vec![];
    let mut picked = None;
    for c in checks.as_array().into_iter().flatten() {
        let (Some(kind), Some(hook)) = (c["configuration"].as_str(), c["send_hook"].as_str()) else { continue };
        if c["ok"] == true {
            let name = format!("{kind}/{hook}");
            if c["chosen"] == true {
                picked = Some(name.clone());
            }
            all.push(name);
        }
    }
    (all, picked)
}

/// Runs one case's tests, with the configuration `forced` (`kind/send-hook`) or with none; each
/// test's name, `ok`/`FAILED`, and the seconds the whole binary took. A test that never printed
/// a result (the binary crashed) is `FAILED`.
fn run_case(dir: &Path, detector: &Path, case: &Value, forced: Option<&str>, slack: u64) -> anyhow::Result<Vec<(String, String, f64)>> {
    let binary = case["binary"].as_str().context("plan: binary")?;
    let tests: Vec<&str> = case["tests"].as_array().context("plan: tests")?.iter().filter_map(Value::as_str).collect();
    let log = dir.join(format!("{binary}-{}.log", forced.unwrap_or("picked").replace('/', "-")));
    let logf = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let t = Instant::now();
    let mut cmd = Command::new(case["path"].as_str().context("plan: path")?);
    cmd.args(["--exact", "--test-threads=1"])
        .args(&tests)
        .env("DETECTOR_BIN", detector)
        .env("DETECTOR_REQUIRE_PRIVILEGED", "1")
        .env("DETECTOR_TEST_SLACK", slack.to_string())
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf);
    if let Some((kind, hook)) = forced.and_then(|f| f.split_once('/')) {
        cmd.env("DETECTOR_TEST_CONFIGURATION", kind).env("DETECTOR_TEST_SEND_HOOK", hook);
    }
    // A test that hangs fails alone (killed with what it started), not the whole VM run.
    let limit = TEST_LIMIT * tests.len() as u32;
    if run_for(cmd, limit).with_context(|| format!("running {binary}"))?.is_none() {
        let mut f = std::fs::OpenOptions::new().append(true).open(&log)?;
        writeln!(f, "vm-guest: killed after {} s", limit.as_secs())?;
    }
    let secs = t.elapsed().as_secs_f64();
    let text = std::fs::read(&log)?;
    let text = String::from_utf8_lossy(&text);
    Ok(tests
        .iter()
        .map(|name| {
            let ok = text.lines().any(|l| l.trim_end() == format!("test {name} ... ok"));
            (name.to_string(), if ok { "ok" } else { "FAILED" }.to_string(), secs)
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Results.

struct Summary {
    kernel: Kernel,
    release: String,
    lockdown: String,
    picked: Option<String>,
    /// Per configuration (`kind/send-hook`): (passed, failed).
    configurations: BTreeMap<String, (usize, usize)>,
    destroy: String,
    took: Duration,
    error: Option<String>,
}

impl Summary {
    fn read(kernel: Kernel, out: &Path, took: Duration) -> anyhow::Result<Summary> {
        let checks: Value = std::fs::read(out.join("check.json")).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(Value::Null);
        let detail =
            |name: &str| checks.as_array().into_iter().flatten().find(|c| c["name"] == name).and_then(|c| c["detail"].as_str()).unwrap_or("?").to_string();
        let mut proven = BTreeMap::new();
        let results = std::fs::read_to_string(out.join("results.jsonl")).unwrap_or_default();
        for v in results.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
            let e: &mut (usize, usize) = proven.entry(v["configuration"].as_str().unwrap_or("?").to_string()).or_default();
            if v["outcome"] == "ok" {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
        }
        let error = std::fs::read_to_string(out.join("error.txt")).ok().or_else(|| proven.is_empty().then(|| "no test ran (see console.log)".to_string()));
        let lockdown = std::fs::read_to_string(out.join("lockdown.txt")).unwrap_or_else(|_| "?".into());
        Ok(Summary {
            kernel,
            release: detail("kernel"),
            lockdown,
            picked: configurations(&checks).1,
            configurations: proven,
            destroy: detail("socket destroy"),
            took,
            error,
        })
    }

    fn passed(&self) -> bool {
        self.error.is_none() && self.configurations.values().all(|(_, f)| *f == 0)
    }

    fn line(&self) -> String {
        let proven: Vec<String> = self.configurations.iter().map(|(c, (p, f))| format!("{c} {p} passed {f} failed")).collect();
        format!(
            "xtask vmtest: {} ({}, lockdown {}) in {:.0} s: {}; the agent picks {}{}",
            self.kernel.name(),
            self.release,
            self.lockdown,
            self.took.as_secs_f64(),
            proven.join(", "),
            self.picked.as_deref().unwrap_or("nothing"),
            self.error.as_deref().map(|e| format!("; ERROR: {e}")).unwrap_or_default()
        )
    }
}

/// The README's "supported kernels" table.
fn table(summaries: &[Summary]) -> String {
    let mut t =
        String::from("| Kernel | Lockdown | The agent picks (no flags) | Configurations proven (tests passed) | Socket destroy |\n|---|---|---|---|---|\n");
    for s in summaries {
        let proven: Vec<String> =
            s.configurations.iter().map(|(c, (p, f))| if *f == 0 { format!("`{c}` ({p})") } else { format!("`{c}` ({p}, **{f} failed**)") }).collect();
        let proven = if s.error.is_some() && proven.is_empty() { "did not run".to_string() } else { proven.join(", ") };
        t += &format!("| {} | {} | `{}` | {} | {} |\n", s.release, s.lockdown, s.picked.as_deref().unwrap_or("none"), proven, s.destroy);
    }
    t
}

const TABLE_BEGIN: &str = "<!-- kernels: produced by `cargo xtask vmtest --kernel all` -->\n";
const TABLE_END: &str = "<!-- /kernels -->";

/// Puts `table` between the README's kernel-table markers.
fn update_readme(readme: &Path, table: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(readme).context("reading README.md")?;
    let (Some(b), Some(e)) = (text.find(TABLE_BEGIN), text.find(TABLE_END)) else {
        bail!("README.md has no kernel-table markers ({} … {TABLE_END})", TABLE_BEGIN.trim_end());
    };
    let new = format!("{}{table}{}", &text[..b + TABLE_BEGIN.len()], &text[e..]);
    std::fs::write(readme, new).context("writing README.md")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_numerically() {
        assert!(version_key("6.12.117+deb12-amd64") > version_key("6.12.99+deb12-amd64"));
        assert!(version_key("6.1.0-56-amd64") > version_key("6.1.0-9-amd64"));
    }

    #[test]
    fn package_patterns_name_the_generic_unsigned_images() {
        assert_eq!(package_pattern(Kernel::V6_1.debian().unwrap()), "^linux-image-6\\.1\\.0-[0-9]+-amd64-unsigned$");
        assert_eq!(package_pattern(Kernel::V6_12.debian().unwrap()), "^linux-image-6\\.12\\.[0-9]+\\+deb12-amd64-unsigned$");
    }

    #[test]
    fn the_picked_configuration_is_the_chosen_one() {
        let checks = json!([
            {"name": "hook fentry tcp_sendmsg_locked (send)", "ok": true, "detail": "attached", "send_hook": "fentry"},
            {"name": "configuration storage-walk", "ok": true, "chosen": true, "configuration": "storage-walk", "send_hook": "fentry"},
            {"name": "configuration hash-map", "ok": true, "configuration": "hash-map", "send_hook": "kprobe"},
            {"name": "configuration --configuration storage-diag", "ok": false, "detail": "refused"},
        ]);
        assert_eq!(configurations(&checks), (vec!["storage-walk/fentry".to_string(), "hash-map/kprobe".to_string()], Some("storage-walk/fentry".to_string())));
    }

    #[test]
    fn every_shape_boots_a_debian_series_with_its_parameters() {
        assert_eq!(Kernel::V6_12Rt.debian(), Some(("6.12.", "+deb12-rt-amd64")));
        assert_eq!(package_pattern(Kernel::V6_12Rt.debian().unwrap()), "^linux-image-6\\.12\\.[0-9]+\\+deb12-rt-amd64-unsigned$");
        assert_eq!(Kernel::V6_12Confidentiality.append(), Some("lockdown=confidentiality"));
        assert_eq!(Kernel::V6_1Integrity.append(), Some("lockdown=integrity"));
        assert!(Kernel::VMS.iter().all(|k| k.debian().is_some()));
        assert_eq!(Kernel::All.each().len(), Kernel::VMS.len() + 1);
    }
}
