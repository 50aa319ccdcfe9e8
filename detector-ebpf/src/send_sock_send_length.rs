//! Send path, fallback without BTF programs: the classic tracepoint `sock:sock_send_length`
//! (stable ABI; fields from its format file), with the `SOCKS` hash map.
//!
//! Kernel: `sock_msg_length` event class, `TP_STRUCT__entry(__field(void *, sk)
//! __field(__u16, family) __field(__u16, protocol) __field(int, ret) __field(int, flags))`,
//! recorded as a send returns; non-TCP sockets are dropped by the protocol field, but for
//! MPTCP ones, which go to `send_mptcp`.
use aya_ebpf::{EbpfContext, helpers::bpf_probe_read_kernel, macros::tracepoint, programs::TracePointContext};
use detector_common::{IPPROTO_MPTCP, IPPROTO_TCP, SendHook};

use crate::{
    config::conf,
    sock::RawSock,
    track::{Hash, on_send},
};

#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    let _ = try_sock_send_length(&ctx);
    0
}

fn try_sock_send_length(ctx: &TracePointContext) -> Result<(), i64> {
    let (sk, protocol) = sk_and_protocol(ctx, conf!(send_len_sk), conf!(send_len_protocol))?;
    if protocol == IPPROTO_MPTCP {
        crate::send_mptcp::on_send_raw(sk, SendHook::SockSendLengthMptcp);
        return Ok(());
    }
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    on_send(Hash(sk), SendHook::SockSendLength, RawSock(sk));
    Ok(())
}

/// One field of the tracepoint record at `offset`. The verifier refuses a context load at an
/// offset that is not an immediate of the instruction, and these offsets come from the format
/// file at run time, so fields are copied out.
#[inline(always)]
pub fn field<T: Copy>(ctx: &TracePointContext, offset: u32) -> Result<T, i64> {
    // SAFETY: bpf_probe_read_kernel copes with any address.
    unsafe { bpf_probe_read_kernel((ctx.as_ptr() as *const u8).add(offset as usize) as *const T) }.map_err(|e| e as i64)
}

/// The socket pointer at `a` and the protocol at `b`, with one copy when `b` lies within the
/// 14 bytes after `a` (it does in every kernel's format so far).
#[inline(always)]
fn sk_and_protocol(ctx: &TracePointContext, a: u32, b: u32) -> Result<(u64, u16), i64> {
    if b >= a && b - a <= 14 {
        let buf: [u8; 16] = field(ctx, a)?;
        // `& 15` changes nothing (d <= 14) but lets the verifier see the index is in bounds.
        let d = ((b - a) & 15) as usize;
        let sk = u64::from_ne_bytes([buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], buf[6], buf[7]]);
        let protocol = u16::from_ne_bytes([buf[d], buf[(d + 1) & 15]]);
        return Ok((sk, protocol));
    }
    Ok((field(ctx, a)?, field(ctx, b)?))
}
