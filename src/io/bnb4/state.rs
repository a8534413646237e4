//! A 4-bit weight in a file: the tensors transformers writes for it, the
//! quant-state JSON bitsandbytes packs beside them, and the model's
//! `quantization_config`.

use std::path::Path;

use super::{Absmax, Quant4, QuantType, StoredDtype};
use crate::error::{Error, Result};

/// A `config.json`'s bitsandbytes `quantization_config`, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantConfig {
    pub quant_type: QuantType,
    pub double: bool,
    /// `bnb_4bit_compute_dtype`: `float32`, `bfloat16` or `float16`.
    pub compute_dtype: StoredDtype,
    pub skip: Vec<String>,
}

impl QuantConfig {
    /// The `quantization_config` of `config` (from `path`), None when absent.
    /// Anything but 4-bit bitsandbytes with uint8 storage is refused, the field named.
    pub fn from_config(config: &serde_json::Value, path: &Path) -> Result<Option<Self>> {
        let Some(q) = config.get("quantization_config") else {
            return Ok(None);
        };
        let field = |name: &str, msg: String| {
            Error::field(path, format!("quantization_config.{name}"), msg)
        };
        let text = |name: &str| q.get(name).and_then(|v| v.as_str());
        let method = text("quant_method").unwrap_or("bitsandbytes");
        if method != "bitsandbytes" {
            return Err(field(
                "quant_method",
                format!("`{method}`: ept reads bitsandbytes' 4-bit files only"),
            ));
        }
        let flag = |name: &str| q.get(name).and_then(|v| v.as_bool()).unwrap_or(false);
        if flag("load_in_8bit") {
            return Err(field(
                "load_in_8bit",
                "true: 8-bit (LLM.int8) weights are not read; ept reads 4-bit NF4/FP4".into(),
            ));
        }
        if !flag("load_in_4bit") {
            return Err(field(
                "load_in_4bit",
                "expected true (a 4-bit bitsandbytes file)".into(),
            ));
        }
        let qt = text("bnb_4bit_quant_type").unwrap_or("fp4");
        let quant_type = QuantType::parse(qt).ok_or_else(|| {
            field(
                "bnb_4bit_quant_type",
                format!("`{qt}`: expected nf4 or fp4"),
            )
        })?;
        let cd = text("bnb_4bit_compute_dtype").unwrap_or("float32");
        let compute_dtype = StoredDtype::parse(cd).ok_or_else(|| {
            field(
                "bnb_4bit_compute_dtype",
                format!("`{cd}`: expected float32, bfloat16 or float16"),
            )
        })?;
        let storage = text("bnb_4bit_quant_storage").unwrap_or("uint8");
        if storage != "uint8" {
            return Err(field(
                "bnb_4bit_quant_storage",
                format!("`{storage}`: ept reads 4-bit weights packed in uint8"),
            ));
        }
        let skip = q
            .get("llm_int8_skip_modules")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|m| m.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some(QuantConfig {
            quant_type,
            double: flag("bnb_4bit_use_double_quant"),
            compute_dtype,
            skip,
        }))
    }
}

/// Python's `repr` of a float (shortest round-trip digits, exponent form
/// below 1e-4 and from 1e16), as `json.dumps` writes `nested_offset`.
pub fn python_float_repr(x: f64) -> String {
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    if !x.is_finite() {
        return if x.is_nan() {
            "NaN".into()
        } else if x > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    // The fewest significant digits that read back as `x`; at a tie between
    // two such strings, the exact formatting rounds half to even, as Python's dtoa.
    let sci = (1..=17)
        .map(|p| format!("{:.*e}", p - 1, x))
        .find(|s| s.parse::<f64>() == Ok(x))
        .unwrap_or_else(|| format!("{x:e}"));
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        // Positional: the same digits, the point moved.
        let negative = mantissa.starts_with('-');
        let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
        let point = exp + 1; // digits before the point
        let body = if point <= 0 {
            format!("0.{}{digits}", "0".repeat((-point) as usize))
        } else if point as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            let (a, b) = digits.split_at(point as usize);
            format!("{a}.{b}")
        };
        if negative { format!("-{body}") } else { body }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

/// The `quant_state.bitsandbytes__*` JSON as bitsandbytes packs it
/// (`json.dumps` of its non-tensor fields, in its order).
pub fn quant_state_json(q: &Quant4) -> String {
    let shape: Vec<String> = q.shape.iter().map(|s| s.to_string()).collect();
    let mut s = format!(
        "{{\"quant_type\": \"{}\", \"blocksize\": {}, \"dtype\": \"{}\", \"shape\": [{}]",
        q.quant_type.name(),
        q.blocksize,
        q.dtype.name(),
        shape.join(", ")
    );
    if let Absmax::Nested {
        blocksize, offset, ..
    } = &q.absmax
    {
        s += &format!(
            ", \"nested_blocksize\": {blocksize}, \"nested_dtype\": \"float32\", \"nested_offset\": {}",
            python_float_repr(*offset as f64)
        );
    }
    s.push('}');
    s
}

/// The fields of a `quant_state.bitsandbytes__*` tensor.
#[derive(serde::Deserialize)]
struct StateJson {
    quant_type: String,
    blocksize: usize,
    dtype: String,
    shape: Vec<usize>,
    nested_blocksize: Option<usize>,
    nested_offset: Option<f64>,
}

/// A tensor's raw bytes, for [`Quant4::from_parts`].
pub struct RawTensor {
    pub dtype: String,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl Quant4 {
    /// Rebuilds a weight from the tensors transformers saved for `name`
    /// (`X.weight`, its `.absmax`, `.quant_map`, `.nested_*` and
    /// `.quant_state.bitsandbytes__*`), checked against the `want` shape.
    /// `get` returns a tensor of the file by name, or None; `path` names the
    /// file in errors.
    pub fn from_parts(
        name: &str,
        want: &[usize],
        path: &Path,
        get: impl Fn(&str) -> Result<Option<RawTensor>>,
    ) -> Result<Option<Self>> {
        let mut state = None;
        for t in ["nf4", "fp4"] {
            let key = format!("{name}.quant_state.bitsandbytes__{t}");
            if let Some(raw) = get(&key)? {
                state = Some((key, raw));
            }
        }
        let Some((state_key, state_raw)) = state else {
            return Ok(None);
        };
        // Fields are named by tensor, and inside the quant-state JSON by key.
        let bad = |field: &str, msg: String| {
            let key = match field {
                "weight" => name.to_string(),
                f if f.starts_with(name) => f.to_string(),
                f if ["quant_type", "dtype", "blocksize", "nested_blocksize"].contains(&f) => {
                    format!("{state_key} {{{f}}}")
                }
                f => format!("{name}.{f}"),
            };
            Error::field(path, key, msg)
        };
        let json: StateJson = serde_json::from_slice(&state_raw.bytes).map_err(|e| {
            bad(
                &state_key,
                format!("expected bitsandbytes' quant-state JSON: {e}"),
            )
        })?;
        let quant_type = QuantType::parse(&json.quant_type).ok_or_else(|| {
            bad(
                "quant_type",
                format!("`{}`: expected nf4 or fp4", json.quant_type),
            )
        })?;
        let dtype = StoredDtype::parse(&json.dtype).ok_or_else(|| {
            bad(
                "dtype",
                format!("`{}`: expected float32, bfloat16 or float16", json.dtype),
            )
        })?;
        if json.shape != want {
            return Err(Error::TensorShape {
                path: path.into(),
                name: format!("{name} (4-bit, quant_state shape)"),
                expected: want.to_vec(),
                found: json.shape,
            });
        }
        if json.blocksize == 0 || !json.blocksize.is_multiple_of(2) {
            return Err(bad(
                "blocksize",
                format!("{}: expected an even number > 0", json.blocksize),
            ));
        }
        // The shape comes from a config.json: its product may overflow.
        let n = want
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| bad("weight", format!("shape {want:?}: too many elements")))?;
        let n_blocks = n.div_ceil(json.blocksize);
        let need = |suffix: &str| -> Result<RawTensor> {
            let key = if suffix.is_empty() {
                name.to_string()
            } else {
                format!("{name}.{suffix}")
            };
            get(&key)?.ok_or_else(|| Error::MissingTensor {
                path: path.into(),
                name: key,
            })
        };
        let weight = need("")?;
        if weight.dtype != "U8" {
            return Err(bad(
                "weight",
                format!(
                    "stored as {}: ept reads 4-bit weights packed in uint8 (bnb_4bit_quant_storage=uint8)",
                    weight.dtype
                ),
            ));
        }
        if weight.bytes.len() != n.div_ceil(2) {
            return Err(bad(
                "weight",
                format!(
                    "{} bytes: expected {} (two 4-bit values per byte)",
                    weight.bytes.len(),
                    n.div_ceil(2)
                ),
            ));
        }
        let f32s = |raw: &RawTensor, what: &str, len: usize| -> Result<Vec<f32>> {
            if raw.dtype != "F32" || raw.bytes.len() != 4 * len {
                return Err(bad(
                    what,
                    format!(
                        "{} of {} bytes: expected F32 × {len}",
                        raw.dtype,
                        raw.bytes.len()
                    ),
                ));
            }
            Ok(raw
                .bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        };
        let code = f32s(&need("quant_map")?, "quant_map", 16)?;
        if code
            .iter()
            .zip(quant_type.code())
            .any(|(a, b)| a.to_bits() != b.to_bits())
        {
            return Err(bad(
                "quant_map",
                format!("not bitsandbytes' {} code", quant_type.name()),
            ));
        }
        let absmax_raw = need("absmax")?;
        let absmax = match (json.nested_blocksize, json.nested_offset) {
            (Some(blocksize), Some(offset)) => {
                if absmax_raw.dtype != "U8" || absmax_raw.bytes.len() != n_blocks {
                    return Err(bad(
                        "absmax",
                        format!(
                            "{} of {} bytes: expected U8 × {n_blocks}",
                            absmax_raw.dtype,
                            absmax_raw.bytes.len()
                        ),
                    ));
                }
                if blocksize == 0 {
                    return Err(bad("nested_blocksize", "0: expected > 0".into()));
                }
                let nested = f32s(
                    &need("nested_absmax")?,
                    "nested_absmax",
                    n_blocks.div_ceil(blocksize),
                )?;
                let map: Vec<f32> = f32s(&need("nested_quant_map")?, "nested_quant_map", 256)?;
                Absmax::Nested {
                    q: absmax_raw.bytes,
                    nested,
                    map: Box::new(map.try_into().expect("256 checked")),
                    offset: offset as f32,
                    blocksize,
                }
            }
            (None, None) => Absmax::Plain(f32s(&absmax_raw, "absmax", n_blocks)?),
            _ => {
                return Err(bad(
                    &state_key,
                    "nested_blocksize and nested_offset: expected both or neither".into(),
                ));
            }
        };
        Ok(Some(Quant4 {
            quant_type,
            shape: want.to_vec(),
            blocksize: json.blocksize,
            dtype,
            packed: weight.bytes,
            absmax,
        }))
    }

    /// The tensors transformers writes for this weight under `name`
    /// (`X.weight`): `(name, safetensors dtype, shape, bytes)`.
    pub fn to_parts(&self, name: &str) -> Vec<(String, &'static str, Vec<usize>, Vec<u8>)> {
        let f32_bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let mut out = vec![(
            name.to_string(),
            "U8",
            vec![self.packed.len(), 1],
            self.packed.clone(),
        )];
        match &self.absmax {
            Absmax::Plain(v) => {
                out.push((format!("{name}.absmax"), "F32", vec![v.len()], f32_bytes(v)))
            }
            Absmax::Nested { q, nested, map, .. } => {
                out.push((format!("{name}.absmax"), "U8", vec![q.len()], q.clone()));
                out.push((
                    format!("{name}.nested_absmax"),
                    "F32",
                    vec![nested.len()],
                    f32_bytes(nested),
                ));
                out.push((
                    format!("{name}.nested_quant_map"),
                    "F32",
                    vec![256],
                    f32_bytes(&map[..]),
                ));
            }
        }
        out.push((
            format!("{name}.quant_map"),
            "F32",
            vec![16],
            f32_bytes(&self.quant_type.code()),
        ));
        let json = quant_state_json(self).into_bytes();
        out.push((
            format!(
                "{name}.quant_state.bitsandbytes__{}",
                self.quant_type.name()
            ),
            "U8",
            vec![json.len()],
            json,
        ));
        out
    }
}
