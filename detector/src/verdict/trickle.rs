//! The peer that trickles: it acknowledges a few bytes before each grace window ends, so it is
//! never stalled, yet it holds its session and buffers for ever (the read side of Slowloris, or
//! a client on a dying link). A socket trickles when, over the whole trickle window, bytes were
//! queued at every sample, the peer's window was never seen open wide, and what drained stayed
//! under a floor. A slow reader that keeps up with what it asked for drains above the floor; a
//! paused reader that resumes opens its window wide: neither trickles.
use std::collections::VecDeque;

use serde::Serialize;

use crate::sample::Sample;
use detector_common::TCP_ESTABLISHED;

/// A peer window at least this wide is open: the peer reads (or has room), the sender is not
/// held back by it. A trickling reader frees a few bytes at a time; the receiver's silly-window
/// avoidance opens its window by one segment at most, which the sender fills at once.
pub const WIDE_WINDOW: u32 = 64 * 1024;

/// The trickle window and floor (`--trickle-window`, `--trickle-floor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrickleRule {
    pub window_ms: u64,
    pub floor_bytes_per_s: u64,
}

impl TrickleRule {
    /// `--trickle-window 5m --trickle-floor 1KiB/s`.
    pub const DEFAULT: TrickleRule = TrickleRule { window_ms: 300_000, floor_bytes_per_s: 1024 };
}

impl Default for TrickleRule {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What decided a trickle: the bytes drained over the window, for `detector explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Drain {
    pub bytes: u64,
    pub over_ms: u64,
    pub floor_bytes_per_s: u64,
}

impl Drain {
    pub fn bytes_per_s(&self) -> f64 {
        self.bytes as f64 * 1000.0 / self.over_ms.max(1) as f64
    }
}

/// Marks kept: one every eighth of the window, so the oldest is at most an eighth past it.
const MARKS: usize = 10;

/// Acknowledged bytes at moments of the current trickle period (bytes queued at every sample,
/// the window never seen wide open), oldest first.
#[derive(Debug, Clone, Default)]
pub struct TrickleMeter {
    marks: VecDeque<(u64, u64)>,
}

impl TrickleMeter {
    /// Notes sample `s`; the drain that makes it trickle, if it does.
    pub fn observe(&mut self, s: &Sample, rule: TrickleRule) -> Option<Drain> {
        if !in_trickle_period(s) {
            self.marks.clear();
            return None;
        }
        let step = (rule.window_ms / 8).max(1);
        if self.marks.back().is_none_or(|&(at, _)| s.at_ms.saturating_sub(at) >= step) {
            self.marks.push_back((s.at_ms, s.bytes_acked));
        }
        // The front is the newest mark at least a window old.
        while (self.marks.len() > 1 && self.marks[1].0 + rule.window_ms <= s.at_ms) || self.marks.len() > MARKS {
            self.marks.pop_front();
        }
        let &(at, acked) = self.marks.front()?;
        let over_ms = s.at_ms.saturating_sub(at);
        if over_ms < rule.window_ms {
            return None;
        }
        let bytes = s.bytes_acked.wrapping_sub(acked);
        // A step backwards is another socket on the tuple: no judgement.
        if bytes >= 1 << 63 {
            self.marks.clear();
            return None;
        }
        (bytes.saturating_mul(1000) < rule.floor_bytes_per_s.saturating_mul(over_ms)).then_some(Drain {
            bytes,
            over_ms,
            floor_bytes_per_s: rule.floor_bytes_per_s,
        })
    }

    /// When the current period began (its oldest mark), for the stall's onset.
    pub fn since(&self) -> Option<u64> {
        self.marks.front().map(|&(at, _)| at)
    }
}

/// Bytes queued on an established connection, and the peer's window known and not wide open.
/// A window unknown (a `tcp_info` without `tcpi_snd_wnd`, before 6.2, and no kernel walk) cannot
/// tell a slow network from a slow reader: no trickle is judged then.
fn in_trickle_period(s: &Sample) -> bool {
    s.state == TCP_ESTABLISHED && s.queued > 0 && s.snd_wnd.is_some_and(|w| w < WIDE_WINDOW)
}
