//! What aya's `ProgramInfo` leaves out of the kernel's `struct bpf_prog_info`: how many times
//! the kernel skipped a program. A kprobe or classic-tracepoint program does not run while
//! another such program runs on the same CPU (`bpf_prog_active`): a socket reset in a softirq
//! that interrupts the send program, on that CPU, closes without the close program seeing it.
use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use aya_obj::generated::{bpf_cmd, bpf_prog_info};

/// What the kernel accounted for one of the agent's programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramRuns {
    pub name: String,
    pub run_count: u64,
    pub run_time_ns: u64,
    pub recursion_misses: u64,
}

/// The kernel's accounting of the agent's `programs` (name, id), as loaded now (run counts and
/// times only while kernel.bpf_stats_enabled=1).
pub fn program_runs(programs: &[(String, u32)]) -> Vec<ProgramRuns> {
    use std::os::fd::AsFd as _;
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|info| {
            let (name, _) = programs.iter().find(|(_, id)| *id == info.id())?;
            let recursion_misses = info.fd().ok().and_then(|fd| recursion_misses(fd.as_fd()).ok()).unwrap_or(0);
            Some(ProgramRuns { name: name.clone(), run_count: info.run_count(), run_time_ns: info.run_time().as_nanos() as u64, recursion_misses })
        })
        .collect()
}

/// The `info` member of `union bpf_attr` (include/uapi/linux/bpf.h), for
/// `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
struct InfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// Runs of the program behind `fd` the kernel skipped (`recursion_misses`, 5.12+; 0 before).
pub fn recursion_misses(fd: BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: a struct of integers and integer arrays, for which all zeroes is a valid value.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoByFd { bpf_fd: fd.as_raw_fd() as u32, info_len: size_of::<bpf_prog_info>() as u32, info: &raw mut info as u64 };
    // SAFETY: `attr` is the prefix of `bpf_attr` this command reads, its size is passed (the
    // kernel zero-fills the rest), and the kernel writes at most `info_len` bytes to `info`,
    // which outlives the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long, &raw mut attr, size_of::<InfoByFd>()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.recursion_misses)
}
