//! Every map the programs use, with its bound and why.
use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};
use detector_common::{COUNTER_SLOTS, Counter, SockState};

/// Tracked sockets, keyed by `struct sock` address. 65,536 by default (the 50k-connection scale
/// target with headroom); the agent resizes it with `--max-sockets` (`map_max_entries`). Only
/// sockets that have sent data are here, and they leave on TCP_CLOSE. A failed insert is
/// counted in `Counter::MapFull`. A plain (not LRU) hash: an LRU map would evict silently.
#[map]
pub static SOCKS: HashMap<u64, SockState> = HashMap::with_max_entries(65_536, 0);

/// New-socket and state-change events for the agent: 256 KiB holds ~2,700 events of 96 bytes,
/// a burst of connection churn far above what the agent drains between wake-ups. Full means
/// dropped and counted (`Counter::EventsDropped`); the agent's sweep notices closed sockets on
/// its own, so a drop costs latency, not correctness. Resized with `--ring-buffer-bytes`.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Drop and error counters, per CPU so the hot path never contends.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, and programs run with preemption disabled on this CPU.
        unsafe { *slot += 1 };
    }
}
