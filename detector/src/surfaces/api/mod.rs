//! The agent's local API: one JSON request line in, one JSON response line out, over a unix
//! socket (root-only). The CLI is its client. The types it carries are the domain's report
//! (`report`), plus [`Status`].
pub mod client;
pub mod server;

use serde::{Deserialize, Serialize};

pub use crate::report::{AgentSetup, Explain, StalledSocket, TrackedSocket};

pub const DEFAULT_SOCKET: &str = "/run/detector/detector.sock";

/// Longest request line the server reads; anything longer is refused.
pub const MAX_REQUEST_BYTES: usize = 4096;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
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

/// One request line as a client sent it: a request, or what was wrong with it (quoted, so a
/// client sees what the agent read).
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    if line.len() > MAX_REQUEST_BYTES {
        return Err(format!("request longer than {MAX_REQUEST_BYTES} bytes"));
    }
    serde_json::from_slice::<Request>(line).map_err(|e| format!("bad request {:?}: {e}", String::from_utf8_lossy(line).trim()))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

/// One hook and how it fared (`detector status`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HookLine {
    pub role: String,
    pub hook: String,
    /// The program serving it (its name in `programs` and in bpftool).
    pub program: String,
    /// attached, available, not_tried or refused.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// The kernel's accounting of one attached program (counted while kernel.bpf_stats_enabled=1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProgramStats {
    pub name: String,
    pub run_count: u64,
    pub run_time_ns: u64,
    pub avg_ns: f64,
    /// Runs the kernel skipped: another tracing program was running on that CPU (counted
    /// always, whatever kernel.bpf_stats_enabled says).
    #[serde(default)]
    pub recursion_misses: u64,
}

/// `detector status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// Fixed at start-up; flattened, so its fields sit beside the others in the JSON.
    #[serde(flatten)]
    pub setup: AgentSetup,
    pub hooks: Vec<HookLine>,
    pub uptime_s: u64,
    pub sockets_tracked: usize,
    /// Every stalled socket, those past the detail cap included.
    pub sockets_stalled: usize,
    /// Of them, past the detail cap: counted, not listed by `detector stalled` (a flood).
    #[serde(default)]
    pub sockets_stalled_undetailed: usize,
    /// Entries in the kernel's hash map (fallback hooks only).
    pub kernel_map_entries: Option<usize>,
    pub sweeps: u64,
    pub last_sweep_ms: f64,
    /// CPU time of the last reconcile (one pass over every namespace's TCP sockets) and the
    /// time between reconciles.
    #[serde(default)]
    pub reconcile_cpu_ms: f64,
    #[serde(default)]
    pub reconcile_every_ms: u64,
    pub programs: Vec<ProgramStats>,
}
