//! `inet_sock_set_state`, with the fallback send hooks only: forgets a tracked socket when it
//! reaches TCP_CLOSE, so the hash map holds live sockets and an address reused by a new socket
//! never inherits an old entry. (Socket storage needs none of this: it dies with the socket.)
//!
//! Kernel: `TRACE_EVENT(inet_sock_set_state, TP_PROTO(const struct sock *sk, const int oldstate,
//! const int newstate))` (include/trace/events/sock.h), attached as a raw tracepoint (4.17+, no
//! BTF needed): the program gets the prototype's arguments as they are. As a classic
//! tracepoint, the kernel first copied each of the ~5 transitions of every socket (addresses,
//! ports, family, protocol) into a trace record, for a program that looks at the new state only.
//!
//! No protocol test: the hook also fires for other inet protocols, but `SOCKS` only holds the
//! addresses of TCP sockets (the send hooks and the scan only ever put TCP sockets there, and
//! each leaves at its close), so another socket closing costs one lookup that misses.
//!
//! A raw tracepoint's program is only skipped when it would interrupt itself on one CPU (the
//! kernel counts it in the program's misses); unlike a classic tracepoint's, it runs inside a
//! send program interrupted by the softirq that closes the socket.
use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use detector_common::TCP_CLOSE;

use crate::maps::close_record;

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    // Every argument comes in a 64-bit slot; `newstate` is an int in the low half.
    let new = ctx.arg::<u64>(2) as u32;
    if new == u32::from(TCP_CLOSE) {
        close_record(ctx.arg::<u64>(0));
    }
    0
}
