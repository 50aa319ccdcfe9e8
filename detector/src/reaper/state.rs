//! The ladders, saved to a file after every action and loaded at start: an agent killed in the
//! middle of a ladder and restarted (a rollout, an OOM kill) never runs a stage twice on the same
//! socket. Socket cookies and CLOCK_MONOTONIC both end with the boot, and the file lives under
//! /run (tmpfs), which does too.
use std::path::Path;

use super::policy::LadderState;

/// The saved state, or an empty one. A file that cannot be read as state is moved aside (never
/// lost, never fatal) with a warning naming it.
pub fn load(path: &Path) -> LadderState {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return LadderState::default(),
        Err(e) => {
            log::warn!("reaper state {}: {e}; starting with no ladder in progress", path.display());
            return LadderState::default();
        }
    };
    match serde_json::from_str(&text) {
        Ok(s) => s,
        Err(e) => {
            let aside = path.with_extension("corrupt");
            let _ = std::fs::rename(path, &aside);
            log::warn!("reaper state {} is not valid ({e}); moved to {}, starting with no ladder in progress", path.display(), aside.display());
            LadderState::default()
        }
    }
}

/// Writes the state atomically (a temporary file renamed over the old one).
pub fn save(path: &Path, state: &LadderState) {
    let tmp = path.with_extension("tmp");
    let r = serde_json::to_vec(state)
        .map_err(std::io::Error::other)
        .and_then(|bytes| {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&tmp, bytes)
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = r {
        log::warn!("saving the reaper state to {}: {e}; a restart would forget the ladders in progress", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_a_round_trip_and_a_bad_file_is_moved_aside() {
        let dir = std::env::temp_dir().join(format!("detector-state-test-{}", std::process::id()));
        let f = dir.join("state.json");
        assert_eq!(load(&f), LadderState::default(), "no file: nothing in progress");
        let mut s = LadderState::default();
        s.next_stage.insert(99, 1);
        s.cooldown_until.insert("42@777".into(), 123_456);
        s.global.push_back(100);
        save(&f, &s);
        assert_eq!(load(&f), s);
        std::fs::write(&f, "{not json").unwrap();
        assert_eq!(load(&f), LadderState::default());
        assert_eq!(std::fs::read_to_string(f.with_extension("corrupt")).unwrap(), "{not json", "kept for a look");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
