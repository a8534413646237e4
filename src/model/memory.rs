//! How much memory a prompt-tuning step needs, before running one.
//!
//! Why an estimate from the shapes: a user with a 24 GiB machine or a 40 GB
//! GPU wants to know whether T5-11B in 4 bits trains at batch 8 × 256 before
//! loading 6 GB of weights. The frozen weights are known exactly
//! ([`super::params::WeightMemory`]); the rest is what the backward pass
//! keeps. The weights get no gradient, so a dense layer's input is not kept
//! (its backward needs the weight only); what is kept is what the
//! non-linear parts need: the norms' inputs, the attention's queries, keys,
//! values and probabilities, the feed-forward activations, the logits of the
//! scored tokens. Counted per token and layer below, item by item; checked
//! against the peak RSS `ept bench` measures (docs/BENCHMARKS.md, "Memory
//! of a training step"), not fitted to it.

use super::config::T5Config;
use super::llama_config::LlamaConfig;

/// The shape of one training step.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct StepShape {
    pub batch: usize,
    /// Prompt rows prepended to each input (PT's l, EPT's s).
    pub prompt_len: usize,
    /// Input tokens per example (after truncation to m).
    pub source_len: usize,
    /// Target tokens per example (EOS included).
    pub target_len: usize,
}

/// Values the backward pass keeps, and the largest frozen weight matrix (a
/// 4-bit layer is decoded into one such matrix per product).
#[derive(Clone, Copy, Debug)]
pub struct Activations {
    pub values: u64,
    pub largest_weight: u64,
}

/// T5: encoder over prompt + source, decoder over the target.
pub fn t5(c: &T5Config, gated: bool, s: &StepShape) -> Activations {
    let (d, heads, inner, ff) = (
        c.d_model as u64,
        c.num_heads as u64,
        (c.num_heads * c.d_kv) as u64,
        c.d_ff as u64,
    );
    let (b, enc, dec) = (
        s.batch as u64,
        (s.prompt_len + s.source_len) as u64,
        s.target_len as u64,
    );
    // ReLU's backward needs its output; gated: both branches and the activation.
    let ffn = if gated { 3 * ff } else { ff };
    // Two norm inputs, q k v, one probability per head and key, the feed-forward.
    let encoder_token = 2 * d + 3 * inner + heads * enc + ffn;
    // Three norms, self-attention as above over the target, cross-attention's
    // queries and probabilities over the encoder's tokens.
    let decoder_token = 3 * d + 3 * inner + heads * dec + inner + heads * enc + ffn;
    // Cross-attention's keys and values: per encoder token, in every decoder layer.
    let cross_kv = 2 * inner;
    let (le, ld) = (c.num_layers as u64, c.decoder_layers() as u64);
    // Final norms, and the logits of the scored tokens with their softmax.
    let ends = b * (enc + dec) * d + 2 * b * dec * c.vocab_size as u64;
    let values = b * enc * le * encoder_token
        + b * dec * ld * decoder_token
        + b * enc * ld * cross_kv
        + ends;
    let largest_weight = (d * ff).max(d * inner);
    Activations {
        values,
        largest_weight,
    }
}

/// A decoder over prompt + source + target; the head runs on the target only.
pub fn llama(c: &LlamaConfig, s: &StepShape) -> Activations {
    let (d, heads, kv, hd, ff) = (
        c.hidden_size() as u64,
        c.num_heads() as u64,
        c.num_kv_heads as u64,
        c.head_dim as u64,
        c.raw.intermediate_size as u64,
    );
    let (b, seq, dec) = (
        s.batch as u64,
        (s.prompt_len + s.source_len + s.target_len) as u64,
        s.target_len as u64,
    );
    // Two norm inputs, q (all heads) and k, v (the key/value heads), one
    // probability per head and key, the gated MLP's gate, up and activation.
    let token = 2 * d + (heads + 2 * kv) * hd + heads * seq + 3 * ff;
    let layers = c.raw.num_hidden_layers as u64;
    let ends = b * seq * d + 2 * b * dec * c.raw.vocab_size as u64;
    Activations {
        values: b * seq * layers * token + ends,
        largest_weight: (d * ff).max(heads * hd * d),
    }
}

/// The memory of one training step, in bytes, part by part.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct StepMemory {
    /// The frozen weights as held (4-bit layers and the rest).
    pub weights: u64,
    /// What the backward pass keeps ([`Activations::values`], 4 bytes each).
    pub activations: u64,
    /// One 4-bit layer decoded in f32 for its product (0 without 4-bit layers).
    pub decoded_layer: u64,
    /// The prompt, its gradient and AdamW's two moments, in f32.
    pub trainable: u64,
}

impl StepMemory {
    pub fn total(&self) -> u64 {
        self.weights + self.activations + self.decoded_layer + self.trainable
    }
}
