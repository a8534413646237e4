//! Process-level set-up: the compute device (`device.rs`: `--device`, GPU
//! detection) and the allocator's behaviour.

pub mod device;
mod gpu_probe;

use burn::tensor::Device;
pub use device::{DeviceChoice, available_devices};

/// The CPU device (burn's `flex` backend), with autodiff when `train` is set.
pub fn cpu_device(train: bool) -> Device {
    let device = Device::flex();
    if train { device.autodiff() } else { device }
}

/// Tells glibc's malloc to keep large blocks instead of returning them to the
/// kernel after every step. Training allocates and frees the same large
/// activation buffers each step; with the default thresholds each one is a
/// fresh `mmap` + page faults. Measured on the T5-small-shaped frozen step
/// (see docs/BENCHMARKS.md). Equivalent to
/// `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296`.
/// `EPT_DEFAULT_MALLOC=1` leaves glibc's defaults in place.
pub fn tune_allocator() {
    if allocator_untouched() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: mallopt only adjusts allocator thresholds; called once at start-up.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
            mallopt(M_TRIM_THRESHOLD, i32::MAX);
        }
    }
}

/// Whether `EPT_DEFAULT_MALLOC` asks to leave glibc's malloc settings alone.
pub fn allocator_untouched() -> bool {
    std::env::var_os("EPT_DEFAULT_MALLOC").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Restores the default SIGPIPE action, so `ept tasks show ... | head` ends
/// quietly like other Unix tools instead of panicking on a closed pipe.
pub fn default_sigpipe() {
    #[cfg(unix)]
    {
        const SIGPIPE: i32 = 13;
        const SIG_DFL: usize = 0;
        unsafe extern "C" {
            fn signal(signum: i32, handler: usize) -> usize;
        }
        // SAFETY: resetting a signal to its default action at start-up, before any threads exist.
        unsafe {
            signal(SIGPIPE, SIG_DFL);
        }
    }
}
