//! Send path, first choice: BTF tracepoint `tcp_sendmsg_locked` (Linux 6.15+).
//!
//! Kernel: `TRACE_EVENT(tcp_sendmsg_locked, TP_PROTO(const struct sock *sk,
//! const struct msghdr *msg, const struct sk_buff *skb, int size_goal))`, called once per
//! iteration of the copy loop in `tcp_sendmsg_locked()` (net/ipv4/tcp.c), before the send can
//! wait for memory. TCP only by construction; a send that blocks forever on its first call is
//! caught at its second iteration, when the first chunk is queued and unacknowledged.
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use detector_common::SendHook;

use crate::{
    sock::BtfSock,
    track::{Storage, can_send, on_send},
};

#[btf_tracepoint(function = "tcp_sendmsg_locked")]
pub fn tcp_sendmsg_locked(ctx: BtfTracePointContext) -> i32 {
    // SAFETY: argument 0 of this tracepoint is the (never null) socket.
    let sk = unsafe { BtfSock::new(ctx.arg(0)) };
    // Before this chunk is queued: anything still waiting is left from earlier sends.
    on_send(Storage(sk), SendHook::TcpSendmsgLocked, || {
        let state = sk.state();
        (can_send(state) && sk.waiting()).then_some(state)
    });
    0
}
