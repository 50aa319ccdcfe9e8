//! Reading the `EVENTS` ring buffer: woken by epoll through `AsyncFd`, decoded, and handed to
//! the sweep thread, which owns the socket table.
use std::{mem::size_of, sync::mpsc::Sender};

use aya::maps::{MapData, RingBuf};
use detector_common::SockEvent;
use tokio::io::unix::AsyncFd;

pub fn decode(bytes: &[u8]) -> Option<SockEvent> {
    if bytes.len() < size_of::<SockEvent>() {
        return None;
    }
    // SAFETY: SockEvent is Pod (any bit pattern is valid) and the length was checked;
    // read_unaligned copes with the ring buffer's 8-byte alignment either way.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<SockEvent>()) })
}

/// Forwards events until the receiving side goes away.
pub async fn forward(ring: RingBuf<MapData>, to: Sender<SockEvent>) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged, for as long as the
    // `AsyncFd` owns the ring buffer.
    let mut fd = unsafe { AsyncFd::register(ring)? };
    loop {
        let mut guard = fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if let Some(ev) = decode(&item) {
                if to.send(ev).is_err() {
                    return Ok(());
                }
            }
        }
        guard.clear_ready();
    }
}
