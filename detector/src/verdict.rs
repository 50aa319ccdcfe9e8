//! The stall verdict: pure arithmetic over samples of one socket's kernel state.
//!
//! A socket is stalled when bytes are queued and acknowledged progress has been zero for the
//! grace window. Progress is judged by acknowledged bytes, never by ACK recency: a peer that
//! ACKs zero-window probes keeps `last_ack_recv` fresh while nothing drains. An idle socket
//! (nothing queued) is never stalled, whatever its age, and the clock of a stall starts no
//! earlier than the first sample that saw bytes queued, so a burst after a long idle period is
//! not mistaken for an old stall.
use serde::Serialize;

use crate::sample::Sample;

pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_CLOSE_WAIT: u8 = 8;

/// Why a socket is stalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// No ACKs at all; retransmits or probes go unanswered (peer gone, half-open path).
    PeerUnreachable,
    /// ACKs arrive but the peer's window is closed and nothing drains.
    PeerNotReading,
    /// The peer sent FIN; the socket sits in CLOSE_WAIT while its owner still holds it.
    PeerClosed,
}

impl Reason {
    pub const ALL: [Reason; 3] = [Self::PeerUnreachable, Self::PeerNotReading, Self::PeerClosed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PeerUnreachable => "peer_unreachable",
            Self::PeerNotReading => "peer_not_reading",
            Self::PeerClosed => "peer_closed",
        }
    }
}

/// An open stall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    /// When progress was last seen (the stall's onset), in sample clock milliseconds.
    pub since_ms: u64,
    pub reason: Reason,
    /// `total_retrans` at the last progress, to count retransmits during the stall.
    pub retrans_at_onset: u32,
    /// `segs_out` at the last progress, to count window probes during the stall.
    pub segs_out_at_onset: u32,
}

impl Stall {
    /// Retransmits since the stall began.
    pub fn retransmits(&self, s: &Sample) -> u32 {
        s.total_retrans.wrapping_sub(self.retrans_at_onset)
    }

    /// Zero-window probes sent since the stall began. While the peer's window is closed the
    /// sender transmits nothing but probes, so that is the segments sent since the onset;
    /// otherwise it is the kernel's count of unanswered probes.
    pub fn zero_window_probes(&self, s: &Sample) -> u32 {
        match self.reason {
            Reason::PeerNotReading => s.segs_out.wrapping_sub(self.segs_out_at_onset),
            _ => s.probes as u32,
        }
    }
}

/// What one observation changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    /// The socket just crossed the grace window.
    Stalled(Stall),
    /// A stall ended because progress resumed (or the queue drained).
    Recovered { stalled_for_ms: u64 },
}

/// `true` when the 64-bit acknowledged-bytes counter moved forward from `prev` to `now`,
/// in serial-number arithmetic (RFC 1982): a wrap past `u64::MAX` still counts as progress,
/// a step backwards (a different socket reusing the tuple) does not.
pub fn acked_advanced(prev: u64, now: u64) -> bool {
    let d = now.wrapping_sub(prev);
    d != 0 && d < (1 << 63)
}

/// Why a socket that is not progressing is stuck, from one sample.
pub fn classify(s: &Sample) -> Reason {
    if s.state == TCP_CLOSE_WAIT {
        return Reason::PeerClosed;
    }
    // Data in flight with RTO retransmits or backoff and no ACK for it: nobody answers.
    if s.unacked > 0 && (s.retransmits > 0 || s.backoff > 0) {
        return Reason::PeerUnreachable;
    }
    // Nothing in flight although bytes are queued: the peer's window is closed. Every ACK
    // resets the unanswered-probe count, so a peer that still ACKs shows 0 (1 for the instant
    // between a probe and its ACK); two or more unanswered probes mean the peer is gone.
    let window_closed = s.snd_wnd == Some(0) || (s.unacked == 0 && s.queued > 0);
    if window_closed {
        if s.probes >= 2 {
            return Reason::PeerUnreachable;
        }
        return Reason::PeerNotReading;
    }
    Reason::PeerUnreachable
}

/// Rounding of the kernel's ACK clock (jiffies) that `last_ack_recv_ms` may carry.
const ACK_CLOCK_SLACK_MS: u64 = 10;

/// Per-socket progress state, fed one sample per sweep.
#[derive(Debug, Clone)]
pub struct StallTracker {
    acked: u64,
    /// Last time progress was seen (or the queue was empty).
    progress_at: u64,
    retrans_at_progress: u32,
    segs_out_at_progress: u32,
    had_queue: bool,
    close_wait_since: Option<u64>,
    stall: Option<Stall>,
}

impl StallTracker {
    /// Starts from a first sample: nothing before it is known, so it counts as progress.
    pub fn new(first: &Sample) -> Self {
        Self {
            acked: first.bytes_acked,
            progress_at: first.at_ms,
            retrans_at_progress: first.total_retrans,
            segs_out_at_progress: first.segs_out,
            had_queue: first.queued > 0,
            close_wait_since: (first.state == TCP_CLOSE_WAIT).then_some(first.at_ms),
            stall: None,
        }
    }

    pub fn stall(&self) -> Option<&Stall> {
        self.stall.as_ref()
    }

    /// When this socket will have gone a full grace window without progress, if it is queueing
    /// without progress now: the sweep samples it again right then instead of up to one
    /// interval later.
    pub fn due_at(&self, grace_ms: u64) -> Option<u64> {
        (self.had_queue && self.stall.is_none() && self.close_wait_since.is_none())
            .then(|| self.progress_at + grace_ms)
            .or_else(|| self.close_wait_since.filter(|_| self.stall.is_none()).map(|t| t + grace_ms))
    }

    /// Milliseconds since the stall's onset, measured at `now_ms`.
    pub fn stalled_for_ms(&self, now_ms: u64) -> Option<u64> {
        self.stall.map(|s| now_ms.saturating_sub(s.since_ms))
    }

    pub fn observe(&mut self, s: &Sample, grace_ms: u64) -> Transition {
        let advanced = acked_advanced(self.acked, s.bytes_acked);
        if advanced {
            self.acked = s.bytes_acked;
        }

        // The peer closed its side; the owner has not noticed. Queue or not, the socket is
        // dead weight once it sits there for the grace window.
        if s.state == TCP_CLOSE_WAIT {
            let since = *self.close_wait_since.get_or_insert(s.at_ms);
            if self.stall.is_none() && s.at_ms.saturating_sub(since) >= grace_ms {
                let stall = Stall {
                    since_ms: since,
                    reason: Reason::PeerClosed,
                    retrans_at_onset: s.total_retrans,
                    segs_out_at_onset: s.segs_out,
                };
                self.stall = Some(stall);
                return Transition::Stalled(stall);
            }
            return Transition::None;
        }
        self.close_wait_since = None;

        if s.queued == 0 || advanced || !self.had_queue {
            // Drained, draining, or just started queueing: the clock restarts. When bytes were
            // acknowledged, they were acknowledged by an ACK that arrived no later than the
            // last ACK of all, `last_ack_recv_ms` ago (and no later than now): the clock starts
            // there, which is never before the real progress (so never early), and exact for
            // a peer that went silent right after its last ACK. 10 ms cover jiffy rounding.
            self.progress_at = if advanced && s.queued > 0 && self.had_queue {
                s.at_ms
                    .saturating_sub(u64::from(s.last_ack_recv_ms))
                    .saturating_add(ACK_CLOCK_SLACK_MS)
                    .min(s.at_ms)
            } else {
                s.at_ms
            };
            self.retrans_at_progress = s.total_retrans;
            self.segs_out_at_progress = s.segs_out;
            self.had_queue = s.queued > 0;
            if let Some(stall) = self.stall.take() {
                return Transition::Recovered {
                    stalled_for_ms: s.at_ms.saturating_sub(stall.since_ms),
                };
            }
            return Transition::None;
        }

        let reason = classify(s);
        match &mut self.stall {
            Some(stall) => {
                // Still stuck; the cause may change (a frozen peer that then dies).
                stall.reason = reason;
                Transition::None
            }
            None if s.at_ms.saturating_sub(self.progress_at) >= grace_ms => {
                let stall = Stall {
                    since_ms: self.progress_at,
                    reason,
                    retrans_at_onset: self.retrans_at_progress,
                    segs_out_at_onset: self.segs_out_at_progress,
                };
                self.stall = Some(stall);
                Transition::Stalled(stall)
            }
            None => Transition::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: u64 = 3_000;

    fn sample(at_ms: u64, queued: u32, acked: u64) -> Sample {
        Sample {
            at_ms,
            state: TCP_ESTABLISHED,
            queued,
            bytes_acked: acked,
            unacked: 1,
            snd_wnd: Some(65_535),
            ..Default::default()
        }
    }

    #[test]
    fn serial_arithmetic_handles_wrap() {
        assert!(acked_advanced(u64::MAX - 10, 5));
        assert!(acked_advanced(1, 2));
        assert!(!acked_advanced(7, 7));
        assert!(!acked_advanced(100, 50), "backwards is not progress");
    }

    #[test]
    fn queued_without_progress_for_grace_is_stalled() {
        let mut t = StallTracker::new(&sample(0, 0, 100));
        assert_eq!(t.observe(&sample(1_000, 5_000, 100), GRACE), Transition::None);
        assert_eq!(t.observe(&sample(3_999, 5_000, 100), GRACE), Transition::None);
        match t.observe(&sample(4_000, 5_000, 100), GRACE) {
            Transition::Stalled(s) => assert_eq!(s.since_ms, 1_000, "clock starts at first queued sample"),
            other => panic!("expected a stall, got {other:?}"),
        }
        assert_eq!(t.stalled_for_ms(5_000), Some(4_000));
        // Reported once, not on every sweep.
        assert_eq!(t.observe(&sample(5_000, 5_000, 100), GRACE), Transition::None);
    }

    #[test]
    fn progress_resets_the_clock_and_recovers() {
        let mut t = StallTracker::new(&sample(0, 10, 100));
        for at in (500..=2_500).step_by(500) {
            // Acked advances a little every sample: a slow reader, never a stall.
            assert_eq!(t.observe(&sample(at, 10_000, 100 + at), GRACE), Transition::None);
        }
        let mut t = StallTracker::new(&sample(0, 10, 100));
        assert!(matches!(t.observe(&sample(3_000, 10, 100), GRACE), Transition::Stalled(_)));
        assert_eq!(
            t.observe(&sample(4_500, 10, 101), GRACE),
            Transition::Recovered { stalled_for_ms: 4_500 }
        );
        assert!(t.stall().is_none());
    }

    #[test]
    fn progress_across_counter_wrap_is_progress() {
        let mut t = StallTracker::new(&sample(0, 10, u64::MAX - 1));
        assert_eq!(t.observe(&sample(2_000, 10, 3), GRACE), Transition::None);
        assert_eq!(t.observe(&sample(4_000, 10, 9), GRACE), Transition::None);
        assert!(matches!(t.observe(&sample(7_000, 10, 9), GRACE), Transition::Stalled(_)));
    }

    #[test]
    fn the_clock_starts_at_the_last_ack_never_before_it() {
        let mut t = StallTracker::new(&sample(0, 10, 100));
        // Progress seen at 1000 ms; the ACK that carried it came 700 ms earlier.
        let mut s = sample(1_000, 10, 200);
        s.last_ack_recv_ms = 700;
        assert_eq!(t.observe(&s, GRACE), Transition::None);
        assert_eq!(t.due_at(GRACE), Some(310 + GRACE));
        // Silent since: stalled at 300 + 10 + grace, not one sampling interval later.
        let mut s = sample(3_309, 10, 200);
        s.last_ack_recv_ms = 3_009;
        assert_eq!(t.observe(&s, GRACE), Transition::None);
        s.at_ms = 3_310;
        match t.observe(&s, GRACE) {
            Transition::Stalled(st) => assert_eq!(st.since_ms, 310),
            other => panic!("{other:?}"),
        }
        // With the last ACK just now, the clock starts at the sample itself.
        let mut t = StallTracker::new(&sample(0, 10, 100));
        let mut s = sample(1_000, 10, 150);
        s.last_ack_recv_ms = 0;
        t.observe(&s, GRACE);
        assert_eq!(t.due_at(GRACE), Some(1_000 + GRACE), "never later than the sample");
    }

    #[test]
    fn idle_socket_is_never_stalled() {
        let mut t = StallTracker::new(&sample(0, 0, 100));
        for at in (1_000..100_000).step_by(1_000) {
            assert_eq!(t.observe(&sample(at, 0, 100), GRACE), Transition::None);
        }
    }

    #[test]
    fn burst_after_long_idle_is_not_an_old_stall() {
        let mut t = StallTracker::new(&sample(0, 0, 100));
        t.observe(&sample(60_000, 0, 100), GRACE);
        assert_eq!(t.observe(&sample(61_000, 8_000, 100), GRACE), Transition::None);
        assert_eq!(t.observe(&sample(63_000, 8_000, 100), GRACE), Transition::None);
        assert!(matches!(t.observe(&sample(64_000, 8_000, 100), GRACE), Transition::Stalled(_)));
    }

    #[test]
    fn clock_going_backwards_never_fires() {
        let mut t = StallTracker::new(&sample(10_000, 10, 100));
        assert_eq!(t.observe(&sample(5_000, 10, 100), GRACE), Transition::None);
        assert_eq!(t.observe(&sample(u64::MIN, 10, 100), GRACE), Transition::None);
    }

    #[test]
    fn close_wait_for_grace_is_peer_closed_even_with_empty_queue() {
        let mut s = sample(0, 0, 100);
        s.state = TCP_CLOSE_WAIT;
        let mut t = StallTracker::new(&s);
        s.at_ms = 2_000;
        assert_eq!(t.observe(&s, GRACE), Transition::None);
        s.at_ms = 3_000;
        match t.observe(&s, GRACE) {
            Transition::Stalled(st) => assert_eq!(st.reason, Reason::PeerClosed),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stall_counts_retransmits_and_probes_since_onset() {
        let mut s = sample(0, 10, 0);
        s.total_retrans = 5;
        s.segs_out = 100;
        let mut t = StallTracker::new(&s);
        s.at_ms = 3_000;
        s.snd_wnd = Some(0);
        s.unacked = 0;
        s.segs_out = 104;
        let Transition::Stalled(st) = t.observe(&s, GRACE) else { panic!() };
        assert_eq!(st.reason, Reason::PeerNotReading);
        assert_eq!(st.zero_window_probes(&s), 4);
        assert_eq!(st.retransmits(&s), 0);
        s.total_retrans = 8;
        assert_eq!(st.retransmits(&s), 3);
    }

    #[test]
    fn classification() {
        let mut s = sample(0, 10, 0);
        s.snd_wnd = Some(0);
        s.unacked = 0;
        assert_eq!(classify(&s), Reason::PeerNotReading);
        // Old kernel without snd_wnd: nothing in flight although bytes are queued.
        s.snd_wnd = None;
        assert_eq!(classify(&s), Reason::PeerNotReading);
        // One probe in the instant before its ACK: still a live peer.
        s.probes = 1;
        s.backoff = 4;
        assert_eq!(classify(&s), Reason::PeerNotReading);
        // Zero window and the probes go unanswered: gone.
        s.probes = 3;
        assert_eq!(classify(&s), Reason::PeerUnreachable);
        let mut s = sample(0, 10, 0);
        s.retransmits = 2;
        s.backoff = 2;
        assert_eq!(classify(&s), Reason::PeerUnreachable);
        s.state = TCP_CLOSE_WAIT;
        assert_eq!(classify(&s), Reason::PeerClosed);
    }
}
