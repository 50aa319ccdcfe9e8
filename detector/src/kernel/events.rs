//! Reading the `EVENTS` ring buffer. The programs write without waking anyone (a wake-up per
//! event is what made connection churn expensive); the sweep thread, which owns the socket
//! table, drains the buffer every time it wakes, at least every
//! `agent::schedule::DRAIN_EVERY` (400 ms).
use std::mem::size_of;

use aya::maps::{MapData, RingBuf};
use detector_common::SockEvent;

pub fn decode(bytes: &[u8]) -> Option<SockEvent> {
    if bytes.len() < size_of::<SockEvent>() {
        return None;
    }
    // SAFETY: SockEvent is Pod (any bit pattern is valid) and the length was checked;
    // read_unaligned copes with the ring buffer's 8-byte alignment either way.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<SockEvent>()) })
}

/// Hands every event waiting in the ring buffer to `f`; returns how many there were.
pub fn drain(ring: &mut RingBuf<MapData>, mut f: impl FnMut(&SockEvent)) -> usize {
    let mut n = 0;
    while let Some(item) = ring.next() {
        if let Some(ev) = decode(&item) {
            f(&ev);
            n += 1;
        }
    }
    n
}
