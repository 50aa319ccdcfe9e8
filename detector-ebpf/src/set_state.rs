//! `sock:inet_sock_set_state`, with the fallback send hooks only: forgets a tracked socket when
//! it reaches TCP_CLOSE, so the hash map holds live sockets and an address reused by a new
//! socket never inherits an old entry. (Socket storage needs none of this: it dies with the
//! socket.) Every other transition of every socket is dropped after one field read.
//!
//! Kernel: `TRACE_EVENT(inet_sock_set_state, TP_PROTO(const struct sock *sk, const int oldstate,
//! const int newstate))` (include/trace/events/sock.h), fields from its format file.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use detector_common::{IPPROTO_TCP, TCP_CLOSE};

use crate::{config::conf, maps::close_record, send_sock_send_length::field};

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_inet_sock_set_state(&ctx);
    0
}

fn try_inet_sock_set_state(ctx: &TracePointContext) -> Result<(), i64> {
    let new: i32 = field(ctx, conf!(state_newstate))?;
    if new != TCP_CLOSE as i32 {
        return Ok(());
    }
    let protocol: u16 = field(ctx, conf!(state_protocol))?;
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let sk: u64 = field(ctx, conf!(state_skaddr))?;
    close_record(sk);
    Ok(())
}
