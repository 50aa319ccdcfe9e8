//! `detector run`: starts the agent and its surfaces (the API socket, Prometheus metrics), and
//! runs until SIGTERM/SIGINT, or until the agent fails: a sweep that died must not leave a
//! healthy-looking agent serving a frozen report, so the process exits non-zero.

use crate::{
    agent::{Agent, Options},
    api::server::{self, Api, SocketFile},
    metrics,
};

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let mut agent = Agent::start(&opts, tokio::runtime::Handle::current())?;
    let listener = server::bind(&opts.api_socket)?;
    let _socket_file = SocketFile(opts.api_socket.clone());
    let metrics_listener = match opts.metrics_addr {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    if let Some(l) = &metrics_listener {
        log::info!("metrics on http://{}/metrics", l.local_addr()?);
    }
    log::info!("API on {}; grace {:?}", opts.api_socket.display(), opts.grace);
    let api_task = tokio::spawn(server::serve(listener, Api(agent.handle.clone())));
    let metrics_task = metrics_listener.map(|l| tokio::spawn(metrics::serve(l, agent.handle.metrics.clone())));
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

/// Log lines dropped because stderr did not keep up (added to the metrics by the sweep).
pub static LOG_LINES_DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// stderr through a bounded queue and a writer thread: a blocked stderr (a full pipe) never
/// stalls detection; what does not fit is dropped and counted.
struct NonBlockingStderr(std::sync::mpsc::SyncSender<Vec<u8>>);

impl std::io::Write for NonBlockingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.try_send(buf.to_vec()).is_err() {
            LOG_LINES_DROPPED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One log record as a JSON line (`--log-format json`): every field escaped by serde_json.
pub fn json_line(ts: &str, level: log::Level, target: &str, msg: &str) -> String {
    let line = serde_json::json!({ "ts": ts, "level": level.as_str(), "target": target, "msg": msg });
    format!("{line}\n")
}

/// Logging (`RUST_LOG`, default info) to stderr, never blocking the caller.
pub fn init_logging(format: crate::cli::LogFormat) {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4096);
    let _ = std::thread::Builder::new().name("log".into()).spawn(move || {
        use std::io::Write as _;
        let mut err = std::io::stderr();
        for chunk in rx {
            if err.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    b.target(env_logger::Target::Pipe(Box::new(NonBlockingStderr(tx))));
    if format == crate::cli::LogFormat::Json {
        b.format(|buf, r| {
            use std::io::Write as _;
            let ts = buf.timestamp_millis().to_string();
            buf.write_all(json_line(&ts, r.level(), r.target(), &r.args().to_string()).as_bytes())
        });
    }
    b.init();
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_json_log_line_is_one_escaped_object() {
        let l = super::json_line("2026-11-26T04:00:00.000Z", log::Level::Warn, "detector::agent", "comm \"evil\nname\" refused");
        assert_eq!(l.matches('\n').count(), 1, "one line: {l}");
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!((v["level"].as_str(), v["msg"].as_str()), (Some("WARN"), Some("comm \"evil\nname\" refused")));
    }
}
