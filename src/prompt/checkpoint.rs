//! Saving and loading prompts in the format of `docs/FORMAT.md`: one
//! safetensors file, f32 tensors under fixed names, settings as metadata.

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::{DType, Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

use super::PromptInput;
use super::ept::{Expert, FusionReading, LowRank, MultiSpace, SoftPrompt};
use crate::error::{Error, Result};
use crate::tensors::{NamedF32, f32_from_le, safetensors_f32, to_f32_vec};

/// The settings stored beside the tensors.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PromptMeta {
    pub method: String,
    pub materialized: bool,
    pub model: String,
    pub d_model: usize,
    /// l of the budget (informational).
    pub l: usize,
}

/// Writes `prompt` to `path` atomically (temporary file + rename).
pub fn save(path: &Path, prompt: &SoftPrompt, meta: &PromptMeta) -> Result<()> {
    let mut tensors: Vec<NamedF32> = Vec::new();
    for (name, _, t) in prompt.params() {
        let mut shape = t.dims().to_vec();
        // Biases live as [1, n] in memory and [n] on disk, as in PyTorch.
        if name.ends_with(".bias") {
            shape = vec![shape[1]];
        }
        tensors.push((name, shape, to_f32_vec(t.clone())));
    }
    let mut md: HashMap<String, String> = HashMap::new();
    let (s, r) = (
        prompt.len(),
        prompt.low_rank.as_ref().map_or(0, |lr| lr.rank()),
    );
    let m = prompt.max_input_len().unwrap_or(0);
    let ne = prompt.multi_space.as_ref().map_or(0, |ms| ms.experts.len());
    for (k, v) in [
        ("ept.format", "1".to_string()),
        ("ept.method", meta.method.clone()),
        ("ept.materialized", meta.materialized.to_string()),
        ("ept.fusion", FusionReading::name(prompt.fusion).to_string()),
        ("ept.multi_space", prompt.multi_space.is_some().to_string()),
        (
            "ept.lora_scaling",
            prompt
                .low_rank
                .as_ref()
                .map_or(1.0, |lr| lr.scaling)
                .to_string(),
        ),
        ("ept.max_len", m.to_string()),
        ("ept.d_model", prompt.d_model().to_string()),
        ("ept.model", meta.model.clone()),
        ("ept.s", s.to_string()),
        ("ept.l", meta.l.to_string()),
        ("ept.r", r.to_string()),
        ("ept.num_experts", ne.to_string()),
    ] {
        md.insert(k.to_string(), v);
    }
    let bytes = safetensors_f32(&tensors, md)
        .map_err(|e| Error::data(path, format!("cannot serialise prompt: {e}")))?;
    crate::error::write_atomic(path, &bytes)
}

/// Reads a prompt checkpoint onto `device` (not trainable; see [`SoftPrompt::to_device`]).
pub fn load(path: &Path, device: &Device) -> Result<(SoftPrompt, PromptMeta)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::data(path, format!("not a safetensors file: {e}")))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::data(path, format!("not a safetensors file: {e}")))?;
    let md: HashMap<String, String> = header.metadata().clone().unwrap_or_default();
    let get = |k: &str| -> Result<&String> {
        md.get(k)
            .ok_or_else(|| Error::field(path, k, "missing from the metadata (see docs/FORMAT.md)"))
    };
    // Version 1 is the only one: a file of another version would be misread.
    if let Some(v) = md.get("ept.format").filter(|v| v.as_str() != "1") {
        return Err(Error::field(
            path,
            "ept.format",
            format!("`{v}`: expected 1 (docs/FORMAT.md); written by another version of ept?"),
        ));
    }
    let parse_usize = |k: &str| -> Result<usize> {
        get(k)?.parse().map_err(|_| {
            Error::field(
                path,
                k,
                format!("`{}`: expected a non-negative integer", md[k]),
            )
        })
    };
    let tensor = |name: &str| -> Result<Option<Tensor<2>>> {
        let view = match st.tensor(name) {
            Ok(v) => v,
            Err(_) => return Ok(None),
        };
        if view.dtype() != Dtype::F32 {
            return Err(Error::Dtype {
                path: path.into(),
                name: name.into(),
                dtype: format!("{:?}", view.dtype()),
            });
        }
        let shape = view.shape().to_vec();
        let shape2 = match shape.as_slice() {
            [n] => [1, *n],
            [a, b] => [*a, *b],
            _ => {
                return Err(Error::data(
                    path,
                    format!("tensor `{name}` has shape {shape:?}: expected 1 or 2 dims"),
                ));
            }
        };
        let values = f32_from_le(view.data());
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::field(
                path,
                name,
                format!(
                    "holds {} at index {i}: expected finite values (did training diverge?)",
                    values[i]
                ),
            ));
        }
        Ok(Some(Tensor::from_data(
            TensorData::new(values, shape2),
            (device, DType::F32),
        )))
    };
    let require = |name: &str| -> Result<Tensor<2>> {
        tensor(name)?.ok_or_else(|| Error::MissingTensor {
            path: path.into(),
            name: name.into(),
        })
    };
    let prompt = require("prompt")?;
    let d = prompt.dims()[1];
    let d_meta = parse_usize("ept.d_model")?;
    if d_meta != d {
        return Err(Error::field(
            path,
            "ept.d_model",
            format!("{d_meta}, but `prompt` is {d} wide"),
        ));
    }
    let scaling: f64 = get("ept.lora_scaling")?
        .parse()
        .ok()
        .filter(|x: &f64| x.is_finite())
        .ok_or_else(|| Error::field(path, "ept.lora_scaling", "expected a finite number"))?;
    let low_rank = match (tensor("lora_a")?, tensor("lora_b")?) {
        (Some(a), Some(b)) => Some(LowRank { a, b, scaling }),
        (None, None) => None,
        _ => {
            return Err(Error::data(
                path,
                "has one of `lora_a`, `lora_b` without the other",
            ));
        }
    };
    // 0 (or absent, for PT) means "no limit".
    let max_len = match md.get("ept.max_len") {
        Some(_) => Some(parse_usize("ept.max_len")?).filter(|&m| m > 0),
        None => None,
    };
    if let Some(lr) = &low_rank
        && Some(lr.max_len()) != max_len
    {
        return Err(Error::field(
            path,
            "ept.max_len",
            format!("{max_len:?}, but `lora_a` has {} rows", lr.max_len()),
        ));
    }
    let fusion = FusionReading::parse(get("ept.fusion")?)
        .map_err(|e| Error::field(path, "ept.fusion", e.to_string()))?;
    let method = get("ept.method")?;
    if crate::prompt::Method::parse(method).is_err() {
        return Err(Error::field(
            path,
            "ept.method",
            format!("`{method}`: expected pt, dept or ept"),
        ));
    }
    let flag = |k: &str| -> Result<bool> {
        match md.get(k).map(String::as_str) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(Error::field(
                path,
                k,
                format!("`{other}`: expected true or false"),
            )),
        }
    };
    get("ept.multi_space")?;
    let materialized = flag("ept.materialized")?;
    let multi_space = if flag("ept.multi_space")? {
        let n = parse_usize("ept.num_experts")?;
        if n == 0 {
            return Err(Error::field(
                path,
                "ept.num_experts",
                "0: multi-space needs N_e >= 1",
            ));
        }
        let experts = (0..n)
            .map(|i| {
                Ok(Expert {
                    w2: require(&format!("experts.{i}.w2.weight"))?,
                    b2: require(&format!("experts.{i}.w2.bias"))?,
                    w1: require(&format!("experts.{i}.w1.weight"))?,
                    b1: require(&format!("experts.{i}.w1.bias"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Some(MultiSpace {
            experts,
            gate_w: require("gate.weight")?,
            gate_b: require("gate.bias")?,
        })
    } else {
        None
    };
    let sp = SoftPrompt {
        prompt,
        low_rank,
        fusion,
        multi_space,
        max_len,
    };
    sp.validate()
        .map_err(|e| Error::data(path, e.to_string()))?;
    let meta = PromptMeta {
        method: method.clone(),
        materialized,
        model: md.get("ept.model").cloned().unwrap_or_default(),
        d_model: d,
        l: match md.get("ept.l") {
            Some(_) => parse_usize("ept.l")?,
            None => 0,
        },
    };
    Ok((sp, meta))
}

/// Checks that a loaded prompt fits a backbone of width `d_model`.
pub fn check_fits(path: &Path, prompt: &SoftPrompt, d_model: usize) -> Result<()> {
    if prompt.d_model() != d_model {
        return Err(Error::field(
            path,
            "ept.d_model",
            format!(
                "the prompt is {} wide but the model's d_model is {d_model}: it was trained for another model",
                prompt.d_model()
            ),
        ));
    }
    Ok(())
}
