//! Which NVIDIA GPUs this machine has, asked of the driver directly.
//!
//! Why not ask burn: creating a CUDA device in cubecl panics when the driver
//! is missing, and a panic is not an answer `--device auto` can act on. The
//! driver library (`libcuda.so.1`) is opened at run time with `dlopen`, as
//! cudarc itself does, so this works in every build: a binary without the
//! `cuda` feature can still say that a GPU is there and what to rebuild with.

use std::ffi::{CStr, c_char, c_int, c_uint, c_void};

/// One GPU as the driver describes it.
#[derive(Clone, Debug)]
pub struct Gpu {
    pub index: usize,
    pub name: String,
    pub memory_bytes: u64,
}

/// The GPUs the NVIDIA driver reports, or why none can be listed (driver
/// library absent, `cuInit` failing, e.g. no device or a driver mismatch).
pub fn cuda_gpus() -> Result<Vec<Gpu>, String> {
    // SAFETY: dlopen/dlsym with NUL-terminated names; every symbol is checked
    // for null before it is cast to the driver API's documented signature,
    // and the library is never closed (cudarc may hold the same handle).
    unsafe {
        let lib = libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        if lib.is_null() {
            return Err("libcuda.so.1 (the NVIDIA driver) is not installed".into());
        }
        let sym = |name: &CStr| -> Result<*mut c_void, String> {
            let p = libc::dlsym(lib, name.as_ptr());
            if p.is_null() {
                Err(format!("libcuda.so.1 lacks {}", name.to_string_lossy()))
            } else {
                Ok(p)
            }
        };
        type Init = unsafe extern "C" fn(c_uint) -> c_int;
        type Count = unsafe extern "C" fn(*mut c_int) -> c_int;
        type Get = unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
        type Name = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int;
        type Mem = unsafe extern "C" fn(*mut usize, c_int) -> c_int;
        let init: Init = std::mem::transmute(sym(c"cuInit")?);
        let count: Count = std::mem::transmute(sym(c"cuDeviceGetCount")?);
        let get: Get = std::mem::transmute(sym(c"cuDeviceGet")?);
        let name: Name = std::mem::transmute(sym(c"cuDeviceGetName")?);
        let mem: Mem = std::mem::transmute(sym(c"cuDeviceTotalMem_v2")?);
        let status = init(0);
        if status != 0 {
            // 100 is CUDA_ERROR_NO_DEVICE.
            return Err(if status == 100 {
                "the NVIDIA driver reports no GPU".into()
            } else {
                format!("cuInit failed with CUDA error {status}")
            });
        }
        let mut n: c_int = 0;
        if count(&mut n) != 0 {
            return Err("cuDeviceGetCount failed".into());
        }
        let mut gpus = Vec::new();
        for i in 0..n {
            let mut dev: c_int = 0;
            if get(&mut dev, i) != 0 {
                continue;
            }
            let mut buf = [0 as c_char; 256];
            let label = if name(buf.as_mut_ptr(), buf.len() as c_int, dev) == 0 {
                CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
            } else {
                "unknown GPU".into()
            };
            let mut bytes = 0usize;
            let _ = mem(&mut bytes, dev);
            gpus.push(Gpu {
                index: i as usize,
                name: label,
                memory_bytes: bytes as u64,
            });
        }
        Ok(gpus)
    }
}
