//! Reading a `struct sock`, with offsets found in the running kernel's BTF.
//!
//! Two ways, one per kind of program:
//! - [`BtfSock`]: the socket is a BTF-typed argument (tp_btf, fentry, iterators). A field is a
//!   plain load at a constant offset, which the verifier checks against the kernel's BTF; a
//!   pointer field loaded so is itself a BTF pointer (possibly one the verifier does not trust,
//!   which may still be loaded from, never handed to a helper). No probe read: these programs
//!   load where `bpf_probe_read_kernel` is closed (lockdown=confidentiality);
//! - [`RawSock`]: the socket is a bare address (classic tracepoint, kprobe). Every read is a
//!   `bpf_probe_read_kernel` copy, which copes with any address.
use aya_ebpf::helpers::bpf_probe_read_kernel;
use detector_common::{AF_INET, AF_INET6, OFFSET_ABSENT, SockTuple, TUPLE_LOOKED, TUPLE_NO_FILE};

use crate::config::conf;

/// `-EINVAL`: a read the running kernel has no offset for.
pub const EINVAL: i64 = -22;
/// `task_struct.flags`: a kernel thread.
const PF_KTHREAD: u32 = 0x0020_0000;

/// Whether the current task is a kernel thread, by a load from the BTF task pointer (no probe
/// read: BTF programs must load under lockdown=confidentiality). False when unknown.
#[inline(always)]
pub fn current_is_kthread_btf() -> bool {
    if conf!(task_flags) == OFFSET_ABSENT {
        return false;
    }
    // SAFETY: no preconditions; the result is a BTF pointer to the current task (never null).
    let task = unsafe { aya_ebpf::helpers::generated::bpf_get_current_task_btf() } as *const u8;
    btf_load::<u32>(task, conf!(task_flags)) & PF_KTHREAD != 0
}

/// As [`current_is_kthread_btf`], by a copy (kprobes and classic tracepoints).
#[inline(always)]
pub fn current_is_kthread_raw() -> bool {
    // SAFETY: no preconditions.
    let task = unsafe { aya_ebpf::helpers::generated::bpf_get_current_task() };
    read_at::<u32>(task, conf!(task_flags)).is_ok_and(|f| f & PF_KTHREAD != 0)
}

/// A socket reached through a BTF-typed pointer.
#[derive(Clone, Copy)]
pub struct BtfSock(*const u8);

impl BtfSock {
    /// # Safety
    /// `sk` must be a `struct sock *` argument of a BTF program (tp_btf or fentry), never null.
    #[inline(always)]
    pub unsafe fn new(sk: *const u8) -> Self {
        Self(sk)
    }

    #[inline(always)]
    pub fn addr(self) -> u64 {
        self.0 as u64
    }

    #[inline(always)]
    pub fn as_ptr(self) -> *mut core::ffi::c_void {
        self.0 as *mut _
    }

    #[inline(always)]
    fn load<T: Copy>(base: *const u8, off: u32) -> T {
        btf_load(base, off)
    }

    #[inline(always)]
    pub fn state(self) -> u8 {
        Self::load(self.0, conf!(sk_state))
    }

    #[inline(always)]
    pub fn family(self) -> u16 {
        Self::load(self.0, conf!(sk_family))
    }

    #[inline(always)]
    pub fn protocol(self) -> u16 {
        Self::load(self.0, conf!(sk_protocol))
    }

    /// Whether the send buffer is at least half full of bytes not yet acknowledged: two loads
    /// from `struct sock`, no helper call. See [`backlogged`].
    #[inline(always)]
    pub fn backlogged(self) -> bool {
        backlogged(Self::load(self.0, conf!(sk_wmem_queued)), Self::load(self.0, conf!(sk_sndbuf)))
    }

    /// As [`read_tuple`], by loads alone.
    #[inline(always)]
    pub fn read_tuple(self, t: &mut SockTuple) -> Result<(), i64> {
        let sk = self.0;
        t.family = self.family();
        if t.family == AF_INET {
            t.saddr[..4].copy_from_slice(&Self::load::<[u8; 4]>(sk, conf!(sk_rcv_saddr)));
            t.daddr[..4].copy_from_slice(&Self::load::<[u8; 4]>(sk, conf!(sk_daddr)));
        } else if t.family == AF_INET6 && conf!(sk_v6_daddr) != OFFSET_ABSENT {
            t.saddr = Self::load(sk, conf!(sk_v6_rcv_saddr));
            t.daddr = Self::load(sk, conf!(sk_v6_daddr));
        } else {
            return Err(EINVAL);
        }
        t.sport = Self::load(sk, conf!(sk_num));
        t.dport = u16::from_be(Self::load(sk, conf!(sk_dport)));
        t.bound_dev_if = Self::load(sk, conf!(sk_bound_dev_if));
        let sock: *const u8 = Self::load(sk, conf!(sk_socket));
        let file: u64 = if sock.is_null() { 0 } else { Self::load(sock, conf!(socket_file)) };
        t.flags = TUPLE_LOOKED | if file == 0 { TUPLE_NO_FILE } else { 0 };
        t.netns = netns_of(sk);
        Ok(())
    }
}

/// The inode number of a socket's network namespace (0 if it has none), by loads alone:
/// `sk` is a BTF pointer to a socket.
#[inline(always)]
pub fn netns_of(sk: *const u8) -> u32 {
    let net: *const u8 = btf_load(sk, conf!(sk_net));
    if net.is_null() { 0 } else { btf_load(net, conf!(net_ns_inum)) }
}

/// A field at `off` bytes into the kernel object a BTF-typed pointer `base` points to (a
/// program argument, or what a helper such as `bpf_skc_to_tcp_sock` returned).
#[inline(always)]
pub fn btf_load<T: Copy>(base: *const u8, off: u32) -> T {
    // SAFETY: `base` is a BTF pointer and `off` a frozen constant, so the verifier checks this
    // access against the kernel's type (and turns faults into zeroes).
    unsafe { core::ptr::read_volatile(base.add(off as usize) as *const T) }
}

/// A socket known by its address only.
#[derive(Clone, Copy)]
pub struct RawSock(pub u64);

impl RawSock {
    #[inline(always)]
    fn read<T>(self, off: u32) -> Result<T, i64> {
        read_at(self.0, off)
    }

    #[inline(always)]
    pub fn state(self) -> Result<u8, i64> {
        self.read(conf!(sk_state))
    }

    /// As [`BtfSock::backlogged`], through copies.
    #[inline(always)]
    pub fn backlogged(self) -> Result<bool, i64> {
        Ok(backlogged(self.read(conf!(sk_wmem_queued))?, self.read(conf!(sk_sndbuf))?))
    }
}

/// The tracking rule: a send found the send buffer at least half full of bytes not yet
/// acknowledged (`sk_wmem_queued` counts them with their overhead, against `sk_sndbuf`). Every
/// send queue that wedges under a writer gets there (the writer then blocks or gets EAGAIN);
/// a connection whose bytes only wait for a moment (autocork, one RTT) does not, and costs
/// nothing. A socket that wedges without filling its buffer is found by the agent's reconcile.
#[inline(always)]
fn backlogged(wmem_queued: i32, sndbuf: i32) -> bool {
    wmem_queued > 0 && wmem_queued >= sndbuf / 2
}

/// A copy of the `T` at `base + off` in kernel memory; an error for an absent offset or an
/// address that cannot be read.
#[inline(always)]
pub fn read_at<T>(base: u64, off: u32) -> Result<T, i64> {
    if off == OFFSET_ABSENT {
        return Err(EINVAL);
    }
    // SAFETY: `bpf_probe_read_kernel` copes with any address; a bad one is an error, not a fault.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.map_err(|e| e as i64)
}

/// `TUPLE_LOOKED`, with `TUPLE_NO_FILE` when the socket at `sk` has no file (the kernel's own,
/// or already closed by its owner: the agent never acts on one); 0 when it cannot be read.
#[inline(always)]
pub fn file_flags(sk: u64) -> u16 {
    let Ok(sock) = read_at::<u64>(sk, conf!(sk_socket)) else { return 0 };
    let file = if sock == 0 { Ok(0) } else { read_at::<u64>(sock, conf!(socket_file)) };
    file.map_or(0, |file| TUPLE_LOOKED | if file == 0 { TUPLE_NO_FILE } else { 0 })
}

/// Addresses, ports and network namespace of the socket at `sk`, read into `t` (once, when
/// tracking begins, so by copies whatever the program type). Written in place: a returned
/// tuple plus the record it goes into put `track::start` over the 512-byte stack that 6.1's
/// verifier counts (each frame rounded up to 32 bytes): it refused the program at 544.
#[inline(always)]
pub fn read_tuple(sk: u64, t: &mut SockTuple) -> Result<(), i64> {
    t.family = read_at(sk, conf!(sk_family))?;
    if t.family == AF_INET {
        t.saddr[..4].copy_from_slice(&read_at::<[u8; 4]>(sk, conf!(sk_rcv_saddr))?);
        t.daddr[..4].copy_from_slice(&read_at::<[u8; 4]>(sk, conf!(sk_daddr))?);
    } else if t.family == AF_INET6 {
        t.saddr = read_at(sk, conf!(sk_v6_rcv_saddr))?;
        t.daddr = read_at(sk, conf!(sk_v6_daddr))?;
    } else {
        return Err(EINVAL);
    }
    // skc_num is the local port in host order, skc_dport the remote port in network order.
    t.sport = read_at::<u16>(sk, conf!(sk_num))?;
    t.dport = u16::from_be(read_at::<u16>(sk, conf!(sk_dport))?);
    t.bound_dev_if = read_at::<u32>(sk, conf!(sk_bound_dev_if)).unwrap_or(0);
    t.flags = file_flags(sk);
    let net: u64 = read_at(sk, conf!(sk_net))?;
    if net != 0 {
        t.netns = read_at::<u32>(net, conf!(net_ns_inum)).unwrap_or(0);
    }
    Ok(())
}
