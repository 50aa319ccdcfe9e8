//! Kernel side of the detector: thin programs that record, per TCP socket, who sends on it and
//! how its lifetime goes. All judgement (is it stalled? why?) happens in userspace.
//!
//! Data flow: send hooks (one of four, chosen at run time) create/refresh an entry in `SOCKS`
//! and announce new sockets on `EVENTS`; `retransmit` counts retransmits on tracked sockets;
//! `set_state` follows TCP state and forgets a socket when it closes.
#![no_std]
#![no_main]

mod config;
mod ctx;
mod maps;
mod retransmit;
mod send;
mod send_fentry;
mod send_kprobe;
mod send_raw_tp;
mod send_tracepoint;
mod set_state;
mod sock;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL: `bpf_probe_read_kernel` and the tracing helpers need a GPL-compatible license.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
