//! Layers shared by the architectures: dense layers, RMS norm, rotary
//! position embeddings, attention masks.
//!
//! Each family file (`t5.rs`, `llama.rs`) is its wiring of these; what is the
//! same computation in transformers is one piece of code here.

use std::sync::Arc;

use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, Device, Int, Tensor};

use crate::error::Result;
use crate::io::bnb4::{self, Quant4, QuantizeSpec};
use crate::io::weights::{FloatType, WeightFile};
use crate::kernels::{self, amx, amx::PackedLinear};

/// Where and in what precision the weights live while a model is loaded.
#[derive(Clone)]
pub(crate) struct LoadCtx {
    pub device: Device,
    pub dtype: FloatType,
    /// Dense weights to quantize to 4 bits as they load (`--quantize`).
    pub quantize: Option<QuantizeSpec>,
    /// Whether bf16-mixed dense layers are packed for AMX once at load (not
    /// in a 4-bit model: see [`Linear::with_packing`]).
    pub pack: bool,
}

/// Large negative number added to masked attention scores (exp underflows to 0).
pub const MASK_VALUE: f32 = -1e30;

/// A dense layer, `x·W (+ bias)`; the weight is stored transposed, `[in, out]`, once at load.
///
/// Stored, not viewed: the weight is copied row-major at construction. With
/// a transposed *view* of PyTorch's `[out, in]` layout, products with few
/// rows (generation's one token per example, short batches) run up to 5×
/// slower in the gemm crate (`cargo bench --bench few_rows`: 32×512 by
/// 512×512, 0.38 ms viewed against 0.08 ms stored; close from about a
/// thousand rows on), and bf16 products copied the view on every call.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor<2>,
    /// `[out]`, in the weights' dtype (Llama's `attention_bias`, Qwen2's q/k/v).
    pub bias: Option<Tensor<1>>,
    /// Set in bf16-mixed precision ([`FloatType::Bf16Mixed`]): the product
    /// rounds its input to bf16, and `weight` holds bf16 values. Inside, the
    /// same weight packed for AMX tiles when the CPU has them.
    bf16: Option<Option<Arc<PackedLinear>>>,
    /// A 4-bit weight (bitsandbytes' NF4/FP4), decoded per product
    /// ([`kernels::quant4_linear`]); `weight` is then an empty `[0, out]`
    /// tensor, and `bf16` says whether the product runs in bf16.
    pub(crate) quant: Option<Arc<Quant4>>,
}

impl Linear {
    /// A dense layer from its transposed weight `[in, out]`, in `dtype`'s precision.
    pub fn new(weight: Tensor<2>, dtype: FloatType) -> Self {
        Self::with_packing(weight, dtype, true)
    }

    /// [`Linear::new`]; `pack: false` keeps a bf16-mixed layer in bf16 only,
    /// packed for the AMX tiles per product instead of once (2 bytes a
    /// weight instead of 6): for the layers a 4-bit model keeps unquantized
    /// (T5's `wo`), which would otherwise outweigh the 4-bit ones.
    pub fn with_packing(weight: Tensor<2>, dtype: FloatType, pack: bool) -> Self {
        if dtype != FloatType::Bf16Mixed {
            let weight = Tensor::from_data(weight.to_data(), (&weight.device(), weight.dtype()));
            return Linear {
                weight,
                bias: None,
                bf16: None,
                quant: None,
            };
        }
        // Rounded once, so that every path multiplies the same bf16 values.
        let weight = weight.cast(DType::BF16);
        let on_flex = weight.device().inner() == Device::flex();
        if !pack {
            return Linear {
                weight,
                bias: None,
                bf16: Some(None),
                quant: None,
            };
        }
        let packed = (amx::detected() && on_flex).then(|| {
            let [d_in, d_out] = weight.dims();
            let values = crate::tensors::to_f32_vec(weight.clone());
            Arc::new(PackedLinear::from_transposed(&values, d_in, d_out))
        });
        // With the AMX copy, the tensor stays in bf16 (exact: it holds bf16
        // values) and is read only if AMX is turned off: half the memory of
        // an f32 copy. Without it, the portable CPU path multiplies it in
        // f32. Off the CPU backend it stays bf16: GPUs multiply bf16 operands
        // (tensor cores, f32 accumulation), as PyTorch's autocast does.
        let weight = match packed {
            None if on_flex => weight.cast(DType::F32),
            _ => weight,
        };
        Linear {
            weight,
            bias: None,
            bf16: Some(packed),
            quant: None,
        }
    }

    /// A dense layer over a 4-bit weight (`[out, in]`), computing in
    /// `dtype`: bf16-mixed products round their operands to bf16.
    pub fn quantized(q: Quant4, dtype: FloatType, device: &Device) -> Self {
        let d_out = q.shape[0];
        Linear {
            weight: Tensor::zeros([0, d_out], (device, dtype.dtype())),
            bias: None,
            bf16: (dtype == FloatType::Bf16Mixed).then_some(None),
            quant: Some(Arc::new(q)),
        }
    }

    /// The 4-bit weight, when the layer has one.
    pub fn quantized_weight(&self) -> Option<&Quant4> {
        self.quant.as_deref()
    }

    /// Width of the output.
    pub fn d_out(&self) -> usize {
        self.weight.dims()[1]
    }

    pub(crate) fn load(
        w: &WeightFile,
        name: &str,
        d_in: usize,
        d_out: usize,
        ctx: &LoadCtx,
    ) -> Result<Self> {
        // PyTorch stores nn.Linear weights as [out, in].
        if let Some(q) = w.quant4(name, &[d_out, d_in])? {
            return Ok(Linear::quantized(q, ctx.dtype, &ctx.device));
        }
        if let Some(spec) = ctx.quantize.as_ref().filter(|s| s.applies_to(name)) {
            let values = w.read_f32(name, &[d_out, d_in])?;
            let stored = bnb4::StoredDtype::of_safetensors(&w.dtype_of(name).unwrap_or_default());
            let q = Quant4::quantize(
                &values,
                &[d_out, d_in],
                spec.quant_type,
                spec.double,
                bnb4::BLOCKSIZE,
                stored,
            );
            return Ok(Linear::quantized(q, ctx.dtype, &ctx.device));
        }
        let t = w.tensor(name, [d_out, d_in], ctx.dtype, &ctx.device)?;
        Ok(Linear::with_packing(t.transpose(), ctx.dtype, ctx.pack))
    }

    /// `{prefix}.weight`, and `{prefix}.bias` when `bias` is set.
    pub(crate) fn load_with_bias(
        w: &WeightFile,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
        ctx: &LoadCtx,
    ) -> Result<Self> {
        let mut layer = Self::load(w, &format!("{prefix}.weight"), d_in, d_out, ctx)?;
        if bias {
            layer.bias =
                Some(w.tensor(&format!("{prefix}.bias"), [d_out], ctx.dtype, &ctx.device)?);
        }
        Ok(layer)
    }

    /// The weight when the layer multiplies in f32 (not bf16-mixed).
    pub(crate) fn f32_weight(&self) -> Option<&Tensor<2>> {
        (self.bf16.is_none() && self.bias.is_none() && self.quant.is_none()).then_some(&self.weight)
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let y = match (&self.quant, &self.bf16) {
            (Some(q), bf16) => kernels::quant4_linear(x, q.clone(), bf16.is_some()),
            (None, Some(packed)) => kernels::bf16_linear(x, self.weight.clone(), packed.clone()),
            (None, None) => kernels::frozen_linear(x, self.weight.clone()),
        };
        match &self.bias {
            Some(b) => y.clone() + b.clone().cast(y.dtype()).unsqueeze::<3>(),
            None => y,
        }
    }
}

/// RMS norm (T5LayerNorm, LlamaRMSNorm): `w * x / sqrt(mean(x²) + eps)`,
/// statistics in f32, the normalised value cast back to the input's dtype before `w`.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    pub weight: Tensor<1>,
    pub(crate) eps: f64,
}

impl RmsNorm {
    pub(crate) fn load(
        w: &WeightFile,
        name: &str,
        d: usize,
        eps: f64,
        ctx: &LoadCtx,
    ) -> Result<Self> {
        Ok(RmsNorm {
            weight: w.tensor(name, [d], ctx.dtype, &ctx.device)?,
            eps,
        })
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        kernels::rms_norm(x, self.weight.clone(), self.eps)
    }
}

/// How rotary frequencies are derived from the base ones (transformers'
/// `rope_type`; `yarn` and `longrope` are refused when the config is read).
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// `inv_freq[i] = θ^(−2i/hd)`.
    Default,
    /// `inv_freq / factor`.
    Linear { factor: f64 },
    /// Default while positions stay below `max_position_embeddings`; beyond,
    /// θ grows with the sequence length (transformers' `dynamic`).
    Dynamic { factor: f64, max_positions: usize },
    /// Llama 3.1's band-wise rescale of the wavelengths.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_positions: usize,
    },
}

/// Rotary position embedding, half-split (`rotate_half`), as transformers
/// computes it: inverse frequencies and angles in f32, cos/sin cast to the
/// activations' dtype.
#[derive(Clone, Debug)]
pub struct Rotary {
    /// Rotated width (the head dimension).
    pub dim: usize,
    pub theta: f64,
    pub scaling: RopeScaling,
}

impl Rotary {
    /// The inverse frequencies `[dim/2]` for a sequence of `seq_len` positions.
    pub fn inv_freq(&self, seq_len: usize) -> Vec<f32> {
        let half = self.dim / 2;
        let base_for = |theta: f64| -> Vec<f32> {
            (0..half)
                .map(|i| {
                    // transformers: 1 / θ^(arange(0, dim, 2).float() / dim), in f32.
                    let exponent = (2 * i) as f32 / self.dim as f32;
                    1.0 / (theta as f32).powf(exponent)
                })
                .collect()
        };
        match &self.scaling {
            RopeScaling::Default => base_for(self.theta),
            RopeScaling::Linear { factor } => base_for(self.theta)
                .into_iter()
                .map(|f| f / *factor as f32)
                .collect(),
            RopeScaling::Dynamic {
                factor,
                max_positions,
            } => {
                if seq_len <= *max_positions {
                    base_for(self.theta)
                } else {
                    let d = self.dim as f64;
                    let ratio = factor * seq_len as f64 / *max_positions as f64 - (factor - 1.0);
                    base_for(self.theta * ratio.powf(d / (d - 2.0)))
                }
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_positions,
            } => {
                let c = *original_max_positions as f32;
                let (factor, lo, hi) = (
                    *factor as f32,
                    *low_freq_factor as f32,
                    *high_freq_factor as f32,
                );
                let low_wavelen = c / lo;
                let high_wavelen = c / hi;
                base_for(self.theta)
                    .into_iter()
                    .map(|inv| {
                        let wavelen = 2.0 * std::f32::consts::PI / inv;
                        if wavelen < high_wavelen {
                            inv
                        } else if wavelen > low_wavelen {
                            inv / factor
                        } else {
                            let smooth = (c / wavelen - lo) / (hi - lo);
                            (1.0 - smooth) * inv / factor + smooth * inv
                        }
                    })
                    .collect()
            }
        }
    }

    /// cos and sin `[b, t, 1, dim]` for the positions `positions[r][j]` of
    /// row r (every row the same length t), in f32.
    pub fn cos_sin(&self, positions: &[Vec<usize>], device: &Device) -> (Tensor<4>, Tensor<4>) {
        let b = positions.len();
        let t = positions.first().map_or(0, Vec::len);
        let longest = positions.iter().flatten().max().map_or(0, |&p| p + 1);
        let inv = self.inv_freq(longest);
        let half = inv.len();
        let mut cos = Vec::with_capacity(b * t * self.dim);
        let mut sin = Vec::with_capacity(b * t * self.dim);
        for row in positions {
            for &p in row {
                for _ in 0..2 {
                    for &f in &inv {
                        let angle = p as f32 * f;
                        cos.push(angle.cos());
                        sin.push(angle.sin());
                    }
                }
            }
        }
        debug_assert_eq!(cos.len(), b * t * 2 * half);
        let make = |v: Vec<f32>| {
            Tensor::<4>::from_data(
                burn::tensor::TensorData::new(v, [b, t, 1, self.dim]),
                (device, DType::F32),
            )
        };
        (make(cos), make(sin))
    }

    /// `x·cos + rotate_half(x)·sin` for `x` `[b, t, heads, dim]`.
    pub fn apply(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
        let dtype = x.dtype();
        let [b, t, h, d] = x.dims();
        let half = d / 2;
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        let (cos, sin) = (cos.clone().cast(dtype), sin.clone().cast(dtype));
        let out = x * cos + rotated * sin;
        debug_assert_eq!(out.dims(), [b, t, h, d]);
        out
    }
}

/// Rows `ids` of an embedding matrix `[vocab, d]`, as f32 `[n, d]` (prompt initialisation).
pub fn embedding_rows(table: &Tensor<2>, ids: &[usize]) -> Tensor<2> {
    let idx: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let idx = Tensor::<1, Int>::from_data(
        burn::tensor::TensorData::new(idx, [ids.len()]),
        &table.device(),
    );
    table.clone().select(0, idx).cast(DType::F32)
}

/// A loss tensor's values as f64 (per-example sums read back for reports).
pub fn f64_values(t: Tensor<1>) -> Vec<f64> {
    crate::tensors::to_f32_vec(t)
        .into_iter()
        .map(f64::from)
        .collect()
}

/// Per-row sums of token cross-entropy and the number of counted tokens.
///
/// `labels` is `[b, t]`; `label_mask` is 1 where a target token counts and 0
/// at padding. Computed in f32 from the (f32) logits.
pub fn token_loss_sums(
    logits: Tensor<3>,
    labels: Tensor<2, Int>,
    label_mask: Tensor<2>,
) -> Tensor<1> {
    let [b, t, _] = logits.dims();
    let logp = log_softmax(logits, 2);
    let picked = logp.gather(2, labels.reshape([b, t, 1])).reshape([b, t]);
    (picked * label_mask).sum_dim(1).reshape([b]).neg()
}
