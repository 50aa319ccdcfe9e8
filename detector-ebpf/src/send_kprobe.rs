//! Send path, last choice: kprobe on `tcp_sendmsg_locked`, with the `SOCKS` hash map.
//!
//! Kernel: `int tcp_sendmsg_locked(struct sock *sk, struct msghdr *msg, size_t size)`
//! (net/ipv4/tcp.c), entered once per send with the socket locked: by `tcp_sendmsg` for the
//! application's sends, and from 6.5 by kTLS for its records (below `tcp_sendmsg`, which a
//! kTLS socket's `sk_prot` replaces), and by splice and sendfile (`MSG_SPLICE_PAGES`).
use aya_ebpf::{macros::kprobe, programs::ProbeContext};
use detector_common::SendHook;

use crate::{
    sock::RawSock,
    track::{Hash, on_send},
};

#[kprobe]
pub fn kprobe_tcp_sendmsg_locked(ctx: ProbeContext) -> u32 {
    let Some(sk) = ctx.arg::<u64>(0) else { return 0 };
    if sk == 0 {
        return 0;
    }
    // A socket that is closing (e.g. after a reset) is never (re)inserted: nothing would ever
    // remove it (`on_send` tracks only sockets that can still send).
    on_send(Hash(sk), SendHook::KprobeTcpSendmsgLocked, RawSock(sk));
    0
}
