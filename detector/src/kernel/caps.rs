//! Capability preflight, so a missing privilege is a clear message rather than an EPERM from
//! deep inside a load.
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    pub name: &'static str,
    pub bit: u32,
    pub why: &'static str,
}

pub const CAP_NET_ADMIN: Cap = Cap { name: "CAP_NET_ADMIN", bit: 12, why: "sock_diag queries and socket destroy" };
pub const CAP_SYS_ADMIN: Cap = Cap { name: "CAP_SYS_ADMIN", bit: 21, why: "entering network namespaces, mounting tracefs, and BPF on kernels before 5.8" };
pub const CAP_PERFMON: Cap = Cap { name: "CAP_PERFMON", bit: 38, why: "attaching tracepoints" };
pub const CAP_BPF: Cap = Cap { name: "CAP_BPF", bit: 39, why: "loading eBPF programs and maps" };

#[derive(Debug, Error)]
#[error("missing capabilities: {missing}. Run the agent as root (sudo detector run) or, in a container, grant {all} (or privileged: true)")]
pub struct MissingCaps {
    pub missing: String,
    pub all: String,
}

/// Parses the `CapEff:` line of /proc/self/status.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// Checks the capabilities the agent needs; `effective` is the CapEff mask.
pub fn check(effective: u64) -> Result<(), MissingCaps> {
    let has = |c: Cap| effective & (1u64 << c.bit) != 0;
    let required = [CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_ADMIN];
    let missing: Vec<String> = required.iter().filter(|&&c| !has(c)).map(|c| format!("{} ({})", c.name, c.why)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(MissingCaps { missing: missing.join(", "), all: required.iter().map(|c| c.name).collect::<Vec<_>>().join(", ") })
}

pub fn check_self() -> Result<(), MissingCaps> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    check(parse_cap_eff(&status).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_passes_and_unprivileged_names_what_is_missing() {
        assert!(check(parse_cap_eff("Name:\tx\nCapEff:\t000001ffffffffff\n").unwrap()).is_ok());
        let e = check(parse_cap_eff("CapEff:\t0000000000000000\n").unwrap()).unwrap_err();
        let msg = e.to_string();
        for c in ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_ADMIN", "sudo"] {
            assert!(msg.contains(c), "{msg}");
        }
        let only_net_admin = 1u64 << 12;
        let msg = check(only_net_admin).unwrap_err().to_string();
        assert!(!msg.starts_with("missing capabilities: CAP_NET_ADMIN"), "{msg}");
    }
}
