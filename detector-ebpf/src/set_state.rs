//! `sock:inet_sock_set_state`: follows the TCP state of tracked sockets and forgets them at
//! TCP_CLOSE, so the map holds live sockets only and an address reused by a new socket never
//! inherits an old entry.
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use detector_common::{Counter, EventKind, IPPROTO_TCP, SockEvent, TCP_CLOSE};

use crate::{
    config::config,
    ctx::field,
    maps::{EVENTS, SOCKS, count},
};

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_inet_sock_set_state(&ctx);
    0
}

fn try_inet_sock_set_state(ctx: &TracePointContext) -> Result<(), i32> {
    let cfg = config();
    let protocol: u16 = field(ctx, cfg.state_protocol)?;
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let sk: u64 = field(ctx, cfg.state_skaddr)?;
    let Some(st) = SOCKS.get_ptr_mut(&sk) else {
        return Ok(());
    };
    let old: i32 = field(ctx, cfg.state_oldstate)?;
    let new: i32 = field(ctx, cfg.state_newstate)?;
    let kind = if new as u8 == TCP_CLOSE {
        if SOCKS.remove(&sk).is_err() {
            // Another CPU removed it first and announced it.
            return Ok(());
        }
        EventKind::Closed
    } else {
        // SAFETY: a value pointer from the map, valid for this program run.
        unsafe { (*st).tcp_state = new as u8 };
        EventKind::StateChange
    };
    let ev = SockEvent {
        sk,
        ts_ns: unsafe { bpf_ktime_get_ns() },
        kind: kind as u8,
        old_state: old as u8,
        new_state: new as u8,
        ..SockEvent::default()
    };
    if EVENTS.output::<SockEvent>(&ev, 0).is_err() {
        count(Counter::EventsDropped);
    }
    Ok(())
}
