//! The reaping policy file (TOML). Every value is checked while parsing, so a mistake is
//! reported with the file, line, column and field, and the agent refuses to start.
//! `deploy/policy.example.toml` is the commented example.
use std::{fmt, path::PathBuf, time::Duration};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, de};
use thiserror::Error;

use super::{
    Action,
    targets::{RpcTarget, Sig},
};
use crate::verdict::Reason;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading policy file {path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("policy file {path}: {msg}")]
    Parse { path: String, msg: String },
    /// `--action` and its companion flags.
    #[error("{0}")]
    Flags(String),
}

/// The longest duration a policy may name: anything longer is a typo, not a policy.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// A duration written like `30s`, `500ms`, `2m`, at most a week.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let v = humantime::parse_duration(&s).map_err(|e| de::Error::custom(format!("`{s}` is not a duration ({e}); write it like 30s, 500ms or 2m")))?;
        if v > MAX_DURATION {
            return Err(de::Error::custom(format!("`{s}` is longer than a week; write it like 30s, 500ms or 2m")));
        }
        Ok(Dur(v))
    }
}

/// A shell-style pattern (`*`, `?`, `[...]`).
#[derive(Clone)]
pub struct Glob(pub glob::Pattern);

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0.as_str())
    }
}

impl Glob {
    pub fn matches(&self, s: &str) -> bool {
        self.0.matches(s)
    }
}

impl<'de> Deserialize<'de> for Glob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        glob::Pattern::new(&s).map(Glob).map_err(|e| de::Error::custom(format!("`{s}` is not a valid pattern: {e}")))
    }
}

/// One step of an escalation ladder. `after` is the wait since the previous step (since the
/// selector's grace for the first).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase", deny_unknown_fields)]
pub enum Stage {
    /// Log and count only.
    Report {
        #[serde(default)]
        after: Dur,
    },
    /// Send a signal to the owner; a real-time signal carries the fd in its value (sigqueue).
    Signal {
        signal: Sig,
        #[serde(default)]
        after: Dur,
    },
    /// POST the connection as JSON to the owner's endpoint: an HTTP `url` (reached from inside
    /// the owner's network namespace), or a `unix` socket path (in the owner's filesystem view),
    /// with `path` (default `/`).
    Rpc {
        url: Option<String>,
        unix: Option<PathBuf>,
        path: Option<String>,
        #[serde(default = "default_rpc_timeout")]
        timeout: Dur,
        #[serde(default = "default_rpc_retries")]
        retries: u32,
        #[serde(default)]
        after: Dur,
        /// Parsed from `url`/`unix`/`path` when the policy loads.
        #[serde(skip)]
        target: Option<RpcTarget>,
    },
    /// Destroy the socket from the kernel side (sock_diag SOCK_DESTROY).
    Destroy {
        #[serde(default)]
        after: Dur,
    },
    /// `shutdown(SHUT_RDWR)` on the owner's fd (through pidfd_getfd).
    Shutdown {
        #[serde(default)]
        after: Dur,
    },
}

fn default_rpc_timeout() -> Dur {
    Dur(Duration::from_secs(2))
}

fn default_rpc_retries() -> u32 {
    2
}

impl Stage {
    pub fn action(&self) -> Action {
        match self {
            Stage::Report { .. } => Action::Report,
            Stage::Signal { .. } => Action::Signal,
            Stage::Rpc { .. } => Action::Rpc,
            Stage::Destroy { .. } => Action::Destroy,
            Stage::Shutdown { .. } => Action::Shutdown,
        }
    }

    pub fn after(&self) -> Duration {
        match self {
            Stage::Report { after } | Stage::Signal { after, .. } | Stage::Rpc { after, .. } | Stage::Destroy { after } | Stage::Shutdown { after } => after.0,
        }
    }

    /// Checks what serde cannot and fills in parsed fields.
    fn check(&mut self) -> Result<(), String> {
        if let Stage::Rpc { url, unix, path, timeout, retries, target, .. } = self {
            if timeout.0.is_zero() || timeout.0 > Duration::from_secs(60) {
                return Err("rpc timeout must be between 1ms and 60s".into());
            }
            if *retries > 10 {
                return Err(format!("rpc retries {retries} is too many (at most 10)"));
            }
            *target = Some(match (url, unix) {
                (Some(u), None) if path.is_some() => return Err(format!("rpc `path` goes with `unix`; put it in the url `{u}`")),
                (Some(u), None) => RpcTarget::from_url(u)?,
                (None, Some(sock)) => RpcTarget::Unix { socket: sock.clone(), path: path.clone().unwrap_or_else(|| "/".into()) },
                _ => return Err("rpc needs exactly one of `url` (http://host:port/path) or `unix` (a socket path)".into()),
            });
        }
        Ok(())
    }
}

/// Which stalled sockets a selector takes. Every field given must match.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    pub comm: Option<Glob>,
    pub exe: Option<Glob>,
    pub cgroup: Option<Glob>,
    pub pod_namespace: Option<Glob>,
    pub pod_name: Option<Glob>,
    pub local_port: Option<u16>,
    /// IPv4 ranges match IPv4 peers of dual-stack sockets too.
    pub remote_cidr: Option<IpNet>,
    /// `peer_unreachable`, `peer_not_reading` or `peer_closed`.
    pub reason: Option<Reason>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    pub name: String,
    #[serde(default, rename = "match")]
    pub matches: Match,
    /// How long a socket must have been stalled before the first stage (default: the agent's
    /// `--grace`; never shorter).
    pub grace: Option<Dur>,
    pub actions: Vec<Stage>,
    /// Act on sockets no process can be shown to hold (fd in flight in a unix socket, owner
    /// unknown). Off by default; sockets without a file (the kernel's own: NFS, iSCSI,
    /// NVMe/TCP, Ceph) are never acted on, whatever this says.
    #[serde(default)]
    pub allow_unknown_owner: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Actions per minute, all owners together.
    #[serde(default = "default_per_minute")]
    pub per_minute: u32,
    /// Actions per minute against one process.
    #[serde(default = "default_per_owner")]
    pub per_owner_per_minute: u32,
    /// After an action against a process, wait this long before acting on another of its
    /// sockets (later stages for the same socket follow their own `after`).
    #[serde(default = "default_cooldown")]
    pub cooldown: Dur,
}

fn default_per_minute() -> u32 {
    60
}
fn default_per_owner() -> u32 {
    10
}
fn default_cooldown() -> Dur {
    Dur(Duration::from_secs(5))
}

impl Default for Limits {
    fn default() -> Self {
        Self { per_minute: default_per_minute(), per_owner_per_minute: default_per_owner(), cooldown: default_cooldown() }
    }
}

/// Never acted on. Always protected besides these: the agent itself, pid 1 and kernel threads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Protect {
    /// Process names (the kernel keeps 15 characters: match longer names with `exes`).
    #[serde(default = "default_protected_comms")]
    pub comms: Vec<Glob>,
    #[serde(default = "default_protected_exes")]
    pub exes: Vec<Glob>,
    #[serde(default)]
    pub pids: Vec<u32>,
    #[serde(default = "default_protected_ports")]
    pub local_ports: Vec<u16>,
}

fn globs(ps: &[&str]) -> Vec<Glob> {
    ps.iter().map(|p| Glob(glob::Pattern::new(p).expect("built-in patterns are valid"))).collect()
}

/// What a node cannot lose a session of: remote logins (OpenSSH 9.8+ runs each session as
/// `sshd-session`, 10.0 its authentication as `sshd-auth`, beside the listening `sshd`), the
/// kubelet, container runtimes, init, etcd, the API server, and storage initiators whose
/// connections carry a node's disks (open-iscsi's `iscsid` and `iscsiuio`).
fn default_protected_comms() -> Vec<Glob> {
    globs(&["sshd", "sshd-session", "sshd-auth", "kubelet", "containerd*", "dockerd", "crio", "systemd*", "etcd", "kube-apiserver", "iscsid", "iscsiuio"])
}

/// The same programs by executable, for names longer than a comm (`containerd-shim-runc-v2`).
fn default_protected_exes() -> Vec<Glob> {
    globs(&[
        "*/sshd",
        "*/sshd-session",
        "*/sshd-auth",
        "*/kubelet",
        "*/containerd*",
        "*/dockerd",
        "*/crio",
        "*/systemd*",
        "*/etcd",
        "*/kube-apiserver",
        "*/iscsid",
        "*/iscsiuio",
    ])
}

fn default_protected_ports() -> Vec<u16> {
    vec![22, 2379, 2380, 6443, 10250]
}

impl Default for Protect {
    fn default() -> Self {
        Self { comms: default_protected_comms(), exes: default_protected_exes(), pids: vec![], local_ports: default_protected_ports() }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Decide and audit, but touch nothing.
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub protect: Protect,
    #[serde(default, rename = "selector")]
    pub selectors: Vec<Selector>,
}

/// The kernel keeps this many characters of a process name.
const COMM_MAX: usize = 15;

impl Policy {
    /// Parses and checks a policy; `path` names the file in errors.
    pub fn parse(text: &str, path: &str, agent_grace: Duration) -> Result<Self, ConfigError> {
        let perr = |msg: String| ConfigError::Parse { path: path.to_string(), msg };
        let mut p: Policy = toml::from_str(text).map_err(|e| perr(e.to_string()))?;
        p.check(agent_grace).map_err(perr)?;
        Ok(p)
    }

    fn check(&mut self, agent_grace: Duration) -> Result<(), String> {
        let l = &self.limits;
        if l.per_minute == 0 || l.per_owner_per_minute == 0 {
            return Err("[limits] per_minute and per_owner_per_minute must be at least 1 (use dry_run = true to act on nothing)".into());
        }
        for g in &self.protect.comms {
            let literal = g.0.as_str().trim_end_matches('*');
            if literal.len() > COMM_MAX {
                return Err(format!(
                    "[protect] comms: `{}` is longer than the {COMM_MAX} characters the kernel keeps of a process name, so it never matches; protect it by `exes` (e.g. \"*/{}\")",
                    g.0.as_str(),
                    g.0.as_str()
                ));
            }
        }
        for (i, s) in self.selectors.iter_mut().enumerate() {
            let at = format!("selector #{} ({:?})", i + 1, s.name);
            if s.actions.is_empty() {
                return Err(format!("{at}: `actions` is empty; give at least one, e.g. {{ action = \"report\" }}"));
            }
            if let Some(g) = s.grace
                && g.0 < agent_grace
            {
                return Err(format!(
                    "{at}: grace {:?} is shorter than the agent's --grace {:?}; a socket is only known stalled after --grace",
                    g.0, agent_grace
                ));
            }
            for (j, st) in s.actions.iter_mut().enumerate() {
                st.check().map_err(|e| format!("{at}, action #{}: {e}", j + 1))?;
            }
        }
        Ok(())
    }

    /// The policy of `--action` (with `--signal`, `--rpc-url`, `--dry-run`): one selector
    /// taking every stalled socket, with that single action.
    pub fn from_flags(action: Action, signal: Option<&str>, rpc_url: Option<&str>, dry_run: bool) -> Result<Self, ConfigError> {
        let perr = ConfigError::Flags;
        let mut stage = match action {
            Action::Report => Stage::Report { after: Dur::default() },
            Action::Signal => {
                let name = signal.ok_or_else(|| {
                    perr("--action signal needs --signal: a signal your server handles, e.g. SIGRTMIN+1 (it carries the fd); an unhandled signal ends the whole process".into())
                })?;
                Stage::Signal { signal: name.parse().map_err(|e: String| perr(format!("--signal: {e}")))?, after: Dur::default() }
            }
            Action::Rpc => Stage::Rpc {
                url: Some(rpc_url.ok_or_else(|| perr("--action rpc needs --rpc-url http://host:port/path".into()))?.into()),
                unix: None,
                path: None,
                timeout: default_rpc_timeout(),
                retries: default_rpc_retries(),
                after: Dur::default(),
                target: None,
            },
            Action::Destroy => Stage::Destroy { after: Dur::default() },
            Action::Shutdown => Stage::Shutdown { after: Dur::default() },
        };
        stage.check().map_err(|e| perr(format!("--action {}: {e}", action.as_str())))?;
        Ok(Policy {
            dry_run,
            selectors: vec![Selector {
                name: format!("--action {}", action.as_str()),
                matches: Match::default(),
                grace: None,
                actions: vec![stage],
                allow_unknown_owner: false,
            }],
            ..Policy::default()
        })
    }

    pub fn load(path: &std::path::Path, agent_grace: Duration) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read { path: path.display().to_string(), err })?;
        Self::parse(&text, &path.display().to_string(), agent_grace)
    }
}

#[cfg(test)]
mod tests;
