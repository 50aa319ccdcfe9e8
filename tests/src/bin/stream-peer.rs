//! A TCP peer for the integration tests, run as its own process so the agent attributes sockets
//! to a real pid and comm. Prints one line per milestone on stdout for the test to read.
//!
//!   stream-peer server <bind-addr>            accept one client, write to it until an error
//!   stream-peer client <addr> <mode>          connect; mode: read | none
//!
//! The server prints `LISTEN <addr>`, then `ACCEPTED fd=<n> local=<addr> peer=<addr>`, and
//! `SEND_ERROR <err>` when a send fails (then exits). The client prints `CONNECTED local=<addr>`.
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
};

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("server") => server(&args[2]),
        Some("client") => client(&args[2], args.get(3).map(String::as_str).unwrap_or("read")),
        _ => {
            eprintln!("usage: stream-peer server <bind> | client <addr> <read|none>");
            std::process::exit(2);
        }
    }
}

fn server(bind: &str) {
    let l = TcpListener::bind(bind).expect("bind");
    say(format!("LISTEN {}", l.local_addr().expect("local addr")));
    let (mut s, peer) = l.accept().expect("accept");
    say(format!(
        "ACCEPTED fd={} local={} peer={peer}",
        s.as_raw_fd(),
        s.local_addr().expect("local addr")
    ));
    let buf = vec![b'x'; 16 * 1024];
    loop {
        if let Err(e) = s.write_all(&buf) {
            say(format!("SEND_ERROR {e}"));
            return;
        }
    }
}

fn client(addr: &str, mode: &str) {
    let mut s = TcpStream::connect(addr).expect("connect");
    say(format!("CONNECTED local={}", s.local_addr().expect("local addr")));
    match mode {
        "none" => loop {
            std::thread::park();
        },
        _ => {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    return;
                }
            }
        }
    }
}
