//! Send path, first choice: BTF tracepoint `tcp_sendmsg_locked` (Linux 6.15+).
//!
//! Kernel: `TRACE_EVENT(tcp_sendmsg_locked, TP_PROTO(const struct sock *sk,
//! const struct msghdr *msg, const struct sk_buff *skb, int size_goal))`, called once per
//! iteration of the copy loop in `tcp_sendmsg_locked()` (net/ipv4/tcp.c), before the send can
//! wait for memory, with `skb` the tail of the write queue (null when nothing is waiting to be
//! sent). TCP only by construction; a send that blocks forever on its first call is caught at
//! its second iteration, when its first chunk waits in the write queue.
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use detector_common::SendHook;

use crate::{
    sock::BtfSock,
    track::{Storage, on_send},
};

#[btf_tracepoint(function = "tcp_sendmsg_locked")]
pub fn tcp_sendmsg_locked(ctx: BtfTracePointContext) -> i32 {
    // Before this chunk is queued: an skb already in the write queue holds bytes of earlier
    // sends that could not go out yet. Without one (every send of a connection that keeps
    // up), the program ends here, without touching the socket.
    let tail: *const u8 = ctx.arg(2);
    if tail.is_null() {
        return 0;
    }
    // SAFETY: argument 0 of this tracepoint is the (never null) socket.
    let sk = unsafe { BtfSock::new(ctx.arg(0)) };
    on_send(Storage(sk), SendHook::TcpSendmsgLocked, sk);
    0
}
