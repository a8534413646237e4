//! Training: optimiser groups, schedules, the loop and checkpoints.

pub mod optim;
pub mod plots;
pub mod presets;
pub mod run;
pub mod schedule;
pub mod state;
