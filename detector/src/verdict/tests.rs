use super::*;

const GRACE: u64 = 3_000;

/// A sample at `at_ms` with `queued` bytes and `acked` acknowledged, a peer that answers (its
/// last ACK just now), the window open and something in flight.
fn sample(at_ms: u64, queued: u32, acked: u64) -> Sample {
    Sample { at_ms, state: TCP_ESTABLISHED, queued, bytes_acked: acked, unacked: 1, snd_wnd: Some(65_535), rto_ms: 204, ..Default::default() }
}

/// The window closed, nothing in flight, probes answered; the last data went out `data_ago`.
fn zero_window(at_ms: u64, acked: u64, data_ago: u32) -> Sample {
    Sample { unacked: 0, snd_wnd: Some(0), last_data_sent_ms: data_ago, backoff: 6, ..sample(at_ms, 50_000, acked) }
}

fn stalled(t: Transition) -> Stall {
    match t {
        Transition::Stalled(s) => s,
        other => panic!("expected a stall, got {other:?}"),
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
fn queued_without_progress_for_grace_is_stalled_once() {
    let mut t = SocketVerdict::new();
    t.observe(&sample(0, 0, 100), GRACE);
    assert_eq!(t.observe(&sample(1_000, 5_000, 100), GRACE), Transition::None);
    assert_eq!(t.observe(&sample(3_999, 5_000, 100), GRACE), Transition::None);
    let st = stalled(t.observe(&sample(4_000, 5_000, 100), GRACE));
    assert_eq!((st.since_ms, st.proof), (1_000, OnsetProof::FirstSample), "the queue was empty at 0: no earlier start");
    assert_eq!(t.stalled_for_ms(5_000), Some(4_000));
    assert_eq!(t.observe(&sample(5_000, 5_000, 100), GRACE), Transition::None, "reported once, not on every pass");
}

#[test]
fn progress_resets_the_clock_and_recovers() {
    let mut t = SocketVerdict::new();
    t.observe(&sample(0, 10, 100), GRACE);
    for at in (500..=6_000).step_by(500) {
        // Acked advances a little every sample: a slow reader, never a stall.
        assert_eq!(t.observe(&sample(at, 10_000, 100 + at), GRACE), Transition::None);
    }
    let mut t = SocketVerdict::new();
    t.observe(&sample(0, 0, 100), GRACE);
    t.observe(&sample(1, 10, 100), GRACE);
    assert!(matches!(t.observe(&sample(3_001, 10, 100), GRACE), Transition::Stalled(_)));
    assert_eq!(t.observe(&sample(4_500, 10, 101), GRACE), Transition::Recovered { stalled_for_ms: 4_499 });
    assert!(t.stall().is_none());
}

#[test]
fn progress_across_counter_wrap_is_progress() {
    let mut t = SocketVerdict::new();
    t.observe(&sample(0, 0, u64::MAX - 1), GRACE);
    t.observe(&sample(1, 10, u64::MAX - 1), GRACE);
    assert_eq!(t.observe(&sample(2_000, 10, 3), GRACE), Transition::None);
    assert_eq!(t.observe(&sample(4_000, 10, 9), GRACE), Transition::None);
    assert!(matches!(t.observe(&sample(7_000, 10, 9), GRACE), Transition::Stalled(_)));
}

#[test]
fn the_clock_starts_at_the_last_ack_never_before_it() {
    let mut t = SocketVerdict::new();
    t.observe(&sample(0, 10, 100), GRACE);
    // Progress seen at 1000 ms; the ACK that carried it came 700 ms earlier, none since.
    let mut s = sample(1_000, 10, 200);
    s.last_ack_recv_ms = 700;
    s.last_data_sent_ms = 700;
    assert_eq!(t.observe(&s, GRACE), Transition::None);
    assert_eq!(t.due_at(GRACE), Some(310 + GRACE));
    // Silent since: stalled at 300 + 10 + grace, not one sampling interval later.
    let mut s = sample(3_309, 10, 200);
    s.last_ack_recv_ms = 3_009;
    assert_eq!(t.observe(&s, GRACE), Transition::None);
    s.at_ms = 3_310;
    let st = stalled(t.observe(&s, GRACE));
    assert_eq!((st.since_ms, st.proof), (310, OnsetProof::LastAck));
}

#[test]
fn idle_socket_is_never_stalled() {
    let mut t = SocketVerdict::new();
    for at in (0..100_000).step_by(1_000) {
        let mut s = sample(at, 0, 100);
        s.last_ack_recv_ms = at as u32;
        assert_eq!(t.observe(&s, GRACE), Transition::None);
    }
}

#[test]
fn burst_after_long_idle_is_not_an_old_stall() {
    let mut t = SocketVerdict::new();
    t.observe(&sample(0, 0, 100), GRACE);
    let mut idle = sample(60_000, 0, 100);
    idle.last_ack_recv_ms = 60_000;
    t.observe(&idle, GRACE);
    // Bytes go out to a peer that ACKs them: its last ACK 60 s ago proves nothing about them,
    // the sample at 60 s saw nothing queued.
    let mut burst = sample(61_000, 8_000, 100);
    (burst.last_ack_recv_ms, burst.last_data_sent_ms) = (61_000, 5);
    assert_eq!(t.observe(&burst, GRACE), Transition::None);
    assert_eq!(t.onset(), Some((60_995, OnsetProof::InFlightSince)), "queued since its first transmission");
    burst.at_ms = 63_994;
    assert_eq!(t.observe(&burst, GRACE), Transition::None);
    burst.at_ms = 63_995;
    assert!(matches!(t.observe(&burst, GRACE), Transition::Stalled(_)));
}

#[test]
fn writing_into_a_window_closed_long_ago_is_dated_from_the_closing() {
    let mut t = SocketVerdict::new();
    let mut idle = zero_window(60_000, 100, 60_000);
    idle.queued = 0;
    t.observe(&idle, GRACE);
    // The peer has accepted nothing since its window closed ~60 s ago; what the application
    // writes now cannot go out: stalled at once, dated from the closing.
    let st = stalled(t.observe(&zero_window(61_000, 100, 61_000), GRACE));
    assert_eq!((st.since_ms, st.proof, st.reason), (204 + 10, OnsetProof::LastDataPlusRto, Reason::PeerNotReading));
}

#[test]
fn a_frozen_reader_whose_queue_was_empty_at_the_last_sample_is_dated_from_its_last_data() {
    // A fast reader (queue empty at the sample before) freezes; its window closes at once.
    let mut t = SocketVerdict::new();
    t.observe(&sample(0, 0, 100), GRACE);
    let s = zero_window(1_000, 5_000, 750);
    assert_eq!(t.observe(&s, GRACE), Transition::None);
    assert_eq!(t.onset(), Some((250 + 204 + 10, OnsetProof::LastDataPlusRto)), "not the sample's own time");
}

#[test]
fn a_closed_window_walked_in_the_kernel_is_dated_from_its_last_delivery() {
    // A frozen reader: its kernel acknowledged the last data 750 ms before the sample, with the
    // window closed; its probes are answered since (the last ACK just now).
    let mut t = SocketVerdict::new();
    t.observe(&sample(0, 0, 100), GRACE);
    let s = Sample { last_delivery_ms: Some(749), ..zero_window(1_000, 5_000, 750) };
    assert_eq!(t.observe(&s, GRACE), Transition::None);
    assert_eq!(t.onset(), Some((251 + 10, OnsetProof::LastDelivery)), "its delivery, not one RTO after the last data");
    assert_eq!(t.due_at(GRACE), Some(3_261));
    let st = stalled(t.observe(&Sample { at_ms: 3_261, last_delivery_ms: Some(3_010), ..s }, GRACE));
    assert_eq!((st.since_ms, st.reason), (261, Reason::PeerNotReading));
}

#[test]
fn a_last_delivery_after_the_last_data_plus_rto_is_the_later_bound() {
    // The last segment's retransmission could not leave (its original still in a local
    // queue), and its ACK came 2 s after it: the window closed then, not one RTO after.
    let s = Sample { last_delivery_ms: Some(3_000), ..zero_window(10_000, 5_000, 5_000) };
    assert_eq!(progress_bound(&s), (10_000 - 3_000 + 10, OnsetProof::LastDelivery));
    // Without the kernel walk's clock (sock_diag): the last data plus one RTO.
    assert_eq!(progress_bound(&Sample { last_delivery_ms: None, ..s }), (10_000 - 5_000 + 204 + 10, OnsetProof::LastDataPlusRto));
}

#[test]
fn the_last_delivery_is_not_undercut_by_the_rounding_of_the_last_ack() {
    // The delivery was the last ACK: its jiffies stamp, rounded, reads 2 ms older than the
    // delivery's microsecond clock. The delivery still dates the onset (the label is the
    // same on every pass, and it is the bound the kernel's clocks prove).
    let s = Sample { last_delivery_ms: Some(700), last_ack_recv_ms: 702, ..zero_window(10_000, 5_000, 710) };
    assert_eq!(progress_bound(&s), (10_000 - 700 + 10, OnsetProof::LastDelivery));
    // sock_diag: the last ACK, earlier than the last data plus one RTO.
    assert_eq!(progress_bound(&Sample { last_delivery_ms: None, ..s }), (10_000 - 702 + 10, OnsetProof::LastAck));
}

#[test]
fn the_last_delivery_bounds_only_a_closed_window_with_nothing_in_flight() {
    // Data in flight to a peer that answers: the last delivery proves nothing about the bytes
    // queued since; the last ACK does.
    let mut s = Sample { last_delivery_ms: Some(9_000), last_ack_recv_ms: 20, ..sample(10_000, 5_000, 100) };
    assert_eq!(progress_bound(&s), (10_000 - 20 + 10, OnsetProof::LastAck));
    // The window open (a sender limited by its own buffer, say): likewise.
    s.unacked = 0;
    assert_eq!(progress_bound(&s), (10_000 - 20 + 10, OnsetProof::LastAck));
}

#[test]
fn clock_going_backwards_never_fires() {
    let mut t = SocketVerdict::new();
    t.observe(&sample(10_000, 10, 100), GRACE);
    assert_eq!(t.observe(&sample(5_000, 10, 100), GRACE), Transition::None);
    assert_eq!(t.observe(&sample(u64::MIN, 10, 100), GRACE), Transition::None);
}

#[test]
fn an_old_non_reading_stall_seen_first_is_stalled_at_once_with_its_age() {
    // The agent (re)started: its first sample of a socket whose window closed ~8 s ago.
    let mut t = SocketVerdict::new();
    let s = zero_window(100_000, 5_000, 8_000);
    let st = stalled(t.observe(&s, GRACE));
    assert_eq!(st.proof, OnsetProof::LastDataPlusRto);
    assert_eq!(st.since_ms, 100_000 - 8_000 + 204 + 10, "last data + one RTO + clock rounding");
    assert_eq!(st.reason, Reason::PeerNotReading);
}

#[test]
fn an_old_unreachable_stall_seen_first_is_stalled_at_once_from_its_last_ack() {
    let mut t = SocketVerdict::new();
    let mut s = sample(100_000, 40_000, 5_000);
    (s.last_ack_recv_ms, s.last_data_sent_ms, s.retransmits, s.backoff, s.rto_ms, s.total_retrans) = (9_000, 1_500, 5, 5, 6_528, 9);
    let st = stalled(t.observe(&s, GRACE));
    assert_eq!((st.since_ms, st.proof, st.reason), (91_010, OnsetProof::LastAck, Reason::PeerUnreachable));
    assert_eq!(st.retransmits(&s), 5, "the kernel's consecutive retransmits since the last progress");
}

#[test]
fn a_fresh_stream_seen_first_is_not_an_old_stall() {
    let mut t = SocketVerdict::new();
    // Bytes in flight and ACKs arriving: nothing proves an earlier start than now.
    assert_eq!(t.observe(&sample(50_000, 100_000, 7), GRACE), Transition::None);
    assert_eq!(t.onset(), Some((50_000, OnsetProof::FirstSample)));
}

#[test]
fn close_wait_held_idle_is_a_leak_suspect_from_the_fin() {
    let mut t = SocketVerdict::new();
    t.observe(&sample(0, 0, 100), GRACE);
    // The FIN came 400 ms before this sample, with the last ACK.
    let mut s = Sample { state: TCP_CLOSE_WAIT, unacked: 0, last_ack_recv_ms: 400, ..sample(1_000, 0, 100) };
    assert_eq!(t.observe(&s, GRACE), Transition::None);
    assert_eq!(t.onset(), Some((610, OnsetProof::LastAck)));
    s.at_ms = 3_609;
    s.last_ack_recv_ms = 3_009;
    assert_eq!(t.observe(&s, GRACE), Transition::None);
    s.at_ms = 3_610;
    let st = stalled(t.observe(&s, GRACE));
    assert_eq!((st.reason, st.since_ms), (Reason::CloseWaitIdle, 610));
}

/// The grace of a leak suspect (`--close-wait-grace`, 5 minutes by default) is its own: a
/// half-closed client waiting for its answer longer than the stall grace is not reported.
const CLOSE_WAIT_GRACE: Grace = Grace { stuck_ms: GRACE, close_wait_idle_ms: 300_000, trickle: TrickleRule::DEFAULT };

#[test]
fn a_half_closed_client_waiting_for_its_answer_longer_than_grace_is_not_stalled() {
    let mut t = SocketVerdict::new();
    let mut s = Sample { state: TCP_CLOSE_WAIT, unacked: 0, last_ack_recv_ms: 0, ..sample(0, 0, 100) };
    for at in (0..299_000).step_by(1_000) {
        (s.at_ms, s.last_ack_recv_ms) = (at, at as u32);
        assert_eq!(t.observe(&s, CLOSE_WAIT_GRACE), Transition::None, "reported at {at} ms");
    }
    assert_eq!(t.due_at(CLOSE_WAIT_GRACE), Some(300_000), "sampled again when the leak grace ends");
    (s.at_ms, s.last_ack_recv_ms) = (300_000, 300_000);
    assert_eq!(stalled(t.observe(&s, CLOSE_WAIT_GRACE)).reason, Reason::CloseWaitIdle);
}

#[test]
fn an_answer_queued_after_a_half_close_is_judged_from_when_it_was_queued() {
    // The client half-closed at 0 and waited 40 s (past the stall grace of 3 s); the server
    // then writes its answer: its bytes are a stuck period of their own, never dated from the
    // FIN, so the answer on its way is not a stall.
    let mut t = SocketVerdict::new();
    let idle = Sample { state: TCP_CLOSE_WAIT, unacked: 0, last_ack_recv_ms: 0, ..sample(0, 0, 100) };
    for at in (0..40_000).step_by(1_000) {
        assert_eq!(t.observe(&Sample { at_ms: at, last_ack_recv_ms: at as u32, ..idle }, CLOSE_WAIT_GRACE), Transition::None);
    }
    let answer = Sample { state: TCP_CLOSE_WAIT, at_ms: 40_000, last_ack_recv_ms: 40_000, last_data_sent_ms: 5, ..sample(40_000, 50_000, 100) };
    assert_eq!(t.observe(&answer, CLOSE_WAIT_GRACE), Transition::None, "the answer was reported as it left");
    assert!(t.onset().unwrap().0 >= 39_000, "dated from the FIN: {:?}", t.onset());
    // Its bytes stay unacknowledged past grace: a peer that no longer reads.
    let stuck = Sample { at_ms: 44_000, last_ack_recv_ms: 4_000, ..answer };
    assert_eq!(stalled(t.observe(&stuck, CLOSE_WAIT_GRACE)).reason, Reason::PeerClosed);
}

#[test]
fn a_leak_suspect_whose_owner_answers_is_no_longer_stalled() {
    let mut t = SocketVerdict::new();
    let idle = Sample { state: TCP_CLOSE_WAIT, unacked: 0, last_ack_recv_ms: 0, ..sample(0, 0, 100) };
    t.observe(&idle, GRACE);
    assert_eq!(stalled(t.observe(&Sample { at_ms: 4_000, last_ack_recv_ms: 4_000, ..idle }, GRACE)).reason, Reason::CloseWaitIdle);
    let answer = Sample { state: TCP_CLOSE_WAIT, last_data_sent_ms: 5, ..sample(5_000, 50_000, 100) };
    assert!(matches!(t.observe(&answer, GRACE), Transition::Recovered { .. }), "the owner acted: the suspicion ends");
    assert!(t.stall().is_none());
}

#[test]
fn close_wait_that_still_drains_is_healthy() {
    // A half-closed peer downloading: CLOSE_WAIT with bytes queued, acknowledged bit by bit.
    let mut t = SocketVerdict::new();
    for (i, at) in (0..20_000).step_by(500).enumerate() {
        let s = Sample { state: TCP_CLOSE_WAIT, ..sample(at, 1_000_000, 100 + i as u64 * 4_096) };
        assert_eq!(t.observe(&s, GRACE), Transition::None, "a draining download at {at} ms");
    }
}

#[test]
fn close_wait_that_stops_draining_is_peer_closed() {
    let mut t = SocketVerdict::new();
    let mut s = Sample { state: TCP_CLOSE_WAIT, ..sample(0, 1_000_000, 100) };
    t.observe(&s, GRACE);
    s.bytes_acked = 5_000;
    s.at_ms = 500;
    t.observe(&s, GRACE);
    s.at_ms = 3_500;
    assert_eq!(stalled(t.observe(&s, GRACE)).reason, Reason::PeerClosed);
}

/// A sample as `detector explain` showed it for a real socket on this machine kind.
#[allow(clippy::too_many_arguments)]
fn real(queued: u32, unacked: u32, wnd: u32, retransmits: u8, backoff: u8, probes: u8, rto_ms: u32, ack_ago: u32, data_ago: u32) -> Sample {
    Sample {
        at_ms: 1_000_000,
        state: TCP_ESTABLISHED,
        queued,
        unacked,
        snd_wnd: Some(wnd),
        retransmits,
        backoff,
        probes,
        rto_ms,
        last_ack_recv_ms: ack_ago,
        last_data_sent_ms: data_ago,
        ..Default::default()
    }
}

#[test]
fn real_samples_are_classified_by_who_answers() {
    // Loopback, client sets SO_RCVBUF 4096 after connecting and never reads: one segment in
    // flight beyond the shrunken window is retransmitted and answered at once (window 0),
    // while the zero-window timer raised the backoff to 4.
    let shrunk = real(4_096_000, 1, 0, 0, 4, 0, 3_264, 1_276, 1_276);
    assert_eq!(classify(&shrunk), Reason::PeerNotReading);
    // Loopback, client frozen (SIGSTOP): nothing in flight, window probes answered.
    let frozen = real(4_188_864, 0, 0, 0, 4, 0, 228, 1_920, 5_424);
    assert_eq!(classify(&frozen), Reason::PeerNotReading);
    // veth, the peer's link down 7 s before: 313 segments in flight, six RTO retransmits, the
    // last ACK 6 s before the last of them.
    let cut = real(4_164_512, 313, 3_505_152, 6, 4, 0, 3_264, 7_404, 1_280);
    assert_eq!(classify(&cut), Reason::PeerUnreachable);
    // veth, the peer's link down (its neighbour entry unresolved): the first RTO retransmit
    // went out, the next two waited behind it in the ARP queue, so the last data sent stays at
    // the first while three expiries passed (`ss -tin` on this machine kind, 2.9 s after the cut).
    let arp = real(4_000_000, 644, 2_800_000, 3, 3, 0, 1_632, 2_920, 2_704);
    assert_eq!(classify(&arp), Reason::PeerUnreachable);
    // Same, where the first retransmit left less than a base RTO after the last ACK (the timer
    // runs from the oldest segment's transmission, sent before that ACK came): seen in a 6.1
    // guest, where it was judged `peer_not_reading`.
    let arp_early = real(4_000_000, 130, 2_800_000, 3, 3, 0, 1_632, 2_990, 2_800);
    assert_eq!(classify(&arp_early), Reason::PeerUnreachable);
    // Its onset, seen first (a restart), is its last ACK.
    assert_eq!(progress_bound(&cut), (1_000_000 - 7_404 + 10, OnsetProof::LastAck));
    // The frozen reader's: the last data segment plus one RTO, earlier than its last ACK.
    assert_eq!(progress_bound(&frozen), (1_000_000 - 5_424 + 228 + 10, OnsetProof::LastDataPlusRto));
}

#[test]
fn liveness_by_probes_answered_and_retransmits_unanswered() {
    let mut s = zero_window(0, 0, 5_000);
    s.probes = 1;
    assert_eq!(classify(&s), Reason::PeerNotReading, "one probe in the instant before its ACK");
    s.probes = 3;
    assert_eq!(classify(&s), Reason::PeerUnreachable, "probes go unanswered");
    let mut s = sample(0, 10, 0);
    (s.retransmits, s.backoff, s.rto_ms) = (2, 2, 816);
    // The last ACK came 600 ms before our last retransmit: a base RTO (204 ms) went unanswered.
    (s.last_ack_recv_ms, s.last_data_sent_ms) = (700, 100);
    assert_eq!(classify(&s), Reason::PeerUnreachable);
    // An answer after our last transmission: alive.
    (s.last_ack_recv_ms, s.last_data_sent_ms) = (50, 100);
    assert_eq!(classify(&s), Reason::PeerNotReading);
    // The timer fired twice but the last data sent is old (those retransmits never left the
    // host): silent once no ACK came for a base RTO, alive while one did.
    (s.last_ack_recv_ms, s.last_data_sent_ms) = (1_000, 900);
    assert_eq!(classify(&s), Reason::PeerUnreachable);
    s.last_ack_recv_ms = 150;
    assert_eq!(classify(&s), Reason::PeerNotReading);
    // With the peer's window shut the RTO's retransmits are window probes: an answer to the
    // last one is all that counts, however long ago (its timer is backed off).
    (s.snd_wnd, s.last_ack_recv_ms, s.last_data_sent_ms) = (Some(0), 1_000, 990);
    assert_eq!(classify(&s), Reason::PeerNotReading);
    // A kernel that does not report the window: only the last transmission decides.
    s.snd_wnd = None;
    assert_eq!(classify(&s), Reason::PeerNotReading);
    s.state = TCP_CLOSE_WAIT;
    assert_eq!(classify(&s), Reason::PeerClosed, "bytes queued to a peer that closed");
    s.queued = 0;
    assert_eq!(classify(&s), Reason::CloseWaitIdle, "nothing queued: the owner holds it");
}

#[test]
fn stall_counts_retransmits_and_probes_since_onset() {
    let mut t = SocketVerdict::new();
    let mut s = sample(0, 10, 0);
    (s.total_retrans, s.segs_out) = (5, 100);
    t.observe(&s, GRACE);
    // Progress at 500 ms; one retransmit happened between the samples, after that progress.
    let mut s = sample(500, 10, 10);
    (s.total_retrans, s.segs_out) = (6, 101);
    t.observe(&s, GRACE);
    let mut s = zero_window(3_600, 10, 3_000);
    (s.total_retrans, s.segs_out) = (6, 105);
    let st = stalled(t.observe(&s, GRACE));
    assert_eq!(st.reason, Reason::PeerNotReading);
    assert_eq!(st.zero_window_probes(&s), 0, "the segments before the window was seen closed may be data");
    assert_eq!(st.retransmits(&s), 1, "the retransmit after the last progress sample counts");
    (s.at_ms, s.segs_out) = (4_600, 108);
    t.observe(&s, GRACE);
    let st = *t.stall().unwrap();
    assert_eq!(st.zero_window_probes(&s), 3, "segments since the window was seen closed");
}

#[test]
fn a_stream_that_wedges_between_samples_counts_no_data_segment_as_a_probe() {
    // Streaming at one sample (18,000 segments sent by the next), the window closed at the
    // next: the probes are counted from there.
    let mut t = SocketVerdict::new();
    let mut s = sample(0, 4_000_000, 1_000);
    s.segs_out = 100;
    t.observe(&s, GRACE);
    let mut s = Sample { last_delivery_ms: Some(200), ..zero_window(1_000, 2_000_000_000, 5_000) };
    s.segs_out = 18_100;
    t.observe(&s, GRACE);
    (s.at_ms, s.segs_out) = (4_000, 18_104);
    let st = stalled(t.observe(&s, GRACE));
    assert_eq!(st.zero_window_probes(&s), 4);
    // Data in flight (the window reopened for a moment, nothing acknowledged): the kernel's
    // count of unanswered probes.
    s.unacked = 3;
    s.probes = 1;
    assert_eq!(st.zero_window_probes(&s), 1);
}

#[test]
fn judged_states_and_reason_names() {
    for st in [TCP_ESTABLISHED, TCP_CLOSE_WAIT, TCP_FIN_WAIT1, TCP_CLOSING, TCP_LAST_ACK] {
        assert!(judged_state(st));
    }
    assert!(!judged_state(detector_common::TCP_TIME_WAIT) && !judged_state(detector_common::TCP_FIN_WAIT2));
    for r in Reason::ALL {
        assert_eq!(r.as_str().parse::<Reason>(), Ok(r));
    }
    assert!("peer_gone".parse::<Reason>().unwrap_err().contains("peer_unreachable"));
}

/// A socket destroyed (or aborted) while its file is still held keeps the old gap between its
/// sequence numbers, but the kernel purged its queue: nothing is stuck, nothing to report.
#[test]
fn a_closed_socket_is_never_stuck_whatever_its_sequence_gap() {
    let mut s = sample(1_000, 4096, 0);
    assert!(stuck(&s));
    s.state = TCP_CLOSE;
    assert!(!stuck(&s));
    s.state = TCP_CLOSE_WAIT;
    s.queued = 0;
    assert!(stuck(&s), "CLOSE_WAIT held by its owner is, even with nothing queued");
}

/// A long trickle test's grace: 30 s, the default trickle rule (5 minutes, 1 KiB/s).
const TRICKLE: Grace = Grace { stuck_ms: 30_000, close_wait_idle_ms: 300_000, trickle: TrickleRule::DEFAULT };

/// The window nearly closed (one segment), nothing in flight, bytes queued; `acked` so far.
fn nearly_closed(at_ms: u64, acked: u64) -> Sample {
    Sample { unacked: 0, snd_wnd: Some(1448), ..sample(at_ms, 50_000, acked) }
}

/// Feeds one sample a second from `from` to `to` (seconds), `acked(t)` bytes acknowledged at
/// second t; the transitions seen.
fn feed(t: &mut SocketVerdict, from: u64, to: u64, acked: impl Fn(u64) -> u64, wnd: impl Fn(u64) -> u32) -> Vec<(u64, Transition)> {
    (from..=to)
        .map(|sec| (sec, t.observe(&Sample { snd_wnd: Some(wnd(sec)), ..nearly_closed(sec * 1_000, acked(sec)) }, TRICKLE)))
        .filter(|(_, tr)| *tr != Transition::None)
        .collect()
}

#[test]
fn a_peer_that_frees_a_little_before_each_grace_ends_is_trickling_after_the_window() {
    let mut t = SocketVerdict::new();
    // 100 bytes every 20 s (grace 30 s): never a stall of the grace rule.
    let seen = feed(&mut t, 0, 299, |s| 10_000 + s / 20 * 100, |_| 1448);
    assert!(seen.is_empty(), "{seen:?}");
    let seen = feed(&mut t, 300, 300, |s| 10_000 + s / 20 * 100, |_| 1448);
    let st = stalled(seen[0].1);
    assert_eq!((st.reason, st.proof, st.since_ms), (Reason::PeerTrickling, OnsetProof::DrainRate, 0));
    let d = st.drain.unwrap();
    assert_eq!((d.bytes, d.over_ms, d.floor_bytes_per_s), (1_500, 300_000, 1024));
    // It goes on trickling: progress does not end it, nothing is reported twice.
    assert!(feed(&mut t, 301, 600, |s| 10_000 + s / 20 * 100, |_| 1448).is_empty());
    assert_eq!(t.stall().unwrap().reason, Reason::PeerTrickling);
    assert!(!Reason::PeerTrickling.acted_on_unnamed(), "slow is not gone: only a selector naming it acts");
}

#[test]
fn a_slow_reader_that_keeps_up_with_its_stream_never_trickles() {
    let mut t = SocketVerdict::new();
    // 50 KiB/s of a paced stream, its window nearly closed all along (the sender is ahead).
    assert!(feed(&mut t, 0, 900, |s| s * 51_200, |_| 1448).is_empty());
    // Just over the floor, a little at a time: not trickling either.
    let mut t = SocketVerdict::new();
    assert!(feed(&mut t, 0, 900, |s| s * 1_100, |_| 0).is_empty());
    assert!(t.stall().is_none());
}

#[test]
fn a_paused_reader_that_resumes_opens_its_window_and_never_trickles() {
    let mut t = SocketVerdict::new();
    // 20 s paused (under grace), then it reads its backlog: its window opens wide and the
    // sender's queue drains at once.
    let acked = |s: u64| s / 20 * 200_000;
    let wnd = |s: u64| if s.is_multiple_of(20) { 200_000 } else { 0 };
    assert!(feed(&mut t, 0, 1_200, acked, wnd).is_empty());
    // Few bytes, but the window seen open wide within every window: the sender is not held
    // back by this reader, no trickle.
    let mut t = SocketVerdict::new();
    let wnd = |s: u64| if s % 240 == 100 { 200_000 } else { 1448 };
    assert!(feed(&mut t, 0, 1_200, |s| 10_000 + s / 20 * 100, wnd).is_empty());
    // A window the sample cannot tell (no tcpi_snd_wnd, no walk): no trickle is judged.
    let mut t = SocketVerdict::new();
    for sec in 0..=900 {
        let s = Sample { snd_wnd: None, ..nearly_closed(sec * 1_000, 10_000 + sec / 20 * 100) };
        assert_eq!(t.observe(&s, TRICKLE), Transition::None);
    }
}

#[test]
fn a_trickle_that_speeds_up_recovers_and_one_that_stops_is_not_reading() {
    let mut t = SocketVerdict::new();
    let trickle = |s: u64| 10_000 + s / 20 * 100;
    feed(&mut t, 0, 300, trickle, |_| 1448);
    assert_eq!(t.stall().unwrap().reason, Reason::PeerTrickling);
    // 100 KB/s for a few seconds: over the window the floor is passed.
    let fast = |s: u64| trickle(300) + (s - 300) * 100_000;
    let seen = feed(&mut t, 301, 305, fast, |_| 1448);
    assert!(matches!(seen[..], [(_, Transition::Recovered { .. })]), "{seen:?}");
    // Trickling again, then nothing at all: trickling while the window still holds its last
    // bytes, then not reading (one stall all along).
    let mut t = SocketVerdict::new();
    feed(&mut t, 0, 300, trickle, |_| 0);
    let seen = feed(&mut t, 301, 550, |_| trickle(300), |_| 0);
    assert!(seen.is_empty(), "the same stall goes on: {seen:?}");
    assert_eq!(t.stall().unwrap().reason, Reason::PeerTrickling);
    let seen = feed(&mut t, 551, 700, |_| trickle(300), |_| 0);
    assert!(seen.is_empty(), "the same stall goes on: {seen:?}");
    let st = t.stall().unwrap();
    assert_eq!((st.reason, st.since_ms, st.drain), (Reason::PeerNotReading, 0, None));
}

#[test]
fn a_peer_not_reading_that_then_trickles_stays_one_stall() {
    let mut t = SocketVerdict::new();
    // 100 bytes every 40 s, grace 30 s: a stall, a recovery, a stall... until the window
    // proves a trickle; from then on one stall, whatever the gaps.
    let acked = |s: u64| 10_000 + s / 40 * 100;
    let early = feed(&mut t, 0, 299, acked, |_| 1448);
    assert!(early.iter().any(|(_, tr)| matches!(tr, Transition::Recovered { .. })));
    let late = feed(&mut t, 330, 900, acked, |_| 1448);
    assert!(late.iter().all(|(_, tr)| matches!(tr, Transition::Stalled(_))) && late.len() <= 1, "{late:?}");
    // And it reads as trickling all along, in the gaps too.
    for sec in 901..=1_000 {
        assert_eq!(t.observe(&Sample { snd_wnd: Some(1448), ..nearly_closed(sec * 1_000, acked(sec)) }, TRICKLE), Transition::None);
        assert_eq!(t.stall().map(|s| s.reason), Some(Reason::PeerTrickling), "at {sec} s");
    }
}
