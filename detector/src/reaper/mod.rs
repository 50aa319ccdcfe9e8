//! Acting on stalled sockets by policy: report (default), signal, RPC, kernel-side destroy or
//! shutdown, along an escalation ladder per selector. `policy` decides (pure), `actions`
//! carries out (re-checking, right before acting, that the owner and its fd are still what was
//! seen), `state` keeps the ladders across restarts. Every decision writes one JSON audit line
//! on stdout and counts in `detector_reaps_total{action,result,why}`.
pub mod actions;
pub mod audit;
pub mod config;
pub mod policy;
pub mod state;
pub mod targets;

use std::{collections::HashSet, path::PathBuf, sync::Arc};

use serde::Serialize;

use self::{
    actions::{ActionError, RpcBody},
    audit::{Audit, AuditSink},
    config::{Policy, Stage},
    policy::{Decision, Engine, Outcome},
};
use crate::{
    metrics::Metrics,
    report::StalledSocket,
    sample::{DiagConn, Lookup},
};

/// Destroys one socket in its own network namespace (the sweep owns the namespace sockets).
pub type Destroy<'a> = dyn FnMut(&StalledSocket) -> Result<(), ActionError> + 'a;

/// Proves, right before any action, that the report's holders of the socket are all of them
/// (the sweep knows them).
pub type Prove<'a> = dyn FnMut(&StalledSocket) -> Result<(), ActionError> + 'a;

/// Every action, one spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Report,
    Signal,
    Rpc,
    Destroy,
    Shutdown,
}

impl Action {
    pub const ALL: [Action; 5] = [Self::Report, Self::Signal, Self::Rpc, Self::Destroy, Self::Shutdown];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Report => "report",
            Self::Signal => "signal",
            Self::Rpc => "rpc",
            Self::Destroy => "destroy",
            Self::Shutdown => "shutdown",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// Whether it addresses the owning process (and so needs one).
    pub fn needs_owner(self) -> bool {
        matches!(self, Self::Signal | Self::Rpc | Self::Shutdown)
    }
}

/// Why an action was held back; the `why` label of `detector_reaps_total{result="skipped"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipWhy {
    /// A protected process or port, the agent itself, pid 1, a kernel thread.
    Protected,
    /// No process can be shown to hold the socket (and the selector does not allow that).
    OwnerUnknown,
    /// Found by a dump and held by nobody: whether it is the kernel's own is unknown.
    FileUnknown,
    /// The socket has no file any more (closed by its owner, the kernel finishing it).
    NoFile,
    /// The kernel's own socket (NFS, iSCSI, NVMe/TCP, Ceph).
    KernelSocket,
    /// Another of the owner's sockets was acted on within the cooldown.
    Cooldown,
    RateLimited,
    OwnerRateLimited,
    /// Right before acting, the owner was another process or image (exited, pid reused, exec).
    OwnerChanged,
    /// Right before acting, the owner's fd no longer was this socket.
    FdChanged,
    /// The owner does not catch the signal: its default action would end the process, with
    /// every healthy session it serves.
    NoHandler,
    /// The socket is in TCP_REPAIR: a checkpoint (CRIU) holds it on purpose.
    InRepair,
}

impl SkipWhy {
    pub const ALL: [SkipWhy; 12] = [
        Self::Protected,
        Self::OwnerUnknown,
        Self::FileUnknown,
        Self::NoFile,
        Self::KernelSocket,
        Self::Cooldown,
        Self::RateLimited,
        Self::OwnerRateLimited,
        Self::OwnerChanged,
        Self::FdChanged,
        Self::NoHandler,
        Self::InRepair,
    ];

    /// Whether the stage it holds back can never run for this socket (its ladder moves on),
    /// rather than not yet.
    pub fn permanent(self) -> bool {
        matches!(self, Self::Protected | Self::NoFile | Self::KernelSocket | Self::NoHandler)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Protected => "protected",
            Self::OwnerUnknown => "owner_unknown",
            Self::FileUnknown => "file_unknown",
            Self::NoFile => "no_file",
            Self::KernelSocket => "kernel_socket",
            Self::Cooldown => "cooldown",
            Self::RateLimited => "rate_limited",
            Self::OwnerRateLimited => "owner_rate_limited",
            Self::OwnerChanged => "owner_changed",
            Self::FdChanged => "fd_changed",
            Self::NoHandler => "no_handler",
            Self::InRepair => "in_repair",
        }
    }
}

pub struct Reaper {
    engine: Engine,
    rt: tokio::runtime::Handle,
    metrics: Arc<Metrics>,
    audit: AuditSink,
    state_file: Option<PathBuf>,
    /// Stages carried out off the sweep thread (RPCs): (cookie, stage, outcome) once answered.
    answered: (std::sync::mpsc::Sender<Settled>, std::sync::mpsc::Receiver<Settled>),
}

/// A stage carried out off the sweep thread, once it is: (socket cookie, stage, outcome).
type Settled = (u64, usize, Outcome);

impl Reaper {
    /// `state_file` keeps the ladders across restarts (loaded now, saved after every action).
    pub fn new(policy: Policy, grace: std::time::Duration, rt: tokio::runtime::Handle, metrics: Arc<Metrics>, state_file: Option<PathBuf>) -> Self {
        let saved = state_file.as_deref().map(state::load).unwrap_or_default();
        let audit = AuditSink::stdout(metrics.clone());
        Self { engine: Engine::new(policy, grace, std::process::id(), saved), rt, metrics, audit, state_file, answered: std::sync::mpsc::channel() }
    }

    /// Decides and acts for this pass's stalled sockets. `destroy` destroys one socket in its
    /// own namespace (the sweep owns the namespace sockets). `now_ms` is CLOCK_MONOTONIC.
    /// Returns the cookies of sockets whose action was skipped because their owner or its fd
    /// is no longer what the report said: their holders must be found again.
    pub fn tick(&mut self, stalled: &[StalledSocket], now_ms: u64, prove: &mut Prove, destroy: &mut Destroy) -> Vec<u64> {
        let mut settled = false;
        while let Ok((cookie, k, outcome)) = self.answered.1.try_recv() {
            self.engine.settle(cookie, k, outcome, now_ms);
            settled = true;
        }
        let live: HashSet<u64> = stalled.iter().map(|s| s.socket_cookie).collect();
        self.engine.retain(&live, now_ms);
        let mut owner_changed = Vec::new();
        for s in self.engine.order(stalled).into_iter().map(|i| &stalled[i]) {
            match self.engine.decide(s, now_ms) {
                None => {}
                Some(Decision::Skip { selector, action, why }) => {
                    self.record(Audit::skipped(s, action, &selector, why));
                }
                Some(Decision::Act { selector, stage_index, stage, dry_run }) => {
                    settled = true;
                    // Saved as started before it runs: a kill meanwhile never runs it twice.
                    if let Some(f) = self.state_file.as_ref().filter(|_| !dry_run) {
                        state::save(f, &self.engine.state);
                    }
                    // An RPC is settled when its answer comes (a later tick).
                    let Some(outcome) = self.act(s, &selector, stage_index, &stage, dry_run, prove, destroy) else { continue };
                    if outcome == Outcome::Retry {
                        owner_changed.push(s.socket_cookie);
                    }
                    self.engine.settle(s.socket_cookie, stage_index, outcome, now_ms);
                }
            }
        }
        if settled && let Some(f) = &self.state_file {
            state::save(f, &self.engine.state);
        }
        owner_changed
    }

    /// Carries out one stage and says how it went; `None` for an RPC, whose answer comes later
    /// (on `answered`).
    #[allow(clippy::too_many_arguments)]
    fn act(&self, s: &StalledSocket, selector: &str, k: usize, stage: &Stage, dry_run: bool, prove: &mut Prove, destroy: &mut Destroy) -> Option<Outcome> {
        let action = stage.action();
        if dry_run {
            self.record(Audit::done(s, action, k, selector, "dry_run", "dry run: nothing done"));
            return Some(Outcome::Ran);
        }
        if action != Action::Report
            && let Err(e) = prove(s)
        {
            let r: Result<String, ActionError> = Err(e);
            let o = outcome(&r);
            self.record(Audit::done(s, action, k, selector, "", "").with_result(r));
            return Some(o);
        }
        let result = match stage {
            Stage::Report { .. } => Ok("reported".to_string()),
            Stage::Signal { signal, .. } => actions::signal(s, *signal),
            Stage::Shutdown { .. } => actions::shutdown(s),
            // The kernel has no SOCK_DESTROY for an MPTCP socket, and destroying its subflow
            // leaves the sender blocked on the MPTCP socket: that socket is shut down instead.
            Stage::Destroy { .. } if s.mptcp => actions::shutdown(s).map(|m| format!("{m}: an MPTCP connection, which SOCK_DESTROY cannot end")),
            Stage::Destroy { .. } => destroy(s).map(|()| "destroyed by SOCK_DESTROY".into()),
            Stage::Rpc { target: Some(target), timeout, retries, .. } => match actions::verify_owner(s) {
                Ok(owner) => {
                    // Runs off the sweep thread; the answer is audited and settled when it comes.
                    let (target, body, (timeout, retries)) = (target.clone(), RpcBody::of(s), (timeout.0, *retries));
                    let (audit, line) = (self.audit.clone(), Audit::done(s, action, k, selector, "", ""));
                    let (answered, cookie) = (self.answered.0.clone(), s.socket_cookie);
                    self.rt.spawn(async move {
                        let r = actions::rpc(&target, &owner, &body, timeout, retries).await.map_err(ActionError::Failed);
                        let _ = answered.send((cookie, k, outcome(&r)));
                        audit.send(line.with_result(r));
                    });
                    return None;
                }
                Err(e) => Err(e),
            },
            Stage::Rpc { target: None, .. } => Err(ActionError::Failed("rpc has no target".into())),
        };
        let o = outcome(&result);
        self.record(Audit::done(s, action, k, selector, "", "").with_result(result));
        Some(o)
    }

    fn record(&self, line: Audit) {
        if line.result == "failed" {
            log::warn!("{} for {} -> {} failed: {}", line.action.as_str(), line.local, line.remote, crate::escape::printable(&line.detail));
        }
        self.audit.send(line);
    }

    /// The metrics sink (for the audit of asynchronous results).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

/// What an action's result means for its ladder: done when it ran or can never run; tried again
/// when what it aims at moved (attributed afresh first) or when it failed (after a while).
fn outcome(r: &Result<String, ActionError>) -> Outcome {
    match r {
        Ok(_) => Outcome::Ran,
        Err(ActionError::Skip(why, _)) if why.permanent() => Outcome::DecidedAgainst,
        Err(ActionError::Skip(..)) => Outcome::Retry,
        Err(ActionError::Failed(_)) => Outcome::Failed,
    }
}

/// Whether this kernel destroys sockets through sock_diag (CONFIG_INET_DIAG_DESTROY): tried
/// on a loopback connection the agent makes for the purpose.
pub fn probe_destroy() -> Result<(), String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let c = std::net::TcpStream::connect(l.local_addr().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let (s, peer) = l.accept().map_err(|e| e.to_string())?;
    let local = s.local_addr().map_err(|e| e.to_string())?;
    let mut conn = DiagConn::open().map_err(|e| e.to_string())?;
    let r = conn
        .destroy(&Lookup {
            family: detector_common::AF_INET,
            local: local.ip(),
            local_port: local.port(),
            remote: peer.ip(),
            remote_port: peer.port(),
            ifindex: 0,
            cookie: None,
        })
        .map_err(|e| format!("{e} (the kernel needs CONFIG_INET_DIAG_DESTROY)"));
    drop((c, s));
    r
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::{Action, Reaper, actions::ActionError, config::Policy};
    use crate::{metrics::Metrics, report::StalledSocket};

    fn reaper(action: Action) -> (tokio::runtime::Runtime, Reaper) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let policy = Policy::from_flags(action, Some("SIGUSR1"), None, false).unwrap();
        let r = Reaper::new(policy, Duration::from_secs(30), rt.handle().clone(), Arc::new(Metrics::new()), None);
        (rt, r)
    }

    #[test]
    fn a_stage_skipped_because_the_owner_changed_asks_for_the_holders_again() {
        // Due (31.5 s stalled, grace 30 s); its owner, pid 4242 started at 5242, is not this
        // process: the signal is skipped (owner_changed) and the sweep must attribute again.
        let (_rt, mut r) = reaper(Action::Signal);
        let s = StalledSocket::example();
        let mut destroy = |_: &StalledSocket| -> Result<(), ActionError> { panic!("no destroy in this policy") };
        let mut proven = |_: &StalledSocket| Ok(());
        assert_eq!(r.tick(std::slice::from_ref(&s), 40_000, &mut proven, &mut destroy), vec![s.socket_cookie]);
        // A destroy skipped by the sweep for the same reason says so too; one that ran does not.
        let (_rt, mut r) = reaper(Action::Destroy);
        let mut refused = |_: &StalledSocket| Err(ActionError::Skip(super::SkipWhy::OwnerChanged, "holders changed".into()));
        assert_eq!(r.tick(std::slice::from_ref(&s), 40_000, &mut proven, &mut refused), vec![s.socket_cookie]);
        let (_rt, mut r) = reaper(Action::Destroy);
        let mut done = |_: &StalledSocket| Ok(());
        assert_eq!(r.tick(std::slice::from_ref(&s), 40_000, &mut proven, &mut done), Vec::<u64>::new());
        // A holder found right before acting that the report did not name: not acted on, and
        // attributed again.
        let (_rt, mut r) = reaper(Action::Destroy);
        let mut unnamed = |_: &StalledSocket| Err(ActionError::Skip(super::SkipWhy::OwnerChanged, "held also by pid 7".into()));
        let mut never = |_: &StalledSocket| -> Result<(), ActionError> { panic!("destroyed although a holder was not named") };
        assert_eq!(r.tick(std::slice::from_ref(&s), 40_000, &mut unnamed, &mut never), vec![s.socket_cookie]);
    }
}
