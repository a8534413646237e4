//! The test binary's global allocator: [`System`], plus a record of the
//! largest single allocation request made by the current thread since the
//! last [`reset`] (for `fuzz_readers`: a reader must not allocate what a
//! corrupt header claims).
//!
//! Only the calling thread is watched: work a reader hands to rayon's pool
//! (or any other thread) is not counted. The readers checked here (safetensors
//! headers, JSON, TOML, TSV, parquet, Arrow) parse on the calling thread.
//!
//! The record is a const-initialised `Cell` with no destructor, so reading
//! and writing it never allocates, and it works during thread start and exit.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;

pub struct Probe;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    /// Requests above this (0: no limit) are reported on stderr at once, before
    /// they are attempted: one that the system then refuses aborts the process,
    /// and the report is what is left to tell which case did it.
    static REPORT_ABOVE: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|c| {
        if size > c.get() {
            c.set(size);
        }
    });
    let limit = REPORT_ABOVE.try_with(Cell::get).unwrap_or(0);
    if limit != 0 && size > limit {
        // Formatting integers into unbuffered stderr does not allocate.
        let _ = writeln!(
            std::io::stderr(),
            "alloc_probe: one allocation of {size} bytes requested (bound {limit}); \
             the fuzz case running on this thread is the one printed last"
        );
    }
}

// SAFETY: every call is forwarded unchanged to `System`; `note` only touches
// thread-locals that never allocate.
unsafe impl GlobalAlloc for Probe {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Forgets the largest request so far on this thread, and sets the size above
/// which a request is reported on stderr as it happens (0: never).
pub fn reset(report_above: usize) {
    LARGEST.with(|c| c.set(0));
    REPORT_ABOVE.with(|c| c.set(report_above));
}

/// The largest single request on this thread since the last [`reset`].
pub fn largest() -> usize {
    LARGEST.with(Cell::get)
}
