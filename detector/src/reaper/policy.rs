//! Which action, if any, to take on a stalled socket now. Pure: no I/O, the clock is passed in
//! (CLOCK_MONOTONIC milliseconds, which survive an agent restart, so the state below can be
//! saved and reloaded: see `state`).
//!
//! Each socket walks its selector's ladder once: stage k is due when the socket has been
//! stalled for the selector's grace plus the `after`s of stages 0..=k, and no sooner than its
//! `after` past the moment stage k-1 was done. A stage is done only when it ran, or when it was
//! decided against for a reason that will not change: the engine decides ([`Engine::decide`]),
//! the reaper carries the stage out and says how it went ([`Engine::settle`]). A stage skipped
//! because its owner or fd changed is tried again once attributed afresh; one that failed is
//! tried again after `RETRY_FAILED_MS`; the next (harsher) stage waits for it either way. Protected processes and ports, and sockets with no file, are never acted on; a
//! socket no process can be shown to hold is acted on only where the selector allows it, and
//! then only by stages that need no owner. Rate limits and the per-owner cooldown hold an
//! action back (it runs on a later pass if the socket is still stalled).
use std::collections::{HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::{
    Action, SkipWhy,
    config::{Policy, Selector, Stage},
};
use crate::report::StalledSocket;

/// What to do with one stalled socket on this pass.
#[derive(Debug, Clone)]
pub enum Decision {
    Act {
        selector: String,
        stage_index: usize,
        stage: Stage,
        dry_run: bool,
    },
    /// Not acted on, for `why`; reported once per socket and reason.
    Skip {
        selector: String,
        action: Action,
        why: SkipWhy,
    },
}

/// A process, named so that a reused pid is another process: (pid, start time).
pub type OwnerKey = (u32, u64);

const MINUTE_MS: u64 = 60_000;
/// A stage that failed (an endpoint that did not answer, a destroy the kernel refused) is tried
/// again this long after, while the socket stays stalled.
pub const RETRY_FAILED_MS: u64 = 5_000;

/// How carrying a stage out went, as far as the ladder is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It ran (or, in a dry run, would have): the stage is done.
    Ran,
    /// It was decided against for a reason that will not change (the owner catches no such
    /// signal, its fds cannot be read here): done, never tried again.
    DecidedAgainst,
    /// Not run because what it aims at moved (the owner or its fd changed): tried again once
    /// the holders are found afresh.
    Retry,
    /// Tried and failed: tried again after `RETRY_FAILED_MS`.
    Failed,
}

/// Everything the engine remembers, in a form that survives a restart of the agent.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct LadderState {
    /// Socket cookie → index of its next stage.
    pub next_stage: HashMap<u64, usize>,
    /// Sockets never to be acted on again (protected, no file).
    pub settled: HashSet<u64>,
    /// Times of the actions of the last minute, all owners, and per owner.
    pub global: VecDeque<u64>,
    pub per_owner: HashMap<String, VecDeque<u64>>,
    /// Owner → no new socket of it is acted on before this time.
    pub cooldown_until: HashMap<String, u64>,
    /// Socket cookie → when its last done stage was done (the next waits its `after` from then).
    #[serde(default)]
    pub done_at: HashMap<u64, u64>,
    /// Socket cookie → a failed stage is not tried again before this time.
    #[serde(default)]
    pub retry_at: HashMap<u64, u64>,
    /// Socket cookie → its acknowledged bytes when its ladder began: the stall it walks. Bytes
    /// acknowledged since are progress, so another value is a new stall with a new ladder.
    #[serde(default)]
    pub acked: HashMap<u64, u64>,
    /// Socket cookie → the stage being carried out and when it began, saved before it runs: an
    /// agent killed meanwhile counts it as done then when it restarts (a stage runs at most
    /// once across a restart, and the next waits its `after` from then; only within one run is
    /// a failed stage tried again).
    #[serde(default)]
    pub started: HashMap<u64, (usize, u64)>,
}

/// How long a ladder outlives its socket's absence from the report: a pass that could not
/// sample it, a walk that skipped it, an agent restarted whose first sample cannot prove the
/// stall yet. A socket gone for good (closed) never comes back; one that recovered comes back
/// with other acknowledged bytes. Past this, the entry goes (the state stays bounded).
pub const LADDER_KEEP_MS: u64 = 10 * MINUTE_MS;

fn owner_id(o: OwnerKey) -> String {
    format!("{}@{}", o.0, o.1)
}

pub struct Engine {
    policy: Policy,
    grace_ms: u64,
    agent_pid: u32,
    pub state: LadderState,
    /// Skip reasons already reported (not saved: a restart reports them once more).
    noted: HashSet<(u64, SkipWhy)>,
    /// Sockets whose stage is being carried out (an RPC waiting for its answer): not decided
    /// on again until it is settled. Not saved (`LadderState::started` is: a stage interrupted by
    /// a restart is not tried again).
    in_flight: HashMap<u64, Option<OwnerKey>>,
    /// When each socket with a ladder was last in the report (not saved: a restart starts the
    /// count of its loaded ladders afresh).
    seen: HashMap<u64, u64>,
    /// When each owner was last acted on, for [`order`](Self::order); kept `LADDER_KEEP_MS`
    /// (at most ten minutes of actions, so bounded by the rate limit). Not saved.
    served: HashMap<OwnerKey, u64>,
}

impl Engine {
    pub fn new(policy: Policy, grace: std::time::Duration, agent_pid: u32, mut state: LadderState) -> Self {
        // Stages a killed agent had started: they may have run.
        for (cookie, (k, at)) in std::mem::take(&mut state.started) {
            let next = state.next_stage.entry(cookie).or_insert(0);
            if *next <= k {
                *next = k + 1;
                state.done_at.insert(cookie, at);
            }
        }
        Self {
            policy,
            grace_ms: grace.as_millis() as u64,
            agent_pid,
            state,
            noted: HashSet::new(),
            in_flight: HashMap::new(),
            seen: HashMap::new(),
            served: HashMap::new(),
        }
    }

    fn selector(&self, s: &StalledSocket) -> Option<&Selector> {
        self.policy.selectors.iter().find(|sel| {
            let m = &sel.matches;
            let opt = |g: &Option<super::config::Glob>, v: Option<&str>| g.as_ref().is_none_or(|g| v.is_some_and(|v| g.matches(v)));
            opt(&m.comm, s.comm.as_deref())
                && opt(&m.exe, s.exe.as_deref())
                && opt(&m.cgroup, s.cgroup.as_deref())
                && opt(&m.pod_namespace, s.pod_namespace.as_deref())
                && opt(&m.pod_name, s.pod_name.as_deref())
                && m.local_port.is_none_or(|p| p == s.local.port())
                && m.remote_cidr.is_none_or(|c| c.contains(&s.remote.ip().to_canonical()))
                // A leak suspect is acted on only by a selector that names its reason.
                && m.reason.map_or(s.reason.acted_on_unnamed(), |r| r == s.reason)
        })
    }

    fn protected(&self, s: &StalledSocket) -> bool {
        let p = &self.policy.protect;
        // Every process holding the socket, not its owner alone.
        if s.pid.into_iter().chain(s.holders.iter().map(|h| h.pid)).any(|pid| pid == 1 || pid == self.agent_pid || p.pids.contains(&pid)) {
            return true;
        }
        // Kernel threads have no executable and no command line.
        if s.pid.is_some() && s.exe.is_none() && s.cmdline.as_deref().is_none_or(str::is_empty) {
            return true;
        }
        s.holders.iter().any(|h| p.comms.iter().any(|g| g.matches(&h.comm)) || h.exe.as_deref().is_some_and(|e| p.exes.iter().any(|g| g.matches(e))))
            || s.comm.as_deref().is_some_and(|c| p.comms.iter().any(|g| g.matches(c)))
            || s.exe.as_deref().is_some_and(|e| p.exes.iter().any(|g| g.matches(e)))
            || p.local_ports.contains(&s.local.port())
    }

    /// Notes the sockets stalled in this pass's report (`live`), and forgets the ladders of
    /// sockets absent from it for `LADDER_KEEP_MS`. A socket missing from one report keeps its
    /// ladder: its absence proves neither a close nor progress (a recovery comes back as a new
    /// stall: see `LadderState::acked`).
    pub fn retain(&mut self, live: &HashSet<u64>, now_ms: u64) {
        for &c in live {
            self.seen.insert(c, now_ms);
        }
        let st = &self.state;
        let known = st
            .next_stage
            .keys()
            .chain(&st.settled)
            .chain(st.done_at.keys())
            .chain(st.retry_at.keys())
            .chain(st.acked.keys())
            .chain(st.started.keys())
            .chain(self.in_flight.keys());
        let known: Vec<u64> = known.copied().collect();
        for c in known {
            // A ladder loaded from the state file counts its absence from the first look.
            let seen = *self.seen.entry(c).or_insert(now_ms);
            if now_ms.saturating_sub(seen) >= LADDER_KEEP_MS {
                self.forget(c);
            }
        }
        self.noted.retain(|(c, _)| live.contains(c));
    }

    /// Drops everything known of socket `cookie`'s ladder.
    fn forget(&mut self, cookie: u64) {
        let st = &mut self.state;
        st.next_stage.remove(&cookie);
        st.settled.remove(&cookie);
        st.done_at.remove(&cookie);
        st.retry_at.remove(&cookie);
        st.acked.remove(&cookie);
        st.started.remove(&cookie);
        self.in_flight.remove(&cookie);
        self.seen.remove(&cookie);
        self.noted.retain(|(c, _)| *c != cookie);
    }

    fn skip(&mut self, cookie: u64, selector: &str, action: Action, why: SkipWhy) -> Option<Decision> {
        self.noted.insert((cookie, why)).then(|| Decision::Skip { selector: selector.to_string(), action, why })
    }

    /// The order to decide on `stalled` in: the owner acted on least recently first (never
    /// first of all), otherwise as given (the report's fair order). Under the global rate limit
    /// the slots free one by one; taken longest stall first, a flood on one owner would take
    /// every slot, and another owner's younger stall would wait as long as the flood lasts.
    pub fn order(&self, stalled: &[StalledSocket]) -> Vec<usize> {
        let last = |s: &StalledSocket| s.pid.zip(s.start_time).and_then(|o| self.served.get(&o).copied()).unwrap_or(0);
        let mut order: Vec<(u64, usize)> = stalled.iter().enumerate().map(|(i, s)| (last(s), i)).collect();
        order.sort_by_key(|&(t, _)| t);
        order.into_iter().map(|(_, i)| i).collect()
    }

    /// The stage due for `s` now, if any: the decision is the caller's to carry out and to
    /// [`settle`](Self::settle); until then the socket is not decided on again.
    pub fn decide(&mut self, s: &StalledSocket, now_ms: u64) -> Option<Decision> {
        let cookie = s.socket_cookie;
        // Bytes acknowledged since its ladder began: it recovered, and this is a new stall.
        if self.state.acked.get(&cookie).is_some_and(|&a| a != s.bytes_acked) && !self.in_flight.contains_key(&cookie) {
            self.forget(cookie);
        }
        self.state.acked.insert(cookie, s.bytes_acked);
        if self.state.settled.contains(&cookie) || self.in_flight.contains_key(&cookie) {
            return None;
        }
        let sel = self.selector(s)?.clone();
        let k = *self.state.next_stage.get(&cookie).unwrap_or(&0);
        let stage = sel.actions.get(k)?.clone();
        let action = stage.action();
        let grace = sel.grace.map_or(self.grace_ms, |g| g.0.as_millis() as u64);
        let due = |k: usize| grace + sel.actions[..=k].iter().map(|s| s.after().as_millis() as u64).sum::<u64>();
        let after_last = self.state.done_at.get(&cookie).map_or(0, |&t| t + stage.after().as_millis() as u64);
        if s.stalled_for_ms < due(k) || now_ms < after_last || self.state.retry_at.get(&cookie).is_some_and(|&t| now_ms < t) {
            return None;
        }
        if self.protected(s) {
            self.state.settled.insert(cookie);
            return self.skip(cookie, &sel.name, action, SkipWhy::Protected);
        }
        if action != Action::Report
            && let Some(why) = no_file(s)
        {
            self.state.settled.insert(cookie);
            return self.skip(cookie, &sel.name, action, why);
        }
        let owner = s.pid.zip(s.start_time).filter(|_| s.fd.is_some());
        if owner.is_none() && action != Action::Report {
            if !sel.allow_unknown_owner {
                // Waits: attribution is retried every pass; the owner may yet show up.
                return self.skip(cookie, &sel.name, action, SkipWhy::OwnerUnknown);
            }
            if s.kernel_socket.is_none() {
                // Found by a dump and held by nobody: it may be the kernel's own. Waits too.
                return self.skip(cookie, &sel.name, action, SkipWhy::FileUnknown);
            }
            if action.needs_owner() {
                // This stage cannot run without an owner; it is decided against once its whole
                // window (until the next stage is due) has passed without one.
                if k + 1 < sel.actions.len() && s.stalled_for_ms >= due(k + 1) {
                    self.state.next_stage.insert(cookie, k + 1);
                    self.state.done_at.insert(cookie, now_ms.saturating_sub(sel.actions[k + 1].after().as_millis() as u64));
                }
                return self.skip(cookie, &sel.name, action, SkipWhy::OwnerUnknown);
            }
        }
        // A report touches nothing: no limit holds it back, none counts it.
        if action != Action::Report {
            if let Some(why) = self.limited(owner, k, now_ms) {
                return self.skip(cookie, &sel.name, action, why);
            }
            self.count(owner, now_ms);
        }
        self.in_flight.insert(cookie, owner);
        self.state.started.insert(cookie, (k, now_ms));
        Some(Decision::Act { selector: sel.name.clone(), stage_index: k, stage, dry_run: self.policy.dry_run })
    }

    /// How stage `k` of socket `cookie`, decided at some `decide`, went: done (ran, or decided
    /// against for good), or to be tried again.
    pub fn settle(&mut self, cookie: u64, k: usize, outcome: Outcome, now_ms: u64) {
        let owner = self.in_flight.remove(&cookie).flatten();
        self.state.started.remove(&cookie);
        if outcome == Outcome::Ran
            && let Some(o) = owner
        {
            // The owner's other sockets wait: what it does about this one may fix them too.
            let cooldown = self.policy.limits.cooldown.0.as_millis() as u64;
            self.state.cooldown_until.insert(owner_id(o), now_ms + cooldown);
        }
        match outcome {
            Outcome::Ran | Outcome::DecidedAgainst => {
                self.state.next_stage.insert(cookie, k + 1);
                self.state.done_at.insert(cookie, now_ms);
                self.state.retry_at.remove(&cookie);
            }
            Outcome::Retry => {}
            Outcome::Failed => {
                self.state.retry_at.insert(cookie, now_ms + RETRY_FAILED_MS);
            }
        }
        // A skip of another reason may be reported again for the next try.
        self.noted.retain(|(c, _)| *c != cookie);
    }

    /// Cooldown and rate limits.
    fn limited(&mut self, owner: Option<OwnerKey>, k: usize, now_ms: u64) -> Option<SkipWhy> {
        let st = &mut self.state;
        if let Some(o) = owner
            && k == 0
            && st.cooldown_until.get(&owner_id(o)).is_some_and(|&u| now_ms < u)
        {
            return Some(SkipWhy::Cooldown);
        }
        while st.global.front().is_some_and(|&t| now_ms.saturating_sub(t) >= MINUTE_MS) {
            st.global.pop_front();
        }
        if st.global.len() >= self.policy.limits.per_minute as usize {
            return Some(SkipWhy::RateLimited);
        }
        if let Some(o) = owner {
            let q = st.per_owner.entry(owner_id(o)).or_default();
            while q.front().is_some_and(|&t| now_ms.saturating_sub(t) >= MINUTE_MS) {
                q.pop_front();
            }
            if q.len() >= self.policy.limits.per_owner_per_minute as usize {
                return Some(SkipWhy::OwnerRateLimited);
            }
        }
        None
    }

    /// Counts an attempt toward the rate limits.
    fn count(&mut self, owner: Option<OwnerKey>, now_ms: u64) {
        if let Some(o) = owner {
            self.served.insert(o, now_ms);
        }
        self.served.retain(|_, &mut t| now_ms.saturating_sub(t) < LADDER_KEEP_MS);
        let st = &mut self.state;
        if let Some(o) = owner {
            st.per_owner.entry(owner_id(o)).or_default().push_back(now_ms);
        }
        st.global.push_back(now_ms);
        // Owners whose limits lapsed a minute ago are forgotten.
        st.per_owner.retain(|_, q| q.back().is_some_and(|&t| now_ms.saturating_sub(t) < MINUTE_MS));
        st.cooldown_until.retain(|_, &mut u| u > now_ms);
    }
}

/// A socket nothing may ever be done to: no file (closed by its owner and finishing in the
/// kernel), or the kernel's own (it had no file when tracking began: NFS, iSCSI, NVMe/TCP).
fn no_file(s: &StalledSocket) -> Option<SkipWhy> {
    if s.inode == 0 {
        Some(SkipWhy::NoFile)
    } else if s.kernel_socket == Some(true) {
        Some(SkipWhy::KernelSocket)
    } else {
        None
    }
}

#[cfg(test)]
mod tests;
