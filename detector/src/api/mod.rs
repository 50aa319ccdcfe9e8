//! The agent's local API: one JSON request line in, one JSON response line out, over a unix
//! socket (root-only by default). The CLI is its client.
pub mod client;
pub mod server;

use serde::{Deserialize, Serialize};

pub use crate::owner::Holder;

pub const DEFAULT_SOCKET: &str = "/run/detector/detector.sock";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Sockets stalled now.
    Stalled,
    /// Every tracked socket.
    Sockets,
    /// Samples and verdict history of one socket (its id: the socket cookie).
    Explain { id: u64 },
    /// Kernel, hooks, counts.
    Status,
}

/// One tracked socket, as `detector sockets` prints it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrackedSocket {
    /// The socket cookie (0 before the first sample): `detector explain <id>`.
    pub id: u64,
    /// Process that last sent on it, as the send hook saw it.
    pub sender_pid: u32,
    pub sender_comm: String,
    /// `namespace/name` of the sender's pod, when it runs in one.
    pub pod: Option<String>,
    pub local: String,
    pub remote: String,
    pub state: String,
    /// From the last sample (null before the first).
    pub queued_bytes: Option<u32>,
    pub bytes_acked: Option<u64>,
    pub stalled: bool,
    /// Stalls of this socket that ended because progress resumed.
    pub recoveries: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

/// One stalled socket, as `detector stalled --output json` prints it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StalledSocket {
    /// The process holding the socket now (verified in /proc/<pid>/fd); null when no process
    /// can be shown to hold it (`owner_known` false): never a guess.
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// The fd that holds the socket in `pid`; null when unknown.
    pub fd: Option<i32>,
    pub owner_known: bool,
    /// Every process holding the socket (fork, fd passing), with its fds.
    pub holders: Vec<Holder>,
    pub exe: Option<String>,
    pub cmdline: Option<String>,
    /// Start time of `pid` in clock ticks since boot (guards against pid reuse).
    pub start_time: Option<u64>,
    /// The process and thread that last sent on it, as the send hook saw them.
    pub sender_pid: u32,
    pub sender_tid: u32,
    pub sender_comm: String,
    /// cgroup v2 id of the last sender (kernel), and the holder's cgroup path.
    pub cgroup_id: u64,
    pub cgroup: Option<String>,
    pub container_id: Option<String>,
    pub pod_uid: Option<String>,
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub local: String,
    pub remote: String,
    pub state: String,
    pub queued_bytes: u32,
    pub notsent_bytes: u32,
    pub stalled_for_ms: u64,
    pub reason: String,
    /// Retransmits since the stall began.
    pub retransmits: u32,
    /// Zero-window probes sent since the stall began (unanswered ones when the peer is gone).
    pub zero_window_probes: u32,
    /// Peer's advertised window (kernel 6.2+).
    pub peer_window: Option<u32>,
    pub socket_cookie: u64,
    pub inode: u32,
    pub netns: u32,
}

/// Kernel state names.
pub fn tcp_state_name(s: u8) -> &'static str {
    match s {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}
