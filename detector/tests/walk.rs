//! The kernel-side sampling walk against sock_diag, on real sockets of this kernel: the walk
//! reports exactly the tracked sockets with bytes waiting (and once more a socket whose bytes
//! drained), and what it reports of each is what sock_diag's `tcp_info` says of it. Needs root
//! (it loads the programs); `cargo xtask test` makes that a requirement.
use std::{
    io::{ErrorKind, Read, Write},
    net::{TcpListener, TcpStream},
    time::Duration,
};

use detector::{
    kernel::{self, btf::KernelBtf, loader, tracefs::Tracefs},
    sample::{DiagConn, DiagSocket, Lookup, walk::Walker},
    tracker::addr,
};
use detector_common::WalkRecord;

fn privileged() -> bool {
    let root = nix::unistd::geteuid().is_root();
    assert!(root || std::env::var_os("DETECTOR_REQUIRE_PRIVILEGED").is_none(), "this test needs root");
    root
}

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
    diag.lookup(&l, 0).unwrap().expect("sock_diag finds the walked socket by its cookie")
}

#[test]
fn the_walk_reports_what_sock_diag_reports_and_only_sockets_with_bytes_waiting() {
    if !privileged() {
        return;
    }
    let mut cfg = loader::kernel_config(&Tracefs::find_or_mount().unwrap(), &KernelBtf::load().unwrap()).unwrap();
    // This process sends: do not ignore it as the agent would ignore itself.
    cfg.agent_tgid = 0;
    let sizes = loader::Sizes { max_sockets: 1024, ring_buffer_bytes: 64 * 1024 };
    let mut loaded = loader::load(kernel::object(), &cfg, sizes, None).unwrap();
    let Some(link) = loaded.walk.take() else {
        let h = loaded.hooks.iter().find(|h| h.id == loader::HookId::Walk).unwrap();
        assert!(!loaded.send_hook.socket_storage(), "the walk was refused with socket storage: {:?}", h.state);
        eprintln!("skipped: this kernel's send hook keeps a hash map; sock_diag samples");
        return;
    };
    let mut walker = Walker::start(link).unwrap();
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
    let walk = walker.walk().unwrap();
    let mut diag = DiagConn::open().unwrap();
    let jiffy = 1000 / walker.hz() + 1;
    for f in &stuck {
        let r = f.record(&walk.records).expect("a stuck socket is reported at every walk");
        let w = detector::sample::walk::to_diag(r, &walk.clock, walker.hz(), 0);
        let d = lookup(&mut diag, r);
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
