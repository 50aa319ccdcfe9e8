//! What every send hook does once it has the socket.
//!
//! A send is first checked against the socket itself: when nothing it sent before is still
//! unacknowledged (every send of a short request/response connection, and most sends of a
//! healthy one), nothing more happens: no map, no allocation, no event. Only a send that finds
//! bytes of earlier sends still waiting (the only way a send queue can wedge) looks up the
//! socket's record: a tracked socket whose owner did not change costs one lookup and one
//! compare, no store; an untracked one starts being tracked.
use aya_ebpf::helpers::{bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use detector_common::{Counter, EventKind, SendHook, SockState, SockTuple, TASK_COMM_LEN, TCP_CLOSE, TCP_CLOSE_WAIT, TCP_ESTABLISHED, TUPLE_MPTCP};

use crate::{
    config::conf,
    maps::{EPOCH, MPTCP_LRU, MPTCP_STATE, SK_STATE, SOCKS, close_record, count, emit, socks_remove},
    sock::{BtfSock, EINVAL, RawSock, file_flags, read_at, read_tuple},
};

/// `BPF_NOEXIST` for map inserts, and the `-EEXIST` it answers when the key is there.
const BPF_NOEXIST: u64 = 1;
const EEXIST: i32 = -17;
/// `bpf_sk_storage_get` flag: create the storage if the socket has none.
const BPF_SK_STORAGE_GET_F_CREATE: u64 = 1;

/// Where a hook keeps its per-socket state.
pub trait Store: Copy {
    fn key(self) -> u64;
    /// The record of a tracked socket.
    fn get(self) -> Option<*mut SockState>;
    /// Starts tracking with `st`; `false` when another CPU got there first or there is no room
    /// (counted).
    fn create(self, st: &SockState) -> bool;
    /// Stops tracking (the record just created belongs to a socket that closed meanwhile).
    fn forget(self);
    /// Whether a close can pass without the program that ends the record (see `on_send`).
    const MISSES_CLOSES: bool;
    /// Whether its records are announced again once per agent epoch whatever the
    /// configuration (else only where the agent samples through sock_diag: `announce`).
    const ANNOUNCES: bool = false;
    /// Ends the record of a socket a send found closed, announcing the close.
    fn close_missed(self);
}

/// What a send hook reads of its socket: through a BTF pointer, or by copies.
pub trait SendSock: Copy {
    fn tcp_state(self) -> Option<u8>;
    /// See [`crate::sock`]'s `backlogged`: the tracking rule.
    fn send_backlog(self) -> Option<bool>;
    /// Addresses, ports, namespace, and whether it has a file (once, when tracking begins).
    fn read_tuple(self, t: &mut SockTuple) -> Result<(), i64>;
    /// The socket's address.
    fn addr(self) -> u64;
    /// Whether the task running the program is a kernel thread (a kTLS or MPTCP worker pushing
    /// the owner's bytes): never taken for the socket's owner.
    fn current_is_kthread() -> bool;
}

impl SendSock for BtfSock {
    #[inline(always)]
    fn tcp_state(self) -> Option<u8> {
        Some(self.state())
    }

    #[inline(always)]
    fn send_backlog(self) -> Option<bool> {
        Some(self.backlogged())
    }

    #[inline(always)]
    fn read_tuple(self, t: &mut SockTuple) -> Result<(), i64> {
        BtfSock::read_tuple(self, t)
    }

    #[inline(always)]
    fn addr(self) -> u64 {
        BtfSock::addr(self)
    }

    #[inline(always)]
    fn current_is_kthread() -> bool {
        crate::sock::current_is_kthread_btf()
    }
}

impl SendSock for RawSock {
    #[inline(always)]
    fn tcp_state(self) -> Option<u8> {
        self.state().ok()
    }

    #[inline(always)]
    fn send_backlog(self) -> Option<bool> {
        self.backlogged().ok()
    }

    #[inline(always)]
    fn read_tuple(self, t: &mut SockTuple) -> Result<(), i64> {
        read_tuple(self.0, t)
    }

    #[inline(always)]
    fn addr(self) -> u64 {
        self.0
    }

    #[inline(always)]
    fn current_is_kthread() -> bool {
        crate::sock::current_is_kthread_raw()
    }
}

/// Socket storage, for the BTF hooks.
#[derive(Clone, Copy)]
pub struct Storage(pub BtfSock);

impl Storage {
    #[inline(always)]
    fn storage_get(self, init: *const SockState, flags: u64) -> *mut SockState {
        let map = core::ptr::from_ref(&SK_STATE).cast_mut().cast();
        // SAFETY: the map pointer is the map definition (the loader patches in its fd) and the
        // socket a BTF pointer, as the helper requires.
        unsafe { aya_ebpf::helpers::generated::bpf_sk_storage_get(map, self.0.as_ptr(), init.cast_mut().cast(), flags) }.cast()
    }
}

impl Store for Storage {
    #[inline(always)]
    fn key(self) -> u64 {
        self.0.addr()
    }

    #[inline(always)]
    fn get(self) -> Option<*mut SockState> {
        let p = self.storage_get(core::ptr::null(), 0);
        (!p.is_null()).then_some(p)
    }

    #[inline(always)]
    fn create(self, st: &SockState) -> bool {
        if !self.storage_get(st, BPF_SK_STORAGE_GET_F_CREATE).is_null() {
            return true;
        }
        // Null: a racing CPU created it (then it is there now), or no memory.
        if self.get().is_none() {
            count(Counter::MapFull);
        }
        false
    }

    #[inline(always)]
    fn forget(self) {
        let map = core::ptr::from_ref(&SK_STATE).cast_mut().cast();
        // SAFETY: as in `storage_get`.
        unsafe { aya_ebpf::helpers::generated::bpf_sk_storage_delete(map, self.0.as_ptr()) };
    }

    /// Storage goes with the socket, and the walk reports a close: no close program to miss.
    const MISSES_CLOSES: bool = false;

    #[inline(always)]
    fn close_missed(self) {}
}

/// The `SOCKS` hash map, for the fallback hooks.
#[derive(Clone, Copy)]
pub struct Hash(pub u64);

impl Store for Hash {
    #[inline(always)]
    fn key(self) -> u64 {
        self.0
    }

    #[inline(always)]
    fn get(self) -> Option<*mut SockState> {
        SOCKS.get_ptr_mut(self.0)
    }

    #[inline(always)]
    fn create(self, st: &SockState) -> bool {
        match SOCKS.insert(self.0, st, BPF_NOEXIST) {
            Ok(()) => {
                count(Counter::MapInserted);
                true
            }
            Err(EEXIST) => false,
            Err(_) => {
                count(Counter::MapFull);
                false
            }
        }
    }

    #[inline(always)]
    fn forget(self) {
        socks_remove(self.0);
    }

    const MISSES_CLOSES: bool = true;

    #[inline(always)]
    fn close_missed(self) {
        close_record(self.0);
    }
}

/// A TCP state in which the application can still queue bytes.
#[inline(always)]
pub fn can_send(state: u8) -> bool {
    state == TCP_ESTABLISHED || state == TCP_CLOSE_WAIT
}

/// The TCP state when bytes of earlier sends are still unacknowledged and the socket can take
/// more (the tracking rule); `None` otherwise.
#[inline(always)]
fn waiting<K: SendSock>(sock: K) -> Option<u8> {
    waiting_in(sock, sock.tcp_state()?)
}

/// [`waiting`], with the state already read.
#[inline(always)]
fn waiting_in<K: SendSock>(sock: K, state: u8) -> Option<u8> {
    (can_send(state) && sock.send_backlog()?).then_some(state)
}

/// Records a send on the socket behind `store`. The socket itself is looked at first (no map):
/// only when bytes of earlier sends are still unacknowledged is its record consulted. A send
/// with nothing waiting cannot be part of a stall, so it costs a few loads of cache lines the
/// send path just used.
///
/// With the hash map, the record of a socket found closed is ended here: the close program (a
/// raw tracepoint) misses a close that would interrupt a run of itself on the same CPU.
///
/// Where the agent samples through sock_diag (`announce` set), it forgets a tracked socket that
/// went idle; such a send then announces the socket again, once per agent epoch (`Waiting`).
#[inline(always)]
pub fn on_send<S: Store, K: SendSock>(store: S, hook: SendHook, sock: K) {
    let state = sock.tcp_state();
    let Some(state) = state.and_then(|s| waiting_in(sock, s)) else {
        if S::MISSES_CLOSES && state == Some(TCP_CLOSE) {
            store.close_missed();
        }
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if let Some(st) = store.get() {
        // SAFETY: a value pointer from the map or storage, valid for this program run.
        let st = unsafe { &mut *st };
        if st.tgid != tgid && tgid != conf!(agent_tgid) && !K::current_is_kthread() {
            owner_changed(store.key(), st, pid_tgid);
        }
        if S::ANNOUNCES || conf!(announce) != 0 {
            announce_again(store.key(), st, state);
        }
        if S::MISSES_CLOSES && sock.tcp_state() == Some(TCP_CLOSE) {
            store.close_missed();
        }
    } else if tgid != conf!(agent_tgid) {
        start(store, hook, pid_tgid, state, sock);
    }
}

/// Another process sends on the socket now (fork, fd passing): it is the owner from here on.
#[inline(never)]
fn owner_changed(sk: u64, st: &mut SockState, pid_tgid: u64) {
    st.tgid = (pid_tgid >> 32) as u32;
    st.tid = pid_tgid as u32;
    st.comm = bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]);
    // SAFETY: no preconditions.
    st.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    emit(sk, st, EventKind::OwnerChanged, 0);
}

/// `Waiting`, unless the socket was announced in this epoch already: at most once per socket
/// per agent epoch, however many sends find bytes waiting.
#[inline(never)]
fn announce_again(sk: u64, st: &mut SockState, state: u8) {
    let epoch = current_epoch();
    if st.epoch != epoch {
        st.epoch = epoch;
        emit(sk, st, EventKind::Waiting, state);
    }
}

/// The agent's epoch (0 until it sets one).
#[inline(always)]
fn current_epoch() -> u32 {
    EPOCH.get(0).copied().unwrap_or(0)
}

#[inline(never)]
fn start<S: Store, K: SendSock>(store: S, hook: SendHook, pid_tgid: u64, state: u8, sock: K) {
    let mut st = SockState {
        // SAFETY: no preconditions.
        first_send_ns: unsafe { bpf_ktime_get_ns() },
        // SAFETY: no preconditions.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        comm: bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]),
        hook: hook as u8,
        epoch: if S::ANNOUNCES || conf!(announce) != 0 { current_epoch() } else { 0 },
        ..SockState::default()
    };
    if sock.read_tuple(&mut st.tuple).is_err() {
        count(Counter::ReadErrors);
        return;
    }
    if !store.create(&st) {
        return;
    }
    // The hooks on the entry of a send run before the socket lock: a reset handled on another
    // CPU meanwhile may close the socket, and its close event may pass before or after this
    // record exists (the VM suite saw reset connections leave dead entries this way with the
    // kprobe on 6.12). Such a close empties the send queue before its event. So: announce first, then
    // look again. A close whose event was reserved in the ring before this announcement
    // emptied the queue before it (the ring's lock orders the two), so the look below sees
    // it, and the `Untracked` after it ends the agent's entry (a 6.1 guest showed the race when the
    // announcement came after the look). A close after the announcement
    // removes the record itself and its event comes after.
    emit(store.key(), &st, EventKind::Tracked, state);
    if waiting(sock).is_none() {
        store.forget();
        emit(store.key(), &st, EventKind::Untracked, state);
    }
}

/// Multipath TCP connections' records, in the MPTCP socket (see `maps::MPTCP_STATE`). They are
/// always announced again once per agent epoch: the agent samples them through sock_diag (by
/// their first subflow) whatever the configuration, and forgets them when idle.
#[derive(Clone, Copy)]
pub struct MptcpStorage(pub BtfSock);

impl Store for MptcpStorage {
    #[inline(always)]
    fn key(self) -> u64 {
        self.0.addr()
    }

    #[inline(always)]
    fn get(self) -> Option<*mut SockState> {
        let p = mptcp_storage_get(self.0, core::ptr::null(), 0);
        (!p.is_null()).then_some(p)
    }

    #[inline(always)]
    fn create(self, st: &SockState) -> bool {
        if !mptcp_storage_get(self.0, st, BPF_SK_STORAGE_GET_F_CREATE).is_null() {
            return true;
        }
        if self.get().is_none() {
            count(Counter::MapFull);
        }
        false
    }

    #[inline(always)]
    fn forget(self) {
        let map = core::ptr::from_ref(&MPTCP_STATE).cast_mut().cast();
        // SAFETY: the map definition and a BTF socket pointer, as the helper requires.
        unsafe { aya_ebpf::helpers::generated::bpf_sk_storage_delete(map, self.0.as_ptr()) };
    }

    const MISSES_CLOSES: bool = false;
    const ANNOUNCES: bool = true;

    #[inline(always)]
    fn close_missed(self) {}
}

#[inline(always)]
fn mptcp_storage_get(sk: BtfSock, init: *const SockState, flags: u64) -> *mut SockState {
    let map = core::ptr::from_ref(&MPTCP_STATE).cast_mut().cast();
    // SAFETY: the map definition (the loader patches in its fd) and a BTF socket pointer.
    unsafe { aya_ebpf::helpers::generated::bpf_sk_storage_get(map, sk.as_ptr(), init.cast_mut().cast(), flags) }.cast()
}

/// Multipath TCP connections' records for the fallback hooks, keyed by the MPTCP socket's
/// address (see `maps::MPTCP_LRU`).
#[derive(Clone, Copy)]
pub struct MptcpLru(pub u64);

impl Store for MptcpLru {
    #[inline(always)]
    fn key(self) -> u64 {
        self.0
    }

    #[inline(always)]
    fn get(self) -> Option<*mut SockState> {
        MPTCP_LRU.get_ptr_mut(self.0)
    }

    #[inline(always)]
    fn create(self, st: &SockState) -> bool {
        MPTCP_LRU.insert(self.0, st, BPF_NOEXIST).is_ok()
    }

    #[inline(always)]
    fn forget(self) {
        let _ = MPTCP_LRU.remove(self.0);
    }

    const MISSES_CLOSES: bool = false;
    const ANNOUNCES: bool = true;

    #[inline(always)]
    fn close_missed(self) {}
}

/// A Multipath TCP socket, as a send hook sees it: its state and send buffer are the MPTCP
/// socket's (the application's bytes wait there), its addresses its first subflow's (the TCP
/// socket sock_diag samples). `first` is read by copy: `struct mptcp_sock` extends the
/// `struct sock` the hook's argument is typed as, past what the verifier lets a load reach.
#[derive(Clone, Copy)]
pub struct MptcpSock<K: SendSock>(pub K);

impl<K: SendSock> SendSock for MptcpSock<K> {
    #[inline(always)]
    fn tcp_state(self) -> Option<u8> {
        self.0.tcp_state()
    }

    #[inline(always)]
    fn send_backlog(self) -> Option<bool> {
        self.0.send_backlog()
    }

    #[inline(always)]
    fn read_tuple(self, t: &mut SockTuple) -> Result<(), i64> {
        let first: u64 = read_at(self.0.addr(), conf!(mptcp_first))?;
        if first == 0 {
            return Err(EINVAL);
        }
        read_tuple(first, t)?;
        // Whether it has a file is the MPTCP socket's to say (older kernels do not graft the
        // first subflow onto it).
        t.flags = file_flags(self.0.addr()) | TUPLE_MPTCP;
        Ok(())
    }

    #[inline(always)]
    fn addr(self) -> u64 {
        self.0.addr()
    }

    #[inline(always)]
    fn current_is_kthread() -> bool {
        K::current_is_kthread()
    }
}
