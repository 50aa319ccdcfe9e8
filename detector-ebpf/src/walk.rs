//! Sampling in the kernel: a walk of the socket storage map (`SK_STATE`), one per sweep pass,
//! across every network namespace at once. It reads what `tcp_info` is made of straight from
//! `struct tcp_sock` and writes a record only for the sockets with bytes waiting (or the peer's
//! FIN with the owner holding on), plus one for each socket that had some at the last walk and
//! no longer does. A tracked socket with nothing waiting costs a few loads and no record, so
//! the cost follows the sockets with bytes in flight, not every socket ever tracked.
//!
//! Kernel: `DEFINE_BPF_ITER_FUNC(bpf_sk_storage_map, struct bpf_iter_meta *meta,
//! struct bpf_map *map, struct sock *sk, void *value)` (net/core/bpf_sk_storage.c): called
//! once per (socket, value) of the map, then once with `sk` null at the end. The agent creates
//! the iterator link with the map's fd (`BPF_LINK_CREATE`) and reads one walk per
//! `BPF_ITER_CREATE` file.
use aya_ebpf::helpers::{bpf_get_socket_cookie, bpf_jiffies64, bpf_ktime_get_ns, bpf_seq_write, bpf_skc_to_tcp_sock};
use detector_common::{SockState, TCP_CLOSE, TCP_CLOSE_WAIT, WALK_TOLD, WalkClock, WalkKind, WalkRecord};

use crate::{config::conf, sock::btf_load as load};

/// `struct bpf_iter__bpf_sk_storage_map`: four pointers.
#[repr(C)]
struct IterCtx {
    meta: *const IterMeta,
    map: *const u8,
    sk: *const u8,
    value: *mut SockState,
}

/// `struct bpf_iter_meta`: the seq_file, the session and the record number.
#[repr(C)]
pub struct IterMeta {
    pub seq: *mut u8,
    pub session_id: u64,
    pub seq_num: u64,
}

/// The program. A thin entry point: [`try_walk`] does the work.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/bpf_sk_storage_map")]
pub extern "C" fn walk_sk_storage(ctx: *mut core::ffi::c_void) -> i32 {
    // SAFETY: the kernel passes this iterator's context, valid for the call.
    let _ = unsafe { try_walk(&*(ctx as *const IterCtx)) };
    0
}

/// # Safety
/// `ctx` is the context the kernel passed: `meta` valid, `sk` and `value` null or valid.
unsafe fn try_walk(ctx: &IterCtx) -> Result<(), i64> {
    // SAFETY: `meta` is never null.
    let meta = unsafe { &*ctx.meta };
    let seq = meta.seq;
    if meta.seq_num == 0 {
        // SAFETY: no preconditions.
        let clock = WalkClock { kind: WalkKind::Clock as u8, _pad: [0; 7], jiffies: unsafe { bpf_jiffies64() }, ktime_ns: unsafe { bpf_ktime_get_ns() } };
        write(seq, &clock)?;
    }
    if ctx.sk.is_null() || ctx.value.is_null() {
        return Ok(());
    }
    // SAFETY: a socket of the map, held for the call; its tcp_sock view, null for non-TCP.
    let tp = unsafe { bpf_skc_to_tcp_sock(ctx.sk as *mut _) } as *const u8;
    if tp.is_null() {
        return Ok(());
    }
    // SAFETY: the value of this (socket, value) pair, writable, sized for `SockState`.
    let st = unsafe { &mut *ctx.value };
    let (una, write_seq) = (load::<u32>(tp, conf!(tcp_snd_una)), load::<u32>(tp, conf!(tcp_write_seq)));
    let state: u8 = load(tp, conf!(sk_state));
    // A closed socket (aborted or destroyed, its file still held) keeps the old gap between
    // write_seq and snd_una, but its queue is purged: nothing waits.
    let waiting = (write_seq != una && state != TCP_CLOSE) || state == TCP_CLOSE_WAIT;
    // Bytes waiting: a record. None since the last walk, which told the agent of some: one
    // record so it sees them gone. Nothing waiting and nothing told: no record.
    let told = st.walk_flags & WALK_TOLD != 0;
    if !waiting && !told {
        return Ok(());
    }
    st.walk_flags = if waiting { st.walk_flags | WALK_TOLD } else { st.walk_flags & !WALK_TOLD };
    let rec = record(ctx.sk, tp, st, una, write_seq, state);
    write(seq, &rec)
}

/// What `tcp_info` would say of the socket, raw.
#[inline(always)]
fn record(sk: *const u8, tp: *const u8, st: &SockState, una: u32, write_seq: u32, state: u8) -> WalkRecord {
    WalkRecord {
        kind: WalkKind::Socket as u8,
        state,
        retransmits: load(tp, conf!(icsk_retransmits)),
        backoff: load(tp, conf!(icsk_backoff)),
        probes: load(tp, conf!(icsk_probes_out)),
        repair: in_repair(tp),
        _pad: [0; 2],
        sk: sk as u64,
        // SAFETY: a valid socket; the cookie is made on first use, as sock_diag would.
        cookie: unsafe { bpf_get_socket_cookie(sk as *mut _) },
        bytes_acked: load(tp, conf!(tcp_bytes_acked)),
        delivered_us: load(tp, conf!(tcp_delivered_mstamp)),
        snd_una: una,
        write_seq,
        snd_nxt: load(tp, conf!(tcp_snd_nxt)),
        snd_wnd: load(tp, conf!(tcp_snd_wnd)),
        rcv_tstamp: load(tp, conf!(tcp_rcv_tstamp)),
        lsndtime: load(tp, conf!(tcp_lsndtime)),
        rto: load(tp, conf!(icsk_rto)),
        packets_out: load(tp, conf!(tcp_packets_out)),
        total_retrans: load(tp, conf!(tcp_total_retrans)),
        segs_out: load(tp, conf!(tcp_segs_out)),
        uid: load(tp, conf!(sk_uid)),
        inode: inode_of(tp),
        st: *st,
    }
}

/// 1 while the socket is in TCP_REPAIR (`tcp_sock.repair`, a bit of a byte the BTF names).
#[inline(always)]
fn in_repair(tp: *const u8) -> u8 {
    let byte = conf!(tcp_repair_byte);
    if byte == detector_common::OFFSET_ABSENT {
        return 0;
    }
    u8::from(u32::from(load::<u8>(tp, byte)) & conf!(tcp_repair_mask) != 0)
}

/// The inode number of the socket's file (0 without one), as sock_diag reports it: through the
/// `struct socket` and its file, by loads alone (no probe read).
#[inline(always)]
fn inode_of(sk: *const u8) -> u32 {
    let sock: *const u8 = load(sk, conf!(sk_socket));
    if sock.is_null() {
        return 0;
    }
    let file: *const u8 = load(sock, conf!(socket_file));
    if file.is_null() {
        return 0;
    }
    let inode: *const u8 = load(file, conf!(file_inode));
    if inode.is_null() { 0 } else { load::<u64>(inode, conf!(inode_ino)) as u32 }
}

/// One record into an iterator's output.
#[inline(always)]
pub fn write<T>(seq: *mut u8, v: &T) -> Result<(), i64> {
    // SAFETY: `seq` is the walk's seq_file and `v` a stack value of `size_of::<T>()` bytes.
    let r = unsafe { bpf_seq_write(seq as *mut _, v as *const T as *const _, core::mem::size_of::<T>() as u32) };
    if r == 0 { Ok(()) } else { Err(r) }
}
