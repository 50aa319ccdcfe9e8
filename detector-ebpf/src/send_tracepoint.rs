//! Send path, first choice: the stable tracepoint `sock:sock_send_length`. It carries the socket,
//! its family and protocol, so non-TCP sockets are filtered here without touching the socket.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use detector_common::{IPPROTO_TCP, SendHook};

use crate::{
    config::config,
    ctx::{field, u64_and_u16},
    send::on_send,
};

#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    let _ = try_sock_send_length(&ctx);
    0
}

fn try_sock_send_length(ctx: &TracePointContext) -> Result<(), i32> {
    let cfg = config();
    let (sk, protocol) = u64_and_u16(ctx, cfg.send_len_sk, cfg.send_len_protocol)?;
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    // A new socket is tracked only if this call queued bytes (not an error or an empty send);
    // the result is read only then, not on every send of a tracked socket.
    on_send(sk, SendHook::SockSendLength as u8, || {
        field::<i32>(ctx, cfg.send_len_ret).is_ok_and(|ret| ret > 0)
    })
}
