//! The detection pass, once per `--interval`, on its own thread (it enters network namespaces,
//! which is per-thread state). It owns the socket table: applies the kernel's events, samples
//! each tracked socket, feeds the verdict, attributes stalled sockets and publishes a snapshot.
use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::Receiver,
    },
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use detector_common::{Counter, SockState, SockTuple};

use super::{Shared, Snapshot};
use crate::{
    api::{StalledSocket, TrackedSocket, tcp_state_name},
    metrics::ReasonLabel,
    owner::{self, Holder, pods::PodNames},
    reaper::Reaper,
    sample::netns::{self, NetnsPool},
    tracker::{Forget, Tracker},
    verdict::{self, Reason, StallTracker, TCP_CLOSE_WAIT, Transition},
};

#[derive(Debug, Clone)]
pub struct Config {
    pub grace: Duration,
    pub interval: Duration,
    pub pod_logs_dir: std::path::PathBuf,
}

/// Questions only the sweep thread can answer, since it owns the socket table. Answered
/// between passes, built only when asked (the table is never copied out on every pass).
#[derive(Debug, Clone, Copy)]
pub enum Query {
    /// Every tracked socket (`detector sockets`).
    Sockets,
    /// One socket's history (`detector explain <id>`); `None` when no socket has that id.
    Explain(u64),
}

pub type QueryRequest = (Query, tokio::sync::oneshot::Sender<Option<serde_json::Value>>);

#[allow(clippy::too_many_arguments)]
pub fn run(
    cfg: Config,
    mut ring: RingBuf<MapData>,
    queries: Receiver<QueryRequest>,
    mut socks: Option<BpfHashMap<MapData, u64, SockState>>,
    counters: PerCpuArray<MapData, u64>,
    shared: Arc<Shared>,
    mut reaper: Reaper,
    stop: Arc<AtomicBool>,
) {
    let mut pool = match NetnsPool::new() {
        Ok(p) => p,
        Err(e) => {
            log::error!("cannot open sock_diag: {e}; no socket can be sampled");
            return;
        }
    };
    let mut s = Sweep::new(cfg);
    // Sockets already wedged when the agent started (a send blocked since then fires no hook
    // again) are found by one dump per network namespace; afterwards the kernel map is only
    // re-read when events were lost.
    let found = s.reconcile(&mut pool);
    log::info!("start-up scan: {found} sockets with data queued or in CLOSE_WAIT");
    if let Some(socks) = &socks {
        s.resync(socks);
    }
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        s.drain(&mut ring, &shared);
        if s.last_reconcile.elapsed() >= s.reconcile_every() {
            let found = s.reconcile(&mut pool);
            if found > 0 {
                log::debug!("reconcile: {found} sockets no hook announced");
            }
            if let Some(socks) = socks.as_mut() {
                s.prune_map(socks);
            }
        }
        if s.read_counters(&counters, &shared) {
            if let Some(socks) = &socks {
                s.resync(socks);
            }
        }
        let stalled = s.pass(&mut pool, &shared, None);
        s.reap(&mut reaper, &stalled, &mut pool);
        let took = started.elapsed();
        shared.metrics.sweep_duration.observe(took.as_secs_f64());
        shared.metrics.sockets_tracked.set(s.tracker.len() as i64);
        shared.metrics.ready.store(true, Ordering::Relaxed);
        s.sweeps += 1;
        if let Ok(mut snap) = shared.snapshot.write() {
            *snap = Snapshot {
                stalled,
                tracked: s.tracker.len(),
                kernel_map_entries: s.kernel_map_entries,
                sweeps: s.sweeps,
                last_sweep_ms: took.as_secs_f64() * 1e3,
            };
        }
        let deadline = started + s.cfg.interval;
        // At most one early pass per 50 ms, whatever happens to a sample.
        let mut last_early = Instant::now() - Duration::from_secs(1);
        while !stop.load(Ordering::Relaxed) {
            s.drain(&mut ring, &shared);
            while let Ok((q, reply)) = queries.try_recv() {
                let answer = match q {
                    Query::Explain(id) => s.explain(id, socks.as_ref()),
                    Query::Sockets => serde_json::to_value(s.rows()).ok(),
                };
                let _ = reply.send(answer);
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            // A socket whose grace window ends before the next pass is sampled right then, so
            // detection lags the deadline by milliseconds, not by up to an interval.
            let due = s.due;
            let now_ms = s.now_ms();
            if due.is_some_and(|d| d <= now_ms) && last_early.elapsed() >= Duration::from_millis(50) {
                last_early = Instant::now();
                let stalled = s.pass(&mut pool, &shared, Some(now_ms));
                s.reap(&mut reaper, &stalled, &mut pool);
                if let Ok(mut snap) = shared.snapshot.write() {
                    snap.stalled = stalled;
                }
                continue;
            }
            let until_due = due.map_or(Duration::MAX, |d| Duration::from_millis(d.saturating_sub(now_ms).max(10)));
            std::thread::sleep((deadline - now).min(Duration::from_millis(100)).min(until_due));
        }
    }
}

pub struct Sweep {
    cfg: Config,
    tracker: Tracker,
    /// Stalled socket → its holders, re-verified (start time, one readlink) before each use.
    holders: HashMap<u64, Vec<Holder>>,
    /// Stalled sockets no process was found to hold: not scanned for again before this time.
    unknown_until: HashMap<u64, Instant>,
    pods: PodNames,
    /// Sender pid → its pod (`namespace/name`), for `detector sockets`.
    pod_of: HashMap<u32, Option<String>>,
    /// The earliest grace deadline, as of the last pass (see `next_due`).
    due: Option<u64>,
    kernel_counts: [u64; detector_common::COUNTER_SLOTS as usize],
    last_reconcile: Instant,
    /// Sockets announced by a send hook that samples found gone since the last `prune_map`.
    gone_hooked: Vec<(u64, SockTuple)>,
    /// Entries in the kernel's hash map (fallback hooks only), counted at each reconcile.
    pub kernel_map_entries: Option<usize>,
    sweeps: u64,
}

impl Sweep {
    pub fn new(cfg: Config) -> Self {
        let pods = PodNames::new(cfg.pod_logs_dir.clone());
        Sweep {
            cfg,
            tracker: Tracker::default(),
            holders: HashMap::new(),
            unknown_until: HashMap::new(),
            pods,
            pod_of: HashMap::new(),
            due: None,
            kernel_counts: [0; detector_common::COUNTER_SLOTS as usize],
            last_reconcile: Instant::now(),
            gone_hooked: Vec::new(),
            kernel_map_entries: None,
            sweeps: 0,
        }
    }

    /// The sample clock: CLOCK_MONOTONIC in milliseconds (time since boot, as the kernel's own
    /// clocks and `bpf_ktime_get_ns` count), so an onset the kernel proves to lie before the
    /// agent started is still a point on it.
    fn now_ms(&self) -> u64 {
        monotonic_ns() / 1_000_000
    }

    /// Adds the kernel's per-CPU counters to the metrics; `true` when events were lost, so the
    /// table must be rebuilt from the map.
    fn read_counters(&mut self, counters: &PerCpuArray<MapData, u64>, shared: &Shared) -> bool {
        let m = &shared.metrics;
        let mut lost = false;
        for (slot, counter) in [
            (Counter::EventsDropped, &m.kernel_events_dropped),
            (Counter::MapFull, &m.kernel_map_full),
            (Counter::ReadErrors, &m.kernel_read_errors),
            (Counter::Retransmits, &m.kernel_retransmits),
        ] {
            let Ok(values) = counters.get(&(slot as u32), 0) else {
                continue;
            };
            let total: u64 = values.iter().sum();
            let prev = &mut self.kernel_counts[slot as usize];
            if total > *prev {
                counter.inc_by(total - *prev);
                lost |= slot == Counter::EventsDropped;
                *prev = total;
            }
        }
        lost
    }

    /// How often the reconcile dumps every namespace: often enough that a socket found only
    /// by it (its wedged send began before the agent, or it never had bytes waiting at a send)
    /// is judged well within a grace window, rarely enough that the dump (every socket of
    /// the node) stays cheap.
    pub fn reconcile_every(&self) -> Duration {
        (self.cfg.grace / 3).clamp(Duration::from_millis(250), Duration::from_secs(10))
    }

    /// One sock_diag dump per network namespace: adds every socket that can be stalled and is
    /// not tracked (bytes queued, or the peer gone), which no send hook announces: sockets
    /// wedged before the agent started, CLOSE_WAIT sockets that never sent, sends that block
    /// on their first call. Returns how many it added.
    pub fn reconcile(&mut self, pool: &mut NetnsPool) -> usize {
        self.last_reconcile = Instant::now();
        let mut seeded = 0;
        for (inum, pid) in netns::all_netns() {
            let dumped = match pool.conn(inum, Some(pid)).and_then(|c| Ok(c.dump_judged()?)) {
                Ok(d) => d,
                Err(e) => {
                    log::warn!("dump of network namespace {inum}: {e}");
                    continue;
                }
            };
            for d in dumped {
                // Only sockets that can already be stalled: bytes queued, or the peer gone.
                if d.send_queue == 0 && d.state != TCP_CLOSE_WAIT {
                    continue;
                }
                let mut tuple = SockTuple {
                    family: d.family,
                    sport: d.local_port,
                    dport: d.remote_port,
                    netns: inum,
                    bound_dev_if: d.ifindex,
                    ..SockTuple::default()
                };
                put_addr(&mut tuple.saddr, d.local);
                put_addr(&mut tuple.daddr, d.remote);
                seeded += usize::from(self.tracker.seed(d.cookie, tuple, d.state, pid));
            }
        }
        let used: HashSet<u32> = self.tracker.iter().map(|t| t.tuple.netns).collect();
        pool.retain(|inum| used.contains(&inum));
        seeded
    }

    /// Applies the kernel's events.
    fn drain(&mut self, ring: &mut RingBuf<MapData>, shared: &Shared) {
        let now = self.now_ms();
        let tracker = &mut self.tracker;
        crate::kernel::events::drain(ring, |ev| {
            if let Some((t, why)) = tracker.apply(ev) {
                shared.metrics.forgot(why);
                if let Some(age) = t.verdict.and_then(|v| v.stalled_for_ms(now)) {
                    shared.metrics.stall_duration.observe(age as f64 / 1e3);
                }
            }
        });
    }

    /// Removes from the kernel's hash map the entries of sockets found gone, if the entry is
    /// still that socket's (a close the set_state program missed would otherwise stay forever),
    /// and counts what the map holds.
    fn prune_map(&mut self, socks: &mut BpfHashMap<MapData, u64, SockState>) {
        for (sk, tuple) in self.gone_hooked.drain(..) {
            if socks.get(&sk, 0).is_ok_and(|st| st.tuple == tuple) && socks.remove(&sk).is_ok() {
                log::debug!("removed the stale kernel entry of socket {sk:#x}");
            }
        }
        self.kernel_map_entries = Some(socks.keys().filter(Result::is_ok).count());
    }

    fn resync(&mut self, socks: &BpfHashMap<MapData, u64, SockState>) {
        for (sk, st) in socks.iter().filter_map(Result::ok) {
            self.tracker.adopt(sk, &st);
        }
    }

    /// The history of one socket, for `detector explain`.
    fn explain(&self, id: u64, socks: Option<&BpfHashMap<MapData, u64, SockState>>) -> Option<serde_json::Value> {
        let t = self.tracker.iter().find(|t| t.last.is_some_and(|d| d.cookie == id) || t.sk == id)?;
        let now = self.now_ms();
        // What the kernel side recorded (bpf_ktime_get_ns is CLOCK_MONOTONIC).
        let mono_ns = monotonic_ns();
        // The hash map can be read back; socket storage only by the programs themselves.
        let st = socks.and_then(|m| m.get(&t.sk, 0).ok());
        let kernel = (t.first_send_ns != 0).then(|| {
            serde_json::json!({
                "tracked_for_ms": mono_ns.saturating_sub(t.first_send_ns) / 1_000_000,
                "retransmits": st.map(|st| st.retransmits),
                "last_retransmit_ms_ago": st.filter(|st| st.last_retrans_ns != 0)
                    .map(|st| mono_ns.saturating_sub(st.last_retrans_ns) / 1_000_000),
                "send_hook": detector_common::SendHook::try_from(t.hook).ok()
                    .map(|h| crate::kernel::loader::spec(crate::kernel::loader::HookId::Send(h)).label),
            })
        });
        let stall = t.verdict.as_ref().and_then(|v| v.stall().copied());
        let samples: Vec<serde_json::Value> = t
            .history
            .samples
            .iter()
            .map(|s| {
                serde_json::json!({
                    "age_ms": now.saturating_sub(s.at_ms),
                    "state": tcp_state_name(s.state),
                    "queued_bytes": s.queued,
                    "notsent_bytes": s.notsent,
                    "bytes_acked": s.bytes_acked,
                    "in_flight_segments": s.unacked,
                    "peer_window": s.snd_wnd,
                    "retransmits": s.retransmits,
                    "backoff": s.backoff,
                    "unanswered_probes": s.probes,
                    "total_retransmits": s.total_retrans,
                    "last_ack_ms_ago": s.last_ack_recv_ms,
                    "last_data_sent_ms_ago": s.last_data_sent_ms,
                    "rto_ms": s.rto_ms,
                })
            })
            .collect();
        let changes: Vec<serde_json::Value> = t
            .history
            .changes
            .iter()
            .map(|(at, what)| serde_json::json!({"age_ms": now.saturating_sub(*at), "what": what}))
            .collect();
        Some(serde_json::json!({
            "id": t.last.map_or(t.sk, |d| d.cookie),
            "local": std::net::SocketAddr::new(t.local(), t.tuple.sport).to_string(),
            "remote": std::net::SocketAddr::new(t.remote(), t.tuple.dport).to_string(),
            "netns": t.tuple.netns,
            "sender_pid": t.sender.tgid,
            "sender_comm": t.sender.comm,
            "grace_ms": self.cfg.grace.as_millis() as u64,
            "verdict": match (stall, t.verdict.as_ref().and_then(|v| v.onset())) {
                (Some(st), _) => serde_json::json!({
                    "stalled": true,
                    "reason": st.reason.as_str(),
                    "stalled_for_ms": now.saturating_sub(st.since_ms),
                    "onset_proof": st.proof,
                    "onset": st.proof.describe(),
                }),
                (None, Some((since, proof))) => serde_json::json!({
                    "stalled": false,
                    "stuck_for_ms": now.saturating_sub(since),
                    "onset_proof": proof,
                    "onset": proof.describe(),
                }),
                (None, None) => serde_json::json!({"stalled": false}),
            },
            "recoveries": t.recoveries,
            "kernel": kernel,
            "samples": samples,
            "changes": changes,
        }))
    }

    /// Every tracked socket, for `detector sockets`.
    fn rows(&mut self) -> Vec<TrackedSocket> {
        // Pods of senders, resolved once per pid and forgotten every minute.
        if self.sweeps % 60 == 0 {
            self.pod_of.clear();
        }
        let mut out = Vec::with_capacity(self.tracker.len());
        for t in self.tracker.iter() {
            let pid = t.sender.tgid;
            let pod = if pid == 0 {
                None
            } else {
                let pods = &mut self.pods;
                self.pod_of
                    .entry(pid)
                    .or_insert_with(|| {
                        let uid = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                            .ok()
                            .and_then(|c| owner::cgroup::primary_path(&c))
                            .and_then(|p| owner::cgroup::pod_uid(&p))?;
                        pods.get(&uid).map(|p| format!("{}/{}", p.namespace, p.name))
                    })
                    .clone()
            };
            out.push(self.row(t, pod));
        }
        out
    }

    fn row(&self, t: &crate::tracker::Tracked, pod: Option<String>) -> TrackedSocket {
        {
            TrackedSocket {
                id: t.last.map_or(0, |d| d.cookie),
                pod,
                sender_pid: t.sender.tgid,
                sender_comm: t.sender.comm.clone(),
                local: std::net::SocketAddr::new(t.local(), t.tuple.sport).to_string(),
                remote: std::net::SocketAddr::new(t.remote(), t.tuple.dport).to_string(),
                state: tcp_state_name(t.tcp_state).into(),
                queued_bytes: t.last.map(|d| d.sample.queued),
                bytes_acked: t.last.map(|d| d.sample.bytes_acked),
                stalled: t.verdict.as_ref().is_some_and(|v| v.stall().is_some()),
                recoveries: t.recoveries,
            }
        }
    }

    /// The earliest grace deadline of a socket queueing without progress (sample clock, ms).
    /// Deadlines only change when a socket is sampled, so this runs once per pass.
    fn next_due(&self) -> Option<u64> {
        let grace_ms = self.cfg.grace.as_millis() as u64;
        self.tracker.iter().filter_map(|t| t.verdict.as_ref()?.due_at(grace_ms)).min()
    }

    /// Samples every tracked socket (or, with `only_due`, those whose grace deadline has come
    /// by then), updates verdicts, returns the stalled ones.
    pub fn pass(&mut self, pool: &mut NetnsPool, shared: &Shared, only_due: Option<u64>) -> Vec<StalledSocket> {
        let grace_ms = self.cfg.grace.as_millis() as u64;
        let m = &shared.metrics;
        let mut gone = Vec::new();
        let now = self.now_ms();
        for t in self.tracker.iter_mut() {
            if let Some(by) = only_due {
                if t.verdict.as_ref().and_then(|v| v.due_at(grace_ms)).is_none_or(|d| d > by) {
                    continue;
                }
            }
            // Only states in which a socket can be stuck (bytes waiting, or the peer's FIN).
            if t.tcp_state != 0 && !verdict::judged_state(t.tcp_state) {
                if let Some(age) = t.verdict.take().and_then(|v| v.stalled_for_ms(now)) {
                    m.stall_duration.observe(age as f64 / 1e3);
                }
                continue;
            }
            let conn = match pool.conn(t.tuple.netns, Some(t.netns_hint.unwrap_or(t.sender.tgid))) {
                Ok(c) => c,
                Err(e) => {
                    log::debug!("socket {:#x}: {e}", t.sk);
                    m.sample_errors.inc();
                    continue;
                }
            };
            match conn.lookup(&t.lookup(), now) {
                // A socket a dump found has nothing waiting any more and no stall open: forget
                // it (a later dump finds it again if it queues again).
                Ok(Some(d)) if t.found_by_dump() && !verdict::stuck(&d.sample)
                    && t.verdict.as_ref().is_none_or(|v| v.stall().is_none()) => gone.push((t.sk, Forget::Idle)),
                Ok(Some(d)) => {
                    t.tcp_state = d.sample.state;
                    t.last = Some(d);
                    t.history.push(d.sample);
                    let v = t.verdict.get_or_insert_with(StallTracker::new);
                    match v.observe(&d.sample, grace_ms) {
                        Transition::Stalled(stall) => {
                            t.history.note(
                                now,
                                format!(
                                    "stalled ({}): stuck for {} ms with {} queued, since {}",
                                    stall.reason.as_str(),
                                    now.saturating_sub(stall.since_ms),
                                    d.sample.queued,
                                    stall.proof.describe()
                                ),
                            );
                            m.stalls_detected.get_or_create(&label(stall.reason)).inc();
                            log::info!(
                                "stalled: {}:{} -> {}:{} pid {} ({}) reason {} queued {}",
                                t.local(),
                                t.tuple.sport,
                                t.remote(),
                                t.tuple.dport,
                                t.sender.tgid,
                                t.sender.comm,
                                stall.reason.as_str(),
                                d.sample.queued
                            );
                        }
                        Transition::Recovered { stalled_for_ms } => {
                            m.stalls_recovered.inc();
                            m.stall_duration.observe(stalled_for_ms as f64 / 1e3);
                            t.recoveries += 1;
                            t.history.note(now, format!("recovered after {stalled_for_ms} ms: bytes acknowledged again"));
                            log::info!(
                                "recovered after {stalled_for_ms} ms: {}:{} -> {}:{}",
                                t.local(),
                                t.tuple.sport,
                                t.remote(),
                                t.tuple.dport
                            );
                        }
                        Transition::None => {}
                    }
                }
                Ok(None) => gone.push((t.sk, Forget::Gone)),
                Err(e) => {
                    log::debug!("socket {:#x}: {e}", t.sk);
                    m.sample_errors.inc();
                }
            }
        }
        for (sk, why) in gone {
            let Some(t) = self.tracker.remove(sk) else { continue };
            m.forgot(why);
            if why == Forget::Gone && !t.found_by_dump() {
                // Its kernel entry, if any (hash map), is removed too: see `prune_map`.
                self.gone_hooked.push((sk, t.tuple));
            }
            if let Some(age) = t.verdict.and_then(|v| v.stalled_for_ms(now)) {
                m.stall_duration.observe(age as f64 / 1e3);
            }
        }
        let used: HashSet<u32> = self.tracker.iter().map(|t| t.tuple.netns).collect();
        pool.retain(|inum| used.contains(&inum));
        self.due = self.next_due();

        // Open stalls by reason, and the report.
        let mut open: HashMap<Reason, i64> = Reason::ALL.iter().map(|&r| (r, 0)).collect();
        let mut out = Vec::new();
        let stalled: Vec<u64> = self
            .tracker
            .iter()
            .filter(|t| t.verdict.as_ref().and_then(|v| v.stall()).is_some())
            .map(|t| t.sk)
            .collect();
        self.attribute(&stalled);
        for sk in stalled {
            let Some(t) = self.tracker.get(sk) else { continue };
            let (Some(v), Some(d)) = (t.verdict.as_ref(), t.last) else { continue };
            let Some(stall) = v.stall() else { continue };
            *open.entry(stall.reason).or_default() += 1;
            let holders = self.holders.get(&sk).cloned().unwrap_or_default();
            let first = holders.first();
            let pod = first.and_then(|h| h.pod_uid.as_deref()).and_then(|u| self.pods.get(u));
            out.push(StalledSocket {
                pid: first.map(|h| h.pid),
                comm: first.map(|h| h.comm.clone()),
                fd: first.and_then(|h| h.fds.first().copied()),
                owner_known: first.is_some(),
                exe: first.and_then(|h| h.exe.clone()),
                cmdline: first.map(|h| h.cmdline.clone()),
                start_time: first.map(|h| h.start_time),
                sender_pid: t.sender.tgid,
                sender_tid: t.sender.tid,
                sender_comm: t.sender.comm.clone(),
                cgroup_id: t.sender.cgroup_id,
                cgroup: first.and_then(|h| h.cgroup.clone()),
                container_id: first.and_then(|h| h.container_id.clone()),
                pod_uid: first.and_then(|h| h.pod_uid.clone()),
                pod_namespace: pod.map(|p| p.namespace.clone()),
                pod_name: pod.map(|p| p.name.clone()),
                local: std::net::SocketAddr::new(t.local(), t.tuple.sport).to_string(),
                remote: std::net::SocketAddr::new(t.remote(), t.tuple.dport).to_string(),
                state: tcp_state_name(d.sample.state).into(),
                queued_bytes: d.sample.queued,
                notsent_bytes: d.sample.notsent,
                stalled_for_ms: v.stalled_for_ms(d.sample.at_ms).unwrap_or(0),
                reason: stall.reason.as_str().into(),
                retransmits: stall.retransmits(&d.sample),
                zero_window_probes: stall.zero_window_probes(&d.sample),
                peer_window: d.sample.snd_wnd,
                socket_cookie: d.cookie,
                inode: d.inode,
                netns: t.tuple.netns,
                holders,
            });
        }
        for (r, n) in open {
            m.stalls_open.get_or_create(&label(r)).set(n);
        }
        let live: HashSet<u64> = self.tracker.iter().filter(|t| t.verdict.as_ref().is_some_and(|v| v.stall().is_some())).map(|t| t.sk).collect();
        self.holders.retain(|sk, _| live.contains(sk));
        self.unknown_until.retain(|sk, _| live.contains(sk));
        out.sort_by(|a, b| b.stalled_for_ms.cmp(&a.stalled_for_ms));
        out
    }
}

fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

fn put_addr(out: &mut [u8; 16], a: std::net::IpAddr) {
    match a {
        std::net::IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        std::net::IpAddr::V6(v6) => *out = v6.octets(),
    }
}

fn label(r: Reason) -> ReasonLabel {
    ReasonLabel {
        reason: r.as_str().into(),
    }
}

impl Sweep {
    /// Hands this sweep's stalled sockets to the reaper; destroy runs here, in each socket's
    /// own network namespace.
    fn reap(&self, reaper: &mut Reaper, stalled: &[StalledSocket], pool: &mut NetnsPool) {
        let tracker = &self.tracker;
        let mut destroy = |s: &StalledSocket| -> Result<(), String> {
            let t = tracker
                .iter()
                .find(|t| t.last.is_some_and(|d| d.cookie == s.socket_cookie))
                .ok_or("socket no longer tracked")?;
            let conn = pool
                .conn(t.tuple.netns, Some(t.netns_hint.unwrap_or(t.sender.tgid)))
                .map_err(|e| e.to_string())?;
            conn.destroy(&t.lookup()).map_err(|e| e.to_string())
        };
        reaper.tick(stalled, &mut destroy);
    }

    /// Finds who holds each stalled socket. Cached holders are re-verified (same start time,
    /// fd still the socket); else the last sender is checked; only sockets it no longer holds
    /// go into one /proc scan, and a socket nobody holds is not scanned for again for 30 s.
    fn attribute(&mut self, stalled: &[u64]) {
        let now = Instant::now();
        let mut scan: HashMap<u32, u64> = HashMap::new();
        for &sk in stalled {
            let Some(t) = self.tracker.get(sk) else { continue };
            let Some(inode) = t.last.map(|d| d.inode) else { continue };
            if self
                .holders
                .get(&sk)
                .is_some_and(|hs| !hs.is_empty() && hs.iter().all(|h| owner::still_holds(h, inode)))
            {
                continue;
            }
            match owner::holder(t.sender.tgid, inode) {
                Some(h) if !h.fds.is_empty() => {
                    self.holders.insert(sk, vec![h]);
                }
                _ => {
                    self.holders.remove(&sk);
                    if self.unknown_until.get(&sk).is_none_or(|&u| now >= u) {
                        scan.insert(inode, sk);
                    }
                }
            }
        }
        if scan.is_empty() {
            return;
        }
        let inodes: HashSet<u32> = scan.keys().copied().collect();
        let mut found = owner::scan_holders(&inodes);
        for (inode, sk) in scan {
            match found.remove(&inode) {
                Some(hs) if !hs.is_empty() => {
                    self.unknown_until.remove(&sk);
                    self.holders.insert(sk, hs);
                }
                _ => {
                    self.unknown_until.insert(sk, now + Duration::from_secs(30));
                }
            }
        }
    }
}
