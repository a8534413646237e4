//! bitsandbytes' 4-bit weights: NF4 and FP4 codes, blockwise absmax scales,
//! QLoRA's double quantization of those scales, and the tensors transformers
//! writes for them (`../shared/docs/NF4.md`).
//!
//! Why bitwise: a model quantized here must be the model bitsandbytes
//! quantizes (same packed bytes), and a file bitsandbytes wrote must decode
//! to exactly its `dequantize_4bit`, or parity with QLoRA's numbers is lost
//! in the noise of 4-bit rounding. Every step below is bitsandbytes 0.50's
//! CPU arithmetic, in f32 and in its order: the 4-bit index from the
//! midpoints of the sorted code (a value on a midpoint takes the lower
//! index), the 8-bit index of a double-quantized scale from bitsandbytes'
//! 65,536-entry lookup table, dequantization as one f32 product rounded to
//! the stored dtype.

use std::path::Path;

use crate::error::{Error, Result};

/// Values per 4-bit block (transformers' `bnb_4bit` default; the only block size
/// `--quantize` writes, any is read).
pub const BLOCKSIZE: usize = 64;
/// Scales per block of the double quantization.
pub const NESTED_BLOCKSIZE: usize = 256;

/// NF4, index 0..15 (bitsandbytes `get_4bit_type("nf4")`, as f32 bits).
const NF4_BITS: [u32; 16] = [
    0xbf800000, 0xbf3239b1, 0xbf066b30, 0xbeca32a0, 0xbe91a24d, 0xbe3d353f, 0xbdba7871, 0x00000000,
    0x3da2faff, 0x3e24cae3, 0x3e7c04dd, 0x3ead033a, 0x3ee1a4b8, 0x3f1007ab, 0x3f3913b3, 0x3f800000,
];

/// FP4 (e2m1 with bitsandbytes' bias), index 0..15, as f32 bits.
const FP4_BITS: [u32; 16] = [
    0x00000000, 0x3baaaaab, 0x3f2aaaab, 0x3f800000, 0x3eaaaaab, 0x3f000000, 0x3e2aaaab, 0x3e800000,
    0x00000000, 0xbbaaaaab, 0xbf2aaaab, 0xbf800000, 0xbeaaaaab, 0xbf000000, 0xbe2aaaab, 0xbe800000,
];

/// bitsandbytes' signed 8-bit dynamic map, `create_dynamic_map(signed=True)`, as
/// f32 bits: the code of double-quantized scales. Taken from bitsandbytes'
/// output (recomputing it in f64 differs in the last bit for some entries);
/// `tests/fixtures/nf4/codes.json` holds the same numbers for the test.
#[rustfmt::skip]
const DYNAMIC_BITS: [u32; 256] = [
    0xbf7e3333,0xbf7a999a,0xbf770000,0xbf736666,0xbf6fcccd,0xbf6c3333,0xbf68999a,0xbf650000,
    0xbf616666,0xbf5dcccd,0xbf5a3333,0xbf56999a,0xbf530000,0xbf4f6666,0xbf4bcccd,0xbf483333,
    0xbf44999a,0xbf410000,0xbf3d6666,0xbf39cccd,0xbf363334,0xbf32999a,0xbf2f0000,0xbf2b6666,
    0xbf27cccd,0xbf243334,0xbf20999a,0xbf1d0000,0xbf196666,0xbf15cccd,0xbf123334,0xbf0e999a,
    0xbf0b0000,0xbf076666,0xbf03cccc,0xbf003333,0xbef93332,0xbef20000,0xbeeacccc,0xbee3999a,
    0xbedc6666,0xbed53333,0xbece0000,0xbec6cccc,0xbebf999a,0xbeb86666,0xbeb13333,0xbeaa0000,
    0xbea2cccc,0xbe9b999a,0xbe946666,0xbe8d3334,0xbe860000,0xbe7d9999,0xbe6f3333,0xbe60cccd,
    0xbe526666,0xbe440000,0xbe35999a,0xbe273333,0xbe18cccd,0xbe0a6666,0xbdf80000,0xbddb3334,
    0xbdc9eb85,0xbdc428f7,0xbdbe6667,0xbdb8a3d7,0xbdb2e148,0xbdad1eb8,0xbda75c2a,0xbda1999a,
    0xbd9bd70a,0xbd96147b,0xbd9051eb,0xbd8a8f5d,0xbd84cccd,0xbd7e147b,0xbd728f5d,0xbd670a3d,
    0xbd5b851f,0xbd500000,0xbd447ae1,0xbd38f5c3,0xbd2d70a3,0xbd21eb85,0xbd166667,0xbd0ae148,
    0xbcfeb852,0xbce7ae15,0xbcd0a3d7,0xbcb9999a,0xbca28f5d,0xbc8b851f,0xbc68f5c3,0xbc3ae148,
    0xbc1f3b64,0xbc160418,0xbc0ccccd,0xbc039581,0xbbf4bc6a,0xbbe24dd3,0xbbcfdf3b,0xbbbd70a4,
    0xbbab020d,0xbb989374,0xbb8624dd,0xbb676c8a,0xbb428f5c,0xbb1db22d,0xbaf1a9fc,0xbaa7ef9d,
    0xba7765ff,0xba59e83e,0xba3c6a80,0xba1eecc1,0xba016f01,0xb9c7e283,0xb98ce705,0xb923d70b,
    0xb8ba1f4b,0xb88aefb3,0xb8378034,0xb7b24206,0xb70205ff,0xb65a1a94,0xb513a3b7,0x00000000,
    0x3513a3b7,0x365a1a94,0x370205ff,0x37b24206,0x38378034,0x388aefb3,0x38ba1f4b,0x3923d70b,
    0x398ce705,0x39c7e283,0x3a016f01,0x3a1eecc1,0x3a3c6a80,0x3a59e83e,0x3a7765ff,0x3aa7ef9d,
    0x3af1a9fc,0x3b1db22d,0x3b428f5c,0x3b676c8a,0x3b8624dd,0x3b989374,0x3bab020d,0x3bbd70a4,
    0x3bcfdf3b,0x3be24dd3,0x3bf4bc6a,0x3c039581,0x3c0ccccd,0x3c160418,0x3c1f3b64,0x3c3ae148,
    0x3c68f5c3,0x3c8b851f,0x3ca28f5d,0x3cb9999a,0x3cd0a3d7,0x3ce7ae15,0x3cfeb852,0x3d0ae148,
    0x3d166667,0x3d21eb85,0x3d2d70a3,0x3d38f5c3,0x3d447ae1,0x3d500000,0x3d5b851f,0x3d670a3d,
    0x3d728f5d,0x3d7e147b,0x3d84cccd,0x3d8a8f5d,0x3d9051eb,0x3d96147b,0x3d9bd70a,0x3da1999a,
    0x3da75c2a,0x3dad1eb8,0x3db2e148,0x3db8a3d7,0x3dbe6667,0x3dc428f7,0x3dc9eb85,0x3ddb3334,
    0x3df80000,0x3e0a6666,0x3e18cccd,0x3e273333,0x3e35999a,0x3e440000,0x3e526666,0x3e60cccd,
    0x3e6f3333,0x3e7d9999,0x3e860000,0x3e8d3334,0x3e946666,0x3e9b999a,0x3ea2cccc,0x3eaa0000,
    0x3eb13333,0x3eb86666,0x3ebf999a,0x3ec6cccc,0x3ece0000,0x3ed53333,0x3edc6666,0x3ee3999a,
    0x3eeacccc,0x3ef20000,0x3ef93332,0x3f003333,0x3f03cccc,0x3f076666,0x3f0b0000,0x3f0e999a,
    0x3f123334,0x3f15cccd,0x3f196666,0x3f1d0000,0x3f20999a,0x3f243334,0x3f27cccd,0x3f2b6666,
    0x3f2f0000,0x3f32999a,0x3f363334,0x3f39cccd,0x3f3d6666,0x3f410000,0x3f44999a,0x3f483333,
    0x3f4bcccd,0x3f4f6666,0x3f530000,0x3f56999a,0x3f5a3333,0x3f5dcccd,0x3f616666,0x3f650000,
    0x3f68999a,0x3f6c3333,0x3f6fcccd,0x3f736666,0x3f770000,0x3f7a999a,0x3f7e3333,0x3f800000,
];

/// The signed dynamic map as f32 values.
pub fn dynamic_map() -> [f32; 256] {
    DYNAMIC_BITS.map(f32::from_bits)
}

/// Which 4-bit code the indices point into (`bnb_4bit_quant_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantType {
    Nf4,
    Fp4,
}

impl QuantType {
    pub fn name(self) -> &'static str {
        match self {
            QuantType::Nf4 => "nf4",
            QuantType::Fp4 => "fp4",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "nf4" => Some(QuantType::Nf4),
            "fp4" => Some(QuantType::Fp4),
            _ => None,
        }
    }

    /// The 16 values, index order.
    pub fn code(self) -> [f32; 16] {
        match self {
            QuantType::Nf4 => NF4_BITS.map(f32::from_bits),
            QuantType::Fp4 => FP4_BITS.map(f32::from_bits),
        }
    }

    /// bitsandbytes' quantizer: the code's indices sorted by value (stable
    /// `argsort`), and the 15 midpoints between neighbours in that order.
    fn bounds(self) -> ([u8; 16], [f32; 15]) {
        let code = self.code();
        let mut order: [u8; 16] = std::array::from_fn(|i| i as u8);
        // FP4's 0.0 and -0.0 compare equal and keep index order.
        order.sort_by(|&a, &b| {
            code[a as usize]
                .partial_cmp(&code[b as usize])
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let mids =
            std::array::from_fn(|i| (code[order[i] as usize] + code[order[i + 1] as usize]) / 2.0);
        (order, mids)
    }
}

/// The dtype `dequantize_4bit` returns: the weight's dtype before quantization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoredDtype {
    F32,
    Bf16,
    F16,
}

impl StoredDtype {
    /// PyTorch's name without `torch.`, as bitsandbytes writes it.
    pub fn name(self) -> &'static str {
        match self {
            StoredDtype::F32 => "float32",
            StoredDtype::Bf16 => "bfloat16",
            StoredDtype::F16 => "float16",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "float32" => Some(StoredDtype::F32),
            "bfloat16" => Some(StoredDtype::Bf16),
            "float16" => Some(StoredDtype::F16),
            _ => None,
        }
    }

    /// `x` rounded to this dtype (nearest, ties to even), widened back to f32.
    #[inline]
    pub fn round(self, x: f32) -> f32 {
        match self {
            StoredDtype::F32 => x,
            StoredDtype::Bf16 => half::bf16::from_f32(x).to_f32(),
            StoredDtype::F16 => half::f16::from_f32(x).to_f32(),
        }
    }
}

impl StoredDtype {
    /// The dtype a tensor stored as `F32`/`BF16`/`F16` in safetensors
    /// quantizes from (anything else reads as f32).
    pub fn of_safetensors(name: &str) -> Self {
        match name {
            "BF16" => StoredDtype::Bf16,
            "F16" => StoredDtype::F16,
            _ => StoredDtype::F32,
        }
    }
}

/// How dense weights are quantized as they load (`--quantize`), as
/// transformers + bitsandbytes do with `BitsAndBytesConfig(load_in_4bit=True, ...)`.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizeSpec {
    pub quant_type: QuantType,
    /// QLoRA's double quantization of the scales (`bnb_4bit_use_double_quant`).
    pub double: bool,
    /// Modules left in their dtype (`llm_int8_skip_modules`, and the
    /// architecture's own: T5's `wo`, kept out by transformers' `_keep_in_fp32_modules`).
    pub skip: Vec<String>,
}

impl QuantizeSpec {
    /// `--quantize nf4|fp4` (always with double quantization, as the paper
    /// and QLoRA load their models).
    pub fn parse(s: &str) -> Result<Self> {
        let quant_type = QuantType::parse(&s.to_ascii_lowercase())
            .ok_or_else(|| Error::invalid(format!("--quantize `{s}`: expected nf4 or fp4")))?;
        Ok(QuantizeSpec {
            quant_type,
            double: true,
            skip: Vec::new(),
        })
    }

    /// Whether the dense weight `name` (`...q.weight`) is quantized: not when
    /// a skipped name is its module or one of the module's path components.
    pub fn applies_to(&self, name: &str) -> bool {
        let module = name.strip_suffix(".weight").unwrap_or(name);
        !self.skip.iter().any(|p| {
            module == p
                || module.ends_with(&format!(".{p}"))
                || module.starts_with(&format!("{p}."))
                || module.contains(&format!(".{p}."))
        })
    }

    /// The same spec with `extra` modules skipped as well.
    pub fn skipping(mut self, extra: &[&str]) -> Self {
        for m in extra {
            if !self.skip.iter().any(|s| s == m) {
                self.skip.push((*m).to_string());
            }
        }
        self
    }
}

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

/// The per-block scales of a 4-bit weight.
#[derive(Clone, Debug, PartialEq)]
pub enum Absmax {
    /// One f32 per block.
    Plain(Vec<f32>),
    /// QLoRA's double quantization: `scale[i] = map[q[i]] · nested[i / blocksize] + offset`.
    Nested {
        q: Vec<u8>,
        nested: Vec<f32>,
        map: Box<[f32; 256]>,
        offset: f32,
        blocksize: usize,
    },
}

impl Absmax {
    /// The f32 scale of every block.
    pub fn decode(&self) -> Vec<f32> {
        match self {
            Absmax::Plain(v) => v.clone(),
            Absmax::Nested {
                q,
                nested,
                map,
                offset,
                blocksize,
            } => q
                .iter()
                .enumerate()
                .map(|(i, &qi)| map[qi as usize] * nested[i / blocksize] + offset)
                .collect(),
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            Absmax::Plain(v) => 4 * v.len(),
            Absmax::Nested { q, nested, .. } => q.len() + 4 * nested.len() + 4 * 256 + 4,
        }
    }
}

/// One 4-bit weight as bitsandbytes holds it (`Params4bit` + `QuantState`).
#[derive(Clone, Debug, PartialEq)]
pub struct Quant4 {
    pub quant_type: QuantType,
    /// PyTorch's shape, `[out, in]` for a Linear.
    pub shape: Vec<usize>,
    pub blocksize: usize,
    pub dtype: StoredDtype,
    /// Two indices per byte, the first element in the high nibble.
    pub packed: Vec<u8>,
    pub absmax: Absmax,
}

impl Quant4 {
    /// Quantizes `values` (row-major, `shape`) as bitsandbytes' `quantize_4bit`
    /// (`compress_statistics` = `double`); `dtype` is the dtype the values
    /// were held in (they must be exact in it).
    pub fn quantize(
        values: &[f32],
        shape: &[usize],
        quant_type: QuantType,
        double: bool,
        blocksize: usize,
        dtype: StoredDtype,
    ) -> Self {
        use rayon::prelude::*;
        let n = values.len();
        assert_eq!(
            n,
            shape.iter().product::<usize>(),
            "values do not fill the shape"
        );
        let (order, mids) = quant_type.bounds();
        let index = |x: f32| -> u8 {
            // torch.bucketize(x, mids): the first midpoint ≥ x; NaN past the end.
            let bucket = mids.iter().position(|&m| x <= m).unwrap_or(15);
            order[bucket]
        };
        let n_blocks = n.div_ceil(blocksize);
        let full = n / blocksize;
        let absmax: Vec<f32> = (0..n_blocks)
            .into_par_iter()
            .map(|b| {
                let block = &values[b * blocksize..((b + 1) * blocksize).min(n)];
                let m = block.iter().fold(0f32, |m, &v| max_nan(m, v.abs()));
                // The short last block's scale is clamped as stored; full ones
                // are clamped only inside the reciprocal.
                if b >= full { m.max(1e-38) } else { m }
            })
            .collect();
        // Pairs of elements: one byte each (an odd count pads with 0.0).
        let packed: Vec<u8> = (0..n.div_ceil(2))
            .into_par_iter()
            .map(|p| {
                let scaled = |j: usize| -> f32 {
                    if j >= n {
                        return 0.0;
                    }
                    let b = j / blocksize;
                    let x = if b < full {
                        values[j] * (1.0 / absmax[b].max(1e-38))
                    } else {
                        values[j] / absmax[b]
                    };
                    x.clamp(-1.0, 1.0)
                };
                (index(scaled(2 * p)) << 4) | index(scaled(2 * p + 1))
            })
            .collect();
        let absmax = if double {
            double_quantize(&absmax)
        } else {
            Absmax::Plain(absmax)
        };
        Quant4 {
            quant_type,
            shape: shape.to_vec(),
            blocksize,
            dtype,
            packed,
            absmax,
        }
    }

    /// Number of weights.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes held: the packed indices and the scales.
    pub fn bytes(&self) -> usize {
        self.packed.len() + self.absmax.bytes()
    }

    /// Every weight, row-major, as f32 values of the stored dtype:
    /// `w_j = code[q_j] · scale[j / blocksize]` in f32, rounded to the stored
    /// dtype — bitwise `dequantize_4bit`.
    pub fn dequantize(&self) -> Vec<f32> {
        self.dequantize_with(|x| x)
    }

    /// [`Quant4::dequantize`] with `then` applied to each value (the
    /// products round to bf16 there), block by block in parallel: the
    /// nibbles are read in order, one scale per block.
    pub fn dequantize_with(&self, then: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
        use rayon::prelude::*;
        let (code, scales) = (self.quant_type.code(), self.absmax.decode());
        let n = self.numel();
        let mut out = vec![0f32; n];
        let bs = self.blocksize;
        out.par_chunks_mut(bs).enumerate().for_each(|(b, chunk)| {
            let scale = scales[b];
            let bytes = &self.packed[b * bs / 2..];
            for (k, o) in chunk.iter_mut().enumerate() {
                let byte = bytes[k / 2];
                let q = if k % 2 == 0 { byte >> 4 } else { byte & 0x0f };
                *o = then(self.dtype.round(code[q as usize] * scale));
            }
        });
        out
    }
}

/// `max` as CUDA's `fmaxf` and bitsandbytes' kernels: a NaN operand is ignored.
fn max_nan(a: f32, b: f32) -> f32 {
    if b.is_nan() || a >= b { a } else { b }
}

/// QLoRA's double quantization of the scales: their mean subtracted, the rest
/// quantized blockwise (256) to 8 bits on the signed dynamic map.
fn double_quantize(absmax: &[f32]) -> Absmax {
    // torch's f32 mean on the CPU: its cascade sum, then one division.
    let offset = torch_sum(absmax) / absmax.len() as f32;
    let centred: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
    let map = dynamic_map();
    let (q, nested) = quantize_blockwise_8bit(&centred, &map, NESTED_BLOCKSIZE);
    Absmax::Nested {
        q,
        nested,
        map: Box::new(map),
        offset,
        blocksize: NESTED_BLOCKSIZE,
    }
}

/// Lanes of torch's `Vectorized<float>` in its CPU sum kernel.
const LANES: usize = 8;

/// torch's CPU sum of a contiguous f32 vector, in its order and rounding
/// (`aten/src/ATen/native/cpu/SumKernel.cpp`: `vectorized_inner_sum` over
/// 8-lane vectors, `row_sum` with 4 interleaved accumulators, each a
/// 4-level cascade of `multi_row_sum`; the tail elements first, then the
/// lanes). Why: `nested_offset` is `absmax.mean()`, and a last-bit
/// difference there changes the bytes bitsandbytes writes (checked on 300
/// random lengths against torch 2.15, all equal).
fn torch_sum(a: &[f32]) -> f32 {
    let n = a.len();
    if n < LANES {
        return row_sum(n, [0f32; 1], |i| [a[i]])[0];
    }
    let vectors = n / LANES;
    let lanes = row_sum(vectors, [0f32; LANES], |i| {
        std::array::from_fn(|l| a[i * LANES + l])
    });
    let mut total = 0f32;
    for &x in &a[vectors * LANES..] {
        total += x;
    }
    for x in lanes {
        total += x;
    }
    total
}

/// torch's `row_sum`: `size` items in 4 interleaved accumulators, folded into the first.
fn row_sum<const L: usize>(
    size: usize,
    zero: [f32; L],
    item: impl Fn(usize) -> [f32; L],
) -> [f32; L] {
    const ILP: usize = 4;
    let add = |a: &mut [f32; L], b: [f32; L]| a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
    let rows = size / ILP;
    let mut partial = multi_row_sum::<L, ILP>(rows, zero, |i, k| item(i * ILP + k));
    for i in rows * ILP..size {
        add(&mut partial[0], item(i));
    }
    for k in 1..ILP {
        let p = partial[k];
        add(&mut partial[0], p);
    }
    partial[0]
}

/// torch's `multi_row_sum`: `N` column sums over `size` rows, each a
/// cascade of 4 levels whose lower level is flushed upwards every
/// `2^level_power` rows (the sum's accuracy without pairwise recursion).
fn multi_row_sum<const L: usize, const N: usize>(
    size: usize,
    zero: [f32; L],
    item: impl Fn(usize, usize) -> [f32; L],
) -> [[f32; L]; N] {
    const LEVELS: usize = 4;
    let add = |a: &mut [f32; L], b: [f32; L]| a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
    let ceil_log2 = if size <= 1 {
        0
    } else {
        usize::BITS - (size - 1).leading_zeros()
    } as usize;
    let level_power = (ceil_log2 / LEVELS).max(4);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [[zero; N]; LEVELS];
    let mut i = 0;
    while i + level_step <= size {
        for _ in 0..level_step {
            for (k, a) in acc[0].iter_mut().enumerate() {
                add(a, item(i, k));
            }
            i += 1;
        }
        for j in 1..LEVELS {
            let (low, high) = acc.split_at_mut(j);
            for (lo, hi) in low[j - 1].iter_mut().zip(high[0].iter_mut()) {
                add(hi, *lo);
                *lo = zero;
            }
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    while i < size {
        for (k, a) in acc[0].iter_mut().enumerate() {
            add(a, item(i, k));
        }
        i += 1;
    }
    let (first, rest) = acc.split_at_mut(1);
    for upper in rest.iter() {
        for (a, u) in first[0].iter_mut().zip(upper) {
            add(a, *u);
        }
    }
    acc[0]
}

/// bitsandbytes' CPU `quantize_blockwise` (8-bit): per block its max |x|, then
/// each `x / max` placed on a 65,536-point grid of [-1, 1] whose points map
/// to their nearest code (`build_quantize_lut`, `norm_to_lut_index`).
fn quantize_blockwise_8bit(
    values: &[f32],
    code: &[f32; 256],
    blocksize: usize,
) -> (Vec<u8>, Vec<f32>) {
    const LUT: usize = 65536;
    let mids: Vec<f32> = (0..255).map(|i| 0.5 * (code[i] + code[i + 1])).collect();
    let mut lut = vec![0u8; LUT];
    let mut idx = 0usize;
    for (i, slot) in lut.iter_mut().enumerate() {
        let v = -1.0f32 + (2.0f32 * i as f32) / (LUT - 1) as f32;
        while idx < 255 && mids[idx] < v {
            idx += 1;
        }
        *slot = idx as u8;
    }
    let mut q = vec![0u8; values.len()];
    let mut scales = Vec::with_capacity(values.len().div_ceil(blocksize));
    for (block, out) in values.chunks(blocksize).zip(q.chunks_mut(blocksize)) {
        let m = block.iter().fold(0f32, |m, &v| max_nan(m, v.abs()));
        scales.push(m);
        if m == 0.0 {
            continue;
        }
        let inv = 1.0f32 / m;
        for (o, &v) in out.iter_mut().zip(block) {
            let x = (v * inv).clamp(-1.0, 1.0);
            // bitsandbytes' build fuses the last multiply and add (one fma,
            // one rounding) before truncating.
            let i = ((x + 1.0) * 0.5).mul_add((LUT - 1) as f32, 0.5) as usize;
            *o = lut[i.min(LUT - 1)];
        }
    }
    (q, scales)
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
        let n: usize = want.iter().product();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_reprs() {
        assert_eq!(python_float_repr(0.5), "0.5");
        assert_eq!(python_float_repr(1.0), "1.0");
        assert_eq!(python_float_repr(0.0123), "0.0123");
        assert_eq!(python_float_repr(1.5e-5), "1.5e-05");
        assert_eq!(python_float_repr(0.0001), "0.0001");
        assert_eq!(python_float_repr(1e16), "1e+16");
        assert_eq!(python_float_repr(0.03125f32 as f64), "0.03125");
        // A tie at 17 digits rounds to even, as Python.
        assert_eq!(python_float_repr(1.2537918090820312), "1.2537918090820312");
        assert_eq!(python_float_repr(0.4036118686199188), "0.4036118686199188");
        assert_eq!(python_float_repr(-2.5), "-2.5");
        assert_eq!(python_float_repr(123.0), "123.0");
    }

    #[test]
    fn nf4_roundtrip_keeps_codes_times_scale() {
        let values: Vec<f32> = (0..200)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
            .collect();
        let q = Quant4::quantize(&values, &[200], QuantType::Nf4, false, 64, StoredDtype::F32);
        assert_eq!(q.packed.len(), 100);
        let back = q.dequantize();
        // Each block's largest |value| is a code (±1) times its scale: exact.
        for b in 0..4 {
            let block = &values[b * 64..((b + 1) * 64).min(200)];
            let (i, _) = block.iter().enumerate().fold((0, 0f32), |(bi, m), (i, v)| {
                if v.abs() > m { (i, v.abs()) } else { (bi, m) }
            });
            assert_eq!(back[b * 64 + i], block[i]);
        }
    }
}
