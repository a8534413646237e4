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

use crate::error::{Error, Result};

mod state;
mod tables;
mod torch_ops;

pub use state::{QuantConfig, RawTensor, python_float_repr, quant_state_json};
pub use tables::dynamic_map;
use tables::{FP4_BITS, NF4_BITS};
use torch_ops::{max_nan, quantize_blockwise_8bit, torch_sum};

/// Values per 4-bit block (transformers' `bnb_4bit` default; the only block size
/// `--quantize` writes, any is read).
pub const BLOCKSIZE: usize = 64;
/// Scales per block of the double quantization.
pub const NESTED_BLOCKSIZE: usize = 256;

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
