//! The real agent binary: started per test, queried through its API, killed on drop.
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::*;

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

    /// Waits up to `within` (stretched by the slack) until the log holds every one of
    /// `needles`: an audit line is written just after its action, which a peer may report
    /// first.
    pub fn logged(&self, needles: &[&str], within: Duration) -> bool {
        poll(within, || needles.iter().all(|n| self.log().contains(n)).then_some(())).is_some()
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
