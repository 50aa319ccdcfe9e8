//! The read-only global the agent fills in at load time (`EbpfLoader::override_global`).
use aya_ebpf::Global;
use detector_common::KernelConfig;

/// Offsets and filters, from tracefs format files and BTF. `.rodata`, so the verifier sees
/// the values as constants.
#[unsafe(no_mangle)]
pub static CONFIG: Global<KernelConfig> = Global::new(KernelConfig::EMPTY);

#[inline(always)]
pub fn config() -> KernelConfig {
    CONFIG.load()
}
