//! The one table of every hook the agent knows ([`HOOKS`]): what it is for, which program
//! serves it and how it attaches, and what the kernel said when it was tried ([`HookState`]).
//! The loader, the choice of configuration, `detector check`, `detector status`, the metrics
//! and the benchmarks all read it.
use detector_common::SendHook;
use serde::Serialize;

/// What a hook is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Send,
    /// A send path the main send hook does not see (pages before 6.5, Multipath TCP).
    Path,
    Lifetime,
    Sample,
    Reconcile,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Send => "send",
            Role::Path => "send path",
            Role::Lifetime => "lifetime",
            Role::Sample => "sample",
            Role::Reconcile => "reconcile",
        }
    }
}

/// Every hook the agent knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookId {
    Send(SendHook),
    /// A hook of another send path, beside the main one.
    Path(SendHook),
    RetransmitBtf,
    Retransmit,
    SetState,
    /// The sampling walk of socket storage.
    Walk,
    /// The reconcile's pass over a namespace's TCP sockets, reporting the stuck ones...
    Scan,
    /// ...or putting them into socket storage, for the walk.
    ScanAdopt,
    /// Its pass over every process's files, reporting...
    ScanFiles,
    /// ...or adopting.
    ScanFilesAdopt,
}

/// How a hook's program attaches.
#[derive(Debug, Clone, Copy)]
pub enum Attach {
    TpBtf(&'static str),
    Fentry(&'static str),
    Tracepoint(&'static str, &'static str),
    /// A raw tracepoint: the prototype's arguments, no BTF and no trace record.
    RawTp(&'static str),
    Kprobe(&'static str),
    /// An iterator, linked by `kernel::iter::IterLink` (to `map`, for a map iterator).
    Iter {
        target: &'static str,
        map: Option<&'static str>,
    },
}

/// One row of the hook table.
#[derive(Debug, Clone, Copy)]
pub struct HookSpec {
    pub id: HookId,
    pub role: Role,
    /// How people call it (logs, `detector check`, metrics label).
    pub label: &'static str,
    /// The program's name in the eBPF object.
    pub program: &'static str,
    /// For send hooks, the value of `--send-hook` that forces it.
    pub flag: Option<&'static str>,
    pub attach: Attach,
}

const fn send(hook: SendHook, flag: &'static str, label: &'static str, program: &'static str, attach: Attach) -> HookSpec {
    HookSpec { id: HookId::Send(hook), role: Role::Send, label, program, flag: Some(flag), attach }
}

const fn path(hook: SendHook, label: &'static str, program: &'static str, attach: Attach) -> HookSpec {
    HookSpec { id: HookId::Path(hook), role: Role::Path, label, program, flag: None, attach }
}

const fn other(id: HookId, role: Role, label: &'static str, program: &'static str, attach: Attach) -> HookSpec {
    HookSpec { id, role, label, program, flag: None, attach }
}

const fn iter(target: &'static str) -> Attach {
    Attach::Iter { target, map: None }
}

/// Every hook: send hooks in order of preference, the other send paths' (each path's best
/// first), lifetime hooks, then the iterators (each variant of a reconcile pass its own row,
/// the better one first).
pub const HOOKS: [HookSpec; 18] = [
    send(SendHook::TcpSendmsgLocked, "tcp-sendmsg-locked", "tp_btf tcp_sendmsg_locked", "tcp_sendmsg_locked", Attach::TpBtf("tcp_sendmsg_locked")),
    send(SendHook::FentryTcpSendmsgLocked, "fentry", "fentry tcp_sendmsg_locked", "fentry_tcp_sendmsg_locked", Attach::Fentry("tcp_sendmsg_locked")),
    send(SendHook::SockSendLengthBtf, "sock-send-length-btf", "tp_btf sock_send_length", "sock_send_length_btf", Attach::TpBtf("sock_send_length")),
    send(SendHook::SockSendLength, "sock-send-length", "tracepoint sock:sock_send_length", "sock_send_length", Attach::Tracepoint("sock", "sock_send_length")),
    send(SendHook::KprobeTcpSendmsgLocked, "kprobe", "kprobe tcp_sendmsg_locked", "kprobe_tcp_sendmsg_locked", Attach::Kprobe("tcp_sendmsg_locked")),
    path(SendHook::FentryDoTcpSendpages, "fentry do_tcp_sendpages", "fentry_do_tcp_sendpages", Attach::Fentry("do_tcp_sendpages")),
    path(SendHook::KprobeDoTcpSendpages, "kprobe do_tcp_sendpages", "kprobe_do_tcp_sendpages", Attach::Kprobe("do_tcp_sendpages")),
    path(SendHook::FentryMptcpSendmsg, "fentry mptcp_sendmsg", "fentry_mptcp_sendmsg", Attach::Fentry("mptcp_sendmsg")),
    path(SendHook::SockSendLengthBtfMptcp, "tp_btf sock_send_length (MPTCP)", "sock_send_length_mptcp", Attach::TpBtf("sock_send_length")),
    path(SendHook::KprobeMptcpSendmsg, "kprobe mptcp_sendmsg", "kprobe_mptcp_sendmsg", Attach::Kprobe("mptcp_sendmsg")),
    other(HookId::RetransmitBtf, Role::Lifetime, "tp_btf tcp_retransmit_skb", "tcp_retransmit_skb_btf", Attach::TpBtf("tcp_retransmit_skb")),
    other(HookId::SetState, Role::Lifetime, "raw_tp inet_sock_set_state", "inet_sock_set_state", Attach::RawTp("inet_sock_set_state")),
    other(HookId::Retransmit, Role::Lifetime, "tracepoint tcp:tcp_retransmit_skb", "tcp_retransmit_skb", Attach::Tracepoint("tcp", "tcp_retransmit_skb")),
    other(HookId::Walk, Role::Sample, "iter bpf_sk_storage_map", "walk_sk_storage", Attach::Iter { target: "bpf_sk_storage_map", map: Some("SK_STATE") }),
    other(HookId::ScanAdopt, Role::Reconcile, "iter tcp (adopting)", "scan_tcp_adopt", iter("tcp")),
    other(HookId::Scan, Role::Reconcile, "iter tcp", "scan_tcp", iter("tcp")),
    other(HookId::ScanFilesAdopt, Role::Reconcile, "iter task_file (adopting)", "scan_files_adopt", iter("task_file")),
    other(HookId::ScanFiles, Role::Reconcile, "iter task_file", "scan_files", iter("task_file")),
];

pub fn spec(id: HookId) -> &'static HookSpec {
    HOOKS.iter().find(|h| h.id == id).expect("every HookId has a row in HOOKS")
}

/// How people call the program that made a record with `hook`.
pub fn send_label(hook: SendHook) -> &'static str {
    match hook {
        // The main classic tracepoint's program, on an MPTCP socket: no row of its own.
        SendHook::SockSendLengthMptcp => "tracepoint sock:sock_send_length (MPTCP)",
        h if SendHook::ALL.contains(&h) => spec(HookId::Send(h)).label,
        h => spec(HookId::Path(h)).label,
    }
}

/// What the kernel said of one hook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "why", rename_all = "snake_case")]
pub enum HookState {
    /// In use.
    Attached,
    /// Loads and attaches here, but the configuration in use does not need it (or a better
    /// hook serves its role).
    Available,
    /// Not tried, for this reason.
    NotTried(&'static str),
    /// Tried and refused by the kernel (or missing from it), with why in one line.
    Refused(String),
}

impl HookState {
    /// Whether the kernel can run this hook.
    pub fn works(&self) -> bool {
        matches!(self, HookState::Attached | HookState::Available)
    }
}

/// One hook and how it fared, for the start-up log, `detector check`, `detector status` and
/// metrics.
#[derive(Debug, Clone, Serialize)]
pub struct HookStatus {
    #[serde(skip)]
    pub id: HookId,
    pub role: Role,
    pub hook: &'static str,
    #[serde(flatten)]
    pub state: HookState,
    /// The verifier's log of a refusal, when it wrote one (`detector check --verbose`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
}

impl HookStatus {
    pub fn of(id: HookId, state: HookState) -> Self {
        let s = spec(id);
        HookStatus { id, role: s.role, hook: s.label, state, log: None }
    }

    pub fn attached(&self) -> bool {
        self.state == HookState::Attached
    }
}

/// One line about a hook's state, for people.
pub fn describe(s: &HookState) -> String {
    match s {
        HookState::Attached => "attached".into(),
        HookState::Available => "available; not used by the configuration in use".into(),
        HookState::NotTried(why) => format!("not tried: {why}"),
        HookState::Refused(why) => format!("refused: {why}"),
    }
}

/// A refusal in one line, and the verifier's log apart. aya's load error reads "the
/// BPF_PROG_LOAD syscall returned <errno>. Verifier output: <log>": the line keeps the errno
/// and the log's verdict (its last line before the statistics), or says that the kernel
/// refused before verifying anything.
pub fn summarize(err: &str) -> (String, Option<String>) {
    let Some((head, log)) = err.split_once("Verifier output:") else {
        return (err.trim().to_string(), None);
    };
    let head = head.trim().trim_end_matches('.');
    let stats = |l: &str| l.starts_with("verification time") || l.starts_with("stack depth") || l.starts_with("processed ");
    let lines: Vec<&str> = log.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with(':')).collect();
    let verdict = lines.iter().rev().find(|l| !stats(l)).copied();
    let before_any = lines.iter().any(|l| l.starts_with("processed 0 insns"));
    let line = match (verdict, before_any) {
        (_, true) => format!("{head}, before the verifier looked at one instruction"),
        (Some(v), false) => format!("{head}: {v}"),
        (None, false) => format!("{head}, with no verifier message"),
    };
    // aya appends ": <errno>" after the log.
    let log = log.trim();
    let log = log.rsplit_once('\n').map_or(if log.starts_with(':') { "" } else { log }, |(body, last)| if last.starts_with(':') { body } else { log });
    (line, (!log.trim().is_empty()).then(|| log.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_send_hook_has_one_row_in_preference_order() {
        let sends: Vec<SendHook> = HOOKS
            .iter()
            .filter_map(|h| match h.id {
                HookId::Send(s) => Some(s),
                _ => None,
            })
            .collect();
        assert_eq!(sends, SendHook::ALL.to_vec());
        for h in HOOKS {
            assert_eq!(spec(h.id).program, h.program);
            assert_eq!(h.role == Role::Send, matches!(h.id, HookId::Send(_)));
            assert_eq!(h.role == Role::Path, matches!(h.id, HookId::Path(_)));
            assert_eq!(HOOKS.iter().filter(|o| o.id == h.id).count(), 1, "{:?}", h.id);
        }
        for h in SendHook::EVERY {
            assert!(!send_label(h).is_empty());
        }
    }

    #[test]
    fn a_refusal_is_one_line_and_its_log_is_kept_apart() {
        // Seen on 6.18.44-fc-v1252: the map iterator, refused before verification.
        let map_iter = "the BPF_PROG_LOAD syscall returned Operation not permitted (os error 1). Verifier output: verification time 35 usec\nstack depth 0+0\nprocessed 0 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0\n: Operation not permitted (os error 1)";
        let (line, log) = summarize(map_iter);
        assert_eq!(line, "the BPF_PROG_LOAD syscall returned Operation not permitted (os error 1), before the verifier looked at one instruction");
        assert!(log.unwrap().contains("processed 0 insns"));
        // ...and the pass over files, refused at a helper call.
        let files = "the BPF_PROG_LOAD syscall returned Permission denied (os error 13). Verifier output: 0: R1=ctx() R10=fp0\n35: (85) call bpf_skc_to_tcp_sock#137\nR1 type=untrusted_ptr_ expected=sock_common, sock, tcp_sock, xdp_sock, ptr_, trusted_ptr_\nverification time 322 usec\nstack depth 104+0\nprocessed 37 insns (limit 1000000) max_states_per_insn 0 total_states 2 peak_states 2 mark_read 0\n: Permission denied (os error 13)";
        let (line, log) = summarize(files);
        assert_eq!(
            line,
            "the BPF_PROG_LOAD syscall returned Permission denied (os error 13): R1 type=untrusted_ptr_ expected=sock_common, sock, tcp_sock, xdp_sock, ptr_, trusted_ptr_"
        );
        assert!(!line.contains('\n') && log.unwrap().contains("call bpf_skc_to_tcp_sock"));
        // fentry on this machine kind: an empty log.
        let fentry = "the BPF_PROG_LOAD syscall returned Operation not permitted (os error 1). Verifier output: : Operation not permitted (os error 1)";
        assert_eq!(summarize(fentry), ("the BPF_PROG_LOAD syscall returned Operation not permitted (os error 1), with no verifier message".into(), None));
        assert_eq!(summarize("`/sys/bus/event_source/devices/kprobe/type`: No such file or directory (os error 2)").1, None);
    }
}
