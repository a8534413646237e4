//! `config.json` of a T5 checkpoint, mirroring transformers' `T5Config` with its defaults.
//!
//! Absent fields take transformers' defaults so that any config written by
//! `save_pretrained` (v4 or v5) loads. Fields we do not use are ignored.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

fn d_vocab() -> usize {
    32128
}
fn d_model() -> usize {
    512
}
fn d_kv() -> usize {
    64
}
fn d_ff() -> usize {
    2048
}
fn d_layers() -> usize {
    6
}
fn d_heads() -> usize {
    8
}
fn d_buckets() -> usize {
    32
}
fn d_max_distance() -> usize {
    128
}
fn d_eps() -> f64 {
    1e-6
}
fn d_ff_proj() -> String {
    "relu".into()
}
fn d_true() -> bool {
    true
}
fn d_eos() -> u32 {
    1
}

/// The `model_type`s ept reads; T5's config check is where anything else is refused.
const SUPPORTED: &str = "t5, mt5, llama, mistral or qwen2";

/// The largest dimension (width, heads, vocabulary) a config may give. A
/// config is a few hundred bytes, yet products of its numbers (`num_heads ×
/// d_kv`) are computed before any weight is read: below 2^32 each, a product
/// of two cannot overflow. No released model comes near.
pub const MAX_DIM: usize = u32::MAX as usize;

/// The most layers a config may give: a table is allocated per layer before
/// the weights say whether the layers exist (the largest released models
/// have a few hundred).
pub const MAX_LAYERS: usize = 4096;

/// transformers' `T5Config`, the fields the forward pass needs.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
pub struct T5Config {
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_model")]
    pub d_model: usize,
    #[serde(default = "d_kv")]
    pub d_kv: usize,
    #[serde(default = "d_ff")]
    pub d_ff: usize,
    #[serde(default = "d_layers")]
    pub num_layers: usize,
    /// `None` means "as many as the encoder".
    #[serde(default)]
    pub num_decoder_layers: Option<usize>,
    #[serde(default = "d_heads")]
    pub num_heads: usize,
    #[serde(default = "d_buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "d_max_distance")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "d_eps")]
    pub layer_norm_epsilon: f64,
    /// "relu" (T5 v1.0), "gated-gelu" (v1.1, flan), "gated-silu", ...
    #[serde(default = "d_ff_proj")]
    pub feed_forward_proj: String,
    #[serde(default = "d_true")]
    pub tie_word_embeddings: bool,
    /// Written by transformers >= 5; older configs imply it from `tie_word_embeddings`.
    #[serde(default)]
    pub scale_decoder_outputs: Option<bool>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default = "d_eos")]
    pub eos_token_id: u32,
    #[serde(default)]
    pub decoder_start_token_id: Option<u32>,
    /// Explicit activation and gating, which override what `feed_forward_proj` implies.
    #[serde(default)]
    pub dense_act_fn: Option<String>,
    #[serde(default)]
    pub is_gated_act: Option<bool>,
    /// `torch_dtype` (v4) or `dtype` (v5): the dtype the weights were saved in.
    #[serde(default, alias = "dtype")]
    pub torch_dtype: Option<String>,
}

/// The activation inside the feed-forward block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Relu,
    /// The tanh approximation (`gelu_new`), which T5 v1.1's "gated-gelu" means.
    GeluNew,
    /// The exact erf GELU.
    Gelu,
    Silu,
}

/// The shape of the feed-forward block: `wo(act(wi x))` or `wo(act(wi_0 x) * wi_1 x)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeedForwardKind {
    pub gated: bool,
    pub act: Activation,
}

impl T5Config {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::error::read_to_string(path)?;
        let cfg: T5Config = crate::error::parse_json(path, &text)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        match self.model_type.as_deref() {
            Some("t5") | Some("mt5") => {}
            Some(other) => {
                return Err(Error::field(
                    path,
                    "model_type",
                    format!("unsupported architecture `{other}`: expected {SUPPORTED}"),
                ));
            }
            None => {
                return Err(Error::field(
                    path,
                    "model_type",
                    format!("missing: expected {SUPPORTED}"),
                ));
            }
        }
        // Each size: positive, and bounded before anything is allocated from it.
        for (field, value, max) in [
            ("d_model", self.d_model, MAX_DIM),
            ("d_kv", self.d_kv, MAX_DIM),
            ("d_ff", self.d_ff, MAX_DIM),
            ("num_heads", self.num_heads, MAX_DIM),
            ("vocab_size", self.vocab_size, MAX_DIM),
            (
                "relative_attention_num_buckets",
                self.relative_attention_num_buckets,
                MAX_DIM,
            ),
            ("num_layers", self.num_layers, MAX_LAYERS),
            ("num_decoder_layers", self.decoder_layers(), MAX_LAYERS),
        ] {
            if value == 0 {
                return Err(Error::field(path, field, "must be positive"));
            }
            if value > max {
                return Err(Error::field(
                    path,
                    field,
                    format!("{value}: expected at most {max}"),
                ));
            }
        }
        self.feed_forward(path)?;
        Ok(())
    }

    /// Parses `feed_forward_proj` the way transformers does ("gated-" prefix, activation suffix).
    pub fn feed_forward(&self, path: &Path) -> Result<FeedForwardKind> {
        let parts: Vec<&str> = self.feed_forward_proj.split('-').collect();
        let gated = parts.len() > 1 && parts[0] == "gated";
        if parts.len() > 2 || (parts.len() == 2 && !gated) {
            return Err(Error::field(
                path,
                "feed_forward_proj",
                format!(
                    "`{}`: expected `{{ACT}}` or `gated-{{ACT}}`",
                    self.feed_forward_proj
                ),
            ));
        }
        let gated = self.is_gated_act.unwrap_or(gated);
        let act_name = self
            .dense_act_fn
            .as_deref()
            .unwrap_or(parts[parts.len() - 1]);
        let act = match (act_name, gated) {
            ("relu", _) => Activation::Relu,
            // transformers maps "gated-gelu" to gelu_new for backwards compatibility.
            ("gelu", true) if self.dense_act_fn.is_none() => Activation::GeluNew,
            ("gelu_new", _) | ("gelu_pytorch_tanh", _) => Activation::GeluNew,
            ("gelu", _) => Activation::Gelu,
            ("silu", _) | ("swish", _) => Activation::Silu,
            (other, _) => {
                return Err(Error::field(
                    path,
                    "feed_forward_proj",
                    format!(
                        "unsupported activation `{other}`: expected relu, gelu, gelu_new or silu"
                    ),
                ));
            }
        };
        Ok(FeedForwardKind { gated, act })
    }

    pub fn decoder_layers(&self) -> usize {
        self.num_decoder_layers.unwrap_or(self.num_layers)
    }

    /// Width of the attention projections (may differ from `d_model`).
    pub fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }

    /// Whether the decoder output is multiplied by `d_model^-0.5` before the LM head.
    pub fn rescale_decoder_output(&self) -> bool {
        self.scale_decoder_outputs
            .unwrap_or(self.tie_word_embeddings)
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_token_id.unwrap_or(0)
    }

    pub fn decoder_start_id(&self) -> u32 {
        self.decoder_start_token_id.unwrap_or(self.pad_id())
    }
}
