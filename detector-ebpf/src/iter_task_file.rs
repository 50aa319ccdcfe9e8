//! The reconcile's pass over every process's open files, in place of one pass per network
//! namespace: every TCP socket some process holds is looked at once, whatever its namespace,
//! and only the stuck ones are written out (or adopted into socket storage), as `iter_tcp` does.
//! A pass over one namespace's TCP sockets walks the kernel's established hash table, which
//! all namespaces share, so N namespaces cost N walks of every socket of the node; this pass
//! costs one look at each open file of the node.
//!
//! Kernel: `DEFINE_BPF_ITER_FUNC(task_file, struct bpf_iter_meta *meta, struct task_struct
//! *task, u32 fd, struct file *file)` (kernel/bpf/task_iter.c): called once per open file of
//! each process (threads sharing their leader's file table are skipped), then once with
//! `task` and `file` null. `bpf_sock_from_file` (5.11+) gives the file's socket, null for any
//! other file.
//!
//! It does not see sockets no process holds (an owner closed them: the kernel's orphan limits
//! end those) nor kernel sockets (their sends reach the send hooks): the agent's start-up
//! reconcile passes over each namespace's TCP sockets for those that were stuck before it ran.
//!
//! Two programs. `scan_files_adopt` (socket storage with the kernel walk) hands the socket to
//! helpers (`bpf_skc_to_tcp_sock`, `bpf_sk_storage_get`): the verifier must accept the
//! `struct sock *` read from the file's `struct socket`, and some builds mark any pointer read
//! through one it does not trust (`bpf_sock_from_file`'s answer) as untrusted, which no helper
//! takes (some builds of one kernel version do, others not: README's supported-kernels notes
//! name them). `scan_files` reads the socket with loads
//! alone, which the verifier allows through any BTF pointer: it knows only `struct sock`
//! there, so the queue test is `sk_wmem_queued` (memory of the write and retransmit queues,
//! non-zero exactly while bytes or a FIN wait to be acknowledged) and the cookie is the one
//! the socket has (0 if nothing asked for it yet: the agent then asks sock_diag).
use aya_ebpf::helpers::bpf_sock_from_file;
use detector_common::{AF_INET, AF_INET6, IPPROTO_TCP, OFFSET_ABSENT, ScanRecord, TCP_CLOSE_WAIT};

use crate::{
    config::conf,
    iter_tcp::{judged_state, scan_sock},
    sock::{btf_load as load, netns_of},
    walk::{IterMeta, write},
};

/// `struct bpf_iter__task_file`: meta, the task, the fd, the file (pointers 8-byte fields).
#[repr(C)]
struct IterCtx {
    meta: *const IterMeta,
    task: *const u8,
    fd: u32,
    file: *const u8,
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task_file")]
pub extern "C" fn scan_files(ctx: *mut core::ffi::c_void) -> i32 {
    // SAFETY: the kernel passes this iterator's context, valid for the call.
    let _ = unsafe { try_scan_files(&*(ctx as *const IterCtx), false) };
    0
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task_file")]
pub extern "C" fn scan_files_adopt(ctx: *mut core::ffi::c_void) -> i32 {
    // SAFETY: as in `scan_files`.
    let _ = unsafe { try_scan_files(&*(ctx as *const IterCtx), true) };
    0
}

/// # Safety
/// `ctx` is the context the kernel passed: `meta` valid, `task` and `file` null or valid.
#[inline(always)]
unsafe fn try_scan_files(ctx: &IterCtx, adopt: bool) -> Result<(), i64> {
    let (task, file) = (ctx.task, ctx.file);
    if task.is_null() || file.is_null() {
        return Ok(());
    }
    // SAFETY: a file of the task, held for the call; null unless it is a socket.
    let socket = unsafe { bpf_sock_from_file(file as *mut _) } as *const u8;
    if socket.is_null() {
        return Ok(());
    }
    let sk: *const u8 = load(socket, conf!(socket_sk));
    if sk.is_null() {
        return Ok(());
    }
    let tgid: u32 = load(task, conf!(task_tgid));
    // SAFETY: `meta` is never null.
    let seq = unsafe { (*ctx.meta).seq };
    if !adopt {
        return held(seq, sk, tgid);
    }
    let fill = |r: &mut ScanRecord| {
        r.netns = netns_of(sk);
        r.tgid = tgid;
        Ok(())
    };
    // SAFETY: `sk` is the socket of a file held for the call.
    unsafe { scan_sock(seq, sk, true, fill) }
}

/// Writes the record of `sk`, a socket a process holds, if it is a stuck TCP socket; by loads
/// alone (see the module's comment).
#[inline(always)]
fn held(seq: *mut u8, sk: *const u8, tgid: u32) -> Result<(), i64> {
    let state: u8 = load(sk, conf!(sk_state));
    if !judged_state(state) || conf!(sk_protocol) == OFFSET_ABSENT || load::<u16>(sk, conf!(sk_protocol)) != IPPROTO_TCP {
        return Ok(());
    }
    let queued: i32 = load(sk, conf!(sk_wmem_queued));
    if queued <= 0 && state != TCP_CLOSE_WAIT {
        return Ok(());
    }
    let family: u16 = load(sk, conf!(sk_family));
    let mut r = ScanRecord {
        cookie: load(sk, conf!(sk_cookie)),
        sport: load(sk, conf!(sk_num)),
        dport: u16::from_be(load(sk, conf!(sk_dport))),
        family,
        state,
        bound_dev_if: load(sk, conf!(sk_bound_dev_if)),
        queued: queued.max(0) as u32,
        netns: netns_of(sk),
        tgid,
        ..ScanRecord::default()
    };
    if family == AF_INET {
        r.saddr[..4].copy_from_slice(&load::<[u8; 4]>(sk, conf!(sk_rcv_saddr)));
        r.daddr[..4].copy_from_slice(&load::<[u8; 4]>(sk, conf!(sk_daddr)));
    } else if family == AF_INET6 && conf!(sk_v6_daddr) != OFFSET_ABSENT {
        r.saddr = load(sk, conf!(sk_v6_rcv_saddr));
        r.daddr = load(sk, conf!(sk_v6_daddr));
    } else {
        return Ok(());
    }
    write(seq, &r)
}
