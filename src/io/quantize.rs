//! A 4-bit copy of a checkpoint folder, as transformers + bitsandbytes write
//! one (`save_pretrained` of a model loaded with `load_in_4bit=True`): the
//! dense layers' weights as bitsandbytes' tensors ([`Quant4::to_parts`]),
//! every other tensor as stored, `config.json` with its `quantization_config`,
//! and the tokenizer and generation files copied.
//!
//! Why tensor by tensor: a T5-11B in bf16 is 21 GiB, its 4-bit form 6. Each
//! weight is read from the memory-mapped source, quantized (in parallel
//! inside the tensor) and kept only in 4 bits, so the peak is about the
//! 4-bit model plus one source tensor in f32, never the source model.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::bnb4::{BLOCKSIZE, Quant4, QuantizeSpec, StoredDtype};
use super::weights::WeightFile;
use crate::error::{Error, Result};

/// What [`write_quantized`] wrote.
pub struct QuantizeReport {
    pub quantized: usize,
    pub quantized_parameters: usize,
    pub quantized_bytes: usize,
    pub kept: usize,
    pub kept_bytes: usize,
    pub files: Vec<PathBuf>,
}

/// `quantization_config` as transformers writes it for `spec` (compute in bf16, as QLoRA).
pub fn quantization_config(spec: &QuantizeSpec) -> Value {
    let skip = if spec.skip.is_empty() {
        Value::Null
    } else {
        json!(spec.skip)
    };
    json!({
        "_load_in_4bit": true,
        "_load_in_8bit": false,
        "bnb_4bit_compute_dtype": "bfloat16",
        "bnb_4bit_quant_storage": "uint8",
        "bnb_4bit_quant_type": spec.quant_type.name(),
        "bnb_4bit_use_double_quant": spec.double,
        "llm_int8_enable_fp32_cpu_offload": false,
        "llm_int8_has_fp16_weight": false,
        "llm_int8_skip_modules": skip,
        "llm_int8_threshold": 6.0,
        "load_in_4bit": true,
        "load_in_8bit": false,
        "quant_method": "bitsandbytes",
    })
}

/// Writes `src_dir`'s checkpoint to `out` with the dense weights that
/// `is_dense` names (and `spec` does not skip) in 4 bits. `out` is built in
/// a temporary folder beside it and renamed into place: an interrupted run
/// leaves nothing half-written under that name.
pub fn write_quantized(
    src_dir: &Path,
    config: &Value,
    spec: &QuantizeSpec,
    is_dense: impl Fn(&str) -> bool,
    out: &Path,
) -> Result<QuantizeReport> {
    let weights = WeightFile::open_dir(src_dir)?;
    let names: Vec<String> = weights.names().map(str::to_owned).collect();
    let mut parts: Vec<(String, String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut report = QuantizeReport {
        quantized: 0,
        quantized_parameters: 0,
        quantized_bytes: 0,
        kept: 0,
        kept_bytes: 0,
        files: Vec::new(),
    };
    for name in &names {
        let raw = weights.raw(name)?.expect("listed names exist");
        if raw.shape.len() == 2 && is_dense(name) && spec.applies_to(name) {
            let values = weights.read_f32(name, &raw.shape)?;
            let dtype = StoredDtype::of_safetensors(&raw.dtype);
            let q = Quant4::quantize(
                &values,
                &raw.shape,
                spec.quant_type,
                spec.double,
                BLOCKSIZE,
                dtype,
            );
            report.quantized += 1;
            report.quantized_parameters += q.numel();
            report.quantized_bytes += q.bytes();
            for (n, d, s, b) in q.to_parts(name) {
                parts.push((n, d.to_string(), s, b));
            }
        } else {
            report.kept += 1;
            report.kept_bytes += raw.bytes.len();
            parts.push((name.clone(), raw.dtype, raw.shape, raw.bytes));
        }
    }
    let tmp = temp_sibling(out)?;
    let result = (|| -> Result<()> {
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let st_path = tmp.join("model.safetensors");
        // Written straight from the parts: no second copy of the file in memory.
        serialize_to_file(&parts, &st_path)
            .map_err(|e| Error::data(&st_path, format!("cannot write: {e}")))?;
        let mut config = config.clone();
        if let Some(obj) = config.as_object_mut() {
            obj.insert("quantization_config".into(), quantization_config(spec));
        }
        let text = serde_json::to_string_pretty(&config).expect("JSON values serialise");
        let cfg_path = tmp.join("config.json");
        std::fs::write(&cfg_path, format!("{text}\n")).map_err(|e| Error::io(&cfg_path, e))?;
        for entry in std::fs::read_dir(src_dir).map_err(|e| Error::io(src_dir, e))? {
            let entry = entry.map_err(|e| Error::io(src_dir, e))?;
            let file = entry.file_name().to_string_lossy().into_owned();
            let copied = file.starts_with("tokenizer")
                || file == "special_tokens_map.json"
                || file == "generation_config.json"
                || file.ends_with(".model");
            if copied && entry.path().is_file() {
                std::fs::copy(entry.path(), tmp.join(&file))
                    .map_err(|e| Error::io(entry.path(), e))?;
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| Error::io(out, e))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(out)
        .map_err(|e| Error::io(out, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    report.files = files;
    Ok(report)
}

/// `out`'s temporary twin in the same folder (so the rename stays on one file system).
fn temp_sibling(out: &Path) -> Result<PathBuf> {
    let name = out.file_name().ok_or_else(|| {
        Error::invalid(format!("--out {}: expected a folder name", out.display()))
    })?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok(parent.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

fn st_dtype(name: &str) -> safetensors::Dtype {
    use safetensors::Dtype;
    match name {
        "U8" => Dtype::U8,
        "F32" => Dtype::F32,
        "BF16" => Dtype::BF16,
        "F16" => Dtype::F16,
        "I64" => Dtype::I64,
        "I32" => Dtype::I32,
        "BOOL" => Dtype::BOOL,
        "F64" => Dtype::F64,
        "I8" => Dtype::I8,
        "I16" => Dtype::I16,
        _ => Dtype::U8,
    }
}

fn serialize_to_file(
    parts: &[(String, String, Vec<usize>, Vec<u8>)],
    path: &Path,
) -> std::result::Result<(), safetensors::SafeTensorError> {
    let views = parts
        .iter()
        .map(|(n, d, s, b)| {
            safetensors::tensor::TensorView::new(st_dtype(d), s.clone(), b).map(|v| (n.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), path)
}
