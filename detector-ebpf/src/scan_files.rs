//! The reconcile's pass over every process's open files, in place of one pass per network
//! namespace: every TCP socket some process holds is looked at once, whatever its namespace,
//! and only the stuck ones are written out (or adopted into socket storage), as `scan` does.
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
use aya_ebpf::helpers::bpf_sock_from_file;

use crate::{
    config::conf,
    scan::scan_sock,
    sock::{btf_load as load, read_at},
    walk::IterMeta,
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
    let (sk_net, net_ns_inum) = (conf!(sk_net), conf!(net_ns_inum));
    let fill = |r: &mut detector_common::ScanRecord| {
        r.netns = read_at::<u32>(read_at::<u64>(sk as u64, sk_net)?, net_ns_inum)?;
        r.tgid = tgid;
        Ok(())
    };
    // SAFETY: `meta` is never null; `sk` is the socket of a file held for the call.
    unsafe { scan_sock((*ctx.meta).seq, sk, adopt, fill) }
}
