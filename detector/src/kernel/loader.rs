//! Loads the programs with this kernel's offsets: [`probe`] tries every hook of the table
//! alone (loaded and attached, then detached) and says what the kernel answered for each;
//! [`load`] loads one chosen configuration whole, with its own settings, and keeps it
//! attached. The choice between them is `configuration::choose`, a pure function; the loop
//! that steps down when a whole load is refused is the agent's (`agent::start_kernel`), which
//! `detector check` runs too.
use std::os::fd::{AsFd as _, OwnedFd};

use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::{BtfTracePoint, FEntry, Iter, KProbe, RawTracePoint, TracePoint},
};
use detector_common::{KernelConfig, OFFSET_ABSENT, SendHook};
use thiserror::Error;

use super::{
    btf::{BtfError, KernelBtf},
    configuration::{Configuration, Kind},
    hooks::{Attach, HOOKS, HookId, HookSpec, HookState, HookStatus, spec, summarize},
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
}

/// Map sizes, from flags.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub max_sockets: u32,
    pub ring_buffer_bytes: u32,
}

/// Reads offsets from BTF (and, where tracefs can be read, the classic tracepoints' format
/// files) into the programs' `CONFIG`. Without tracefs (not mounted and not mountable, as under
/// lockdown=confidentiality), the classic tracepoints are left without offsets and refused.
pub fn kernel_config(tracefs: Option<&Tracefs>, btf: &KernelBtf) -> Result<KernelConfig, LoadError> {
    let mut c = KernelConfig::EMPTY;
    if let Some(tracefs) = tracefs {
        // Optional: a kernel without this tracepoint uses other send hooks.
        if let Ok(f) = tracefs.format("sock", "sock_send_length") {
            c.send_len_sk = f.offset("sk", 8)?;
            c.send_len_protocol = f.offset("protocol", 2)?;
        }
        if let Ok(f) = tracefs.format("tcp", "tcp_retransmit_skb") {
            c.retrans_skaddr = f.offset("skaddr", 8)?;
        }
    }
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
    c.sk_cookie = btf.member_offset("sock_common", "skc_cookie").unwrap_or(OFFSET_ABSENT);
    // Optional: without them, the iterators are refused.
    let _ = btf.tcp_offsets(&mut c);
    // Optional: without MPTCP, its hooks have nothing to follow; without the task's flags, a
    // kernel thread's send is taken for its owner's.
    c.mptcp_first = btf.member_offset("mptcp_sock", "first").unwrap_or(OFFSET_ABSENT);
    c.task_flags = btf.member_offset("task_struct", "flags").unwrap_or(OFFSET_ABSENT);
    c.agent_tgid = std::process::id();
    Ok(c)
}

/// Kernel functions some hooks follow, which not every kernel has (from its BTF).
#[derive(Debug, Clone, Copy, Default)]
pub struct Functions {
    /// Before 6.5: pages (sendfile, splice, kTLS) are sent here, not through
    /// `tcp_sendmsg_locked`.
    pub do_tcp_sendpages: bool,
}

impl Functions {
    pub fn of(btf: &KernelBtf) -> Self {
        Functions { do_tcp_sendpages: btf.has_function("do_tcp_sendpages") }
    }
}

/// Tries every hook of the table alone, in one object loaded with the smallest maps: each is
/// loaded and attached, then detached. What the kernel said of each, with the verifier's log
/// of a refusal when it wrote one; a hook with nothing to follow here is not tried.
pub fn probe(object: &[u8], cfg: &KernelConfig, functions: Functions) -> Result<Vec<HookStatus>, LoadError> {
    let mut ebpf = open(object, cfg, Sizes { max_sockets: 1, ring_buffer_bytes: 4096 }, 1)?;
    let btf = Btf::from_sys_fs().map_err(|e| e.to_string());
    let mut out = Vec::with_capacity(HOOKS.len());
    for h in &HOOKS {
        if let Some(why) = not_applicable(h.id, cfg, functions) {
            out.push(HookStatus::of(h.id, HookState::NotTried(why)));
            continue;
        }
        let tried = precondition(h.id, cfg).and_then(|()| match h.attach {
            Attach::Iter { .. } => link_iter(&mut ebpf, &btf, h).map(drop),
            _ => attach(&mut ebpf, h, &btf, false),
        });
        out.push(match tried {
            Ok(()) => HookStatus::of(h.id, HookState::Available),
            Err(e) => refusal(h.id, &e),
        });
    }
    Ok(out)
}

/// The status of a hook the kernel refused with `err`: one line, the verifier's log apart.
pub fn refusal(id: HookId, err: &str) -> HookStatus {
    let (line, log) = summarize(err);
    HookStatus { log, ..HookStatus::of(id, HookState::Refused(line)) }
}

/// A configuration, loaded and attached.
pub struct Loaded {
    pub ebpf: Ebpf,
    /// What runs: the configuration asked for, less any optional piece refused here (whose
    /// refusal is in `refused`).
    pub configuration: Configuration,
    /// Optional pieces the kernel refused in this load.
    pub refused: Vec<HookStatus>,
    /// The sampling walk (storage-walk only).
    pub walk: Option<IterLink>,
    /// The reconcile's pass over TCP sockets, when the kernel runs it.
    pub scan: Option<IterLink>,
    /// Its pass over every process's files (every namespace at once), when the kernel runs it.
    pub scan_files: Option<IterLink>,
}

/// Loads `c` whole, in a new object with its settings (the hash map sized only for the
/// hash-map kind; sends announced again per epoch only where sock_diag samples storage).
/// A required piece the kernel refuses is returned with why; an optional one is left out.
pub fn load(object: &[u8], cfg: &KernelConfig, sizes: Sizes, c: &Configuration) -> Result<Loaded, (HookId, String)> {
    let required = |id: HookId| move |why: String| (id, why);
    let mut cfg = *cfg;
    cfg.announce = u32::from(c.kind == Kind::StorageDiag);
    let sizes = Sizes { max_sockets: if c.kind.socket_storage() { 1 } else { sizes.max_sockets }, ..sizes };
    let mptcp_lru = if c.paths.contains(&HookId::Path(SendHook::KprobeMptcpSendmsg)) || c.send == SendHook::SockSendLength { MPTCP_LRU } else { 1 };
    let mut ebpf = open(object, &cfg, sizes, mptcp_lru).map_err(|e| (HookId::Send(c.send), e.to_string()))?;
    let btf = Btf::from_sys_fs().map_err(|e| e.to_string());
    let send = HookId::Send(c.send);
    attach(&mut ebpf, spec(send), &btf, true).map_err(required(send))?;
    let mut refused = Vec::new();
    let mut paths = Vec::new();
    for &id in &c.paths {
        match attach(&mut ebpf, spec(id), &btf, true) {
            Ok(()) => paths.push(id),
            Err(why) => refused.push(refusal(id, &why)),
        }
    }
    let mut lifetime = Vec::new();
    for &id in &c.lifetime {
        match attach(&mut ebpf, spec(id), &btf, true) {
            Ok(()) => lifetime.push(id),
            Err(why) if c.requires(id) => return Err((id, why)),
            Err(why) => refused.push(refusal(id, &why)),
        }
    }
    let walk = if c.kind.walks() { Some(link_iter(&mut ebpf, &btf, spec(HookId::Walk)).map_err(required(HookId::Walk))?) } else { None };
    let (scan, startup) = link_first(&mut ebpf, &btf, c.startup, &mut refused);
    let (scan_files, later) = link_first(&mut ebpf, &btf, c.later, &mut refused);
    let configuration = Configuration { paths, lifetime, startup, later, ..c.clone() };
    Ok(Loaded { ebpf, configuration, refused, walk, scan, scan_files })
}

/// The reconcile pass `chosen` or, where the kernel refuses it here, its plain variant; the
/// refusals go to `refused`.
fn link_first(ebpf: &mut Ebpf, btf: &Result<Btf, String>, chosen: Option<HookId>, refused: &mut Vec<HookStatus>) -> (Option<IterLink>, Option<HookId>) {
    let plain = |id| match id {
        HookId::ScanAdopt => Some(HookId::Scan),
        HookId::ScanFilesAdopt => Some(HookId::ScanFiles),
        _ => None,
    };
    let mut next = chosen;
    while let Some(id) = next {
        match link_iter(ebpf, btf, spec(id)) {
            Ok(link) => return (Some(link), Some(id)),
            Err(why) => refused.push(refusal(id, &why)),
        }
        next = plain(id);
    }
    (None, None)
}

/// The MPTCP LRU map's size where a fallback hook uses it (see `maps::MPTCP_LRU`).
const MPTCP_LRU: u32 = 4096;

fn open(object: &[u8], cfg: &KernelConfig, sizes: Sizes, mptcp_lru: u32) -> Result<Ebpf, LoadError> {
    Ok(EbpfLoader::new()
        .override_global("CONFIG", cfg, true)
        .map_max_entries("SOCKS", sizes.max_sockets)
        .map_max_entries("MPTCP_LRU", mptcp_lru)
        .map_max_entries("EVENTS", sizes.ring_buffer_bytes)
        .load(object)?)
}

/// Why `id` has nothing to do on this kernel, if so: the function or protocol it follows is
/// not there (not a refusal: nothing is missing).
fn not_applicable(id: HookId, cfg: &KernelConfig, functions: Functions) -> Option<&'static str> {
    match id {
        HookId::Path(SendHook::FentryDoTcpSendpages | SendHook::KprobeDoTcpSendpages) if !functions.do_tcp_sendpages => {
            Some("no do_tcp_sendpages: this kernel sends pages (sendfile, splice, kTLS) through tcp_sendmsg_locked (6.5+)")
        }
        HookId::Path(h) if h.mptcp() && cfg.mptcp_first == OFFSET_ABSENT => Some("this kernel has no Multipath TCP (CONFIG_MPTCP)"),
        _ => None,
    }
}

/// What the programs of `id` read that this kernel must have.
fn precondition(id: HookId, cfg: &KernelConfig) -> Result<(), String> {
    let absent = |o: u32| o == OFFSET_ABSENT;
    match id {
        HookId::Send(SendHook::SockSendLength) if absent(cfg.send_len_sk) => {
            Err("tracepoint sock:sock_send_length not present on this kernel, or tracefs unreadable".into())
        }
        HookId::Send(SendHook::SockSendLengthBtf) if absent(cfg.sk_protocol) => {
            Err("struct sock has no byte-addressable sk_protocol on this kernel (before 5.6)".into())
        }
        HookId::Retransmit if absent(cfg.retrans_skaddr) => Err("tracepoint tcp:tcp_retransmit_skb not present, or tracefs unreadable".into()),
        HookId::Walk | HookId::Scan | HookId::ScanAdopt if absent(cfg.tcp_snd_una) => Err("kernel BTF lacks a tcp_sock field the iterators read".into()),
        HookId::ScanFiles | HookId::ScanFilesAdopt if absent(cfg.socket_sk) || absent(cfg.task_tgid) || absent(cfg.tcp_snd_una) => {
            Err("kernel BTF lacks socket.sk, task_struct.tgid or a tcp_sock field".into())
        }
        _ => Ok(()),
    }
}

/// Loads the iterator program of `h` and links it (to its map, for a map iterator).
fn link_iter(ebpf: &mut Ebpf, btf: &Result<Btf, String>, h: &HookSpec) -> Result<IterLink, String> {
    let Attach::Iter { target, map } = h.attach else { return Err(format!("{} is not an iterator", h.label)) };
    let btf = btf.as_ref().map_err(|e| format!("kernel BTF: {e}"))?;
    let p: &mut Iter = program(ebpf, h.program)?;
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

/// Loads the empty control program of send hook `hook` and attaches it alone (for `cargo xtask
/// bench`: the dispatch cost of the hook itself). Dropping the result detaches it.
#[cfg(feature = "bench-control")]
pub fn attach_control(object: &[u8], cfg: &KernelConfig, hook: SendHook) -> Result<Ebpf, String> {
    let (program, attach_as) = match hook {
        SendHook::TcpSendmsgLocked => ("control_tcp_sendmsg_locked", Attach::TpBtf("tcp_sendmsg_locked")),
        SendHook::SockSendLengthBtf => ("control_sock_send_length_btf", Attach::TpBtf("sock_send_length")),
        SendHook::SockSendLength => ("control_sock_send_length", Attach::Tracepoint("sock", "sock_send_length")),
        other => return Err(format!("no control program for {}", spec(HookId::Send(other)).label)),
    };
    let mut ebpf = EbpfLoader::new().override_global("CONFIG", cfg, true).load(object).map_err(err)?;
    let control = HookSpec { program, attach: attach_as, ..*spec(HookId::Send(hook)) };
    attach(&mut ebpf, &control, &Btf::from_sys_fs().map_err(|e| e.to_string()), true)?;
    Ok(ebpf)
}

/// Loads and attaches the program of `h` (not an iterator); unless `keep`, unloads it again.
fn attach(ebpf: &mut Ebpf, h: &HookSpec, btf: &Result<Btf, String>, keep: bool) -> Result<(), String> {
    let btf = || btf.as_ref().map_err(|e| format!("kernel BTF: {e}"));
    let name = h.program;
    match h.attach {
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
        Attach::Iter { .. } => return Err("an iterator is linked by link_iter".into()),
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
    fn what_a_kernel_lacks_is_refused_before_loading() {
        let mut cfg = KernelConfig::EMPTY;
        assert!(precondition(HookId::Send(SendHook::SockSendLength), &cfg).unwrap_err().contains("tracefs"));
        assert!(precondition(HookId::Retransmit, &cfg).is_err());
        assert!(precondition(HookId::Walk, &cfg).is_err());
        assert!(precondition(HookId::Send(SendHook::TcpSendmsgLocked), &cfg).is_ok());
        cfg.send_len_sk = 8;
        cfg.retrans_skaddr = 8;
        assert!(precondition(HookId::Send(SendHook::SockSendLength), &cfg).is_ok() && precondition(HookId::Retransmit, &cfg).is_ok());
    }
}
