//! Reading `struct sock_common` with offsets found in the running kernel's BTF.
use aya_ebpf::helpers::bpf_probe_read_kernel;
use detector_common::{AF_INET, AF_INET6, KernelConfig, OFFSET_ABSENT, SockTuple};

#[inline(always)]
unsafe fn read<T>(base: u64, off: u32) -> Result<T, i32> {
    if off == OFFSET_ABSENT {
        return Err(-22);
    }
    // SAFETY: `bpf_probe_read_kernel` copes with any address; a bad one is an error, not a fault.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }
}

#[inline(always)]
pub fn family(cfg: &KernelConfig, sk: u64) -> Result<u16, i32> {
    unsafe { read::<u16>(sk, cfg.sk_family) }
}

#[inline(always)]
pub fn state(cfg: &KernelConfig, sk: u64) -> Result<u8, i32> {
    unsafe { read::<u8>(sk, cfg.sk_state) }
}

/// Addresses, ports and network namespace of a socket.
#[inline(always)]
pub fn tuple(cfg: &KernelConfig, sk: u64, family: u16) -> Result<SockTuple, i32> {
    let mut t = SockTuple {
        family,
        ..SockTuple::default()
    };
    unsafe {
        if family == AF_INET {
            let s: [u8; 4] = read(sk, cfg.sk_rcv_saddr)?;
            let d: [u8; 4] = read(sk, cfg.sk_daddr)?;
            t.saddr[..4].copy_from_slice(&s);
            t.daddr[..4].copy_from_slice(&d);
        } else if family == AF_INET6 {
            t.saddr = read(sk, cfg.sk_v6_rcv_saddr)?;
            t.daddr = read(sk, cfg.sk_v6_daddr)?;
        }
        // skc_num is the local port in host order, skc_dport the remote port in network order.
        t.sport = read::<u16>(sk, cfg.sk_num)?;
        t.dport = u16::from_be(read::<u16>(sk, cfg.sk_dport)?);
        let net: u64 = read(sk, cfg.sk_net)?;
        if net != 0 {
            t.netns = read::<u32>(net, cfg.net_ns_inum).unwrap_or(0);
        }
    }
    Ok(t)
}
