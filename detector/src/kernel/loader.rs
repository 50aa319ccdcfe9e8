//! Loads the programs with this kernel's offsets and attaches the best hooks it offers.
//!
//! [`HOOKS`] is the one table of every hook: what it is for, which program serves it and how it
//! attaches. The loader, `detector check`, `detector status`, the metrics and the benchmarks
//! all read it and the [`HookState`] the loader found for each.
//!
//! Send path, in order of preference (the first that loads and attaches wins; `SendHook`):
//! 1. BTF tracepoint `tcp_sendmsg_locked` (6.15+), socket storage;
//! 2. fentry `tcp_sendmsg`, socket storage;
//! 3. BTF tracepoint `sock_send_length` (6.3+), socket storage;
//! 4. tracepoint `sock:sock_send_length`, hash map;
//! 5. kprobe `tcp_sendmsg`, hash map.
//!
//! Lifetime: with socket storage, the BTF `tcp_retransmit_skb` only (storage dies with the
//! socket); with the hash map, the raw tracepoint `inet_sock_set_state` (required: it empties
//! the map) and `tcp:tcp_retransmit_skb`.
//!
//! Sample: with socket storage, the iterator `walk_sk_storage` samples the tracked sockets in
//! the kernel (one walk across every namespace); without it (hash map, or a kernel that
//! refuses it) the agent samples with sock_diag.
//!
//! Reconcile: the iterator `scan_tcp` passes over each namespace's TCP sockets in the kernel
//! and reports the stuck ones; without it, a sock_diag dump per namespace. With socket
//! storage, its variant `scan_tcp_adopt` puts each stuck socket into socket storage instead, so
//! the walk samples it (no sock_diag lookup per pass); where the kernel refuses that variant,
//! the plain one serves. After start-up, the iterator `scan_files` (`scan_files_adopt`) does
//! the same in one pass over every process's open files, whatever their namespaces; without
//! it, each later reconcile passes over each namespace again.
use std::os::fd::{AsFd as _, OwnedFd};

use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::{BtfTracePoint, FEntry, Iter, KProbe, RawTracePoint, TracePoint},
};
use detector_common::{KernelConfig, OFFSET_ABSENT, SendHook};
use serde::Serialize;
use thiserror::Error;

use super::{
    btf::{BtfError, KernelBtf},
    iter::IterLink,
    tracefs::{Tracefs, TracefsError},
};

#[derive(Debug, Error)]
pub enum LoadError {
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("loading the eBPF object: {0}")]
    Object(#[from] aya::EbpfError),
    #[error(
        "no send-path hook could be attached; tried:\n{0}\nthe kernel needs one of: BTF tracepoints (tcp_sendmsg_locked or sock_send_length), fentry or kprobe on tcp_sendmsg, or the tracepoint sock:sock_send_length"
    )]
    NoSendHook(String),
    #[error("required hook {hook} could not be attached: {err}")]
    Required { hook: &'static str, err: String },
}

/// What a hook is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Send,
    Lifetime,
    Sample,
    Reconcile,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Send => "send",
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
    RetransmitBtf,
    Retransmit,
    SetState,
    Walk,
    Scan,
    ScanFiles,
}

/// How a hook's program attaches.
#[derive(Debug, Clone, Copy)]
enum Attach {
    TpBtf(&'static str),
    Fentry(&'static str),
    Tracepoint(&'static str, &'static str),
    /// A raw tracepoint: the prototype's arguments, no BTF and no trace record.
    RawTp(&'static str),
    Kprobe(&'static str),
    /// A map iterator, linked by [`IterLink`].
    Iter(&'static str),
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
    attach: Attach,
}

const fn send(hook: SendHook, flag: &'static str, label: &'static str, program: &'static str, attach: Attach) -> HookSpec {
    HookSpec { id: HookId::Send(hook), role: Role::Send, label, program, flag: Some(flag), attach }
}

/// Every hook: send hooks in order of preference, lifetime hooks, then the two iterators.
pub const HOOKS: [HookSpec; 11] = [
    send(SendHook::TcpSendmsgLocked, "tcp-sendmsg-locked", "tp_btf tcp_sendmsg_locked", "tcp_sendmsg_locked", Attach::TpBtf("tcp_sendmsg_locked")),
    send(SendHook::FentryTcpSendmsg, "fentry", "fentry tcp_sendmsg", "fentry_tcp_sendmsg", Attach::Fentry("tcp_sendmsg")),
    send(SendHook::SockSendLengthBtf, "sock-send-length-btf", "tp_btf sock_send_length", "sock_send_length_btf", Attach::TpBtf("sock_send_length")),
    send(SendHook::SockSendLength, "sock-send-length", "tracepoint sock:sock_send_length", "sock_send_length", Attach::Tracepoint("sock", "sock_send_length")),
    send(SendHook::KprobeTcpSendmsg, "kprobe", "kprobe tcp_sendmsg", "kprobe_tcp_sendmsg", Attach::Kprobe("tcp_sendmsg")),
    HookSpec {
        id: HookId::RetransmitBtf,
        role: Role::Lifetime,
        label: "tp_btf tcp_retransmit_skb",
        program: "tcp_retransmit_skb_btf",
        flag: None,
        attach: Attach::TpBtf("tcp_retransmit_skb"),
    },
    HookSpec {
        id: HookId::SetState,
        role: Role::Lifetime,
        label: "raw_tp inet_sock_set_state",
        program: "inet_sock_set_state",
        flag: None,
        attach: Attach::RawTp("inet_sock_set_state"),
    },
    HookSpec {
        id: HookId::Retransmit,
        role: Role::Lifetime,
        label: "tracepoint tcp:tcp_retransmit_skb",
        program: "tcp_retransmit_skb",
        flag: None,
        attach: Attach::Tracepoint("tcp", "tcp_retransmit_skb"),
    },
    HookSpec {
        id: HookId::Walk,
        role: Role::Sample,
        label: "iter bpf_sk_storage_map",
        program: "walk_sk_storage",
        flag: None,
        attach: Attach::Iter("bpf_sk_storage_map"),
    },
    HookSpec { id: HookId::Scan, role: Role::Reconcile, label: "iter tcp", program: "scan_tcp", flag: None, attach: Attach::Iter("tcp") },
    HookSpec { id: HookId::ScanFiles, role: Role::Reconcile, label: "iter task_file", program: "scan_files", flag: None, attach: Attach::Iter("task_file") },
];

pub fn spec(id: HookId) -> &'static HookSpec {
    HOOKS.iter().find(|h| h.id == id).expect("every HookId has a row in HOOKS")
}

/// What the loader found for one hook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "why", rename_all = "snake_case")]
pub enum HookState {
    Attached,
    /// Loads and attaches here, but a preferred hook serves its role.
    Available,
    /// Not tried, for this reason (another hook forced, or not needed with this storage).
    NotTried(&'static str),
    /// Tried and refused by the kernel (or missing from it), with why.
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
    /// The program serving it (the table's, or the variant the loader picked).
    #[serde(skip)]
    pub program: &'static str,
    #[serde(flatten)]
    pub state: HookState,
}

impl HookStatus {
    fn of(spec: &HookSpec, state: HookState) -> Self {
        HookStatus { id: spec.id, role: spec.role, hook: spec.label, program: spec.program, state }
    }

    pub fn attached(&self) -> bool {
        self.state == HookState::Attached
    }
}

pub struct Loaded {
    pub ebpf: Ebpf,
    pub hooks: Vec<HookStatus>,
    /// The send hook in use.
    pub send_hook: SendHook,
    /// The sampling walk, when the kernel runs it (socket storage only).
    pub walk: Option<IterLink>,
    /// The reconcile's pass over TCP sockets, when the kernel runs it.
    pub scan: Option<IterLink>,
    /// Its pass over every process's files (every namespace at once), when the kernel runs it.
    pub scan_files: Option<IterLink>,
}

impl Loaded {
    pub fn send_label(&self) -> &'static str {
        spec(HookId::Send(self.send_hook)).label
    }
}

/// Map sizes, from flags.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub max_sockets: u32,
    pub ring_buffer_bytes: u32,
}

/// Reads offsets from tracefs and BTF into the programs' `CONFIG`.
pub fn kernel_config(tracefs: &Tracefs, btf: &KernelBtf) -> Result<KernelConfig, LoadError> {
    let mut c = KernelConfig::EMPTY;
    // Optional: a kernel without this tracepoint uses other send hooks.
    if let Ok(f) = tracefs.format("sock", "sock_send_length") {
        c.send_len_sk = f.offset("sk", 8)?;
        c.send_len_protocol = f.offset("protocol", 2)?;
    }
    let f = tracefs.format("tcp", "tcp_retransmit_skb")?;
    c.retrans_skaddr = f.offset("skaddr", 8)?;
    let o = btf.sock_offsets()?;
    c.sk_family = o.family;
    c.sk_state = o.state;
    c.sk_daddr = o.daddr;
    c.sk_rcv_saddr = o.rcv_saddr;
    c.sk_dport = o.dport;
    c.sk_num = o.num;
    c.sk_v6_daddr = o.v6_daddr.unwrap_or(OFFSET_ABSENT);
    c.sk_v6_rcv_saddr = o.v6_rcv_saddr.unwrap_or(OFFSET_ABSENT);
    c.sk_net = o.net;
    c.net_ns_inum = o.net_ns_inum;
    c.sk_bound_dev_if = o.bound_dev_if;
    c.sk_protocol = o.protocol.unwrap_or(OFFSET_ABSENT);
    c.sk_wmem_queued = o.wmem_queued;
    c.sk_socket = o.sk_socket;
    c.socket_file = o.socket_file;
    c.sk_sndbuf = o.sndbuf;
    // Optional: without them, the reconcile passes over each namespace's TCP sockets.
    c.socket_sk = btf.member_offset("socket", "sk").unwrap_or(OFFSET_ABSENT);
    c.task_tgid = btf.member_offset("task_struct", "tgid").unwrap_or(OFFSET_ABSENT);
    // Optional: without them, the walk is refused and sock_diag samples.
    let _ = btf.tcp_offsets(&mut c);
    c.agent_tgid = std::process::id();
    Ok(c)
}

/// Loads the object and attaches the send hook (`forced`, or the best that works) and the
/// lifetime hooks its storage needs.
///
/// The hash map `SOCKS` serves the fallback send hooks only; with socket storage it stays
/// empty, yet its bucket array is allocated at its size (16 bytes a slot: 1 MiB at the default
/// 65,536). So the object is loaded with the map at its smallest first, and loaded again with
/// it at full size only when the hook chosen keeps a hash map (the send hooks' states kept from
/// the first load, which tried them all).
pub fn load(object: &[u8], cfg: &KernelConfig, sizes: Sizes, forced: Option<SendHook>) -> Result<Loaded, LoadError> {
    let first = load_sized(object, cfg, Sizes { max_sockets: 1, ..sizes }, forced)?;
    if first.send_hook.socket_storage() {
        return Ok(first);
    }
    let (hook, tried) = (first.send_hook, first.hooks.iter().filter(|h| h.role == Role::Send).cloned().collect::<Vec<_>>());
    drop(first);
    let mut loaded = load_sized(object, cfg, sizes, Some(hook))?;
    loaded.hooks.retain(|h| h.role != Role::Send);
    loaded.hooks.splice(0..0, tried);
    Ok(loaded)
}

fn load_sized(object: &[u8], cfg: &KernelConfig, sizes: Sizes, forced: Option<SendHook>) -> Result<Loaded, LoadError> {
    let mut ebpf = EbpfLoader::new()
        .override_global("CONFIG", cfg, true)
        .map_max_entries("SOCKS", sizes.max_sockets)
        .map_max_entries("EVENTS", sizes.ring_buffer_bytes)
        .load(object)?;
    let btf = Btf::from_sys_fs().map_err(|e| e.to_string());
    let mut hooks = Vec::new();
    // Every candidate is tried, so the log says why each refused one was refused; an
    // available hook below the chosen one is detached again at once.
    let mut chosen = None;
    for spec in HOOKS.iter().filter(|h| h.role == Role::Send) {
        let HookId::Send(hook) = spec.id else { continue };
        let state = if forced.is_some_and(|f| f != hook) {
            HookState::NotTried("another hook was forced with --send-hook")
        } else {
            let keep = chosen.is_none();
            match precondition(hook, cfg).and_then(|()| try_attach(&mut ebpf, spec, &btf, keep)) {
                Ok(()) if keep => {
                    chosen = Some(hook);
                    HookState::Attached
                }
                Ok(()) => HookState::Available,
                Err(why) => HookState::Refused(why),
            }
        };
        hooks.push(HookStatus::of(spec, state));
    }
    let Some(send_hook) = chosen else {
        let tried = hooks.iter().map(|h| format!("  - {}: {}", h.hook, describe(&h.state))).collect::<Vec<_>>().join("\n");
        return Err(LoadError::NoSendHook(tried));
    };
    for (id, required) in lifetime_hooks(send_hook) {
        let spec = spec(id);
        let state = match try_attach(&mut ebpf, spec, &btf, true) {
            Ok(()) => HookState::Attached,
            Err(err) if required => return Err(LoadError::Required { hook: spec.label, err }),
            Err(why) => HookState::Refused(why),
        };
        hooks.push(HookStatus::of(spec, state));
    }
    for spec in HOOKS.iter().filter(|h| h.role == Role::Lifetime) {
        if !hooks.iter().any(|h| h.id == spec.id) {
            let why = "not needed with this send hook's storage";
            hooks.push(HookStatus::of(spec, HookState::NotTried(why)));
        }
    }
    let (walk, state) = if !send_hook.socket_storage() {
        (None, HookState::NotTried("the walk reads socket storage; this send hook keeps a hash map (sock_diag samples)"))
    } else {
        iter_state(link_iter(&mut ebpf, &btf, cfg, HookId::Walk, Some("SK_STATE")), "sock_diag samples")
    };
    hooks.push(HookStatus::of(spec(HookId::Walk), state));
    let (scan, state) = iter_state(link_scan(&mut ebpf, &btf, cfg, send_hook), "sock_diag dumps reconcile");
    let (scan, program) = match scan {
        Some((link, program)) => (Some(link), program),
        None => (None, spec(HookId::Scan).program),
    };
    hooks.push(HookStatus { program, ..HookStatus::of(spec(HookId::Scan), state) });
    let (scan_files, state) = iter_state(link_scan_files(&mut ebpf, &btf, cfg, send_hook), "a pass over each namespace's TCP sockets reconciles");
    let (scan_files, program) = match scan_files {
        Some((link, program)) => (Some(link), program),
        None => (None, spec(HookId::ScanFiles).program),
    };
    hooks.push(HookStatus { program, ..HookStatus::of(spec(HookId::ScanFiles), state) });
    Ok(Loaded { ebpf, hooks, send_hook, walk, scan, scan_files })
}

fn iter_state<T>(r: Result<T, String>, instead: &str) -> (Option<T>, HookState) {
    match r {
        Ok(link) => (Some(link), HookState::Attached),
        Err(why) => (None, HookState::Refused(format!("{why} ({instead})"))),
    }
}

/// The variant of the reconcile's scan that puts stuck sockets into socket storage.
pub const SCAN_ADOPT_PROGRAM: &str = "scan_tcp_adopt";

/// The reconcile's scan: with socket storage, the variant that adopts stuck sockets into it
/// (the plain one where the kernel refuses it, saying why in the log).
fn link_scan(ebpf: &mut Ebpf, btf: &Result<Btf, String>, cfg: &KernelConfig, send_hook: SendHook) -> Result<(IterLink, &'static str), String> {
    if send_hook.socket_storage() {
        match link_iter_program(ebpf, btf, cfg, HookId::Scan, SCAN_ADOPT_PROGRAM, None) {
            Ok(link) => return Ok((link, SCAN_ADOPT_PROGRAM)),
            Err(why) => log::warn!("iter tcp: {SCAN_ADOPT_PROGRAM} refused ({why}); sockets stuck before their first tracked send are sampled with sock_diag"),
        }
    }
    Ok((link_iter(ebpf, btf, cfg, HookId::Scan, None)?, spec(HookId::Scan).program))
}

/// The variant of the pass over every process's files that adopts stuck sockets.
pub const SCAN_FILES_ADOPT_PROGRAM: &str = "scan_files_adopt";

/// The reconcile's pass over every process's files, the adopting variant with socket storage
/// (as [`link_scan`]).
fn link_scan_files(ebpf: &mut Ebpf, btf: &Result<Btf, String>, cfg: &KernelConfig, send_hook: SendHook) -> Result<(IterLink, &'static str), String> {
    if cfg.socket_sk == OFFSET_ABSENT || cfg.task_tgid == OFFSET_ABSENT {
        return Err("kernel BTF lacks socket.sk or task_struct.tgid".into());
    }
    if send_hook.socket_storage() {
        match link_iter_program(ebpf, btf, cfg, HookId::ScanFiles, SCAN_FILES_ADOPT_PROGRAM, None) {
            Ok(link) => return Ok((link, SCAN_FILES_ADOPT_PROGRAM)),
            Err(why) => log::warn!("iter task_file: {SCAN_FILES_ADOPT_PROGRAM} refused ({why}); the plain pass serves"),
        }
    }
    Ok((link_iter(ebpf, btf, cfg, HookId::ScanFiles, None)?, spec(HookId::ScanFiles).program))
}

/// Loads the iterator program of `id` and links it (to the map `map`, for a map iterator).
fn link_iter(ebpf: &mut Ebpf, btf: &Result<Btf, String>, cfg: &KernelConfig, id: HookId, map: Option<&str>) -> Result<IterLink, String> {
    link_iter_program(ebpf, btf, cfg, id, spec(id).program, map)
}

/// As [`link_iter`], with `program` in place of the table's.
fn link_iter_program(
    ebpf: &mut Ebpf,
    btf: &Result<Btf, String>,
    cfg: &KernelConfig,
    id: HookId,
    program_name: &str,
    map: Option<&str>,
) -> Result<IterLink, String> {
    if cfg.tcp_snd_una == OFFSET_ABSENT {
        return Err("kernel BTF lacks a tcp_sock field the iterators read".into());
    }
    let spec = spec(id);
    let Attach::Iter(target) = spec.attach else { return Err(format!("{} is not an iterator", spec.label)) };
    let btf = btf.as_ref().map_err(|e| format!("kernel BTF: {e}"))?;
    let p: &mut Iter = program(ebpf, program_name)?;
    p.load(target, btf).map_err(err)?;
    let prog: OwnedFd = p.fd().map_err(err)?.as_fd().try_clone_to_owned().map_err(err)?;
    let map = match map {
        None => None,
        Some(name) => match ebpf.map(name) {
            Some(aya::maps::Map::SkStorage(m)) => Some(m.fd().as_fd().try_clone_to_owned().map_err(err)?),
            _ => return Err(format!("socket storage map {name} missing from the eBPF object")),
        },
    };
    IterLink::create(prog.as_fd(), map.as_ref().map(|m| m.as_fd())).map_err(|e| format!("BPF_LINK_CREATE: {e}"))
}

/// What the programs of `hook` read that this kernel must have.
fn precondition(hook: SendHook, cfg: &KernelConfig) -> Result<(), String> {
    match hook {
        SendHook::SockSendLength if cfg.send_len_sk == OFFSET_ABSENT => Err("tracepoint sock:sock_send_length not present on this kernel".into()),
        SendHook::SockSendLengthBtf if cfg.sk_protocol == OFFSET_ABSENT => {
            Err("struct sock has no byte-addressable sk_protocol on this kernel (before 5.6)".into())
        }
        _ => Ok(()),
    }
}

/// Loads the object and attaches only the empty control program of send hook `hook` (for
/// `cargo xtask bench`: the dispatch cost of the hook itself). Dropping the result detaches it.
pub fn attach_control(object: &[u8], cfg: &KernelConfig, hook: SendHook) -> Result<Ebpf, String> {
    let (program, attach) = match hook {
        SendHook::TcpSendmsgLocked => ("control_tcp_sendmsg_locked", Attach::TpBtf("tcp_sendmsg_locked")),
        SendHook::SockSendLengthBtf => ("control_sock_send_length_btf", Attach::TpBtf("sock_send_length")),
        SendHook::SockSendLength => ("control_sock_send_length", Attach::Tracepoint("sock", "sock_send_length")),
        other => return Err(format!("no control program for {}", spec(HookId::Send(other)).label)),
    };
    let mut ebpf = EbpfLoader::new().override_global("CONFIG", cfg, true).load(object).map_err(err)?;
    let spec = HookSpec { program, attach, ..*spec(HookId::Send(hook)) };
    try_attach(&mut ebpf, &spec, &Btf::from_sys_fs().map_err(|e| e.to_string()), true)?;
    Ok(ebpf)
}

/// The lifetime hooks a send hook needs, and whether each is required.
fn lifetime_hooks(send: SendHook) -> Vec<(HookId, bool)> {
    if send.socket_storage() { vec![(HookId::RetransmitBtf, false)] } else { vec![(HookId::SetState, true), (HookId::Retransmit, false)] }
}

/// One line about a hook's state, for people.
pub fn describe(s: &HookState) -> String {
    match s {
        HookState::Attached => "attached".into(),
        HookState::Available => "available; not used: a preferred hook is attached".into(),
        HookState::NotTried(why) => format!("not tried: {why}"),
        HookState::Refused(why) => why.clone(),
    }
}

fn try_attach(ebpf: &mut Ebpf, spec: &HookSpec, btf: &Result<Btf, String>, keep: bool) -> Result<(), String> {
    let btf = || btf.as_ref().map_err(|e| format!("kernel BTF: {e}"));
    let name = spec.program;
    match spec.attach {
        Attach::TpBtf(tp) => {
            let p: &mut BtfTracePoint = program(ebpf, name)?;
            p.load(tp, btf()?).map_err(err)?;
            p.attach().map_err(err)?;
            if !keep {
                p.unload().map_err(err)?;
            }
        }
        Attach::Fentry(f) => {
            let p: &mut FEntry = program(ebpf, name)?;
            p.load(f, btf()?).map_err(err)?;
            p.attach().map_err(err)?;
            if !keep {
                p.unload().map_err(err)?;
            }
        }
        Attach::Tracepoint(cat, tp) => {
            let p: &mut TracePoint = program(ebpf, name)?;
            p.load().map_err(err)?;
            p.attach(cat, tp).map_err(err)?;
            if !keep {
                p.unload().map_err(err)?;
            }
        }
        Attach::RawTp(tp) => {
            let p: &mut RawTracePoint = program(ebpf, name)?;
            p.load().map_err(err)?;
            p.attach(tp).map_err(err)?;
            if !keep {
                p.unload().map_err(err)?;
            }
        }
        Attach::Kprobe(f) => {
            let p: &mut KProbe = program(ebpf, name)?;
            p.load().map_err(err)?;
            p.attach(f, 0).map_err(err)?;
            if !keep {
                p.unload().map_err(err)?;
            }
        }
        Attach::Iter(_) => return Err("an iterator is linked by link_iter".into()),
    }
    Ok(())
}

fn err(e: impl std::error::Error) -> String {
    // Include the source chain: aya puts the kernel's errno (and the verifier log) there.
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name).ok_or_else(|| format!("program {name} missing from the eBPF object"))?.try_into().map_err(err)
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
        }
    }

    #[test]
    fn send_hook_flags_are_the_cli_values() {
        use clap::ValueEnum as _;
        for h in HOOKS.iter().filter(|h| h.role == Role::Send) {
            let flag = h.flag.expect("every send hook has a flag");
            let choice = crate::cli::SendHookChoice::from_str(flag, false).unwrap_or_else(|e| panic!("{flag}: {e}"));
            assert_eq!(choice.hook().map(HookId::Send), Some(h.id), "{flag}");
        }
    }

    #[test]
    fn storage_decides_the_lifetime_hooks() {
        assert_eq!(lifetime_hooks(SendHook::TcpSendmsgLocked), vec![(HookId::RetransmitBtf, false)]);
        let hash = lifetime_hooks(SendHook::KprobeTcpSendmsg);
        assert!(hash.contains(&(HookId::SetState, true)), "{hash:?}");
    }
}
