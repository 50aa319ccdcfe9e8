//! Command line: `detector run` (the agent) and the queries that ask it.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use detector_common::SendHook;

use crate::{kernel::configuration::Kind, reaper::Action};

use crate::surfaces::api::DEFAULT_SOCKET;

#[derive(Debug, Parser)]
#[command(name = "detector", version, about = "Finds TCP connections whose send queue never drains (dead or frozen peers) and reports them")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log lines on stderr: `text`, or `json` (one object per line: ts, level, target, msg)
    /// for log pipelines. Audit lines on stdout are JSON either way.
    #[arg(long, global = true, env = "DETECTOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent in the foreground (needs root: CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_ADMIN).
    Run(RunArgs),
    /// List the sockets the running agent finds stalled now.
    Stalled(QueryArgs),
    /// List every socket the running agent tracks, optionally filtered.
    Sockets(SocketsArgs),
    /// Show the samples and verdict history of one tracked socket.
    Explain {
        /// The socket's id (`id` in `detector sockets`, `socket_cookie` in `detector stalled`).
        id: u64,
        #[command(flatten)]
        q: QueryArgs,
    },
    /// Show the running agent's kernel, hooks and counts.
    Status(QueryArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// One-shot stall scan without the agent (sock_diag sampling over the grace window).
    Scan(ScanArgs),
    /// Preflight: can the agent run here? Tries every hook and loads the configuration `run`
    /// would use, for real; exits non-zero if `run` could not start.
    Check(CheckArgs),
    /// For `cargo xtask bench`: attach an empty program to a send hook until SIGTERM.
    #[cfg(feature = "bench-control")]
    #[command(hide = true)]
    BenchControl {
        #[arg(long, value_enum)]
        hook: SendHookChoice,
    },
}

/// A switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// How long queued bytes may go unacknowledged before a socket counts as stalled (e.g. 30s, 2m).
    #[arg(long, env = "DETECTOR_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub grace: Duration,
    /// How long a socket the peer closed (CLOSE_WAIT) may sit with nothing queued before it is
    /// listed, as a leak suspect (`close_wait_idle`): a client that half-closed after its request
    /// may still wait for the answer. Never acted on unless a selector names that reason.
    #[arg(long, env = "DETECTOR_CLOSE_WAIT_GRACE", default_value = "5m", value_parser = parse_duration)]
    pub close_wait_grace: Duration,
    /// A peer that keeps bytes queued this whole window, its receive window never open wide,
    /// while draining under `--trickle-floor`, is listed as trickling (`peer_trickling`: the
    /// slow-read attack, or a client on a dying link). Never acted on unless a selector names
    /// that reason.
    #[arg(long, env = "DETECTOR_TRICKLE_WINDOW", default_value = "5m", value_parser = parse_trickle_window)]
    pub trickle_window: Duration,
    /// The drain rate under which a peer trickles, in bytes a second (`1KiB/s`, `512B/s`,
    /// `2KB/s`).
    #[arg(long, env = "DETECTOR_TRICKLE_FLOOR", default_value = "1KiB/s", value_parser = parse_rate)]
    pub trickle_floor: u64,
    /// How often tracked sockets are sampled.
    #[arg(long, env = "DETECTOR_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Unix socket the CLI queries (created root-only).
    #[arg(long, env = "DETECTOR_API_SOCKET", default_value = DEFAULT_SOCKET)]
    pub api_socket: PathBuf,
    /// Address for Prometheus metrics (/metrics), or `off`.
    #[arg(long, env = "DETECTOR_METRICS_ADDR", default_value = "127.0.0.1:9465", value_parser = parse_metrics_addr)]
    pub metrics_addr: MetricsAddr,
    /// CPU the reconcile may use, in percent of a core (`0.1%`). It is the pass over every
    /// namespace's TCP sockets that finds what no send announced (a CLOSE_WAIT that never sent,
    /// a wedge older than the agent); when one pass costs more than this share of a third of
    /// the grace window, passes are spaced out (up to 5 min), and what only they find is
    /// reported that much later (with its true age).
    #[arg(long, env = "DETECTOR_RECONCILE_CPU", default_value = "0.1%", value_parser = parse_cpu_share)]
    pub reconcile_cpu: f64,
    /// Most sockets the fallback send hooks' kernel map holds at once (a full map is counted,
    /// never silent). The BTF hooks keep their state in each socket: no map to size.
    #[arg(long, env = "DETECTOR_MAX_SOCKETS", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(16..=4_194_304))]
    pub max_sockets: u32,
    /// Most sockets the agent keeps state for at once (~1 KB each once undetailed; at most 1,024
    /// stalled sockets are kept in full). Past it, a socket to a peer with fewer sockets kept
    /// takes the place of one of the peer with the most; the rest are counted, never silent.
    #[arg(long, env = "DETECTOR_MAX_TRACKED", default_value_t = crate::tracker::TRACKED_MAX, value_parser = parse_max_tracked)]
    pub max_tracked: usize,
    /// Send-path hook: `auto` takes the best the kernel offers; naming one forces it (for testing
    /// a fallback, or to avoid one).
    #[arg(long, env = "DETECTOR_SEND_HOOK", value_enum, default_value_t = SendHookChoice::Auto)]
    pub send_hook: SendHookChoice,
    /// Where per-socket state lives and how it is sampled: `auto` runs the best configuration
    /// this kernel accepts (`detector check` names it); naming one forces it.
    #[arg(long, env = "DETECTOR_CONFIGURATION", value_enum, default_value_t = ConfigurationChoice::Auto)]
    pub configuration: ConfigurationChoice,
    /// Follow Multipath TCP sends (`on`, where the kernel has MPTCP). Where no fentry loads,
    /// the MPTCP hook is a program on every socket's send (BENCHMARKS.md has its cost): `off`
    /// saves it on nodes that run no MPTCP server (Go 1.24+ listens with MPTCP by default).
    #[arg(long, env = "DETECTOR_MPTCP", value_enum, default_value_t = OnOff::On)]
    pub mptcp: OnOff,
    /// The kubelet's pod log directory (`<namespace>_<name>_<uid>/` entries), used to name the
    /// pod a stalled socket belongs to without asking the API server.
    #[arg(long, env = "DETECTOR_POD_LOGS_DIR", default_value = "/var/log/pods")]
    pub pod_logs_dir: PathBuf,
    /// Export `detector_pod_stalled_sockets{namespace,pod,reason}`, at most this many series
    /// (the rest are counted in `detector_pod_stalled_sockets_overflow`); 0 leaves the family
    /// out, so the default exposition has no pod or socket in it.
    #[arg(long, env = "DETECTOR_POD_METRICS_MAX_SERIES", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub pod_metrics_max_series: u32,
    /// Reaping policy file (TOML; see deploy/policy.example.toml). Without it, --action applies
    /// to every stalled socket.
    #[arg(long, env = "DETECTOR_POLICY")]
    pub policy: Option<PathBuf>,
    /// What to do with a stalled socket when there is no --policy file.
    #[arg(long, env = "DETECTOR_ACTION", default_value = "report", value_parser = parse_action)]
    pub action: Action,
    /// Signal for --action signal: one your server handles (a real-time one, e.g. SIGRTMIN+1,
    /// carries the fd; glibc numbering). Required with --action signal.
    #[arg(long, env = "DETECTOR_SIGNAL")]
    pub signal: Option<String>,
    /// Endpoint for --action rpc (http://host:port/path); gets the connection as JSON.
    #[arg(long, env = "DETECTOR_RPC_URL")]
    pub rpc_url: Option<String>,
    /// Decide and audit, but touch nothing (overrides the policy file's dry_run when set).
    #[arg(long, env = "DETECTOR_DRY_RUN")]
    pub dry_run: bool,
    /// Where the reaper keeps its ladders across restarts (tmpfs: they end with the boot, as
    /// socket cookies do), or `off`.
    #[arg(long, env = "DETECTOR_STATE_FILE", default_value = "/run/detector/reaper-state.json")]
    pub state_file: PathBuf,
    /// Size of the kernel→agent event ring buffer in bytes (a power of two, multiple of the page
    /// size). Drained at least every 400 ms: 1 MiB holds ~9,300 events, ~23,000 newly tracked
    /// sockets a second; beyond, events are dropped and counted (the walk or the map finds the
    /// sockets anyway).
    #[arg(long, env = "DETECTOR_RING_BUFFER_BYTES", default_value_t = 1024 * 1024, value_parser = parse_ring_size)]
    pub ring_buffer_bytes: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SendHookChoice {
    Auto,
    /// BTF tracepoint tcp_sendmsg_locked (socket storage)
    TcpSendmsgLocked,
    /// fentry tcp_sendmsg_locked (socket storage)
    Fentry,
    /// BTF tracepoint sock_send_length (socket storage)
    SockSendLengthBtf,
    /// tracepoint sock:sock_send_length (hash map)
    SockSendLength,
    /// kprobe tcp_sendmsg_locked (hash map)
    Kprobe,
}

impl SendHookChoice {
    /// The hook to force, or `None` for the best the kernel offers.
    pub fn hook(self) -> Option<SendHook> {
        match self {
            Self::Auto => None,
            Self::TcpSendmsgLocked => Some(SendHook::TcpSendmsgLocked),
            Self::Fentry => Some(SendHook::FentryTcpSendmsgLocked),
            Self::SockSendLengthBtf => Some(SendHook::SockSendLengthBtf),
            Self::SockSendLength => Some(SendHook::SockSendLength),
            Self::Kprobe => Some(SendHook::KprobeTcpSendmsgLocked),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConfigurationChoice {
    Auto,
    /// Socket storage, sampled by the kernel's walk of it
    StorageWalk,
    /// Socket storage, sampled through sock_diag
    StorageDiag,
    /// The hash map of the classic tracepoint or kprobe, sampled through sock_diag
    HashMap,
}

impl ConfigurationChoice {
    /// The kind to force, or `None` for the best the kernel runs.
    pub fn kind(self) -> Option<Kind> {
        match self {
            Self::Auto => None,
            Self::StorageWalk => Some(Kind::StorageWalk),
            Self::StorageDiag => Some(Kind::StorageDiag),
            Self::HashMap => Some(Kind::HashMap),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct MetricsAddr(pub Option<SocketAddr>);

#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    /// Output format.
    #[arg(long, short, env = "DETECTOR_OUTPUT", value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// The running agent's API socket.
    #[arg(long, env = "DETECTOR_API_SOCKET", default_value = DEFAULT_SOCKET)]
    pub api_socket: PathBuf,
    /// Refresh every INTERVAL (default 2s) until interrupted.
    #[arg(long, num_args = 0..=1, default_missing_value = "2s", value_parser = parse_duration)]
    pub watch: Option<Duration>,
}

#[derive(Debug, clap::Args)]
pub struct SocketsArgs {
    #[command(flatten)]
    pub q: QueryArgs,
    /// Only sockets whose last sender is this process.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Only sockets with this local or remote port.
    #[arg(long)]
    pub port: Option<u16>,
    /// Only sockets in this TCP state (e.g. ESTABLISHED, CLOSE_WAIT).
    #[arg(long, value_parser = parse_state)]
    pub state: Option<crate::tcp::TcpState>,
    /// Only sockets of this pod: `namespace/name`, shell patterns allowed (`shop/checkout-*`).
    #[arg(long)]
    pub pod: Option<String>,
}

impl SocketsArgs {
    /// Whether `row` passes the filters.
    pub fn keep(&self, row: &crate::report::TrackedSocket) -> bool {
        self.pid.is_none_or(|p| row.sender_pid == p)
            && self.port.is_none_or(|p| row.local.port() == p || row.remote.port() == p)
            && self.state.is_none_or(|s| row.state == s)
            && self.pod.as_ref().is_none_or(|pat| row.pod.as_deref().is_some_and(|pod| glob::Pattern::new(pat).is_ok_and(|g| g.matches(pod))))
    }
}

#[derive(Debug, clap::Args)]
pub struct ScanArgs {
    /// How long a socket must make no progress to be reported; the scan takes this long.
    #[arg(long, env = "DETECTOR_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub grace: Duration,
    /// Sampling interval.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// The kubelet's pod log directory, to name pods.
    #[arg(long, env = "DETECTOR_POD_LOGS_DIR", default_value = "/var/log/pods")]
    pub pod_logs_dir: PathBuf,
    /// Output format.
    #[arg(long, short, env = "DETECTOR_OUTPUT", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub o: OutputArgs,
    /// Also print the verifier's log of each refused hook.
    #[arg(long, short)]
    pub verbose: bool,
}

#[derive(Debug, clap::Args)]
pub struct OutputArgs {
    /// Output format.
    #[arg(long, short, env = "DETECTOR_OUTPUT", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Every environment variable a flag reads.
pub fn env_vars() -> Vec<String> {
    use clap::CommandFactory;
    let mut out = Vec::new();
    fn walk(c: &clap::Command, out: &mut Vec<String>) {
        for a in c.get_arguments() {
            if let Some(e) = a.get_env() {
                out.push(e.to_string_lossy().into_owned());
            }
        }
        for sub in c.get_subcommands() {
            walk(sub, out);
        }
    }
    walk(&Cli::command(), &mut out);
    out
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("`{s}` is not a duration ({e}); write it like 30s, 500ms or 2m"))?;
    if d.is_zero() {
        return Err(format!("`{s}` must be longer than zero"));
    }
    Ok(d)
}

fn parse_trickle_window(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if !(Duration::from_secs(10)..=Duration::from_secs(24 * 3600)).contains(&d) {
        return Err(format!("`{s}` is out of range; a trickle window is 10s to 24h"));
    }
    Ok(d)
}

/// A rate in bytes a second: a number, a unit (B, KB = 1000, KiB = 1024, MB, MiB), `/s`.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let bad = || format!("`{s}` is not a rate; write it like 1KiB/s, 512B/s or 2KB/s");
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t).trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "KiB" => 1024,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        _ => return Err(bad()),
    };
    match n.checked_mul(mult) {
        Some(r) if (1..=1 << 30).contains(&r) => Ok(r),
        _ => Err(format!("`{s}` is out of range; use 1B/s to 1GiB/s")),
    }
}

/// A share of one core, written in percent (`0.1%`, or `0.1`), as a fraction.
pub fn parse_cpu_share(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().trim_end_matches('%').trim().parse().map_err(|_| format!("`{s}` is not a percentage; write it like 0.1%"))?;
    if !(0.01..=50.0).contains(&v) {
        return Err(format!("`{s}` is out of range; use 0.01% to 50% of a core"));
    }
    Ok(v / 100.0)
}

fn parse_action(s: &str) -> Result<Action, String> {
    Action::parse(s).ok_or_else(|| {
        let all: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
        format!("`{s}` is not an action; use one of {}", all.join(", "))
    })
}

fn parse_state(s: &str) -> Result<crate::tcp::TcpState, String> {
    crate::tcp::TcpState::parse(s).ok_or_else(|| format!("`{s}` is not a TCP state; use e.g. ESTABLISHED, CLOSE_WAIT, FIN_WAIT1"))
}

fn parse_metrics_addr(s: &str) -> Result<MetricsAddr, String> {
    if s.eq_ignore_ascii_case("off") || s.is_empty() {
        return Ok(MetricsAddr(None));
    }
    s.parse().map(|a| MetricsAddr(Some(a))).map_err(|e| format!("`{s}` is not an address like 0.0.0.0:9465 or `off` ({e})"))
}

fn parse_max_tracked(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1024..=1_000_000).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` is not a number of sockets from 1024 to 1000000")),
    }
}

fn parse_ring_size(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("`{s}`: {e}"))?;
    if n < 4096 || !n.is_power_of_two() {
        return Err(format!("`{s}` must be a power of two of at least 4096 bytes"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_hook_flags_are_the_hook_tables_flags() {
        use crate::kernel::hooks::{HOOKS, HookId, Role};
        use clap::ValueEnum as _;
        for h in HOOKS.iter().filter(|h| h.role == Role::Send) {
            let flag = h.flag.expect("every send hook has a flag");
            let choice = SendHookChoice::from_str(flag, false).unwrap_or_else(|e| panic!("{flag}: {e}"));
            assert_eq!(choice.hook().map(HookId::Send), Some(h.id), "{flag}");
        }
    }

    #[test]
    fn durations_are_human() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        let e = parse_duration("thirty").unwrap_err();
        assert!(e.contains("30s"), "{e}");
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn rates_are_human_and_bounded() {
        assert_eq!(parse_rate("1KiB/s"), Ok(1024));
        assert_eq!(parse_rate("512B/s"), Ok(512));
        assert_eq!(parse_rate("2KB/s"), Ok(2000));
        assert_eq!(parse_rate("3MiB"), Ok(3 << 20));
        assert_eq!(parse_rate("100"), Ok(100));
        for bad in ["fast", "1 GB/s", "-5B/s", "1KiB/min", ""] {
            let e = parse_rate(bad).unwrap_err();
            assert!(e.contains("1KiB/s"), "{bad}: {e}");
        }
        assert!(parse_rate("0B/s").unwrap_err().contains("out of range"));
        assert!(parse_rate("2048MiB/s").unwrap_err().contains("out of range"));
        assert!(parse_trickle_window("5s").unwrap_err().contains("10s to 24h"));
        assert_eq!(parse_trickle_window("5m"), Ok(Duration::from_secs(300)));
    }

    #[test]
    fn sockets_filters() {
        let row = crate::report::TrackedSocket {
            id: 1,
            sender_pid: 42,
            sender_comm: "srv".into(),
            pod: Some("shop/checkout-7d9f".into()),
            local: "10.0.0.1:8080".parse().unwrap(),
            remote: "10.0.0.2:5000".parse().unwrap(),
            state: crate::tcp::TcpState::Established,
            queued_bytes: None,
            bytes_acked: None,
            stalled: false,
            recoveries: 0,
        };
        let args = |a: &[&str]| {
            let mut v = vec!["detector", "sockets"];
            v.extend_from_slice(a);
            match Cli::try_parse_from(v).unwrap().command {
                Command::Sockets(s) => s,
                _ => panic!(),
            }
        };
        assert!(args(&[]).keep(&row));
        assert!(args(&["--pid", "42", "--port", "5000", "--state", "established", "--pod", "shop/checkout-*"]).keep(&row));
        assert!(!args(&["--pid", "43"]).keep(&row));
        assert!(!args(&["--port", "9"]).keep(&row));
        assert!(!args(&["--state", "CLOSE_WAIT"]).keep(&row));
        assert!(!args(&["--pod", "kube-system/*"]).keep(&row));
        let e = Cli::try_parse_from(["detector", "sockets", "--state", "ESTABLISHD"]).unwrap_err();
        assert!(e.to_string().contains("not a TCP state"), "{e}");
        let w = Cli::try_parse_from(["detector", "stalled", "--watch"]).unwrap();
        let Command::Stalled(q) = w.command else { panic!() };
        assert_eq!(q.watch, Some(Duration::from_secs(2)));
    }

    #[test]
    fn configuration_values_are_the_kinds_names() {
        for kind in Kind::ALL {
            let c = ConfigurationChoice::from_str(kind.as_str(), false).unwrap();
            assert_eq!(c.kind(), Some(kind));
        }
        assert_eq!(ConfigurationChoice::Auto.kind(), None);
    }

    #[test]
    fn flags_parse_and_bad_values_are_named() {
        let c = Cli::try_parse_from(["detector", "run", "--grace", "3s", "--metrics-addr", "off"]).unwrap();
        let Command::Run(r) = c.command else { panic!() };
        assert_eq!(r.grace, Duration::from_secs(3));
        assert!(r.metrics_addr.0.is_none());
        let e = Cli::try_parse_from(["detector", "run", "--ring-buffer-bytes", "5000"]).unwrap_err();
        assert!(e.to_string().contains("power of two"), "{e}");
        let e = Cli::try_parse_from(["detector", "run", "--metrics-addr", "nowhere"]).unwrap_err();
        assert!(e.to_string().contains("nowhere"), "{e}");
    }
}
