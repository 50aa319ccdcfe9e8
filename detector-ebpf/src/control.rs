//! Empty programs on the send hooks, for `cargo xtask bench` only (`detector bench-control`):
//! what a hook costs before our code runs (dispatch, and the kernel's own accounting). Never
//! attached by the agent.
use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};

#[btf_tracepoint(function = "tcp_sendmsg_locked")]
pub fn control_tcp_sendmsg_locked(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "sock_send_length")]
pub fn control_sock_send_length_btf(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn control_sock_send_length(_ctx: TracePointContext) -> u32 {
    0
}
