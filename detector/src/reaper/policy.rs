//! Which action, if any, to take on a stalled socket now. Pure: no I/O, the clock is passed in.
//!
//! Each socket walks its selector's ladder once: stage k is due when the socket has been
//! stalled for the selector's grace plus the `after`s of stages 0..=k, and runs at most once.
//! Protected processes and ports are never acted on; rate limits and the per-owner cooldown
//! hold an action back (it runs on a later sweep if the socket is still stalled).
use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::{Duration, Instant},
};

use super::config::{Policy, Selector, Stage};
use crate::api::StalledSocket;

/// What to do with one stalled socket on this sweep.
#[derive(Debug, Clone)]
pub enum Decision {
    Act {
        selector: String,
        stage_index: usize,
        stage: Stage,
        dry_run: bool,
    },
    /// Not acted on, for `why`; reported once per socket and reason.
    Skip { selector: String, why: &'static str },
}

type OwnerKey = (u32, u64);

pub struct Engine {
    policy: Policy,
    grace: Duration,
    agent_pid: u32,
    /// Socket cookie → index of its next stage.
    next_stage: HashMap<u64, usize>,
    /// Sockets never to be acted on (protected), and skip reasons already reported.
    settled: HashSet<u64>,
    noted: HashSet<(u64, &'static str)>,
    global: VecDeque<Instant>,
    per_owner: HashMap<OwnerKey, VecDeque<Instant>>,
    cooldown_until: HashMap<OwnerKey, Instant>,
}

const MINUTE: Duration = Duration::from_secs(60);

impl Engine {
    pub fn new(policy: Policy, grace: Duration, agent_pid: u32) -> Self {
        Self {
            policy,
            grace,
            agent_pid,
            next_stage: HashMap::new(),
            settled: HashSet::new(),
            noted: HashSet::new(),
            global: VecDeque::new(),
            per_owner: HashMap::new(),
            cooldown_until: HashMap::new(),
        }
    }

    pub fn dry_run(&self) -> bool {
        self.policy.dry_run
    }

    fn selector(&self, s: &StalledSocket) -> Option<&Selector> {
        self.policy.selectors.iter().find(|sel| {
            let m = &sel.matches;
            let opt = |g: &Option<super::config::Glob>, v: Option<&str>| {
                g.as_ref().is_none_or(|g| v.is_some_and(|v| g.matches(v)))
            };
            let local_port = s.local.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
            let remote_ip = s
                .remote
                .parse::<std::net::SocketAddr>()
                .ok()
                .map(|a| a.ip());
            opt(&m.comm, s.comm.as_deref())
                && opt(&m.exe, s.exe.as_deref())
                && opt(&m.cgroup, s.cgroup.as_deref())
                && opt(&m.pod_namespace, s.pod_namespace.as_deref())
                && opt(&m.pod_name, s.pod_name.as_deref())
                && m.local_port.is_none_or(|p| Some(p) == local_port)
                && m.remote_cidr.is_none_or(|c| remote_ip.is_some_and(|ip| c.contains(&ip)))
                && m.reason.as_ref().is_none_or(|r| r.0 == s.reason)
        })
    }

    fn protected(&self, s: &StalledSocket) -> bool {
        let p = &self.policy.protect;
        if let Some(pid) = s.pid {
            if pid == 1 || pid == self.agent_pid || p.pids.contains(&pid) {
                return true;
            }
            // Kernel threads have no executable and no command line.
            if s.exe.is_none() && s.cmdline.as_deref().is_none_or(str::is_empty) {
                return true;
            }
        }
        let local_port = s.local.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
        s.comm.as_deref().is_some_and(|c| p.comms.iter().any(|g| g.matches(c)))
            || s.exe.as_deref().is_some_and(|e| p.exes.iter().any(|g| g.matches(e)))
            || local_port.is_some_and(|lp| p.local_ports.contains(&lp))
    }

    /// Forgets sockets that are no longer stalled (closed or recovered): a new stall starts a
    /// new ladder.
    pub fn retain(&mut self, live: &HashSet<u64>) {
        self.next_stage.retain(|c, _| live.contains(c));
        self.settled.retain(|c| live.contains(c));
        self.noted.retain(|(c, _)| live.contains(c));
    }

    fn skip(&mut self, cookie: u64, selector: &str, why: &'static str) -> Option<Decision> {
        self.noted.insert((cookie, why)).then(|| Decision::Skip {
            selector: selector.to_string(),
            why,
        })
    }

    pub fn decide(&mut self, s: &StalledSocket, now: Instant) -> Option<Decision> {
        let cookie = s.socket_cookie;
        if self.settled.contains(&cookie) {
            return None;
        }
        let sel = self.selector(s)?.clone();
        let k = *self.next_stage.get(&cookie).unwrap_or(&0);
        let stage = sel.actions.get(k)?.clone();
        let grace = sel.grace.map_or(self.grace, |g| g.0);
        let due = grace + sel.actions[..=k].iter().map(Stage::after).sum::<Duration>();
        if Duration::from_millis(s.stalled_for_ms) < due {
            return None;
        }
        if self.protected(s) {
            self.settled.insert(cookie);
            return self.skip(cookie, &sel.name, "protected");
        }
        let needs_owner = matches!(stage, Stage::Signal { .. } | Stage::Rpc { .. } | Stage::Shutdown { .. });
        let owner = s.pid.zip(s.start_time);
        if needs_owner && (owner.is_none() || s.fd.is_none()) {
            // Nobody to ask: move on to the next stage (e.g. destroy).
            self.next_stage.insert(cookie, k + 1);
            return self.skip(cookie, &sel.name, "owner_unknown");
        }
        if let Some(o) = owner {
            if k == 0 && self.cooldown_until.get(&o).is_some_and(|&u| now < u) {
                return self.skip(cookie, &sel.name, "cooldown");
            }
        }
        while self.global.front().is_some_and(|&t| now.duration_since(t) >= MINUTE) {
            self.global.pop_front();
        }
        if self.global.len() >= self.policy.limits.per_minute as usize {
            return self.skip(cookie, &sel.name, "rate_limited");
        }
        if let Some(o) = owner {
            let q = self.per_owner.entry(o).or_default();
            while q.front().is_some_and(|&t| now.duration_since(t) >= MINUTE) {
                q.pop_front();
            }
            if q.len() >= self.policy.limits.per_owner_per_minute as usize {
                return self.skip(cookie, &sel.name, "owner_rate_limited");
            }
            q.push_back(now);
            self.cooldown_until.insert(o, now + self.policy.limits.cooldown.0);
        }
        self.global.push_back(now);
        self.next_stage.insert(cookie, k + 1);
        Some(Decision::Act {
            selector: sel.name.clone(),
            stage_index: k,
            stage,
            dry_run: self.policy.dry_run,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stalled(cookie: u64, pid: u32, stalled_for_ms: u64) -> StalledSocket {
        StalledSocket {
            pid: Some(pid),
            comm: Some("ws-server".into()),
            fd: Some(7),
            owner_known: true,
            holders: vec![],
            exe: Some("/usr/bin/ws-server".into()),
            cmdline: Some("ws-server --port 8080".into()),
            start_time: Some(1000 + pid as u64),
            sender_pid: pid,
            sender_tid: pid,
            sender_comm: "ws-server".into(),
            cgroup_id: 1,
            cgroup: Some("/kubepods.slice/x".into()),
            container_id: None,
            pod_uid: None,
            pod_namespace: Some("shop".into()),
            pod_name: Some("ws-1".into()),
            local: "10.0.0.5:8080".into(),
            remote: "192.168.7.9:50000".into(),
            state: "ESTABLISHED".into(),
            queued_bytes: 1000,
            notsent_bytes: 0,
            stalled_for_ms,
            reason: "peer_unreachable".into(),
            retransmits: 3,
            zero_window_probes: 0,
            peer_window: Some(1000),
            socket_cookie: cookie,
            inode: 1,
            netns: 1,
        }
    }

    fn engine(extra: &str) -> Engine {
        let text = format!(
            "{extra}\n[[selector]]\nname = \"ws\"\nmatch = {{ comm = \"ws-*\", local_port = 8080, remote_cidr = \"192.168.0.0/16\" }}\nactions = [{{ action = \"rpc\", url = \"http://127.0.0.1:1/\" }}, {{ action = \"destroy\", after = \"10s\" }}]\n"
        );
        Engine::new(Policy::parse(&text, "t.toml", Duration::from_secs(30)).unwrap(), Duration::from_secs(30), 999)
    }

    fn act_name(d: Option<Decision>) -> String {
        match d {
            Some(Decision::Act { stage, .. }) => stage.name().into(),
            Some(Decision::Skip { why, .. }) => format!("skip:{why}"),
            None => "none".into(),
        }
    }

    #[test]
    fn ladder_runs_each_stage_once_at_its_time() {
        let mut e = engine("");
        let t = Instant::now();
        assert_eq!(act_name(e.decide(&stalled(1, 10, 29_000), t)), "none");
        assert_eq!(act_name(e.decide(&stalled(1, 10, 30_000), t)), "rpc");
        assert_eq!(act_name(e.decide(&stalled(1, 10, 31_000), t)), "none", "once only");
        assert_eq!(act_name(e.decide(&stalled(1, 10, 39_999), t)), "none");
        assert_eq!(act_name(e.decide(&stalled(1, 10, 40_000), t + MINUTE)), "destroy");
        assert_eq!(act_name(e.decide(&stalled(1, 10, 90_000), t + MINUTE)), "none", "ladder done");
    }

    #[test]
    fn non_matching_sockets_are_left_alone() {
        let mut e = engine("");
        let mut s = stalled(1, 10, 60_000);
        s.remote = "10.1.1.1:5".into();
        assert_eq!(act_name(e.decide(&s, Instant::now())), "none");
        let mut s = stalled(2, 10, 60_000);
        s.comm = Some("nginx".into());
        assert_eq!(act_name(e.decide(&s, Instant::now())), "none");
    }

    #[test]
    fn protected_processes_and_ports_are_never_touched() {
        let t = Instant::now();
        for (i, mut s) in [stalled(1, 1, 60_000), stalled(2, 999, 60_000), stalled(3, 10, 60_000)].into_iter().enumerate() {
            if i == 2 {
                s.exe = None;
                s.cmdline = Some(String::new());
            }
            let mut e = engine("");
            assert_eq!(act_name(e.decide(&s, t)), "skip:protected", "{s:?}");
            assert_eq!(act_name(e.decide(&s, t)), "none", "reported once, then silent");
            assert_eq!(act_name(e.decide(&stalled(s.socket_cookie, s.pid.unwrap(), 600_000), t)), "none");
        }
        let mut e = engine("[protect]\ncomms = [\"ws-*\"]\n");
        assert_eq!(act_name(e.decide(&stalled(1, 10, 60_000), t)), "skip:protected");
        let mut e = engine("[protect]\nlocal_ports = [8080]\n");
        assert_eq!(act_name(e.decide(&stalled(1, 10, 60_000), t)), "skip:protected");
    }

    #[test]
    fn rate_limits_and_cooldown_hold_actions_back() {
        let t = Instant::now();
        let mut e = engine("[limits]\nper_minute = 2\ncooldown = \"0s\"\nper_owner_per_minute = 100\n");
        assert_eq!(act_name(e.decide(&stalled(1, 10, 30_000), t)), "rpc");
        assert_eq!(act_name(e.decide(&stalled(2, 11, 30_000), t)), "rpc");
        assert_eq!(act_name(e.decide(&stalled(3, 12, 30_000), t)), "skip:rate_limited");
        assert_eq!(act_name(e.decide(&stalled(3, 12, 30_000), t)), "none", "skip reported once");
        assert_eq!(act_name(e.decide(&stalled(3, 12, 90_000), t + MINUTE)), "rpc", "acts once the window passes");

        let mut e = engine("[limits]\ncooldown = \"20s\"\n");
        assert_eq!(act_name(e.decide(&stalled(1, 10, 30_000), t)), "rpc");
        assert_eq!(act_name(e.decide(&stalled(2, 10, 30_000), t)), "skip:cooldown");
        assert_eq!(act_name(e.decide(&stalled(2, 10, 30_000), t + Duration::from_secs(21))), "rpc");

        let mut e = engine("[limits]\nper_owner_per_minute = 1\ncooldown = \"0s\"\n");
        assert_eq!(act_name(e.decide(&stalled(1, 10, 30_000), t)), "rpc");
        assert_eq!(act_name(e.decide(&stalled(2, 10, 30_000), t)), "skip:owner_rate_limited");
        assert_eq!(act_name(e.decide(&stalled(3, 11, 30_000), t)), "rpc", "another owner is not limited");
    }

    #[test]
    fn unknown_owner_skips_to_a_stage_that_needs_none() {
        let t = Instant::now();
        let mut e = engine("");
        let mut s = stalled(1, 10, 40_000);
        s.pid = None;
        s.fd = None;
        s.start_time = None;
        assert_eq!(act_name(e.decide(&s, t)), "skip:owner_unknown");
        assert_eq!(act_name(e.decide(&s, t)), "destroy");
    }

    #[test]
    fn dry_run_is_carried_and_recovery_restarts_the_ladder() {
        let t = Instant::now();
        let mut e = engine("dry_run = true");
        match e.decide(&stalled(1, 10, 30_000), t) {
            Some(Decision::Act { dry_run, .. }) => assert!(dry_run),
            other => panic!("{other:?}"),
        }
        e.retain(&HashSet::new());
        assert_eq!(act_name(e.decide(&stalled(1, 10, 30_000), t + MINUTE)), "rpc");
    }
}
