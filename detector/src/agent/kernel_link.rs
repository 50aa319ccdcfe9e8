//! What the sweep reads from the programs: their events, their drop and error counters, and
//! (with the fallback hooks) the hash map they keep.
use std::os::fd::AsFd as _;

use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::ProgramFd,
};
use detector_common::{COUNTER_SLOTS, Counter, SockState, SockTuple};

use crate::{
    kernel::{events, prog_info},
    metrics::{Metrics, ProgramLabel},
    report::KernelRecord,
    sample::{kernel_dump::KernelDump, walk::Walker},
    tracker::{Forget, Tracked, Tracker},
};

pub struct KernelLink {
    pub ring: RingBuf<MapData>,
    /// The sampling walk (socket storage); without it, sock_diag samples every socket.
    pub walker: Option<Walker>,
    /// The reconcile's pass over TCP sockets; without it, sock_diag dumps.
    pub kernel_dump: Option<KernelDump>,
    /// The hash map of the fallback hooks (socket storage cannot be read from here).
    pub socks: Option<BpfHashMap<MapData, u64, SockState>>,
    /// Where sock_diag samples socket storage: the epochs that let the agent forget a socket
    /// gone idle and hear of it again.
    pub epochs: Option<Epochs>,
    pub counters: PerCpuArray<MapData, u64>,
    /// Counter totals already added to the metrics.
    seen: [u64; COUNTER_SLOTS as usize],
    /// Hash-map entries removed here (`prune`), beside the programs' own count.
    pruned: u64,
    /// The loaded programs (name, fd) and how many of their runs the kernel skipped, as
    /// already counted.
    programs: Vec<(String, ProgramFd, u64)>,
}

/// How long an epoch lasts at least: every send that finds bytes waiting on a tracked socket
/// announces it once per epoch, so a server with N such sockets sends N events per epoch;
/// an idle socket is forgotten within an epoch and a pass.
pub const EPOCH_AT_LEAST: std::time::Duration = std::time::Duration::from_secs(5);

/// The agent's epochs, where nothing walks socket storage. Socket storage cannot be read from
/// here, so the agent cannot tell the kernel side it forgot a socket; instead it moves the
/// epoch on, and a send that finds bytes waiting on a tracked socket announces it (`Waiting`,
/// carrying the epoch) when its record's epoch is not the current one. A socket is forgotten
/// as idle only if its last announcement was in an earlier epoch: its record's epoch is then
/// not the current one, so its next such send announces it again, and no socket the agent
/// forgot can wedge unannounced. Epochs are compared by value, not by clock (an agent in a
/// time namespace reads another CLOCK_MONOTONIC than the programs).
pub struct Epochs {
    map: Array<MapData, u32>,
    value: u32,
    began: std::time::Instant,
}

impl Epochs {
    /// Epoch 0, the programs' own until the first `advance`: every announcement is in it, so
    /// nothing is forgotten as idle before the agent moves on.
    pub fn new(map: Array<MapData, u32>) -> Self {
        Epochs { map, value: 0, began: std::time::Instant::now() }
    }

    /// The current epoch.
    pub fn value(&self) -> u32 {
        self.value
    }

    /// Whether a new epoch may begin.
    pub fn due(&self) -> bool {
        self.began.elapsed() >= EPOCH_AT_LEAST
    }

    /// Begins the next epoch (the agent's value changes only once the programs can see it).
    pub fn advance(&mut self) -> Result<(), MapError> {
        let v = self.value.wrapping_add(1);
        self.map.set(0, v, 0)?;
        (self.value, self.began) = (v, std::time::Instant::now());
        Ok(())
    }
}

impl KernelLink {
    /// The programs' maps; the iterators (`walker`, `kernel_dump`) are set when the kernel runs them.
    pub fn new(
        ring: RingBuf<MapData>,
        socks: Option<BpfHashMap<MapData, u64, SockState>>,
        counters: PerCpuArray<MapData, u64>,
        programs: Vec<(String, ProgramFd)>,
    ) -> Self {
        let programs = programs.into_iter().map(|(name, fd)| (name, fd, 0)).collect();
        Self { ring, walker: None, kernel_dump: None, socks, epochs: None, counters, seen: [0; COUNTER_SLOTS as usize], pruned: 0, programs }
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
        // Removals before insertions: an entry inserted and removed between the two reads
        // then counts at most as held, never as less than nothing.
        for slot in [Counter::MapRemoved, Counter::MapInserted] {
            if let Some(total) = self.total(slot) {
                self.seen[slot as usize] = total;
            }
        }
        for (slot, counter) in [
            (Counter::EventsDropped, &m.kernel_events_dropped),
            (Counter::MapFull, &m.kernel_map_full),
            (Counter::ReadErrors, &m.kernel_read_errors),
            (Counter::Retransmits, &m.kernel_retransmits),
        ] {
            let Some(total) = self.total(slot) else { continue };
            let prev = &mut self.seen[slot as usize];
            if total > *prev {
                counter.inc_by(total - *prev);
                lost |= slot == Counter::EventsDropped;
                *prev = total;
            }
        }
        for (name, fd, seen) in &mut self.programs {
            let Ok(misses) = prog_info::recursion_misses(fd.as_fd()) else { continue };
            if misses > *seen {
                m.kernel_program_misses.get_or_create(&ProgramLabel { program: name.clone() }).inc_by(misses - *seen);
                *seen = misses;
            }
        }
        lost
    }

    /// A counter's sum over the CPUs.
    fn total(&self, slot: Counter) -> Option<u64> {
        self.counters.get(&(slot as u32), 0).ok().map(|values| values.iter().sum())
    }

    /// How many entries the hash map holds (`None` with socket storage), as of `read_counters`
    /// and `prune`: entries the programs inserted, less those they and `prune` removed.
    pub fn map_entries(&self) -> Option<usize> {
        self.socks.as_ref()?;
        let removed = self.seen[Counter::MapRemoved as usize] + self.pruned;
        Some(self.seen[Counter::MapInserted as usize].saturating_sub(removed) as usize)
    }

    /// Adds every socket of the hash map the table lacks (announcements lost to a full ring).
    pub fn resync(&self, tracker: &mut Tracker) {
        for (sk, st) in self.socks.iter().flat_map(|m| m.iter()).filter_map(Result::ok) {
            tracker.adopt(sk, &st);
        }
    }

    /// Removes the hash-map entries of sockets samples found gone, when the entry is still
    /// that socket's (a close the set_state program missed would otherwise stay forever).
    pub fn prune(&mut self, gone: impl Iterator<Item = (u64, SockTuple)>) {
        let Some(socks) = self.socks.as_mut() else { return };
        for (sk, tuple) in gone {
            if socks.get(&sk, 0).is_ok_and(|st| st.tuple == tuple) && socks.remove(&sk).is_ok() {
                self.pruned += 1;
                log::debug!("removed the stale kernel entry of socket {sk:#x}");
            }
        }
    }

    /// What the kernel side recorded about `t` (`detector explain`), at CLOCK_MONOTONIC `now_ns`.
    pub fn record(&self, t: &Tracked, now_ns: u64) -> Option<KernelRecord> {
        if t.first_send_ns == 0 {
            return None;
        }
        // The hash map can be read from here; socket storage only through the walk's records.
        let st = self.socks.as_ref().and_then(|m| m.get(&t.sk, 0).ok()).or(t.kernel_state.as_deref().copied());
        Some(KernelRecord {
            tracked_for_ms: now_ns.saturating_sub(t.first_send_ns) / 1_000_000,
            retransmits: st.map(|st| st.retransmits),
            last_retransmit_ms_ago: st.filter(|st| st.last_retrans_ns != 0).map(|st| now_ns.saturating_sub(st.last_retrans_ns) / 1_000_000),
            send_hook: detector_common::SendHook::try_from(t.hook).ok().map(|h| crate::kernel::hooks::send_label(h).to_string()),
        })
    }
}
