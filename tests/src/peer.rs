//! Peer processes (`stream-peer`, `wedged-server`, `send-peer`) and the scenario helpers built on them.
use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, channel},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::*;

/// A `stream-peer` process; its stdout lines arrive on a channel. Killed on drop.
pub struct Peer {
    child: Child,
    lines: Receiver<String>,
    /// Every line read so far, for assertions about what did (not) happen.
    history: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Peer {
    /// A `stream-peer` with `args`.
    pub fn stream(args: &[&str]) -> Peer {
        Peer::spawn(&stream_peer(), args)
    }

    /// A `wedged-server` with `args`.
    pub fn wedged(args: &[&str]) -> Peer {
        Peer::spawn(&wedged_server(), args)
    }

    pub fn spawn(bin: &str, args: &[&str]) -> Peer {
        let mut child =
            Command::new(bin).args(args).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap_or_else(|e| panic!("spawning {bin} {args:?}: {e}"));
        let out = child.stdout.take().expect("piped stdout");
        let (tx, rx) = channel();
        let history = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let h = history.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                h.lock().unwrap().push(line.clone());
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Peer { child, lines: rx, history }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a line starting with `prefix`; returns the rest of it.
    pub fn expect(&self, prefix: &str, timeout: Duration) -> String {
        self.try_expect(prefix, timeout).unwrap_or_else(|e| panic!("{e}"))
    }

    /// As [`Peer::expect`], with an error instead of a panic.
    pub fn try_expect(&self, prefix: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + patient(timeout);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some(rest) = l.strip_prefix(prefix) {
                        return Ok(rest.trim().to_string());
                    }
                }
                Err(e) => return Err(format!("process {} never printed {prefix:?}: {e}", self.pid())),
            }
        }
    }

    /// Waits for a line starting with `prefix` for which `pred` holds; returns it whole.
    pub fn expect_where(&self, prefix: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + patient(timeout);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) && pred(&l) => return Some(l),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Every line so far that starts with `prefix`.
    pub fn seen(&self, prefix: &str) -> Vec<String> {
        self.history.lock().unwrap().iter().filter(|l| l.starts_with(prefix)).cloned().collect()
    }

    /// Whether any line so far starts with `prefix` and satisfies `pred`.
    pub fn saw(&self, prefix: &str, pred: impl Fn(&str) -> bool) -> bool {
        self.history.lock().unwrap().iter().any(|l| l.starts_with(prefix) && pred(l))
    }

    /// Whether the process has exited, and how (reaped then).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: a signal to a child this handle owns (reaped only on drop).
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + patient(timeout);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses `key=value` words.
pub fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace().find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('='))).unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// A helper binary of this crate (`stream-peer`, `wedged-server`, `send-peer`, `loadgen`), built
/// beside the test binaries: `<target>/<profile>/<name>`, next to `deps/` where the tests run.
pub fn helper(name: &str) -> String {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("tests run from <target>/<profile>/deps");
    let p = dir.join(name);
    assert!(p.exists(), "{} not found: `cargo xtask test` builds the helpers (cargo build -p detector-tests --bins)", p.display());
    p.display().to_string()
}

/// The `stream-peer` binary: a TCP peer that reads, stops, closes as told.
pub fn stream_peer() -> String {
    helper("stream-peer")
}

/// The `wedged-server` binary: the README's example server with the wedged-send bug.
pub fn wedged_server() -> String {
    helper("wedged-server")
}

pub struct Pair {
    pub server: Peer,
    pub client: Peer,
    /// The server side's local address: what the agent reports.
    pub local: String,
    /// The server's `ACCEPTED` line (fd, local, peer).
    pub accepted: String,
}

/// A `stream-peer` server on `bind` in `server_mode` and a client in `client_mode`.
pub fn pair_on(bind: &str, server_mode: &str, client_mode: &str, server_extra: &[&str]) -> Pair {
    let peer = stream_peer();
    let mut args = vec!["server", bind, server_mode, "1"];
    args.extend_from_slice(server_extra);
    let server = Peer::spawn(&peer, &args);
    let addr = server.expect("LISTEN", Duration::from_secs(5));
    let client = Peer::spawn(&peer, &["client", &addr, client_mode]);
    let accepted = server.expect("ACCEPTED", Duration::from_secs(5));
    let local = field(&accepted, "local").to_string();
    Pair { server, client, local, accepted: accepted.to_string() }
}

/// A pair on loopback.
pub fn pair(server_mode: &str, client_mode: &str) -> Pair {
    pair_on("127.0.0.1:0", server_mode, client_mode, &[])
}

/// Waits until `local` is tracked with at least one sample.
pub fn wait_tracked(agent: &Agent, local: &str) -> Value {
    poll(Duration::from_secs(5), || agent.tracked(local).filter(|t| !t["bytes_acked"].is_null()))
        .unwrap_or_else(|| panic!("{local} never tracked:\n{}", agent.log()))
}

/// Polls `detector stalled` until `local` is listed; returns the entry and the time it took
/// from `since`.
pub fn expect_stalled(agent: &Agent, local: &str, since: Instant, within: Duration) -> (Value, Duration) {
    let e = poll(within, || agent.stalled(local))
        .unwrap_or_else(|| panic!("{local} not reported within {within:?}; tracked: {:?}\n{}", agent.tracked(local), agent.log()));
    (e, since.elapsed())
}

/// Asserts that none of `locals` is listed at any poll during `dur`.
pub fn expect_never(agent: &Agent, locals: &[&str], dur: Duration) {
    let until = Instant::now() + dur;
    while Instant::now() < until {
        let all = agent.query("stalled").expect("stalled");
        for e in all.as_array().unwrap() {
            if locals.iter().any(|l| e["local"] == *l) {
                panic!("healthy connection reported stalled: {e}\n{}", agent.log());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Prints how long after its onset a stall was reported, for the notes.
pub fn latency_line(case: &str, took: Duration, grace: Duration) {
    let over = took.saturating_sub(grace);
    eprintln!("LATENCY {case}: reported {:.2} s after onset = grace + {:.2} s", took.as_secs_f64(), over.as_secs_f64());
}
