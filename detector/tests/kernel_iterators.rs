//! The kernel iterators against sock_diag, on real sockets of this kernel:
//! - the sampling walk reports exactly the tracked sockets with bytes waiting (and once more a
//!   socket whose bytes drained), and what it reports of each is what sock_diag's `tcp_info`
//!   says of it;
//! - the reconcile's TCP pass finds, in this namespace and in another, exactly the stuck
//!   sockets a sock_diag dump finds, with the same addresses, state and cookie;
//! - its pass over every process's files finds, in one pass, what the TCP passes find in
//!   each namespace, each with its own namespace and the process holding it.
//!
//! Needs root (it loads the programs); `cargo xtask test` makes that a requirement.
use std::{
    io::{ErrorKind, Read, Write},
    net::{TcpListener, TcpStream},
    time::Duration,
};

use detector::{
    agent::{self, KernelStart},
    kernel::{
        self,
        configuration::{Kind, Want},
        hooks::{HookId, HookState},
        loader,
    },
    sample::{
        DiagConn, DiagSocket, Dumped, Lookup,
        kernel_dump::KernelDump,
        netns::{NetnsPool, netns_of},
        walk::Walker,
    },
    tracker::addr,
};
use detector_common::WalkRecord;

/// A connection whose server side wrote until its send buffer was full.
struct Filled {
    server: TcpStream,
    client: TcpStream,
}

fn filled(l: &TcpListener) -> Filled {
    let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut server, _) = l.accept().unwrap();
    server.set_nonblocking(true).unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let mut idle = 0;
    // Until the buffer stays full (a loopback peer keeps taking bytes for a moment).
    while idle < 10 {
        match server.write(&chunk) {
            Ok(_) => idle = 0,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                idle += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("{e}"),
        }
    }
    Filled { server, client }
}

impl Filled {
    fn ports(&self) -> (u16, u16) {
        (self.server.local_addr().unwrap().port(), self.server.peer_addr().unwrap().port())
    }

    fn record<'a>(&self, recs: &'a [WalkRecord]) -> Option<&'a WalkRecord> {
        let (s, d) = self.ports();
        recs.iter().find(|r| r.st.tuple.sport == s && r.st.tuple.dport == d)
    }
}

fn lookup(diag: &mut DiagConn, r: &WalkRecord) -> DiagSocket {
    let t = &r.st.tuple;
    let l = Lookup {
        family: t.family,
        local: addr(&t.saddr, t.family),
        local_port: t.sport,
        remote: addr(&t.daddr, t.family),
        remote_port: t.dport,
        ifindex: t.bound_dev_if,
        cookie: Some(r.cookie),
    };
    diag.lookup(&l).unwrap().expect("sock_diag finds the walked socket by its cookie")
}

const SIZES: loader::Sizes = loader::Sizes { max_sockets: 1024, ring_buffer_bytes: 64 * 1024 };

/// The configuration of `kind` loaded as the agent loads it, but tracking this process's own
/// sends; `None`, with the refusal named in the test's output, where this kernel does not run
/// it (the agent then runs a lesser one: `the_agent_runs_the_best_configuration_this_kernel_accepts`
/// proves it is the best there is).
fn start(kind: Kind, what: &str) -> Option<KernelStart> {
    let mut p = agent::probe_kernel_ignoring(0).unwrap();
    match p.start(Want { kind: Some(kind), ..Want::default() }, SIZES) {
        Ok(k) => Some(k),
        Err(e) => {
            let why = format!("{e:#}");
            let why = why.lines().find(|l| l.trim_start().starts_with(&format!("- {}", kind.as_str()))).unwrap_or(&why).trim_start_matches([' ', '-']);
            detector_tests::refused(&format!("{what} needs configuration {}, which this kernel does not run: {why}", kind.as_str()));
            None
        }
    }
}

/// As `start`, and the piece `id` must be part of it; else named as refused.
fn start_with(kind: Kind, id: HookId, what: &str) -> Option<KernelStart> {
    let k = start(kind, what)?;
    if k.loaded.configuration.hooks().contains(&id) {
        return Some(k);
    }
    let h = k.hooks.iter().find(|h| h.id == id).unwrap();
    detector_tests::refused(&format!("{what} needs {}: {}", h.hook, detector::kernel::hooks::describe(&h.state)));
    assert!(!h.state.works(), "{} works here but the configuration left it out: {:?}", h.hook, h.state);
    None
}

/// The agent runs the best configuration this kernel accepts: each better kind is refused when
/// tried whole (the refusal is named), and the one chosen loads. No piece is assumed to load.
#[test]
fn the_agent_runs_the_best_configuration_this_kernel_accepts() {
    detector_tests::require_root!();
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut p = agent::probe_kernel_ignoring(0).unwrap();
    for h in p.hooks.iter().filter(|h| !h.state.works()) {
        detector_tests::refused(&format!("{}: {}", h.hook, detector::kernel::hooks::describe(&h.state)));
    }
    let chosen = p.start(Want::default(), SIZES).expect("some configuration runs on every kernel of this project's matrix").loaded.configuration;
    eprintln!("the agent runs {}", chosen.describe());
    for kind in Kind::ALL.into_iter().filter(|k| *k < chosen.kind) {
        let e = p
            .start(Want { kind: Some(kind), ..Want::default() }, SIZES)
            .err()
            .unwrap_or_else(|| panic!("{} runs here, yet the agent chose {}", kind.as_str(), chosen.kind.as_str()));
        detector_tests::refused(&format!("configuration {}: {e:#}", kind.as_str()));
    }
    // Within its kind, no better send hook loads either.
    for h in p.hooks.iter().filter(|h| matches!(h.id, HookId::Send(s) if s.socket_storage() == chosen.kind.socket_storage() && (s as u8) < (chosen.send as u8)))
    {
        assert!(matches!(h.state, HookState::Refused(_)), "{} works here, yet {} was chosen", h.hook, chosen.describe());
    }
}

/// The programs are loaded once per process: the tests run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn the_walk_reports_what_sock_diag_reports_and_only_sockets_with_bytes_waiting() {
    detector_tests::require_root!();
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut k) = start(Kind::StorageWalk, "the walk") else { return };
    let mut walker = k.walker.take().expect("storage-walk runs with its walk started");
    if let Some(hz) = std::fs::read_to_string(format!("/boot/config-{}", kernel::kernel_release()))
        .ok()
        .and_then(|c| c.lines().find_map(|l| l.strip_prefix("CONFIG_HZ=").and_then(|v| v.parse::<u32>().ok())))
    {
        assert_eq!(walker.hz(), hz, "measured HZ against the kernel's config");
    }
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let stuck: Vec<Filled> = (0..3).map(|_| filled(&l)).collect();
    let mut drains = filled(&l);
    let first = walker.walk().unwrap().records;
    for f in stuck.iter().chain([&drains]) {
        assert!(f.record(&first).is_some_and(|r| r.write_seq != r.snd_una), "a socket with bytes waiting was not reported");
    }
    // One drains: reported once more with nothing waiting, then no longer.
    drains.client.set_nonblocking(true).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    while drains.client.read(&mut buf).is_ok() {}
    std::thread::sleep(Duration::from_millis(100));
    let second = walker.walk().unwrap().records;
    let r = drains.record(&second).expect("a drained socket is reported once more");
    assert_eq!(r.write_seq, r.snd_una, "it has nothing waiting");
    let third = walker.walk().unwrap().records;
    assert!(drains.record(&third).is_none(), "reported again with nothing waiting");
    // What the walk says of the stuck ones is what sock_diag says (clocks within two jiffies).
    let mut diag = DiagConn::open().unwrap();
    let jiffy = 1000 / walker.hz() + 1;
    for f in &stuck {
        let (w, d) = quiet_walk(&mut walker, &mut diag, f);
        let (ws, ds) = (&w.sample, &d.sample);
        assert_eq!((w.cookie, w.inode, w.uid), (d.cookie, d.inode, d.uid));
        assert_eq!(
            (ws.state, ws.queued, ws.notsent, ws.bytes_acked, ws.unacked),
            (ds.state, ds.queued, ds.notsent, ds.bytes_acked, ds.unacked),
            "{w:?}\n{d:?}"
        );
        assert_eq!((ws.snd_wnd, ws.retransmits, ws.total_retrans, ws.rto_ms), (ds.snd_wnd, ds.retransmits, ds.total_retrans, ds.rto_ms), "{w:?}\n{d:?}");
        // A window probe may go out between the two reads.
        assert!(ws.probes.abs_diff(ds.probes) <= 1 && ws.backoff.abs_diff(ds.backoff) <= 1 && ws.segs_out.abs_diff(ds.segs_out) <= 2, "{w:?}\n{d:?}");
        for (a, b) in [(ws.last_ack_recv_ms, ds.last_ack_recv_ms), (ws.last_data_sent_ms, ds.last_data_sent_ms)] {
            assert!(a.abs_diff(b) <= 2 * jiffy + 20, "clock {a} ms by the walk, {b} ms by sock_diag\n{w:?}\n{d:?}");
        }
    }
    drop((stuck, drains));
}

/// The walk's sample of `f` and sock_diag's, taken when no segment went out around the walk:
/// the walk lies between two sock_diag reads that agree on segments sent, probes and backoff.
/// (The stuck sockets send zero-window probes, each answered: one between the walk and the
/// lookup moves both kernel clocks, seen in a 6.1 guest under load.)
fn quiet_walk(walker: &mut Walker, diag: &mut DiagConn, f: &Filled) -> (DiagSocket, DiagSocket) {
    let quiet =
        |a: &DiagSocket, b: &DiagSocket| (a.sample.segs_out, a.sample.probes, a.sample.backoff) == (b.sample.segs_out, b.sample.probes, b.sample.backoff);
    let first = walker.walk().unwrap();
    let known = *f.record(&first.records).expect("a stuck socket is reported at every walk");
    let mut seen = Vec::new();
    for _ in 0..20 {
        let before = lookup(diag, &known);
        let walk = walker.walk().unwrap();
        let r = f.record(&walk.records).expect("a stuck socket is reported at every walk");
        let w = detector::sample::walk::to_diag(r, &walk.clock, walker.hz(), 0);
        let after = lookup(diag, r);
        if quiet(&before, &after) {
            return (w, after);
        }
        seen.push((before.sample.segs_out, after.sample.segs_out));
    }
    panic!("a segment went out around every one of 20 walks (segments sent before/after: {seen:?}): the probes are ≥ 200 ms apart");
}

/// Sockets of every stuck kind, and one healthy, made in the calling thread's namespace: a full
/// send buffer to a peer that does not read, a CLOSE_WAIT the owner holds, an idle connection.
struct Kinds {
    stuck: Filled,
    close_wait: TcpStream,
    idle: (TcpStream, TcpStream),
    _peer_gone: TcpStream,
}

fn kinds(l: &TcpListener) -> Kinds {
    let stuck = filled(l);
    let gone = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (close_wait, _) = l.accept().unwrap();
    gone.shutdown(std::net::Shutdown::Write).unwrap();
    let idle_c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (idle_s, _) = l.accept().unwrap();
    Kinds { stuck, close_wait, idle: (idle_s, idle_c), _peer_gone: gone }
}

impl Kinds {
    /// (local port, remote port) of the sockets that must be found, and of the one that must not.
    fn ports(&self) -> (Vec<(u16, u16)>, (u16, u16)) {
        let p = |s: &TcpStream| (s.local_addr().unwrap().port(), s.peer_addr().unwrap().port());
        (vec![p(&self.stuck.server), p(&self.close_wait)], p(&self.idle.0))
    }
}

fn keyed(rows: &[Dumped], ports: &[(u16, u16)]) -> Vec<(u16, u16, u8, u64, String)> {
    let mut v: Vec<_> = rows
        .iter()
        .filter(|d| ports.contains(&(d.local_port, d.remote_port)))
        .filter(|d| d.send_queue > 0 || d.state == detector_common::TCP_CLOSE_WAIT)
        .map(|d| (d.local_port, d.remote_port, d.state, d.cookie, format!("{} {}", d.local, d.remote)))
        .collect();
    v.sort();
    v
}

#[test]
fn the_tcp_pass_finds_what_a_dump_finds_in_every_namespace() {
    detector_tests::require_root!();
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut k) = start_with(Kind::StorageDiag, HookId::Scan, "the plain TCP pass") else { return };
    assert_eq!(k.loaded.configuration.startup, Some(HookId::Scan), "where sock_diag samples, the plain pass");
    let mut kernel_dump = KernelDump::new(k.loaded.scan.take().unwrap(), None);
    let pool = NetnsPool::new().unwrap();
    // Here.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let here = kinds(&l);
    std::thread::sleep(Duration::from_millis(100));
    check(&mut kernel_dump, &pool, pool.own(), None, &here);
    // In a namespace of its own (a process lives there, so the agent can find it).
    let there = Elsewhere::new("iter", &pool);
    check(&mut kernel_dump, &pool, there.inum, Some(there.holder.pid()), &there.kinds);
}

// With socket storage, the pass writes nothing out for the stuck sockets it finds: it gives each
// a record in socket storage, and from then on the walk (one across every namespace) reports
// them with the others. Idle sockets get nothing.
#[test]
fn the_adopting_tcp_pass_hands_stuck_sockets_to_the_walk_in_every_namespace() {
    detector_tests::require_root!();
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut k) = start_with(Kind::StorageWalk, HookId::ScanAdopt, "the adopting TCP pass") else { return };
    let mut kernel_dump = KernelDump::new(k.loaded.scan.take().unwrap(), None);
    let mut walker = k.walker.take().unwrap();
    let pool = NetnsPool::new().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let here = kinds(&l);
    let there = Elsewhere::new("adopt", &pool);
    for (ns, hint, k) in [(pool.own(), None, &here), (there.inum, Some(there.holder.pid()), &there.kinds)] {
        let scanned = kernel_dump.stuck(&pool, ns, hint).unwrap();
        check_adopted(&pool, ns, hint, k, &scanned, &walker.walk().unwrap().records);
    }
}

/// After an adopting pass that wrote `written` out for namespace `ns`: the stuck and the
/// CLOSE_WAIT socket a dump finds there were written out neither, and are in the walk with
/// their namespace (the CLOSE_WAIT one, which never sent, with no sender and no send hook);
/// the idle one was not put into storage.
fn check_adopted(pool: &NetnsPool, ns: u32, hint: Option<u32>, k: &Kinds, written: &[Dumped], walked: &[WalkRecord]) {
    let (want, idle) = k.ports();
    let dumped = pool.within(ns, hint, || DiagConn::open().unwrap().dump_judged().unwrap()).unwrap();
    let rows = keyed(&dumped, &want);
    assert_eq!(rows.len(), 2, "the dump finds the stuck and the CLOSE_WAIT socket");
    assert_eq!(keyed(written, &want), vec![], "written out although in socket storage");
    for (_, _, state, cookie, _) in &rows {
        let r = walked.iter().find(|r| r.cookie == *cookie).unwrap_or_else(|| panic!("socket {cookie} is not in the walk after the pass"));
        assert_eq!(r.st.tuple.netns, ns, "adopted with its own namespace");
        // The full one was tracked by the send hook as this test filled it; the CLOSE_WAIT
        // socket never sent: the pass put it there.
        if *state == detector_common::TCP_CLOSE_WAIT {
            assert_eq!((r.st.tgid, r.st.hook), (0, 0), "adopted by the pass: no sender, no send hook");
        }
    }
    let idle_cookie = dumped.iter().find(|d| (d.local_port, d.remote_port) == idle).map(|d| d.cookie);
    assert!(idle_cookie.is_none() || !walked.iter().any(|r| Some(r.cookie) == idle_cookie), "an idle socket was put into storage");
}

// One pass over every process's files finds what one TCP pass per namespace finds, each socket
// with the namespace it lives in (not its holder's: this process made the other namespace's
// sockets from a thread that entered it) and the process holding it; idle ones are not written.
#[test]
fn the_pass_over_files_finds_in_one_pass_what_the_tcp_passes_find_in_each_namespace() {
    detector_tests::require_root!();
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut k) = start_with(Kind::StorageDiag, HookId::ScanFiles, "the plain pass over files") else { return };
    let Some(tcp) = k.loaded.scan.take() else {
        return detector_tests::refused("iter tcp, which the pass over files is compared with");
    };
    let mut kernel_dump = KernelDump::new(tcp, k.loaded.scan_files.take());
    let mut pool = NetnsPool::new().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let here = kinds(&l);
    let there = Elsewhere::new("files", &pool);
    std::thread::sleep(Duration::from_millis(100));
    let held = kernel_dump.stuck_held(&mut pool).expect("the pass over files is loaded").unwrap();
    for (ns, hint, k) in [(pool.own(), None, &here), (there.inum, Some(there.holder.pid()), &there.kinds)] {
        let (want, idle) = k.ports();
        let rows: Vec<Dumped> = held.iter().filter(|h| h.netns == ns).map(|h| h.row).collect();
        let tcp = kernel_dump.stuck(&pool, ns, hint).unwrap();
        assert_eq!(keyed(&rows, &want).len(), 2, "the stuck and the CLOSE_WAIT socket of namespace {ns}: {held:?}");
        assert_eq!(keyed(&rows, &want), keyed(&tcp, &want), "the pass over files and the TCP pass of namespace {ns} disagree");
        assert!(!rows.iter().any(|r| (r.local_port, r.remote_port) == idle), "an idle socket was written out");
        for h in held.iter().filter(|h| h.netns == ns && want.contains(&(h.row.local_port, h.row.remote_port))) {
            assert_eq!(h.pid, std::process::id(), "held by this process: {h:?}");
        }
    }
}

// With socket storage, the pass over files adopts the stuck sockets of every namespace into it
// (as the adopting TCP pass does), writing none of them out: the walk then samples them.
#[test]
fn the_adopting_pass_over_files_hands_stuck_sockets_of_every_namespace_to_the_walk() {
    detector_tests::require_root!();
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut k) = start_with(Kind::StorageWalk, HookId::ScanFilesAdopt, "the adopting pass over files") else { return };
    let Some(tcp) = k.loaded.scan.take() else {
        return detector_tests::refused("iter tcp, which the adopting pass over files is checked beside");
    };
    let mut kernel_dump = KernelDump::new(tcp, k.loaded.scan_files.take());
    let mut walker = k.walker.take().unwrap();
    let mut pool = NetnsPool::new().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let here = kinds(&l);
    let there = Elsewhere::new("files-adopt", &pool);
    let held = kernel_dump.stuck_held(&mut pool).expect("the pass over files is loaded").unwrap();
    let walked = walker.walk().unwrap().records;
    for (ns, hint, k) in [(pool.own(), None, &here), (there.inum, Some(there.holder.pid()), &there.kinds)] {
        let written: Vec<Dumped> = held.iter().filter(|h| h.netns == ns).map(|h| h.row).collect();
        check_adopted(&pool, ns, hint, k, &written, &walked);
    }
}

/// Sockets of every stuck kind in a network namespace of their own, with a process living there
/// (so the agent can find it); all of it goes when this is dropped.
struct Elsewhere {
    kinds: Kinds,
    _listener: TcpListener,
    holder: detector_tests::Peer,
    inum: u32,
    _ns: detector_tests::Namespaces,
}

impl Elsewhere {
    fn new(tag: &str, pool: &NetnsPool) -> Self {
        let ns = detector_tests::Namespaces::create(tag, 1).unwrap();
        let holder = detector_tests::Peer::spawn("ip", &["netns", "exec", &ns.0[0], "sleep", "60"]);
        let file = std::fs::File::open(format!("/run/netns/{}", ns.0[0])).unwrap();
        let (listener, kinds) = std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                let l = TcpListener::bind("127.0.0.1:0").unwrap();
                let k = kinds(&l);
                (l, k)
            })
            .join()
            .unwrap()
        });
        std::thread::sleep(Duration::from_millis(100));
        let inum =
            detector_tests::poll(Duration::from_secs(5), || netns_of(holder.pid()).filter(|&i| i != pool.own())).expect("the holder entered the namespace");
        Elsewhere { kinds, _listener: listener, holder, inum, _ns: ns }
    }
}

/// The pass against a sock_diag dump of the same namespace.
fn check(kernel_dump: &mut KernelDump, pool: &NetnsPool, inum: u32, hint: Option<u32>, k: &Kinds) {
    let (want, idle) = k.ports();
    let scanned = kernel_dump.stuck(pool, inum, hint).unwrap();
    let dumped = pool.within(inum, hint, || DiagConn::open().unwrap().dump_judged().unwrap()).unwrap();
    let (s, d) = (keyed(&scanned, &want), keyed(&dumped, &want));
    assert_eq!(s.len(), 2, "the stuck and the CLOSE_WAIT socket: {s:?}");
    assert_eq!(s, d, "the pass and the dump disagree");
    assert!(!scanned.iter().any(|r| (r.local_port, r.remote_port) == idle), "an idle socket was reported");
}

fn lookup_of(s: &TcpStream, cookie: Option<u64>) -> Lookup {
    let (l, r) = (s.local_addr().unwrap(), s.peer_addr().unwrap());
    Lookup { family: libc::AF_INET as u16, local: l.ip(), local_port: l.port(), remote: r.ip(), remote_port: r.port(), ifindex: 0, cookie }
}

/// The fallback sampler sends many lookups per `sendmsg`: every answer must land on its own
/// lookup, across batches, with missing sockets and a reused tuple (wrong cookie) in between.
#[test]
fn batched_lookups_answer_each_socket_as_a_single_lookup_does() {
    detector_tests::require_root!();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let pairs: Vec<(TcpStream, TcpStream)> = (0..150)
        .map(|_| {
            let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            (l.accept().unwrap().0, c)
        })
        .collect();
    let mut ls: Vec<Lookup> = pairs.iter().map(|(s, _)| lookup_of(s, None)).collect();
    // A socket that is gone (its client end, closed) and one whose cookie is not the tuple's.
    let gone = {
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let s = l.accept().unwrap().0;
        let lk = lookup_of(&s, None);
        drop((c, s));
        std::thread::sleep(Duration::from_millis(50));
        lk
    };
    ls.insert(70, gone);
    ls.insert(3, lookup_of(&pairs[3].0, Some(1)));
    let mut diag = DiagConn::open().unwrap();
    let single: Vec<Option<(u64, u32, u8)>> = ls.iter().map(|l| diag.lookup(l).unwrap().map(|d| (d.cookie, d.inode, d.sample.state))).collect();
    let asked = detector::sample::monotonic_ms();
    let answers = diag.lookup_many(&ls);
    let answered = detector::sample::monotonic_ms();
    // Each sample is dated by its own answer, within the call, not by an instant before it.
    for d in answers.iter().flatten().flatten() {
        assert!((asked..=answered).contains(&d.sample.at_ms), "dated {} ms, asked at {asked}, answered by {answered}", d.sample.at_ms);
    }
    let batched: Vec<Option<(u64, u32, u8)>> = answers.into_iter().map(|a| a.unwrap().map(|d| (d.cookie, d.inode, d.sample.state))).collect();
    assert_eq!(batched, single);
    assert_eq!((single[3], single[71]), (None, None), "the wrong cookie and the closed socket find nothing: {single:?}");
    let inodes: std::collections::HashSet<u32> = batched.iter().flatten().map(|a| a.1).collect();
    assert_eq!(inodes.len(), 150, "each answer is a different socket");
    drop(pairs);
}
