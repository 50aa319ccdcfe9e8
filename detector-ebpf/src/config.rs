//! The read-only global the agent fills in at load time (`EbpfLoader::override_global`):
//! offsets from tracefs format files and BTF. It lands in `.rodata`, which aya creates
//! read-only for programs and freezes, so the verifier reads each field as a constant: a BTF
//! pointer plus such an offset is a fixed-offset access it can check against the kernel's BTF.
use detector_common::KernelConfig;

#[unsafe(no_mangle)]
pub static CONFIG: KernelConfig = KernelConfig::EMPTY;

/// One field of [`CONFIG`], read on its own (a volatile read, so the compiler neither folds the
/// placeholder value nor copies the whole struct onto the stack).
macro_rules! conf {
    ($field:ident) => {
        // SAFETY: a read of an initialised static's field.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!($crate::config::CONFIG.$field)) }
    };
}
pub(crate) use conf;
