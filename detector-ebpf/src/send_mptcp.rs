//! Send path of Multipath TCP: the application sends on an MPTCP socket, and the MPTCP layer
//! pushes its bytes to the subflows (TCP sockets) itself, never through `tcp_sendmsg`. An MPTCP
//! listener takes plain TCP clients too (a fallback connection, still sent on this way): Go
//! listens with MPTCP by default from 1.24. The record lives with the MPTCP socket, its
//! addresses its first subflow's; it is tracked when the MPTCP socket's send buffer backs up.
//!
//! Kernel: `int mptcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t len)`
//! (net/mptcp/protocol.c), entered once per send; and `sock_send_length` (see
//! `send_sock_send_length_btf`) where no fentry loads, filtered to MPTCP sockets.
use aya_ebpf::{
    macros::{btf_tracepoint, fentry, kprobe},
    programs::{BtfTracePointContext, FEntryContext, ProbeContext},
};
use detector_common::{IPPROTO_MPTCP, SendHook};

use crate::{
    sock::{BtfSock, RawSock},
    track::{MptcpLru, MptcpSock, MptcpStorage, on_send},
};

#[fentry(function = "mptcp_sendmsg")]
pub fn fentry_mptcp_sendmsg(ctx: FEntryContext) -> i32 {
    // SAFETY: argument 0 of mptcp_sendmsg is the MPTCP socket.
    let msk = unsafe { BtfSock::new(ctx.arg(0)) };
    on_send_btf(msk, SendHook::FentryMptcpSendmsg);
    0
}

#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length_mptcp(ctx: BtfTracePointContext) -> i32 {
    // SAFETY: argument 0 of this tracepoint is the (never null) socket.
    let sk = unsafe { BtfSock::new(ctx.arg(0)) };
    if sk.protocol() == IPPROTO_MPTCP {
        on_send_btf(sk, SendHook::SockSendLengthBtfMptcp);
    }
    0
}

#[kprobe]
pub fn kprobe_mptcp_sendmsg(ctx: ProbeContext) -> u32 {
    let Some(msk) = ctx.arg::<u64>(0).filter(|&sk| sk != 0) else { return 0 };
    on_send_raw(msk, SendHook::KprobeMptcpSendmsg);
    0
}

/// A send on the MPTCP socket `msk` (a BTF pointer), in socket storage.
#[inline(always)]
pub fn on_send_btf(msk: BtfSock, hook: SendHook) {
    on_send(MptcpStorage(msk), hook, MptcpSock(msk));
}

/// A send on the MPTCP socket at `msk`, in the LRU map.
#[inline(always)]
pub fn on_send_raw(msk: u64, hook: SendHook) {
    on_send(MptcpLru(msk), hook, MptcpSock(RawSock(msk)));
}
