//! Training: optimiser groups, schedules, the loop and checkpoints.

pub mod lock;
pub mod optim;
pub mod parallel;
pub mod plots;
pub mod presets;
pub mod pretrain;
pub mod run;
pub mod schedule;
pub mod state;
pub mod sweep;
