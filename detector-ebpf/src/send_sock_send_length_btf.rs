//! Send path, third choice: BTF tracepoint `sock_send_length` (Linux 6.3+), for kernels whose
//! BPF trampolines do not work (no fentry).
//!
//! Kernel: `DEFINE_EVENT(sock_msg_length, sock_send_length, TP_PROTO(struct sock *sk, int ret,
//! int flags))`, called by `sock_sendmsg_nosec()` (net/socket.c) as every socket's send
//! returns: unix and UDP too, so TCP is checked first. An MPTCP socket's send goes to
//! `send_mptcp` (no companion program is needed with this hook).
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use detector_common::{AF_INET, AF_INET6, IPPROTO_MPTCP, IPPROTO_TCP, SendHook};

use crate::{
    sock::BtfSock,
    track::{Storage, on_send},
};

#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length_btf(ctx: BtfTracePointContext) -> i32 {
    // SAFETY: argument 0 of this tracepoint is the (never null) socket.
    let sk = unsafe { BtfSock::new(ctx.arg(0)) };
    let protocol = sk.protocol();
    if protocol == IPPROTO_MPTCP {
        crate::send_mptcp::on_send_btf(sk, SendHook::SockSendLengthBtfMptcp);
        return 0;
    }
    if protocol != IPPROTO_TCP {
        return 0;
    }
    let family = sk.family();
    if family != AF_INET && family != AF_INET6 {
        return 0;
    }
    on_send(Storage(sk), SendHook::SockSendLengthBtf, sk);
    0
}
