//! Loopback load for the benchmarks (`cargo xtask bench`), in its own process so the agent's
//! cost is measured apart from the load's.
//!
//!   loadgen throughput <conns> <msg-bytes> <secs>
//!     <conns> connections, a writer and a reader thread each; every write is one send of
//!     <msg-bytes>. Prints `sends=<n> bytes=<n> secs=<f>`.
//!
//!   loadgen sendcost <sends> <msg-bytes>
//!     One connection: the writer thread, pinned to CPU 0, makes <sends> sends of <msg-bytes>
//!     as fast as the socket takes them; the reader, pinned to CPU 1, drains. Prints
//!     `cpu_ns_per_send=<f> sends_per_sec=<f>`: the writer thread's own CPU time (the send
//!     path and any hook on it run there) per send, and the rate.
//!
//!   loadgen hold <conns> <sending-pct> <stalled-pct>
//!     <conns> connections held open. <sending-pct> of them send 512 bytes twice a second (and
//!     are read), <stalled-pct> fill their send path towards a reader that never reads, the
//!     rest stay idle. Prints `READY conns=<n>` and runs until killed. Uses 2 fds per
//!     connection: keep <conns> under half the fd limit.
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

fn pair(l: &TcpListener) -> (TcpStream, TcpStream) {
    let c = TcpStream::connect(l.local_addr().unwrap()).expect("connect");
    let (s, _) = l.accept().expect("accept");
    (s, c)
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let n = |i: usize| -> u64 { a.get(i).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("argument {i} missing: see the usage in the source")) };
    match a.get(1).map(String::as_str) {
        Some("throughput") => throughput(n(2) as usize, n(3) as usize, n(4)),
        Some("hold") => hold(n(2) as usize, n(3), n(4)),
        Some("sendcost") => sendcost(n(2), n(3) as usize),
        _ => {
            eprintln!("usage: loadgen throughput <conns> <msg> <secs> | hold <conns> <sending%> <stalled%>");
            std::process::exit(2);
        }
    }
}

fn throughput(conns: usize, msg: usize, secs: u64) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sends = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for _ in 0..conns {
        let (mut s, mut c) = pair(&l);
        let (stop_w, stop_r, sends) = (stop.clone(), stop.clone(), sends.clone());
        threads.push(std::thread::spawn(move || {
            let buf = vec![b'x'; msg];
            let mut local = 0u64;
            while !stop_w.load(Ordering::Relaxed) {
                if s.write_all(&buf).is_err() {
                    break;
                }
                local += 1;
            }
            sends.fetch_add(local, Ordering::Relaxed);
        }));
        threads.push(std::thread::spawn(move || {
            c.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            let mut buf = vec![0u8; 256 * 1024];
            while !stop_r.load(Ordering::Relaxed) {
                let _ = c.read(&mut buf);
            }
        }));
    }
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let took = t0.elapsed().as_secs_f64();
    for t in threads {
        let _ = t.join();
    }
    let n = sends.load(Ordering::Relaxed);
    println!("sends={n} bytes={} secs={took:.3}", n * msg as u64);
}

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; we only set one bit of it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn sendcost(sends: u64, msg: usize) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let (mut s, mut c) = pair(&l);
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let reader = std::thread::spawn(move || {
        pin(1);
        c.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        while !d.load(Ordering::Relaxed) {
            let _ = c.read(&mut buf);
        }
    });
    pin(0);
    let buf = vec![b'x'; msg];
    let (cpu0, t0) = (thread_cpu_ns(), Instant::now());
    for _ in 0..sends {
        s.write_all(&buf).expect("send");
    }
    let (cpu, wall) = (thread_cpu_ns() - cpu0, t0.elapsed().as_secs_f64());
    done.store(true, Ordering::Relaxed);
    let _ = reader.join();
    println!("cpu_ns_per_send={:.1} sends_per_sec={:.0}", cpu as f64 / sends as f64, sends as f64 / wall);
}

/// Raises this process's open-file limit to its hard limit (2 fds per connection).
fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit on a zeroed rlimit of this process.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn set_buf(s: &TcpStream, opt: libc::c_int, bytes: libc::c_int) {
    // SAFETY: a valid socket and an int option value.
    unsafe { libc::setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, opt, (&raw const bytes).cast(), 4) };
}

fn hold(conns: usize, sending_pct: u64, stalled_pct: u64) {
    raise_nofile();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let sending = conns * sending_pct as usize / 100;
    let stalled = conns * stalled_pct as usize / 100;
    let mut active = Vec::with_capacity(sending);
    let mut keep = Vec::with_capacity(conns);
    for i in 0..conns {
        let (s, c) = pair(&l);
        if i < sending {
            s.set_nonblocking(true).unwrap();
            c.set_nonblocking(true).unwrap();
            active.push((s, c));
        } else if i < sending + stalled {
            // Small buffers, so 1 % of 200k connections stalled holds ~0.5 GiB, not tcp_mem.
            set_buf(&s, libc::SO_SNDBUF, 128 * 1024);
            set_buf(&c, libc::SO_RCVBUF, 64 * 1024);
            s.set_nonblocking(true).unwrap();
            let mut s = s;
            let buf = vec![b'x'; 64 * 1024];
            while s.write(&buf).is_ok() {}
            keep.push((s, c));
        } else {
            keep.push((s, c));
        }
    }
    println!("READY conns={conns} sending={sending} stalled={stalled}");
    let _ = std::io::stdout().flush();
    let msg = vec![b'x'; 512];
    let mut buf = vec![0u8; 64 * 1024];
    let start = Instant::now();
    for tick in 1u32.. {
        for (s, c) in active.iter_mut() {
            let _ = s.write(&msg);
            while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
        }
        let next = start + Duration::from_millis(500) * tick;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    drop(keep);
}
