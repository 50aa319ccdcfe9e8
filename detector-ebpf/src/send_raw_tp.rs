//! Send path, second choice: raw tracepoint `tcp_sendmsg_locked`. The classic tracepoint of that
//! name carries only the skb; the raw one gets the tracepoint's C arguments, the first of which
//! is the socket. TCP-only by construction. Fires before the send can block.
use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use detector_common::SendHook;

use crate::send::on_send;

#[raw_tracepoint(tracepoint = "tcp_sendmsg_locked")]
pub fn tcp_sendmsg_locked(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let _ = on_send(sk, SendHook::TcpSendmsgLocked as u8, || true);
    0
}
