//! The agent's log: stderr through a bounded queue, never blocking detection, with what was
//! dropped counted (the sweep adds it to the metrics). Used by `main` and the agent alike.

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

/// Logging (`RUST_LOG`, default info) to stderr, never blocking the caller; one JSON object
/// per line when `json`.
pub fn init(json: bool) {
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
    if json {
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
