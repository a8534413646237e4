//! Frozen backbones read straight from Hugging Face files.
//!
//! One file per architecture (`t5.rs`), its `config.json` mirror in
//! `config.rs`, and [`Backbone`]: the model, its tokenizer and where they came from.

pub mod batch;
pub mod config;
pub mod random;
pub mod save;
pub mod t5;
pub mod tokenizer;

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use crate::error::Result;
use crate::io::weights::{FloatType, WeightFile};
pub use config::T5Config;
pub use t5::T5;
pub use tokenizer::TextTokenizer;

/// A loaded checkpoint: the frozen model, its tokenizer and the files used.
pub struct Backbone {
    pub model: T5,
    pub tokenizer: TextTokenizer,
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
    pub storage_dtype: String,
}

impl Backbone {
    /// Loads `dir` (already resolved, see [`crate::io::hub::resolve_model`]).
    /// `dtype` `None` computes in f32 (bf16 checkpoints are upcast).
    pub fn load(dir: &Path, dtype: Option<FloatType>, device: &Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        let config = T5Config::from_file(&config_path)?;
        let weights = WeightFile::open_dir(dir)?;
        let dtype = dtype.unwrap_or(FloatType::F32);
        let eos = config.eos_token_id;
        let model = T5::from_weights(config, &weights, &config_path, dtype, device)?;
        let tokenizer = TextTokenizer::from_file(&dir.join("tokenizer.json"), eos)?;
        let mut files = vec![config_path, tokenizer.path().to_path_buf()];
        files.extend(weights.files().into_iter().map(Path::to_path_buf));
        Ok(Backbone {
            model,
            tokenizer,
            dir: dir.into(),
            files,
            storage_dtype: weights.storage_dtype(),
        })
    }
}
