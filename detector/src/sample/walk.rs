//! What a walk of the kernel's socket storage says, in the agent's terms: the records parsed
//! and checked, the kernel's jiffies rate (HZ) measured from two walks, and each record turned
//! into the same sample sock_diag would give (`tcp_info`'s fields and arithmetic). Pure: the
//! kernel objects are in `kernel::iter`.
use std::time::Duration;

use detector_common::{SockState, WalkClock, WalkKind, WalkRecord};
use thiserror::Error;

use super::{DiagSocket, Sample};
use crate::kernel::iter::IterLink;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum WalkError {
    #[error("reading the walk: {0}")]
    Read(String),
    #[error("the kernel's jiffies rate fits no HZ Linux is built with (two walks: {0:?} and {1:?})")]
    Hz(WalkClock, WalkClock),
    #[error("walk output of {0} bytes is not a clock record and whole socket records")]
    Size(usize),
    #[error("walk record {index} has kind {kind}, expected {expected:?}")]
    Kind { index: usize, kind: u8, expected: WalkKind },
}

/// One walk: the kernel's clocks at its start, and the sockets it reported.
#[derive(Debug, Clone)]
pub struct Walk {
    pub clock: WalkClock,
    pub records: Vec<WalkRecord>,
}

/// One walk's samples by socket, for one pass: each taken at most once by the table entry of
/// its socket, the rest left for the sockets the table lacks. Records are indexed in place (a
/// sorted index, no copies) and turned into samples only when taken. A socket reported twice
/// is sampled from its last record.
#[derive(Debug)]
pub struct Samples {
    walk: Walk,
    hz: u32,
    at_ms: u64,
    /// (socket, record index), by socket; one entry per socket.
    order: Vec<(u64, usize)>,
    /// By position in `order`.
    taken: Vec<bool>,
}

impl Samples {
    /// `asked_ms` and `got_ms`: the agent's clock (CLOCK_MONOTONIC) as it asked for the walk
    /// and as it had it. The samples are dated at the walk's own clock read (the same clock,
    /// read in between), so a stamp's "ago", counted from that read, is never taken from an
    /// earlier instant (which would date the event earlier than it was). Were the agent's clock
    /// offset from the kernel's (a time namespace), the read is held within those two instants:
    /// never ahead of the agent's clock.
    pub fn new(walk: Walk, hz: u32, asked_ms: u64, got_ms: u64) -> Samples {
        let at_ms = (walk.clock.ktime_ns / 1_000_000).min(got_ms).max(asked_ms);
        let mut order: Vec<(u64, usize)> = walk.records.iter().enumerate().map(|(i, r)| (r.sk, i)).collect();
        // By socket, its last record first: `dedup_by_key` keeps that one.
        order.sort_unstable_by_key(|&(sk, i)| (sk, std::cmp::Reverse(i)));
        order.dedup_by_key(|e| e.0);
        let taken = vec![false; order.len()];
        Samples { walk, hz, at_ms, order, taken }
    }

    fn sample(&self, i: usize) -> (DiagSocket, SockState) {
        let r = &self.walk.records[i];
        (to_diag(r, &self.walk.clock, self.hz, self.at_ms), r.st)
    }

    /// The sample of `sk`, unless the walk did not report it or it was taken already.
    pub fn take(&mut self, sk: u64) -> Option<(DiagSocket, SockState)> {
        let pos = self.order.binary_search_by_key(&sk, |e| e.0).ok()?;
        if std::mem::replace(&mut self.taken[pos], true) {
            return None;
        }
        Some(self.sample(self.order[pos].1))
    }

    /// The samples no one took, by socket.
    pub fn rest(&self) -> impl Iterator<Item = (u64, DiagSocket, SockState)> + '_ {
        self.order.iter().zip(&self.taken).filter(|(_, taken)| !**taken).map(|(&(sk, i), _)| {
            let (d, st) = self.sample(i);
            (sk, d, st)
        })
    }
}

fn pod<T: Copy + Default>(b: &[u8]) -> T {
    let mut v = T::default();
    // SAFETY: `T` is one of the `#[repr(C)]` walk records, valid for any bytes (see the `Pod`
    // impls in detector-common), and `b` holds exactly `size_of::<T>()` bytes.
    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), (&raw mut v).cast::<u8>(), std::mem::size_of::<T>()) };
    v
}

/// Parses the bytes of one walk.
pub fn parse(b: &[u8]) -> Result<Walk, WalkError> {
    let (c, r) = (std::mem::size_of::<WalkClock>(), std::mem::size_of::<WalkRecord>());
    if b.len() < c {
        return Err(WalkError::Size(b.len()));
    }
    let clock: WalkClock = pod(&b[..c]);
    if clock.kind != WalkKind::Clock as u8 {
        return Err(WalkError::Kind { index: 0, kind: clock.kind, expected: WalkKind::Clock });
    }
    // Records are read by their kind. The kernel may run the program once more with sequence
    // number 0 (seen here under load: a second clock after the records); a later clock says
    // nothing new and is skipped.
    let mut records = Vec::with_capacity((b.len() - c) / r);
    let mut off = c;
    while off < b.len() {
        let kind = b[off];
        let len = if kind == WalkKind::Clock as u8 { c } else { r };
        let chunk = b.get(off..off + len).ok_or(WalkError::Size(b.len()))?;
        match kind {
            k if k == WalkKind::Clock as u8 => {}
            k if k == WalkKind::Socket as u8 => records.push(pod::<WalkRecord>(chunk)),
            k => return Err(WalkError::Kind { index: records.len() + 1, kind: k, expected: WalkKind::Socket }),
        }
        off += len;
    }
    Ok(Walk { clock, records })
}

/// The walk as the sweep uses it: the link, a buffer kept between walks, and the kernel's HZ.
#[derive(Debug)]
pub struct Walker {
    link: IterLink,
    buf: Vec<u8>,
    hz: u32,
    /// Walks taken (for the fault injection below).
    walks: u64,
}

impl Walker {
    /// Two walks 120 ms apart measure the kernel's HZ (the walk reports its clocks in jiffies).
    /// Starts walking once the kernel's HZ is known. A busy machine can delay the timer tick
    /// (jiffies then lag the clock for a moment), so a disagreeing estimate is taken again
    /// over longer windows (about 4 s in all) before giving up.
    pub fn start(link: IterLink) -> Result<Self, WalkError> {
        let mut w = Walker { link, buf: Vec::new(), hz: 0, walks: 0 };
        let mut last = None;
        for wait_ms in [120, 250, 500, 1_000, 2_000] {
            let a = w.walk()?.clock;
            std::thread::sleep(Duration::from_millis(wait_ms));
            let b = w.walk()?.clock;
            if let Some(hz) = hz(&a, &b) {
                w.hz = hz;
                return Ok(w);
            }
            last = Some((a, b));
        }
        let (a, b) = last.unwrap_or_default();
        Err(WalkError::Hz(a, b))
    }

    pub fn walk(&mut self) -> Result<Walk, WalkError> {
        self.link.read(&mut self.buf).map_err(|e| WalkError::Read(e.to_string()))?;
        let mut walk = parse(&self.buf)?;
        if let Some(port) = crate::fault::walk_skip() {
            self.walks += 1;
            if self.walks.is_multiple_of(2) {
                walk.records.retain(|r| r.st.tuple.sport != port);
            }
        }
        Ok(walk)
    }

    pub fn hz(&self) -> u32 {
        self.hz
    }
}

/// The HZ values Linux is built with.
const HZ_CHOICES: [u32; 4] = [100, 250, 300, 1000];

/// The kernel's HZ from the clocks of two walks (at least ~100 ms apart), as the nearest
/// value Linux can be built with; `None` when they are too close or disagree with every one.
pub fn hz(a: &WalkClock, b: &WalkClock) -> Option<u32> {
    let dt_ns = b.ktime_ns.checked_sub(a.ktime_ns)?;
    let dj = b.jiffies.checked_sub(a.jiffies)?;
    if dt_ns < 80_000_000 {
        return None;
    }
    let rate = dj as f64 / (dt_ns as f64 / 1e9);
    let best = HZ_CHOICES.into_iter().min_by(|x, y| (rate / *x as f64).ln().abs().total_cmp(&(rate / *y as f64).ln().abs()))?;
    // Within 10 %: one jiffy of rounding at 100 Hz over 100 ms.
    ((rate / best as f64).ln().abs() < 0.1).then_some(best)
}

fn jiffies_to_ms(j: u32, hz: u32) -> u32 {
    (u64::from(j) * 1000 / u64::from(hz)) as u32
}

/// How long before `now` the jiffies stamp `then` was, in milliseconds. The walk reads the clock
/// once, as it starts, and each socket's stamps as it reaches the socket: a retransmit or an
/// ACK in between leaves a stamp after `now`, which is "just now" (0), not a wrapped-around
/// 49 days. (Read as 49 days, the last data sent looked older than the last ACK, so an
/// unreachable peer passed for one that answers: seen in a 6.1 guest, s01.)
fn ms_ago(now: u32, then: u32, hz: u32) -> u32 {
    let d = now.wrapping_sub(then);
    if (d as i32) < 0 { 0 } else { jiffies_to_ms(d, hz) }
}

/// How long before the walk's clock (`now_ns`) the last delivery (`delivered_us`, the same
/// CLOCK_MONOTONIC in microseconds) was, in whole milliseconds rounded down; one after the clock
/// read (an ACK while the walk ran) is "just now". `None` when the socket has had none.
fn delivery_ago(delivered_us: u64, now_ns: u64) -> Option<u32> {
    (delivered_us != 0).then(|| u32::try_from((now_ns / 1_000).saturating_sub(delivered_us) / 1_000).unwrap_or(u32::MAX))
}

/// A walk record as the sample sock_diag would have given at `at_ms` (agent clock): the same
/// `tcp_info` arithmetic (`tcp_get_info`, `tcp_diag_get_info`) on the same fields, and the last
/// delivery's age, which `tcp_info` does not carry.
pub fn to_diag(r: &WalkRecord, clock: &WalkClock, hz: u32, at_ms: u64) -> DiagSocket {
    let now = clock.jiffies as u32;
    DiagSocket {
        cookie: r.cookie,
        inode: r.inode,
        uid: r.uid,
        sample: Sample {
            at_ms,
            state: r.state,
            queued: r.write_seq.wrapping_sub(r.snd_una),
            notsent: (r.write_seq.wrapping_sub(r.snd_nxt) as i32).max(0) as u32,
            bytes_acked: r.bytes_acked,
            unacked: r.packets_out,
            snd_wnd: Some(r.snd_wnd),
            retransmits: r.retransmits,
            backoff: r.backoff,
            probes: r.probes,
            total_retrans: r.total_retrans,
            segs_out: r.segs_out,
            last_ack_recv_ms: ms_ago(now, r.rcv_tstamp, hz),
            last_data_sent_ms: ms_ago(now, r.lsndtime, hz),
            last_delivery_ms: delivery_ago(r.delivered_us, clock.ktime_ns),
            // tcpi_rto is jiffies_to_usecs(icsk_rto); the sample rounds it up to milliseconds.
            rto_ms: (u64::from(r.rto) * 1_000_000 / u64::from(hz)).div_ceil(1000) as u32,
            repair: r.repair != 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(jiffies: u64, ms: u64) -> WalkClock {
        WalkClock { kind: WalkKind::Clock as u8, jiffies, ktime_ns: ms * 1_000_000, ..Default::default() }
    }

    fn bytes<T>(v: &T) -> &[u8] {
        // SAFETY: reading the bytes of a plain `#[repr(C)]` value.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
    }

    #[test]
    fn a_walk_is_a_clock_then_whole_socket_records() {
        let c = clock(5, 7);
        let r = WalkRecord { kind: WalkKind::Socket as u8, sk: 0xffff_8880_0000_1000, ..Default::default() };
        let mut b = bytes(&c).to_vec();
        b.extend_from_slice(bytes(&r));
        b.extend_from_slice(bytes(&r));
        let w = parse(&b).unwrap();
        assert_eq!((w.clock.jiffies, w.records.len(), w.records[1].sk), (5, 2, r.sk));
        assert_eq!(parse(bytes(&c)).unwrap().records.len(), 0, "an empty map is a clock alone");
        assert_eq!(parse(&b[..b.len() - 1]).unwrap_err(), WalkError::Size(b.len() - 1));
        assert!(parse(&b[8..]).is_err());
        assert!(matches!(parse(&[]), Err(WalkError::Size(0))));
        // A second clock (the program run again at sequence number 0) is skipped.
        let mut twice = b.clone();
        twice.extend_from_slice(bytes(&clock(9, 9)));
        let w = parse(&twice).unwrap();
        assert_eq!((w.clock.jiffies, w.records.len()), (5, 2));
    }

    #[test]
    fn each_sample_is_taken_once_and_the_rest_is_left_by_socket() {
        let rec = |sk: u64, bytes_acked: u64| WalkRecord { kind: WalkKind::Socket as u8, sk, bytes_acked, rto: 51, ..Default::default() };
        let walk = Walk { clock: clock(100, 0), records: vec![rec(30, 1), rec(10, 2), rec(20, 3), rec(10, 4)] };
        let mut s = Samples::new(walk, 250, 7, 7);
        let (d, _) = s.take(10).unwrap();
        assert_eq!((d.sample.bytes_acked, d.sample.at_ms), (4, 7), "a socket reported twice: its last record");
        assert!(s.take(10).is_none(), "taken once");
        assert!(s.take(40).is_none(), "not reported");
        let rest: Vec<(u64, u64)> = s.rest().map(|(sk, d, _)| (sk, d.sample.bytes_acked)).collect();
        assert_eq!(rest, vec![(20, 3), (30, 1)]);
        assert_eq!(Samples::new(Walk { clock: clock(1, 0), records: vec![] }, 250, 0, 0).rest().count(), 0);
        // A walk delayed past the agent's request: its samples are dated at its own clock read;
        // a clock read outside the agent's two instants (its clock offset) is held within them.
        let at = |walk_ms: u64| Samples::new(Walk { clock: clock(100, walk_ms), records: vec![rec(10, 2)] }, 250, 7, 20).take(10).unwrap().0.sample.at_ms;
        assert_eq!((at(12), at(500), at(3)), (12, 20, 7));
    }

    #[test]
    fn hz_is_the_nearest_value_linux_is_built_with() {
        assert_eq!(hz(&clock(1000, 0), &clock(1030, 120)), Some(250));
        assert_eq!(hz(&clock(1000, 0), &clock(1036, 120)), Some(300));
        assert_eq!(hz(&clock(0, 0), &clock(12, 120)), Some(100));
        assert_eq!(hz(&clock(0, 0), &clock(1000, 1000)), Some(1000));
        assert_eq!(hz(&clock(0, 0), &clock(5, 10)), None, "too close together");
        assert_eq!(hz(&clock(0, 0), &clock(700, 1000)), None, "no HZ fits");
        assert_eq!(hz(&clock(10, 100), &clock(5, 200)), None, "jiffies went backwards");
    }

    #[test]
    fn a_record_reads_as_tcp_info_would() {
        // HZ 250: a jiffy is 4 ms.
        let c = clock(10_000, 0);
        let r = WalkRecord {
            kind: WalkKind::Socket as u8,
            state: 1,
            snd_una: u32::MAX - 99,
            write_seq: 400,
            snd_nxt: 300,
            rcv_tstamp: 10_000 - 50,
            lsndtime: 10_000 - 2,
            rto: 51,
            bytes_acked: 12345,
            ..Default::default()
        };
        let d = to_diag(&r, &c, 250, 77);
        assert_eq!(d.sample.queued, 500, "write_seq - snd_una across the wrap");
        assert_eq!(d.sample.notsent, 100);
        assert_eq!((d.sample.last_ack_recv_ms, d.sample.last_data_sent_ms), (200, 8));
        assert_eq!(d.sample.rto_ms, 204);
        assert_eq!((d.sample.at_ms, d.sample.bytes_acked, d.sample.snd_wnd), (77, 12345, Some(0)));
        // snd_nxt past write_seq (a FIN counts in sequence space): no negative bytes.
        let fin = WalkRecord { snd_nxt: 401, ..r };
        assert_eq!(to_diag(&fin, &c, 250, 77).sample.notsent, 0);
        // A clock that wrapped past u32 keeps the arithmetic of tcp_jiffies32.
        let wrapped = to_diag(&WalkRecord { rcv_tstamp: u32::MAX, ..r }, &clock(1 << 32, 0), 1000, 0);
        assert_eq!(wrapped.sample.last_ack_recv_ms, 1);
    }

    #[test]
    fn the_last_delivery_is_milliseconds_before_the_walk_clock_rounded_down() {
        let r = WalkRecord { kind: WalkKind::Socket as u8, state: 1, ..Default::default() };
        let at = |delivered_us: u64, now_ms: u64| to_diag(&WalkRecord { delivered_us, ..r }, &clock(0, now_ms), 250, 0).sample.last_delivery_ms;
        assert_eq!(at(0, 5_000), None, "no delivery yet");
        assert_eq!(at(4_000_001, 5_000), Some(999), "1 ms less a microsecond: rounded down, never older than it was");
        assert_eq!(at(4_000_000, 5_000), Some(1_000));
        assert_eq!(at(5_000_700, 5_000), Some(0), "an ACK while the walk ran: just now");
    }

    #[test]
    fn a_stamp_taken_after_the_walk_began_is_just_now_not_49_days_ago() {
        // A retransmit (lsndtime) and an ACK (rcv_tstamp) between the walk's clock and this
        // socket's record: two and one jiffies after `now`.
        let c = clock(10_000, 0);
        let r = WalkRecord { kind: WalkKind::Socket as u8, state: 1, rcv_tstamp: 10_001, lsndtime: 10_002, packets_out: 3, rto: 51, ..Default::default() };
        let s = to_diag(&r, &c, 250, 0).sample;
        assert_eq!((s.last_ack_recv_ms, s.last_data_sent_ms), (0, 0));
        // And so the verdict sees what is true: the last ACK came long before our last
        // retransmission, for a silent peer whose retransmit landed mid-walk.
        let silent = to_diag(&WalkRecord { rcv_tstamp: 10_000 - 750, backoff: 3, rto: 51 << 3, ..r }, &c, 250, 0).sample;
        assert!(!crate::verdict::peer_answers(&silent), "{silent:?}");
    }
}
