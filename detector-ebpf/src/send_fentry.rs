//! Send path, third choice: fentry on `tcp_sendmsg` (kernels with BPF trampolines but without
//! the send tracepoints).
use aya_ebpf::{macros::fentry, programs::FEntryContext};
use detector_common::SendHook;

use crate::send::on_send;

#[fentry(function = "tcp_sendmsg")]
pub fn fentry_tcp_sendmsg(ctx: FEntryContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let _ = on_send(sk, SendHook::FentryTcpSendmsg as u8, || true);
    0
}
