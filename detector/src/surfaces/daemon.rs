//! `detector run`: starts the agent and its surfaces (the API socket, Prometheus metrics), and
//! runs until SIGTERM/SIGINT, or until the agent fails: a sweep that died must not leave a
//! healthy-looking agent serving a frozen report, so the process exits non-zero.

use crate::{
    agent::{Agent, Options},
    surfaces::api::server::{self, Api, SocketFile},
    surfaces::metrics_http,
};

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let mut agent = Agent::start(&opts, tokio::runtime::Handle::current())?;
    let listener = server::bind(&opts.api_socket)?;
    let _socket_file = SocketFile(opts.api_socket.clone());
    let metrics_listener = match opts.metrics_addr {
        Some(addr) => Some(metrics_http::bind(addr).await?),
        None => None,
    };
    if let Some(l) = &metrics_listener {
        log::info!("metrics on http://{}/metrics", l.local_addr()?);
    }
    log::info!("API on {}; grace {:?}", opts.api_socket.display(), opts.grace);
    let api_task = tokio::spawn(server::serve(listener, Api(agent.handle.clone())));
    let metrics_task = metrics_listener.map(|l| tokio::spawn(metrics_http::serve(l, agent.handle.metrics.clone())));
    let failed = tokio::select! {
        _ = wait_for_signal() => None,
        why = watch(&mut agent) => Some(why),
    };
    log::info!("stopping");
    api_task.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    agent.stop();
    match failed {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

/// Resolves when the agent's sweep thread has ended.
async fn watch(agent: &mut Agent) -> anyhow::Error {
    let why = agent.ended().await;
    log::error!("{why:#}");
    why
}

pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            log::warn!("no SIGTERM handler ({e}); stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Blocks until SIGTERM or SIGINT.
pub fn wait_for_termination() {
    if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
        rt.block_on(wait_for_signal());
    }
}
