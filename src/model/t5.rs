//! The frozen T5 encoder-decoder, computing what transformers' `modeling_t5.py` computes.
//!
//! Notes that matter for parity (METHOD.md §7):
//! - attention scores are *not* scaled by 1/√d_kv;
//! - the relative position bias lives in block 0 of each stack and is shared by
//!   all its layers (bidirectional buckets in the encoder, causal in the decoder);
//!   cross-attention has none;
//! - T5LayerNorm is RMS without mean or bias, computed in f32;
//! - v1.0 multiplies the decoder output by d_model^-0.5 before the tied head.
//!
//! Weights are plain tensors that never require gradients: a backward pass
//! through this model computes gradients only for what the caller made
//! trainable (the prompt), never for a weight.

use std::path::Path;

use burn::tensor::activation::{gelu, gelu_approximate, silu};
use burn::tensor::module::embedding;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use super::config::{Activation, FeedForwardKind, T5Config};
pub use super::layers::token_loss_sums;
use super::layers::{Linear, LoadCtx, MASK_VALUE, RmsNorm};
pub use super::params::{WeightMut, WeightRef};
use crate::error::{Error, Result};
use crate::io::bnb4::QuantizeSpec;
use crate::io::weights::{FloatType, WeightFile};
use crate::kernels;

/// Cached keys and values of one attention layer during incremental
/// decoding, `[b, t, heads·d_kv]` as the projections return them.
#[derive(Clone, Debug)]
pub struct KvCache {
    k: Tensor<3>,
    v: Tensor<3>,
}

/// Multi-head attention with T5's unscaled scores and optional relative bias table.
#[derive(Clone, Debug)]
pub struct Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    /// `[num_buckets, num_heads]`, only in block 0 of a stack.
    pub relative_bias: Option<Tensor<2>>,
    pub(crate) n_heads: usize,
}

impl Attention {
    fn load(
        w: &WeightFile,
        prefix: &str,
        with_bias: bool,
        cfg: &T5Config,
        ctx: &LoadCtx,
    ) -> Result<Self> {
        let (d, inner) = (cfg.d_model, cfg.inner_dim());
        let relative_bias = if with_bias {
            Some(w.tensor(
                &format!("{prefix}.relative_attention_bias.weight"),
                [cfg.relative_attention_num_buckets, cfg.num_heads],
                ctx.dtype,
                &ctx.device,
            )?)
        } else {
            None
        };
        Ok(Attention {
            q: Linear::load(w, &format!("{prefix}.q.weight"), d, inner, ctx)?,
            k: Linear::load(w, &format!("{prefix}.k.weight"), d, inner, ctx)?,
            v: Linear::load(w, &format!("{prefix}.v.weight"), d, inner, ctx)?,
            o: Linear::load(w, &format!("{prefix}.o.weight"), inner, d, ctx)?,
            relative_bias,
            n_heads: cfg.num_heads,
        })
    }

    /// Attention of the projected queries over the projected keys and values
    /// (each `[b, t, heads·d_kv]`), then the output projection.
    fn attend(&self, q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, bias: &Tensor<4>) -> Tensor<3> {
        self.o
            .forward(kernels::attention(q, k, v, bias.clone(), self.n_heads))
    }

    /// Self- or cross-attention over a whole sequence; `bias` (f32) holds the
    /// position bias and the masks, broadcastable to `[b, heads, t_q, t_k]`.
    pub fn forward(&self, x: Tensor<3>, kv: Option<Tensor<3>>, bias: &Tensor<4>) -> Tensor<3> {
        let q_len = x.dims()[1];
        let d_kv = self.k.d_out() / self.n_heads;
        if let (Some(enc), Some(w_k), Some(w_v)) = (&kv, self.k.f32_weight(), self.v.f32_weight()) {
            // Few queries (classification targets) against a long encoder
            // output: the projections folded into the queries cost about
            // t_q / d_kv of projecting the keys and values (see
            // `cross_attention_kernel`); a quarter of d_kv leaves margin for
            // the smaller products' overheads.
            if 4 * q_len <= d_kv {
                let q = self.q.forward(x);
                let out = kernels::cross_attention(
                    q,
                    enc.clone(),
                    w_k.clone(),
                    w_v.clone(),
                    bias.clone(),
                    self.n_heads,
                );
                return self.o.forward(out);
            }
        }
        let src = kv.unwrap_or_else(|| x.clone());
        let q = self.q.forward(x);
        let k = self.k.forward(src.clone());
        let v = self.v.forward(src);
        self.attend(q, k, v, bias)
    }

    /// One decoding step of self-attention, appending this step's key and value to `cache`.
    fn forward_step(
        &self,
        x: Tensor<3>,
        cache: &mut Option<KvCache>,
        bias: &Tensor<4>,
    ) -> Tensor<3> {
        let q = self.q.forward(x.clone());
        let k_new = self.k.forward(x.clone());
        let v_new = self.v.forward(x);
        let (k, v) = match cache.take() {
            Some(c) => (
                Tensor::cat(vec![c.k, k_new], 1),
                Tensor::cat(vec![c.v, v_new], 1),
            ),
            None => (k_new, v_new),
        };
        *cache = Some(KvCache {
            k: k.clone(),
            v: v.clone(),
        });
        self.attend(q, k, v, bias)
    }

    /// Keys and values of the encoder output, computed once per generation.
    fn cross_cache(&self, enc: Tensor<3>) -> KvCache {
        KvCache {
            k: self.k.forward(enc.clone()),
            v: self.v.forward(enc),
        }
    }

    /// The `[1, heads, q_len, k_len]` relative position bias for queries at
    /// positions `q_offset..q_offset+q_len` against keys `0..k_len`.
    pub fn position_bias(
        &self,
        q_len: usize,
        k_len: usize,
        q_offset: usize,
        bidirectional: bool,
        cfg: &T5Config,
    ) -> Tensor<4> {
        let table = self
            .relative_bias
            .as_ref()
            .expect("position bias asked of a block without one");
        let mut buckets = Vec::with_capacity(q_len * k_len);
        for i in 0..q_len {
            for j in 0..k_len {
                let rel = j as i64 - (i + q_offset) as i64;
                buckets.push(relative_position_bucket(
                    rel,
                    bidirectional,
                    cfg.relative_attention_num_buckets,
                    cfg.relative_attention_max_distance,
                ));
            }
        }
        let device = table.device();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(buckets, [q_len * k_len]), &device);
        table
            .clone()
            .select(0, idx)
            .cast(DType::F32)
            .reshape([q_len, k_len, self.n_heads])
            .permute([2, 0, 1])
            .unsqueeze::<4>()
    }
}

/// transformers' `_relative_position_bucket`, including its f32 logarithm.
pub fn relative_position_bucket(
    rel: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> i64 {
    let mut num_buckets = num_buckets as i64;
    let mut bucket = 0i64;
    let rel = if bidirectional {
        num_buckets /= 2;
        if rel > 0 {
            bucket += num_buckets;
        }
        rel.abs()
    } else {
        -rel.min(0)
    };
    let max_exact = num_buckets / 2;
    if rel < max_exact {
        return bucket + rel;
    }
    let ratio = (rel as f32 / max_exact as f32).ln();
    let scale = ((max_distance as f64) / (max_exact as f64)).ln() as f32;
    let large = max_exact + (ratio / scale * (num_buckets - max_exact) as f32) as i64;
    bucket + large.min(num_buckets - 1)
}

/// The position-wise feed-forward block.
#[derive(Clone, Debug)]
pub struct FeedForward {
    pub wi: Linear,
    /// The gate's second projection (`wi_1`) in gated variants.
    pub wi_gate: Option<Linear>,
    pub wo: Linear,
    pub(crate) act: Activation,
}

impl FeedForward {
    fn load(
        w: &WeightFile,
        prefix: &str,
        kind: FeedForwardKind,
        cfg: &T5Config,
        ctx: &LoadCtx,
    ) -> Result<Self> {
        let (d, f) = (cfg.d_model, cfg.d_ff);
        let (wi, wi_gate) = if kind.gated {
            (
                Linear::load(w, &format!("{prefix}.wi_0.weight"), d, f, ctx)?,
                Some(Linear::load(
                    w,
                    &format!("{prefix}.wi_1.weight"),
                    d,
                    f,
                    ctx,
                )?),
            )
        } else {
            (
                Linear::load(w, &format!("{prefix}.wi.weight"), d, f, ctx)?,
                None,
            )
        };
        Ok(FeedForward {
            wi,
            wi_gate,
            wo: Linear::load(w, &format!("{prefix}.wo.weight"), f, d, ctx)?,
            act: kind.act,
        })
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = self.wi.forward(x.clone());
        if let (Activation::GeluNew, Some(g)) = (self.act, &self.wi_gate) {
            return self.wo.forward(kernels::gated_gelu(h, g.forward(x)));
        }
        let h = match self.act {
            Activation::Relu => kernels::relu(h),
            Activation::GeluNew => gelu_approximate(h),
            Activation::Gelu => gelu(h),
            Activation::Silu => silu(h),
        };
        let h = match &self.wi_gate {
            Some(g) => h * g.forward(x),
            None => h,
        };
        self.wo.forward(h)
    }
}

/// One encoder block: self-attention then feed-forward, each pre-normed with a residual.
#[derive(Clone, Debug)]
pub struct EncoderBlock {
    pub attn_norm: RmsNorm,
    pub attn: Attention,
    pub ff_norm: RmsNorm,
    pub ff: FeedForward,
}

/// One decoder block: causal self-attention, cross-attention, feed-forward.
#[derive(Clone, Debug)]
pub struct DecoderBlock {
    pub self_norm: RmsNorm,
    pub self_attn: Attention,
    pub cross_norm: RmsNorm,
    pub cross_attn: Attention,
    pub ff_norm: RmsNorm,
    pub ff: FeedForward,
}

/// A T5 encoder-decoder with frozen weights.
#[derive(Clone, Debug)]
pub struct T5 {
    pub config: T5Config,
    /// The shared token embedding, `[vocab, d_model]`.
    pub shared: Tensor<2>,
    pub encoder: Vec<EncoderBlock>,
    pub encoder_norm: RmsNorm,
    pub decoder: Vec<DecoderBlock>,
    pub decoder_norm: RmsNorm,
    /// `[d_model, vocab]`: the file's `lm_head.weight` transposed, or the shared embedding's.
    pub lm_head: Tensor<2>,
    /// Whether `lm_head` is the shared embedding (for parameter counts).
    pub tied_head: bool,
    pub dtype: FloatType,
    pub(crate) device: Device,
}

/// Expands to the list of `(HF name, reference)` pairs of a T5, shared or
/// mutable (`mut` as last argument), so both lists come from one text.
macro_rules! named_weights {
    ($self:ident, $d1:path, $d2:path, $lin:path, $($m:tt)?) => {{
        let mut out = Vec::new();
        out.push(("shared.weight".to_string(), $d2(& $($m)? $self.shared)));
        let stacks = [
            ("encoder", (& $($m)? $self.encoder).into_iter().map(|b| {
                let mut v = Vec::new();
                v.push(("layer.0.layer_norm.weight", $d1(& $($m)? b.attn_norm.weight)));
                attention!(v, "layer.0.SelfAttention", b.attn, $d2, $lin, $($m)?);
                v.push(("layer.1.layer_norm.weight", $d1(& $($m)? b.ff_norm.weight)));
                feed_forward!(v, "layer.1.DenseReluDense", b.ff, $lin, $($m)?);
                v
            }).collect::<Vec<_>>()),
            ("decoder", (& $($m)? $self.decoder).into_iter().map(|b| {
                let mut v = Vec::new();
                v.push(("layer.0.layer_norm.weight", $d1(& $($m)? b.self_norm.weight)));
                attention!(v, "layer.0.SelfAttention", b.self_attn, $d2, $lin, $($m)?);
                v.push(("layer.1.layer_norm.weight", $d1(& $($m)? b.cross_norm.weight)));
                attention!(v, "layer.1.EncDecAttention", b.cross_attn, $d2, $lin, $($m)?);
                v.push(("layer.2.layer_norm.weight", $d1(& $($m)? b.ff_norm.weight)));
                feed_forward!(v, "layer.2.DenseReluDense", b.ff, $lin, $($m)?);
                v
            }).collect::<Vec<_>>()),
        ];
        for (stack, blocks) in stacks {
            for (i, block) in blocks.into_iter().enumerate() {
                for (n, w) in block {
                    out.push((format!("{stack}.block.{i}.{n}"), w));
                }
            }
        }
        out.push(("encoder.final_layer_norm.weight".into(), $d1(& $($m)? $self.encoder_norm.weight)));
        out.push(("decoder.final_layer_norm.weight".into(), $d1(& $($m)? $self.decoder_norm.weight)));
        if !$self.tied_head {
            out.push(("lm_head.weight".into(), $d2(& $($m)? $self.lm_head)));
        }
        out
    }};
}

macro_rules! attention {
    ($v:ident, $p:literal, $a:expr, $d2:path, $lin:path, $($m:tt)?) => {{
        let a = & $($m)? $a;
        $v.push((concat!($p, ".q.weight"), $lin(& $($m)? a.q.weight, &a.q.quant)));
        $v.push((concat!($p, ".k.weight"), $lin(& $($m)? a.k.weight, &a.k.quant)));
        $v.push((concat!($p, ".v.weight"), $lin(& $($m)? a.v.weight, &a.v.quant)));
        $v.push((concat!($p, ".o.weight"), $lin(& $($m)? a.o.weight, &a.o.quant)));
        if let Some(b) = & $($m)? a.relative_bias {
            $v.push((concat!($p, ".relative_attention_bias.weight"), $d2(b)));
        }
    }};
}

macro_rules! feed_forward {
    ($v:ident, $p:literal, $f:expr, $lin:path, $($m:tt)?) => {{
        let f = & $($m)? $f;
        match & $($m)? f.wi_gate {
            Some(g) => {
                $v.push((concat!($p, ".wi_0.weight"), $lin(& $($m)? f.wi.weight, &f.wi.quant)));
                $v.push((concat!($p, ".wi_1.weight"), $lin(& $($m)? g.weight, &g.quant)));
            }
            None => $v.push((concat!($p, ".wi.weight"), $lin(& $($m)? f.wi.weight, &f.wi.quant))),
        }
        $v.push((concat!($p, ".wo.weight"), $lin(& $($m)? f.wo.weight, &f.wo.quant)));
    }};
}

/// Names under which checkpoints store the shared embedding.
const EMBEDDING_NAMES: [&str; 3] = [
    "shared.weight",
    "encoder.embed_tokens.weight",
    "decoder.embed_tokens.weight",
];

impl T5 {
    /// Loads a checkpoint folder (`config.json` + safetensors) on `device` in `dtype`.
    pub fn load(dir: &Path, dtype: FloatType, device: &Device) -> Result<Self> {
        let config = T5Config::from_file(&dir.join("config.json"))?;
        let weights = WeightFile::open_dir(dir)?;
        Self::from_weights(
            config,
            &weights,
            &dir.join("config.json"),
            dtype,
            None,
            device,
        )
    }

    /// Builds the model from `w`; `quantize` quantizes its dense layers to 4
    /// bits as they load, except `wo` (transformers keeps T5's `wo` out of
    /// quantization: `_keep_in_fp32_modules`).
    pub fn from_weights(
        config: T5Config,
        w: &WeightFile,
        config_path: &Path,
        dtype: FloatType,
        quantize: Option<QuantizeSpec>,
        device: &Device,
    ) -> Result<Self> {
        let ctx = LoadCtx {
            device: device.clone(),
            dtype,
            pack: quantize.is_none() && !w.is_quantized(),
            quantize: quantize.map(|q| q.skipping(&["wo"])),
        };
        let cfg = &config;
        let kind = cfg.feed_forward(config_path)?;
        let (d, v) = (cfg.d_model, cfg.vocab_size);
        let emb_name = w
            .first_present(&EMBEDDING_NAMES)
            .ok_or_else(|| Error::MissingTensor {
                path: w.origin().to_path_buf(),
                name: "shared.weight".into(),
            })?;
        let shared = w.tensor(emb_name, [v, d], dtype, device)?;
        let eps = cfg.layer_norm_epsilon;
        let mut encoder = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("encoder.block.{i}.layer");
            encoder.push(EncoderBlock {
                attn_norm: RmsNorm::load(w, &format!("{p}.0.layer_norm.weight"), d, eps, &ctx)?,
                attn: Attention::load(w, &format!("{p}.0.SelfAttention"), i == 0, cfg, &ctx)?,
                ff_norm: RmsNorm::load(w, &format!("{p}.1.layer_norm.weight"), d, eps, &ctx)?,
                ff: FeedForward::load(w, &format!("{p}.1.DenseReluDense"), kind, cfg, &ctx)?,
            });
        }
        let mut decoder = Vec::with_capacity(cfg.decoder_layers());
        for i in 0..cfg.decoder_layers() {
            let p = format!("decoder.block.{i}.layer");
            decoder.push(DecoderBlock {
                self_norm: RmsNorm::load(w, &format!("{p}.0.layer_norm.weight"), d, eps, &ctx)?,
                self_attn: Attention::load(w, &format!("{p}.0.SelfAttention"), i == 0, cfg, &ctx)?,
                cross_norm: RmsNorm::load(w, &format!("{p}.1.layer_norm.weight"), d, eps, &ctx)?,
                cross_attn: Attention::load(
                    w,
                    &format!("{p}.1.EncDecAttention"),
                    false,
                    cfg,
                    &ctx,
                )?,
                ff_norm: RmsNorm::load(w, &format!("{p}.2.layer_norm.weight"), d, eps, &ctx)?,
                ff: FeedForward::load(w, &format!("{p}.2.DenseReluDense"), kind, cfg, &ctx)?,
            });
        }
        let encoder_norm = RmsNorm::load(w, "encoder.final_layer_norm.weight", d, eps, &ctx)?;
        let decoder_norm = RmsNorm::load(w, "decoder.final_layer_norm.weight", d, eps, &ctx)?;
        // transformers >= 5 uses the file's own head whenever there is one (a
        // re-saved untied model says `tie_word_embeddings: true` and keeps it).
        let (lm_head, tied_head) = if w.contains("lm_head.weight") {
            (
                w.tensor("lm_head.weight", [v, d], dtype, device)?
                    .transpose(),
                false,
            )
        } else {
            (shared.clone().transpose(), true)
        };
        Ok(T5 {
            config,
            shared,
            encoder,
            encoder_norm,
            decoder,
            decoder_norm,
            lm_head,
            tied_head,
            dtype,
            device: device.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn d_model(&self) -> usize {
        self.config.d_model
    }

    /// Token embeddings of `ids` (`[b, t]` -> `[b, t, d]`).
    pub fn embed(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        embedding(self.shared.clone(), ids)
    }

    /// Additive f32 mask `[b, 1, 1, t]` from a `[b, t]` 1/0 attention mask.
    fn mask_bias(mask: &Tensor<2>) -> Tensor<4> {
        let [b, t] = mask.dims();
        ((mask.clone().cast(DType::F32) - 1.0) * (-MASK_VALUE)).reshape([b, 1, 1, t])
    }

    /// Runs the encoder on input *embeddings* (prompts are prepended there).
    /// `mask` is `[b, t]` with 1 for real positions and 0 for padding.
    pub fn encode_embeds(&self, embeds: Tensor<3>, mask: &Tensor<2>) -> Tensor<3> {
        let [_, t, _] = embeds.dims();
        let bias = self.encoder[0]
            .attn
            .position_bias(t, t, 0, true, &self.config)
            + Self::mask_bias(mask);
        let mut h = embeds.cast(self.dtype.dtype());
        for block in &self.encoder {
            let attn = block
                .attn
                .forward(block.attn_norm.forward(h.clone()), None, &bias);
            h = kernels::residual_add(h, attn);
            let ff = block.ff.forward(block.ff_norm.forward(h.clone()));
            h = kernels::residual_add(h, ff);
        }
        self.encoder_norm.forward(h)
    }

    /// Causal mask `[1, 1, t, t]`: 0 on and below the diagonal, MASK_VALUE above.
    fn causal_bias(&self, t: usize) -> Tensor<4> {
        let mut v = vec![0f32; t * t];
        for i in 0..t {
            for j in (i + 1)..t {
                v[i * t + j] = MASK_VALUE;
            }
        }
        Tensor::<4>::from_data(TensorData::new(v, [1, 1, t, t]), (&self.device, DType::F32))
    }

    /// Final norm, optional rescale and LM head: decoder states -> f32 logits.
    fn head(&self, h: Tensor<3>) -> Tensor<3> {
        let h = self.decoder_norm.forward(h);
        let h = if self.config.rescale_decoder_output() {
            h * (self.config.d_model as f64).powf(-0.5)
        } else {
            h
        };
        kernels::few_rows_matmul(h, self.lm_head.clone()).cast(DType::F32)
    }

    /// Teacher-forced decoder: logits `[b, t, vocab]` (f32) for `decoder_ids`.
    pub fn decode(
        &self,
        decoder_ids: Tensor<2, Int>,
        enc: Tensor<3>,
        enc_mask: &Tensor<2>,
    ) -> Tensor<3> {
        let [_, t] = decoder_ids.dims();
        let self_bias = self.decoder[0]
            .self_attn
            .position_bias(t, t, 0, false, &self.config)
            + self.causal_bias(t);
        let cross_bias = Self::mask_bias(enc_mask);
        let mut h = self.embed(decoder_ids);
        for block in &self.decoder {
            h = h.clone()
                + block
                    .self_attn
                    .forward(block.self_norm.forward(h), None, &self_bias);
            h = h.clone()
                + block.cross_attn.forward(
                    block.cross_norm.forward(h),
                    Some(enc.clone()),
                    &cross_bias,
                );
            h = h.clone() + block.ff.forward(block.ff_norm.forward(h));
        }
        self.head(h)
    }

    /// Greedy decoding with a key/value cache; stops at `</s>` or after `max_new_tokens`.
    /// Returns the generated ids of each row, `</s>` included when produced.
    pub fn generate(
        &self,
        enc: Tensor<3>,
        enc_mask: &Tensor<2>,
        max_new_tokens: usize,
    ) -> Vec<Vec<u32>> {
        let [b, _, _] = enc.dims();
        let eos = self.config.eos_token_id;
        let pad = self.config.pad_id();
        let cross_bias = Self::mask_bias(enc_mask);
        let cross: Vec<KvCache> = self
            .decoder
            .iter()
            .map(|blk| blk.cross_attn.cross_cache(enc.clone()))
            .collect();
        let mut caches: Vec<Option<KvCache>> = vec![None; self.decoder.len()];
        let mut current = vec![self.config.decoder_start_id(); b];
        let mut out: Vec<Vec<u32>> = vec![Vec::new(); b];
        let mut done = vec![false; b];
        for step in 0..max_new_tokens {
            let ids: Vec<i64> = current.iter().map(|&i| i as i64).collect();
            let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, 1]), &self.device);
            let self_bias =
                self.decoder[0]
                    .self_attn
                    .position_bias(1, step + 1, step, false, &self.config);
            let mut h = self.embed(ids);
            for (i, block) in self.decoder.iter().enumerate() {
                h = h.clone()
                    + block.self_attn.forward_step(
                        block.self_norm.forward(h),
                        &mut caches[i],
                        &self_bias,
                    );
                let c = &cross[i];
                let a = &block.cross_attn;
                let q = a.q.forward(block.cross_norm.forward(h.clone()));
                h = h + a.attend(q, c.k.clone(), c.v.clone(), &cross_bias);
                h = h.clone() + block.ff.forward(block.ff_norm.forward(h));
            }
            let logits = self.head(h);
            let next = crate::tensors::to_i64_vec(logits.argmax(2));
            for r in 0..b {
                let tok = if done[r] { pad } else { next[r] as u32 };
                if !done[r] {
                    out[r].push(tok);
                    done[r] = tok == eos;
                }
                current[r] = tok;
            }
            if done.iter().all(|&d| d) {
                break;
            }
        }
        out
    }

    /// Every weight under its Hugging Face checkpoint name (`encoder.block.0.layer.0.SelfAttention.q.weight`),
    /// in checkpoint order. Dense weights are held `[in, out]` (see [`Linear`]); [`T5::save`]
    /// transposes them back.
    pub fn weights(&self) -> Vec<(String, WeightRef<'_>)> {
        named_weights!(self, WeightRef::D1, WeightRef::D2, WeightRef::linear,)
    }

    /// The same list as [`T5::weights`], mutable: full-parameter training
    /// (`ept pretrain`, always f32) replaces the tensors after each update. A
    /// tied head is not listed; call [`T5::retie`] after changing `shared`.
    /// In bf16-mixed precision the dense layers' AMX copies are made at load
    /// and not refreshed: such a model is for frozen use only.
    pub fn weights_mut(&mut self) -> Vec<(String, WeightMut<'_>)> {
        named_weights!(self, WeightMut::D1, WeightMut::D2, WeightMut::linear, mut)
    }

    /// The same model with every weight cut from the autodiff graph (for
    /// scoring and saving during full-parameter training).
    pub fn detached(mut self) -> T5 {
        for (_, w) in self.weights_mut() {
            w.detach();
        }
        self.retie();
        self
    }

    /// The same weights on the same hardware without autodiff, for forward-only
    /// work (validation, generation) during training. Why not [`T5::detached`]:
    /// on an autodiff device, burn 0.22 keeps memory alive for forward passes
    /// that are never backpropagated, even untracked ones (measured with
    /// `ept bench --task rte --pad-to 256`: about 1.7 GB more peak memory per
    /// batch of 32 × 356 positions at T5-small shape; none on the inner device).
    pub fn for_inference(&self) -> T5 {
        let mut m = self.clone();
        for (_, w) in m.weights_mut() {
            w.without_autodiff();
        }
        m.device = m.device.clone().without_autodiff();
        m.retie();
        m
    }

    /// Makes a tied head the shared embedding's transpose again (after `shared` changed).
    pub fn retie(&mut self) {
        if self.tied_head {
            self.lm_head = self.shared.clone().transpose();
        }
    }

    /// Number of parameters (the tied head counted once).
    pub fn num_parameters(&self) -> usize {
        self.weights().iter().map(|(_, w)| w.numel()).sum()
    }
}

/// Whether a checkpoint tensor is a dense layer's weight, which [`Linear`]
/// holds transposed (`[in, out]`) relative to the file (`[out, in]`).
pub fn is_dense_weight(name: &str) -> bool {
    name != "shared.weight"
        && !name.ends_with("relative_attention_bias.weight")
        && !name.ends_with("layer_norm.weight")
}
