//! Serves the API on a unix socket.
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context as _;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

use super::{Request, Response};
use crate::agent::{Shared, sweep::Query};

/// Binds the socket (replacing a stale one), root-only.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the API socket directory {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another agent is already serving {}; stop it or pass a different --api-socket",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale API socket {}", path.display()))?;
    }
    let l = UnixListener::bind(path)
        .with_context(|| format!("binding the API socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {} to root", path.display()))?;
    Ok(l)
}

pub async fn serve(listener: UnixListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, &shared).await {
                        log::debug!("API client: {e}");
                    }
                });
            }
            Err(e) => log::warn!("API accept: {e}"),
        }
    }
}

async fn handle(stream: UnixStream, shared: &Shared) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await?;
    let resp = match serde_json::from_str::<Request>(&line) {
        Ok(Request::Explain { id }) => ask(shared, Query::Explain(id)).await,
        Ok(Request::Sockets) => ask(shared, Query::Sockets).await,
        Ok(req) => Response {
            ok: true,
            error: None,
            data: shared.answer(&req),
        },
        Err(e) => Response {
            ok: false,
            error: Some(format!("bad request {:?}: {e}", line.trim())),
            data: serde_json::Value::Null,
        },
    };
    let mut out = serde_json::to_vec(&resp).unwrap_or_default();
    out.push(b'\n');
    w.write_all(&out).await
}

/// Asks the sweep thread, which owns the socket table, and waits for its answer.
async fn ask(shared: &Shared, q: Query) -> Response {
    let fail = |e: String| Response {
        ok: false,
        error: Some(e),
        data: serde_json::Value::Null,
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let sent = shared
        .queries
        .lock()
        .ok()
        .and_then(|g| g.as_ref().map(|s| s.send((q, tx)).is_ok()))
        .unwrap_or(false);
    if !sent {
        return fail("the agent is shutting down".into());
    }
    match tokio::time::timeout(std::time::Duration::from_secs(10), rx).await {
        Ok(Ok(Some(v))) => Response {
            ok: true,
            error: None,
            data: v,
        },
        Ok(Ok(None)) => match q {
            Query::Explain(id) => fail(format!("no tracked socket has id {id}; `detector sockets` lists the ids")),
            Query::Sockets => fail("the socket table could not be encoded".into()),
        },
        _ => fail("the sweep did not answer in 10 s".into()),
    }
}

/// Removes the socket file when the agent stops.
pub struct SocketFile(pub PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
