//! The sampling walk's kernel objects, in one small unsafe module: the iterator link of the
//! `walk_sk_storage` program over the `SK_STATE` map, and one walk per read.
//!
//! aya 0.14's `Iter::attach` creates the link without a map, which a map iterator needs, so
//! the link is made here with `BPF_LINK_CREATE` and the map's fd in `iter_info`; each walk is
//! a file from `BPF_ITER_CREATE`, read to its end (include/uapi/linux/bpf.h).
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

/// The walk: a link of the iterator program to the socket storage map. Dropping it detaches.
#[derive(Debug)]
pub struct WalkLink(OwnedFd);

impl WalkLink {
    /// Links the loaded iterator program `prog` to the map `map`.
    pub fn create(prog: BorrowedFd<'_>, map: BorrowedFd<'_>) -> io::Result<Self> {
        let info = IterInfo { map_fd: map.as_raw_fd() as u32, _rest: [0; 3] };
        let attr = LinkCreate {
            prog_fd: prog.as_raw_fd() as u32,
            target_fd: 0,
            attach_type: BPF_TRACE_ITER,
            flags: 0,
            iter_info: &info as *const IterInfo as u64,
            iter_info_len: std::mem::size_of::<IterInfo>() as u32,
            _pad: 0,
        };
        bpf(BPF_LINK_CREATE, &attr).map(Self)
    }

    /// One walk, read whole into `buf` (cleared first).
    pub fn walk(&self, buf: &mut Vec<u8>) -> io::Result<()> {
        let fd = bpf(BPF_ITER_CREATE, &IterCreate { link_fd: self.0.as_raw_fd() as u32, flags: 0 })?;
        buf.clear();
        File::from(fd).read_to_end(buf)?;
        Ok(())
    }
}
