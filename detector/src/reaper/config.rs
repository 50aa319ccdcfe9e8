//! The reaping policy file (TOML). Every value is checked while parsing, so a mistake is
//! reported with the file, line, column and field, and the agent refuses to start.
//! `deploy/policy.example.toml` is the commented example.
use std::{fmt, path::PathBuf, str::FromStr, time::Duration};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, de};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading policy file {path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("policy file {path}: {msg}")]
    Parse { path: String, msg: String },
}

/// A duration written like `30s`, `500ms`, `2m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(Dur)
            .map_err(|e| de::Error::custom(format!("`{s}` is not a duration ({e}); write it like 30s, 500ms or 2m")))
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
        glob::Pattern::new(&s)
            .map(Glob)
            .map_err(|e| de::Error::custom(format!("`{s}` is not a valid pattern: {e}")))
    }
}

/// A signal by name (`SIGUSR1`, `TERM`, `SIGRTMIN+2`) or number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sig(pub i32);

impl Sig {
    pub fn is_realtime(self) -> bool {
        self.0 >= libc::SIGRTMIN() && self.0 <= libc::SIGRTMAX()
    }
}

impl FromStr for Sig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let up = s.trim().to_ascii_uppercase();
        let name = up.strip_prefix("SIG").unwrap_or(&up);
        if let Ok(n) = name.parse::<i32>() {
            if (1..=libc::SIGRTMAX()).contains(&n) {
                return Ok(Sig(n));
            }
        }
        if let Some(off) = name.strip_prefix("RTMIN") {
            let off: i32 = if off.is_empty() { 0 } else { off.trim_start_matches('+').parse().map_err(|_| format!("`{s}` is not a signal"))? };
            let n = libc::SIGRTMIN() + off;
            if n <= libc::SIGRTMAX() {
                return Ok(Sig(n));
            }
        }
        let n = match name {
            "HUP" => libc::SIGHUP,
            "INT" => libc::SIGINT,
            "QUIT" => libc::SIGQUIT,
            "KILL" => libc::SIGKILL,
            "USR1" => libc::SIGUSR1,
            "USR2" => libc::SIGUSR2,
            "PIPE" => libc::SIGPIPE,
            "ALRM" => libc::SIGALRM,
            "TERM" => libc::SIGTERM,
            _ => return Err(format!("`{s}` is not a signal; use a name like SIGUSR1, SIGTERM or SIGRTMIN+1")),
        };
        Ok(Sig(n))
    }
}

impl<'de> Deserialize<'de> for Sig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(i32),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => n.to_string().parse().map_err(de::Error::custom),
            Raw::S(s) => s.parse().map_err(de::Error::custom),
        }
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
    /// POST the connection as JSON to the owner's endpoint: an HTTP `url`, or a `unix` socket
    /// (with `path`, default `/`).
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
    pub fn name(&self) -> &'static str {
        match self {
            Stage::Report { .. } => "report",
            Stage::Signal { .. } => "signal",
            Stage::Rpc { .. } => "rpc",
            Stage::Destroy { .. } => "destroy",
            Stage::Shutdown { .. } => "shutdown",
        }
    }

    pub fn after(&self) -> Duration {
        match self {
            Stage::Report { after }
            | Stage::Signal { after, .. }
            | Stage::Rpc { after, .. }
            | Stage::Destroy { after }
            | Stage::Shutdown { after } => after.0,
        }
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
    pub remote_cidr: Option<IpNet>,
    /// `peer_unreachable`, `peer_not_reading` or `peer_closed`.
    pub reason: Option<ReasonName>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReasonName(pub String);

impl<'de> Deserialize<'de> for ReasonName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if crate::verdict::Reason::ALL.iter().any(|r| r.as_str() == s) {
            Ok(ReasonName(s))
        } else {
            Err(de::Error::custom(format!(
                "`{s}` is not a reason; use peer_unreachable, peer_not_reading or peer_closed"
            )))
        }
    }
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
        Self {
            per_minute: default_per_minute(),
            per_owner_per_minute: default_per_owner(),
            cooldown: default_cooldown(),
        }
    }
}

/// Never acted on. Always protected besides these: the agent itself, pid 1 and kernel threads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Protect {
    #[serde(default = "default_protected_comms")]
    pub comms: Vec<Glob>,
    #[serde(default)]
    pub exes: Vec<Glob>,
    #[serde(default)]
    pub pids: Vec<u32>,
    #[serde(default = "default_protected_ports")]
    pub local_ports: Vec<u16>,
}

fn default_protected_comms() -> Vec<Glob> {
    ["sshd", "kubelet", "containerd", "dockerd", "crio", "systemd*", "etcd", "kube-apiserver"]
        .iter()
        .map(|p| Glob(glob::Pattern::new(p).expect("built-in patterns are valid")))
        .collect()
}

fn default_protected_ports() -> Vec<u16> {
    vec![22, 2379, 2380, 6443, 10250]
}

impl Default for Protect {
    fn default() -> Self {
        Self {
            comms: default_protected_comms(),
            exes: vec![],
            pids: vec![],
            local_ports: default_protected_ports(),
        }
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

impl Policy {
    /// Parses and checks a policy; `path` names the file in errors.
    pub fn parse(text: &str, path: &str, agent_grace: Duration) -> Result<Self, ConfigError> {
        let perr = |msg: String| ConfigError::Parse {
            path: path.to_string(),
            msg,
        };
        let p: Policy = toml::from_str(text).map_err(|e| perr(e.to_string()))?;
        for (i, s) in p.selectors.iter().enumerate() {
            let at = format!("selector #{} ({:?})", i + 1, s.name);
            if s.actions.is_empty() {
                return Err(perr(format!("{at}: `actions` is empty; give at least one, e.g. {{ action = \"report\" }}")));
            }
            if let Some(g) = s.grace {
                if g.0 < agent_grace {
                    return Err(perr(format!(
                        "{at}: grace {:?} is shorter than the agent's --grace {:?}; a socket is only known stalled after --grace",
                        g.0, agent_grace
                    )));
                }
            }
            for (j, st) in s.actions.iter().enumerate() {
                if let Stage::Rpc { url, unix, .. } = st {
                    match (url, unix) {
                        (Some(u), None) => {
                            if !u.starts_with("http://") {
                                return Err(perr(format!("{at}, action #{}: rpc url `{u}` must start with http://", j + 1)));
                            }
                        }
                        (None, Some(_)) => {}
                        _ => {
                            return Err(perr(format!(
                                "{at}, action #{}: rpc needs exactly one of `url` (http://host:port/path) or `unix` (a socket path)",
                                j + 1
                            )));
                        }
                    }
                }
            }
        }
        Ok(p)
    }

    /// The policy of `--action` (and `--signal`, `--rpc-url`, `--dry-run`): one selector
    /// taking every stalled socket, with that single action.
    pub fn from_flags(action: &str, signal: &str, rpc_url: Option<&str>, dry_run: bool) -> Result<Self, ConfigError> {
        let perr = |msg: String| ConfigError::Parse {
            path: "command line".into(),
            msg,
        };
        let stage = match action {
            "report" => Stage::Report { after: Dur::default() },
            "signal" => Stage::Signal {
                signal: signal.parse().map_err(|e: String| perr(format!("--signal: {e}")))?,
                after: Dur::default(),
            },
            "rpc" => {
                let url = rpc_url.ok_or_else(|| perr("--action rpc needs --rpc-url http://host:port/path".into()))?;
                if !url.starts_with("http://") {
                    return Err(perr(format!("--rpc-url `{url}` must start with http://")));
                }
                Stage::Rpc {
                    url: Some(url.into()),
                    unix: None,
                    path: None,
                    timeout: default_rpc_timeout(),
                    retries: default_rpc_retries(),
                    after: Dur::default(),
                }
            }
            "destroy" => Stage::Destroy { after: Dur::default() },
            "shutdown" => Stage::Shutdown { after: Dur::default() },
            other => return Err(perr(format!("--action `{other}`: use report, signal, rpc, destroy or shutdown"))),
        };
        Ok(Policy {
            dry_run,
            selectors: vec![Selector {
                name: format!("--action {action}"),
                matches: Match::default(),
                grace: None,
                actions: vec![stage],
            }],
            ..Policy::default()
        })
    }

    pub fn load(path: &std::path::Path, agent_grace: Duration) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
            path: path.display().to_string(),
            err,
        })?;
        Self::parse(&text, &path.display().to_string(), agent_grace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: Duration = Duration::from_secs(30);

    #[test]
    fn the_shipped_example_parses() {
        let text = include_str!("../../../deploy/policy.example.toml");
        let p = Policy::parse(text, "policy.example.toml", G).unwrap();
        assert!(!p.selectors.is_empty());
    }

    #[test]
    fn full_selector() {
        let p = Policy::parse(
            r#"
            dry_run = true
            [limits]
            per_minute = 3
            cooldown = "10s"
            [protect]
            comms = ["sshd"]
            local_ports = [22]
            [[selector]]
            name = "ws"
            match = { comm = "ws-*", local_port = 8080, remote_cidr = "10.0.0.0/8", reason = "peer_unreachable" }
            grace = "45s"
            actions = [
              { action = "rpc", url = "http://127.0.0.1:9000/reap", timeout = "1s", retries = 1 },
              { action = "signal", signal = "SIGRTMIN+1", after = "5s" },
              { action = "destroy", after = "10s" },
            ]
            "#,
            "p.toml",
            G,
        )
        .unwrap();
        assert!(p.dry_run);
        assert_eq!(p.limits.per_minute, 3);
        assert_eq!(p.limits.per_owner_per_minute, 10, "defaults fill the rest");
        let s = &p.selectors[0];
        assert!(s.matches.comm.as_ref().unwrap().matches("ws-gateway"));
        assert_eq!(s.actions.len(), 3);
        assert_eq!(s.actions[2].after(), Duration::from_secs(10));
        match &s.actions[1] {
            Stage::Signal { signal, .. } => assert!(signal.is_realtime()),
            other => panic!("{other:?}"),
        }
    }

    fn err(text: &str) -> String {
        Policy::parse(text, "/etc/detector/policy.toml", G).unwrap_err().to_string()
    }

    #[test]
    fn bad_values_name_file_line_and_field() {
        let e = err("[[selector]]\nname = \"x\"\nactions = [{ action = \"signal\", signal = \"SIGNOPE\" }]\n");
        assert!(e.contains("/etc/detector/policy.toml") && e.contains("line 3") && e.contains("SIGNOPE"), "{e}");
        let e = err("[[selector]]\nname = \"x\"\nmatch = { remote_cidr = \"10.0.0.0/99\" }\nactions = [{ action = \"report\" }]\n");
        assert!(e.contains("line 3") && e.contains("remote_cidr") || e.contains("10.0.0.0/99"), "{e}");
        let e = err("[limits]\ncooldwn = \"5s\"\n");
        assert!(e.contains("line 2") && e.contains("cooldwn"), "{e}");
        let e = err("[[selector]]\nname = \"x\"\nactions = [{ action = \"explode\" }]\n");
        assert!(e.contains("explode"), "{e}");
        let e = err("[[selector]]\nname = \"x\"\ngrace = \"later\"\nactions = [{ action = \"report\" }]\n");
        assert!(e.contains("line 3") && e.contains("later"), "{e}");
    }

    #[test]
    fn semantic_mistakes_are_named() {
        let e = err("[[selector]]\nname = \"x\"\nactions = []\n");
        assert!(e.contains("\"x\"") && e.contains("actions"), "{e}");
        let e = err("[[selector]]\nname = \"x\"\ngrace = \"5s\"\nactions = [{ action = \"report\" }]\n");
        assert!(e.contains("shorter than the agent's --grace"), "{e}");
        let e = err("[[selector]]\nname = \"x\"\nactions = [{ action = \"rpc\" }]\n");
        assert!(e.contains("exactly one of `url`"), "{e}");
        let e = err("[[selector]]\nname = \"x\"\nactions = [{ action = \"rpc\", url = \"https://a\" }]\n");
        assert!(e.contains("http://"), "{e}");
    }

    #[test]
    fn signals() {
        assert_eq!("SIGUSR1".parse::<Sig>().unwrap().0, libc::SIGUSR1);
        assert_eq!("term".parse::<Sig>().unwrap().0, libc::SIGTERM);
        assert_eq!("SIGRTMIN+2".parse::<Sig>().unwrap().0, libc::SIGRTMIN() + 2);
        assert_eq!("10".parse::<Sig>().unwrap().0, 10);
        assert!("SIGRTMIN+99".parse::<Sig>().is_err());
        assert!("0".parse::<Sig>().is_err());
    }
}
