//! The reconcile's pass over a network namespace's TCP sockets in the kernel (`iter/tcp`):
//! only stuck sockets come back, as the same `Dumped` rows a sock_diag dump gives. The pass
//! walks the namespace of the thread that opens it, so the file is opened inside the
//! namespace and read after returning.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use detector_common::{AF_INET6, ScanRecord};

use super::{
    Dumped,
    netns::{NetnsError, NetnsPool},
};
use crate::kernel::iter::{self, IterLink};

/// The rows of one pass; an error when its length is not whole records.
pub fn parse(b: &[u8]) -> Result<Vec<Dumped>, String> {
    let r = std::mem::size_of::<ScanRecord>();
    if !b.len().is_multiple_of(r) {
        return Err(format!("scan output of {} bytes is not whole records of {r}", b.len()));
    }
    Ok(b.chunks_exact(r).map(|c| dumped(&record(c))).collect())
}

fn record(b: &[u8]) -> ScanRecord {
    let mut v = ScanRecord::default();
    // SAFETY: `ScanRecord` is `#[repr(C)]` and valid for any bytes (see its `Pod` impl), and
    // `b` holds exactly its size.
    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), (&raw mut v).cast::<u8>(), b.len()) };
    v
}

fn dumped(r: &ScanRecord) -> Dumped {
    let ip = |a: &[u8; 16]| {
        if r.family == AF_INET6 { IpAddr::V6(Ipv6Addr::from(*a)) } else { IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])) }
    };
    Dumped {
        family: r.family,
        local: ip(&r.saddr),
        local_port: r.sport,
        remote: ip(&r.daddr),
        remote_port: r.dport,
        ifindex: r.bound_dev_if,
        state: r.state,
        send_queue: r.queued,
        cookie: r.cookie,
    }
}

/// The pass, as the reconcile uses it.
#[derive(Debug)]
pub struct Scanner {
    link: IterLink,
    buf: Vec<u8>,
}

impl Scanner {
    pub fn new(link: IterLink) -> Self {
        Scanner { link, buf: Vec::new() }
    }

    /// The stuck sockets of namespace `inum` (`hint`: a pid likely to live in it).
    pub fn stuck(&mut self, pool: &NetnsPool, inum: u32, hint: Option<u32>) -> Result<Vec<Dumped>, NetnsError> {
        let file = pool.within(inum, hint, || self.link.open())?.map_err(|e| NetnsError::Iter(e.to_string()))?;
        iter::read_all(file, &mut self.buf).map_err(|e| NetnsError::Iter(e.to_string()))?;
        parse(&self.buf).map_err(NetnsError::Iter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_as_dump_rows() {
        let mut r = ScanRecord { cookie: 7, sport: 8080, dport: 50000, family: 2, state: 8, queued: 0, ..Default::default() };
        r.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        r.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        // SAFETY: the bytes of a plain `#[repr(C)]` value.
        let b = unsafe { std::slice::from_raw_parts((&raw const r).cast::<u8>(), std::mem::size_of::<ScanRecord>()) }.repeat(2);
        let rows = parse(&b).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].local, rows[0].local_port, rows[0].remote_port, rows[0].state, rows[0].cookie), ("10.0.0.1".parse().unwrap(), 8080, 50000, 8, 7));
        assert!(parse(&b[1..]).is_err());
        assert_eq!(parse(&[]).unwrap().len(), 0, "a namespace with nothing stuck");
    }
}
