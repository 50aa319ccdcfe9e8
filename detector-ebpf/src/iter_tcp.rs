//! The reconcile's pass over one network namespace's TCP sockets (the namespace of the agent
//! thread that opens it), in place of a sock_diag dump: every socket is looked at in the
//! kernel, and only those stuck (bytes waiting, or the peer's FIN with the owner holding on)
//! are written out, so the agent reads a few records instead of every socket of the node.
//!
//! Kernel: `DEFINE_BPF_ITER_FUNC(tcp, struct bpf_iter_meta *meta, struct sock_common
//! *sk_common, uid_t uid)` (net/ipv4/tcp_ipv4.c): called once per socket of the namespace's
//! TCP hash tables (listening, established, time-wait and request sockets alike), then once
//! with `sk_common` null.
//!
//! Two programs, one per kind of send-hook storage. With socket storage (`scan_tcp_adopt`), a
//! stuck socket whose send buffer is at least half full, or in CLOSE_WAIT, is given a record
//! in `SK_STATE` (sender unknown) and written out only if it could not be: from then on the sampling walk samples it with the others, so a socket wedged
//! before the agent started costs no sock_diag lookup per pass. With the hash map
//! (`scan_tcp`), every stuck socket is written out and the agent samples it with sock_diag.
use aya_ebpf::helpers::{bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_skc_to_tcp_sock};
use detector_common::{AF_INET, AF_INET6, ScanRecord, SockState, TCP_CLOSE_WAIT, TCP_CLOSING, TCP_ESTABLISHED, TCP_FIN_WAIT1, TCP_LAST_ACK};

use crate::{
    config::conf,
    sock::{BtfSock, btf_load as load},
    track::{Storage, Store},
    walk::{IterMeta, write},
};

/// `struct bpf_iter__tcp`: meta, the socket, its owner's uid.
#[repr(C)]
struct IterCtx {
    meta: *const IterMeta,
    sk_common: *const u8,
    uid: u32,
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub extern "C" fn scan_tcp(ctx: *mut core::ffi::c_void) -> i32 {
    // SAFETY: the kernel passes this iterator's context, valid for the call.
    let _ = unsafe { try_scan(&*(ctx as *const IterCtx), false) };
    0
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub extern "C" fn scan_tcp_adopt(ctx: *mut core::ffi::c_void) -> i32 {
    // SAFETY: as in `scan_tcp`.
    let _ = unsafe { try_scan(&*(ctx as *const IterCtx), true) };
    0
}

/// # Safety
/// `ctx` is the context the kernel passed: `meta` valid, `sk_common` null or valid.
#[inline(always)]
unsafe fn try_scan(ctx: &IterCtx, adopt: bool) -> Result<(), i64> {
    if ctx.sk_common.is_null() {
        return Ok(());
    }
    // SAFETY: `meta` is never null; `sk_common` is a socket held for the call.
    unsafe { scan_sock((*ctx.meta).seq, ctx.sk_common, adopt, |_| Ok(())) }
}

/// Writes the record of `sk` if it is stuck (and, with `adopt`, could not be put into socket
/// storage); `fill` adds what the pass knows beyond the socket (its namespace, its holder).
///
/// # Safety
/// `seq` is the iterator's seq_file; `sk` a BTF pointer to a socket (`sock_common` or
/// `sock`) held for the call, not null.
#[inline(always)]
pub unsafe fn scan_sock(seq: *mut u8, sk: *const u8, adopt: bool, fill: impl FnOnce(&mut ScanRecord) -> Result<(), i64>) -> Result<(), i64> {
    // Only states in which a socket can be stuck; this also skips time-wait and request
    // sockets, which are not full sockets.
    let state: u8 = load(sk, conf!(sk_state));
    if !judged_state(state) {
        return Ok(());
    }
    // SAFETY: a socket held for the call; its tcp_sock view (null unless a full TCP socket).
    let tp = unsafe { bpf_skc_to_tcp_sock(sk as *mut _) } as *const u8;
    if tp.is_null() {
        return Ok(());
    }
    let queued = load::<u32>(tp, conf!(tcp_write_seq)).wrapping_sub(load::<u32>(tp, conf!(tcp_snd_una)));
    if queued == 0 && state != TCP_CLOSE_WAIT {
        return Ok(());
    }
    // Adopted only where a send hook would have tracked it (its send buffer at least half
    // full) or it waits on its owner (CLOSE_WAIT): a healthy socket with a few bytes in flight
    // at this moment is written out as before (sampled once, then dropped as idle) rather than
    // kept in storage and walked every pass.
    // SAFETY: a full socket (its tcp_sock view), held for the call: a BTF pointer.
    let sock = unsafe { BtfSock::new(tp) };
    if adopt && (sock.backlogged() || state == TCP_CLOSE_WAIT) && in_storage(sock) {
        return Ok(());
    }
    let family: u16 = load(sk, conf!(sk_family));
    let mut r = ScanRecord {
        // SAFETY: a valid socket; the cookie is made on first use, as sock_diag would.
        cookie: unsafe { bpf_get_socket_cookie(sk as *mut _) },
        sport: load(sk, conf!(sk_num)),
        dport: u16::from_be(load(sk, conf!(sk_dport))),
        family,
        state,
        bound_dev_if: load(sk, conf!(sk_bound_dev_if)),
        queued,
        ..ScanRecord::default()
    };
    if family == AF_INET {
        r.saddr[..4].copy_from_slice(&load::<[u8; 4]>(sk, conf!(sk_rcv_saddr)));
        r.daddr[..4].copy_from_slice(&load::<[u8; 4]>(sk, conf!(sk_daddr)));
    } else if family == AF_INET6 && conf!(sk_v6_daddr) != detector_common::OFFSET_ABSENT {
        r.saddr = load(sk, conf!(sk_v6_rcv_saddr));
        r.daddr = load(sk, conf!(sk_v6_daddr));
    } else {
        return Ok(());
    }
    fill(&mut r)?;
    write(seq, &r)
}

/// The states in which a socket can be stuck: bytes waiting, or the peer's FIN with the owner
/// holding on.
#[inline(always)]
pub fn judged_state(state: u8) -> bool {
    matches!(state, TCP_ESTABLISHED | TCP_CLOSE_WAIT | TCP_FIN_WAIT1 | TCP_CLOSING | TCP_LAST_ACK)
}

/// Whether the socket is in socket storage, where the sampling walk finds it: it was already
/// (a send hook tracks it, or an earlier pass put it there), or it is now, with its addresses
/// and no sender (`tgid` 0: the agent finds its holders in /proc).
#[inline(always)]
fn in_storage(sk: BtfSock) -> bool {
    let store = Storage(sk);
    if store.get().is_some() {
        return true;
    }
    let mut st = SockState {
        // SAFETY: no preconditions.
        first_send_ns: unsafe { bpf_ktime_get_ns() },
        ..SockState::default()
    };
    if sk.read_tuple(&mut st.tuple).is_err() {
        return false;
    }
    // `false`: another CPU's send hook created it meanwhile (then it is there), or no memory.
    store.create(&st) || store.get().is_some()
}
