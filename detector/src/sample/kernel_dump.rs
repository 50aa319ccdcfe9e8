//! The reconcile's passes in the kernel: over a network namespace's TCP sockets (`iter/tcp`),
//! or over every process's open files (`iter/task_file`, every namespace at once). Only stuck
//! sockets come back, as the same `Dumped` rows a sock_diag dump gives. The first walks the
//! namespace of the thread that opens it, so its file is opened inside the namespace and read
//! after returning.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use detector_common::{AF_INET6, ScanRecord};

use super::{
    Dumped, Lookup,
    netns::{NetnsError, NetnsPool},
};
use crate::kernel::iter::{self, IterLink};

/// The rows of one pass; an error when its length is not whole records.
pub fn parse(b: &[u8]) -> Result<Vec<Dumped>, String> {
    Ok(records(b)?.iter().map(dumped).collect())
}

/// A stuck socket found by the pass over every process's files.
#[derive(Debug, Clone)]
pub struct Held {
    pub row: Dumped,
    /// Its network namespace, and a process holding it (most often one of that namespace).
    pub netns: u32,
    pub pid: u32,
}

/// The rows of a pass over every process's files; a socket several processes or fds hold
/// comes once. A socket nothing asked the cookie of yet has none (the pass reads the cookie, it
/// cannot make it): such rows are told apart by namespace and addresses.
pub fn parse_held(b: &[u8]) -> Result<Vec<Held>, String> {
    let mut seen = std::collections::HashSet::new();
    let key = |r: &ScanRecord| if r.cookie != 0 { (r.cookie, 0, [0; 16], [0; 16], 0, 0) } else { (0, r.netns, r.saddr, r.daddr, r.sport, r.dport) };
    Ok(records(b)?.iter().filter(|r| seen.insert(key(r))).map(|r| Held { row: dumped(r), netns: r.netns, pid: r.tgid }).collect())
}

/// Gives each row without a cookie its socket's, asked of sock_diag in the socket's namespace
/// (which makes the cookie, as the agent's lookups would); a row whose socket is gone by then,
/// or whose namespace cannot be entered, is left out (the next pass finds it if it matters).
fn with_cookies(pool: &mut NetnsPool, held: Vec<Held>) -> Vec<Held> {
    let (mut out, nameless): (Vec<Held>, Vec<Held>) = held.into_iter().partition(|h| h.row.cookie != 0);
    let mut by_ns: std::collections::HashMap<u32, Vec<Held>> = std::collections::HashMap::new();
    for h in nameless {
        by_ns.entry(h.netns).or_default().push(h);
    }
    for (netns, rows) in by_ns {
        let Ok(conn) = pool.conn(netns, Some(rows[0].pid)) else { continue };
        let ls: Vec<Lookup> = rows.iter().map(|h| lookup_of(&h.row)).collect();
        for (mut h, answer) in rows.into_iter().zip(conn.lookup_many(&ls)) {
            if let Ok(Some(d)) = answer {
                h.row.cookie = d.cookie;
                out.push(h);
            }
        }
    }
    out
}

fn lookup_of(d: &Dumped) -> Lookup {
    Lookup { family: d.family, local: d.local, local_port: d.local_port, remote: d.remote, remote_port: d.remote_port, ifindex: d.ifindex, cookie: None }
}

fn records(b: &[u8]) -> Result<Vec<ScanRecord>, String> {
    let r = std::mem::size_of::<ScanRecord>();
    if !b.len().is_multiple_of(r) {
        return Err(format!("scan output of {} bytes is not whole records of {r}", b.len()));
    }
    Ok(b.chunks_exact(r).map(record).collect())
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

/// The passes, as the reconcile uses them.
#[derive(Debug)]
pub struct KernelDump {
    link: IterLink,
    files: Option<IterLink>,
    buf: Vec<u8>,
}

impl KernelDump {
    /// `link`: the pass over a namespace's TCP sockets; `files`: the pass over every process's
    /// files, when the kernel runs it.
    pub fn new(link: IterLink, files: Option<IterLink>) -> Self {
        KernelDump { link, files, buf: Vec::new() }
    }

    /// Whether the pass over every process's files serves (after start-up).
    pub fn over_files(&self) -> bool {
        self.files.is_some()
    }

    /// The stuck sockets of namespace `inum` (`hint`: a pid likely to live in it).
    pub fn stuck(&mut self, pool: &NetnsPool, inum: u32, hint: Option<u32>) -> Result<Vec<Dumped>, NetnsError> {
        let file = pool.within(inum, hint, || self.link.open())?.map_err(|e| NetnsError::Iter(e.to_string()))?;
        iter::read_all(file, &mut self.buf).map_err(|e| NetnsError::Iter(e.to_string()))?;
        parse(&self.buf).map_err(NetnsError::Iter)
    }

    /// The stuck sockets some process holds, in every namespace (`None` without that pass),
    /// each with its cookie.
    pub fn stuck_held(&mut self, pool: &mut NetnsPool) -> Option<Result<Vec<Held>, String>> {
        let link = self.files.as_ref()?;
        let read = link.open().and_then(|f| iter::read_all(f, &mut self.buf));
        Some(read.map_err(|e| e.to_string()).and_then(|()| parse_held(&self.buf)).map(|held| with_cookies(pool, held)))
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

    #[test]
    fn a_socket_held_through_several_files_is_one_row_with_its_namespace_and_holder() {
        let rec = |cookie, netns, tgid| ScanRecord { cookie, family: 2, state: 1, queued: 10, netns, tgid, ..Default::default() };
        let recs = [rec(7, 4026531840, 100), rec(7, 4026531840, 101), rec(8, 4026532000, 102)];
        // SAFETY: the bytes of plain `#[repr(C)]` values.
        let b = unsafe { std::slice::from_raw_parts(recs.as_ptr().cast::<u8>(), std::mem::size_of_val(&recs)) };
        let held = parse_held(b).unwrap();
        assert_eq!(held.iter().map(|h| (h.row.cookie, h.netns, h.pid)).collect::<Vec<_>>(), vec![(7, 4026531840, 100), (8, 4026532000, 102)]);
        assert!(parse_held(&b[..10]).is_err());
        // Without cookies (nothing asked for them yet), two sockets stay two, one held twice is one.
        let mut recs = [rec(0, 4026531840, 100), rec(0, 4026531840, 101), rec(0, 4026531840, 102)];
        recs[2].sport = 9;
        // SAFETY: as above.
        let b = unsafe { std::slice::from_raw_parts(recs.as_ptr().cast::<u8>(), std::mem::size_of_val(&recs)) };
        assert_eq!(parse_held(b).unwrap().iter().map(|h| (h.row.local_port, h.pid)).collect::<Vec<_>>(), vec![(0, 100), (9, 102)]);
    }
}
