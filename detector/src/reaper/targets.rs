//! What an action aims at, as the policy names it: a signal (by glibc's numbering) and an RPC
//! endpoint. A leaf: the policy parses these, the actions use them.
use std::str::FromStr;

use serde::{Deserialize, Deserializer, de};

/// A signal by name (`SIGUSR1`, `TERM`, `SIGRTMIN+2`) or number.
///
/// Real-time signals follow glibc's numbering whatever libc the agent was built with: SIGRTMIN
/// is 34 and SIGRTMAX 64, as glibc programs (and Go, Java, Rust on glibc) see them. 32 and 33
/// are reserved by glibc for its threads and refused. (The agent's own image is static musl,
/// whose SIGRTMIN is 35: resolving the name with its libc would send the wrong signal.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sig(pub i32);

/// glibc's SIGRTMIN and SIGRTMAX as applications see them.
pub const SIGRTMIN: i32 = 34;
pub const SIGRTMAX: i32 = 64;

impl Sig {
    pub fn is_realtime(self) -> bool {
        (SIGRTMIN..=SIGRTMAX).contains(&self.0)
    }
}

impl FromStr for Sig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let up = s.trim().to_ascii_uppercase();
        let name = up.strip_prefix("SIG").unwrap_or(&up);
        let n = if let Ok(n) = name.parse::<i32>() {
            n
        } else if let Some(off) = name.strip_prefix("RTMIN") {
            let off: i32 =
                if off.is_empty() { 0 } else { off.strip_prefix('+').and_then(|o| o.parse().ok()).ok_or_else(|| format!("`{s}` is not a signal"))? };
            SIGRTMIN + off
        } else if let Some(off) = name.strip_prefix("RTMAX") {
            let off: i32 =
                if off.is_empty() { 0 } else { off.strip_prefix('-').and_then(|o| o.parse().ok()).ok_or_else(|| format!("`{s}` is not a signal"))? };
            SIGRTMAX - off
        } else {
            match name {
                "HUP" => libc::SIGHUP,
                "INT" => libc::SIGINT,
                "QUIT" => libc::SIGQUIT,
                "KILL" => libc::SIGKILL,
                "USR1" => libc::SIGUSR1,
                "USR2" => libc::SIGUSR2,
                "PIPE" => libc::SIGPIPE,
                "ALRM" => libc::SIGALRM,
                "TERM" => libc::SIGTERM,
                _ => return Err(format!("`{s}` is not a signal; use a name like SIGUSR1 or SIGRTMIN+1, or a number")),
            }
        };
        match n {
            32 | 33 => Err(format!("`{s}` (signal {n}) is reserved by glibc for its threads; use SIGRTMIN (34) or above")),
            1..=SIGRTMAX => Ok(Sig(n)),
            _ => Err(format!("`{s}` is out of range (1 to {SIGRTMAX})")),
        }
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

/// Where an RPC goes.
#[derive(Debug, Clone)]
pub enum RpcTarget {
    /// `host:port`, connected from inside the owner's network namespace.
    Http { authority: String, path: String },
    /// A socket path in the owner's view of the filesystem (its mount namespace and root).
    Unix { socket: std::path::PathBuf, path: String },
}

impl RpcTarget {
    pub fn from_url(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| format!("`{url}` is not an http:// URL"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(format!("`{url}` has no host"));
        }
        let authority = match authority.rsplit_once(':').filter(|(h, _)| !h.ends_with(']') || authority.starts_with('[')) {
            Some((_, port)) if !port.contains(']') => {
                port.parse::<u16>().map_err(|_| format!("`{url}`: `{port}` is not a port (1-65535)"))?;
                authority.to_string()
            }
            _ => format!("{authority}:80"),
        };
        Ok(RpcTarget::Http { authority, path: path.to_string() })
    }

    pub fn describe(&self) -> String {
        match self {
            RpcTarget::Http { authority, path } => format!("http://{authority}{path}"),
            RpcTarget::Unix { socket, path } => format!("unix:{}{path}", socket.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RpcTarget;

    #[test]
    fn urls() {
        match RpcTarget::from_url("http://127.0.0.1:9000/reap").unwrap() {
            RpcTarget::Http { authority, path } => assert_eq!((authority.as_str(), path.as_str()), ("127.0.0.1:9000", "/reap")),
            other => panic!("{other:?}"),
        }
        match RpcTarget::from_url("http://svc").unwrap() {
            RpcTarget::Http { authority, path } => assert_eq!((authority.as_str(), path.as_str()), ("svc:80", "/")),
            other => panic!("{other:?}"),
        }
        match RpcTarget::from_url("http://[::1]:81/x").unwrap() {
            RpcTarget::Http { authority, .. } => assert_eq!(authority, "[::1]:81"),
            other => panic!("{other:?}"),
        }
        assert!(RpcTarget::from_url("ftp://x").is_err());
        assert!(RpcTarget::from_url("http://h:70000/").unwrap_err().contains("port"));
        assert!(RpcTarget::from_url("http:///x").is_err());
    }
}
