//! Which tests run on a kernel, and how many times: the selection, the cases, the plan file
//! the guest reads.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::Context as _;
use serde_json::{Value, json};

use super::*;

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
pub(super) struct Case {
    pub(super) binary: &'static str,
    pub(super) tests: &'static [&'static str],
    /// Run once per configuration the kernel runs (`true`) or once with the one the agent
    /// picks, with no flags.
    pub(super) per_config: bool,
}

/// The walking skeleton's tests that run with any configuration (the fallback-hook one forces
/// the classic tracepoint, which 6.1 lacks: the per-configuration runs cover it where it
/// exists).
pub(super) const WALKING: &[&str] = &[
    "non_reading_client_is_reported_with_owner_and_forgotten_on_close",
    "reading_client_is_tracked_but_never_reported",
    "socket_wedged_before_the_agent_started_is_found",
];

/// `detector/tests/kernel_iterators.rs`.
pub(super) const ITERATORS: &[&str] = &[
    "the_walk_reports_what_sock_diag_reports_and_only_sockets_with_bytes_waiting",
    "the_tcp_pass_finds_what_a_dump_finds_in_every_namespace",
    "the_adopting_tcp_pass_hands_stuck_sockets_to_the_walk_in_every_namespace",
    "the_pass_over_files_finds_in_one_pass_what_the_tcp_passes_find_in_each_namespace",
    "the_adopting_pass_over_files_hands_stuck_sockets_of_every_namespace_to_the_walk",
    "the_agent_runs_the_best_configuration_this_kernel_accepts",
];

/// `tests/tests/send_paths.rs`, run with every configuration a kernel runs.
pub(super) const SEND_PATHS_PER_CONFIG: &[&str] = &[
    "nginx_sendfile_to_a_client_that_stopped_reading_is_found_from_the_send_side",
    "kernel_tls_records_to_a_reader_that_stopped_are_found_from_the_send_side",
    "mptcp_to_a_reader_that_stopped_is_found_from_the_send_side",
];

/// ...and with the configuration the agent picks.
pub(super) const SEND_PATHS: &[&str] = &[
    "sendfile_to_a_reader_that_stopped_is_found_from_the_send_side",
    "splice_to_a_reader_that_stopped_is_found_from_the_send_side",
    "zerocopy_sends_to_a_reader_that_stopped_are_found_from_the_send_side",
    "io_uring_sends_to_a_reader_that_stopped_are_found_from_the_send_side",
    "an_mptcp_fallback_connection_to_a_reader_that_stopped_is_found",
    "destroy_ends_an_mptcp_connection_through_its_owners_socket",
];

pub(super) fn plan(sel: Selection) -> Vec<Case> {
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
pub(super) const SLACK_TCG: u32 = 4;
pub(super) const SLACK_KVM: u32 = 2;

/// The longest one kernel's run may take before its VM is killed, per selection.
pub(super) fn vm_timeout(sel: Selection) -> Duration {
    match sel {
        Selection::Skeleton => Duration::from_secs(15 * 60),
        Selection::Subset => Duration::from_secs(30 * 60),
        Selection::Full => Duration::from_secs(120 * 60),
    }
}

/// The longest one test may take in a guest before it is killed and counted failed.
pub(super) const TEST_LIMIT: Duration = Duration::from_secs(5 * 60);

/// The configurations this machine's kernel runs (`kind/send-hook`).
pub(super) fn host_configurations(root: &Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new(root.join("target/release/detector")).args(["check", "--output", "json"]).output().context("running detector check")?;
    let checks: Value = serde_json::from_slice(&out.stdout).context("detector check printed no JSON")?;
    Ok(configurations(&checks).0)
}

pub(super) fn write_plan(out: &Path, root: &Path, binaries: &BTreeMap<String, PathBuf>, sel: Selection, slack: u32, skip: &[String]) -> anyhow::Result<()> {
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
