//! A T5 or a Llama-family decoder with random weights of a config's shapes:
//! for benchmarks and tests that need the real architecture's cost but no
//! checkpoint on disk.
//!
//! [`T5::random`] and [`Llama::random`] draw every matrix from N(0, 0.05²),
//! [`T5::init`] and [`Llama::init`] as transformers' `_init_weights` does for
//! each (the start of pretraining); RMS-norm weights are 1. Weights
//! are laid out exactly as [`T5::from_weights`] lays out a loaded checkpoint
//! (dense weights drawn `[out, in]` and transposed to a `[in, out]` view, a tied
//! head that is the shared embedding's transpose), so a forward or backward
//! pass costs what it costs on real weights.

use std::path::Path;

use burn::tensor::{Device, Tensor};

use super::config::{FeedForwardKind, T5Config};
use super::layers::{Linear, RmsNorm};
use super::llama::{self, Llama};
use super::llama_config::LlamaConfig;
use super::t5::{Attention, DecoderBlock, EncoderBlock, FeedForward, T5};
use crate::io::bnb4::{BLOCKSIZE, Quant4, QuantType, StoredDtype};
use crate::io::weights::{FloatType, tensor_from_f32};
use crate::rng::Rng;

/// Standard deviation of every weight of [`T5::random`].
const STD: f64 = 0.05;

/// How weights are scaled.
#[derive(Clone, Copy)]
enum Scheme {
    /// Every matrix N(0, σ²): 0.05 for [`T5::random`] and [`Llama::random`],
    /// the config's `initializer_range` for [`Llama::init`].
    Flat(f64),
    /// transformers' T5 initialisation: embedding and head N(0, 1), a dense
    /// layer N(0, 1/fan_in) except the query, N(0, 1/(d_model·d_kv)), which
    /// absorbs T5's missing 1/√d_kv score scaling.
    T5,
}

/// Draws the weights in a fixed order from one seeded generator.
struct Init<'a> {
    rng: Rng,
    dtype: FloatType,
    device: &'a Device,
    scheme: Scheme,
    /// Dense layers quantized to 4 bits as they are drawn (from bf16 values,
    /// as a bf16 checkpoint would be): the f32 matrix lives only while it is quantized.
    quantize: Option<QuantType>,
}

impl Init<'_> {
    fn std(&self, t5_std: f64) -> f64 {
        match self.scheme {
            Scheme::Flat(std) => std,
            Scheme::T5 => t5_std,
        }
    }

    fn matrix(&mut self, rows: usize, cols: usize, t5_std: f64) -> Tensor<2> {
        let std = self.std(t5_std);
        let v = (0..rows * cols)
            .map(|_| (self.rng.normal() * std) as f32)
            .collect();
        tensor_from_f32(v, [rows, cols], self.dtype, self.device)
    }

    /// A dense layer `d_in -> d_out`, stored as a loaded one is: `[out, in]` transposed.
    fn linear(&mut self, d_in: usize, d_out: usize) -> Linear {
        self.linear_std(d_in, d_out, (d_in as f64).powf(-0.5))
    }

    fn linear_std(&mut self, d_in: usize, d_out: usize, t5_std: f64) -> Linear {
        if let Some(quant_type) = self.quantize {
            let std = self.std(t5_std);
            let values: Vec<f32> = (0..d_out * d_in)
                .map(|_| StoredDtype::Bf16.round((self.rng.normal() * std) as f32))
                .collect();
            let shape = [d_out, d_in];
            let q = Quant4::quantize(
                &values,
                &shape,
                quant_type,
                true,
                BLOCKSIZE,
                StoredDtype::Bf16,
            );
            return Linear::quantized(q, self.dtype, self.device);
        }
        Linear::new(self.matrix(d_out, d_in, t5_std).transpose(), self.dtype)
    }

    /// A dense layer never quantized (T5's `wo`, which transformers keeps out).
    /// In a 4-bit model it is packed per product, as a loaded one ([`Linear::with_packing`]).
    fn linear_kept(&mut self, d_in: usize, d_out: usize) -> Linear {
        if self.quantize.is_none() {
            return self.linear(d_in, d_out);
        }
        let w = self.matrix(d_out, d_in, (d_in as f64).powf(-0.5));
        Linear::with_packing(w.transpose(), self.dtype, false)
    }

    fn norm(&mut self, d: usize, eps: f64) -> RmsNorm {
        RmsNorm {
            weight: tensor_from_f32(vec![1.0; d], [d], self.dtype, self.device),
            eps,
        }
    }

    fn attention(&mut self, cfg: &T5Config, with_bias: bool) -> Attention {
        let (d, inner) = (cfg.d_model, cfg.inner_dim());
        let relative_bias = with_bias.then(|| {
            let std = (d as f64).powf(-0.5);
            self.matrix(cfg.relative_attention_num_buckets, cfg.num_heads, std)
        });
        Attention {
            q: self.linear_std(d, inner, ((d * cfg.d_kv) as f64).powf(-0.5)),
            k: self.linear(d, inner),
            v: self.linear(d, inner),
            o: self.linear(inner, d),
            relative_bias,
            n_heads: cfg.num_heads,
        }
    }

    fn feed_forward(&mut self, cfg: &T5Config, kind: FeedForwardKind) -> FeedForward {
        let (d, f) = (cfg.d_model, cfg.d_ff);
        FeedForward {
            wi: self.linear(d, f),
            wi_gate: kind.gated.then(|| self.linear(d, f)),
            wo: self.linear_kept(f, d),
            act: kind.act,
        }
    }
}

impl T5 {
    /// A T5 of `config`'s shapes with random weights (N(0, 0.05²), norms 1),
    /// deterministic in `seed`. The head is tied to the shared embedding unless
    /// the config says `tie_word_embeddings: false`.
    ///
    /// Panics if the config's `feed_forward_proj` is not one [`T5Config`] accepts.
    pub fn random(config: T5Config, seed: u64, dtype: FloatType, device: &Device) -> T5 {
        Self::build(config, seed, dtype, None, device, Scheme::Flat(STD))
    }

    /// [`T5::random`] with the dense layers (but `wo`) in 4 bits, quantized
    /// one by one as they are drawn: a T5-11B shape fits where its bf16 would not.
    pub fn random_quantized(
        config: T5Config,
        seed: u64,
        dtype: FloatType,
        quantize: QuantType,
        device: &Device,
    ) -> T5 {
        Self::build(
            config,
            seed,
            dtype,
            Some(quantize),
            device,
            Scheme::Flat(STD),
        )
    }

    /// A T5 initialised as transformers initialises one for pretraining from
    /// scratch, deterministic in `seed` (f32).
    pub fn init(config: T5Config, seed: u64, device: &Device) -> T5 {
        Self::build(config, seed, FloatType::F32, None, device, Scheme::T5)
    }

    fn build(
        config: T5Config,
        seed: u64,
        dtype: FloatType,
        quantize: Option<QuantType>,
        device: &Device,
        scheme: Scheme,
    ) -> T5 {
        let kind = config
            .feed_forward(Path::new("<random T5 config>"))
            .expect("a random T5 needs a valid feed_forward_proj");
        let mut init = Init {
            rng: Rng::new(seed),
            dtype,
            device,
            scheme,
            quantize,
        };
        let cfg = &config;
        let (d, v, eps) = (cfg.d_model, cfg.vocab_size, cfg.layer_norm_epsilon);
        let shared = init.matrix(v, d, 1.0);
        let encoder = (0..cfg.num_layers)
            .map(|i| EncoderBlock {
                attn_norm: init.norm(d, eps),
                attn: init.attention(cfg, i == 0),
                ff_norm: init.norm(d, eps),
                ff: init.feed_forward(cfg, kind),
            })
            .collect();
        let decoder = (0..cfg.decoder_layers())
            .map(|i| DecoderBlock {
                self_norm: init.norm(d, eps),
                self_attn: init.attention(cfg, i == 0),
                cross_norm: init.norm(d, eps),
                cross_attn: init.attention(cfg, false),
                ff_norm: init.norm(d, eps),
                ff: init.feed_forward(cfg, kind),
            })
            .collect();
        let encoder_norm = init.norm(d, eps);
        let decoder_norm = init.norm(d, eps);
        let (lm_head, tied_head) = if cfg.tie_word_embeddings {
            (shared.clone().transpose(), true)
        } else {
            // T5 draws an untied head from N(0, 1); N(0, 1/d_model) starts the loss
            // near ln(vocab) instead of far above it (AdamW, not Adafactor, trains it here).
            (init.matrix(v, d, (d as f64).powf(-0.5)).transpose(), false)
        };
        T5 {
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
        }
    }
}

impl Llama {
    /// A decoder of `config`'s shapes with random weights (N(0, 0.05²), norms
    /// 1, biases 0), deterministic in `seed`, laid out as a loaded checkpoint.
    pub fn random(config: LlamaConfig, seed: u64, dtype: FloatType, device: &Device) -> Llama {
        Self::build(config, seed, dtype, None, device, STD)
    }

    /// [`Llama::random`] with every dense layer in 4 bits, quantized as drawn.
    pub fn random_quantized(
        config: LlamaConfig,
        seed: u64,
        dtype: FloatType,
        quantize: QuantType,
        device: &Device,
    ) -> Llama {
        Self::build(config, seed, dtype, Some(quantize), device, STD)
    }

    /// A decoder initialised as transformers' `LlamaPreTrainedModel` initialises
    /// one for pretraining from scratch (every matrix N(0, 0.02²), its default
    /// `initializer_range`; norms 1, biases 0), deterministic in `seed` (f32).
    pub fn init(config: LlamaConfig, seed: u64, device: &Device) -> Llama {
        Self::build(config, seed, FloatType::F32, None, device, 0.02)
    }

    fn build(
        config: LlamaConfig,
        seed: u64,
        dtype: FloatType,
        quantize: Option<QuantType>,
        device: &Device,
        std: f64,
    ) -> Llama {
        let mut init = Init {
            rng: Rng::new(seed),
            dtype,
            device,
            scheme: Scheme::Flat(std),
            quantize,
        };
        let c = &config;
        let (d, v, ffn, eps) = (
            c.hidden_size(),
            c.raw.vocab_size,
            c.raw.intermediate_size,
            c.raw.rms_norm_eps,
        );
        let (hq, hkv, hd) = (c.num_heads(), c.num_kv_heads, c.head_dim);
        let embed_tokens = init.matrix(v, d, STD);
        let lin = |init: &mut Init, d_in: usize, d_out: usize, bias: bool| {
            let mut l = init.linear(d_in, d_out);
            l.bias = bias.then(|| tensor_from_f32(vec![0.0; d_out], [d_out], dtype, device));
            l
        };
        let layers = c
            .windows
            .iter()
            .map(|&window| llama::Layer {
                input_norm: init.norm(d, eps),
                attn: llama::Attention {
                    q: lin(&mut init, d, hq * hd, c.qkv_bias),
                    k: lin(&mut init, d, hkv * hd, c.qkv_bias),
                    v: lin(&mut init, d, hkv * hd, c.qkv_bias),
                    o: lin(&mut init, hq * hd, d, c.o_bias),
                    heads: hq,
                    kv_heads: hkv,
                    head_dim: hd,
                    window,
                },
                post_norm: init.norm(d, eps),
                mlp: llama::Mlp {
                    gate: lin(&mut init, d, ffn, c.raw.mlp_bias),
                    up: lin(&mut init, d, ffn, c.raw.mlp_bias),
                    down: lin(&mut init, ffn, d, c.raw.mlp_bias),
                },
            })
            .collect();
        let norm = init.norm(d, eps);
        let (lm_head, tied_head) = if c.raw.tie_word_embeddings {
            (embed_tokens.clone().transpose(), true)
        } else {
            (init.matrix(v, d, STD).transpose(), false)
        };
        let rotary = c.rotary();
        Llama {
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            tied_head,
            rotary,
            dtype,
            device: device.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Int, Tensor, TensorData};

    use super::*;
    use crate::model::t5::token_loss_sums;

    fn tiny(ff: &str, tied: bool) -> T5Config {
        serde_json::from_value(serde_json::json!({
            "model_type": "t5",
            "vocab_size": 50,
            "d_model": 16,
            "d_kv": 4,
            "d_ff": 24,
            "num_layers": 2,
            "num_decoder_layers": 1,
            "num_heads": 2,
            "feed_forward_proj": ff,
            "tie_word_embeddings": tied,
        }))
        .unwrap()
    }

    #[test]
    fn a_tiny_random_t5_gives_a_finite_loss() {
        let device = crate::runtime::cpu_device(false);
        for (ff, tied) in [("relu", true), ("gated-gelu", false)] {
            let model = T5::random(tiny(ff, tied), 7, FloatType::F32, &device);
            assert_eq!(model.encoder.len(), 2);
            assert_eq!(model.decoder.len(), 1);
            assert_eq!(model.tied_head, tied);
            let ids = |v: Vec<i64>, t: usize| {
                Tensor::<2, Int>::from_data(TensorData::new(v, [2, t]), &device)
            };
            let input = ids(vec![5, 9, 13, 1, 7, 3, 1, 0], 4);
            let mask = Tensor::<2>::from_data(
                TensorData::new(vec![1f32, 1., 1., 1., 1., 1., 1., 0.], [2, 4]),
                &device,
            );
            let enc = model.encode_embeds(model.embed(input), &mask);
            let logits = model.decode(ids(vec![0, 11, 0, 4], 2), enc, &mask);
            assert_eq!(logits.dims(), [2, 2, 50]);
            let label_mask = Tensor::<2>::ones([2, 2], &device);
            let sums = token_loss_sums(logits, ids(vec![11, 1, 4, 1], 2), label_mask);
            let loss = crate::tensors::to_f32_vec(sums).iter().sum::<f32>() / 4.0;
            assert!(loss.is_finite() && loss > 0.0, "{ff}: loss {loss}");
            // Random logits are near-uniform: the loss is close to ln(vocab).
            assert!((loss - 50f32.ln()).abs() < 1.0, "{ff}: loss {loss}");
        }
        // Deterministic in the seed.
        let a = T5::random(tiny("relu", true), 3, FloatType::F32, &device);
        let b = T5::random(tiny("relu", true), 3, FloatType::F32, &device);
        assert_eq!(
            crate::tensors::to_f32_vec(a.shared.clone()),
            crate::tensors::to_f32_vec(b.shared.clone())
        );
    }

    /// Loss and gradient of the input embeddings through a random T5 of
    /// `width` in `dtype`, with the packed bf16 kernel (AMX or AVX512-BF16) on or off.
    fn loss_and_input_grad(dtype: FloatType, amx_on: bool, width: usize) -> (f32, Vec<f32>) {
        crate::kernels::amx::set_enabled(amx_on);
        let device = crate::runtime::cpu_device(true);
        let config: T5Config = serde_json::from_value(serde_json::json!({
            "model_type": "t5", "vocab_size": 64, "d_model": width, "d_kv": width / 4,
            "d_ff": 2 * width, "num_layers": 4, "num_decoder_layers": 2, "num_heads": 4,
            "feed_forward_proj": "gated-gelu", "tie_word_embeddings": false,
        }))
        .unwrap();
        let model = T5::random(config, 11, dtype, &device);
        let (b, t) = (4, 37);
        let ids: Vec<i64> = (0..b * t).map(|i| (i * 7 % 61 + 2) as i64).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, t]), &device);
        let embeds = model.embed(ids).detach().require_grad();
        let mask = Tensor::<2>::ones([b, t], &device);
        let enc = model.encode_embeds(embeds.clone(), &mask);
        let labels: Vec<i64> = (0..b * 3).map(|i| (i * 5 % 60 + 2) as i64).collect();
        let labels = Tensor::<2, Int>::from_data(TensorData::new(labels, [b, 3]), &device);
        let dec_in = Tensor::<2, Int>::zeros([b, 3], &device);
        let logits = model.decode(dec_in, enc, &mask);
        let sums = token_loss_sums(logits, labels, Tensor::<2>::ones([b, 3], &device));
        let loss = sums.sum();
        let grads = loss.clone().backward();
        let g = embeds.grad(&grads).unwrap();
        crate::kernels::amx::set_enabled(true);
        (
            crate::tensors::to_f32_vec(loss.inner())[0],
            crate::tensors::to_f32_vec(g),
        )
    }

    /// bf16-mixed precision at model level: the loss and the input gradient
    /// stay near f32's, on the packed kernel (AMX tiles or AVX512-BF16) as on
    /// the portable path. The two bf16 paths are not compared with each
    /// other directly: they round the same operands but sum in another
    /// order, and a sum that lands on the
    /// other side of a bf16 rounding boundary moves the next layer's input by
    /// a whole bf16 step, which the deep random model amplifies (measured
    /// here: 1e-2 relative between the paths, 3e-2 each from f32; f32 with
    /// and without the fused kernels: 4e-6).
    #[test]
    fn bf16_mixed_stays_near_f32_on_both_paths() {
        let width = 128;
        let (l32, g32) = loss_and_input_grad(FloatType::F32, true, width);
        let rel = |a: &[f32]| {
            let num: f32 = a.iter().zip(&g32).map(|(x, y)| (x - y) * (x - y)).sum();
            let den: f32 = g32.iter().map(|y| y * y).sum();
            (num / den).sqrt()
        };
        let mut paths = vec![false];
        if crate::kernels::amx::detected() {
            paths.push(true);
        }
        for amx_on in paths {
            let (loss, grad) = loss_and_input_grad(FloatType::Bf16Mixed, amx_on, width);
            let (dl, dg) = ((loss - l32).abs() / l32, rel(&grad));
            assert!(dl < 1e-3, "amx {amx_on}: loss {loss} vs f32 {l32}");
            // bf16 keeps 8 bits: 0.4 % per rounding, through 6 layers and back.
            assert!(dg < 0.06, "amx {amx_on}: gradient {dg} relative to f32's");
            assert!(dg > 1e-4, "amx {amx_on}: no rounding happened ({dg})");
        }
    }
}
