//! TCP states, one spelling: the kernel's numbers (`include/net/tcp_states.h`, shared with the
//! programs through `detector-common`) and the names people read.
use serde::{Deserialize, Serialize};

use detector_common as k;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
    Unknown,
}

impl TcpState {
    const TABLE: [(u8, TcpState, &'static str); 12] = [
        (k::TCP_ESTABLISHED, Self::Established, "ESTABLISHED"),
        (k::TCP_SYN_SENT, Self::SynSent, "SYN_SENT"),
        (k::TCP_SYN_RECV, Self::SynRecv, "SYN_RECV"),
        (k::TCP_FIN_WAIT1, Self::FinWait1, "FIN_WAIT1"),
        (k::TCP_FIN_WAIT2, Self::FinWait2, "FIN_WAIT2"),
        (k::TCP_TIME_WAIT, Self::TimeWait, "TIME_WAIT"),
        (k::TCP_CLOSE, Self::Close, "CLOSE"),
        (k::TCP_CLOSE_WAIT, Self::CloseWait, "CLOSE_WAIT"),
        (k::TCP_LAST_ACK, Self::LastAck, "LAST_ACK"),
        (k::TCP_LISTEN, Self::Listen, "LISTEN"),
        (k::TCP_CLOSING, Self::Closing, "CLOSING"),
        (k::TCP_NEW_SYN_RECV, Self::NewSynRecv, "NEW_SYN_RECV"),
    ];

    /// From the kernel's number (`Unknown` for anything else, e.g. 0 before a first sample).
    pub fn from_kernel(n: u8) -> Self {
        Self::TABLE.iter().find(|(v, ..)| *v == n).map_or(Self::Unknown, |(_, s, _)| *s)
    }

    pub fn as_str(self) -> &'static str {
        Self::TABLE.iter().find(|(_, s, _)| *s == self).map_or("UNKNOWN", |(.., name)| name)
    }

    /// Case-insensitive, for `--state` filters.
    pub fn parse(name: &str) -> Option<Self> {
        Self::TABLE.iter().find(|(.., n)| n.eq_ignore_ascii_case(name)).map(|(_, s, _)| *s)
    }
}

impl std::fmt::Display for TcpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_numbers_and_json_agree() {
        for (n, s, name) in TcpState::TABLE {
            assert_eq!(TcpState::from_kernel(n), s);
            assert_eq!(s.as_str(), name);
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{name}\""));
            assert_eq!(TcpState::parse(&name.to_lowercase()), Some(s));
        }
        assert_eq!(TcpState::from_kernel(0), TcpState::Unknown);
        assert_eq!(TcpState::parse("nope"), None);
    }
}
