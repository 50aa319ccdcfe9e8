//! Acting on stalled sockets by policy: report (default), signal, RPC, kernel-side destroy or
//! shutdown, along an escalation ladder per selector. `policy` decides (pure), `actions`
//! carries out; every decision writes one JSON audit line on stdout and counts in
//! `detector_reaps_total{action,result}`.
pub mod actions;
pub mod config;
pub mod policy;

use std::{sync::Arc, time::Instant};

use serde::Serialize;

use self::{
    actions::RpcTarget,
    config::{Policy, Stage},
    policy::{Decision, Engine},
};
use crate::{
    api::StalledSocket,
    metrics::{ActionLabel, Metrics},
    sample::{DiagConn, Lookup},
};

/// One audit record.
#[derive(Debug, Serialize)]
pub struct Audit<'a> {
    pub ts: String,
    pub event: &'static str,
    pub action: &'a str,
    pub stage: Option<usize>,
    pub selector: &'a str,
    /// ok, failed, dry_run or skipped.
    pub result: &'a str,
    pub detail: &'a str,
    pub pid: Option<u32>,
    pub fd: Option<i32>,
    pub comm: Option<&'a str>,
    pub local: &'a str,
    pub remote: &'a str,
    pub reason: &'a str,
    pub stalled_for_ms: u64,
    pub queued_bytes: u32,
    pub socket_cookie: u64,
    pub pod_namespace: Option<&'a str>,
    pub pod_name: Option<&'a str>,
}

fn audit(metrics: &Metrics, s: &StalledSocket, action: &str, stage: Option<usize>, selector: &str, result: &str, detail: &str) {
    let line = Audit {
        ts: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        event: "reap",
        action,
        stage,
        selector,
        result,
        detail,
        pid: s.pid,
        fd: s.fd,
        comm: s.comm.as_deref(),
        local: &s.local,
        remote: &s.remote,
        reason: &s.reason,
        stalled_for_ms: s.stalled_for_ms,
        queued_bytes: s.queued_bytes,
        socket_cookie: s.socket_cookie,
        pod_namespace: s.pod_namespace.as_deref(),
        pod_name: s.pod_name.as_deref(),
    };
    if let Ok(json) = serde_json::to_string(&line) {
        println!("{json}");
    }
    metrics
        .reaps
        .get_or_create(&ActionLabel {
            action: action.into(),
            result: result.into(),
        })
        .inc();
}

/// What the RPC endpoint receives.
#[derive(Debug, Serialize)]
struct RpcBody<'a> {
    pid: Option<u32>,
    fd: Option<i32>,
    local: &'a str,
    remote: &'a str,
    reason: &'a str,
    stalled_for_ms: u64,
    queued_bytes: u32,
    socket_cookie: u64,
    inode: u32,
}

pub struct Reaper {
    engine: Engine,
    rt: tokio::runtime::Handle,
    metrics: Arc<Metrics>,
}

impl Reaper {
    pub fn new(policy: Policy, grace: std::time::Duration, rt: tokio::runtime::Handle, metrics: Arc<Metrics>) -> Self {
        Self {
            engine: Engine::new(policy, grace, std::process::id()),
            rt,
            metrics,
        }
    }

    /// Decides and acts for this sweep's stalled sockets. `destroy` destroys one socket in its
    /// own namespace (the sweep owns the namespace sockets).
    pub fn tick(&mut self, stalled: &[StalledSocket], destroy: &mut dyn FnMut(&StalledSocket) -> Result<(), String>) {
        let now = Instant::now();
        let live = stalled.iter().map(|s| s.socket_cookie).collect();
        self.engine.retain(&live);
        for s in stalled {
            let Some(d) = self.engine.decide(s, now) else { continue };
            match d {
                Decision::Skip { selector, why } => {
                    audit(&self.metrics, s, "none", None, &selector, "skipped", why);
                }
                Decision::Act { selector, stage_index, stage, dry_run } => {
                    let name = stage.name();
                    if dry_run {
                        audit(&self.metrics, s, name, Some(stage_index), &selector, "dry_run", "dry run: nothing done");
                        continue;
                    }
                    let result = match &stage {
                        Stage::Report { .. } => Ok("reported".to_string()),
                        Stage::Signal { signal, .. } => actions::signal(s, *signal),
                        Stage::Shutdown { .. } => actions::shutdown(s),
                        Stage::Destroy { .. } => destroy(s).map(|()| "destroyed by SOCK_DESTROY".into()),
                        Stage::Rpc { url, unix, path, timeout, retries, .. } => {
                            let target = match (url, unix) {
                                (Some(u), _) => RpcTarget::from_url(u),
                                (None, Some(sock)) => Ok(RpcTarget::Unix {
                                    socket: sock.clone(),
                                    path: path.clone().unwrap_or_else(|| "/".into()),
                                }),
                                (None, None) => Err("rpc has no target".into()),
                            };
                            match target {
                                Err(e) => Err(e),
                                Ok(target) => {
                                    // Runs off the sweep thread; the answer is audited when it comes.
                                    let body = serde_json::to_vec(&RpcBody {
                                        pid: s.pid,
                                        fd: s.fd,
                                        local: &s.local,
                                        remote: &s.remote,
                                        reason: &s.reason,
                                        stalled_for_ms: s.stalled_for_ms,
                                        queued_bytes: s.queued_bytes,
                                        socket_cookie: s.socket_cookie,
                                        inode: s.inode,
                                    })
                                    .unwrap_or_default();
                                    let (s, metrics, selector) = (s.clone(), self.metrics.clone(), selector.clone());
                                    let (timeout, retries) = (timeout.0, *retries);
                                    self.rt.spawn(async move {
                                        let r = actions::rpc(&target, &body, timeout, retries).await;
                                        match r {
                                            Ok(answer) => audit(&metrics, &s, "rpc", Some(stage_index), &selector, "ok", &answer),
                                            Err(e) => {
                                                log::warn!("rpc for {} -> {} failed: {e}", s.local, s.remote);
                                                audit(&metrics, &s, "rpc", Some(stage_index), &selector, "failed", &e)
                                            }
                                        }
                                    });
                                    continue;
                                }
                            }
                        }
                    };
                    match result {
                        Ok(detail) => audit(&self.metrics, s, name, Some(stage_index), &selector, "ok", &detail),
                        Err(e) => {
                            log::warn!("{name} for {} -> {} failed: {e}", s.local, s.remote);
                            audit(&self.metrics, s, name, Some(stage_index), &selector, "failed", &e)
                        }
                    }
                }
            }
        }
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
