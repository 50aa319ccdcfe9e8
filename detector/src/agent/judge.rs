//! The judge: the table of tracked sockets and the verdict over their samples. It takes the
//! samples a pass gathered (the kernel walk's records, sock_diag's answers), feeds each socket's
//! verdict, says which sockets leave the table and why, orders the stalls fairly and builds the
//! report's lines. No kernel, no /proc, no socket of its own: the pass does the sampling, the
//! attribution names the holders; unit-tested alone.
use std::collections::{HashMap, HashSet};

use detector_common::{SockState, SockTuple};

use super::detail;
use crate::{
    metrics::{Metrics, ReasonLabel},
    owner::{Holder, pods::PodName},
    report::{self, StalledSocket},
    sample::{DiagSocket, Lookup, walk::Samples},
    tracker::{Forget, Tracked, Tracker},
    verdict::{self, Grace, Reason, SocketVerdict, Transition},
};

/// The sample clock: CLOCK_MONOTONIC in milliseconds (time since boot, as the kernel's own
/// clocks and `bpf_ktime_get_ns` count), so an onset the kernel proves to lie before the agent
/// started is still a point on it.
pub fn now_ms() -> u64 {
    monotonic_ns() / 1_000_000
}

pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64).unwrap_or(0)
}

/// The sockets a pass looks up through sock_diag, by network namespace: (socket, lookup) and a
/// pid likely to live in that namespace.
pub type Lookups = HashMap<u32, (Vec<(u64, Lookup)>, u32)>;

pub struct Judge {
    pub tracker: Tracker,
    grace: Grace,
    /// Stalled sockets past the detail cap, by reason (see `detail`).
    pub undetailed: HashMap<Reason, usize>,
    /// Sockets the last full pass found idle but kept, announced in the current epoch (see
    /// `kernel_link::Epochs`): a new epoch lets the next pass forget them.
    pub idle_kept: usize,
    /// ...as this pass counts them.
    idle_counted: usize,
    /// Sockets announced by a send hook that samples found gone since the last full pass (their
    /// kernel entry, if any, goes too: see `KernelLink::prune`).
    pub gone_hooked: Vec<(u64, SockTuple)>,
}

impl Judge {
    pub fn new(max_tracked: usize, grace: Grace) -> Self {
        Judge { tracker: Tracker::with_cap(max_tracked), grace, undetailed: HashMap::new(), idle_kept: 0, idle_counted: 0, gone_hooked: Vec::new() }
    }

    /// The grace windows the verdict judges by.
    pub fn grace(&self) -> Grace {
        self.grace
    }

    /// Judges the sockets the walk sampled (with socket storage) and says which others a pass
    /// looks up through sock_diag: with `only_due`, only those whose grace deadline has come by
    /// then. Returns the sockets to forget and the lookups.
    pub fn take_walk(&mut self, mut walked: Option<&mut Samples>, only_due: Option<u64>, m: &Metrics) -> (Vec<(u64, Forget)>, Lookups) {
        let (now, grace) = (now_ms(), self.grace);
        self.idle_counted = 0;
        let mut gone = Vec::new();
        let mut diag: Lookups = HashMap::new();
        for t in self.tracker.iter_mut() {
            if let Some(w) = walked.as_deref_mut().filter(|_| !t.sampled_by_diag()) {
                match w.take(t.sk) {
                    // Not reported though it had bytes waiting at the last walk: an iterator
                    // resumed after a read may skip an entry when others are freed, so that is
                    // no proof of a close. sock_diag asks by cookie: a lookup that finds nothing
                    // is.
                    None if t.last.is_some() => {
                        let e = diag.entry(t.tuple.netns).or_insert_with(|| (Vec::new(), t.netns_hint.unwrap_or(t.sender.tgid)));
                        e.0.push((t.sk, t.lookup()));
                    }
                    walked => {
                        if let Some(why) = from_walk(t, walked, grace, m) {
                            gone.push((t.sk, why));
                        }
                    }
                }
                continue;
            }
            if only_due.is_some_and(|by| t.verdict.as_ref().and_then(|v| v.due_at(grace)).is_none_or(|d| d > by)) {
                continue;
            }
            // Only states in which a socket can be stuck (bytes waiting, or the peer's FIN).
            if t.tcp_state != 0 && !verdict::judged_state(t.tcp_state) {
                if let Some(age) = t.verdict.take().and_then(|v| v.stalled_for_ms(now)) {
                    m.stall_duration.observe(age as f64 / 1e3);
                }
                continue;
            }
            let e = diag.entry(t.tuple.netns).or_insert_with(|| (Vec::new(), t.netns_hint.unwrap_or(t.sender.tgid)));
            e.0.push((t.sk, t.lookup()));
        }
        (gone, diag)
    }

    /// Judges sock_diag's answer for socket `sk`; `Some` when it leaves the table. `epoch`:
    /// where sock_diag samples socket storage, the agent's current epoch.
    pub fn take_answer(&mut self, sk: u64, answer: Result<Option<DiagSocket>, String>, epoch: Option<u32>, m: &Metrics) -> Option<Forget> {
        let t = self.tracker.get_mut(sk)?;
        match from_diag(t, answer, self.grace, m, epoch) {
            Ok(gone) => gone,
            Err(IdleKept) => {
                self.idle_counted += 1;
                None
            }
        }
    }

    /// The pass's sampling is over: what a full pass counted of idle sockets kept stands (what
    /// an early pass, a few due sockets, saw says nothing of the others).
    pub fn sampled(&mut self, only_due: Option<u64>) {
        if only_due.is_none() {
            self.idle_kept = self.idle_counted;
        }
    }

    /// Sockets of the walk the table lacks (an event lost, or bytes waiting again after the
    /// socket was forgotten as idle): taken up and judged. An entry of another socket they
    /// displace (same kernel address, or a dump's entry for the same addresses) is replaced.
    pub fn take_up(&mut self, walked: Samples, m: &Metrics) {
        let (now, grace) = (now_ms(), self.grace);
        for (sk, d, st) in walked.rest() {
            if !verdict::stuck(&d.sample) {
                continue;
            }
            if let Some(old) = self.tracker.adopt(sk, &st) {
                m.forgot(Forget::Replaced.as_str());
                if let Some(age) = old.verdict.and_then(|v| v.stalled_for_ms(now)) {
                    m.stall_duration.observe(age as f64 / 1e3);
                }
            }
            if let Some(t) = self.tracker.get_mut(sk) {
                t.kernel_state = t.detailed.then(|| Box::new(st));
                observe(t, d, grace, m);
            }
        }
    }

    /// Drops `gone` from the table, counting why.
    pub fn forget(&mut self, gone: Vec<(u64, Forget)>, m: &Metrics) {
        let now = now_ms();
        for (sk, why) in gone {
            let Some(t) = self.tracker.remove(sk) else { continue };
            m.forgot(why.as_str());
            if why == Forget::Gone {
                self.gone_hooked.push((sk, t.tuple));
            }
            if let Some(age) = t.verdict.and_then(|v| v.stalled_for_ms(now)) {
                m.stall_duration.observe(age as f64 / 1e3);
            }
        }
    }

    /// The earliest grace deadline of a stuck socket (sample clock, ms) after `tried_ms`, up to
    /// which the pass that just ran sampled every deadline. Deadlines only change when a socket
    /// is sampled, so this runs once per pass. A deadline by then was tried: the pass sampled
    /// that socket after it, so unless its sample failed (or progress moved its onset) it is
    /// stalled now; if it failed, the next interval's pass tries again. Early passes never
    /// chase it.
    pub fn next_due(&self, tried_ms: u64) -> Option<u64> {
        let grace = self.grace;
        self.tracker.iter().filter_map(|t| t.verdict.as_ref()?.due_at(grace)).filter(|&d| d > tried_ms).min()
    }

    /// The stalled sockets in the order they are reported and reaped (see `detail`): the first
    /// `DETAIL_MAX` kept in full, and the rest.
    pub fn stalls_in_order(&self) -> (Vec<u64>, Vec<u64>) {
        let now = now_ms();
        let stalled: Vec<(u64, u64, u64)> = self.tracker.iter().filter_map(|t| Some((t.sk, owner_key(t), t.verdict.as_ref()?.stalled_for_ms(now)?))).collect();
        let mut order = detail::fair_order(&stalled);
        let rest = order.split_off(order.len().min(detail::DETAIL_MAX));
        (order, rest)
    }

    /// The report's lines for the `detailed` stalls, with their holders and pod as `named`
    /// gives them; counts open stalls by reason (the `rest` counted, not listed).
    pub fn report(
        &mut self,
        detailed: &[u64],
        rest: &[u64],
        mut named: impl FnMut(u64) -> (std::sync::Arc<[Holder]>, Option<PodName>),
        m: &Metrics,
    ) -> Vec<StalledSocket> {
        let mut open: HashMap<Reason, i64> = Reason::ALL.iter().map(|&r| (r, 0)).collect();
        let mut out = Vec::with_capacity(detailed.len());
        for &sk in detailed {
            let Some(t) = self.tracker.get(sk) else { continue };
            let (holders, pod) = named(sk);
            if let Some(line) = report::stalled(t, &holders, pod.as_ref()) {
                *open.entry(line.reason).or_default() += 1;
                out.push(line);
            }
        }
        self.undetailed.clear();
        for r in rest.iter().filter_map(|sk| self.tracker.get(*sk)?.verdict.as_ref()?.stall().map(|st| st.reason)) {
            *open.entry(r).or_default() += 1;
            *self.undetailed.entry(r).or_default() += 1;
        }
        for (r, n) in open {
            m.stalls_open.get_or_create(&ReasonLabel::of(r.as_str())).set(n);
        }
        m.stalls_undetailed.set(rest.len() as i64);
        out
    }

    /// Every socket kept in full while the table is small; past `DETAIL_MAX` entries, only the
    /// stalled sockets chosen for detail (the others' history shrinks).
    pub fn mark_detailed(&mut self, detailed: &[u64]) {
        let all = self.tracker.len() <= detail::DETAIL_MAX;
        let chosen: HashSet<u64> = if all { HashSet::new() } else { detailed.iter().copied().collect() };
        for t in self.tracker.iter_mut() {
            t.set_detailed(all || chosen.contains(&t.sk));
        }
    }

    /// The table entry of a reported socket.
    pub fn by_cookie(&self, cookie: u64) -> Option<&Tracked> {
        self.tracker.iter().find(|t| t.last.is_some_and(|d| d.cookie == cookie))
    }

    /// The network namespaces of the tracked sockets.
    pub fn namespaces(&self) -> HashSet<u32> {
        self.tracker.iter().map(|t| t.tuple.netns).collect()
    }
}

/// Who a stalled socket's stall belongs to, for fairness: its sender, else (found by a dump)
/// its namespace and local port.
fn owner_key(t: &Tracked) -> u64 {
    if t.sender.tgid != 0 { u64::from(t.sender.tgid) } else { 1 << 63 | u64::from(t.tuple.netns) << 16 | u64::from(t.tuple.sport) }
}

/// A socket in socket storage, as the walk saw it: judged, or why it leaves the table. The
/// walk reports every socket with bytes waiting, and once more the first time it has none, so
/// a socket it never reported is idle (nothing waited at the walk; bytes waiting later bring it
/// back through `take_up`); one reported before and not now is looked up by cookie instead
/// (see `sample_all`); one reported with none waiting leaves as idle once judged.
fn from_walk(t: &mut Tracked, walked: Option<(DiagSocket, SockState)>, grace: Grace, m: &Metrics) -> Option<Forget> {
    let Some((d, st)) = walked else {
        return Some(Forget::Idle);
    };
    // Closed (aborted, e.g. destroyed) but its file still held somewhere (an fd in flight):
    // its write_seq and snd_una keep the old gap.
    if d.sample.state == detector_common::TCP_CLOSE {
        return Some(Forget::Closed);
    }
    repair_sender(t, &st);
    t.kernel_state = t.detailed.then(|| Box::new(st));
    observe(t, d, grace, m);
    (!verdict::stuck(&d.sample) && t.verdict.as_ref().is_none_or(|v| v.stall().is_none())).then_some(Forget::Idle)
}

/// The kernel side's record names the process that last sent (it changes it as it sends an
/// `OwnerChanged` event): an event lost to a full ring buffer is repaired from the record the
/// walk carries.
fn repair_sender(t: &mut Tracked, st: &SockState) {
    if st.tgid != 0 && st.tgid != t.sender.tgid {
        t.sender = crate::tracker::Sender { tgid: st.tgid, tid: st.tid, comm: crate::tracker::comm_str(&st.comm).into(), cgroup_id: st.cgroup_id };
    }
}

/// A socket sampled through sock_diag that went idle but is kept one more epoch: it was
/// announced in the current one (see `kernel_link::Epochs`).
struct IdleKept;

/// A socket sampled through sock_diag: judged, or why it leaves the table: not found (gone if
/// its close event should have come, closed if none exists), or idle (nothing stuck any more
/// and no stall open) when something will bring it back if it gets stuck again: a later dump
/// for a dump's find, the send hook's next announcement for a socket in socket storage
/// (`epoch`: the agent's current one; a socket announced in it is kept until the next).
fn from_diag(t: &mut Tracked, answer: Result<Option<DiagSocket>, String>, grace: Grace, m: &Metrics, epoch: Option<u32>) -> Result<Option<Forget>, IdleKept> {
    let idle = |t: &Tracked, d: &DiagSocket| !verdict::stuck(&d.sample) && t.verdict.as_ref().is_none_or(|v| v.stall().is_none());
    match answer {
        Ok(Some(d)) if t.found_by_dump() && idle(t, &d) => Ok(Some(Forget::Idle)),
        Ok(Some(d)) => {
            observe(t, d, grace, m);
            // Only sockets in socket storage are announced again (a hash-map record stays
            // until its close); where the walk samples them, they never come here.
            let announced_again = !t.found_by_dump() && !t.close_announced();
            match epoch {
                Some(e) if announced_again && idle(t, &d) => {
                    if t.announced_epoch != e {
                        Ok(Some(Forget::Idle))
                    } else {
                        Err(IdleKept)
                    }
                }
                _ => Ok(None),
            }
        }
        Ok(None) => Ok(Some(if t.close_announced() { Forget::Gone } else { Forget::Closed })),
        Err(e) => {
            log::debug!("socket {:#x}: {e}", t.sk);
            m.sample_errors.inc();
            Ok(None)
        }
    }
}

/// Feeds one sample to a socket's verdict and notes what changed. A socket in TCP_REPAIR is not
/// judged: a checkpoint holds its queue on purpose, and its verdict starts afresh after.
fn observe(t: &mut Tracked, d: DiagSocket, grace: Grace, m: &Metrics) {
    t.tcp_state = d.sample.state;
    t.last = Some(d);
    t.history.push(d.sample, t.detailed);
    if d.sample.repair {
        if let Some(v) = t.verdict.take() {
            if let Some(age) = v.stalled_for_ms(d.sample.at_ms) {
                m.stall_duration.observe(age as f64 / 1e3);
            }
            t.history.note(d.sample.at_ms, "in TCP_REPAIR (a checkpoint in progress): not judged".into(), t.detailed);
        }
        return;
    }
    let now = d.sample.at_ms;
    match t.verdict.get_or_insert_with(SocketVerdict::new).observe(&d.sample, grace) {
        Transition::Stalled(stall) => {
            let age = now.saturating_sub(stall.since_ms);
            t.history.note(
                now,
                format!(
                    "stalled ({}): stuck for {age} ms with {} queued, since {}{}",
                    stall.reason.as_str(),
                    d.sample.queued,
                    stall.proof.describe(),
                    stall.drain.map_or(String::new(), |d| format!(" ({} bytes in {} ms)", d.bytes, d.over_ms))
                ),
                t.detailed,
            );
            m.stalls_detected.get_or_create(&ReasonLabel::of(stall.reason.as_str())).inc();
            log::info!(
                "stalled: {} -> {} sender {} ({}) reason {} queued {}",
                t.local_addr(),
                t.remote_addr(),
                t.sender.tgid,
                crate::escape::printable(&t.sender.comm),
                stall.reason.as_str(),
                d.sample.queued
            );
        }
        Transition::Recovered { stalled_for_ms } => {
            m.stalls_recovered.inc();
            m.stall_duration.observe(stalled_for_ms as f64 / 1e3);
            t.recoveries += 1;
            t.history.note(now, format!("recovered after {stalled_for_ms} ms: bytes acknowledged again"), t.detailed);
            log::info!("recovered after {stalled_for_ms} ms: {} -> {}", t.local_addr(), t.remote_addr());
        }
        Transition::None => {}
    }
}

#[cfg(test)]
mod tests {
    use detector_common::{SendHook, SockTuple, TCP_ESTABLISHED};

    use super::*;
    use crate::{sample::Sample, tracker::Sender};

    fn sampled(queued: u32) -> Result<Option<DiagSocket>, String> {
        let sample = Sample { at_ms: 1_000, state: TCP_ESTABLISHED, queued, bytes_acked: 100, snd_wnd: Some(65_535), rto_ms: 204, ..Default::default() };
        Ok(Some(DiagSocket { cookie: 7, inode: 1, uid: 0, sample }))
    }

    fn hooked(hook: SendHook, announced_epoch: u32) -> Tracked {
        let mut t = Tracked::new(1 << 63, SockTuple::default(), Sender::default(), hook as u8, 1, TCP_ESTABLISHED);
        t.announced_epoch = announced_epoch;
        t
    }

    #[test]
    fn a_lost_owner_change_is_repaired_from_the_walks_record() {
        let m = Metrics::new();
        let mut t = hooked(SendHook::TcpSendmsgLocked, 0);
        t.sender.tgid = 42;
        let d = sampled(4096).unwrap().unwrap();
        let mut st = SockState { tgid: 77, tid: 78, ..Default::default() };
        st.comm[..6].copy_from_slice(b"worker");
        assert_eq!(from_walk(&mut t, Some((d, st)), 3_000.into(), &m), None);
        assert_eq!((t.sender.tgid, t.sender.tid, &*t.sender.comm), (77, 78, "worker"));
        // A record adopted by a reconcile names nobody: the sender known stays.
        st.tgid = 0;
        from_walk(&mut t, Some((d, st)), 3_000.into(), &m);
        assert_eq!(t.sender.tgid, 77);
    }

    #[test]
    fn a_storage_socket_gone_idle_is_forgotten_only_once_its_announcement_is_of_an_earlier_epoch() {
        let m = Metrics::new();
        let storage = SendHook::TcpSendmsgLocked;
        // Announced in the current epoch: it may have taken the epoch's one announcement, so a
        // later wedge would not be announced again: kept.
        assert!(matches!(from_diag(&mut hooked(storage, 3), sampled(0), 2_000.into(), &m, Some(3)), Err(IdleKept)));
        // Announced in an earlier epoch: its next send with bytes waiting announces it again.
        assert!(matches!(from_diag(&mut hooked(storage, 2), sampled(0), 2_000.into(), &m, Some(3)), Ok(Some(Forget::Idle))));
        // Bytes waiting: judged and kept, whatever the epoch.
        assert!(matches!(from_diag(&mut hooked(storage, 2), sampled(4096), 2_000.into(), &m, Some(3)), Ok(None)));
        // Where the walk samples (no epochs), or with the hash map (its record stays until the
        // close), an idle hooked socket is not forgotten here.
        assert!(matches!(from_diag(&mut hooked(storage, 2), sampled(0), 2_000.into(), &m, None), Ok(None)));
        assert!(matches!(from_diag(&mut hooked(SendHook::SockSendLength, 2), sampled(0), 2_000.into(), &m, Some(3)), Ok(None)));
        // Not found: closed (storage dies silently) or gone (its close event never came).
        assert!(matches!(from_diag(&mut hooked(storage, 3), Ok(None), 2_000.into(), &m, Some(3)), Ok(Some(Forget::Closed))));
        assert!(matches!(from_diag(&mut hooked(SendHook::SockSendLength, 0), Ok(None), 2_000.into(), &m, Some(3)), Ok(Some(Forget::Gone))));
    }

    #[test]
    fn a_deadline_a_pass_has_tried_is_not_chased_by_early_passes() {
        let mut j = Judge::new(25_000, 3_000.into());
        j.tracker.adopt(1, &SockState::default());
        // Bytes in flight, first seen at 1,000 ms: due at 4,000 ms.
        let mut v = SocketVerdict::new();
        v.observe(&Sample { at_ms: 1_000, state: TCP_ESTABLISHED, queued: 10, unacked: 1, snd_wnd: Some(100), rto_ms: 204, ..Default::default() }, 3_000);
        j.tracker.get_mut(1).unwrap().verdict = Some(v);
        assert_eq!(j.next_due(3_999), Some(4_000));
        // A pass that began at the deadline sampled it after; still not stalled, its sample
        // failed: the next interval's pass tries again, not an early pass every few ms.
        assert_eq!(j.next_due(4_000), None);
    }
}
