//! Reading a tracked socket's kernel state without waiting for an event.
//!
//! A dead peer fires no hook, so progress must be checked by polling. Two ways:
//! - the walk (`walk`, with `kernel::iter`): with socket storage, one iterator pass over the
//!   tracked sockets of every namespace, in the kernel, reporting only those that look stuck;
//!   the cost follows the stuck-looking sockets, not all the tracked ones, and needs no setns;
//! - sock_diag (this module): an exact lookup by 4-tuple (and, once known, cookie) in the
//!   socket's own network namespace, with INET_DIAG_INFO for `tcp_info`: one hash-table probe
//!   and one netlink round per batch of sockets (their count per second is BENCHMARKS.md's
//!   sock_diag column). It samples the sockets the walk
//!   cannot see (found by a dump, or hash-map hooks), destroys, and serves `detector scan`.
pub mod kernel_dump;
pub mod netns;
pub mod tcp_info;
pub mod walk;

use std::{io, net::IpAddr};

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags, nlas::Nla},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};
use thiserror::Error;

pub use tcp_info::TcpInfo;

/// One observation of a socket, in the units the verdict needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sample {
    /// Agent monotonic clock, milliseconds.
    pub at_ms: u64,
    pub state: u8,
    /// Bytes written by the app and not yet acknowledged (write_seq − snd_una).
    pub queued: u32,
    /// Of those, bytes not sent yet.
    pub notsent: u32,
    pub bytes_acked: u64,
    /// Segments in flight.
    pub unacked: u32,
    pub snd_wnd: Option<u32>,
    pub retransmits: u8,
    pub backoff: u8,
    pub probes: u8,
    pub total_retrans: u32,
    pub segs_out: u32,
    /// Kernel clocks, as "milliseconds ago" at `at_ms`.
    pub last_ack_recv_ms: u32,
    pub last_data_sent_ms: u32,
    /// The last ACK that acknowledged new data (`tcp_sock.delivered_mstamp`), milliseconds ago
    /// (rounded down): only the kernel walk reads it (`tcp_info` has no such field).
    pub last_delivery_ms: Option<u32>,
    /// Retransmission timeout, milliseconds (rounded up).
    pub rto_ms: u32,
    /// In TCP_REPAIR (a checkpoint, e.g. CRIU, in progress): not judged. Only the kernel walk
    /// can tell (`tcp_info` does not say); the reaper asks the socket itself before acting.
    pub repair: bool,
}

/// What sock_diag returned for one socket.
#[derive(Debug, Clone, Copy)]
pub struct DiagSocket {
    pub cookie: u64,
    pub inode: u32,
    pub uid: u32,
    pub sample: Sample,
}

#[derive(Debug, Error)]
pub enum SampleError {
    #[error("netlink sock_diag socket: {0}")]
    Socket(io::Error),
    #[error("sock_diag request failed: {0}")]
    Io(io::Error),
    #[error("malformed sock_diag answer: {0}")]
    Decode(String),
}

/// The socket to look up.
#[derive(Debug, Clone, Copy)]
pub struct Lookup {
    pub family: u16,
    pub local: IpAddr,
    pub local_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
    /// The interface the socket is bound to (0: none); a bound socket is found only with it.
    pub ifindex: u32,
    /// `None` until the first answer gives it; then it guards against tuple reuse.
    pub cookie: Option<u64>,
}

/// A socket found by a dump.
#[derive(Debug, Clone, Copy)]
pub struct Dumped {
    pub family: u16,
    pub local: IpAddr,
    pub local_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
    pub ifindex: u32,
    pub state: u8,
    pub send_queue: u32,
    pub cookie: u64,
}

/// A sock_diag netlink socket bound to one network namespace.
pub struct DiagConn {
    sock: Socket,
    /// Receive buffer, and the requests of a batch, reused from pass to pass.
    buf: Vec<u8>,
    out: Vec<u8>,
    seq: u32,
}

/// Lookups sent in one `sendmsg`, their answers read back by sequence number.
const BATCH: usize = 64;

fn set_opt<T>(sock: &Socket, opt: libc::c_int, v: &T) -> Result<(), SampleError> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: a socket we own and an option value of the size passed.
    let r = unsafe { libc::setsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, opt, (v as *const T).cast(), std::mem::size_of::<T>() as libc::socklen_t) };
    if r != 0 {
        return Err(SampleError::Socket(io::Error::last_os_error()));
    }
    Ok(())
}

impl DiagConn {
    /// Opens a sock_diag socket in the calling thread's current network namespace.
    pub fn open() -> Result<Self, SampleError> {
        let mut sock = Socket::new(NETLINK_SOCK_DIAG).map_err(SampleError::Socket)?;
        sock.bind_auto().map_err(SampleError::Socket)?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(SampleError::Socket)?;
        // Room for a whole batch of answers (`BATCH` × ~400 bytes), and never a sweep blocked
        // forever on an answer that does not come.
        set_opt(&sock, libc::SO_RCVBUF, &(1i32 << 20))?;
        set_opt(&sock, libc::SO_RCVTIMEO, &libc::timeval { tv_sec: 2, tv_usec: 0 })?;
        Ok(Self { sock, buf: vec![0; 16 * 1024], out: Vec::new(), seq: 0 })
    }

    /// Every TCP socket of this namespace in a state that can be stuck (ESTABLISHED,
    /// CLOSE_WAIT, FIN_WAIT1, CLOSING, LAST_ACK), for the reconcile.
    pub fn dump_judged(&mut self) -> Result<Vec<Dumped>, SampleError> {
        let mut out = Vec::new();
        for family in [AF_INET, AF_INET6] {
            let mut hdr = NetlinkHeader::default();
            hdr.flags = NLM_F_REQUEST | NLM_F_DUMP;
            self.seq = self.seq.wrapping_add(1);
            hdr.sequence_number = self.seq;
            let mut msg = NetlinkMessage::new(
                hdr,
                SockDiagMessage::InetRequest(InetRequest {
                    family,
                    protocol: IPPROTO_TCP,
                    extensions: ExtensionFlags::empty(),
                    states: StateFlags::ESTABLISHED | StateFlags::CLOSE_WAIT | StateFlags::FIN_WAIT1 | StateFlags::CLOSING | StateFlags::LAST_ACK,
                    socket_id: if family == AF_INET6 { SocketId::new_v6() } else { SocketId::new_v4() },
                })
                .into(),
            );
            msg.finalize();
            let mut req = vec![0u8; msg.buffer_len()];
            msg.serialize(&mut req);
            self.sock.send(&req, 0).map_err(SampleError::Io)?;
            let seq = self.seq;
            'recv: loop {
                let n = self.sock.recv(&mut &mut self.buf[..], 0).map_err(SampleError::Io)?;
                let mut off = 0;
                while off < n {
                    let m = NetlinkMessage::<SockDiagMessage>::deserialize(&self.buf[off..n]).map_err(|e| SampleError::Decode(e.to_string()))?;
                    let len = m.header.length as usize;
                    // Answers to an earlier request (one that timed out) are not this dump's.
                    let ours = m.header.sequence_number == seq;
                    match m.payload {
                        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) if ours => {
                            let h = &r.header;
                            out.push(Dumped {
                                family: h.family as u16,
                                local: h.socket_id.source_address,
                                local_port: h.socket_id.source_port,
                                remote: h.socket_id.destination_address,
                                remote_port: h.socket_id.destination_port,
                                ifindex: h.socket_id.interface_id,
                                state: h.state,
                                send_queue: h.send_queue,
                                cookie: u64::from_ne_bytes(h.socket_id.cookie),
                            });
                        }
                        NetlinkPayload::Done(_) if ours => break 'recv,
                        NetlinkPayload::Error(e) if ours => return Err(SampleError::Io(e.to_io())),
                        _ => {}
                    }
                    if len == 0 {
                        break;
                    }
                    off += len.next_multiple_of(4);
                }
            }
        }
        Ok(out)
    }

    /// Destroys one socket from the kernel side (SOCK_DESTROY, CONFIG_INET_DIAG_DESTROY): the
    /// kernel aborts it with ECONNABORTED, so a blocked `send` returns at once.
    pub fn destroy(&mut self, l: &Lookup) -> Result<(), SampleError> {
        const SOCK_DESTROY: u16 = 21;
        let mut msg = self.request(l, ExtensionFlags::empty());
        msg.header.message_type = SOCK_DESTROY;
        msg.header.flags |= netlink_packet_core::NLM_F_ACK;
        match self.roundtrip(&msg)?.payload {
            NetlinkPayload::Error(e) if e.code.is_none() => Ok(()),
            NetlinkPayload::Error(e) => Err(SampleError::Io(e.to_io())),
            other => Err(SampleError::Decode(format!("unexpected answer {other:?}"))),
        }
    }

    /// Sends one request and returns its answer: the first message carrying the request's
    /// sequence number (a late answer to an earlier request is skipped, never taken for this
    /// one).
    fn roundtrip(&mut self, msg: &NetlinkMessage<SockDiagMessage>) -> Result<NetlinkMessage<SockDiagMessage>, SampleError> {
        let mut out = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut out);
        self.sock.send(&out, 0).map_err(SampleError::Io)?;
        let seq = msg.header.sequence_number;
        // A few stale answers at most; never loop forever on a confused socket.
        for _ in 0..16 {
            let n = self.sock.recv(&mut &mut self.buf[..], 0).map_err(SampleError::Io)?;
            if let Some(m) = first_with_seq(&self.buf[..n], seq)? {
                return Ok(m);
            }
        }
        Err(SampleError::Decode(format!("no answer with sequence number {seq}")))
    }

    fn request(&mut self, l: &Lookup, ext: ExtensionFlags) -> NetlinkMessage<SockDiagMessage> {
        let mut id = if l.family == AF_INET6 as u16 { SocketId::new_v6() } else { SocketId::new_v4() };
        id.source_port = l.local_port;
        id.destination_port = l.remote_port;
        id.source_address = l.local;
        id.destination_address = l.remote;
        id.interface_id = l.ifindex;
        // INET_DIAG_NOCOOKIE (all ones) skips the cookie check.
        id.cookie = l.cookie.unwrap_or(u64::MAX).to_ne_bytes();
        let mut hdr = NetlinkHeader::default();
        hdr.flags = NLM_F_REQUEST;
        self.seq = self.seq.wrapping_add(1);
        hdr.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(
            hdr,
            SockDiagMessage::InetRequest(InetRequest {
                family: if l.family == AF_INET6 as u16 { AF_INET6 } else { AF_INET },
                protocol: IPPROTO_TCP,
                extensions: ext,
                states: StateFlags::all(),
                socket_id: id,
            })
            .into(),
        );
        msg.finalize();
        msg
    }

    /// Exact lookup of one socket. `Ok(None)` when it no longer exists. Its sample is dated
    /// when the answer was read (see [`monotonic_ms`]).
    pub fn lookup(&mut self, l: &Lookup) -> Result<Option<DiagSocket>, SampleError> {
        let msg = self.request(l, ExtensionFlags::INFO);
        let answer = self.roundtrip(&msg)?;
        lookup_answer(answer, monotonic_ms())
    }

    /// Exact lookups of many sockets, `BATCH` requests per `sendmsg`; one answer per lookup, in
    /// order, each dated when it was read: a pass over thousands of sockets takes milliseconds,
    /// and the kernel's "ago" clocks of an answer count from when it was made, not from the
    /// pass's start (dated earlier, a stall would look older than it is).
    pub fn lookup_many(&mut self, ls: &[Lookup]) -> Vec<Result<Option<DiagSocket>, SampleError>> {
        let mut out = Vec::with_capacity(ls.len());
        for chunk in ls.chunks(BATCH) {
            out.extend(self.batch(chunk));
        }
        out
    }

    fn batch(&mut self, ls: &[Lookup]) -> Vec<Result<Option<DiagSocket>, SampleError>> {
        if crate::fault::diag_error() {
            return ls.iter().map(|_| Err(SampleError::Io(io::Error::other("DETECTOR_FAULT=diag-error: injected netlink error")))).collect();
        }
        if let Some(d) = crate::fault::lookup_delay() {
            std::thread::sleep(d);
        }
        let first = self.seq.wrapping_add(1);
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        for l in ls {
            let m = self.request(l, ExtensionFlags::INFO);
            let start = out.len();
            out.resize(start + m.buffer_len(), 0);
            m.serialize(&mut out[start..]);
        }
        let sent = self.sock.send(&out, 0);
        self.out = out;
        let mut answers: Vec<Option<Result<Option<DiagSocket>, SampleError>>> = std::iter::repeat_with(|| None).take(ls.len()).collect();
        match sent {
            Ok(_) => self.collect(first, &mut answers),
            Err(e) => answers.iter_mut().for_each(|a| *a = Some(Err(SampleError::Io(io::Error::new(e.kind(), e.to_string()))))),
        }
        answers.into_iter().map(|a| a.unwrap_or_else(|| Err(SampleError::Decode("no answer".into())))).collect()
    }

    /// Reads answers until every request from sequence number `first` has one (a timeout or
    /// an error ends it: the rest stay unanswered, errors, never "no progress").
    fn collect(&mut self, first: u32, answers: &mut [Option<Result<Option<DiagSocket>, SampleError>>]) {
        let mut left = answers.len();
        while left > 0 {
            let n = match self.sock.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => n,
                Err(e) => {
                    log::debug!("sock_diag batch: {e}; {left} lookups unanswered");
                    return;
                }
            };
            // Read after the kernel made these answers: an upper bound of when each was true.
            let at_ms = monotonic_ms();
            let mut off = 0;
            while off < n {
                let Ok(m) = NetlinkMessage::<SockDiagMessage>::deserialize(&self.buf[off..n]) else { break };
                let len = m.header.length as usize;
                let i = m.header.sequence_number.wrapping_sub(first) as usize;
                if let Some(slot) = answers.get_mut(i).filter(|a| a.is_none()) {
                    *slot = Some(lookup_answer(m, at_ms));
                    left -= 1;
                }
                if len == 0 {
                    break;
                }
                off += len.next_multiple_of(4);
            }
        }
    }
}

/// CLOCK_MONOTONIC in milliseconds: the sample clock (the agent's, and the kernel's own clocks
/// are on it too).
pub fn monotonic_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map(|t| t.tv_sec() as u64 * 1_000 + t.tv_nsec() as u64 / 1_000_000).unwrap_or(0)
}

/// The first message in `buf` whose sequence number is `seq`; `None` if there is none.
pub fn first_with_seq(buf: &[u8], seq: u32) -> Result<Option<NetlinkMessage<SockDiagMessage>>, SampleError> {
    let mut off = 0;
    while off < buf.len() {
        let m = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[off..]).map_err(|e| SampleError::Decode(e.to_string()))?;
        let len = m.header.length as usize;
        if m.header.sequence_number == seq {
            return Ok(Some(m));
        }
        if len == 0 {
            break;
        }
        off += len.next_multiple_of(4);
    }
    Ok(None)
}

/// What an exact lookup's answer says: the socket's sample, or `None` when it is gone. An
/// answer without `tcp_info` (or without acknowledged bytes in it) is an error, never "nothing
/// acknowledged": a stall is never concluded from missing data.
pub fn lookup_answer(m: NetlinkMessage<SockDiagMessage>, at_ms: u64) -> Result<Option<DiagSocket>, SampleError> {
    let r = match m.payload {
        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => r,
        // ENOENT: the socket is gone (or its cookie no longer matches).
        NetlinkPayload::Error(e) if e.code.map(|c| c.get()) == Some(-libc::ENOENT) => return Ok(None),
        NetlinkPayload::Error(e) => return Err(SampleError::Io(e.to_io())),
        other => return Err(SampleError::Decode(format!("unexpected answer {other:?}"))),
    };
    // An exact lookup falls back to the listener on the local port when the connection is
    // gone (before the first answer gives a cookie to check): that is not the socket asked
    // for, and a listener's "send queue" is its backlog limit.
    if r.header.state == detector_common::TCP_LISTEN {
        return Ok(None);
    }
    let info = r.nlas.iter().find_map(|nla| match nla {
        Nla::TcpInfo(bytes) => TcpInfo::parse(bytes),
        _ => None,
    });
    let info = info.ok_or_else(|| SampleError::Decode("answer without tcp_info".into()))?;
    let bytes_acked = info.bytes_acked.ok_or_else(|| SampleError::Decode("tcp_info without bytes_acked (kernel before 4.2)".into()))?;
    let h = &r.header;
    Ok(Some(DiagSocket {
        cookie: u64::from_ne_bytes(h.socket_id.cookie),
        inode: h.inode,
        uid: h.uid,
        sample: Sample {
            at_ms,
            state: h.state,
            queued: h.send_queue,
            notsent: info.notsent_bytes.unwrap_or(0),
            bytes_acked,
            unacked: info.unacked,
            snd_wnd: info.snd_wnd,
            retransmits: info.retransmits,
            backoff: info.backoff,
            probes: info.probes,
            total_retrans: info.total_retrans,
            segs_out: info.segs_out.unwrap_or(0),
            last_ack_recv_ms: info.last_ack_recv_ms,
            last_data_sent_ms: info.last_data_sent_ms,
            last_delivery_ms: None,
            rto_ms: info.rto_us.div_ceil(1000),
            repair: false,
        },
    }))
}
