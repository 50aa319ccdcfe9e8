//! What every send-path hook does once it has the socket: refresh or create its entry.
//! Runs in the sender's process context, so the owner (tgid/tid/comm/cgroup) is taken here and
//! nowhere else (retransmits and state changes run in softirq context, where `current` is
//! whichever task the CPU happened to be running).
use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
};
use detector_common::{
    AF_INET, AF_INET6, Counter, EventKind, SockEvent, SockState, TASK_COMM_LEN,
};

use crate::{
    config::config,
    maps::{EVENTS, SOCKS, count},
    sock,
};

/// Record a send on `sk`. `may_track` is asked only before tracking a new socket, so a hook
/// can leave work (reading the send's result) off the hot path.
#[inline(always)]
pub fn on_send(sk: u64, hook: u8, may_track: impl FnOnce() -> bool) -> Result<(), i32> {
    if sk == 0 {
        return Ok(());
    }
    let cfg = config();
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    if tgid == cfg.agent_tgid {
        return Ok(());
    }
    // The hot path (a socket already tracked) is one hash lookup and, only when the sender
    // changed, a few stores: no clock read, no counters (the kernel's own bpf_stats count runs).
    if let Some(st) = SOCKS.get_ptr_mut(&sk) {
        // SAFETY: a value pointer from the map, valid for this program run.
        let st = unsafe { &mut *st };
        if st.tid != tid {
            st.tid = tid;
        }
        if st.tgid != tgid {
            // Another process sends on it now (fork, fd passing): it is the owner from here on.
            st.tgid = tgid;
            st.comm = bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]);
            st.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
        }
        return Ok(());
    }

    if !may_track() {
        return Ok(());
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let family = sock::family(&cfg, sk).inspect_err(|_| count(Counter::ReadErrors))?;
    if family != AF_INET && family != AF_INET6 {
        return Ok(());
    }
    let tuple = sock::tuple(&cfg, sk, family).inspect_err(|_| count(Counter::ReadErrors))?;
    let tcp_state = sock::state(&cfg, sk).unwrap_or(0);
    let comm = bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]);
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let st = SockState {
        first_send_ns: now,
        last_retrans_ns: 0,
        cgroup_id,
        tuple,
        retransmits: 0,
        tgid,
        tid,
        comm,
        tcp_state,
        hook,
        _pad: [0; 6],
    };
    // BPF_NOEXIST: if another CPU raced us in, keep its entry and announce nothing.
    if let Err(e) = SOCKS.insert(&sk, &st, 1) {
        if e != -17 {
            count(Counter::MapFull);
        }
        return Ok(());
    }
    let ev = SockEvent {
        sk,
        ts_ns: now,
        cgroup_id,
        tuple,
        tgid,
        tid,
        comm,
        kind: EventKind::Tracked as u8,
        old_state: tcp_state,
        new_state: tcp_state,
        hook,
    };
    if EVENTS.output::<SockEvent>(&ev, 0).is_err() {
        count(Counter::EventsDropped);
    }
    Ok(())
}
