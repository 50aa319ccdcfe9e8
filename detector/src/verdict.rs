//! The stall verdict: pure arithmetic over samples of one socket's kernel state.
//!
//! A socket is *stuck* while bytes are queued (written and not yet acknowledged) or while it
//! sits in CLOSE_WAIT (the peer closed; the owner has not). It is *stalled* once it has been
//! stuck without progress for the grace window. Two separate questions, two rules:
//!
//! - **Progress** is acknowledged bytes (`tcpi_bytes_acked` moving forward), never ACK recency:
//!   a peer that ACKs zero-window probes keeps its ACKs fresh while nothing drains. In
//!   CLOSE_WAIT too: a half-closed peer still downloading is healthy.
//! - **Liveness** (the reason) is whether the peer still answers: with data in flight, whether
//!   an ACK came back after our last transmission (a silent peer lets one RTO after another pass
//!   unanswered), or, with the peer's window open, whether any came within a base RTO once the
//!   retransmission timer has fired (`tcpi_retransmits`: an expiry whose retransmission never
//!   left the host does not move `tcpi_last_data_sent`); with the window closed and nothing in
//!   flight, whether window probes are
//!   answered (every ACK resets the kernel's unanswered-probe count). Backoff alone proves
//!   nothing: the zero-window probe timer raises it for live peers too.
//!
//! **Onset.** The clock of a stall starts at the latest moment the kernel's own clocks allow
//! for its beginning, never earlier (so the age shown is never more than the truth, and a stall
//! is never reported early). Each sample gives upper bounds for the last progress: the sample's
//! own time; the last ACK received (`tcpi_last_ack_recv`: progress only comes with an ACK); and,
//! when the window is closed with nothing in flight, the last data segment sent plus one RTO
//! (`tcpi_last_data_sent`, `tcpi_rto`: window probes carry no data, and that segment's ACK came
//! within an RTO of it or the kernel would have retransmitted it). The stuck period itself must
//! have begun: a sample that saw nothing stuck bounds it from below, so after one the clock
//! starts no earlier than the next sample, unless data in flight proves the queue has been
//! non-empty since its last transmission. With no sample before (a restart, a socket found
//! late), the kernel's clocks alone decide: an old stall is listed at once, with its age.
use serde::Serialize;

use crate::sample::Sample;

mod trickle;
use trickle::TrickleMeter;
pub use trickle::{Drain, TrickleRule, WIDE_WINDOW};

use detector_common::{TCP_CLOSE, TCP_CLOSING, TCP_FIN_WAIT1, TCP_LAST_ACK};
pub use detector_common::{TCP_CLOSE_WAIT, TCP_ESTABLISHED};

/// Why a socket is stalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Nothing answers: retransmits or window probes go unanswered (peer gone, path broken).
    PeerUnreachable,
    /// The peer answers but takes nothing: its window stays closed and nothing drains.
    PeerNotReading,
    /// The peer closed its side and bytes the owner queued since do not drain: the owner holds
    /// a CLOSE_WAIT socket it still writes to, to a peer that no longer reads.
    PeerClosed,
    /// The peer closed its side, nothing is queued, and the owner holds the CLOSE_WAIT socket
    /// longer than `--close-wait-grace`: a leak suspect, not a dead connection (a client that
    /// half-closed after its request still waits for the answer). Reported and counted, never
    /// acted on unless a selector names this reason.
    CloseWaitIdle,
    /// The peer takes a few bytes now and then, never letting a grace window pass without
    /// progress: bytes queued the whole trickle window, its window never open wide, and what
    /// drained under the floor (see `trickle`). Reported and counted, never acted on unless a
    /// selector names this reason.
    PeerTrickling,
}

impl Reason {
    pub const ALL: [Reason; 5] = [Self::PeerUnreachable, Self::PeerNotReading, Self::PeerClosed, Self::CloseWaitIdle, Self::PeerTrickling];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PeerUnreachable => "peer_unreachable",
            Self::PeerNotReading => "peer_not_reading",
            Self::PeerClosed => "peer_closed",
            Self::CloseWaitIdle => "close_wait_idle",
            Self::PeerTrickling => "peer_trickling",
        }
    }

    /// Whether a selector that names no reason acts on it: not for a leak suspect, whose
    /// connection may still be waiting for its answer, nor for a trickling peer, which is slow,
    /// not gone.
    pub fn acted_on_unnamed(self) -> bool {
        !matches!(self, Self::CloseWaitIdle | Self::PeerTrickling)
    }
}

/// How long a socket must be stuck, without progress, to be stalled: the grace window, and the
/// longer one of a CLOSE_WAIT socket with nothing queued (`--close-wait-grace`); and when a
/// socket that progresses trickles (`--trickle-window`, `--trickle-floor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grace {
    pub stuck_ms: u64,
    pub close_wait_idle_ms: u64,
    pub trickle: TrickleRule,
}

impl Grace {
    /// The grace of a socket sampled as `s`.
    pub fn of(&self, close_wait_idle: bool) -> u64 {
        if close_wait_idle { self.close_wait_idle_ms } else { self.stuck_ms }
    }
}

/// One grace for every stuck socket (tests, and `detector scan`'s single window).
impl From<u64> for Grace {
    fn from(ms: u64) -> Grace {
        Grace { stuck_ms: ms, close_wait_idle_ms: ms, trickle: TrickleRule::default() }
    }
}

impl std::str::FromStr for Reason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not a reason; use peer_unreachable, peer_not_reading, peer_closed, close_wait_idle or peer_trickling"))
    }
}

/// What fixes the onset of a stall: the observation or kernel clock that proves no progress
/// since then (`detector explain` shows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnsetProof {
    /// The first sample that saw the socket stuck (no clock proves an earlier start).
    FirstSample,
    /// The last ACK received (`tcpi_last_ack_recv`): progress only comes with an ACK.
    LastAck,
    /// The last data segment sent plus one RTO (`tcpi_last_data_sent` + `tcpi_rto`), with the
    /// window closed and nothing in flight.
    LastDataPlusRto,
    /// The last ACK that acknowledged data (`tcp_sock.delivered_mstamp`, read by the kernel
    /// walk), with the window closed and nothing in flight: a peer that never shrinks its
    /// window can only close it with an ACK for data.
    LastDelivery,
    /// Data in flight since its last transmission (`tcpi_last_data_sent`): the queue has been
    /// non-empty since then.
    InFlightSince,
    /// A trickle: bytes queued at every sample since then, the peer's window never open wide,
    /// and under the floor drained (`drain` has the figures).
    DrainRate,
}

impl OnsetProof {
    pub fn describe(self) -> &'static str {
        match self {
            Self::FirstSample => "the first sample that saw it stuck",
            Self::LastAck => "the last ACK received (tcpi_last_ack_recv)",
            Self::LastDataPlusRto => "the last data segment sent plus one RTO (tcpi_last_data_sent + tcpi_rto)",
            Self::LastDelivery => "the last ACK that acknowledged data (tcp_sock.delivered_mstamp), the window closed since",
            Self::InFlightSince => "unacknowledged data in flight since (tcpi_last_data_sent)",
            Self::DrainRate => "bytes queued at every sample since, the peer's window never open wide, and under the trickle floor drained",
        }
    }
}

/// An open stall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    /// The stall's onset, in sample clock milliseconds.
    pub since_ms: u64,
    pub proof: OnsetProof,
    pub reason: Reason,
    /// `total_retrans` as last sampled before the onset, to count retransmits since.
    pub retrans_at_onset: u32,
    /// `segs_out` at the first sample of the stall that saw the window closed with nothing in
    /// flight, to count window probes since (the segments before it may be data).
    pub segs_out_at_closed: Option<u32>,
    /// A trickle's figures: what drained over the trickle window (the last sample's).
    pub drain: Option<Drain>,
}

impl Stall {
    /// Retransmits since the stall began: at least the consecutive RTO retransmits since the
    /// last progress (`tcpi_retransmits`), which the kernel counts itself.
    pub fn retransmits(&self, s: &Sample) -> u32 {
        s.total_retrans.wrapping_sub(self.retrans_at_onset).max(u32::from(s.retransmits))
    }

    /// Zero-window probes sent since the stall began, at least. While the peer's window is
    /// closed the sender transmits nothing but probes, so that is the segments sent since a
    /// sample first saw it closed (the probes between the onset and that sample are not
    /// counted: the segments before it may be data); otherwise it is the kernel's count of
    /// unanswered probes.
    pub fn zero_window_probes(&self, s: &Sample) -> u32 {
        match (self.reason, self.segs_out_at_closed) {
            (Reason::PeerNotReading, Some(closed)) if s.unacked == 0 => s.segs_out.wrapping_sub(closed),
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
    /// A stall ended because progress resumed (or nothing is stuck any more).
    Recovered {
        stalled_for_ms: u64,
    },
}

/// `true` when the 64-bit acknowledged-bytes counter moved forward from `prev` to `now`,
/// in serial-number arithmetic (RFC 1982): a wrap past `u64::MAX` still counts as progress,
/// a step backwards (a different socket reusing the tuple) does not.
pub fn acked_advanced(prev: u64, now: u64) -> bool {
    let d = now.wrapping_sub(prev);
    d != 0 && d < (1 << 63)
}

/// TCP states in which a socket can be stuck: the application can still queue bytes, or its
/// queued bytes (and FIN) still wait for the peer, or the peer's FIN waits for the owner.
pub fn judged_state(state: u8) -> bool {
    matches!(state, TCP_ESTABLISHED | TCP_CLOSE_WAIT | TCP_FIN_WAIT1 | TCP_CLOSING | TCP_LAST_ACK)
}

/// Bytes queued, or the peer gone and the owner holding on.
pub fn stuck(s: &Sample) -> bool {
    // A closed socket's queue is purged, whatever gap its sequence numbers still show.
    (s.queued > 0 && s.state != TCP_CLOSE) || s.state == TCP_CLOSE_WAIT
}

/// The kernel's minimum RTO (`TCP_RTO_MIN`), a floor for the RTO a sample reports.
const RTO_MIN_MS: u64 = 200;
/// Rounding of the kernel's jiffies clocks that "ms ago" values may carry.
const CLOCK_SLACK_MS: u64 = 10;

/// The window is closed and nothing is in flight: the sender only sends window probes.
fn probing_closed_window(s: &Sample) -> bool {
    s.queued > 0 && s.unacked == 0 && s.snd_wnd.is_none_or(|w| w == 0)
}

/// Whether the peer still answers (see the module doc).
pub fn peer_answers(s: &Sample) -> bool {
    if s.unacked > 0 {
        // RTO backoff doubles the timeout for each retransmit: the base is what an answer has.
        let base = (u64::from(s.rto_ms) >> s.backoff.min(16)).max(RTO_MIN_MS);
        let ack_ago = u64::from(s.last_ack_recv_ms);
        // Silent: the last ACK came at least one base RTO before our last transmission.
        let unanswered_send = ack_ago >= u64::from(s.last_data_sent_ms) + base;
        // Or: the RTO fired (the window open, so not as a zero-window probe) and no ACK came
        // for a base RTO. A retransmission the host could not send (its original still in a
        // local queue, e.g. waiting for a neighbour that no longer answers ARP) counts as an
        // expiry but does not move the last-data-sent clock, so that clock alone would make a
        // dead peer look like one that answers.
        let unanswered_timeouts = s.retransmits > 0 && s.snd_wnd.is_some_and(|w| w > 0) && ack_ago >= base;
        !(unanswered_send || unanswered_timeouts)
    } else {
        // Every ACK resets the unanswered-probe count: a peer that answers shows 0 (1 in the
        // instant between a probe and its ACK).
        s.probes < 2
    }
}

/// The peer's FIN is in, nothing is queued: the socket waits on its owner alone.
pub fn close_wait_idle(s: &Sample) -> bool {
    s.state == TCP_CLOSE_WAIT && s.queued == 0
}

/// Why a socket that is not progressing is stuck, from one sample.
pub fn classify(s: &Sample) -> Reason {
    if close_wait_idle(s) {
        Reason::CloseWaitIdle
    } else if s.state == TCP_CLOSE_WAIT {
        Reason::PeerClosed
    } else if peer_answers(s) {
        Reason::PeerNotReading
    } else {
        Reason::PeerUnreachable
    }
}

/// "`ms_ago` before `at`", in sample clock milliseconds.
fn ago(at: u64, ms_ago: u32) -> u64 {
    at.saturating_sub(u64::from(ms_ago))
}

/// The latest moment the last progress can have happened, from one sample's clocks.
///
/// With the window closed and nothing in flight, the peer stopped accepting at the latest:
/// - at the last ACK that acknowledged data, when the kernel walk read its time: the sender's
///   right edge (`snd_una + snd_wnd`) never moves back (Linux never shrinks a window it offered,
///   unless `tcp_shrink_window` is set) and `snd_una` has not moved since that ACK, so the
///   window has been closed since. The last ACK received can only follow it (only the rounding
///   of its jiffies can put it first), so that ACK alone is the bound;
/// - otherwise (sock_diag has no such clock) within one RTO of the last data segment, whose ACK
///   came by then (or the segment would have been sent again).
fn progress_bound(s: &Sample) -> (u64, OnsetProof) {
    let closed = probing_closed_window(s);
    if closed && let Some(d) = s.last_delivery_ms {
        return ((ago(s.at_ms, d) + CLOCK_SLACK_MS).min(s.at_ms), OnsetProof::LastDelivery);
    }
    let mut b = (s.at_ms, OnsetProof::FirstSample);
    let ack = (ago(s.at_ms, s.last_ack_recv_ms) + CLOCK_SLACK_MS).min(s.at_ms);
    if ack < b.0 {
        b = (ack, OnsetProof::LastAck);
    }
    if closed {
        let rto = u64::from(s.rto_ms).max(RTO_MIN_MS);
        let data = (ago(s.at_ms, s.last_data_sent_ms) + rto + CLOCK_SLACK_MS).min(s.at_ms);
        if data < b.0 {
            b = (data, OnsetProof::LastDataPlusRto);
        }
    }
    b
}

/// Per-socket progress state, fed one sample per pass.
#[derive(Debug, Clone)]
pub struct SocketVerdict {
    acked: u64,
    /// The previous sample, if any: its time, and whether it saw the socket stuck.
    prev: Option<(u64, bool)>,
    /// The stuck period began no later than this (it was seen not stuck before), and why.
    floor: (u64, OnsetProof),
    /// The current stuck period's onset: an upper bound, with what proves it.
    onset: Option<(u64, OnsetProof)>,
    retrans_prev: u32,
    retrans_at_onset: u32,
    /// `segs_out` at the first sample of this stuck period that saw a closed window.
    segs_out_at_closed: Option<u32>,
    /// Whether the last sample was a CLOSE_WAIT socket with nothing queued (its own grace).
    close_wait_idle: bool,
    stall: Option<Stall>,
    /// What drained over the trickle window, for a socket that progresses too slowly.
    meter: TrickleMeter,
}

impl SocketVerdict {
    pub fn new() -> Self {
        Self {
            acked: 0,
            prev: None,
            floor: (0, OnsetProof::FirstSample),
            onset: None,
            retrans_prev: 0,
            retrans_at_onset: 0,
            segs_out_at_closed: None,
            close_wait_idle: false,
            stall: None,
            meter: TrickleMeter::default(),
        }
    }

    pub fn stall(&self) -> Option<&Stall> {
        self.stall.as_ref()
    }

    /// The current stuck period's onset and its proof (stalled or not yet).
    pub fn onset(&self) -> Option<(u64, OnsetProof)> {
        self.onset
    }

    /// When this socket will have been stuck for a full grace window, if it is stuck and not
    /// stalled yet: the sweep samples it again right then instead of up to one interval later.
    pub fn due_at(&self, grace: impl Into<Grace>) -> Option<u64> {
        let grace = grace.into().of(self.close_wait_idle);
        self.onset.filter(|_| self.stall.is_none()).map(|(t, _)| t + grace)
    }

    /// Milliseconds since the stall's onset, measured at `now_ms`.
    pub fn stalled_for_ms(&self, now_ms: u64) -> Option<u64> {
        self.stall.map(|s| now_ms.saturating_sub(s.since_ms))
    }

    pub fn observe(&mut self, s: &Sample, grace: impl Into<Grace>) -> Transition {
        let grace = grace.into();
        let grace_ms = grace.of(close_wait_idle(s));
        let drain = self.meter.observe(s, grace.trickle);
        // Bytes queued on a CLOSE_WAIT socket that had none (the answer a half-closed client
        // waited for): a stuck period of another kind, which began no earlier than they did.
        let answered = std::mem::replace(&mut self.close_wait_idle, close_wait_idle(s)) && !close_wait_idle(s);
        let first = self.prev.is_none();
        let advanced = !first && acked_advanced(self.acked, s.bytes_acked);
        if first || advanced {
            self.acked = s.bytes_acked;
        }
        let prev = self.prev.replace((s.at_ms, stuck(s)));
        let retrans_prev = std::mem::replace(&mut self.retrans_prev, s.total_retrans);
        if !stuck(s) {
            self.onset = None;
            return match self.stall.take() {
                Some(st) => Transition::Recovered { stalled_for_ms: s.at_ms.saturating_sub(st.since_ms) },
                None => Transition::None,
            };
        }
        match prev {
            Some((prev_at, false)) => self.floor = stuck_since_bound(s, prev_at),
            Some((prev_at, true)) if answered => self.floor = stuck_since_bound(s, prev_at),
            _ => {}
        }
        let bound = progress_bound(s);
        let candidate = if self.floor.0 > bound.0 { self.floor } else { bound };
        let new_period = advanced || answered || self.onset.is_none();
        self.onset = Some(match self.onset {
            Some(o) if !new_period => {
                if candidate.0 < o.0 {
                    candidate
                } else {
                    o
                }
            }
            _ => candidate,
        });
        if new_period {
            // Retransmits since the onset count from the sample before it (never missing any).
            self.retrans_at_onset = if first { s.total_retrans.wrapping_sub(u32::from(s.retransmits)) } else { retrans_prev };
            self.segs_out_at_closed = None;
        }
        if probing_closed_window(s) && self.segs_out_at_closed.is_none() {
            self.segs_out_at_closed = Some(s.segs_out);
        }
        // Progress ends a stall; so does the owner answering a leak suspect (its bytes are
        // judged from now on, with the grace of queued bytes).
        if (advanced || answered)
            && let Some(st) = self.stall.take()
        {
            // Progress under the trickle floor does not end it: the stall goes on as a trickle.
            if advanced
                && !answered
                && let Some(d) = drain.filter(|d| d.bytes > 0)
            {
                self.stall = Some(Stall { reason: Reason::PeerTrickling, drain: Some(d), ..st });
                return Transition::None;
            }
            return Transition::Recovered { stalled_for_ms: s.at_ms.saturating_sub(st.since_ms) };
        }
        self.judge(s, grace_ms, drain)
    }

    fn judge(&mut self, s: &Sample, grace_ms: u64, drain: Option<Drain>) -> Transition {
        let Some((since, proof)) = self.onset else { return Transition::None };
        let no_progress_for_grace = s.at_ms.saturating_sub(since) >= grace_ms;
        // A trickle drains something: a window with nothing drained is a stall of the grace rule.
        let drain = drain.filter(|d| d.bytes > 0);
        match (&mut self.stall, drain) {
            (Some(stall), Some(d)) => {
                // Proven over the window: gaps between its few bytes do not make it another
                // stall, nor end it.
                (stall.reason, stall.drain) = (Reason::PeerTrickling, Some(d));
                Transition::None
            }
            (Some(stall), None) if stall.reason == Reason::PeerTrickling && !no_progress_for_grace => {
                // Drained above the floor over the window, or its window opened wide.
                let since = stall.since_ms;
                self.stall = None;
                Transition::Recovered { stalled_for_ms: s.at_ms.saturating_sub(since) }
            }
            (Some(stall), None) => {
                // Still stuck; the cause may change (a frozen peer that then dies, a trickle
                // that stopped a window ago).
                stall.reason = classify(s);
                stall.segs_out_at_closed = self.segs_out_at_closed;
                stall.drain = None;
                Transition::None
            }
            (None, _) if no_progress_for_grace => self.open(Stall {
                since_ms: since,
                proof,
                reason: classify(s),
                retrans_at_onset: self.retrans_at_onset,
                segs_out_at_closed: self.segs_out_at_closed,
                drain: None,
            }),
            (None, Some(d)) => self.open(Stall {
                since_ms: self.meter.since().unwrap_or(since),
                proof: OnsetProof::DrainRate,
                reason: Reason::PeerTrickling,
                retrans_at_onset: self.retrans_at_onset,
                segs_out_at_closed: None,
                drain: Some(d),
            }),
            (None, None) => Transition::None,
        }
    }

    fn open(&mut self, stall: Stall) -> Transition {
        self.stall = Some(stall);
        Transition::Stalled(stall)
    }
}

impl Default for SocketVerdict {
    fn default() -> Self {
        Self::new()
    }
}

/// The latest moment a stuck period can have begun, given that the sample at `prev_at` saw the
/// socket not stuck:
/// - window closed, nothing in flight: when the peer stopped accepting (`progress_bound`);
///   bytes queued since could never go out, so the connection has been stuck
///   since then whenever the application happened to write;
/// - data in flight: its oldest byte's first transmission, which came after the queue was last
///   empty and at least one (doubling) RTO before each retransmit of it;
/// - CLOSE_WAIT with nothing queued: since the peer's FIN, which came with an ACK;
/// - otherwise this sample.
///
/// Never before `prev_at`, which saw nothing stuck, except with the window closed (the
/// judgement above).
fn stuck_since_bound(s: &Sample, prev_at: u64) -> (u64, OnsetProof) {
    if probing_closed_window(s) {
        return progress_bound(s);
    }
    let (t, proof) = if s.unacked > 0 {
        let n = s.retransmits.min(s.backoff).min(16);
        let base = (u64::from(s.rto_ms) >> s.backoff.min(16)).max(1);
        (ago(s.at_ms, s.last_data_sent_ms).saturating_sub(base * ((1 << n) - 1)), OnsetProof::InFlightSince)
    } else if s.state == TCP_CLOSE_WAIT && s.queued == 0 {
        (ago(s.at_ms, s.last_ack_recv_ms) + CLOCK_SLACK_MS, OnsetProof::LastAck)
    } else {
        (s.at_ms, OnsetProof::FirstSample)
    };
    (t.clamp(prev_at, s.at_ms), proof)
}

#[cfg(test)]
mod tests;
