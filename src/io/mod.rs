//! File formats at the bottom of the stack: checkpoints and where to find them.

pub mod bnb4;
pub mod hub;
pub mod quantize;
pub mod weights;
