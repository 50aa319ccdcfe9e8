//! Reading classic tracepoint fields.
//!
//! The verifier refuses a context load at an offset that is not an immediate of the load
//! instruction, and our offsets come from the format files at run time, so fields are copied
//! out with `bpf_probe_read_kernel`. On the hot path the socket pointer and the protocol are
//! fetched with one copy of the 16 bytes that hold both (when the format puts them there).
use aya_ebpf::{EbpfContext, helpers::bpf_probe_read_kernel, programs::TracePointContext};

/// One field at `offset`.
#[inline(always)]
pub fn field<T: Copy>(ctx: &TracePointContext, offset: u32) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_kernel copes with any address.
    unsafe { bpf_probe_read_kernel((ctx.as_ptr() as *const u8).add(offset as usize) as *const T) }
}

/// A `u64` at `a` and a `u16` at `b`, with one copy when `b` lies within 14 bytes after `a`.
#[inline(always)]
pub fn u64_and_u16(ctx: &TracePointContext, a: u32, b: u32) -> Result<(u64, u16), i32> {
    if b >= a && b - a <= 14 {
        let buf: [u8; 16] = field(ctx, a)?;
        let d = (b - a) as usize;
        // SAFETY: d <= 14, so both reads stay inside the 16-byte buffer.
        let (x, y) = unsafe {
            (
                core::ptr::read_unaligned(buf.as_ptr() as *const u64),
                core::ptr::read_unaligned(buf.as_ptr().add(d & 15) as *const u16),
            )
        };
        return Ok((x, y));
    }
    Ok((field(ctx, a)?, field(ctx, b)?))
}
