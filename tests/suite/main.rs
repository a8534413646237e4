//! The integration tests, as one test binary.
//!
//! Each module was once its own file under `tests/`, and so its own binary:
//! sixteen executables that each linked all of burn, about 0.7 GB apiece with
//! debug info, which filled the CI machine's disk. One binary links once.
//! Run a single module with its path as the filter, e.g.
//! `cargo test --test suite organism_model::`.

mod alloc_probe;
mod common;

/// Every allocation goes through `alloc_probe`, which remembers the largest
/// request per thread (`fuzz_readers` bounds what a reader may allocate).
#[global_allocator]
static ALLOCATOR: alloc_probe::Probe = alloc_probe::Probe;

mod bad_inputs;
mod cli;
mod config_sweep;
mod export;
mod frozen;
mod fuzz_readers;
// The GPU code path on cubecl's CPU runtime: `--features cuda,cpu` (or `cpu`).
#[cfg(feature = "cpu")]
mod gpu_path;
mod llama_parity;
mod metrics;
mod nf4;
mod optim;
mod organism;
mod organism_model;
mod parallel;
mod plots;
mod prompt_parity;
mod randperm;
mod ranking;
mod readers;
mod resume;
mod t5_parity;
mod train;
