//! Kernel side of the detector: thin programs that record, per TCP socket that had bytes
//! waiting, who sends on it. All judgement (is it stalled? why?) happens in the agent.
//!
//! Data flow: one send hook (chosen at run time, `SendHook`) starts tracking a socket when a
//! send finds bytes of earlier sends still unacknowledged, keeps its owner, and announces it on
//! `EVENTS`; `retransmit` counts retransmits on tracked sockets. The BTF hooks keep per-socket
//! state in socket storage, which the kernel frees with the socket; the fallback hooks keep it
//! in the `SOCKS` hash map, which `set_state` cleans at TCP_CLOSE. With socket storage, `walk`
//! samples the tracked sockets in the kernel once per pass and tells the agent about the ones
//! that look stuck; `iter_tcp` is the reconcile's pass over each namespace's TCP sockets, `iter_task_file` its pass
//! over every process's files (every namespace at once).
#![no_std]
#![no_main]

mod config;
#[cfg(feature = "bench-control")]
mod control;
mod iter_task_file;
mod iter_tcp;
mod maps;
mod retransmit;
mod send_fentry;
mod send_kprobe;
mod send_mptcp;
mod send_pages;
mod send_sock_send_length;
mod send_sock_send_length_btf;
mod send_tcp_sendmsg_locked;
mod set_state;
mod sock;
mod track;
mod walk;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL: `bpf_probe_read_kernel` and the tracing helpers need a GPL-compatible license.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
