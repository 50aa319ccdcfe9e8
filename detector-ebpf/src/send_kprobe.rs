//! Send path, last choice: kprobe on `tcp_sendmsg` (older kernels).
use aya_ebpf::{macros::kprobe, programs::ProbeContext};
use detector_common::SendHook;

use crate::send::on_send;

#[kprobe]
pub fn kprobe_tcp_sendmsg(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        let _ = on_send(sk, SendHook::KprobeTcpSendmsg as u8, || true);
    }
    0
}
