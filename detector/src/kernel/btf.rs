//! Offsets of the few kernel struct fields the programs read, found in the running kernel's
//! BTF (/sys/kernel/btf/vmlinux) at start-up. Rust eBPF has no CO-RE, so this is how the same
//! object runs on every kernel.
use btf_rs::{Btf, Type};
use detector_common::{KernelConfig, OFFSET_ABSENT};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("reading kernel BTF from {path}: {err}; the kernel must be built with CONFIG_DEBUG_INFO_BTF=y")]
    Read { path: String, err: String },
    #[error("kernel BTF has no {0}")]
    Missing(String),
}

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Byte offsets in `struct sock` (its first member is `struct sock_common`) and `struct net`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockOffsets {
    pub family: u32,
    pub state: u32,
    pub daddr: u32,
    pub rcv_saddr: u32,
    pub dport: u32,
    pub num: u32,
    /// Absent on kernels built without IPv6.
    pub v6_daddr: Option<u32>,
    pub v6_rcv_saddr: Option<u32>,
    pub net: u32,
    /// `struct net` → `ns.inum`.
    pub net_ns_inum: u32,
    /// `struct sock_common` → `skc_bound_dev_if`.
    pub bound_dev_if: u32,
    /// `struct sock` → `sk_protocol` (a `u16` since Linux 5.6; a bitfield before).
    pub protocol: Option<u32>,
    /// `struct sock` → `sk_socket`; `struct socket` → `file`.
    pub sk_socket: u32,
    pub socket_file: u32,
    /// `struct sock` → `sk_wmem_queued` and `sk_sndbuf`.
    pub wmem_queued: u32,
    pub sndbuf: u32,
}

pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn load() -> Result<Self, BtfError> {
        Btf::from_file(VMLINUX).map(|btf| Self { btf }).map_err(|e| BtfError::Read { path: VMLINUX.into(), err: e.to_string() })
    }

    /// Byte offset of member `name` in the struct named `strukt`, searching through anonymous
    /// struct and union members (sock_common nests its addresses in several). A bitfield has no
    /// byte offset a program could load from: `None`.
    pub fn member_offset(&self, strukt: &str, name: &str) -> Option<u32> {
        let (bits, size) = self.member_bits(strukt, name)?;
        (size.is_none() && bits.is_multiple_of(8)).then_some(bits / 8)
    }

    /// A one-bit field of `strukt` (a bitfield the kernel packs with others) as the byte that
    /// holds it and its mask there (little-endian: bit n of the struct is bit n % 8 of byte
    /// n / 8).
    pub fn member_flag(&self, strukt: &str, name: &str) -> Option<(u32, u32)> {
        match self.member_bits(strukt, name)? {
            (bits, Some(1)) => Some((bits / 8, 1 << (bits % 8))),
            _ => None,
        }
    }

    /// Bit offset of member `name` in `strukt` and, for a bitfield, its width in bits.
    fn member_bits(&self, strukt: &str, name: &str) -> Option<(u32, Option<u32>)> {
        let types = self.btf.resolve_types_by_name(strukt).ok()?;
        types.iter().find_map(|t| match t {
            Type::Struct(s) => self.find_in(s, name, 0, 0),
            _ => None,
        })
    }

    fn find_in(&self, s: &btf_rs::Struct, name: &str, base_bits: u32, depth: u8) -> Option<(u32, Option<u32>)> {
        if depth > 8 {
            return None;
        }
        for m in &s.members {
            let bits = base_bits + m.bit_offset();
            let mname = self.btf.resolve_name(m).unwrap_or_default();
            if mname == name {
                return Some((bits, m.bitfield_size().filter(|&b| b != 0)));
            }
            if mname.is_empty() {
                // Anonymous struct/union: its members are ours.
                let inner = self.resolve(m)?;
                if let Type::Struct(i) | Type::Union(i) = &inner
                    && let Some(off) = self.find_in(i, name, bits, depth + 1)
                {
                    return Some(off);
                }
            }
        }
        None
    }

    fn resolve(&self, m: &btf_rs::Member) -> Option<Type> {
        let mut t = self.btf.resolve_chained_type(m).ok()?;
        // Skip typedefs and qualifiers down to the struct or union.
        for _ in 0..8 {
            match &t {
                Type::Typedef(x) => t = self.btf.resolve_chained_type(x).ok()?,
                Type::Const(x) | Type::Volatile(x) | Type::Restrict(x) => t = self.btf.resolve_chained_type(x).ok()?,
                _ => break,
            }
        }
        Some(t)
    }

    pub fn sock_offsets(&self) -> Result<SockOffsets, BtfError> {
        let need = |s: &str, f: &str| self.member_offset(s, f).ok_or_else(|| BtfError::Missing(format!("{s}.{f}")));
        let net = need("sock_common", "skc_net")?;
        // possible_net_t wraps a single `struct net *net`, at offset 0.
        let net_ns = need("net", "ns")?;
        let ns_inum = need("ns_common", "inum")?;
        Ok(SockOffsets {
            family: need("sock_common", "skc_family")?,
            state: need("sock_common", "skc_state")?,
            daddr: need("sock_common", "skc_daddr")?,
            rcv_saddr: need("sock_common", "skc_rcv_saddr")?,
            dport: need("sock_common", "skc_dport")?,
            num: need("sock_common", "skc_num")?,
            v6_daddr: self.member_offset("sock_common", "skc_v6_daddr"),
            v6_rcv_saddr: self.member_offset("sock_common", "skc_v6_rcv_saddr"),
            net,
            net_ns_inum: net_ns + ns_inum,
            bound_dev_if: need("sock_common", "skc_bound_dev_if")?,
            protocol: self.member_offset("sock", "sk_protocol"),
            sk_socket: need("sock", "sk_socket")?,
            socket_file: need("socket", "file")?,
            wmem_queued: need("sock", "sk_wmem_queued")?,
            sndbuf: need("sock", "sk_sndbuf")?,
        })
    }

    /// What the sampling walk reads; an error names the first field this kernel lacks.
    /// Fills in `c` the byte offsets, from the start of the socket, of what the sampling walk
    /// reads: the `struct tcp_sock` and `struct inet_connection_sock` fields `tcp_info` is made
    /// of, the owner's uid, and the path from a `struct socket`'s file to its inode number. All or
    /// none: on an error `c` is left as it was.
    pub fn tcp_offsets(&self, c: &mut KernelConfig) -> Result<(), BtfError> {
        let need = |s: &str, f: &str| self.member_offset(s, f).ok_or_else(|| BtfError::Missing(format!("{s}.{f}")));
        let mut t = *c;
        t.tcp_snd_una = need("tcp_sock", "snd_una")?;
        t.tcp_write_seq = need("tcp_sock", "write_seq")?;
        t.tcp_snd_nxt = need("tcp_sock", "snd_nxt")?;
        t.tcp_snd_wnd = need("tcp_sock", "snd_wnd")?;
        t.tcp_rcv_tstamp = need("tcp_sock", "rcv_tstamp")?;
        t.tcp_lsndtime = need("tcp_sock", "lsndtime")?;
        t.tcp_packets_out = need("tcp_sock", "packets_out")?;
        t.tcp_total_retrans = need("tcp_sock", "total_retrans")?;
        t.tcp_segs_out = need("tcp_sock", "segs_out")?;
        t.tcp_bytes_acked = need("tcp_sock", "bytes_acked")?;
        t.tcp_delivered_mstamp = need("tcp_sock", "delivered_mstamp")?;
        t.icsk_rto = need("inet_connection_sock", "icsk_rto")?;
        t.icsk_retransmits = need("inet_connection_sock", "icsk_retransmits")?;
        t.icsk_backoff = need("inet_connection_sock", "icsk_backoff")?;
        t.icsk_probes_out = need("inet_connection_sock", "icsk_probes_out")?;
        t.sk_uid = need("sock", "sk_uid")?;
        t.file_inode = need("file", "f_inode")?;
        t.inode_ino = need("inode", "i_ino")?;
        // Optional: without it, a socket in TCP_REPAIR is judged (and never acted on: see
        // `reaper::actions`).
        let (byte, mask) = self.member_flag("tcp_sock", "repair").unwrap_or((OFFSET_ABSENT, 0));
        (t.tcp_repair_byte, t.tcp_repair_mask) = (byte, mask);
        *c = t;
        Ok(())
    }

    /// Whether the kernel has a function of this name (an fentry/kprobe target).
    pub fn has_function(&self, name: &str) -> bool {
        self.btf.resolve_types_by_name(name).map(|ts| ts.iter().any(|t| matches!(t, Type::Func(_)))).unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the build host's BTF when it has one: checks the search through anonymous members
    /// against facts that hold on every kernel (sock_common starts with the address pair).
    #[test]
    fn finds_nested_sock_common_members() {
        let Ok(btf) = KernelBtf::load() else {
            eprintln!("skipped: no kernel BTF at {VMLINUX}");
            return;
        };
        let o = btf.sock_offsets().expect("sock_common offsets");
        assert_eq!(o.daddr, 0, "skc_daddr opens struct sock_common");
        assert_eq!(o.rcv_saddr, 4);
        assert!(o.dport >= 8 && o.num == o.dport + 2, "{o:?}");
        assert!(o.family > o.num && o.state == o.family + 2, "{o:?}");
        // struct sock starts with struct sock_common: its own members lie beyond it.
        let p = o.protocol.expect("sk_protocol");
        for off in [p, o.wmem_queued, o.sndbuf] {
            assert!(off > o.v6_rcv_saddr.unwrap_or(o.state) && off % 2 == 0, "{o:?}");
        }
        assert!(o.bound_dev_if > o.state && o.bound_dev_if < o.net, "skc_bound_dev_if is in sock_common: {o:?}");
        assert!(btf.has_function("tcp_sendmsg"));
        // tcp_sock begins with inet_connection_sock, which begins with struct sock.
        let mut t = KernelConfig::EMPTY;
        btf.tcp_offsets(&mut t).expect("tcp_sock offsets");
        assert!(t.icsk_rto > o.sndbuf && t.tcp_snd_una > t.icsk_rto && t.tcp_bytes_acked.is_multiple_of(8), "{t:?}");
        assert!(t.tcp_delivered_mstamp > t.icsk_rto && t.tcp_delivered_mstamp.is_multiple_of(8), "a u64 of tcp_sock, past inet_connection_sock: {t:?}");
        assert!(t.file_inode > 0 && t.inode_ino > 0, "{t:?}");
        assert!(t.tcp_repair_byte > t.icsk_rto && t.tcp_repair_mask.is_power_of_two() && t.tcp_repair_mask < 256, "tcp_sock.repair, one bit: {t:?}");
        assert_eq!(btf.member_offset("tcp_sock", "repair"), None, "a bitfield has no byte offset");
        assert!(!btf.has_function("no_such_function_here"));
    }
}
