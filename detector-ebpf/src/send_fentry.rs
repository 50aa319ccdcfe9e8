//! Send path, second choice: fentry on `tcp_sendmsg` (kernels with BPF trampolines but without
//! the `tcp_sendmsg_locked` tracepoint, e.g. 6.1 and 6.12).
//!
//! Kernel: `int tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size)`
//! (net/ipv4/tcp.c), entered once per send, before the socket lock is taken.
use aya_ebpf::{macros::fentry, programs::FEntryContext};
use detector_common::SendHook;

use crate::{
    sock::BtfSock,
    track::{Storage, on_send},
};

#[fentry(function = "tcp_sendmsg")]
pub fn fentry_tcp_sendmsg(ctx: FEntryContext) -> i32 {
    // SAFETY: argument 0 of tcp_sendmsg is the socket.
    let sk = unsafe { BtfSock::new(ctx.arg(0)) };
    on_send(Storage(sk), SendHook::FentryTcpSendmsg, sk);
    0
}
