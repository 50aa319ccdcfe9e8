//! Waiting in tests: polls, and the slack that stretches waits under emulation.
use std::time::{Duration, Instant};

/// How many times longer than on a real machine a test may wait for something to happen:
/// `DETECTOR_TEST_SLACK` (default 1). `cargo xtask vmtest` sets it for kernels booted under
/// software emulation, which run everything several times slower. It stretches only the time
/// a test waits (for a peer, the agent's API, a report), never what the agent is given (grace,
/// interval) nor how long a healthy connection must stay unreported.
pub fn slack() -> u32 {
    match std::env::var("DETECTOR_TEST_SLACK") {
        Err(_) => 1,
        Ok(v) => v.parse().ok().filter(|&n| n >= 1).unwrap_or_else(|| panic!("DETECTOR_TEST_SLACK={v:?}: expected a whole number, 1 or more")),
    }
}

/// `d` stretched by [`slack`]: how long to wait for what should happen within `d`.
pub fn patient(d: Duration) -> Duration {
    d * slack()
}

/// Polls `f` every 100 ms until it returns `Some` or `timeout` (stretched by [`slack`]) passes.
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + patient(timeout);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
