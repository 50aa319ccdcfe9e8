//! The audit trail: one JSON line per decision on stdout, and the count in
//! `detector_reaps_total{action,result,why}`. Lines go through a bounded queue to a writer
//! thread, so a stdout nobody reads (a full pipe) never stalls detection: what does not fit is
//! dropped and counted in `detector_audit_lines_dropped_total`, never silently.
use std::{
    io::Write,
    sync::{
        Arc,
        mpsc::{SyncSender, TrySendError, sync_channel},
    },
};

use serde::Serialize;

use super::{Action, SkipWhy, actions::ActionError};
use crate::{metrics::Metrics, report::StalledSocket};

/// Lines that may wait for a slow stdout.
const QUEUE: usize = 4096;

/// One audit record.
#[derive(Debug, Clone, Serialize)]
pub struct Audit {
    pub ts: String,
    pub event: &'static str,
    pub action: Action,
    pub stage: Option<usize>,
    pub selector: String,
    /// ok, failed, dry_run or skipped.
    pub result: &'static str,
    /// Why it was skipped (skipped only).
    pub why: Option<SkipWhy>,
    pub detail: String,
    pub pid: Option<u32>,
    pub fd: Option<i32>,
    pub comm: Option<String>,
    pub local: std::net::SocketAddr,
    pub remote: std::net::SocketAddr,
    pub reason: crate::verdict::Reason,
    pub stalled_for_ms: u64,
    pub queued_bytes: u32,
    pub socket_cookie: u64,
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
}

impl Audit {
    fn new(s: &StalledSocket, action: Action, stage: Option<usize>, selector: &str, result: &'static str, why: Option<SkipWhy>, detail: &str) -> Self {
        Audit {
            ts: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            event: "reap",
            action,
            stage,
            selector: selector.to_string(),
            result,
            why,
            detail: detail.to_string(),
            pid: s.pid,
            fd: s.fd,
            comm: s.comm.as_deref().map(String::from),
            local: s.local,
            remote: s.remote,
            reason: s.reason,
            stalled_for_ms: s.stalled_for_ms,
            queued_bytes: s.queued_bytes,
            socket_cookie: s.socket_cookie,
            pod_namespace: s.pod_namespace.clone(),
            pod_name: s.pod_name.clone(),
        }
    }

    pub fn skipped(s: &StalledSocket, action: Action, selector: &str, why: SkipWhy) -> Self {
        Self::new(s, action, None, selector, "skipped", Some(why), why.as_str())
    }

    pub fn done(s: &StalledSocket, action: Action, stage: usize, selector: &str, result: &'static str, detail: &str) -> Self {
        Self::new(s, action, Some(stage), selector, result, None, detail)
    }

    /// The outcome of carrying the action out.
    pub fn with_result(mut self, r: Result<String, ActionError>) -> Self {
        (self.result, self.why, self.detail) = match r {
            Ok(detail) => ("ok", None, detail),
            Err(ActionError::Skip(why, detail)) => ("skipped", Some(why), detail),
            Err(ActionError::Failed(e)) => ("failed", None, e),
        };
        self
    }
}

#[derive(Clone)]
pub struct AuditSink {
    tx: SyncSender<String>,
    metrics: Arc<Metrics>,
}

impl AuditSink {
    /// Lines to stdout, through a writer thread.
    pub fn stdout(metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = sync_channel::<String>(QUEUE);
        let _ = std::thread::Builder::new().name("audit".into()).spawn(move || {
            let mut out = std::io::stdout();
            for line in rx {
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    return;
                }
            }
        });
        Self { tx, metrics }
    }

    /// Counts the decision and queues its line; a full queue drops the line, counted.
    pub fn send(&self, a: Audit) {
        self.metrics.reaped(a.action.as_str(), a.result, a.why.map(SkipWhy::as_str));
        let Ok(line) = serde_json::to_string(&a) else { return };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(line) {
            self.metrics.audit_lines_dropped.inc();
        }
    }
}
