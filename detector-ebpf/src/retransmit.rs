//! Retransmits on tracked sockets: counted, and the last one's time kept (`detector explain`).
//! Both run from timers (softirq), so they never touch the owner fields.
//!
//! Kernel: `TRACE_EVENT(tcp_retransmit_skb, TP_PROTO(const struct sock *sk,
//! const struct sk_buff *skb, int err))` (include/trace/events/tcp.h); the BTF program gets the
//! socket as argument 0, the classic one its address in the `skaddr` field of the record.
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use detector_common::{Counter, SockState};

use crate::{
    config::conf,
    maps::count,
    send_sock_send_length::field,
    sock::BtfSock,
    track::{Hash, Storage, Store},
};

#[inline(always)]
fn note(st: *mut SockState) {
    // SAFETY: a value pointer from the map or storage, valid for this program run.
    let st = unsafe { &mut *st };
    st.retransmits = st.retransmits.wrapping_add(1);
    // SAFETY: no preconditions.
    st.last_retrans_ns = unsafe { bpf_ktime_get_ns() };
    count(Counter::Retransmits);
}

/// With the BTF send hooks (socket storage).
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb_btf(ctx: BtfTracePointContext) -> i32 {
    // SAFETY: argument 0 of this tracepoint is the (never null) socket.
    let sk = unsafe { BtfSock::new(ctx.arg(0)) };
    if let Some(st) = Storage(sk).get() {
        note(st);
    }
    0
}

/// With the fallback send hooks (hash map).
#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    if let Ok(sk) = field::<u64>(&ctx, conf!(retrans_skaddr))
        && let Some(st) = Hash(sk).get()
    {
        note(st);
    }
    0
}
