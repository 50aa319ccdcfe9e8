//! `tcp:tcp_retransmit_skb`: counts retransmits on tracked sockets. Runs from timers (softirq),
//! so it never touches the owner fields.
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use detector_common::Counter;

use crate::{
    config::config,
    ctx::field,
    maps::{SOCKS, count},
};

#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    let _ = try_tcp_retransmit_skb(&ctx);
    0
}

fn try_tcp_retransmit_skb(ctx: &TracePointContext) -> Result<(), i32> {
    let sk: u64 = field(ctx, config().retrans_skaddr)?;
    if let Some(st) = SOCKS.get_ptr_mut(&sk) {
        // SAFETY: a value pointer from the map, valid for this program run.
        let st = unsafe { &mut *st };
        st.retransmits = st.retransmits.wrapping_add(1);
        st.last_retrans_ns = unsafe { bpf_ktime_get_ns() };
        count(Counter::Retransmits);
    }
    Ok(())
}
