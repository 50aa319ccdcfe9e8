//! Send path, first choice: the stable tracepoint `sock:sock_send_length`. It carries the socket,
//! its family and protocol, so non-TCP sockets are filtered here without touching the socket.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use detector_common::{IPPROTO_TCP, SendHook};

use crate::{config::config, send::on_send};

#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    let _ = try_sock_send_length(&ctx);
    0
}

fn try_sock_send_length(ctx: &TracePointContext) -> Result<(), i32> {
    let cfg = config();
    let protocol: u16 = unsafe { ctx.read_at(cfg.send_len_protocol as usize)? };
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let ret: i32 = unsafe { ctx.read_at(cfg.send_len_ret as usize)? };
    if ret <= 0 {
        // Nothing was queued by this call (error or zero-length send).
        return Ok(());
    }
    let family: u16 = unsafe { ctx.read_at(cfg.send_len_family as usize)? };
    let sk: u64 = unsafe { ctx.read_at(cfg.send_len_sk as usize)? };
    on_send(sk, Some(family), SendHook::SockSendLength as u8)
}
