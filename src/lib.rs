//! # ept — Efficient Prompt Tuning for frozen Hugging Face language models
//!
//! Trains, evaluates and ships soft prompts with EPT (Lan et al., 2024) and its
//! baselines, prompt tuning and DePT, on a frozen T5 or Llama-family decoder
//! read straight from Hugging Face files. Dependencies point one way, from file formats up:
//!
//! - [`io`]: safetensors checkpoints and the Hugging Face cache;
//! - [`kernels`]: fused CPU kernels with their own backward (norm, softmax,
//!   activations, products, attention), under the backbones;
//! - [`model`]: frozen backbones (T5; Llama, Mistral, Qwen2) behind one
//!   interface ([`model::FrozenModel`]), their configs and tokenizers;
//! - [`prompt`]: the trainable parametrisations (PT, DePT, EPT);
//! - [`data`]: readers, task formatting, splits, batching;
//! - [`evaluate`]: losses and generations over a data set;
//! - [`runtime`]: device and allocator set-up.
//!
//! The `ept` binary (`src/main.rs`, `src/cli/`) is a thin layer over this library.

pub mod bench;
pub mod data;
pub mod error;
pub mod evaluate;
pub mod io;
pub mod kernels;
pub mod metrics;
pub mod model;
pub mod organism;
pub mod prompt;
pub mod rng;
pub mod runtime;
pub mod tensors;
pub mod train;

pub use error::{Error, Result};
