//! Llama-family decoders (Llama 2/3, Mistral, Qwen2), computing what
//! transformers' `modeling_llama.py` (and its Mistral and Qwen2 copies) computes.
//!
//! Notes that matter for parity (LLAMA.md):
//! - RMS norm in f32, cast back, then the weight; no embedding scale;
//! - rotary embeddings half-split, angles in f32 ([`Rotary`]); keys are cached after rotation;
//! - grouped-query attention: query head h reads key/value head `h / (Hq/Hkv)`;
//!   scores scaled by `head_dim^-½`, softmax in f32;
//! - a sliding window (Mistral, Qwen2 when on) hides keys more than `window − 1` positions back;
//! - positions run 0..n+L−1 over `[prompt ; text]` for every row (PEFT's
//!   composition), whatever the padding: padding is on the right and masked.
//!
//! Like T5, weights never require gradients: a backward pass reaches only
//! what the caller made trainable (the prompt).

use std::path::Path;

use burn::tensor::module::embedding;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use super::layers::{Linear, LoadCtx, MASK_VALUE, RmsNorm, Rotary};
use super::llama_config::LlamaConfig;
use super::params::{WeightMut, WeightRef};
use crate::error::{Error, Result};
use crate::io::bnb4::QuantizeSpec;
use crate::io::weights::{FloatType, WeightFile};
use crate::kernels;

/// Keys (after rotation) and values of one layer, `[b, t, Hkv, hd]`.
#[derive(Clone, Debug)]
pub struct KvCache {
    k: Tensor<4>,
    v: Tensor<4>,
}

/// Self-attention with grouped key/value heads.
#[derive(Clone, Debug)]
pub struct Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
    /// The sliding window of this layer, if any.
    pub window: Option<usize>,
}

impl Attention {
    /// Attention of `x` `[b, t, d]` at the rotary angles `cos`/`sin`, over the
    /// cached keys followed by this call's; `bias` `[b, 1, t, t_k]` holds the
    /// causal, padding and window masks. Appends this call's keys to `cache`.
    fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        bias: &Tensor<4>,
        cache: Option<&mut Option<KvCache>>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (hq, hkv, hd) = (self.heads, self.kv_heads, self.head_dim);
        let q = self.q.forward(x.clone()).reshape([b, t, hq, hd]);
        let k = self.k.forward(x.clone()).reshape([b, t, hkv, hd]);
        let v = self.v.forward(x).reshape([b, t, hkv, hd]);
        let q = Rotary::apply(q, cos, sin);
        let mut k = Rotary::apply(k, cos, sin);
        let mut v = v;
        if let Some(slot) = cache {
            if let Some(past) = slot.take() {
                k = Tensor::cat(vec![past.k, k], 1);
                v = Tensor::cat(vec![past.v, v], 1);
            }
            *slot = Some(KvCache {
                k: k.clone(),
                v: v.clone(),
            });
        }
        // transformers scales the scores; scaling the queries is the same
        // product up to rounding (exact when head_dim is a power of 4).
        let q = q * (hd as f64).powf(-0.5);
        let t_k = k.dims()[1];
        let out = kernels::attention(
            q.reshape([b, t, hq * hd]),
            repeat_kv(k, hq / hkv).reshape([b, t_k, hq * hd]),
            repeat_kv(v, hq / hkv).reshape([b, t_k, hq * hd]),
            bias.clone(),
            hq,
        );
        self.o.forward(out)
    }
}

/// `[b, t, Hkv, hd]` → `[b, t, Hkv·rep, hd]`, each key/value head repeated
/// for the `rep` query heads that read it (transformers' `repeat_kv`).
fn repeat_kv(x: Tensor<4>, rep: usize) -> Tensor<4> {
    if rep == 1 {
        return x;
    }
    let [b, t, h, d] = x.dims();
    x.unsqueeze_dim::<5>(3)
        .expand([b, t, h, rep, d])
        .reshape([b, t, h * rep, d])
}

/// SwiGLU feed-forward: `down(silu(gate(x)) ⊙ up(x))`.
#[derive(Clone, Debug)]
pub struct Mlp {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

impl Mlp {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = self.gate.forward(x.clone());
        self.down
            .forward(kernels::gated_silu(gate, self.up.forward(x)))
    }
}

#[derive(Clone, Debug)]
pub struct Layer {
    pub input_norm: RmsNorm,
    pub attn: Attention,
    pub post_norm: RmsNorm,
    pub mlp: Mlp,
}

/// [`Llama::weights`] and [`Llama::weights_mut`]: one list, borrowed with or without `mut`.
macro_rules! named_weights {
    ($self:ident, $d1:path, $d2:path, $lin:path, $($m:tt)?) => {{
        let mut out = Vec::new();
        out.push(("model.embed_tokens.weight".to_string(), $d2(& $($m)? $self.embed_tokens)));
        for (i, l) in (& $($m)? $self.layers).into_iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.input_layernorm.weight"), $d1(& $($m)? l.input_norm.weight)));
            let a = & $($m)? l.attn;
            let f = & $($m)? l.mlp;
            for (name, lin) in [
                ("self_attn.q_proj", & $($m)? a.q),
                ("self_attn.k_proj", & $($m)? a.k),
                ("self_attn.v_proj", & $($m)? a.v),
                ("self_attn.o_proj", & $($m)? a.o),
                ("mlp.gate_proj", & $($m)? f.gate),
                ("mlp.up_proj", & $($m)? f.up),
                ("mlp.down_proj", & $($m)? f.down),
            ] {
                out.push((format!("{p}.{name}.weight"), $lin(& $($m)? lin.weight, &lin.quant)));
                if let Some(b) = & $($m)? lin.bias {
                    out.push((format!("{p}.{name}.bias"), $d1(b)));
                }
            }
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                $d1(& $($m)? l.post_norm.weight),
            ));
        }
        out.push(("model.norm.weight".into(), $d1(& $($m)? $self.norm.weight)));
        if !$self.tied_head {
            out.push(("lm_head.weight".into(), $d2(& $($m)? $self.lm_head)));
        }
        out
    }};
}

/// A decoder-only model with frozen weights.
#[derive(Clone, Debug)]
pub struct Llama {
    pub config: LlamaConfig,
    /// `[vocab, d]`.
    pub embed_tokens: Tensor<2>,
    pub layers: Vec<Layer>,
    pub norm: RmsNorm,
    /// `[d, vocab]`: the file's `lm_head.weight` transposed, or the embedding's.
    pub lm_head: Tensor<2>,
    pub tied_head: bool,
    pub rotary: Rotary,
    pub dtype: FloatType,
    pub(crate) device: Device,
}

impl Llama {
    /// Loads a checkpoint folder (`config.json` + safetensors) on `device` in `dtype`.
    pub fn load(dir: &Path, dtype: FloatType, device: &Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        let config = LlamaConfig::from_file(&config_path)?;
        let weights = WeightFile::open_dir(dir)?;
        Self::from_weights(config, &weights, dtype, None, device)
    }

    /// Builds the model from `w`; `quantize` quantizes its dense layers to 4
    /// bits as they load (the head stays as stored, as in transformers).
    pub fn from_weights(
        config: LlamaConfig,
        w: &WeightFile,
        dtype: FloatType,
        quantize: Option<QuantizeSpec>,
        device: &Device,
    ) -> Result<Self> {
        let ctx = LoadCtx {
            device: device.clone(),
            dtype,
            pack: quantize.is_none() && !w.is_quantized(),
            quantize,
        };
        let c = &config;
        let (d, v, ffn) = (c.hidden_size(), c.raw.vocab_size, c.raw.intermediate_size);
        let (hq, hkv, hd) = (c.num_heads(), c.num_kv_heads, c.head_dim);
        let eps = c.raw.rms_norm_eps;
        let embed_tokens = w.tensor("model.embed_tokens.weight", [v, d], dtype, device)?;
        let mut layers = Vec::with_capacity(c.raw.num_hidden_layers);
        for (i, window) in c.windows.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let lin = |name: &str, d_in: usize, d_out: usize, bias: bool| {
                Linear::load_with_bias(w, &format!("{p}.{name}"), d_in, d_out, bias, &ctx)
            };
            let mlp_bias = c.raw.mlp_bias;
            layers.push(Layer {
                input_norm: RmsNorm::load(w, &format!("{p}.input_layernorm.weight"), d, eps, &ctx)?,
                attn: Attention {
                    q: lin("self_attn.q_proj", d, hq * hd, c.qkv_bias)?,
                    k: lin("self_attn.k_proj", d, hkv * hd, c.qkv_bias)?,
                    v: lin("self_attn.v_proj", d, hkv * hd, c.qkv_bias)?,
                    o: lin("self_attn.o_proj", hq * hd, d, c.o_bias)?,
                    heads: hq,
                    kv_heads: hkv,
                    head_dim: hd,
                    window: *window,
                },
                post_norm: RmsNorm::load(
                    w,
                    &format!("{p}.post_attention_layernorm.weight"),
                    d,
                    eps,
                    &ctx,
                )?,
                mlp: Mlp {
                    gate: lin("mlp.gate_proj", d, ffn, mlp_bias)?,
                    up: lin("mlp.up_proj", d, ffn, mlp_bias)?,
                    down: lin("mlp.down_proj", ffn, d, mlp_bias)?,
                },
            });
        }
        let norm = RmsNorm::load(w, "model.norm.weight", d, eps, &ctx)?;
        // transformers uses the file's own head whenever there is one.
        let (lm_head, tied_head) = if w.contains("lm_head.weight") {
            let head = w.tensor("lm_head.weight", [v, d], dtype, device)?;
            (head.transpose(), false)
        } else if c.raw.tie_word_embeddings {
            (embed_tokens.clone().transpose(), true)
        } else {
            return Err(Error::MissingTensor {
                path: w.origin().to_path_buf(),
                name: "lm_head.weight (the config says tie_word_embeddings: false)".into(),
            });
        };
        let rotary = c.rotary();
        Ok(Llama {
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            tied_head,
            rotary,
            dtype,
            device: device.clone(),
        })
    }

    /// Token embeddings of `ids` (`[b, t]` -> `[b, t, d]`).
    pub fn embed(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        embedding(self.embed_tokens.clone(), ids)
    }

    /// The decoder stack over input embeddings `x` `[b, t, d]` at `positions`
    /// (per row), attending to the cached keys and then these. `keys` says,
    /// per row, the position of every key (cached ones first) or `None` for a
    /// masked one (padding). Returns the last hidden states, before the final norm.
    pub fn hidden(
        &self,
        x: Tensor<3>,
        positions: &[Vec<usize>],
        keys: &[Vec<Option<usize>>],
        mut caches: Option<&mut Vec<Option<KvCache>>>,
    ) -> Tensor<3> {
        let (cos, sin) = self.rotary.cos_sin(positions, &self.device);
        let mut biases: Vec<(Option<usize>, Tensor<4>)> = Vec::new();
        let mut h = x.cast(self.dtype.dtype());
        for (i, layer) in self.layers.iter().enumerate() {
            let window = layer.attn.window;
            let bias = match biases.iter().find(|(w, _)| *w == window) {
                Some((_, b)) => b.clone(),
                None => {
                    let b = attention_bias(positions, keys, window, &self.device);
                    biases.push((window, b.clone()));
                    b
                }
            };
            let cache = caches.as_deref_mut().map(|c| &mut c[i]);
            let a = layer.attn.forward(
                layer.input_norm.forward(h.clone()),
                &cos,
                &sin,
                &bias,
                cache,
            );
            h = kernels::residual_add(h, a);
            let f = layer.mlp.forward(layer.post_norm.forward(h.clone()));
            h = kernels::residual_add(h, f);
        }
        h
    }

    /// Final norm and head: hidden states `[b, t, d]` -> f32 logits `[b, t, vocab]`.
    pub fn head(&self, h: Tensor<3>) -> Tensor<3> {
        let h = self.norm.forward(h);
        kernels::few_rows_matmul(h, self.lm_head.clone()).cast(DType::F32)
    }

    /// Plain logits `[b, t, vocab]` of token ids with no prompt, every
    /// position real (for checks against transformers' forward).
    pub fn logits(&self, ids: &[Vec<u32>]) -> Tensor<3> {
        let (b, t) = (ids.len(), ids.first().map_or(0, Vec::len));
        let flat: Vec<i64> = ids.iter().flatten().map(|&i| i as i64).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(flat, [b, t]), &self.device);
        let positions = vec![(0..t).collect::<Vec<_>>(); b];
        let keys = vec![(0..t).map(Some).collect::<Vec<_>>(); b];
        self.head(self.hidden(self.embed(ids), &positions, &keys, None))
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Number of parameters (a tied head counted once).
    pub fn num_parameters(&self) -> usize {
        self.weights().iter().map(|(_, w)| w.numel()).sum()
    }

    /// Every weight under its Hugging Face checkpoint name
    /// (`model.layers.0.self_attn.q_proj.weight`), in checkpoint order, a
    /// tied head not listed. Dense weights (and the head) are held `[in, out]`
    /// (see [`Linear`]); [`Llama::save`] transposes them back.
    pub fn weights(&self) -> Vec<(String, WeightRef<'_>)> {
        named_weights!(self, WeightRef::D1, WeightRef::D2, WeightRef::linear,)
    }

    /// The same list as [`Llama::weights`], mutable: full-parameter training
    /// (`ept pretrain --arch llama`, f32) replaces the tensors after each
    /// update; call [`Llama::retie`] after changing the embedding. As for
    /// T5, a bf16-mixed model's packed copies are not refreshed.
    pub fn weights_mut(&mut self) -> Vec<(String, WeightMut<'_>)> {
        named_weights!(self, WeightMut::D1, WeightMut::D2, WeightMut::linear, mut)
    }

    /// Makes a tied head the embedding's transpose again (after the embedding changed).
    pub fn retie(&mut self) {
        if self.tied_head {
            self.lm_head = self.embed_tokens.clone().transpose();
        }
    }

    /// The same model with every weight cut from the autodiff graph.
    pub fn detached(mut self) -> Llama {
        for (_, w) in self.weights_mut() {
            w.detach();
        }
        self.retie();
        self
    }

    /// The same weights on the same hardware without autodiff (see `T5::for_inference`).
    pub fn for_inference(&self) -> Llama {
        let mut m = self.clone();
        for (_, w) in m.weights_mut() {
            w.without_autodiff();
        }
        m.device = m.device.clone().without_autodiff();
        m.retie();
        m
    }
}

/// Whether a checkpoint tensor is held transposed (`[in, out]`) relative to
/// the file (`[out, in]`): the dense layers' weights and the head.
pub fn is_dense_weight(name: &str) -> bool {
    name.ends_with("_proj.weight") || name == "lm_head.weight"
}

/// The additive f32 mask `[b, 1, t_q, t_k]`: query j of row r (at
/// `positions[r][j]`) sees key c when the key is real, not in the future,
/// and inside the window.
fn attention_bias(
    positions: &[Vec<usize>],
    keys: &[Vec<Option<usize>>],
    window: Option<usize>,
    device: &Device,
) -> Tensor<4> {
    let b = positions.len();
    let t_q = positions.first().map_or(0, Vec::len);
    let t_k = keys.first().map_or(0, Vec::len);
    let mut v = Vec::with_capacity(b * t_q * t_k);
    for (qs, ks) in positions.iter().zip(keys) {
        for &q in qs {
            v.extend(ks.iter().map(|k| match *k {
                Some(k) if k <= q && window.is_none_or(|w| q < k + w) => 0.0,
                _ => MASK_VALUE,
            }));
        }
    }
    Tensor::<4>::from_data(TensorData::new(v, [b, 1, t_q, t_k]), (device, DType::F32))
}
