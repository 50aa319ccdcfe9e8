//! Support for the integration tests: the real agent binary, real peer processes, and cleanup
//! that runs even when a test panics (every handle kills and reaps its process on drop).
use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc::{Receiver, channel},
    },
    time::{Duration, Instant},
};

use serde_json::Value;

/// `true` when privileged tests can run. Under `cargo xtask test` (DETECTOR_REQUIRE_PRIVILEGED=1)
/// a missing privilege fails the test instead of skipping it, so CI never passes by skipping.
pub fn privileged(test: &str) -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0")))
        .unwrap_or(false);
    if root {
        return true;
    }
    if std::env::var_os("DETECTOR_REQUIRE_PRIVILEGED").is_some() {
        panic!("{test}: needs root (eBPF, sock_diag), and DETECTOR_REQUIRE_PRIVILEGED is set");
    }
    eprintln!("skipped {test}: needs root to load eBPF programs");
    false
}

/// Names a piece of the kernel side this kernel refused, which a test would otherwise have
/// proven: on stderr, and under `cargo xtask test` in the file `DETECTOR_REFUSALS` names, which
/// the run prints at its end. A refused piece is never skipped silently.
pub fn refused(what: &str) {
    use std::io::Write as _;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let line = format!("{}: {}\n", release.trim(), what.replace('\n', " "));
    eprint!("REFUSED on {line}");
    if let Some(path) = std::env::var_os("DETECTOR_REFUSALS") {
        // One write of one line with O_APPEND: lines of tests running side by side never mix.
        let f = std::fs::OpenOptions::new().create(true).append(true).open(&path);
        if let Err(e) = f.and_then(|mut f| f.write_all(line.as_bytes())) {
            panic!("recording a refusal in {}: {e}", std::path::Path::new(&path).display());
        }
    }
}

/// Whether `detector check` loaded configuration `kind` (`storage-walk`, ...) on this kernel.
pub fn kernel_runs(kind: &str) -> bool {
    let out = detector_cmd().args(["check", "--output", "json"]).output().expect("detector check");
    let checks: Value = serde_json::from_slice(&out.stdout).expect("check prints JSON");
    checks.as_array().expect("check prints an array").iter().any(|c| c["configuration"] == kind && c["ok"] == true)
}

/// A process this test did not spawn itself (a peer's forked child), killed when dropped.
pub struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: a signal to a pid the test was handed; at worst it is gone already.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

/// How many times longer than on a real machine a test may wait for something to happen:
/// `DETECTOR_TEST_SLACK` (default 1). `cargo xtask vmtest` sets it for kernels booted under
/// software emulation, which run everything several times slower. It stretches only the time
/// a test waits (for a peer, the agent's API, a report), never what the agent is given (grace,
/// interval) nor how long a healthy connection must stay unreported.
pub fn slack() -> u32 {
    match std::env::var("DETECTOR_TEST_SLACK") {
        Err(_) => 1,
        Ok(v) => v.parse().ok().filter(|&n| n >= 1).unwrap_or_else(|| panic!("DETECTOR_TEST_SLACK={v:?}: expected a whole number, 1 or more")),
    }
}

/// `d` stretched by [`slack`]: how long to wait for what should happen within `d`.
pub fn patient(d: Duration) -> Duration {
    d * slack()
}

/// A `Command` for the agent binary (`detector ...`).
pub fn detector_cmd() -> Command {
    Command::new(detector_bin())
}

pub fn detector_bin() -> PathBuf {
    let p =
        std::env::var_os("DETECTOR_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/debug/detector")));
    assert!(p.exists(), "agent binary {} not found: run the suite with `cargo xtask test`, which builds it", p.display());
    p
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A private scratch directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("detector-test-{tag}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("creating {}: {e}", p.display()));
        Self(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How to start an agent: `Agent::start(grace, args)` for the usual, this for the unusual (another
/// binary, an environment variable, a stdout nobody reads).
pub struct AgentBuilder {
    bin: PathBuf,
    grace: String,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    stdout_unread: bool,
    wait_for_api: bool,
    log_level: &'static str,
}

impl AgentBuilder {
    pub fn new(grace: &str) -> Self {
        Self { bin: detector_bin(), grace: grace.into(), extra: vec![], env: vec![], stdout_unread: false, wait_for_api: true, log_level: "info" }
    }

    /// `RUST_LOG` for the agent (`info` by default; the benchmarks use `warn`).
    pub fn log_level(mut self, level: &'static str) -> Self {
        self.log_level = level;
        self
    }

    pub fn args(mut self, a: &[&str]) -> Self {
        self.extra.extend(a.iter().map(|s| s.to_string()));
        self
    }

    pub fn bin(mut self, p: PathBuf) -> Self {
        self.bin = p;
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// stdout is a pipe nobody reads: it fills after 64 KiB.
    pub fn stdout_unread(mut self) -> Self {
        self.stdout_unread = true;
        self
    }

    /// Returns as soon as it is spawned, without waiting for its API.
    pub fn no_wait(mut self) -> Self {
        self.wait_for_api = false;
        self
    }

    pub fn start(self) -> Agent {
        let dir = Scratch::new("agent");
        let api = dir.0.join("api.sock");
        let log = dir.0.join("agent.log");
        let logf = std::fs::File::create(&log).expect("agent log file");
        let has = |flag: &str| self.extra.iter().any(|a| a == flag);
        let mut cmd = Command::new(&self.bin);
        cmd.args(["run", "--grace", &self.grace]);
        if !has("--interval") {
            cmd.args(["--interval", "250ms"]);
        }
        // `cargo xtask test` runs the matrix again with each configuration this kernel runs
        // (a kind and a send hook); a test that forces either keeps what it forces.
        if !has("--send-hook") && !has("--configuration") {
            if let Some(hook) = std::env::var_os("DETECTOR_TEST_SEND_HOOK") {
                cmd.arg("--send-hook").arg(hook);
            }
            if let Some(kind) = std::env::var_os("DETECTOR_TEST_CONFIGURATION") {
                cmd.arg("--configuration").arg(kind);
            }
        }
        if !has("--metrics-addr") {
            cmd.args(["--metrics-addr", "off"]);
        }
        // Under emulation every pass costs several times its CPU on the host, and the
        // reconcile's budget (0.1 % of a core) would space it out far past the tests' windows:
        // the VM tests give it 2 %, as the host tests' ~2 ms reconciles get at 0.1 %.
        if slack() > 1 && !has("--reconcile-cpu") {
            cmd.args(["--reconcile-cpu", "2%"]);
        }
        // Each agent its own reaper state (tests run side by side), unless a test shares one.
        if !has("--state-file") {
            cmd.arg("--state-file").arg(dir.0.join("reaper-state.json"));
        }
        if !has("--api-socket") {
            cmd.arg("--api-socket").arg(&api);
        }
        cmd.args(&self.extra).env("RUST_LOG", self.log_level).envs(self.env.iter().map(|(k, v)| (k, v)));
        if self.stdout_unread {
            cmd.stdout(Stdio::piped());
        } else {
            cmd.stdout(logf.try_clone().expect("log fd"));
        }
        let child = cmd.stderr(logf).spawn().unwrap_or_else(|e| panic!("spawning the agent {}: {e}", self.bin.display()));
        let mut a = Agent { child, api, log, bin: self.bin, _dir: dir };
        if self.wait_for_api {
            a.wait_for_api();
        }
        a
    }
}

/// A running `detector run`, killed on drop.
pub struct Agent {
    child: Child,
    pub api: PathBuf,
    log: PathBuf,
    /// The agent's binary, which is also the CLI that queries it.
    bin: PathBuf,
    _dir: Scratch,
}

impl Agent {
    /// Starts the agent with `--grace grace` and a fast sampling interval, and waits until its
    /// API answers.
    pub fn start(grace: &str, extra: &[&str]) -> Agent {
        AgentBuilder::new(grace).args(extra).start()
    }

    /// Whether the agent process has exited, and how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn wait_for_api(&mut self) {
        let deadline = Instant::now() + patient(Duration::from_secs(30));
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("agent exited with {status} during start-up:\n{}", self.log());
            }
            if self.query("status").is_ok() {
                // One full sweep so the table is live before the test starts its peers.
                std::thread::sleep(Duration::from_millis(300));
                return;
            }
            if Instant::now() > deadline {
                panic!("agent API not up after 30 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the agent with SIGKILL (no clean shutdown) and reaps it.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Runs `detector <cmd> --output json` against this agent.
    pub fn query(&self, cmd: &str) -> Result<Value, String> {
        let out = Command::new(&self.bin).args([cmd, "--output", "json", "--api-socket"]).arg(&self.api).output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// `detector explain <id> --output json` against this agent.
    pub fn explain(&self, id: &str) -> Result<Value, String> {
        let out = Command::new(&self.bin).args(["explain", id, "--output", "json", "--api-socket"]).arg(&self.api).output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// The stalled entry whose local address is `local`, if any.
    pub fn stalled(&self, local: &str) -> Option<Value> {
        let v = self.query("stalled").unwrap_or_else(|e| panic!("detector stalled failed: {e}\n{}", self.log()));
        v.as_array().expect("stalled answers an array").iter().find(|s| s["local"] == local).cloned()
    }

    /// The tracked entry whose local address is `local`, if any.
    pub fn tracked(&self, local: &str) -> Option<Value> {
        let v = self.query("sockets").unwrap_or_else(|e| panic!("detector sockets failed: {e}\n{}", self.log()));
        v.as_array().expect("sockets answers an array").iter().find(|s| s["local"] == local).cloned()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on the host (`stream-peer
/// ... watch` prints it, the latency bench compares with it).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A `stream-peer` process; its stdout lines arrive on a channel. Killed on drop.
pub struct Peer {
    child: Child,
    lines: Receiver<String>,
    /// Every line read so far, for assertions about what did (not) happen.
    history: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Peer {
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

/// Polls `f` every 100 ms until it returns `Some` or `timeout` (stretched by [`slack`]) passes.
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + patient(timeout);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs a command, panicking with its output when it fails.
pub fn sh(cmd: &str, args: &[&str]) {
    run(cmd, args).unwrap_or_else(|e| panic!("{e}"));
}

/// Runs a command; its stdout, or an error with its stderr.
pub fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd).args(args).output().map_err(|e| format!("running {cmd} {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Network namespaces with their loopback up, made by a test or benchmark and deleted on drop.
pub struct Namespaces(pub Vec<String>);

impl Namespaces {
    pub fn create(tag: &str, n: usize) -> Result<Namespaces, String> {
        let mut ns = Namespaces(Vec::with_capacity(n));
        for i in 0..n {
            let name = format!("d{tag}-{}-{i}", std::process::id());
            run("ip", &["netns", "add", &name])?;
            ns.0.push(name.clone());
            run("ip", &["netns", "exec", &name, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(ns)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// Two network namespaces joined by a veth pair: `a` (10.213.0.1) and `b` (10.213.0.2).
/// Created by the test and deleted on drop, even when the test panics.
pub struct NetnsPair {
    pub a: String,
    pub b: String,
}

pub const NS_A_ADDR: &str = "10.213.0.1";
pub const NS_B_ADDR: &str = "10.213.0.2";
pub const NS_A_ADDR6: &str = "fd00:213::1";
pub const NS_B_ADDR6: &str = "fd00:213::2";

impl NetnsPair {
    pub fn new() -> NetnsPair {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let pair = NetnsPair { a: format!("dtest-{}-{n}-a", std::process::id()), b: format!("dtest-{}-{n}-b", std::process::id()) };
        sh("ip", &["netns", "add", &pair.a]);
        sh("ip", &["netns", "add", &pair.b]);
        pair.exec_ok(&pair.a, &["ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", &pair.b]);
        for (ns, dev, addr, addr6) in [(&pair.a, "veth0", NS_A_ADDR, NS_A_ADDR6), (&pair.b, "veth1", NS_B_ADDR, NS_B_ADDR6)] {
            pair.exec_ok(ns, &["ip", "addr", "add", &format!("{addr}/24"), "dev", dev]);
            // nodad: usable at once, without duplicate address detection's delay.
            pair.exec_ok(ns, &["ip", "-6", "addr", "add", &format!("{addr6}/64"), "dev", dev, "nodad"]);
            pair.exec_ok(ns, &["ip", "link", "set", dev, "up"]);
            pair.exec_ok(ns, &["ip", "link", "set", "lo", "up"]);
        }
        pair
    }

    pub fn exec_ok(&self, ns: &str, args: &[&str]) {
        let mut full = vec!["netns", "exec", ns];
        full.extend_from_slice(args);
        sh("ip", &full);
    }

    /// A peer process inside namespace `ns` (`ip netns exec` execs it: same pid).
    pub fn peer(&self, ns: &str, bin: &str, args: &[&str]) -> Peer {
        let mut full = vec!["netns", "exec", ns, bin];
        full.extend_from_slice(args);
        Peer::spawn("ip", &full)
    }

    /// Cuts the link from `b`'s side: `a`'s packets to `b` go nowhere, nothing comes back.
    pub fn cut_b(&self) {
        self.exec_ok(&self.b, &["ip", "link", "set", "veth1", "down"]);
    }

    /// Deletes the link as a CNI does when `b`'s pod goes away: both ends vanish, and with them
    /// `a`'s route to `b` (nothing `a` sends, retransmits included, leaves the host).
    pub fn delete_link(&self) {
        self.exec_ok(&self.b, &["ip", "link", "del", "veth1"]);
    }
}

impl Default for NetnsPair {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// The cgroup v2 mount point, if the kernel has one mounted.
pub fn cgroup2_mount() -> Option<PathBuf> {
    std::fs::read_to_string("/proc/mounts").ok()?.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, mnt, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(mnt))
    })
}

/// A cgroup v2 directory tree made by the test under a private top directory; processes in it
/// are moved back to the root and the directories removed on drop.
pub struct TestCgroup {
    mount: PathBuf,
    top: PathBuf,
    /// The leaf, relative to the mount (as /proc/<pid>/cgroup shows it).
    pub path: String,
}

impl TestCgroup {
    /// Creates `<mount>/detector-test-<pid>-<n>/<rel>`.
    pub fn new(rel: &str) -> Option<TestCgroup> {
        let mount = cgroup2_mount()?;
        let top_name = format!("detector-test-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let path = format!("/{top_name}/{rel}");
        std::fs::create_dir_all(mount.join(path.trim_start_matches('/'))).unwrap_or_else(|e| panic!("creating cgroup {path}: {e}"));
        Some(TestCgroup { top: mount.join(&top_name), mount, path })
    }

    pub fn dir(&self) -> PathBuf {
        self.mount.join(self.path.trim_start_matches('/'))
    }

    pub fn add(&self, pid: u32) {
        std::fs::write(self.dir().join("cgroup.procs"), pid.to_string()).unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", self.path));
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Move anything left back to the root, then remove the tree bottom-up.
        if let Ok(procs) = std::fs::read_to_string(self.dir().join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = std::fs::write(self.mount.join("cgroup.procs"), pid);
            }
        }
        let mut d = self.dir();
        while d.starts_with(&self.top) {
            for _ in 0..50 {
                if std::fs::remove_dir(&d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if !d.pop() {
                break;
            }
        }
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET path` over plain HTTP/1.1; returns (status code, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    http_get_with(addr, path, "")
}

/// `http_get` with extra header lines (each ending in `\r\n`).
pub fn http_get_with(addr: &str, path: &str, headers: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting {addr}: {e}"));
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

/// The value of the first sample line of `metric` (with its labels, e.g.
/// `detector_stalled_sockets{reason="peer_not_reading"}`) in an OpenMetrics text.
pub fn metric(text: &str, metric: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(metric).and_then(|r| r.strip_prefix(' '))).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok())
}

// ---------------------------------------------------------------------------------------------
// Scenario helpers: a server and a client `stream-peer`, and what the agent says about them.

/// The `stream-peer` binary (built with the tests).
pub fn stream_peer() -> String {
    let p = std::env::var("CARGO_BIN_EXE_stream-peer")
        .ok()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/debug/stream-peer")));
    p.display().to_string()
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
