//! Trainable prompt parametrisations: how the frozen encoder's input is built.
//!
//! Every method turns the token embeddings of a batch (and its attention mask)
//! into the encoder input: prompt tuning prepends a prompt, DePT and EPT also
//! add a low-rank update to the embeddings. [`ept::SoftPrompt`] implements all
//! three; [`build`] makes fresh ones, [`checkpoint`] reads and writes them.

pub mod budget;
pub mod build;
pub mod checkpoint;
pub mod ept;
pub mod export;
pub mod init;

use burn::tensor::Tensor;

pub use crate::model::SoftInput;
pub use build::{Method, PromptConfig, PromptInit, build_prompt};
pub use ept::{FusionReading, ParamGroup, SoftPrompt};

/// What a prompt method gives the frozen model.
pub trait PromptInput {
    /// The rows to prepend and the update of the text embeddings (see [`SoftInput`]).
    fn soft_input(&self) -> SoftInput;

    /// T5's encoder input: `embeds` is `[b, t, d]`, `mask` `[b, t]` (1 = real
    /// token). Returns the encoder input and its mask, the prompt positions included.
    fn encoder_input(&self, embeds: Tensor<3>, mask: Tensor<2>) -> (Tensor<3>, Tensor<2>) {
        self.soft_input().apply(embeds, mask)
    }

    /// Longest text input (in tokens, `</s>` included) the method accepts; longer inputs are truncated.
    fn max_input_len(&self) -> Option<usize> {
        None
    }
}

/// The frozen model alone.
pub struct NoPrompt;

impl PromptInput for NoPrompt {
    fn soft_input(&self) -> SoftInput {
        SoftInput::none()
    }
}
