//! What the sweep reads from the programs: their events, their drop and error counters, and
//! (with the fallback hooks) the hash map they keep.
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use detector_common::{COUNTER_SLOTS, Counter, SockState, SockTuple};

use crate::{
    kernel::events,
    metrics::Metrics,
    report::KernelRecord,
    sample::{scan::Scanner, walk::Walker},
    tracker::{Forget, Tracked, Tracker},
};

pub struct KernelSide {
    pub ring: RingBuf<MapData>,
    /// The sampling walk (socket storage); without it, sock_diag samples every socket.
    pub walker: Option<Walker>,
    /// The reconcile's pass over TCP sockets; without it, sock_diag dumps.
    pub scanner: Option<Scanner>,
    /// The hash map of the fallback hooks (socket storage cannot be read from here).
    pub socks: Option<BpfHashMap<MapData, u64, SockState>>,
    pub counters: PerCpuArray<MapData, u64>,
    /// Counter totals already added to the metrics.
    seen: [u64; COUNTER_SLOTS as usize],
}

impl KernelSide {
    /// The programs' maps; the iterators (`walker`, `scanner`) are set when the kernel runs them.
    pub fn new(ring: RingBuf<MapData>, socks: Option<BpfHashMap<MapData, u64, SockState>>, counters: PerCpuArray<MapData, u64>) -> Self {
        Self { ring, walker: None, scanner: None, socks, counters, seen: [0; COUNTER_SLOTS as usize] }
    }

    /// Applies every waiting event to the table; `ended` gets each entry an event ended.
    pub fn drain(&mut self, tracker: &mut Tracker, mut ended: impl FnMut(Tracked, Forget)) {
        events::drain(&mut self.ring, |ev| {
            if let Some((t, why)) = tracker.apply(ev) {
                ended(t, why);
            }
        });
    }

    /// Adds the per-CPU counters to the metrics; `true` when events were lost (then, with the
    /// hash map, the table is rebuilt from it: see `resync`).
    pub fn read_counters(&mut self, m: &Metrics) -> bool {
        let mut lost = false;
        for (slot, counter) in [
            (Counter::EventsDropped, &m.kernel_events_dropped),
            (Counter::MapFull, &m.kernel_map_full),
            (Counter::ReadErrors, &m.kernel_read_errors),
            (Counter::Retransmits, &m.kernel_retransmits),
        ] {
            let Ok(values) = self.counters.get(&(slot as u32), 0) else { continue };
            let total: u64 = values.iter().sum();
            let prev = &mut self.seen[slot as usize];
            if total > *prev {
                counter.inc_by(total - *prev);
                lost |= slot == Counter::EventsDropped;
                *prev = total;
            }
        }
        lost
    }

    /// Adds every socket of the hash map the table lacks (announcements lost to a full ring).
    pub fn resync(&self, tracker: &mut Tracker) {
        for (sk, st) in self.socks.iter().flat_map(|m| m.iter()).filter_map(Result::ok) {
            tracker.adopt(sk, &st);
        }
    }

    /// Removes the hash-map entries of sockets samples found gone, when the entry is still
    /// that socket's (a close the set_state program missed would otherwise stay forever);
    /// returns how many entries the map holds.
    pub fn prune(&mut self, gone: impl Iterator<Item = (u64, SockTuple)>) -> Option<usize> {
        let socks = self.socks.as_mut()?;
        for (sk, tuple) in gone {
            if socks.get(&sk, 0).is_ok_and(|st| st.tuple == tuple) && socks.remove(&sk).is_ok() {
                log::debug!("removed the stale kernel entry of socket {sk:#x}");
            }
        }
        Some(socks.keys().filter(Result::is_ok).count())
    }

    /// What the kernel side recorded about `t` (`detector explain`), at CLOCK_MONOTONIC `now_ns`.
    pub fn record(&self, t: &Tracked, now_ns: u64) -> Option<KernelRecord> {
        if t.first_send_ns == 0 {
            return None;
        }
        // The hash map can be read from here; socket storage only through the walk's records.
        let st = self.socks.as_ref().and_then(|m| m.get(&t.sk, 0).ok()).or(t.kernel_state);
        Some(KernelRecord {
            tracked_for_ms: now_ns.saturating_sub(t.first_send_ns) / 1_000_000,
            retransmits: st.map(|st| st.retransmits),
            last_retransmit_ms_ago: st.filter(|st| st.last_retrans_ns != 0).map(|st| now_ns.saturating_sub(st.last_retrans_ns) / 1_000_000),
            send_hook: detector_common::SendHook::try_from(t.hook)
                .ok()
                .map(|h| crate::kernel::loader::spec(crate::kernel::loader::HookId::Send(h)).label.to_string()),
        })
    }
}
