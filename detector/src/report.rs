//! The typed report: what a pass found, built by the sweep, read by the reaper and metrics,
//! serialized by the API, printed by the CLI. Assembly from the socket table is pure (no I/O),
//! so it is unit-tested without a kernel.
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::{
    owner::{Holder, Text, pods::PodName},
    tcp::TcpState,
    tracker::Tracked,
    verdict::{Drain, OnsetProof, Reason},
};

/// One stalled socket, as `detector stalled --output json` prints it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StalledSocket {
    /// The process holding the socket now (verified in /proc/<pid>/fd); null when no process
    /// can be shown to hold it (`owner_known` false): never a guess.
    pub pid: Option<u32>,
    pub comm: Option<Text>,
    /// The fd that holds the socket in `pid`; null when unknown.
    pub fd: Option<i32>,
    pub owner_known: bool,
    /// Every process holding the socket (fork, fd passing), with its fds.
    pub holders: std::sync::Arc<[Holder]>,
    pub exe: Option<Text>,
    pub cmdline: Option<Text>,
    /// Start time of `pid` in clock ticks since boot (guards against pid reuse).
    pub start_time: Option<u64>,
    /// The process and thread that sent when the kernel side began tracking the socket (or
    /// when its owner last changed); 0 when it was found by a dump.
    pub sender_pid: u32,
    pub sender_tid: u32,
    pub sender_comm: Text,
    /// cgroup v2 id of that sender (kernel), and the holder's cgroup path.
    pub cgroup_id: u64,
    pub cgroup: Option<Text>,
    pub container_id: Option<Text>,
    pub pod_uid: Option<Text>,
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    /// Addresses as people read them (an IPv4 peer of a dual-stack socket shows as IPv4).
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: TcpState,
    pub queued_bytes: u32,
    pub notsent_bytes: u32,
    /// Bytes the peer acknowledged over the connection's life (`tcpi_bytes_acked`): unchanged
    /// for as long as the stall lasts, so a new value is a new stall.
    #[serde(default)]
    pub bytes_acked: u64,
    pub stalled_for_ms: u64,
    pub reason: Reason,
    /// What fixed the stall's onset (`detector explain` says more).
    pub onset_proof: OnsetProof,
    /// Retransmits since the stall began.
    pub retransmits: u32,
    /// Zero-window probes sent since the stall began (unanswered ones when the peer is gone).
    pub zero_window_probes: u32,
    /// Peer's advertised window (kernel 6.2+).
    pub peer_window: Option<u32>,
    /// A trickling peer's figures: the bytes drained over the trickle window, and the floor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<Drain>,
    pub socket_cookie: u64,
    /// The socket's inode; 0 when it has no file (closed by its owner, the kernel finishing it).
    pub inode: u32,
    pub netns: u32,
    /// The kernel created it (NFS, iSCSI, NVMe/TCP, Ceph...): never acted on. `None` when it
    /// was found by a dump, where the kernel side did not look.
    #[serde(default)]
    pub kernel_socket: Option<bool>,
    /// A Multipath TCP connection: `local`, `remote`, the samples and the cookie are its first
    /// subflow's (a TCP socket); the owner holds the MPTCP socket (same inode).
    #[serde(default)]
    pub mptcp: bool,
}

/// What the agent is and runs with, fixed at start-up (part of `detector status`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentSetup {
    pub version: String,
    pub kernel: String,
    /// The configuration running (`storage-walk`, `storage-diag`, `hash-map`), in one line,
    /// and why it is not the best the agent knows (empty when it is).
    pub configuration: String,
    pub configuration_detail: String,
    #[serde(default)]
    pub not_best: Vec<String>,
    /// The send hook in use, and where it keeps per-socket state.
    pub send_hook: String,
    pub storage: String,
    /// How tracked sockets are sampled: the kernel's walk of socket storage, or sock_diag.
    pub sampling: String,
    pub grace_ms: u64,
    pub interval_ms: u64,
    pub max_sockets: u32,
    pub destroy_supported: bool,
    pub destroy_detail: String,
    pub dry_run: bool,
    pub selectors: Vec<String>,
}

/// One tracked socket, as `detector sockets` prints it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrackedSocket {
    /// The socket cookie (0 before the first sample): `detector explain <id>`.
    pub id: u64,
    /// Process that sent when it was tracked, as the send hook saw it.
    pub sender_pid: u32,
    pub sender_comm: Text,
    /// `namespace/name` of the sender's pod, when it runs in one.
    pub pod: Option<String>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: TcpState,
    /// From the last sample (null before the first).
    pub queued_bytes: Option<u32>,
    pub bytes_acked: Option<u64>,
    pub stalled: bool,
    /// Stalls of this socket that ended because progress resumed.
    pub recoveries: u32,
}

/// `detector explain <id>`: one socket's verdict, recent samples and verdict changes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Explain {
    pub id: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub netns: u32,
    pub sender_pid: u32,
    pub sender_comm: Text,
    pub grace_ms: u64,
    pub verdict: VerdictView,
    pub recoveries: u32,
    /// What the kernel side recorded, when it tracks the socket.
    pub kernel: Option<KernelRecord>,
    pub samples: Vec<SampleView>,
    pub changes: Vec<Change>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VerdictView {
    pub stalled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stalled_for_ms: Option<u64>,
    /// Stuck (bytes queued, or CLOSE_WAIT) for this long, not yet for the grace window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stuck_for_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub onset_proof: Option<OnsetProof>,
    /// The same, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub onset: Option<String>,
    /// A trickling peer's figures (see `StalledSocket::drain`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<Drain>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KernelRecord {
    pub tracked_for_ms: u64,
    /// Retransmits and the last one's age (readable with the hash map only).
    pub retransmits: Option<u32>,
    pub last_retransmit_ms_ago: Option<u64>,
    pub send_hook: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SampleView {
    pub age_ms: u64,
    pub state: TcpState,
    pub queued_bytes: u32,
    pub notsent_bytes: u32,
    pub bytes_acked: u64,
    pub in_flight_segments: u32,
    pub peer_window: Option<u32>,
    pub retransmits: u8,
    pub backoff: u8,
    pub unanswered_probes: u8,
    pub total_retransmits: u32,
    pub last_ack_ms_ago: u32,
    pub last_data_sent_ms_ago: u32,
    pub rto_ms: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Change {
    pub age_ms: u64,
    pub what: String,
}

/// What the sweep publishes after each pass.
#[derive(Debug, Default, Clone)]
pub struct Published {
    pub stalled: Vec<StalledSocket>,
    pub tracked: usize,
    /// Entries in the kernel's hash map (fallback hooks only).
    pub kernel_map_entries: Option<usize>,
    pub sweeps: u64,
    pub last_sweep_ms: f64,
    /// CPU time the last reconcile took, and how long it waits before the next (it stretches
    /// to stay within its CPU budget).
    pub reconcile_cpu_ms: f64,
    pub reconcile_every_ms: u64,
    /// Stalled sockets past the detail cap, counted by reason (not in `stalled`).
    pub stalled_undetailed: Vec<(crate::verdict::Reason, usize)>,
}

/// The report line of a stalled socket, from its table entry, its verified holders (first =
/// the owner) and the owner's pod. `None` when it is not stalled.
pub fn stalled(t: &Tracked, holders: &std::sync::Arc<[Holder]>, pod: Option<&PodName>) -> Option<StalledSocket> {
    let (v, d) = (t.verdict.as_ref()?, t.last?);
    let stall = v.stall()?;
    let first = holders.first();
    Some(StalledSocket {
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
        local: t.local_addr(),
        remote: t.remote_addr(),
        state: TcpState::from_kernel(d.sample.state),
        queued_bytes: d.sample.queued,
        notsent_bytes: d.sample.notsent,
        bytes_acked: d.sample.bytes_acked,
        stalled_for_ms: v.stalled_for_ms(d.sample.at_ms).unwrap_or(0),
        reason: stall.reason,
        onset_proof: stall.proof,
        retransmits: stall.retransmits(&d.sample),
        zero_window_probes: stall.zero_window_probes(&d.sample),
        peer_window: d.sample.snd_wnd,
        drain: stall.drain,
        socket_cookie: d.cookie,
        inode: d.inode,
        netns: t.tuple.netns,
        kernel_socket: t.kernel_socket(),
        mptcp: t.mptcp(),
        holders: holders.clone(),
    })
}

/// The `detector sockets` row of a tracked socket.
pub fn tracked(t: &Tracked, pod: Option<String>) -> TrackedSocket {
    TrackedSocket {
        id: t.last.map_or(0, |d| d.cookie),
        pod,
        sender_pid: t.sender.tgid,
        sender_comm: t.sender.comm.clone(),
        local: t.local_addr(),
        remote: t.remote_addr(),
        state: TcpState::from_kernel(t.tcp_state),
        queued_bytes: t.last.map(|d| d.sample.queued),
        bytes_acked: t.last.map(|d| d.sample.bytes_acked),
        stalled: t.verdict.as_ref().is_some_and(|v| v.stall().is_some()),
        recoveries: t.recoveries,
    }
}

/// `detector explain` for one socket at `now_ms` (sample clock).
pub fn explain(t: &Tracked, kernel: Option<KernelRecord>, now_ms: u64, grace_ms: u64) -> Explain {
    let stall = t.verdict.as_ref().and_then(|v| v.stall().copied());
    let onset = t.verdict.as_ref().and_then(|v| v.onset());
    let verdict = match (stall, onset) {
        (Some(st), _) => VerdictView {
            stalled: true,
            reason: Some(st.reason),
            stalled_for_ms: Some(now_ms.saturating_sub(st.since_ms)),
            stuck_for_ms: None,
            onset_proof: Some(st.proof),
            onset: Some(st.proof.describe().into()),
            drain: st.drain,
        },
        (None, Some((since, proof))) => VerdictView {
            stalled: false,
            reason: None,
            stalled_for_ms: None,
            stuck_for_ms: Some(now_ms.saturating_sub(since)),
            onset_proof: Some(proof),
            onset: Some(proof.describe().into()),
            drain: None,
        },
        (None, None) => VerdictView { stalled: false, reason: None, stalled_for_ms: None, stuck_for_ms: None, onset_proof: None, onset: None, drain: None },
    };
    let samples = t
        .history
        .samples
        .iter()
        .map(|s| SampleView {
            age_ms: now_ms.saturating_sub(s.at_ms),
            state: TcpState::from_kernel(s.state),
            queued_bytes: s.queued,
            notsent_bytes: s.notsent,
            bytes_acked: s.bytes_acked,
            in_flight_segments: s.unacked,
            peer_window: s.snd_wnd,
            retransmits: s.retransmits,
            backoff: s.backoff,
            unanswered_probes: s.probes,
            total_retransmits: s.total_retrans,
            last_ack_ms_ago: s.last_ack_recv_ms,
            last_data_sent_ms_ago: s.last_data_sent_ms,
            rto_ms: s.rto_ms,
        })
        .collect();
    let changes = t.history.changes.iter().map(|(at, what)| Change { age_ms: now_ms.saturating_sub(*at), what: what.clone() }).collect();
    Explain {
        id: t.last.map_or(t.sk, |d| d.cookie),
        local: t.local_addr(),
        remote: t.remote_addr(),
        netns: t.tuple.netns,
        sender_pid: t.sender.tgid,
        sender_comm: t.sender.comm.clone(),
        grace_ms,
        verdict,
        recoveries: t.recoveries,
        kernel,
        samples,
        changes,
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
impl StalledSocket {
    /// The one report-line fixture of the unit tests: a known owner (pid 4242, fd 7) of a
    /// stalled established socket; tests change what they are about.
    pub fn example() -> Self {
        let h = Holder {
            pid: 4242,
            comm: "ws-server".into(),
            exe: Some("/usr/bin/ws-server".into()),
            cmdline: "ws-server --port 8080".into(),
            start_time: 5242,
            fds: vec![7],
            cgroup: Some("/kubepods.slice/x".into()),
            container_id: None,
            pod_uid: None,
            image: None,
        };
        StalledSocket {
            pid: Some(h.pid),
            comm: Some(h.comm.clone()),
            fd: Some(7),
            owner_known: true,
            exe: h.exe.clone(),
            cmdline: Some(h.cmdline.clone()),
            start_time: Some(h.start_time),
            holders: vec![h].into(),
            sender_pid: 4242,
            sender_tid: 4242,
            sender_comm: "ws-server".into(),
            cgroup_id: 1,
            cgroup: Some("/kubepods.slice/x".into()),
            container_id: None,
            pod_uid: None,
            pod_namespace: Some("shop".into()),
            pod_name: Some("ws-1".into()),
            local: "10.0.0.5:8080".parse().unwrap(),
            remote: "192.168.7.9:50000".parse().unwrap(),
            state: TcpState::Established,
            queued_bytes: 1000,
            bytes_acked: 4096,
            notsent_bytes: 0,
            stalled_for_ms: 31_500,
            reason: Reason::PeerUnreachable,
            onset_proof: OnsetProof::LastAck,
            retransmits: 3,
            zero_window_probes: 0,
            peer_window: Some(1000),
            drain: None,
            socket_cookie: 1,
            inode: 1,
            netns: 1,
            kernel_socket: Some(false),
            mptcp: false,
        }
    }
}
