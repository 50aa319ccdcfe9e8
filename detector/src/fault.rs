//! Fault injection for the tests (`DETECTOR_FAULT`), compiled in only with the
//! `fault-injection` feature, which `cargo xtask test` enables: a production build never reads
//! the variable, and its sweep has no way to panic on purpose. Without the feature every
//! fault is absent.

/// The fault named by `DETECTOR_FAULT`, read once.
#[cfg(feature = "fault-injection")]
fn named() -> Option<&'static str> {
    static FAULT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    FAULT.get_or_init(|| std::env::var("DETECTOR_FAULT").ok()).as_deref()
}

#[cfg(not(feature = "fault-injection"))]
fn named() -> Option<&'static str> {
    None
}

/// A word for the log when `DETECTOR_FAULT` is set in a build that ignores it.
pub fn ignored() -> Option<&'static str> {
    (!cfg!(feature = "fault-injection") && std::env::var_os("DETECTOR_FAULT").is_some())
        .then_some("DETECTOR_FAULT is set but ignored: this build has no fault injection (the `fault-injection` feature, for the tests)")
}

/// `DETECTOR_FAULT=sweep-panic`: the sweep thread panics after its first pass (the agent must
/// exit, not serve a frozen report).
pub fn sweep_panic() -> bool {
    named() == Some("sweep-panic")
}

/// `DETECTOR_FAULT=diag-error:<path>`: every sock_diag lookup fails as a netlink error would,
/// for as long as `<path>` exists.
pub fn diag_error() -> bool {
    named().and_then(|f| f.strip_prefix("diag-error:")).is_some_and(|p| std::path::Path::new(p).exists())
}

/// `DETECTOR_FAULT=lookup-delay:<ms>`: every batch of lookups waits that long first, widening
/// the window in which a socket closes between the sweep's last look at the events and its
/// lookup.
pub fn lookup_delay() -> Option<std::time::Duration> {
    named()?.strip_prefix("lookup-delay:")?.parse().ok().map(std::time::Duration::from_millis)
}

/// `DETECTOR_FAULT=walk-skip:<port>`: every other walk leaves out the records of the sockets on
/// that local port, as an iterator resumed after a read may skip entries when others are freed.
pub fn walk_skip() -> Option<u16> {
    named()?.strip_prefix("walk-skip:")?.parse().ok()
}
