//! Exporting a trained prompt to the formats others load (METHOD.md §8):
//! PEFT's prompt tuning adapter (P_new only), DePT's lossless layout, and our
//! own materialised checkpoint.

use std::collections::HashMap;
use std::path::Path;

use super::checkpoint::{self, PromptMeta};
use super::ept::SoftPrompt;
use crate::error::{Error, Result};
use crate::model::ModelShape;
use crate::tensors::{NamedF32, safetensors_f32, to_f32_vec};

/// The export formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `adapter_config.json` + `adapter_model.safetensors` of PEFT's PROMPT_TUNING: P_new only.
    Peft,
    /// DePT's PROMPT_TUNING_LORA: P_new, A and B (B rescaled to DePT's alpha/√r).
    Dept,
    /// Our format, materialised: P_new, A, B; no auxiliary networks.
    Native,
}

impl Format {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "peft" => Ok(Format::Peft),
            "dept" => Ok(Format::Dept),
            "native" => Ok(Format::Native),
            other => Err(Error::invalid(format!(
                "unknown export format `{other}`: expected peft, dept or native"
            ))),
        }
    }
}

fn write_tensors(
    path: &Path,
    tensors: &[NamedF32],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let out = safetensors_f32(tensors, metadata).map_err(|e| Error::data(path, e.to_string()))?;
    crate::error::write_atomic(path, &out)
}

fn write_config(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("config serialises");
    crate::error::write_atomic(path, text.as_bytes())
}

/// PEFT's prompt-tuning adapter config (METHOD.md §8): for a T5 one encoder
/// submodule, not PEFT's seq2seq default of two; `CAUSAL_LM` for a decoder.
fn peft_config(meta: &PromptMeta, model: &ModelShape, s: usize, d: usize) -> serde_json::Value {
    serde_json::json!({
        "base_model_name_or_path": meta.model,
        "inference_mode": true,
        "num_attention_heads": model.num_heads,
        "num_layers": model.num_layers,
        "num_transformer_submodules": 1,
        "num_virtual_tokens": s,
        "peft_type": "PROMPT_TUNING",
        "prompt_tuning_init": "RANDOM",
        "task_type": model.peft_task_type,
        "token_dim": d,
    })
}

/// What an export wrote, and what it could not keep.
pub struct ExportReport {
    pub files: Vec<std::path::PathBuf>,
    /// Set when the format cannot hold part of the prompt (PEFT and A·B).
    pub warning: Option<String>,
}

/// Writes `prompt` (materialised first) in `format` into the folder `out`.
/// `model` is the backbone's config (PEFT's adapter records its shape).
pub fn export(
    prompt: &SoftPrompt,
    meta: &PromptMeta,
    model: &ModelShape,
    format: Format,
    out: &Path,
    lora_alpha: f64,
) -> Result<ExportReport> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let p = prompt.materialize();
    let (s, d) = (p.len(), p.d_model());
    let p_new = to_f32_vec(p.prompt.clone());
    let meta_pt: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    match format {
        Format::Peft => {
            let config = peft_config(meta, model, s, d);
            let cfg_path = out.join("adapter_config.json");
            let model_path = out.join("adapter_model.safetensors");
            write_config(&cfg_path, &config)?;
            write_tensors(
                &model_path,
                &[("prompt_embeddings".into(), vec![s, d], p_new)],
                meta_pt,
            )?;
            let warning = p.low_rank.is_some().then(|| {
                "PEFT's prompt tuning has no place for A·B: the export keeps P_new only, \
                 so it does not reproduce this prompt's scores (use --format dept or native)"
                    .to_string()
            });
            Ok(ExportReport {
                files: vec![cfg_path, model_path],
                warning,
            })
        }
        Format::Dept => {
            let lr = p.low_rank.as_ref().ok_or_else(|| {
                Error::invalid("DePT's format needs A and B: this prompt has no low-rank part (use --format peft)")
            })?;
            let (m, r) = (lr.max_len(), lr.rank());
            // DePT multiplies A·B by lora_alpha/√r at run time: fold our scaling into B.
            let dept_scaling = lora_alpha / (r as f64).sqrt();
            let factor = (lr.scaling / dept_scaling) as f32;
            let b: Vec<f32> = to_f32_vec(lr.b.clone())
                .into_iter()
                .map(|x| x * factor)
                .collect();
            let mut config = peft_config(meta, model, s, d);
            config["peft_type"] = "PROMPT_TUNING_LORA".into();
            config["r"] = r.into();
            config["lora_alpha"] = lora_alpha.into();
            config["max_length"] = m.into();
            let cfg_path = out.join("adapter_config.json");
            let model_path = out.join("adapter_model.safetensors");
            write_config(&cfg_path, &config)?;
            write_tensors(
                &model_path,
                &[
                    ("prompt_embeddings".into(), vec![s, d], p_new),
                    (
                        "prompt_encoder.lora_embedding_A".into(),
                        vec![m, r],
                        to_f32_vec(lr.a.clone()),
                    ),
                    ("prompt_encoder.lora_embedding_B".into(), vec![r, d], b),
                ],
                meta_pt,
            )?;
            Ok(ExportReport {
                files: vec![cfg_path, model_path],
                warning: None,
            })
        }
        Format::Native => {
            let path = out.join("prompt.safetensors");
            let meta = PromptMeta {
                materialized: true,
                ..meta.clone()
            };
            checkpoint::save(&path, &p, &meta)?;
            Ok(ExportReport {
                files: vec![path],
                warning: None,
            })
        }
    }
}
