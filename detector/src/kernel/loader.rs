//! Loads the programs with this kernel's offsets and attaches the best hooks it offers.
//!
//! Send path, in order of preference (the first that loads and attaches wins):
//! 1. tracepoint `sock:sock_send_length`: stable ABI, cheapest, carries family and protocol;
//! 2. raw tracepoint `tcp_sendmsg_locked`;
//! 3. fentry `tcp_sendmsg`;
//! 4. kprobe `tcp_sendmsg`.
//!
//! Lifetime and progress: `sock:inet_sock_set_state` (required) and `tcp:tcp_retransmit_skb`.
use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::{FEntry, KProbe, RawTracePoint, TracePoint},
};
use detector_common::{KernelConfig, OFFSET_ABSENT};
use serde::Serialize;
use thiserror::Error;

use super::{
    btf::{BtfError, KernelBtf},
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
        "no send-path hook could be attached; tried:\n{0}\nthe kernel needs one of: tracepoint sock:sock_send_length (4.x+ with CONFIG_TRACEPOINTS), raw tracepoint tcp_sendmsg_locked, fentry or kprobe on tcp_sendmsg"
    )]
    NoSendHook(String),
    #[error("required hook {hook} could not be attached: {err}")]
    Required { hook: String, err: String },
}

/// How one hook fared, for the start-up log, `detector status` and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct HookStatus {
    pub role: &'static str,
    pub hook: &'static str,
    pub attached: bool,
    /// Why it was refused, or "attached".
    pub detail: String,
}

pub struct Loaded {
    pub ebpf: Ebpf,
    pub hooks: Vec<HookStatus>,
    /// The send hook in use.
    pub send_hook: &'static str,
}

/// Map sizes, from flags.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub max_sockets: u32,
    pub ring_buffer_bytes: u32,
}

/// Which send hook to use: `None` picks the best available; `Some(i)` forces candidate `i`
/// (0 = sock_send_length, 1 = raw tcp_sendmsg_locked, 2 = fentry, 3 = kprobe).
pub type SendHookChoice = Option<usize>;

/// Reads offsets from tracefs and BTF into the programs' `CONFIG`.
pub fn kernel_config(tracefs: &Tracefs, btf: &KernelBtf) -> Result<KernelConfig, LoadError> {
    let mut c = KernelConfig::EMPTY;
    // Optional: a kernel without this tracepoint falls back to other send hooks.
    if let Ok(f) = tracefs.format("sock", "sock_send_length") {
        c.send_len_sk = f.offset("sk", 8)?;
        c.send_len_family = f.offset("family", 2)?;
        c.send_len_protocol = f.offset("protocol", 2)?;
        c.send_len_ret = f.offset("ret", 4)?;
    }
    let f = tracefs.format("tcp", "tcp_retransmit_skb")?;
    c.retrans_skaddr = f.offset("skaddr", 8)?;
    let f = tracefs.format("sock", "inet_sock_set_state")?;
    c.state_skaddr = f.offset("skaddr", 8)?;
    c.state_oldstate = f.offset("oldstate", 4)?;
    c.state_newstate = f.offset("newstate", 4)?;
    c.state_protocol = f.offset("protocol", 2)?;
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
    c.agent_tgid = std::process::id();
    Ok(c)
}

pub fn load(
    object: &[u8],
    cfg: &KernelConfig,
    sizes: Sizes,
    choice: SendHookChoice,
) -> Result<Loaded, LoadError> {
    let mut ebpf = EbpfLoader::new()
        .override_global("CONFIG", cfg, true)
        .map_max_entries("SOCKS", sizes.max_sockets)
        .map_max_entries("EVENTS", sizes.ring_buffer_bytes)
        .load(object)?;
    let mut hooks = Vec::new();

    for (prog, cat, name, hook) in [
        ("inet_sock_set_state", "sock", "inet_sock_set_state", "tracepoint sock:inet_sock_set_state"),
        ("tcp_retransmit_skb", "tcp", "tcp_retransmit_skb", "tracepoint tcp:tcp_retransmit_skb"),
    ] {
        attach_tracepoint(&mut ebpf, prog, cat, name).map_err(|err| LoadError::Required {
            hook: hook.into(),
            err,
        })?;
        hooks.push(HookStatus {
            role: "lifetime",
            hook,
            attached: true,
            detail: "attached".into(),
        });
    }

    // Every candidate is tried, so the log says why each refused one was refused; an
    // available hook below the chosen one is detached again at once.
    let mut send_hook = None;
    type Try = fn(&mut Ebpf, &KernelConfig, bool) -> Result<(), String>;
    let candidates: [(&'static str, Try); 4] = [
        ("tracepoint sock:sock_send_length", |e, c, keep| {
            if c.send_len_sk == OFFSET_ABSENT {
                return Err("tracepoint not present on this kernel".into());
            }
            let p: &mut TracePoint = program(e, "sock_send_length")?;
            p.load().map_err(err)?;
            p.attach("sock", "sock_send_length").map_err(err)?;
            if !keep {
                p.unload().map_err(err)?;
            }
            Ok(())
        }),
        ("raw_tracepoint tcp_sendmsg_locked", |e, _, keep| {
            let p: &mut RawTracePoint = program(e, "tcp_sendmsg_locked")?;
            p.load().map_err(err)?;
            p.attach("tcp_sendmsg_locked").map_err(err)?;
            if !keep {
                p.unload().map_err(err)?;
            }
            Ok(())
        }),
        ("fentry tcp_sendmsg", |e, _, keep| {
            let btf = Btf::from_sys_fs().map_err(err)?;
            let p: &mut FEntry = program(e, "fentry_tcp_sendmsg")?;
            p.load("tcp_sendmsg", &btf).map_err(err)?;
            p.attach().map_err(err)?;
            if !keep {
                p.unload().map_err(err)?;
            }
            Ok(())
        }),
        ("kprobe tcp_sendmsg", |e, _, keep| {
            let p: &mut KProbe = program(e, "kprobe_tcp_sendmsg")?;
            p.load().map_err(err)?;
            p.attach("tcp_sendmsg", 0).map_err(err)?;
            if !keep {
                p.unload().map_err(err)?;
            }
            Ok(())
        }),
    ];
    for (i, (hook, try_attach)) in candidates.into_iter().enumerate() {
        if choice.is_some_and(|c| c != i) {
            hooks.push(HookStatus {
                role: "send",
                hook,
                attached: false,
                detail: "not tried: another hook was forced with --send-hook".into(),
            });
            continue;
        }
        let keep = send_hook.is_none();
        let (attached, detail) = match try_attach(&mut ebpf, cfg, keep) {
            Ok(()) if keep => {
                send_hook = Some(hook);
                (true, "attached".to_string())
            }
            Ok(()) => (false, "available; not used: a preferred hook is attached".into()),
            Err(detail) => (false, detail),
        };
        hooks.push(HookStatus {
            role: "send",
            hook,
            attached,
            detail,
        });
    }
    let Some(send_hook) = send_hook else {
        let tried = hooks
            .iter()
            .filter(|h| h.role == "send")
            .map(|h| format!("  - {}: {}", h.hook, h.detail))
            .collect::<Vec<_>>()
            .join("\n");
        return Err(LoadError::NoSendHook(tried));
    };
    Ok(Loaded {
        ebpf,
        hooks,
        send_hook,
    })
}

fn err(e: impl std::error::Error) -> String {
    // Include the source chain: aya puts the kernel's errno there.
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
    ebpf.program_mut(name)
        .ok_or_else(|| format!("program {name} missing from the eBPF object"))?
        .try_into()
        .map_err(err)
}

fn attach_tracepoint(ebpf: &mut Ebpf, prog: &str, category: &str, name: &str) -> Result<(), String> {
    let p: &mut TracePoint = program(ebpf, prog)?;
    p.load().map_err(err)?;
    p.attach(category, name).map_err(err).map(drop)
}
