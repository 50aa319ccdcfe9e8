//! Serves the API on a unix socket. Every request is routed here, in [`Api::answer`]: the
//! stalled list and status from what the sweep published, the socket table and explanations
//! from the sweep thread itself (it owns the table).
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

use super::{HookLine, MAX_REQUEST_BYTES, ProgramStats, Request, Response, Status};
use crate::{
    agent::{Answer, Handle, Query},
    kernel::hooks::HookState,
};

/// Longest a client may take to send its request, and the sweep to answer it.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
const SWEEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the socket root-only from the start (umask 077 while it is created), replacing a
/// stale socket, but never another agent's live socket nor a file that is not a socket.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating the API socket directory {}", dir.display()))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt as _;
        if !meta.file_type().is_socket() {
            anyhow::bail!("{} exists and is not a socket; remove it or pass a different --api-socket", path.display());
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("another agent is already serving {}; stop it or pass a different --api-socket", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing the stale API socket {}", path.display()))?;
    }
    // SAFETY: umask has no preconditions; restored right after bind.
    let old = unsafe { libc::umask(0o077) };
    let l = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let l = l.with_context(|| format!("binding the API socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).with_context(|| format!("restricting {} to root", path.display()))?;
    Ok(l)
}

/// The API's state: the agent's handle.
#[derive(Clone)]
pub struct Api(pub Handle);

pub async fn serve(listener: UnixListener, api: Api) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let api = api.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, &api).await {
                        log::debug!("API client: {e}");
                    }
                });
            }
            Err(e) => log::warn!("API accept: {e}"),
        }
    }
}

async fn handle(stream: UnixStream, api: &Api) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = Vec::new();
    // One line, bounded in size and time: a slow or flooding client gets an error, never the
    // agent's memory or a task forever.
    let read = tokio::time::timeout(CLIENT_TIMEOUT, BufReader::new(r).take(MAX_REQUEST_BYTES as u64 + 1).read_until(b'\n', &mut line)).await;
    let resp = match read {
        Err(_) => refuse(format!("no request line within {CLIENT_TIMEOUT:?}")),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(_)) => match super::parse_request(&line) {
            Ok(req) => api.answer(req).await,
            Err(e) => refuse(e),
        },
    };
    let mut out = serde_json::to_vec(&resp).unwrap_or_default();
    out.push(b'\n');
    w.write_all(&out).await
}

fn refuse(e: String) -> Response {
    Response { ok: false, error: Some(e), data: serde_json::Value::Null }
}

fn data(v: impl serde::Serialize) -> Response {
    match serde_json::to_value(v) {
        Ok(data) => Response { ok: true, error: None, data },
        Err(e) => refuse(format!("encoding the answer: {e}")),
    }
}

impl Api {
    pub async fn answer(&self, req: Request) -> Response {
        let h = &self.0;
        match req {
            Request::Stalled => data(h.published.read().map(|p| p.stalled.clone()).unwrap_or_default()),
            Request::Status => data(self.status()),
            Request::Sockets => match self.ask(Query::Sockets).await {
                Ok(Answer::Sockets(rows)) => data(rows),
                Ok(_) => refuse("the sweep answered another question".into()),
                Err(e) => refuse(e),
            },
            Request::Explain { id } => match self.ask(Query::Explain(id)).await {
                Ok(Answer::Explain(Some(e))) => data(e),
                Ok(Answer::Explain(None)) => refuse(format!("no tracked socket has id {id}; `detector sockets` lists the ids")),
                Ok(_) => refuse("the sweep answered another question".into()),
                Err(e) => refuse(e),
            },
        }
    }

    /// Asks the sweep thread, which owns the socket table, and waits for its answer.
    async fn ask(&self, q: Query) -> Result<Answer, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.0.queries.send((q, tx)).map_err(|_| "the agent is shutting down".to_string())?;
        match tokio::time::timeout(SWEEP_TIMEOUT, rx).await {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(_)) => Err("the sweep thread is gone".into()),
            Err(_) => Err(format!("the sweep did not answer in {SWEEP_TIMEOUT:?}")),
        }
    }

    fn status(&self) -> Status {
        let h = &self.0;
        let s = &h.status;
        let p = h.published.read().map(|p| p.clone()).unwrap_or_default();
        Status {
            setup: s.setup.clone(),
            hooks: s.hooks.iter().map(hook_line).collect(),
            uptime_s: h.started.elapsed().as_secs(),
            sockets_tracked: p.tracked,
            sockets_stalled: p.stalled.len() + p.stalled_undetailed.iter().map(|(_, n)| n).sum::<usize>(),
            sockets_stalled_undetailed: p.stalled_undetailed.iter().map(|(_, n)| n).sum(),
            kernel_map_entries: p.kernel_map_entries,
            sweeps: p.sweeps,
            last_sweep_ms: p.last_sweep_ms,
            reconcile_cpu_ms: p.reconcile_cpu_ms,
            reconcile_every_ms: p.reconcile_every_ms,
            programs: program_stats(&h.programs),
        }
    }
}

fn hook_line(h: &crate::kernel::hooks::HookStatus) -> HookLine {
    let (state, why) = match &h.state {
        HookState::Attached => ("attached", None),
        HookState::Available => ("available", None),
        HookState::NotTried(w) => ("not_tried", Some(w.to_string())),
        HookState::Refused(w) => ("refused", Some(w.clone())),
    };
    let program = crate::kernel::hooks::spec(h.id).program.into();
    HookLine { role: h.role.as_str().into(), hook: h.hook.into(), program, state: state.into(), why }
}

/// Kernel accounting per program (counted only while kernel.bpf_stats_enabled=1).
fn program_stats(programs: &[(String, u32)]) -> Vec<ProgramStats> {
    crate::kernel::prog_info::program_runs(programs)
        .into_iter()
        .map(|p| {
            let avg_ns = if p.run_count > 0 { p.run_time_ns as f64 / p.run_count as f64 } else { 0.0 };
            ProgramStats { name: p.name, run_count: p.run_count, run_time_ns: p.run_time_ns, avg_ns, recursion_misses: p.recursion_misses }
        })
        .collect()
}

/// Removes the socket file when the agent stops.
pub struct SocketFile(pub PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
