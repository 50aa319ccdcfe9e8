use std::time::Duration;

use super::*;

/// The report fixture, for socket `cookie` of process `pid`.
fn stalled(cookie: u64, pid: u32, stalled_for_ms: u64) -> StalledSocket {
    let mut s = StalledSocket::example();
    (s.socket_cookie, s.pid, s.sender_pid, s.sender_tid, s.stalled_for_ms) = (cookie, Some(pid), pid, pid, stalled_for_ms);
    s.start_time = Some(1000 + pid as u64);
    let hs = std::sync::Arc::get_mut(&mut s.holders).expect("one report line holds them");
    hs[0].pid = pid;
    hs[0].start_time = 1000 + pid as u64;
    s
}

/// The same socket with no process shown to hold it.
fn orphaned(mut s: StalledSocket) -> StalledSocket {
    (s.pid, s.fd, s.start_time, s.comm, s.owner_known) = (None, None, None, None, false);
    s.holders = Vec::new().into();
    s
}

const LADDER: &str = "actions = [{ action = \"rpc\", url = \"http://127.0.0.1:1/\" }, { action = \"destroy\", after = \"10s\" }]";

/// An engine with the `ws` selector: `selector` holds its `match` and other lines.
fn engine_with(extra: &str, selector: &str) -> Engine {
    let text = format!("{extra}\n[[selector]]\nname = \"ws\"\n{selector}\n{LADDER}\n");
    Engine::new(Policy::parse(&text, "t.toml", Duration::from_secs(30)).unwrap(), Duration::from_secs(30), 999, LadderState::default())
}

fn engine(extra: &str) -> Engine {
    engine_with(extra, "match = { comm = \"ws-*\", local_port = 8080, remote_cidr = \"192.168.0.0/16\" }")
}

fn act_name(d: Option<Decision>) -> String {
    match d {
        Some(Decision::Act { stage, .. }) => stage.action().as_str().into(),
        Some(Decision::Skip { why, .. }) => format!("skip:{}", why.as_str()),
        None => "none".into(),
    }
}

/// Decides for `s` at `now` and, when the engine acts, settles the stage as run.
fn step(e: &mut Engine, s: &StalledSocket, now: u64) -> String {
    let d = e.decide(s, now);
    if let Some(Decision::Act { stage_index, .. }) = &d {
        e.settle(s.socket_cookie, *stage_index, Outcome::Ran, now);
    }
    act_name(d)
}

const T: u64 = 1_000_000;
const MINUTE: u64 = 60_000;

#[test]
fn ladder_runs_each_stage_once_at_its_time() {
    let mut e = engine("");
    assert_eq!(step(&mut e, &stalled(1, 10, 29_000), T), "none");
    assert_eq!(step(&mut e, &stalled(1, 10, 30_000), T), "rpc");
    assert_eq!(step(&mut e, &stalled(1, 10, 31_000), T), "none", "once only");
    assert_eq!(step(&mut e, &stalled(1, 10, 39_999), T), "none");
    assert_eq!(step(&mut e, &stalled(1, 10, 40_000), T + MINUTE), "destroy");
    assert_eq!(step(&mut e, &stalled(1, 10, 90_000), T + MINUTE), "none", "ladder done");
}

#[test]
fn non_matching_sockets_are_left_alone_and_ipv4_ranges_match_mapped_peers() {
    let mut e = engine("");
    let mut s = stalled(1, 10, 60_000);
    s.remote = "10.1.1.1:5".parse().unwrap();
    assert_eq!(step(&mut e, &s, T), "none");
    let mut s = stalled(2, 10, 60_000);
    s.comm = Some("nginx".into());
    assert_eq!(step(&mut e, &s, T), "none");
    // A dual-stack socket's IPv4 peer, if it ever came in v6 form, still matches an IPv4 range.
    let mut s = stalled(3, 11, 60_000);
    s.remote = "[::ffff:192.168.7.9]:50000".parse().unwrap();
    assert_eq!(step(&mut e, &s, T), "rpc");
}

#[test]
fn protected_processes_and_ports_are_never_touched() {
    for (i, mut s) in [stalled(1, 1, 60_000), stalled(2, 999, 60_000), stalled(3, 10, 60_000)].into_iter().enumerate() {
        if i == 2 {
            s.exe = None;
            s.cmdline = Some("".into());
        }
        let mut e = engine("");
        assert_eq!(step(&mut e, &s, T), "skip:protected", "{s:?}");
        assert_eq!(step(&mut e, &s, T), "none", "reported once, then silent");
        assert_eq!(step(&mut e, &stalled(s.socket_cookie, s.pid.unwrap(), 600_000), T), "none");
    }
    let mut e = engine("[protect]\ncomms = [\"ws-*\"]\n");
    assert_eq!(step(&mut e, &stalled(1, 10, 60_000), T), "skip:protected");
    let mut e = engine("[protect]\nlocal_ports = [8080]\n");
    assert_eq!(step(&mut e, &stalled(1, 10, 60_000), T), "skip:protected");
    // A process name longer than the kernel keeps is protected by its executable.
    let mut e = engine("[protect]\nexes = [\"*/ws-server\"]\n");
    assert_eq!(step(&mut e, &stalled(1, 10, 60_000), T), "skip:protected");
    // Any holder protected protects the socket (a forked helper sharing it with sshd).
    let mut e = engine("");
    let mut s = stalled(4, 10, 60_000);
    let mut sshd = s.holders[0].clone();
    sshd.pid = 20;
    sshd.comm = "sshd".into();
    s.holders = s.holders.iter().cloned().chain([sshd]).collect();
    assert_eq!(step(&mut e, &s, T), "skip:protected");
    // ...and so does a protected pid among them.
    let mut e = engine("[protect]\npids = [20]\n");
    let mut s = stalled(5, 10, 60_000);
    let mut child = s.holders[0].clone();
    child.pid = 20;
    s.holders = s.holders.iter().cloned().chain([child]).collect();
    assert_eq!(step(&mut e, &s, T), "skip:protected");
}

#[test]
fn rate_limits_and_cooldown_hold_actions_back() {
    let mut e = engine("[limits]\nper_minute = 2\ncooldown = \"0s\"\nper_owner_per_minute = 100\n");
    assert_eq!(step(&mut e, &stalled(1, 10, 30_000), T), "rpc");
    assert_eq!(step(&mut e, &stalled(2, 11, 30_000), T), "rpc");
    assert_eq!(step(&mut e, &stalled(3, 12, 30_000), T), "skip:rate_limited");
    assert_eq!(step(&mut e, &stalled(3, 12, 30_000), T), "none", "skip reported once");
    assert_eq!(step(&mut e, &stalled(3, 12, 90_000), T + MINUTE), "rpc", "acts once the window passes");

    let mut e = engine("[limits]\ncooldown = \"20s\"\n");
    assert_eq!(step(&mut e, &stalled(1, 10, 30_000), T), "rpc");
    assert_eq!(step(&mut e, &stalled(2, 10, 30_000), T), "skip:cooldown");
    assert_eq!(step(&mut e, &stalled(2, 10, 30_000), T + 21_000), "rpc");

    let mut e = engine("[limits]\nper_owner_per_minute = 1\ncooldown = \"0s\"\n");
    assert_eq!(step(&mut e, &stalled(1, 10, 30_000), T), "rpc");
    assert_eq!(step(&mut e, &stalled(2, 10, 30_000), T), "skip:owner_rate_limited");
    assert_eq!(step(&mut e, &stalled(3, 11, 30_000), T), "rpc", "another owner is not limited");
}

/// Decides on `stalled` in the engine's order, as a tick does: the cookies acted on.
fn tick(e: &mut Engine, stalled: &[StalledSocket], now: u64) -> Vec<u64> {
    let mut acted = Vec::new();
    for i in e.order(stalled) {
        if step(e, &stalled[i], now) == "destroy" {
            acted.push(stalled[i].socket_cookie);
        }
    }
    acted
}

#[test]
fn a_freed_rate_limit_slot_goes_to_the_owner_served_least() {
    let text = "[limits]\nper_minute = 1\ncooldown = \"0s\"\nper_owner_per_minute = 100\n[[selector]]\nname = \"all\"\nactions = [{ action = \"destroy\" }]\n";
    let mut e = Engine::new(Policy::parse(text, "t.toml", Duration::from_secs(30)).unwrap(), Duration::from_secs(30), 999, LadderState::default());
    // Owner 10 floods with older stalls; owner 20's single stall is younger and comes later.
    let flood = |age: u64| (1..=5).map(|c| stalled(c, 10, age + 1_000 - c)).collect::<Vec<_>>();
    assert_eq!(tick(&mut e, &flood(30_000), T), vec![1]);
    let mut both = flood(40_000);
    both.push(stalled(9, 20, 30_000));
    assert_eq!(tick(&mut e, &both, T + 10_000), Vec::<u64>::new(), "the minute's slot is taken");
    let mut both = flood(90_000);
    both.push(stalled(9, 20, 80_000));
    assert_eq!(tick(&mut e, &both, T + MINUTE), vec![9], "not the flood's next-oldest stall");
    let mut rest = flood(150_000);
    rest.push(stalled(9, 20, 140_000));
    assert_eq!(tick(&mut e, &rest, T + 2 * MINUTE), vec![2], "then the flood again");
}

#[test]
fn an_unknown_owner_is_never_acted_on_unless_the_selector_allows_it() {
    let mut e = engine_with("", "match = { }");
    let s = orphaned(stalled(1, 10, 60_000));
    assert_eq!(step(&mut e, &s, T), "skip:owner_unknown");
    assert_eq!(step(&mut e, &s, T), "none", "noted once");
    assert_eq!(step(&mut e, &orphaned(stalled(1, 10, 600_000)), T), "none", "never escalated to destroy");
}

#[test]
fn a_one_pass_attribution_miss_does_not_skip_the_gentle_stage() {
    let mut e = engine("");
    // The owner is unknown on one pass (not matched: no comm), then found again.
    assert_eq!(step(&mut e, &orphaned(stalled(1, 10, 30_000)), T), "none");
    let mut e = engine_with("", "match = { }");
    assert_eq!(step(&mut e, &orphaned(stalled(1, 10, 30_000)), T), "skip:owner_unknown");
    assert_eq!(step(&mut e, &stalled(1, 10, 31_000), T), "rpc", "the gentle stage runs once the owner is back");
    assert_eq!(step(&mut e, &stalled(1, 10, 41_000), T + MINUTE), "destroy");
}

#[test]
fn with_unknown_owners_allowed_only_ownerless_stages_run_after_the_gentle_one_had_its_window() {
    let mut e = engine_with("", "match = { }\nallow_unknown_owner = true");
    let s = |ms| orphaned(stalled(1, 10, ms));
    assert_eq!(step(&mut e, &s(30_000), T), "skip:owner_unknown", "rpc needs an owner");
    assert_eq!(step(&mut e, &s(35_000), T), "none", "waits: the owner may show up");
    assert_eq!(step(&mut e, &s(40_000), T), "none", "rpc's window over: decided against, now");
    assert_eq!(step(&mut e, &s(40_000), T), "destroy");
}

#[test]
fn sockets_without_a_file_are_never_acted_on_even_when_allowed() {
    let mut e = engine_with("", "match = { }\nallow_unknown_owner = true");
    let mut k = orphaned(stalled(1, 10, 60_000));
    k.kernel_socket = Some(true);
    assert_eq!(step(&mut e, &k, T), "skip:kernel_socket");
    assert_eq!(step(&mut e, &k, T + MINUTE), "none", "settled for good");
    let mut closed = stalled(2, 10, 60_000);
    closed.inode = 0;
    assert_eq!(step(&mut e, &closed, T), "skip:no_file");
    // Found by a dump with nobody holding it: whether it is the kernel's is unknown: waits.
    let mut dumped = orphaned(stalled(3, 10, 60_000));
    dumped.kernel_socket = None;
    assert_eq!(step(&mut e, &dumped, T), "skip:file_unknown");
}

#[test]
fn reports_run_for_any_socket_and_dry_run_is_carried() {
    let text = "[[selector]]\nname = \"all\"\nactions = [{ action = \"report\" }]\n";
    let mut e = Engine::new(Policy::parse(text, "t", Duration::from_secs(30)).unwrap(), Duration::from_secs(30), 999, LadderState::default());
    let mut k = orphaned(stalled(1, 10, 30_000));
    k.kernel_socket = Some(true);
    assert_eq!(step(&mut e, &k, T), "report", "reporting touches nothing");
    let mut e = engine("dry_run = true");
    match e.decide(&stalled(1, 10, 30_000), T) {
        Some(Decision::Act { dry_run, .. }) => assert!(dry_run),
        other => panic!("{other:?}"),
    }
    e.settle(1, 0, Outcome::Ran, T);
    // Bytes acknowledged since: it recovered, and this is a new stall with a new ladder.
    let mut again = stalled(1, 10, 30_000);
    again.bytes_acked += 1;
    e.retain(&HashSet::from([1]), T + MINUTE);
    assert_eq!(step(&mut e, &again, T + MINUTE), "rpc", "a recovered socket's new stall starts over");
}

#[test]
fn a_restarted_engine_with_the_saved_state_runs_no_stage_twice() {
    let mut e = engine("");
    assert_eq!(step(&mut e, &stalled(1, 10, 30_000), T), "rpc");
    let saved = e.state.clone();
    let mut again = engine("");
    again.state = serde_json::from_str(&serde_json::to_string(&saved).unwrap()).unwrap();
    assert_eq!(step(&mut again, &stalled(1, 10, 31_000), T + 1_000), "none", "rpc ran before the restart");
    assert_eq!(step(&mut again, &stalled(2, 10, 31_000), T + 1_000), "skip:cooldown", "the owner's cooldown survives too");
    assert_eq!(step(&mut again, &stalled(1, 10, 40_000), T + MINUTE), "destroy");
}

/// A report touches nothing: it is never held back by the rate limits or a cooldown, and it
/// neither counts toward them nor starts one (500 stalls appearing at once are all reported
/// at once, and the engine does not re-judge them every pass while a limit holds them).
#[test]
fn reports_are_not_rate_limited_and_do_not_count_as_actions() {
    let text = "[limits]\nper_minute = 2\nper_owner_per_minute = 1\ncooldown = \"20s\"\n[[selector]]\nname = \"all\"\nactions = [{ action = \"report\" }, { action = \"destroy\", after = \"1s\" }]\n";
    let mut e = Engine::new(Policy::parse(text, "t", Duration::from_secs(30)).unwrap(), Duration::from_secs(30), 999, LadderState::default());
    for cookie in 1..=50 {
        assert_eq!(step(&mut e, &stalled(cookie, 10, 30_000), T), "report", "socket {cookie}");
    }
    assert_eq!(step(&mut e, &stalled(1, 10, 31_000), T + 1_000), "destroy", "no cooldown or owner limit from the reports");
}

#[test]
fn a_leak_suspect_is_acted_on_only_by_a_selector_that_names_its_reason() {
    use crate::verdict::Reason;
    let mut s = stalled(1, 10, 400_000);
    s.reason = Reason::CloseWaitIdle;
    // `--action destroy` is one selector matching everything: not a half-closed client.
    let flags = Policy::from_flags(Action::Destroy, None, None, false).unwrap();
    let mut e = Engine::new(flags, Duration::from_secs(30), 999, LadderState::default());
    assert_eq!(step(&mut e, &s, T), "none");
    s.reason = Reason::PeerClosed;
    assert_eq!(step(&mut e, &s, T), "destroy", "bytes that do not drain to a peer that closed are still acted on");
    // A selector that names it does.
    let mut e = engine_with("", "match = { reason = \"close_wait_idle\" }");
    s.reason = Reason::CloseWaitIdle;
    assert_eq!(step(&mut e, &s, T), "rpc");
}

#[test]
fn ssh_sessions_and_storage_initiators_are_protected_by_default() {
    // OpenSSH 9.8+ serves each login from `sshd-session` (10.0 authenticates in `sshd-auth`);
    // open-iscsi's daemons carry the node's disks.
    for comm in ["sshd", "sshd-session", "sshd-auth", "iscsid", "iscsiuio"] {
        let mut e = Engine::new(Policy::from_flags(Action::Destroy, None, None, false).unwrap(), Duration::from_secs(30), 999, LadderState::default());
        let mut s = stalled(1, 10, 60_000);
        s.comm = Some(comm.into());
        std::sync::Arc::get_mut(&mut s.holders).unwrap()[0].comm = comm.into();
        assert_eq!(step(&mut e, &s, T), "skip:protected", "{comm}");
    }
    let mut e = Engine::new(Policy::from_flags(Action::Destroy, None, None, false).unwrap(), Duration::from_secs(30), 999, LadderState::default());
    let mut s = stalled(1, 10, 60_000);
    s.exe = Some("/usr/lib/openssh/sshd-session".into());
    assert_eq!(step(&mut e, &s, T), "skip:protected", "by executable");
}

/// Decides for `s` at `now` and, when the engine acts, settles the stage with `outcome`.
fn step_as(e: &mut Engine, s: &StalledSocket, now: u64, outcome: Outcome) -> String {
    let d = e.decide(s, now);
    if let Some(Decision::Act { stage_index, .. }) = &d {
        e.settle(s.socket_cookie, *stage_index, outcome, now);
    }
    act_name(d)
}

#[test]
fn a_stage_whose_owner_or_fd_moved_is_tried_again_and_the_harsher_one_waits() {
    let mut e = engine("[limits]\ncooldown = \"0s\"\n");
    // The rpc found the owner's fd changed: not done; the destroy is not due past it.
    assert_eq!(step_as(&mut e, &stalled(1, 10, 30_000), T, Outcome::Retry), "rpc");
    assert_eq!(step(&mut e, &stalled(1, 10, 45_000), T + 15_000), "rpc", "tried again, not skipped past");
    // It ran at T + 15 s: the destroy waits its 10 s from then, not from the ladder's start.
    assert_eq!(step(&mut e, &stalled(1, 10, 50_000), T + 20_000), "none");
    assert_eq!(step(&mut e, &stalled(1, 10, 55_000), T + 25_000), "destroy");
}

#[test]
fn a_failed_stage_is_tried_again_after_a_while_and_the_harsher_one_waits_for_it() {
    let mut e = engine("[limits]\ncooldown = \"0s\"\nper_owner_per_minute = 100\n");
    assert_eq!(step_as(&mut e, &stalled(1, 10, 30_000), T, Outcome::Failed), "rpc");
    assert_eq!(step(&mut e, &stalled(1, 10, 41_000), T + 1_000), "none", "not at once: RETRY_FAILED_MS");
    assert_eq!(step_as(&mut e, &stalled(1, 10, 45_000), T + RETRY_FAILED_MS, Outcome::Failed), "rpc", "and never the destroy while the rpc has not run");
    assert_eq!(step(&mut e, &stalled(1, 10, 60_000), T + 2 * RETRY_FAILED_MS), "rpc");
    assert_eq!(step(&mut e, &stalled(1, 10, 80_000), T + 2 * RETRY_FAILED_MS + 10_000), "destroy");
}

#[test]
fn a_stage_decided_against_for_good_lets_the_ladder_move_on() {
    let mut e = engine("[limits]\ncooldown = \"0s\"\n");
    assert_eq!(step_as(&mut e, &stalled(1, 10, 30_000), T, Outcome::DecidedAgainst), "rpc");
    assert_eq!(step(&mut e, &stalled(1, 10, 35_000), T + 5_000), "none");
    assert_eq!(step(&mut e, &stalled(1, 10, 40_000), T + 10_000), "destroy");
}

#[test]
fn a_stage_being_carried_out_is_not_decided_on_again() {
    let mut e = engine("");
    assert_eq!(act_name(e.decide(&stalled(1, 10, 30_000), T)), "rpc");
    // Its answer has not come: nothing is decided for that socket meanwhile.
    assert_eq!(act_name(e.decide(&stalled(1, 10, 60_000), T + MINUTE)), "none");
    e.settle(1, 0, Outcome::Ran, T + MINUTE);
    assert_eq!(act_name(e.decide(&stalled(1, 10, 70_000), T + MINUTE + 10_000)), "destroy");
}

#[test]
fn a_ladder_outlives_its_sockets_absence_from_a_report_but_not_a_recovery() {
    let mut e = engine("[limits]\ncooldown = \"0s\"\n");
    assert_eq!(step(&mut e, &stalled(1, 10, 30_000), T), "rpc");
    // A pass whose report lacks it (a walk that skipped it, a failed sample): nothing forgotten.
    e.retain(&HashSet::new(), T + 5_000);
    assert_eq!(step(&mut e, &stalled(1, 10, 45_000), T + 15_000), "destroy", "stage 0 ran once, the ladder goes on");
    // Absent for LADDER_KEEP_MS: forgotten (the state stays bounded).
    let mut e = engine("[limits]\ncooldown = \"0s\"\n");
    assert_eq!(step(&mut e, &stalled(2, 10, 30_000), T), "rpc");
    e.retain(&HashSet::new(), T);
    e.retain(&HashSet::new(), T + LADDER_KEEP_MS);
    assert!(e.state.next_stage.is_empty() && e.state.acked.is_empty(), "{:?}", e.state);
}

#[test]
fn a_restarted_engine_whose_first_report_lacks_the_socket_keeps_its_stage() {
    let mut e = engine("[limits]\ncooldown = \"0s\"\n");
    assert_eq!(step(&mut e, &stalled(1, 10, 30_000), T), "rpc");
    let saved: LadderState = serde_json::from_str(&serde_json::to_string(&e.state).unwrap()).unwrap();
    let mut again = engine("[limits]\ncooldown = \"0s\"\n");
    again.state = saved;
    // The first passes after the restart cannot prove the stall yet: it is not reported.
    again.retain(&HashSet::new(), T + 2_000);
    again.retain(&HashSet::new(), T + 3_000);
    // Proved again (its onset re-proved later than before: 5 s stalled only): the rpc ran
    // before the restart, never again.
    assert_eq!(step(&mut again, &stalled(1, 10, 5_000), T + 4_000), "none");
    assert_eq!(step(&mut again, &stalled(1, 10, 41_000), T + 40_000), "destroy");
}

#[test]
fn a_stage_started_when_the_agent_was_killed_is_done_after_the_restart() {
    let mut e = engine("[limits]\ncooldown = \"0s\"\n");
    // Decided (an rpc in flight), saved, and the agent killed before its answer.
    assert_eq!(act_name(e.decide(&stalled(1, 10, 30_000), T)), "rpc");
    let saved: LadderState = serde_json::from_str(&serde_json::to_string(&e.state).unwrap()).unwrap();
    let mut again = engine("[limits]\ncooldown = \"0s\"\n");
    again = Engine::new(again.policy.clone(), Duration::from_secs(30), 999, saved);
    assert_eq!(step(&mut again, &stalled(1, 10, 31_000), T + 1_000), "none", "the rpc may have run: never twice");
    // The destroy waits its 10 s from the rpc's start, whatever the ladder's clock says.
    assert_eq!(step(&mut again, &stalled(1, 10, 60_000), T + 9_000), "none");
    assert_eq!(step(&mut again, &stalled(1, 10, 61_000), T + 10_000), "destroy");
    // Within one run, a stage that failed is settled and tried again.
    assert_eq!(step_as(&mut e, &stalled(2, 11, 30_000), T, Outcome::Failed), "rpc");
    assert!(!e.state.started.contains_key(&2));
}
