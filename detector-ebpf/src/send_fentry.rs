//! Send path, second choice: fentry on `tcp_sendmsg_locked` (kernels with BPF trampolines but
//! without the `tcp_sendmsg_locked` tracepoint, e.g. 6.1 and 6.12).
//!
//! Kernel: `int tcp_sendmsg_locked(struct sock *sk, struct msghdr *msg, size_t size)`
//! (net/ipv4/tcp.c), entered once per send with the socket locked: by `tcp_sendmsg` for the
//! application's sends, and from 6.5 by kTLS for its records and by splice and sendfile
//! (`MSG_SPLICE_PAGES`), which `tcp_sendmsg` alone would miss.
use aya_ebpf::{macros::fentry, programs::FEntryContext};
use detector_common::SendHook;

use crate::{
    sock::BtfSock,
    track::{Storage, on_send},
};

#[fentry(function = "tcp_sendmsg_locked")]
pub fn fentry_tcp_sendmsg_locked(ctx: FEntryContext) -> i32 {
    // SAFETY: argument 0 of tcp_sendmsg_locked is the socket.
    let sk = unsafe { BtfSock::new(ctx.arg(0)) };
    on_send(Storage(sk), SendHook::FentryTcpSendmsgLocked, sk);
    0
}
