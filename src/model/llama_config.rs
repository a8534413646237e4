//! `config.json` of a Llama-family decoder (`llama`, `mistral`, `qwen2`),
//! mirroring transformers' `LlamaConfig`, `MistralConfig` and `Qwen2Config`
//! with their defaults, in both the 4.x layout (`rope_theta`, `rope_scaling`,
//! `torch_dtype`) and the 5.x one (`rope_parameters`, `dtype`).

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::config::{MAX_DIM, MAX_LAYERS};
use super::layers::{RopeScaling, Rotary};
use crate::error::{Error, Result};

/// The families read, and what differs between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
        }
    }
}

/// An id field that transformers writes as one integer or a list (Llama 3's `eos_token_id`).
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum Ids {
    One(u32),
    Many(Vec<u32>),
}

impl Ids {
    pub fn all(&self) -> Vec<u32> {
        match self {
            Ids::One(i) => vec![*i],
            Ids::Many(v) => v.clone(),
        }
    }
}

/// The fields of `config.json` the forward pass needs, as written.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
pub struct RawLlamaConfig {
    pub model_type: Option<String>,
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_ffn")]
    pub intermediate_size: usize,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub bos_token_id: Option<Ids>,
    #[serde(default)]
    pub eos_token_id: Option<Ids>,
    #[serde(default)]
    pub pad_token_id: Option<Ids>,
    #[serde(default, alias = "dtype")]
    pub torch_dtype: Option<String>,
}

fn d_vocab() -> usize {
    32000
}
fn d_hidden() -> usize {
    4096
}
fn d_ffn() -> usize {
    11008
}
fn d_layers() -> usize {
    32
}
fn d_heads() -> usize {
    32
}
fn d_act() -> String {
    "silu".into()
}
fn d_max_pos() -> usize {
    2048
}
fn d_eps() -> f64 {
    1e-6
}

/// A validated decoder config: the raw fields plus what they imply.
#[derive(Clone, Debug)]
pub struct LlamaConfig {
    pub raw: RawLlamaConfig,
    pub family: Family,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    /// Per layer: the sliding window (key j visible to query i only if
    /// i − window < j ≤ i), or `None` for full causal attention.
    pub windows: Vec<Option<usize>>,
    /// Whether q, k and v have biases (Qwen2 always; Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// Whether o_proj has a bias (`attention_bias` outside Qwen2).
    pub o_bias: bool,
}

impl LlamaConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::error::read_to_string(path)?;
        let value: Value = serde_json::from_str(&text).map_err(|e| Error::Json {
            path: path.into(),
            line: Some(e.line()),
            msg: e.to_string(),
        })?;
        Self::from_value(&value, path)
    }

    /// From an already parsed `config.json` (`path` names it in errors).
    pub fn from_value(value: &Value, path: &Path) -> Result<Self> {
        let raw: RawLlamaConfig = crate::error::from_json_value(path, value.clone())?;
        let family = match raw.model_type.as_deref() {
            Some("llama") => Family::Llama,
            Some("mistral") => Family::Mistral,
            Some("qwen2") => Family::Qwen2,
            other => {
                return Err(Error::field(
                    path,
                    "model_type",
                    format!(
                        "unsupported decoder `{}`: expected llama, mistral or qwen2",
                        other.unwrap_or("(missing)")
                    ),
                ));
            }
        };
        for (field, v) in [
            ("vocab_size", raw.vocab_size),
            ("hidden_size", raw.hidden_size),
            ("intermediate_size", raw.intermediate_size),
            ("num_hidden_layers", raw.num_hidden_layers),
            ("num_attention_heads", raw.num_attention_heads),
        ] {
            if v == 0 {
                return Err(Error::field(path, field, "must be positive"));
            }
        }
        // Checked before the per-layer windows are allocated and `heads ×
        // head_dim` is computed (see `MAX_DIM`).
        for (field, v) in [
            ("vocab_size", raw.vocab_size),
            ("hidden_size", raw.hidden_size),
            ("intermediate_size", raw.intermediate_size),
            ("num_attention_heads", raw.num_attention_heads),
            ("num_key_value_heads", raw.num_key_value_heads.unwrap_or(0)),
            ("head_dim", raw.head_dim.unwrap_or(0)),
        ] {
            if v > MAX_DIM {
                return Err(Error::field(
                    path,
                    field,
                    format!("{v}: expected at most {MAX_DIM}"),
                ));
            }
        }
        if raw.num_hidden_layers > MAX_LAYERS {
            return Err(Error::field(
                path,
                "num_hidden_layers",
                format!(
                    "{}: expected at most {MAX_LAYERS} layers",
                    raw.num_hidden_layers
                ),
            ));
        }
        // The first EOS ends every target: a list must have one.
        if matches!(&raw.eos_token_id, Some(Ids::Many(ids)) if ids.is_empty()) {
            return Err(Error::field(
                path,
                "eos_token_id",
                "an empty list: expected an id or a list of ids",
            ));
        }
        if raw.hidden_act != "silu" {
            return Err(Error::field(
                path,
                "hidden_act",
                format!("unsupported activation `{}`: expected silu", raw.hidden_act),
            ));
        }
        let heads = raw.num_attention_heads;
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(heads);
        if num_kv_heads == 0 || !heads.is_multiple_of(num_kv_heads) {
            return Err(Error::field(
                path,
                "num_key_value_heads",
                format!("{num_kv_heads} must divide num_attention_heads ({heads})"),
            ));
        }
        // An explicit head_dim wins over hidden/heads (it may differ).
        let head_dim = match raw.head_dim {
            Some(h) => h,
            None if raw.hidden_size.is_multiple_of(heads) => raw.hidden_size / heads,
            None => {
                return Err(Error::field(
                    path,
                    "head_dim",
                    "missing, and hidden_size is not a multiple of num_attention_heads",
                ));
            }
        };
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(Error::field(
                path,
                "head_dim",
                format!("{head_dim}: rotary embeddings need a positive even head dimension"),
            ));
        }
        let (rope_theta, rope_scaling) = rope(value, &raw, path)?;
        let windows = windows(value, family, raw.num_hidden_layers, path)?;
        let (qkv_bias, o_bias) = match family {
            Family::Qwen2 => (true, false),
            _ => (raw.attention_bias, raw.attention_bias),
        };
        Ok(LlamaConfig {
            raw,
            family,
            num_kv_heads,
            head_dim,
            rope_theta,
            rope_scaling,
            windows,
            qkv_bias,
            o_bias,
        })
    }

    pub fn hidden_size(&self) -> usize {
        self.raw.hidden_size
    }

    pub fn num_heads(&self) -> usize {
        self.raw.num_attention_heads
    }

    /// The rotary embedding every layer applies.
    pub fn rotary(&self) -> Rotary {
        Rotary {
            dim: self.head_dim,
            theta: self.rope_theta,
            scaling: self.rope_scaling.clone(),
        }
    }

    /// Token ids that end a generation (the first also ends every target).
    pub fn eos_ids(&self) -> Vec<u32> {
        self.raw.eos_token_id.as_ref().map_or(vec![2], Ids::all)
    }

    /// The id right padding is filled with: the pad token, else the first EOS
    /// (masked out either way; Llama 2 has no pad token).
    pub fn pad_id(&self) -> u32 {
        self.raw
            .pad_token_id
            .as_ref()
            .and_then(|p| p.all().first().copied())
            .unwrap_or(self.eos_ids()[0])
    }
}

/// θ and the scaling, from `rope_parameters` (5.x) or `rope_theta` + `rope_scaling` (4.x).
fn rope(value: &Value, raw: &RawLlamaConfig, path: &Path) -> Result<(f64, RopeScaling)> {
    let params = value
        .get("rope_parameters")
        .filter(|v| !v.is_null())
        .or_else(|| value.get("rope_scaling").filter(|v| !v.is_null()));
    let field = if value.get("rope_parameters").is_some_and(|v| !v.is_null()) {
        "rope_parameters"
    } else {
        "rope_scaling"
    };
    // transformers' default θ, the same for the three families.
    let default_theta = 10000.0;
    let theta = params
        .and_then(|p| p.get("rope_theta"))
        .or_else(|| value.get("rope_theta"))
        .and_then(Value::as_f64)
        .unwrap_or(default_theta);
    let Some(params) = params else {
        return Ok((theta, RopeScaling::Default));
    };
    let kind = params
        .get("rope_type")
        .or_else(|| params.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let num = |key: &str| -> Result<f64> {
        params.get(key).and_then(Value::as_f64).ok_or_else(|| {
            Error::field(
                path,
                format!("{field}.{key}"),
                format!("missing: rope type `{kind}` needs it as a number"),
            )
        })
    };
    let scaling = match kind {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear {
            factor: num("factor")?,
        },
        "dynamic" => RopeScaling::Dynamic {
            factor: num("factor")?,
            max_positions: raw.max_position_embeddings,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_positions: num("original_max_position_embeddings")? as usize,
        },
        other => {
            return Err(Error::field(
                path,
                format!("{field}.rope_type"),
                format!(
                    "unsupported rope type `{other}`: expected default, linear, dynamic or llama3"
                ),
            ));
        }
    };
    Ok((theta, scaling))
}

/// Per-layer sliding windows: `layer_types` when the file has it (5.x), else
/// Mistral's `sliding_window` (4096 when absent, none when null) on every
/// layer, and Qwen2's on layers from `max_window_layers` on when `use_sliding_window`.
fn windows(
    value: &Value,
    family: Family,
    layers: usize,
    path: &Path,
) -> Result<Vec<Option<usize>>> {
    let window = match value.get("sliding_window") {
        None => match family {
            Family::Mistral | Family::Qwen2 => Some(4096),
            Family::Llama => None,
        },
        Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().filter(|&w| w > 0).ok_or_else(|| {
            Error::field(
                path,
                "sliding_window",
                "expected a positive integer or null",
            )
        })? as usize),
    };
    if let Some(types) = value.get("layer_types").and_then(Value::as_array) {
        if types.len() != layers {
            return Err(Error::field(
                path,
                "layer_types",
                format!("{} entries for {layers} layers", types.len()),
            ));
        }
        return types
            .iter()
            .map(|t| match t.as_str() {
                Some("full_attention") => Ok(None),
                Some("sliding_attention") => window.map(Some).ok_or_else(|| {
                    Error::field(
                        path,
                        "sliding_window",
                        "a sliding_attention layer needs a window",
                    )
                }),
                _ => Err(Error::field(
                    path,
                    "layer_types",
                    "expected full_attention or sliding_attention entries",
                )),
            })
            .collect();
    }
    Ok(match family {
        Family::Llama => vec![None; layers],
        Family::Mistral => vec![window; layers],
        Family::Qwen2 => {
            let on = value
                .get("use_sliding_window")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let from = value
                .get("max_window_layers")
                .and_then(Value::as_u64)
                .unwrap_or(28) as usize;
            (0..layers)
                .map(|i| if on && i >= from { window } else { None })
                .collect()
        }
    })
}
