//! Frozen backbones read straight from Hugging Face files.
//!
//! One file per architecture (`t5.rs`, `llama.rs` with Mistral and Qwen2 as
//! its switches), each with its `config.json` mirror (`config.rs`,
//! `llama_config.rs`) and its [`FrozenModel`] implementation
//! (`t5_frozen.rs`, `llama_frozen.rs`), over the shared layers of
//! `layers.rs`. [`Backbone`] is a loaded model, its tokenizer and where they
//! came from; callers use the model only through [`FrozenModel`].

pub mod batch;
pub mod config;
pub mod frozen;
pub mod layers;
pub mod llama;
pub mod llama_config;
mod llama_frozen;
pub mod memory;
pub mod params;
pub mod random;
pub mod save;
pub mod soft;
pub mod t5;
mod t5_frozen;
pub mod tokenizer;

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use crate::error::{Error, Result};
use crate::io::bnb4::{QuantConfig, QuantizeSpec, StoredDtype};
use crate::io::weights::{FloatType, WeightFile};
pub use config::T5Config;
pub use frozen::FrozenModel;
pub use llama::Llama;
pub use llama_config::LlamaConfig;
pub use soft::SoftInput;
pub use t5::T5;
pub use tokenizer::TextTokenizer;

/// What exports and budgets need of a model, read from `config.json` alone.
#[derive(Clone, Debug)]
pub struct ModelShape {
    pub architecture: String,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    /// PEFT's `task_type`.
    pub peft_task_type: &'static str,
}

impl ModelShape {
    /// The shape of the model in `dir` (its `config.json`, validated).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let (path, config) = read_config(dir)?;
        Ok(match Arch::of(&config) {
            Arch::Decoder => {
                let c = LlamaConfig::from_value(&config, &path)?;
                ModelShape {
                    architecture: c.family.name().into(),
                    hidden_size: c.hidden_size(),
                    num_layers: c.raw.num_hidden_layers,
                    num_heads: c.num_heads(),
                    peft_task_type: "CAUSAL_LM",
                }
            }
            Arch::T5 => {
                let c = T5Config::from_file(&path)?;
                ModelShape {
                    architecture: "t5".into(),
                    hidden_size: c.d_model,
                    num_layers: c.num_layers,
                    num_heads: c.num_heads,
                    peft_task_type: "SEQ_2_SEQ_LM",
                }
            }
        })
    }
}

/// Which implementation reads a `config.json`: its `model_type` decides, and
/// anything not a decoder goes to T5, whose config check names the field.
enum Arch {
    T5,
    Decoder,
}

impl Arch {
    fn of(config: &serde_json::Value) -> Self {
        match config.get("model_type").and_then(|v| v.as_str()) {
            Some("llama" | "mistral" | "qwen2") => Arch::Decoder,
            _ => Arch::T5,
        }
    }
}

/// Which checkpoint tensors of a model with this `config.json` are dense
/// layers that 4-bit quantization replaces (never the head: transformers
/// keeps `lm_head` out), and the modules the architecture keeps out as
/// transformers does (T5's `wo`, `_keep_in_fp32_modules`).
pub fn quantizable(config: &serde_json::Value) -> (fn(&str) -> bool, &'static [&'static str]) {
    match Arch::of(config) {
        Arch::T5 => (|n| t5::is_dense_weight(n) && n != "lm_head.weight", &["wo"]),
        Arch::Decoder => (|n| n.ends_with("_proj.weight"), &[]),
    }
}

/// `dir/config.json`, parsed.
pub fn read_config(dir: &Path) -> Result<(PathBuf, serde_json::Value)> {
    let path = dir.join("config.json");
    let text = crate::error::read_to_string(&path)?;
    let value = serde_json::from_str(&text).map_err(|e| Error::Json {
        path: path.clone(),
        line: Some(e.line()),
        msg: e.to_string(),
    })?;
    Ok((path, value))
}

/// A loaded checkpoint: the frozen model, its tokenizer and the files used.
pub struct Backbone {
    pub model: Box<dyn FrozenModel>,
    pub tokenizer: TextTokenizer,
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
    pub storage_dtype: String,
    /// The checkpoint's `config.json` as written (for reports and exports).
    pub config: serde_json::Value,
}

impl Backbone {
    /// Loads `dir` (already resolved, see [`crate::io::hub::resolve_model`]),
    /// the architecture chosen by `config.json`'s `model_type`.
    /// `dtype` `None` computes in f32 (bf16 checkpoints are upcast), or for a
    /// 4-bit file in its `bnb_4bit_compute_dtype` (bfloat16: bf16-mixed).
    pub fn load(dir: &Path, dtype: Option<FloatType>, device: &Device) -> Result<Self> {
        Self::load_quantized(dir, dtype, None, device)
    }

    /// [`Backbone::load`], the dense layers quantized to 4 bits as they load
    /// when `quantize` is set (as transformers + bitsandbytes would; a file
    /// already in 4 bits is read as it is).
    pub fn load_quantized(
        dir: &Path,
        dtype: Option<FloatType>,
        quantize: Option<QuantizeSpec>,
        device: &Device,
    ) -> Result<Self> {
        let (config_path, config) = read_config(dir)?;
        let file_quant = QuantConfig::from_config(&config, &config_path)?;
        let dtype = dtype.unwrap_or(match &file_quant {
            Some(q) if q.compute_dtype == StoredDtype::Bf16 => FloatType::Bf16Mixed,
            _ => FloatType::F32,
        });
        let tokenizer_path = dir.join("tokenizer.json");
        let weights = WeightFile::open_dir(dir)?;
        let quantize = quantize.map(|q| {
            let skip: Vec<&str> = file_quant
                .iter()
                .flat_map(|f| f.skip.iter().map(String::as_str))
                .collect();
            q.skipping(&skip)
        });
        let (model, tokenizer): (Box<dyn FrozenModel>, TextTokenizer) = match Arch::of(&config) {
            Arch::Decoder => {
                let cfg = LlamaConfig::from_value(&config, &config_path)?;
                let eos = cfg.eos_ids()[0];
                // The tokenizer first: a missing one fails before gigabytes are read.
                let tok = TextTokenizer::from_file(&tokenizer_path, eos)?.for_decoder();
                let model = Llama::from_weights(cfg, &weights, dtype, quantize, device)?;
                (Box::new(model), tok)
            }
            Arch::T5 => {
                // T5Config names the field and every supported value otherwise.
                let cfg = T5Config::from_file(&config_path)?;
                let eos = cfg.eos_token_id;
                let tok = TextTokenizer::from_file(&tokenizer_path, eos)?;
                let model = T5::from_weights(cfg, &weights, &config_path, dtype, quantize, device)?;
                (Box::new(model), tok)
            }
        };
        let mut files = vec![config_path, tokenizer.path().to_path_buf()];
        files.extend(weights.files().into_iter().map(Path::to_path_buf));
        Ok(Backbone {
            model,
            tokenizer,
            dir: dir.into(),
            files,
            storage_dtype: weights.storage_dtype(),
            config,
        })
    }
}
