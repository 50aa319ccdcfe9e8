//! The parts of `struct tcp_info` (UAPI, `include/uapi/linux/tcp.h`) the verdict needs.
//!
//! `tcp_info` is append-only UAPI: old fields never move, new kernels add fields at the end.
//! So fields are read by their fixed UAPI offsets, and a field beyond a shorter (older) buffer
//! is `None` rather than an error.

/// Parsed subset of `struct tcp_info`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpInfo {
    pub state: u8,
    /// Consecutive RTO retransmits of the head segment (`icsk_retransmits`).
    pub retransmits: u8,
    /// Unanswered zero-window or keepalive probes (`icsk_probes_out`).
    pub probes: u8,
    /// RTO backoff exponent (`icsk_backoff`).
    pub backoff: u8,
    /// Retransmission timeout, microseconds (`icsk_rto`: backed off after RTO retransmits).
    pub rto_us: u32,
    /// Segments in flight.
    pub unacked: u32,
    /// Milliseconds since the last data segment was sent (retransmits included; window probes
    /// carry no data and leave it alone).
    pub last_data_sent_ms: u32,
    /// Milliseconds since the last ACK was received.
    pub last_ack_recv_ms: u32,
    pub total_retrans: u32,
    pub bytes_acked: Option<u64>,
    /// Segments sent (kernel 4.2+); during a zero-window stall, each one is a window probe.
    pub segs_out: Option<u32>,
    pub notsent_bytes: Option<u32>,
    /// The peer's advertised window (kernel 6.2+).
    pub snd_wnd: Option<u32>,
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4).map(|s| u32::from_ne_bytes(s.try_into().unwrap_or([0; 4])))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    b.get(off..off + 8).map(|s| u64::from_ne_bytes(s.try_into().unwrap_or([0; 8])))
}

impl TcpInfo {
    /// Parses a `tcp_info` buffer from INET_DIAG_INFO. `None` if it is too short to hold even
    /// the fields every kernel has had since 2.6.
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < 104 {
            return None;
        }
        Some(Self {
            state: b[0],
            retransmits: b[2],
            probes: b[3],
            backoff: b[4],
            rto_us: u32_at(b, 8)?,
            unacked: u32_at(b, 24)?,
            last_data_sent_ms: u32_at(b, 44)?,
            last_ack_recv_ms: u32_at(b, 56)?,
            total_retrans: u32_at(b, 100)?,
            bytes_acked: u64_at(b, 120),
            segs_out: u32_at(b, 136),
            notsent_bytes: u32_at(b, 144),
            snd_wnd: u32_at(b, 228),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        b[0] = 1;
        b[2] = 3;
        b[3] = 2;
        b[4] = 5;
        b[8..12].copy_from_slice(&204_000u32.to_ne_bytes());
        b[24..28].copy_from_slice(&7u32.to_ne_bytes());
        b[44..48].copy_from_slice(&321u32.to_ne_bytes());
        b[56..60].copy_from_slice(&1234u32.to_ne_bytes());
        b[100..104].copy_from_slice(&9u32.to_ne_bytes());
        if len >= 128 {
            b[120..128].copy_from_slice(&(u64::MAX - 1).to_ne_bytes());
        }
        if len >= 148 {
            b[144..148].copy_from_slice(&4096u32.to_ne_bytes());
        }
        if len >= 232 {
            b[228..232].copy_from_slice(&0u32.to_ne_bytes());
        }
        b
    }

    #[test]
    fn parses_a_current_kernel_buffer() {
        let t = TcpInfo::parse(&buf(248)).unwrap();
        assert_eq!(t.state, 1);
        assert_eq!((t.retransmits, t.probes, t.backoff), (3, 2, 5));
        assert_eq!(t.unacked, 7);
        assert_eq!((t.rto_us, t.last_data_sent_ms), (204_000, 321));
        assert_eq!(t.last_ack_recv_ms, 1234);
        assert_eq!(t.total_retrans, 9);
        assert_eq!(t.bytes_acked, Some(u64::MAX - 1));
        assert_eq!(t.notsent_bytes, Some(4096));
        assert_eq!(t.snd_wnd, Some(0));
    }

    #[test]
    fn older_kernels_leave_newer_fields_unknown() {
        let t = TcpInfo::parse(&buf(192)).unwrap();
        assert_eq!(t.bytes_acked, Some(u64::MAX - 1));
        assert_eq!(t.snd_wnd, None);
        let t = TcpInfo::parse(&buf(104)).unwrap();
        assert_eq!(t.bytes_acked, None);
        assert!(TcpInfo::parse(&buf(104)[..100]).is_none());
    }
}
