//! Every map the programs use, with its bound and why.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_ebpf::{
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use detector_common::{COUNTER_SLOTS, Counter, EventKind, SockEvent, SockState, TCP_CLOSE};

/// `BPF_F_NO_PREALLOC`: a hash map that allocates entries as they are inserted.
const BPF_F_NO_PREALLOC: u32 = 1;

/// Per-socket state of the BTF hooks (tp_btf, fentry), in the socket itself: no key hashing, no
/// lock, no capacity to fill, and freed by the kernel when the socket is, so nothing is sent
/// when a socket closes and no entry can go stale. Bounded by the sockets that exist.
#[btf_map]
pub static SK_STATE: SkStorage<SockState> = SkStorage::new();

/// Per-connection state of the Multipath TCP hooks of socket storage, in the MPTCP socket the
/// application sends on (its addresses those of its first subflow): apart from `SK_STATE`, so
/// the walk of that map never reads an MPTCP socket as a TCP one. Bounded by the sockets.
#[btf_map]
pub static MPTCP_STATE: SkStorage<SockState> = SkStorage::new();

/// The same for the MPTCP hooks of the fallback (kprobe, classic tracepoint), keyed by the
/// MPTCP socket's address. LRU: no close program sees an MPTCP socket close (the MPTCP layer
/// sets its state without the tracepoint), so an entry can outlive its socket; eviction only
/// costs an announcement again (the agent dedups). LRU maps are preallocated: 4,096 (~0.8 MiB)
/// MPTCP connections with bytes waiting at once, where the fallback hooks run; the loader
/// sizes it to one slot otherwise.
#[map]
pub static MPTCP_LRU: LruHashMap<u64, SockState> = LruHashMap::with_max_entries(4_096, 0);

/// Per-socket state of the fallback hooks (classic tracepoint, kprobe), keyed by `struct sock`
/// address. 65,536 by default (the 50k-connection scale target with headroom); the agent
/// resizes it with `--max-sockets`. Only sockets that had bytes waiting are here, and they
/// leave on TCP_CLOSE. A failed insert is counted in `Counter::MapFull`. A plain (not LRU)
/// hash: an LRU map would evict silently. Not preallocated: its memory follows the sockets in
/// it (an insert allocates, once per tracked socket), beyond its bucket array (16 bytes a
/// slot); with socket storage it stays empty, and the agent sizes it to one slot.
#[map]
pub static SOCKS: HashMap<u64, SockState> = HashMap::with_max_entries(65_536, BPF_F_NO_PREALLOC);

/// New-socket, owner-change and (hash map only) close events. Events are written without
/// waking the agent, which drains the buffer at least every 400 ms; the agent sizes it with
/// `--ring-buffer-bytes` (1 MiB by default: ~9,300 events of 104 bytes and an 8-byte header,
/// so ~23,000 newly tracked sockets a second fit); this size is the object's placeholder.
/// Full means dropped and counted (`Counter::EventsDropped`); the walk, the map's resync or
/// the reconcile finds such sockets anyway, so a drop costs latency, not correctness.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// The agent's epoch, one slot: where it samples through sock_diag, the agent moves it on
/// before each pass that may forget sockets gone idle, and a send that finds bytes waiting on
/// a tracked socket announces it again once per epoch (`track::on_send`).
#[map]
pub static EPOCH: Array<u32> = Array::with_max_entries(1, 0);

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

/// Removes a socket's `SOCKS` entry; `true` (and counted) when this call removed it.
#[inline(always)]
pub fn socks_remove(sk: u64) -> bool {
    let removed = SOCKS.remove(sk).is_ok();
    if removed {
        count(Counter::MapRemoved);
    }
    removed
}

/// Ends a socket's `SOCKS` record on its close, announcing `Closed`: the event is written
/// before the entry goes (from the value it still points to) and sent only if this call
/// removed it (another CPU that removed it first announced it).
#[inline(never)]
pub fn close_record(sk: u64) {
    let Some(st) = SOCKS.get_ptr_mut(sk) else { return };
    // SAFETY: a value pointer from the map, valid for this program run.
    emit_if(sk, unsafe { &*st }, EventKind::Closed, TCP_CLOSE, || socks_remove(sk));
}

/// `bpf_ringbuf_output` flag: do not wake the reader (the agent polls; see `EVENTS`).
const BPF_RB_NO_WAKEUP: u64 = 1;

/// Sends one event about the socket `sk` and its record `st` to the agent, counting a drop.
/// The event is written straight into the ring buffer: built on the stack first, it pushed
/// `track::start` over the 512-byte stack that 6.1's verifier counts.
#[inline(always)]
pub fn emit(sk: u64, st: &SockState, kind: EventKind, state: u8) {
    emit_if(sk, st, kind, state, || true);
}

/// As [`emit`], but the event is sent only if `commit` (run once the event is written, or at
/// once when the ring buffer is full) says so, and discarded otherwise.
#[inline(always)]
pub fn emit_if(sk: u64, st: &SockState, kind: EventKind, state: u8, commit: impl FnOnce() -> bool) {
    let Some(mut entry) = EVENTS.reserve::<SockEvent>(0) else {
        // No room: what the event announces still happens (a closed socket still leaves the
        // map); only the announcement is lost, and counted.
        if commit() {
            count(Counter::EventsDropped);
        }
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points to a reserved, writable `SockEvent`; every field is plain data and
    // all of them are written (no drop, no read of uninitialised memory).
    unsafe {
        (*ev).sk = sk;
        (*ev).ts_ns = bpf_ktime_get_ns();
        (*ev).cgroup_id = st.cgroup_id;
        (*ev).tuple = st.tuple;
        (*ev).tgid = st.tgid;
        (*ev).tid = st.tid;
        (*ev).comm = st.comm;
        (*ev).kind = kind as u8;
        (*ev).state = state;
        (*ev).hook = st.hook;
        (*ev)._pad = 0;
        (*ev).epoch = st.epoch;
    }
    if commit() {
        entry.submit(BPF_RB_NO_WAKEUP);
    } else {
        entry.discard(BPF_RB_NO_WAKEUP);
    }
}
