//! The agent's table of tracked sockets: created by the kernel's events (or rebuilt from the
//! `SOCKS` map), sampled by the sweep, and judged by `verdict`. No I/O here.
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use detector_common::{AF_INET6, EventKind, SockEvent, SockState, SockTuple, TASK_COMM_LEN, TUPLE_LOOKED, TUPLE_MPTCP, TUPLE_NO_FILE};

use crate::{
    sample::{DiagSocket, Lookup},
    verdict::SocketVerdict,
};

/// Who sent on the socket when tracking began or its owner last changed, as the send hook saw
/// it (process context). Default: nobody seen (a socket found by a dump).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sender {
    pub tgid: u32,
    pub tid: u32,
    pub comm: crate::owner::Text,
    pub cgroup_id: u64,
}

#[derive(Debug, Clone)]
pub struct Tracked {
    pub sk: u64,
    pub tuple: SockTuple,
    pub sender: Sender,
    pub hook: u8,
    /// When the kernel side began tracking it (CLOCK_MONOTONIC ns; 0 for sockets found by a
    /// dump).
    pub first_send_ns: u64,
    /// The agent's epoch it was last announced in (`Tracked` or `Waiting`): announced in the
    /// current one, it may have taken that epoch's one announcement, so it is not forgotten
    /// as idle yet (see `kernel_link::Epochs`).
    pub announced_epoch: u32,
    pub tcp_state: u8,
    /// From the last sample.
    pub last: Option<DiagSocket>,
    pub verdict: Option<SocketVerdict>,
    /// Stalls of this socket that ended because progress resumed.
    pub recoveries: u32,
    /// A process in the socket's network namespace, for sockets found at start-up (no sender).
    pub netns_hint: Option<u32>,
    /// The kernel side's record of it, as the last walk carried it (socket storage; kept for
    /// detailed sockets only).
    pub kernel_state: Option<Box<SockState>>,
    /// Recent samples and verdict changes, for `detector explain`.
    pub history: History,
    /// Kept in full (see `agent::detail`): every socket while the table is small; under a
    /// flood, only the stalled sockets chosen for detail. Others keep a short history.
    pub detailed: bool,
}

/// Bounded per-socket history: the last samples while bytes are queued (an idle socket keeps
/// only a few: its story is "nothing queued"), and the last verdict changes.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub samples: std::collections::VecDeque<crate::sample::Sample>,
    pub changes: std::collections::VecDeque<(u64, String)>,
}

impl History {
    pub const SAMPLES: usize = 12;
    pub const IDLE_SAMPLES: usize = 3;
    pub const CHANGES: usize = 8;
    pub const UNDETAILED_SAMPLES: usize = 1;
    pub const UNDETAILED_CHANGES: usize = 0;

    pub fn push(&mut self, s: crate::sample::Sample, detailed: bool) {
        let cap = match (detailed, s.queued > 0) {
            (true, true) => Self::SAMPLES,
            (true, false) => Self::IDLE_SAMPLES,
            (false, _) => Self::UNDETAILED_SAMPLES,
        };
        self.samples.push_back(s);
        while self.samples.len() > cap {
            self.samples.pop_front();
        }
    }

    pub fn note(&mut self, at_ms: u64, what: String, detailed: bool) {
        self.changes.push_back((at_ms, what));
        let cap = if detailed { Self::CHANGES } else { Self::UNDETAILED_CHANGES };
        while self.changes.len() > cap {
            self.changes.pop_front();
        }
    }

    /// Down to what an undetailed socket keeps, its memory given back.
    pub fn shrink(&mut self) {
        while self.samples.len() > Self::UNDETAILED_SAMPLES {
            self.samples.pop_front();
        }
        while self.changes.len() > Self::UNDETAILED_CHANGES {
            self.changes.pop_front();
        }
        self.samples.shrink_to_fit();
        self.changes.shrink_to_fit();
    }
}

impl Tracked {
    pub fn new(sk: u64, tuple: SockTuple, sender: Sender, hook: u8, first_send_ns: u64, tcp_state: u8) -> Self {
        Tracked {
            sk,
            tuple,
            sender,
            hook,
            first_send_ns,
            announced_epoch: 0,
            tcp_state,
            last: None,
            verdict: None,
            recoveries: 0,
            netns_hint: None,
            kernel_state: None,
            history: History::default(),
            detailed: true,
        }
    }

    /// Keeps this socket in full, or not (see `agent::detail`).
    pub fn set_detailed(&mut self, detailed: bool) {
        if self.detailed && !detailed {
            self.history.shrink();
            self.kernel_state = None;
        }
        self.detailed = detailed;
    }

    /// Found by a dump, not announced by a send hook.
    pub fn found_by_dump(&self) -> bool {
        self.sk >> 63 == 0
    }

    /// Whether the kernel side announces its close: a record in the hash map (the fallback
    /// hooks). Socket storage dies with the socket, silently; a dump's find has no record; an
    /// MPTCP connection's record is not ended by any close program (the MPTCP layer sets its
    /// state without the tracepoint).
    pub fn close_announced(&self) -> bool {
        !self.found_by_dump() && !self.mptcp() && detector_common::SendHook::try_from(self.hook).is_ok_and(|h| !h.socket_storage())
    }

    /// A Multipath TCP connection: its addresses are its first subflow's, and the record is
    /// the MPTCP socket's (see `detector_common::TUPLE_MPTCP`).
    pub fn mptcp(&self) -> bool {
        self.tuple.flags & TUPLE_MPTCP != 0
    }

    /// Sampled through sock_diag whatever the configuration: a dump's find, or an MPTCP
    /// connection (the kernel walk reads TCP sockets in `SK_STATE` only).
    pub fn sampled_by_diag(&self) -> bool {
        self.found_by_dump() || self.mptcp()
    }

    /// Whether the kernel created it (no file when tracking began); `None` if the kernel side
    /// never looked (found by a dump).
    pub fn kernel_socket(&self) -> Option<bool> {
        (self.tuple.flags & TUPLE_LOOKED != 0).then_some(self.tuple.flags & TUPLE_NO_FILE != 0)
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.local(), self.tuple.sport)
    }

    pub fn remote_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.remote(), self.tuple.dport)
    }

    /// Local address as people read it: an IPv4 peer of a dual-stack socket shows as IPv4
    /// (`127.0.0.1`, not `::ffff:127.0.0.1`), so IPv4 selectors and eyes match it.
    pub fn local(&self) -> IpAddr {
        addr(&self.tuple.saddr, self.tuple.family).to_canonical()
    }

    pub fn remote(&self) -> IpAddr {
        addr(&self.tuple.daddr, self.tuple.family).to_canonical()
    }

    /// How sock_diag finds it: the socket's own family and addresses, and its interface.
    pub fn lookup(&self) -> Lookup {
        Lookup {
            family: self.tuple.family,
            local: addr(&self.tuple.saddr, self.tuple.family),
            local_port: self.tuple.sport,
            remote: addr(&self.tuple.daddr, self.tuple.family),
            remote_port: self.tuple.dport,
            ifindex: self.tuple.bound_dev_if,
            cookie: self.last.map(|d| d.cookie),
        }
    }
}

pub fn addr(b: &[u8; 16], family: u16) -> IpAddr {
    if family == AF_INET6 { IpAddr::V6(Ipv6Addr::from(*b)) } else { IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])) }
}

pub fn comm_str(c: &[u8; TASK_COMM_LEN]) -> String {
    let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
    String::from_utf8_lossy(&c[..end]).into_owned()
}

/// Why an entry left the table (`detector_sockets_forgotten_total{why}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Forget {
    /// Its close was seen: the kernel side's close event (hash-map hooks), or, for a socket
    /// no close event exists for (socket storage dies silently; a socket found by a dump has
    /// no kernel record), a sample that found it closed.
    Closed,
    /// A socket the hash map tracks was found closed by a sample, its close event never came:
    /// lost to a full ring buffer, or a close program run the kernel skipped. Its kernel entry
    /// is removed then (`KernelLink::prune`).
    Gone,
    /// Nothing stuck any more (found by a dump or the walk), or dropped by the kernel side the
    /// instant tracking began (`Untracked`).
    Idle,
    /// A new socket took its addresses (or its kernel address).
    Replaced,
    /// The table was full: it made room for a socket of a peer with fewer sockets tracked (an
    /// undetailed socket of the peer with the most goes; see [`Tracker::with_cap`]).
    Evicted,
}

impl Forget {
    pub const ALL: [Forget; 5] = [Self::Closed, Self::Gone, Self::Idle, Self::Replaced, Self::Evicted];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Gone => "gone",
            Self::Idle => "idle",
            Self::Replaced => "replaced",
            Self::Evicted => "evicted",
        }
    }
}

/// Keys of sockets found by a sock_diag dump are `SEEDED | cookie`: bit 63 clear, where the key
/// of a socket seen by a send hook, a kernel address, always has it set.
pub const SEEDED: u64 = 1 << 62;

type TupleKey = ([u8; 16], [u8; 16], u16, u16, u32);

fn tuple_key(t: &SockTuple) -> TupleKey {
    (t.saddr, t.daddr, t.sport, t.dport, t.netns)
}

/// The table, keyed by `struct sock` address (or `SEEDED | cookie`), with an index by
/// addresses so a dump can tell in O(1) whether a socket is already known, and one by peer
/// address for fairness when it is full.
#[derive(Debug)]
pub struct Tracker {
    /// Boxed: an entry is ~500 bytes, and the map's buckets are allocated to a power of two.
    socks: HashMap<u64, Box<Tracked>>,
    by_tuple: HashMap<TupleKey, u64>,
    /// Peer address (and namespace) → the sockets to it.
    by_peer: HashMap<PeerKey, std::collections::HashSet<u64>>,
    /// (sockets, peer) for every peer in `by_peer`: the peer with the most, in O(log n).
    by_count: std::collections::BTreeSet<(usize, PeerKey)>,
    /// Most sockets kept (see [`Tracker::with_cap`]).
    cap: usize,
    /// Sockets not taken in because the table was full (never reset).
    pub refused: u64,
    /// Entries evicted to make room, not yet counted by the caller.
    pub evicted: Vec<Tracked>,
}

type PeerKey = ([u8; 16], u32);

fn peer_key(t: &SockTuple) -> PeerKey {
    (t.daddr, t.netns)
}

/// Sockets the agent keeps by default (`--max-tracked`): ~1 KB each once undetailed.
pub const TRACKED_MAX: usize = 25_000;

impl Default for Tracker {
    fn default() -> Self {
        Self::with_cap(TRACKED_MAX)
    }
}

impl Tracker {
    /// A table of at most `cap` sockets. When it is full, a new socket takes the place of an
    /// undetailed one of the peer with the most sockets in the table, if its own peer has
    /// fewer: a client that stalls thousands of connections cannot crowd out everyone else's;
    /// otherwise it is refused (counted in `refused`).
    pub fn with_cap(cap: usize) -> Self {
        Tracker {
            socks: HashMap::new(),
            by_tuple: HashMap::new(),
            by_peer: HashMap::new(),
            by_count: Default::default(),
            cap: cap.max(1),
            refused: 0,
            evicted: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.socks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.socks.is_empty()
    }

    pub fn get(&self, sk: u64) -> Option<&Tracked> {
        self.socks.get(&sk).map(|b| &**b)
    }

    pub fn get_mut(&mut self, sk: u64) -> Option<&mut Tracked> {
        self.socks.get_mut(&sk).map(|b| &mut **b)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Tracked> {
        self.socks.values().map(|b| &**b)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Tracked> {
        self.socks.values_mut().map(|b| &mut **b)
    }

    /// Whether a socket with these addresses is tracked.
    pub fn knows(&self, tuple: &SockTuple) -> bool {
        self.by_tuple.contains_key(&tuple_key(tuple))
    }

    fn insert(&mut self, t: Tracked) -> Option<Tracked> {
        let (sk, k) = (t.sk, tuple_key(&t.tuple));
        let new = !self.socks.contains_key(&sk) && !self.by_tuple.contains_key(&k);
        if new && self.socks.len() >= self.cap && !self.make_room(peer_key(&t.tuple)) {
            self.refused += 1;
            return None;
        }
        let old = self.take(sk);
        // Another entry with these addresses (a seeded one the hook now announces, or one
        // whose close went unseen) is replaced.
        let displaced = self.by_tuple.get(&k).copied().and_then(|other| self.take(other));
        self.by_tuple.insert(k, sk);
        self.count_peer(peer_key(&t.tuple), sk, true);
        self.socks.insert(sk, Box::new(t));
        displaced.or(old)
    }

    /// Adds `sk` to (or removes it from) its peer's sockets, keeping `by_count` in step.
    fn count_peer(&mut self, p: PeerKey, sk: u64, add: bool) {
        let set = self.by_peer.entry(p).or_default();
        let before = set.len();
        if add {
            set.insert(sk)
        } else {
            set.remove(&sk)
        };
        let after = set.len();
        if after == 0 {
            self.by_peer.remove(&p);
        }
        if before != after {
            self.by_count.remove(&(before, p));
            if after > 0 {
                self.by_count.insert((after, p));
            }
        }
    }

    /// Evicts a socket of the peer with the most sockets (an undetailed one if it has any), if
    /// `for_peer` has fewer than it less one; `false` when nothing may go. O(1) when nothing
    /// may (a flood's own sockets, every pass).
    fn make_room(&mut self, for_peer: PeerKey) -> bool {
        let mine = self.by_peer.get(&for_peer).map_or(0, |s| s.len());
        let Some(&(most, peer)) = self.by_count.last() else { return false };
        if most <= mine + 1 {
            return false;
        }
        let set = &self.by_peer[&peer];
        let undetailed = set.iter().copied().find(|sk| self.socks.get(sk).is_some_and(|t| !t.detailed));
        let Some(victim) = undetailed.or_else(|| set.iter().copied().next()) else { return false };
        if let Some(t) = self.take(victim) {
            self.evicted.push(t);
        }
        true
    }

    /// Removes `sk` from the table and every index.
    fn take(&mut self, sk: u64) -> Option<Tracked> {
        let t = *self.socks.remove(&sk)?;
        let k = tuple_key(&t.tuple);
        if self.by_tuple.get(&k) == Some(&t.sk) {
            self.by_tuple.remove(&k);
        }
        self.count_peer(peer_key(&t.tuple), sk, false);
        Some(t)
    }

    pub fn remove(&mut self, sk: u64) -> Option<Tracked> {
        self.take(sk)
    }

    /// Applies one kernel event; returns the entry it ended, if any, and why (a closed socket,
    /// or one whose address a new socket now has).
    pub fn apply(&mut self, ev: &SockEvent) -> Option<(Tracked, Forget)> {
        let sender = || Sender { tgid: ev.tgid, tid: ev.tid, comm: comm_str(&ev.comm).into(), cgroup_id: ev.cgroup_id };
        match EventKind::try_from(ev.kind) {
            Ok(kind @ (EventKind::Tracked | EventKind::Waiting)) => {
                // Announced twice (two CPUs raced to start tracking it), or again (bytes waiting
                // in a new epoch): keep what we know.
                if let Some(t) = self.socks.get_mut(&ev.sk).filter(|t| t.tuple == ev.tuple) {
                    if kind == EventKind::Tracked {
                        t.sender = sender();
                    }
                    // Two CPUs may announce it in either order: the later epoch wins.
                    if ev.epoch.wrapping_sub(t.announced_epoch) < 1 << 31 {
                        t.announced_epoch = ev.epoch;
                    }
                    return None;
                }
                // Announced again after the agent forgot it as idle: tracked from here.
                let mut t = Tracked::new(ev.sk, ev.tuple, sender(), ev.hook, ev.ts_ns, ev.state);
                t.announced_epoch = ev.epoch;
                self.insert(t).map(|t| (t, Forget::Replaced))
            }
            Ok(EventKind::OwnerChanged) => {
                if let Some(t) = self.socks.get_mut(&ev.sk) {
                    t.sender = sender();
                }
                None
            }
            Ok(EventKind::Closed) => self.remove(ev.sk).map(|t| (t, Forget::Closed)),
            // Only the entry its `Tracked` made (same addresses).
            Ok(EventKind::Untracked) => {
                self.socks.get(&ev.sk).is_some_and(|t| t.tuple == ev.tuple).then(|| self.remove(ev.sk)).flatten().map(|t| (t, Forget::Idle))
            }
            Err(_) => None,
        }
    }

    /// Adds a socket found by a dump, keyed by its cookie: it may be wedged in a send that no
    /// hook will announce (it began before the agent, or before bytes were waiting). Nothing
    /// happens if a socket with these addresses is tracked already.
    pub fn seed(&mut self, cookie: u64, tuple: SockTuple, state: u8, netns_pid: u32) -> bool {
        if self.knows(&tuple) {
            return false;
        }
        let mut t = Tracked::new(SEEDED | cookie, tuple, Sender::default(), 0, 0, state);
        t.netns_hint = Some(netns_pid);
        self.insert(t);
        self.socks.contains_key(&(SEEDED | cookie))
    }

    /// Adds a socket the kernel side keeps that the table lacks (its event dropped, or the walk
    /// reports it again after it went idle); an entry of another socket at that address (its
    /// addresses differ) is replaced and returned.
    pub fn adopt(&mut self, sk: u64, st: &SockState) -> Option<Tracked> {
        if self.socks.get(&sk).is_some_and(|t| t.tuple == st.tuple) {
            return None;
        }
        let sender = Sender { tgid: st.tgid, tid: st.tid, comm: comm_str(&st.comm).into(), cgroup_id: st.cgroup_id };
        self.insert(Tracked::new(sk, st.tuple, sender, st.hook, st.first_send_ns, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detector_common::SendHook;

    fn ev(kind: EventKind, sk: u64, state: u8) -> SockEvent {
        let mut comm = [0u8; TASK_COMM_LEN];
        comm[..6].copy_from_slice(b"server");
        SockEvent {
            sk,
            kind: kind as u8,
            state,
            tgid: 42,
            tid: 43,
            comm,
            tuple: SockTuple {
                saddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                daddr: [10, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                sport: 8080,
                dport: 50000,
                family: 2,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn seeded_socket_is_replaced_when_the_send_hook_sees_it() {
        let mut t = Tracker::default();
        let e = ev(EventKind::Tracked, 0xffff_8880_0000_1000, 1);
        t.seed(77, e.tuple, 1, 1);
        t.seed(78, e.tuple, 1, 1);
        assert_eq!(t.len(), 1, "the same tuple is seeded once");
        assert!(t.get(SEEDED | 77).is_some_and(Tracked::found_by_dump));
        let ended = t.apply(&e);
        assert_eq!(ended.map(|(x, why)| (x.sk, why)), Some((SEEDED | 77, Forget::Replaced)), "the seeded entry is replaced");
        assert_eq!(t.len(), 1);
        assert!(t.get(SEEDED | 77).is_none() && t.get(e.sk).is_some_and(|x| !x.found_by_dump()));
        // And a socket the hook already tracks is not seeded again.
        assert!(!t.seed(79, e.tuple, 1, 1));
        assert_eq!(t.len(), 1);
        // Once it is gone, its addresses can be seeded again.
        t.remove(e.sk);
        assert!(t.seed(80, e.tuple, 1, 1));
    }

    #[test]
    fn history_is_bounded_and_short_when_idle() {
        let mut h = History::default();
        let mut s = crate::sample::Sample { state: 1, queued: 10, ..Default::default() };
        for i in 0..100 {
            s.at_ms = i;
            h.push(s, true);
        }
        assert_eq!(h.samples.len(), History::SAMPLES);
        s.queued = 0;
        h.push(s, true);
        assert_eq!(h.samples.len(), History::IDLE_SAMPLES);
        for i in 0..20 {
            h.note(i, format!("change {i}"), true);
        }
        assert_eq!(h.changes.len(), History::CHANGES);
        // Undetailed (a flood): a short history, whatever is queued.
        s.queued = 10;
        h.push(s, false);
        assert_eq!(h.samples.len(), History::UNDETAILED_SAMPLES);
        h.shrink();
        assert_eq!(h.changes.len(), History::UNDETAILED_CHANGES);
    }

    #[test]
    fn events_create_update_and_remove() {
        let mut t = Tracker::default();
        t.apply(&ev(EventKind::Tracked, 1, 1));
        let s = t.get(1).unwrap();
        assert_eq!(&*s.sender.comm, "server");
        assert_eq!(s.local().to_string(), "127.0.0.1");
        assert_eq!(s.remote().to_string(), "10.1.2.3");
        // A v4-mapped peer of a dual-stack socket reads as IPv4; the lookup keeps the v6 form.
        let mut mapped = ev(EventKind::Tracked, 9, 1);
        mapped.tuple.family = AF_INET6;
        mapped.tuple.daddr = std::net::Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped().octets();
        t.apply(&mapped);
        let m = t.get(9).unwrap();
        assert_eq!(m.remote().to_string(), "10.1.2.3");
        assert!(m.lookup().remote.is_ipv6());
        t.remove(9);
        let mut moved = ev(EventKind::OwnerChanged, 1, 1);
        moved.tgid = 77;
        t.apply(&moved);
        assert_eq!(t.get(1).unwrap().sender.tgid, 77);
        t.apply(&ev(EventKind::OwnerChanged, 2, 1));
        assert!(t.get(2).is_none(), "an owner change of an unknown socket creates nothing");
        // Announced twice: the table keeps one entry, with the latest owner.
        t.apply(&ev(EventKind::Tracked, 1, 1));
        assert_eq!((t.len(), t.get(1).unwrap().sender.tgid), (1, 42));
        t.apply(&ev(EventKind::Closed, 1, 7));
        assert!(t.is_empty());
        let mut bad = ev(EventKind::Tracked, 3, 1);
        bad.kind = 99;
        t.apply(&bad);
        assert!(t.is_empty());
    }

    #[test]
    fn a_record_dropped_as_it_began_leaves_nothing_whatever_order_its_close_took() {
        let mut t = Tracker::default();
        // A reset's close event reserved before the announcement (then ignored), the
        // announcement, and the send's second look dropping the record.
        t.apply(&ev(EventKind::Closed, 1, 7));
        t.apply(&ev(EventKind::Tracked, 1, 1));
        let (gone, why) = t.apply(&ev(EventKind::Untracked, 1, 1)).expect("the entry ends");
        assert_eq!((gone.sk, why), (1, Forget::Idle));
        assert!(t.is_empty());
        // After the announcement the close ends it; the `Untracked` that follows changes nothing.
        t.apply(&ev(EventKind::Tracked, 1, 1));
        assert_eq!(t.apply(&ev(EventKind::Closed, 1, 7)).map(|(_, w)| w), Some(Forget::Closed));
        assert!(t.apply(&ev(EventKind::Untracked, 1, 1)).is_none());
        // Never another socket's entry: one at that kernel address with other addresses stays.
        t.apply(&ev(EventKind::Tracked, 1, 1));
        let mut other = ev(EventKind::Untracked, 1, 1);
        other.tuple.sport += 1;
        assert!(t.apply(&other).is_none());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn an_announcement_in_a_new_epoch_brings_back_a_forgotten_socket_and_keeps_a_known_one() {
        let mut t = Tracker::default();
        let mut e = ev(EventKind::Tracked, 1, 1);
        e.epoch = 4;
        t.apply(&e);
        assert_eq!(t.get(1).unwrap().announced_epoch, 4);
        // Known: the epoch moves on, the owner stays (it is the record's, not the sender's).
        let mut w = ev(EventKind::Waiting, 1, 1);
        (w.epoch, w.tgid) = (5, 99);
        assert!(t.apply(&w).is_none());
        assert_eq!((t.get(1).unwrap().announced_epoch, t.get(1).unwrap().sender.tgid), (5, 42));
        // An earlier epoch's announcement arriving late changes nothing.
        w.epoch = 4;
        t.apply(&w);
        assert_eq!(t.get(1).unwrap().announced_epoch, 5);
        // Forgotten as idle, then announced again: tracked from here, with the record's owner.
        t.remove(1);
        w.epoch = 6;
        assert!(t.apply(&w).is_none());
        assert_eq!((t.get(1).unwrap().announced_epoch, t.get(1).unwrap().sender.tgid), (6, 99));
    }

    #[test]
    fn a_full_table_makes_room_for_a_peer_with_fewer_sockets_and_refuses_the_flooding_one() {
        let mut t = Tracker::with_cap(4);
        let to = |peer: u8, port: u16| {
            let mut e = ev(EventKind::Tracked, 0xffff_0000_0000_0000 | u64::from(peer) << 16 | u64::from(port), 1);
            (e.tuple.daddr[3], e.tuple.sport) = (peer, port);
            e
        };
        for port in 1..=4 {
            t.apply(&to(9, port));
        }
        for x in t.iter_mut() {
            x.set_detailed(false);
        }
        // The flooding peer gets no more room.
        t.apply(&to(9, 5));
        assert_eq!((t.len(), t.refused), (4, 1));
        // Another peer's socket takes the place of one of the flood's.
        t.apply(&to(7, 1));
        assert_eq!(t.len(), 4);
        assert_eq!(t.evicted.len(), 1);
        assert_eq!(t.evicted[0].tuple.daddr[3], 9);
        assert!(t.iter().any(|x| x.tuple.daddr[3] == 7));
        // A seed into a full table is refused too, and says so.
        let mut d = to(9, 6).tuple;
        d.daddr[3] = 9;
        assert!(!t.seed(55, d, 1, 1));
        // Undetailed sockets go first; when the flood has none (a table no bigger than the
        // detail cap), a detailed one goes: the flood must not keep every other peer out.
        for x in t.iter_mut() {
            x.set_detailed(true);
        }
        t.apply(&to(8, 1));
        assert_eq!((t.len(), t.evicted.len()), (4, 2));
        assert_eq!(t.evicted[1].tuple.daddr[3], 9);
        assert!(t.iter().any(|x| x.tuple.daddr[3] == 8));
    }

    #[test]
    fn a_socket_announced_again_counts_once_for_its_peer() {
        let mut t = Tracker::with_cap(8);
        let mut e = ev(EventKind::Tracked, 0xffff_0000_0000_0100, 1);
        e.tuple.daddr[3] = 9;
        t.apply(&e);
        t.apply(&e);
        let mut other = ev(EventKind::Tracked, 0xffff_0000_0000_0200, 1);
        (other.tuple.daddr[3], other.tuple.sport) = (9, 4242);
        t.apply(&other);
        assert_eq!(t.by_peer.values().map(|s| s.len()).collect::<Vec<_>>(), vec![2]);
        assert_eq!(t.by_count.iter().copied().map(|(n, _)| n).collect::<Vec<_>>(), vec![2]);
        t.remove(other.sk);
        t.remove(e.sk);
        assert!(t.by_peer.is_empty() && t.by_count.is_empty() && t.by_tuple.is_empty());
    }

    #[test]
    fn only_a_hash_map_record_has_a_close_event_to_miss() {
        let mut t = Tracker::default();
        let mut e = ev(EventKind::Tracked, 0xffff_8880_0000_1000, 1);
        e.hook = SendHook::KprobeTcpSendmsgLocked as u8;
        t.apply(&e);
        assert!(t.get(e.sk).is_some_and(Tracked::close_announced), "a kprobe's record ends with a close event");
        let mut s = ev(EventKind::Tracked, 0xffff_8880_0000_2000, 1);
        (s.hook, s.tuple.sport) = (SendHook::TcpSendmsgLocked as u8, 9090);
        t.apply(&s);
        assert!(t.get(s.sk).is_some_and(|x| !x.close_announced()), "socket storage dies silently");
        let mut d = e.tuple;
        d.sport = 7070;
        t.seed(5, d, 1, 1);
        assert!(t.get(SEEDED | 5).is_some_and(|x| !x.close_announced()), "a dump's find has no kernel record");
    }
}
