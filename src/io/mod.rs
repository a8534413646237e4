//! File formats at the bottom of the stack: checkpoints and where to find them.

pub mod hub;
pub mod weights;
