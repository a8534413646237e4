//! The one interface prompts, evaluation and training see a backbone through.
//!
//! Why a trait and not an enum: the callers must never ask which
//! architecture (or device) they hold. Everything they need is a question
//! about text pairs — the loss of targets given sources, greedy
//! continuations, the likelihood of label strings — plus the embedding
//! matrix a prompt is initialised from. Each family answers them its own
//! way (T5 through its encoder, a decoder over `[prompt ; source ; target]`),
//! so adding a family means one architecture file and one config, and an
//! `impl FrozenModel` beside them.

use burn::tensor::{Device, Tensor};

use super::batch::TokenizedExample;
use super::memory::{Activations, StepMemory, StepShape};
use super::soft::SoftInput;
use crate::io::weights::FloatType;

/// A frozen language model scored on text pairs.
pub trait FrozenModel: Send + Sync {
    /// `"t5"`, `"llama"`, `"mistral"`, `"qwen2"`: for reports, never for dispatch.
    fn architecture(&self) -> &'static str;

    /// PEFT's `task_type` for this kind of model (`SEQ_2_SEQ_LM`, `CAUSAL_LM`).
    fn peft_task_type(&self) -> &'static str;

    fn device(&self) -> &Device;

    /// Width of the input embeddings (what a prompt row must have).
    fn hidden_size(&self) -> usize;

    fn vocab_size(&self) -> usize;

    /// Layers and attention heads, as PEFT's adapter config records them.
    fn num_layers(&self) -> usize;
    fn num_heads(&self) -> usize;

    /// The precision the model computes in.
    fn dtype(&self) -> FloatType;

    /// Number of frozen parameters (a tied head counted once).
    fn num_parameters(&self) -> usize;

    /// Where the weights' memory goes (4-bit layers and the rest).
    fn weight_memory(&self) -> super::params::WeightMemory;

    /// Whether the output head is the input embedding matrix.
    fn tied_head(&self) -> bool;

    /// What the backward pass of a training step of `shape` keeps (see [`super::memory`]).
    fn step_activations(&self, shape: &StepShape) -> Activations;

    /// The memory a training step of `shape` needs with `trainable` prompt
    /// parameters: the weights as held, the kept activations, one decoded
    /// 4-bit layer, the prompt with its gradient and moments.
    fn step_memory(&self, shape: &StepShape, trainable: usize) -> StepMemory {
        let w = self.weight_memory();
        let a = self.step_activations(shape);
        // 4 bytes a value in every dtype: in bf16 the norms, softmax and loss
        // still keep f32 tensors, and a bf16 step was measured above the f32 one.
        StepMemory {
            weights: (w.quantized_bytes + w.other_bytes) as u64,
            activations: a.values * 4,
            decoded_layer: if w.quantized_parameters > 0 {
                a.largest_weight * 4
            } else {
                0
            },
            trainable: trainable as u64 * 16,
        }
    }

    /// The architecture's own facts for `ept inspect` (sizes, attention and
    /// position-embedding settings), in a stable order.
    fn describe(&self) -> Vec<(&'static str, serde_json::Value)>;

    /// Rows `ids` of the input embedding matrix, `[n, d]` in f32 (prompt initialisation).
    fn embedding_rows(&self, ids: &[usize]) -> Tensor<2>;

    /// The same weights without autodiff, for forward-only work during training.
    fn for_inference(&self) -> Box<dyn FrozenModel>;

    /// Per-example sums of target-token cross-entropy for `rows` in one batch,
    /// sources padded to at least `min_input_len` (a tracked tensor when `soft`
    /// is trainable: the training loss is built from it).
    fn loss_sums(
        &self,
        soft: &SoftInput,
        rows: &[TokenizedExample],
        min_input_len: usize,
    ) -> Tensor<1>;

    /// Greedy continuations of `inputs` (source ids) in one batch, each ending
    /// at the end-of-sequence token (included) or after `max_new_tokens`.
    fn generate(
        &self,
        soft: &SoftInput,
        inputs: &[Vec<u32>],
        min_input_len: usize,
        max_new_tokens: usize,
    ) -> Vec<Vec<u32>>;

    /// `[option][row]`: the summed negative log-likelihood of each option's
    /// tokens after each input, in one batch of `inputs`.
    fn option_loss_sums(
        &self,
        soft: &SoftInput,
        inputs: &[Vec<u32>],
        options: &[Vec<u32>],
        min_input_len: usize,
    ) -> Vec<Vec<f64>> {
        options
            .iter()
            .map(|option| {
                let rows: Vec<TokenizedExample> = inputs
                    .iter()
                    .map(|i| TokenizedExample {
                        input_ids: i.clone(),
                        label_ids: option.clone(),
                    })
                    .collect();
                super::layers::f64_values(self.loss_sums(soft, &rows, min_input_len))
            })
            .collect()
    }
}
