//! Writing a T5 or a Llama back in Hugging Face's layout (`config.json` +
//! `model.safetensors`), so that a model trained here (`ept pretrain`) loads
//! in this tool and in transformers like any downloaded checkpoint.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Value, json};

use super::layers::RopeScaling;
use super::llama::{self, Llama};
use super::params::WeightRef;
use super::t5::{self, T5};
use crate::error::{Error, Result, write_atomic};
use crate::tensors::{NamedF32, safetensors_f32, to_f32_vec};

impl T5 {
    /// Writes `config.json` and `model.safetensors` (f32) into `dir`, each
    /// atomically. Dense weights go back to PyTorch's `[out, in]`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        write_checkpoint(dir, self.weights(), t5::is_dense_weight, &self.hf_config())
    }

    /// The config as transformers writes it: our fields (unset optional ones
    /// left out) plus the architecture name and the saved dtype.
    fn hf_config(&self) -> Value {
        let mut v = serde_json::to_value(&self.config).expect("the config serialises");
        let map = v.as_object_mut().expect("a struct serialises to an object");
        map.retain(|_, value| !value.is_null());
        map.insert(
            "architectures".into(),
            json!(["T5ForConditionalGeneration"]),
        );
        map.insert("model_type".into(), json!("t5"));
        map.insert("torch_dtype".into(), json!("float32"));
        if self.config.pad_token_id.is_none() {
            map.insert("pad_token_id".into(), json!(self.config.pad_id()));
        }
        if self.config.decoder_start_token_id.is_none() {
            map.insert(
                "decoder_start_token_id".into(),
                json!(self.config.decoder_start_id()),
            );
        }
        v
    }
}

impl Llama {
    /// Writes `config.json` and `model.safetensors` (f32) into `dir`, each
    /// atomically, as `LlamaForCausalLM.save_pretrained` lays them out.
    /// Default RoPE and full attention only (what `ept pretrain` trains):
    /// other rotary scalings and sliding windows are refused, not dropped.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let c = &self.config;
        if c.rope_scaling != RopeScaling::Default || c.windows.iter().any(Option::is_some) {
            return Err(Error::invalid(format!(
                "{}: saving a decoder with RoPE scaling or sliding windows is not supported",
                dir.display()
            )));
        }
        write_checkpoint(
            dir,
            self.weights(),
            llama::is_dense_weight,
            &self.hf_config(),
        )
    }

    /// The config as transformers (4.x layout, which 5.x reads too) writes
    /// it: the fields as read (unset optional ones left out), θ, and the
    /// architecture name and the saved dtype.
    fn hf_config(&self) -> Value {
        let mut v = serde_json::to_value(&self.config.raw).expect("the config serialises");
        let map = v.as_object_mut().expect("a struct serialises to an object");
        map.retain(|_, value| !value.is_null());
        map.insert("architectures".into(), json!(["LlamaForCausalLM"]));
        map.insert("model_type".into(), json!(self.config.family.name()));
        map.insert("rope_theta".into(), json!(self.config.rope_theta));
        map.insert("torch_dtype".into(), json!("float32"));
        v
    }
}

/// `model.safetensors` (f32; the weights that `is_dense` names transposed
/// back to `[out, in]`) and `config.json`, each written atomically.
fn write_checkpoint(
    dir: &Path,
    weights: Vec<(String, WeightRef<'_>)>,
    is_dense: fn(&str) -> bool,
    config: &Value,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tensors: Vec<NamedF32> = weights
        .into_iter()
        .map(|(name, w)| match w {
            WeightRef::D1(t) => (name, t.dims().to_vec(), to_f32_vec(t.clone())),
            WeightRef::D2(t) => {
                let t = if is_dense(&name) {
                    t.clone().transpose()
                } else {
                    t.clone()
                };
                (name, t.dims().to_vec(), to_f32_vec(t))
            }
            // Saved decoded, `[out, in]` (full-parameter training never holds one).
            WeightRef::Quant4(q) => (name, q.shape.clone(), q.dequantize()),
        })
        .collect();
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let path = dir.join("model.safetensors");
    let bytes = safetensors_f32(&tensors, metadata)
        .map_err(|e| Error::data(&path, format!("cannot serialise: {e}")))?;
    write_atomic(&path, &bytes)?;
    let text = serde_json::to_string_pretty(config).expect("JSON values serialise");
    write_atomic(dir.join("config.json"), format!("{text}\n").as_bytes())
}
