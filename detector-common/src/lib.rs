//! Types shared by the kernel side (`detector-ebpf`) and the agent (`detector`).
//!
//! Every type here is `#[repr(C)]`, laid out by hand with explicit padding fields so that the
//! kernel and userspace agree byte for byte, and checked by the size assertions at the bottom.
//! Enums travel as integers and are converted back with `TryFrom` on the userspace side.
#![no_std]

/// Length of `task_struct::comm`, including the trailing NUL.
pub const TASK_COMM_LEN: usize = 16;

/// Linux address families carried in [`SockTuple::family`].
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;
/// Multipath TCP's protocol number (`IPPROTO_MPTCP`).
pub const IPPROTO_MPTCP: u16 = 262;

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`). The agent's
/// `TcpState` enum is built from these.
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_SYN_SENT: u8 = 2;
pub const TCP_SYN_RECV: u8 = 3;
pub const TCP_FIN_WAIT1: u8 = 4;
pub const TCP_FIN_WAIT2: u8 = 5;
pub const TCP_TIME_WAIT: u8 = 6;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_CLOSE_WAIT: u8 = 8;
pub const TCP_LAST_ACK: u8 = 9;
pub const TCP_LISTEN: u8 = 10;
pub const TCP_CLOSING: u8 = 11;
pub const TCP_NEW_SYN_RECV: u8 = 12;

/// Offset value meaning "this field does not exist on the running kernel".
pub const OFFSET_ABSENT: u32 = u32::MAX;

/// Which program saw a send. Carried as `u8` in [`SockState::hook`] and [`SockEvent::hook`].
/// The main hooks ([`SendHook::ALL`]) see every TCP send; a configuration runs one. The others
/// see the send paths a main hook may not: pages (sendfile, splice, kTLS) before 6.5, and
/// Multipath TCP (whose subflows are sent on by the MPTCP layer). Hooks of socket storage keep
/// per-socket state there (freed with the socket); the others, for kernels whose BTF programs
/// cannot load, in the `SOCKS` hash map.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SendHook {
    /// BTF tracepoint `tcp_sendmsg_locked` (6.15+): TCP only, fires before a send can block.
    TcpSendmsgLocked = 1,
    /// fentry on `tcp_sendmsg_locked`: fires as a send starts (the application's, and kTLS's
    /// records from 6.5).
    FentryTcpSendmsgLocked = 2,
    /// BTF tracepoint `sock_send_length` (6.3+): fires as a send returns.
    SockSendLengthBtf = 3,
    /// Classic tracepoint `sock:sock_send_length` (stable ABI, fields from the format file).
    SockSendLength = 4,
    /// kprobe on `tcp_sendmsg_locked` (the same function as fentry's, for the same reasons).
    KprobeTcpSendmsgLocked = 5,
    /// fentry on `do_tcp_sendpages` (before 6.5: sendfile, splice, kTLS records).
    FentryDoTcpSendpages = 6,
    /// kprobe on `do_tcp_sendpages`.
    KprobeDoTcpSendpages = 7,
    /// fentry on `mptcp_sendmsg`.
    FentryMptcpSendmsg = 8,
    /// BTF tracepoint `sock_send_length`, for MPTCP sockets only (where no fentry loads).
    SockSendLengthBtfMptcp = 9,
    /// kprobe on `mptcp_sendmsg`.
    KprobeMptcpSendmsg = 10,
    /// Classic tracepoint `sock:sock_send_length` on an MPTCP socket (the main hook's program).
    SockSendLengthMptcp = 11,
}

impl SendHook {
    /// The main hooks, best first.
    pub const ALL: [SendHook; 5] =
        [Self::TcpSendmsgLocked, Self::FentryTcpSendmsgLocked, Self::SockSendLengthBtf, Self::SockSendLength, Self::KprobeTcpSendmsgLocked];
    /// Every hook, main or not.
    pub const EVERY: [SendHook; 11] = [
        Self::TcpSendmsgLocked,
        Self::FentryTcpSendmsgLocked,
        Self::SockSendLengthBtf,
        Self::SockSendLength,
        Self::KprobeTcpSendmsgLocked,
        Self::FentryDoTcpSendpages,
        Self::KprobeDoTcpSendpages,
        Self::FentryMptcpSendmsg,
        Self::SockSendLengthBtfMptcp,
        Self::KprobeMptcpSendmsg,
        Self::SockSendLengthMptcp,
    ];

    /// Whether this hook keeps its state in socket storage (else in the `SOCKS` hash map).
    pub const fn socket_storage(self) -> bool {
        matches!(
            self,
            Self::TcpSendmsgLocked
                | Self::FentryTcpSendmsgLocked
                | Self::SockSendLengthBtf
                | Self::FentryDoTcpSendpages
                | Self::FentryMptcpSendmsg
                | Self::SockSendLengthBtfMptcp
        )
    }

    /// Whether its records are Multipath TCP connections' (sampled through sock_diag by their
    /// first subflow, whatever the configuration).
    pub const fn mptcp(self) -> bool {
        matches!(self, Self::FentryMptcpSendmsg | Self::SockSendLengthBtfMptcp | Self::KprobeMptcpSendmsg | Self::SockSendLengthMptcp)
    }
}

impl TryFrom<u8> for SendHook {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        Self::EVERY.into_iter().find(|h| *h as u8 == v).ok_or(v)
    }
}

/// What happened to a socket; carried as `u8` in [`SockEvent::kind`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A send found its socket's send buffer at least half full: the socket is now tracked.
    Tracked = 1,
    /// Another process sends on a tracked socket now (fork, fd passing).
    OwnerChanged = 2,
    /// A tracked socket reached TCP_CLOSE (hash-map hooks only; socket storage dies with
    /// the socket and the agent's next sample finds it gone).
    Closed = 3,
    /// The record a send just created and announced (`Tracked`) was dropped again: looked at
    /// once more, the socket had nothing waiting (it closed or drained meanwhile). Sent after
    /// its `Tracked`, whatever order a racing `Closed` took.
    Untracked = 4,
    /// A tracked socket has bytes waiting again: sent once per agent epoch (`EPOCH`), and only
    /// where nothing walks socket storage (the agent samples through sock_diag and forgets
    /// sockets that went idle; this is how one it forgot comes back).
    Waiting = 5,
}

impl TryFrom<u8> for WalkKind {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        match v {
            1 => Ok(Self::Clock),
            2 => Ok(Self::Socket),
            other => Err(other),
        }
    }
}

impl TryFrom<u8> for EventKind {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        Ok(match v {
            1 => Self::Tracked,
            2 => Self::OwnerChanged,
            3 => Self::Closed,
            4 => Self::Untracked,
            5 => Self::Waiting,
            other => return Err(other),
        })
    }
}

/// Indexes into the per-CPU `COUNTERS` array: things the kernel side could not do.
/// Each is exported as a Prometheus counter, so nothing is lost silently.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// The ring buffer was full; an event was dropped.
    EventsDropped = 0,
    /// The socket map was full (or socket storage could not be allocated); a socket could
    /// not be tracked.
    MapFull = 1,
    /// A kernel read (`bpf_probe_read_kernel`) failed.
    ReadErrors = 2,
    /// Retransmits seen on tracked sockets.
    Retransmits = 3,
    /// Entries the programs added to the hash map (fallback hooks).
    MapInserted = 4,
    /// Entries the programs removed from the hash map. Inserted less removed (less what the
    /// agent removed) is how many the map holds, known every pass without walking it.
    MapRemoved = 5,
}

/// Number of slots in the `COUNTERS` array.
pub const COUNTER_SLOTS: u32 = 6;

/// [`SockTuple::flags`]: the kernel side looked at the socket's `struct socket` (a tuple the
/// agent built from a dump has no flags).
pub const TUPLE_LOOKED: u16 = 1;
/// [`SockTuple::flags`]: the socket has no file: the kernel created it for itself (NFS, iSCSI,
/// NVMe/TCP, Ceph clients), or its owner closed it.
pub const TUPLE_NO_FILE: u16 = 2;
/// [`SockTuple::flags`]: the record is a Multipath TCP connection's: its addresses are those of
/// its first subflow (a TCP socket, sampled through sock_diag), the record lives with the MPTCP
/// socket the application sends on.
pub const TUPLE_MPTCP: u16 = 4;

/// A socket's addresses, in network byte order. IPv4 addresses sit in the first 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockTuple {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Local port, host byte order.
    pub sport: u16,
    /// Remote port, host byte order.
    pub dport: u16,
    pub family: u16,
    /// `TUPLE_*` bits: what the kernel side saw of the socket when it began tracking it.
    pub flags: u16,
    /// Inode number of the socket's network namespace (0 when unknown).
    pub netns: u32,
    /// Interface the socket is bound to (`SO_BINDTODEVICE`, VRF, IPv6 link-local), 0 if none:
    /// sock_diag finds such a socket only when asked with it.
    pub bound_dev_if: u32,
}

/// Per-socket state the kernel side keeps (socket storage or the `SOCKS` map).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockState {
    /// When tracking began (`detector explain`: tracked since).
    pub first_send_ns: u64,
    /// Last retransmit seen by `tcp_retransmit_skb` (`detector explain`).
    pub last_retrans_ns: u64,
    /// cgroup v2 id of the owner.
    pub cgroup_id: u64,
    /// Addresses, kept here too so the agent can rebuild its table from the hash map alone
    /// (after dropped events).
    pub tuple: SockTuple,
    /// Retransmits seen by `tcp_retransmit_skb` since the socket was tracked.
    pub retransmits: u32,
    /// Process (tgid) that sent when tracking began or the owner last changed, and its thread
    /// (tid) at that moment, taken in process context only. A thread pool moving sends
    /// between threads does not rewrite them: only a new process does.
    pub tgid: u32,
    pub tid: u32,
    /// `comm` of that thread.
    pub comm: [u8; TASK_COMM_LEN],
    pub hook: u8,
    /// `WALK_*` bits, kept by the sampling walk (`walk.rs`).
    pub walk_flags: u8,
    pub _pad: [u8; 2],
    /// The agent's epoch (`EPOCH`) when the socket was last announced (`Tracked` or
    /// `Waiting`); only kept where the agent samples through sock_diag.
    pub epoch: u32,
    pub _pad2: u32,
}

/// [`SockState::walk_flags`]: the last walk told the agent about this socket (bytes were
/// waiting), so the next one tells it too if they no longer are.
pub const WALK_TOLD: u8 = 1;

/// What a walk record is; carried as `u8` in [`WalkClock::kind`] and [`WalkRecord::kind`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkKind {
    /// The first record of every walk: the kernel's clocks at its start.
    Clock = 1,
    /// A socket with bytes waiting (or in CLOSE_WAIT), or that had some at the last walk and
    /// no longer does.
    Socket = 2,
}

/// The first record of a walk of the socket storage map (`iter/bpf_sk_storage_map`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalkClock {
    pub kind: u8,
    pub _pad: [u8; 7],
    /// `jiffies` (what the TCP stack's `rcv_tstamp`, `lsndtime` and `icsk_rto` count in).
    pub jiffies: u64,
    /// CLOCK_MONOTONIC, nanoseconds: two walks give the jiffies rate (the kernel's HZ).
    pub ktime_ns: u64,
}

/// One socket of a walk: what `tcp_info` would say of it (raw: clocks in jiffies), and the
/// kernel side's own record of it (owner, addresses), so the agent can take up a socket it
/// has not heard of (an event dropped, or the agent restarted).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct WalkRecord {
    pub kind: u8,
    pub state: u8,
    /// `icsk_retransmits`, `icsk_backoff`, `icsk_probes_out`.
    pub retransmits: u8,
    pub backoff: u8,
    pub probes: u8,
    /// 1 while the socket is in TCP_REPAIR (a checkpoint in progress): not judged.
    pub repair: u8,
    pub _pad: [u8; 2],
    /// Kernel address of `struct sock`: the key of the agent's table.
    pub sk: u64,
    pub cookie: u64,
    pub bytes_acked: u64,
    /// `delivered_mstamp`: CLOCK_MONOTONIC microseconds of the last ACK that acknowledged (or
    /// SACKed) new data; 0 before any.
    pub delivered_us: u64,
    pub snd_una: u32,
    pub write_seq: u32,
    pub snd_nxt: u32,
    pub snd_wnd: u32,
    /// Jiffies of the last ACK received and the last data segment sent; the RTO in jiffies.
    pub rcv_tstamp: u32,
    pub lsndtime: u32,
    pub rto: u32,
    pub packets_out: u32,
    pub total_retrans: u32,
    pub segs_out: u32,
    /// Owner uid and inode of the socket (0 without a file), as sock_diag reports them.
    pub uid: u32,
    pub inode: u32,
    pub st: SockState,
}

/// An event from the kernel side, sent through the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockEvent {
    /// Kernel address of `struct sock`: the socket's key in the agent (and in `SOCKS`).
    pub sk: u64,
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub tuple: SockTuple,
    pub tgid: u32,
    pub tid: u32,
    pub comm: [u8; TASK_COMM_LEN],
    pub kind: u8,
    /// TCP state when the event happened.
    pub state: u8,
    pub hook: u8,
    pub _pad: u8,
    /// The agent's epoch the socket was announced in (`Tracked`, `Waiting`); 0 where the
    /// agent keeps none.
    pub epoch: u32,
}

/// One stuck socket from the reconcile's pass over a network namespace's TCP sockets
/// (`iter/tcp`): bytes waiting, or CLOSE_WAIT. The pass reports nothing else.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ScanRecord {
    pub cookie: u64,
    /// Addresses in network byte order (IPv4 in the first 4 bytes).
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Local port in host order, remote port in host order.
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub state: u8,
    pub _pad: u8,
    pub bound_dev_if: u32,
    /// Something is queued when non-zero: `write_seq - snd_una` from the pass over TCP
    /// sockets; from the pass over files, which reads only `struct sock`, the memory of the
    /// write and retransmit queues (`sk_wmem_queued`, non-zero exactly while bytes or a FIN
    /// are not yet acknowledged).
    pub queued: u32,
    /// The pass over every process's files: the socket's network namespace (inode number) and
    /// the process holding it (a process of that namespace, most often). 0 from the pass over
    /// one namespace's TCP sockets.
    pub netns: u32,
    pub tgid: u32,
}

/// Offsets the programs need, read at start-up from tracefs `format` files and kernel BTF,
/// and handed over as the read-only global `CONFIG` (frozen `.rodata`: the verifier sees each
/// field as a constant). Rust eBPF has no CO-RE, so nothing about kernel layout is compiled in.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KernelConfig {
    // Classic tracepoint sock:sock_send_length (format file).
    pub send_len_sk: u32,
    pub send_len_protocol: u32,
    // Classic tracepoint tcp:tcp_retransmit_skb.
    pub retrans_skaddr: u32,
    // struct sock_common, struct sock, struct net, struct ns_common (from BTF).
    pub sk_family: u32,
    pub sk_state: u32,
    pub sk_daddr: u32,
    pub sk_rcv_saddr: u32,
    pub sk_dport: u32,
    pub sk_num: u32,
    pub sk_v6_daddr: u32,
    pub sk_v6_rcv_saddr: u32,
    pub sk_net: u32,
    pub net_ns_inum: u32,
    pub sk_bound_dev_if: u32,
    pub sk_protocol: u32,
    /// `struct sock` → `sk_socket`, and `struct socket` → `file`.
    pub sk_socket: u32,
    pub socket_file: u32,
    /// `struct socket` → `sk`, and `struct task_struct` → `tgid` (the pass over every
    /// process's files).
    pub socket_sk: u32,
    pub task_tgid: u32,
    /// `struct sock` → `sk_wmem_queued`: bytes (as skb truesize) in the write and retransmit
    /// queues, so non-zero exactly while something sent is not yet acknowledged.
    pub sk_wmem_queued: u32,
    /// `struct sock` → `sk_sndbuf`: the send buffer `sk_wmem_queued` fills.
    pub sk_sndbuf: u32,
    /// `struct tcp_sock` (from the socket's start): what the sampling walk reads, the fields
    /// `tcp_info` is made of.
    pub tcp_snd_una: u32,
    pub tcp_write_seq: u32,
    pub tcp_snd_nxt: u32,
    pub tcp_snd_wnd: u32,
    pub tcp_rcv_tstamp: u32,
    pub tcp_lsndtime: u32,
    pub tcp_packets_out: u32,
    pub tcp_total_retrans: u32,
    pub tcp_segs_out: u32,
    pub tcp_bytes_acked: u32,
    pub tcp_delivered_mstamp: u32,
    /// `struct inet_connection_sock` (also from the socket's start).
    pub icsk_rto: u32,
    pub icsk_retransmits: u32,
    pub icsk_backoff: u32,
    pub icsk_probes_out: u32,
    /// `struct sock` → `sk_uid`.
    pub sk_uid: u32,
    /// From a `struct socket`'s file to the socket's inode number: `file.f_inode`, then
    /// `inode.i_ino` (pointer loads the verifier checks, no probe read).
    pub file_inode: u32,
    pub inode_ino: u32,
    /// `struct sock_common` → `skc_cookie` (0 until something asked for the cookie).
    pub sk_cookie: u32,
    /// `struct tcp_sock` → `repair` (a one-bit field): the byte holding it and its mask.
    pub tcp_repair_byte: u32,
    pub tcp_repair_mask: u32,
    /// Sends from this process are ignored (the agent itself).
    pub agent_tgid: u32,
    /// Non-zero where nothing walks socket storage: a send that finds bytes waiting on a
    /// tracked socket announces it again (`Waiting`) once per agent epoch.
    pub announce: u32,
    /// `struct mptcp_sock` → `first` (its first subflow), absent without MPTCP.
    pub mptcp_first: u32,
    /// `struct task_struct` → `flags` (for `PF_KTHREAD`).
    pub task_flags: u32,
}

impl KernelConfig {
    /// All offsets absent: programs that need one do nothing.
    pub const EMPTY: Self = Self {
        send_len_sk: OFFSET_ABSENT,
        send_len_protocol: OFFSET_ABSENT,
        retrans_skaddr: OFFSET_ABSENT,
        sk_family: OFFSET_ABSENT,
        sk_state: OFFSET_ABSENT,
        sk_daddr: OFFSET_ABSENT,
        sk_rcv_saddr: OFFSET_ABSENT,
        sk_dport: OFFSET_ABSENT,
        sk_num: OFFSET_ABSENT,
        sk_v6_daddr: OFFSET_ABSENT,
        sk_v6_rcv_saddr: OFFSET_ABSENT,
        sk_net: OFFSET_ABSENT,
        net_ns_inum: OFFSET_ABSENT,
        sk_bound_dev_if: OFFSET_ABSENT,
        sk_protocol: OFFSET_ABSENT,
        sk_socket: OFFSET_ABSENT,
        socket_file: OFFSET_ABSENT,
        socket_sk: OFFSET_ABSENT,
        task_tgid: OFFSET_ABSENT,
        sk_wmem_queued: OFFSET_ABSENT,
        sk_sndbuf: OFFSET_ABSENT,
        tcp_snd_una: OFFSET_ABSENT,
        tcp_write_seq: OFFSET_ABSENT,
        tcp_snd_nxt: OFFSET_ABSENT,
        tcp_snd_wnd: OFFSET_ABSENT,
        tcp_rcv_tstamp: OFFSET_ABSENT,
        tcp_lsndtime: OFFSET_ABSENT,
        tcp_packets_out: OFFSET_ABSENT,
        tcp_total_retrans: OFFSET_ABSENT,
        tcp_segs_out: OFFSET_ABSENT,
        tcp_bytes_acked: OFFSET_ABSENT,
        tcp_delivered_mstamp: OFFSET_ABSENT,
        icsk_rto: OFFSET_ABSENT,
        icsk_retransmits: OFFSET_ABSENT,
        icsk_backoff: OFFSET_ABSENT,
        icsk_probes_out: OFFSET_ABSENT,
        sk_uid: OFFSET_ABSENT,
        file_inode: OFFSET_ABSENT,
        inode_ino: OFFSET_ABSENT,
        sk_cookie: OFFSET_ABSENT,
        tcp_repair_byte: OFFSET_ABSENT,
        tcp_repair_mask: 0,
        agent_tgid: 0,
        announce: 0,
        mptcp_first: OFFSET_ABSENT,
        task_flags: OFFSET_ABSENT,
    };
}

// Layout checks: a change here must be made on both sides at once.
const _: () = assert!(core::mem::size_of::<SockTuple>() == 48);
const _: () = assert!(core::mem::size_of::<SockState>() == 112);
const _: () = assert!(core::mem::size_of::<SockEvent>() == 104);
const _: () = assert!(core::mem::size_of::<WalkClock>() == 24);
const _: () = assert!(core::mem::size_of::<ScanRecord>() == 64);
const _: () = assert!(core::mem::size_of::<WalkRecord>() == 88 + 112);
const _: () = assert!(core::mem::size_of::<KernelConfig>() == 46 * 4);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are `#[repr(C)]`, made only of integers and integer arrays, with every
    // padding byte spelled out as a field (checked by the size assertions above), so any bit
    // pattern is a valid value and there are no uninitialised bytes.
    unsafe impl aya::Pod for SockTuple {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SockState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SockEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for KernelConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for WalkClock {}
    // SAFETY: as above.
    unsafe impl aya::Pod for WalkRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ScanRecord {}
}
