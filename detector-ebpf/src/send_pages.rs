//! Send path of pages, before 6.5: sendfile and splice to a TCP socket (nginx's `sendfile on`,
//! static file servers, proxies that splice) and kTLS's records go through `do_tcp_sendpages`,
//! not `tcp_sendmsg`. From 6.5 they pass `tcp_sendmsg_locked` (`MSG_SPLICE_PAGES`) and the
//! function is gone. Runs beside the main send hook, in its storage.
//!
//! Kernel: `ssize_t do_tcp_sendpages(struct sock *sk, struct page *page, int offset,
//! size_t size, int flags)` (net/ipv4/tcp.c, before 6.5), with the socket locked.
use aya_ebpf::{
    macros::{fentry, kprobe},
    programs::{FEntryContext, ProbeContext},
};
use detector_common::SendHook;

use crate::{
    sock::{BtfSock, RawSock},
    track::{Hash, Storage, on_send},
};

#[fentry(function = "do_tcp_sendpages")]
pub fn fentry_do_tcp_sendpages(ctx: FEntryContext) -> i32 {
    // SAFETY: argument 0 of do_tcp_sendpages is the socket.
    let sk = unsafe { BtfSock::new(ctx.arg(0)) };
    on_send(Storage(sk), SendHook::FentryDoTcpSendpages, sk);
    0
}

#[kprobe]
pub fn kprobe_do_tcp_sendpages(ctx: ProbeContext) -> u32 {
    let Some(sk) = ctx.arg::<u64>(0).filter(|&sk| sk != 0) else { return 0 };
    on_send(Hash(sk), SendHook::KprobeDoTcpSendpages, RawSock(sk));
    0
}
