//! The iterators' kernel objects, in one small unsafe module: the link of an iterator program
//! (`walk_sk_storage` over the `SK_STATE` map, `scan_tcp` over TCP sockets), and one pass per
//! read.
//!
//! aya 0.14's `Iter::attach` creates the link without a map, which a map iterator needs, and
//! its `into_file` consumes the link, where the agent opens one file per pass (and per network
//! namespace: a TCP iterator walks the namespace of the thread that opens it). So links are
//! made here with `BPF_LINK_CREATE` (and the map's fd in `iter_info`), and each pass is a file
//! from `BPF_ITER_CREATE`, read to its end (include/uapi/linux/bpf.h).
use std::{
    fs::File,
    io::{self, Read},
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

/// `enum bpf_cmd` and `enum bpf_attach_type` values (UAPI, fixed).
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
const BPF_TRACE_ITER: u32 = 28;

/// `bpf_attr.link_create` up to `iter_info_len`; the kernel zero-fills the rest of the union.
#[repr(C)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    iter_info: u64,
    iter_info_len: u32,
    _pad: u32,
}

/// `union bpf_iter_link_info`: the map iterator's `map.map_fd`, the rest zero (as the kernel
/// requires of bytes it does not know).
#[repr(C)]
struct IterInfo {
    map_fd: u32,
    _rest: [u32; 3],
}

/// `bpf_attr.iter_create`.
#[repr(C)]
struct IterCreate {
    link_fd: u32,
    flags: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a `#[repr(C)]` prefix of `union bpf_attr` of the size passed; the
    // syscall reads it and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const T, std::mem::size_of::<T>()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just made for us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// An iterator program's link. Dropping it detaches.
#[derive(Debug)]
pub struct IterLink(OwnedFd);

impl IterLink {
    /// Links the loaded iterator program `prog`, to the map `map` for a map iterator.
    pub fn create(prog: BorrowedFd<'_>, map: Option<BorrowedFd<'_>>) -> io::Result<Self> {
        let info = IterInfo { map_fd: map.map_or(0, |m| m.as_raw_fd() as u32), _rest: [0; 3] };
        let attr = LinkCreate {
            prog_fd: prog.as_raw_fd() as u32,
            target_fd: 0,
            attach_type: BPF_TRACE_ITER,
            flags: 0,
            iter_info: if map.is_some() { &info as *const IterInfo as u64 } else { 0 },
            iter_info_len: if map.is_some() { std::mem::size_of::<IterInfo>() as u32 } else { 0 },
            _pad: 0,
        };
        bpf(BPF_LINK_CREATE, &attr).map(Self)
    }

    /// Opens one pass (in the calling thread's network namespace, for a TCP iterator).
    pub fn open(&self) -> io::Result<File> {
        bpf(BPF_ITER_CREATE, &IterCreate { link_fd: self.0.as_raw_fd() as u32, flags: 0 }).map(File::from)
    }

    /// One pass, read whole into `buf` (cleared first).
    pub fn read(&self, buf: &mut Vec<u8>) -> io::Result<()> {
        read_all(self.open()?, buf)
    }
}

/// A pass's file, read whole into `buf` (cleared first).
pub fn read_all(mut f: File, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.clear();
    f.read_to_end(buf)?;
    Ok(())
}
