//! Training-step benchmarks on random weights: no checkpoint, no data files.
//!
//! One *step* is what a prompt-tuning step costs before the optimiser: the
//! forward pass of a batch through the frozen encoder and decoder with the
//! prompt, the token-mean cross-entropy, the backward pass, and reading the
//! prompt's gradients. Weights are random ([`T5::random`], [`Llama::random`])
//! with the shapes of a real checkpoint, inputs are random ids of exactly `len`
//! tokens (T5: `</s>` last; a decoder: BOS first), targets 2–4 tokens (EOS last). `scripts/bench_pytorch.py` runs the same workloads in
//! PyTorch; `scripts/bench_vs_pytorch.sh` compares the two (docs/BENCHMARKS.md).

pub mod eval;
pub mod task;

use std::time::Instant;

use burn::tensor::{Device, Tensor};

use crate::error::{Error, Result};
use crate::evaluate::batch_loss_sums;
use crate::io::bnb4::QuantType;
use crate::io::weights::FloatType;
use crate::model::batch::{Seq2SeqBatch, TokenizedExample};
use crate::model::t5::token_loss_sums;
use crate::model::{FrozenModel, Llama, LlamaConfig, T5, T5Config, TextTokenizer};
use crate::prompt::{Method, PromptConfig, SoftPrompt, build_prompt};
use crate::rng::Rng;

/// Architecture presets (the shapes of Google's original T5 checkpoints).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shape {
    /// 6+6 layers, d 512, d_kv 64, 8 heads, d_ff 2048, ReLU, vocab 32128 (60M).
    T5Small,
    /// 12+12 layers, d 768, d_kv 64, 12 heads, d_ff 3072, ReLU, vocab 32128 (223M).
    T5Base,
    /// T5 v1.1 small (and Flan-T5 small): 8+8 layers, d 512, d_kv 64, 6 heads,
    /// d_ff 1024 gated-GELU, untied head, vocab 32128 (77M).
    T5V11Small,
    /// T5-3B: 24+24 layers, d 1024, d_kv 128, 32 heads, d_ff 16384, ReLU (2.9B).
    T5_3B,
    /// T5-11B: 24+24 layers, d 1024, d_kv 128, 128 heads, d_ff 65536, ReLU (11.3B).
    T5_11B,
    /// SmolLM2-135M: 30 layers, d 576, 9:3 heads of 64, SwiGLU 1536, tied, vocab 49152.
    SmolLm2_135M,
    /// TinyLlama-1.1B: 22 layers, d 2048, 32:4 heads of 64, SwiGLU 5632, vocab 32000.
    TinyLlama1B,
    /// Llama-2-7B: 32 layers, d 4096, 32:32 heads of 128, SwiGLU 11008, vocab 32000.
    Llama2_7B,
}

/// Every shape's name, in the order `--help` lists them.
const SHAPE_NAMES: [(&str, Shape); 8] = [
    ("t5-small", Shape::T5Small),
    ("t5-base", Shape::T5Base),
    ("t5-v1_1-small", Shape::T5V11Small),
    ("t5-3b", Shape::T5_3B),
    ("t5-11b", Shape::T5_11B),
    ("smollm2-135m", Shape::SmolLm2_135M),
    ("tinyllama-1.1b", Shape::TinyLlama1B),
    ("llama2-7b", Shape::Llama2_7B),
];

impl Shape {
    pub fn parse(s: &str) -> Result<Self> {
        SHAPE_NAMES
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, shape)| *shape)
            .ok_or_else(|| {
                let names: Vec<&str> = SHAPE_NAMES.iter().map(|(n, _)| *n).collect();
                Error::invalid(format!(
                    "unknown shape `{s}`: expected one of {}",
                    names.join(", ")
                ))
            })
    }

    pub fn name(self) -> &'static str {
        SHAPE_NAMES
            .iter()
            .find(|(_, shape)| *shape == self)
            .map(|(n, _)| *n)
            .expect("every shape is named")
    }

    /// The decoder config of a decoder shape, as the checkpoint's `config.json` says it.
    pub fn decoder_config(self) -> Option<LlamaConfig> {
        let (d, ffn, layers, heads, kv, vocab, theta, tied, bos, eos) = match self {
            Shape::SmolLm2_135M => (576, 1536, 30, 9, 3, 49152, 1e5, true, 0, 0),
            Shape::TinyLlama1B => (2048, 5632, 22, 32, 4, 32000, 1e4, false, 1, 2),
            Shape::Llama2_7B => (4096, 11008, 32, 32, 32, 32000, 1e4, false, 1, 2),
            _ => return None,
        };
        let json = serde_json::json!({
            "model_type": "llama", "hidden_size": d, "intermediate_size": ffn,
            "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv, "vocab_size": vocab, "rope_theta": theta,
            "tie_word_embeddings": tied, "rms_norm_eps": 1e-5,
            "bos_token_id": bos, "eos_token_id": eos, "max_position_embeddings": 2048,
        });
        let config = LlamaConfig::from_value(&json, std::path::Path::new("<bench shape>"))
            .expect("the bench shapes are valid configs");
        Some(config)
    }

    /// The T5 config of a T5 shape (v1.0: ReLU, tied head, rescaled decoder
    /// output; v1.1: gated-GELU, untied head); an error for a decoder shape.
    pub fn t5_config(self) -> Result<T5Config> {
        let (layers, d, heads, d_ff, d_kv) = match self {
            Shape::T5Small => (6, 512, 8, 2048, 64),
            Shape::T5Base => (12, 768, 12, 3072, 64),
            Shape::T5V11Small => (8, 512, 6, 1024, 64),
            Shape::T5_3B => (24, 1024, 32, 16384, 128),
            Shape::T5_11B => (24, 1024, 128, 65536, 128),
            other => {
                return Err(Error::invalid(format!(
                    "bench: `{}` is a decoder shape; this benchmark runs T5 shapes only",
                    other.name()
                )));
            }
        };
        let v11 = self == Shape::T5V11Small;
        Ok(T5Config {
            model_type: Some("t5".into()),
            vocab_size: 32128,
            d_model: d,
            d_kv,
            d_ff,
            num_layers: layers,
            num_decoder_layers: Some(layers),
            num_heads: heads,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: if v11 { "gated-gelu" } else { "relu" }.into(),
            tie_word_embeddings: !v11,
            scale_decoder_outputs: None,
            pad_token_id: Some(0),
            eos_token_id: 1,
            decoder_start_token_id: Some(0),
            dense_act_fn: None,
            is_gated_act: None,
            torch_dtype: Some("float32".into()),
        })
    }

    /// Default (batch, input length): 16×128 for the small T5 shapes, 8×256
    /// for T5-base; 8×128, 4×128 and 2×128 for the three decoders.
    pub fn default_batch_len(self) -> (usize, usize) {
        match self {
            Shape::T5Small | Shape::T5V11Small => (16, 128),
            Shape::T5Base => (8, 256),
            Shape::T5_3B | Shape::T5_11B => (1, 64),
            Shape::SmolLm2_135M => (8, 128),
            Shape::TinyLlama1B => (4, 128),
            Shape::Llama2_7B => (2, 128),
        }
    }

    /// A model of this shape with random weights, its dense layers in 4 bits
    /// when `quantize` is set.
    fn build(
        self,
        seed: u64,
        dtype: FloatType,
        quantize: Option<QuantType>,
        device: &burn::tensor::Device,
    ) -> Result<Box<dyn FrozenModel>> {
        Ok(match (self.decoder_config(), quantize) {
            (Some(c), None) => Box::new(Llama::random(c, seed, dtype, device)),
            (Some(c), Some(q)) => Box::new(Llama::random_quantized(c, seed, dtype, q, device)),
            (None, None) => Box::new(T5::random(self.t5_config()?, seed, dtype, device)),
            (None, Some(q)) => Box::new(T5::random_quantized(
                self.t5_config()?,
                seed,
                dtype,
                q,
                device,
            )),
        })
    }

    /// Random examples of this shape's vocabulary (see [`random_examples`]).
    fn examples(self, batch: usize, len: usize, rng: &mut Rng) -> Result<Vec<TokenizedExample>> {
        Ok(match self.decoder_config() {
            Some(c) => {
                let bos = c.raw.bos_token_id.as_ref().map_or(1, |b| b.all()[0]);
                let vocab = c.raw.vocab_size;
                random_decoder_examples(batch, len, vocab, bos, c.eos_ids()[0], rng)
            }
            None => random_examples(batch, len, &self.t5_config()?, rng),
        })
    }
}

/// What is trained in the benchmarked step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchMethod {
    /// No prompt: the gradient is taken with respect to the input embeddings
    /// (the same backward pass through the whole frozen model, no prompt rows).
    None,
    /// Prompt tuning: l rows prepended.
    Pt,
    /// EPT: s rows, rank-r A·B (m = input length), cross-attention fusion, experts.
    Ept,
}

impl BenchMethod {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(BenchMethod::None),
            "pt" => Ok(BenchMethod::Pt),
            "ept" => Ok(BenchMethod::Ept),
            other => Err(Error::invalid(format!(
                "unknown bench method `{other}`: expected pt, ept or none"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BenchMethod::None => "none",
            BenchMethod::Pt => "pt",
            BenchMethod::Ept => "ept",
        }
    }
}

/// A device as burn names it, e.g. `Device<Autodiff(Cuda(CudaDevice { index: 0 }))>`.
fn debug_name<S: serde::Serializer>(d: &Device, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{d:?}"))
}

/// One benchmark workload.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchSettings {
    pub shape: Shape,
    pub batch: usize,
    /// Input length in tokens (`</s>` included); also m, the rows of A·B.
    pub len: usize,
    pub method: BenchMethod,
    /// PT's prompt length, and EPT's budget l.
    pub l: usize,
    /// EPT's short prompt length.
    pub s: usize,
    /// EPT's rank.
    pub r: usize,
    pub num_experts: usize,
    pub steps: usize,
    pub warmup: usize,
    pub seed: u64,
    pub dtype: FloatType,
    /// Dense layers in 4 bits (`--quantize`), quantized as they are drawn.
    pub quantize: Option<QuantType>,
    /// Where the step runs (autodiff on): the CPU unless `ept bench --device` says otherwise.
    #[serde(serialize_with = "debug_name")]
    pub device: Device,
}

impl BenchSettings {
    /// The paper's settings (PT l = 100; EPT s = 60, r = 30, 4 experts) at the shape's default size.
    pub fn new(shape: Shape, method: BenchMethod) -> Self {
        let (batch, len) = shape.default_batch_len();
        BenchSettings {
            shape,
            batch,
            len,
            method,
            l: 100,
            s: 60,
            r: 30,
            num_experts: 4,
            steps: 5,
            warmup: 2,
            seed: 0,
            dtype: FloatType::F32,
            quantize: None,
            device: crate::runtime::cpu_device(true),
        }
    }

    /// The prompt settings of this workload (`None` for [`BenchMethod::None`]).
    pub fn prompt_config(&self) -> Option<PromptConfig> {
        let mut cfg = match self.method {
            BenchMethod::None => return None,
            BenchMethod::Pt => PromptConfig::new(Method::Pt),
            BenchMethod::Ept => {
                let mut c = PromptConfig::new(Method::Ept);
                c.s = Some(self.s);
                c.r = Some(self.r);
                c.num_experts = self.num_experts;
                c
            }
        };
        cfg.l = self.l;
        cfg.m = self.len;
        cfg.seed = self.seed;
        Some(cfg)
    }
}

/// Bytes in a MiB.
const MIB: f64 = 1024.0 * 1024.0;

/// Timings and memory of one workload. Times in seconds, memory in MiB.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchReport {
    pub implementation: &'static str,
    pub settings: BenchSettings,
    /// Rows prepended to the encoder input (l for PT, s for EPT, 0 without prompt).
    pub prompt_rows: usize,
    /// Encoder sequence length: `prompt_rows + len`.
    pub encoder_len: usize,
    /// Target tokens per batch (what the loss is averaged over).
    pub target_tokens: usize,
    pub frozen_params: usize,
    /// Where the frozen weights' memory goes (4-bit layers and the rest).
    pub weights: crate::model::params::WeightMemory,
    /// Every trainable number, auxiliary networks included.
    pub trainable_params: usize,
    /// Worker threads asked for (RAYON_NUM_THREADS, else the number of CPUs).
    pub threads: usize,
    /// Threads the process actually had after the last step (`Threads:` of
    /// /proc/self/status): 1 means the backend ran single-threaded, whatever
    /// `threads` says (burn-flex is multi-threaded only with its `rayon` feature).
    pub process_threads: usize,
    /// The allocator setting in force (see [`crate::runtime::tune_allocator`]).
    pub allocator: String,
    /// "fused" or "plain": whether the fused CPU kernels were on ([`crate::kernels`]).
    pub kernels: String,
    /// In bf16-mixed precision, the dense layers' path: "amx", "avx512bf16"
    /// or "portable" ([`crate::kernels::amx::kernel`]); empty otherwise.
    pub bf16_kernel: String,
    /// Every measured step, in order (warm-up excluded).
    pub step_s: Vec<f64>,
    pub median_s: f64,
    pub min_s: f64,
    pub mean_s: f64,
    /// Median of the forward part (prompt, encoder, decoder, loss).
    pub forward_median_s: f64,
    /// Median of the backward part (backward pass and reading the gradients).
    pub backward_median_s: f64,
    /// Input tokens (`batch × len`, prompt rows not counted) per second at the median step.
    pub tokens_per_s: f64,
    /// Resident memory before the model was built (VmRSS).
    pub start_rss_mib: f64,
    /// Process peak resident memory (VmHWM) once model, prompt and batch existed.
    pub setup_peak_rss_mib: f64,
    /// Process peak resident memory (VmHWM) at the end: the whole run's peak.
    pub peak_rss_mib: f64,
    /// What `ept inspect` estimates for this step ([`crate::model::memory`]),
    /// in bytes; the activations compare with `peak_rss_mib - setup_peak_rss_mib`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimated_step: Option<crate::model::memory::StepMemory>,
    /// Loss and gradient norm of the last step (sanity: both finite, norm > 0).
    pub loss: f64,
    pub grad_norm: f64,
}

/// A numeric field of `/proc/self/status` (e.g. `Threads:`).
fn proc_status(field: &str) -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A memory field of `/proc/self/status` (KiB there) in MiB; `VmHWM:` is the process's peak resident set.
pub fn proc_status_mib(field: &str) -> Option<f64> {
    proc_status(field).map(|kib| kib / 1024.0)
}

/// Worker threads the CPU backend uses: `RAYON_NUM_THREADS`, else the CPU count.
pub fn worker_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

/// Random inputs of exactly `len` tokens (`</s>` last) and targets of 2–4 tokens (`</s>` last).
pub fn random_examples(
    batch: usize,
    len: usize,
    cfg: &T5Config,
    rng: &mut Rng,
) -> Vec<TokenizedExample> {
    let eos = cfg.eos_token_id;
    // Ordinary pieces: not pad (0), eos (1) or unk (2).
    let piece = |rng: &mut Rng| 3 + rng.below(cfg.vocab_size.min(32000) as u64 - 3) as u32;
    (0..batch)
        .map(|_| {
            let mut input_ids: Vec<u32> = (0..len.saturating_sub(1)).map(|_| piece(rng)).collect();
            input_ids.push(eos);
            let n = 2 + rng.below(3) as usize;
            let mut label_ids: Vec<u32> = (0..n - 1).map(|_| piece(rng)).collect();
            label_ids.push(eos);
            TokenizedExample {
                input_ids,
                label_ids,
            }
        })
        .collect()
}

/// A decoder's random examples: BOS then `len − 1` random pieces, targets of
/// 2–4 tokens (EOS last).
pub fn random_decoder_examples(
    batch: usize,
    len: usize,
    vocab: usize,
    bos: u32,
    eos: u32,
    rng: &mut Rng,
) -> Vec<TokenizedExample> {
    let piece = |rng: &mut Rng| 3 + rng.below(vocab.min(32000) as u64 - 3) as u32;
    (0..batch)
        .map(|_| {
            let mut input_ids = vec![bos];
            input_ids.extend((1..len).map(|_| piece(rng)));
            let n = 2 + rng.below(3) as usize;
            let mut label_ids: Vec<u32> = (0..n - 1).map(|_| piece(rng)).collect();
            label_ids.push(eos);
            TokenizedExample {
                input_ids,
                label_ids,
            }
        })
        .collect()
}

/// A tokenizer that is never used: [`build_prompt`] takes one, but the
/// vocabulary-sampled initialisation reads only the embedding.
fn placeholder_tokenizer(eos: u32) -> Result<TextTokenizer> {
    let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
"normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,
"model":{"type":"WordLevel","vocab":{"<pad>":0,"</s>":1,"<unk>":2},"unk_token":"<unk>"}}"#;
    let path =
        std::env::temp_dir().join(format!("ept-bench-tokenizer-{}.json", std::process::id()));
    std::fs::write(&path, json).map_err(|e| Error::io(&path, e))?;
    let tok = TextTokenizer::from_file(&path, eos);
    let _ = std::fs::remove_file(&path);
    tok
}

/// What the step differentiates, and through which model.
enum Workload {
    Prompt {
        model: Box<dyn FrozenModel>,
        prompt: Box<SoftPrompt>,
    },
    /// No prompt (T5 shapes): the input embeddings.
    Inputs {
        model: Box<T5>,
        batch: Box<Seq2SeqBatch>,
    },
}

struct StepResult {
    forward_s: f64,
    backward_s: f64,
    loss: f64,
    grad_norm: f64,
}

fn squared_norm<const D: usize>(t: Option<Tensor<D>>) -> f64 {
    t.map(|g| {
        crate::tensors::to_f32_vec(g)
            .iter()
            .map(|&x| (x as f64) * (x as f64))
            .sum()
    })
    .unwrap_or(0.0)
}

fn step(workload: &Workload, examples: &[TokenizedExample]) -> StepResult {
    let n_tokens = examples.iter().map(|e| e.label_ids.len()).sum::<usize>() as f64;
    let start = Instant::now();
    let (loss, wrt) = match workload {
        Workload::Prompt { model, prompt } => {
            let loss =
                batch_loss_sums(model.as_ref(), prompt.as_ref(), examples, 0).sum() / n_tokens;
            (loss, None)
        }
        Workload::Inputs { model, batch } => {
            let embeds = model.embed(batch.input_ids.clone()).detach().require_grad();
            let enc = model.encode_embeds(embeds.clone(), &batch.attention_mask);
            let logits = model.decode(batch.decoder_input_ids.clone(), enc, &batch.attention_mask);
            let loss = token_loss_sums(logits, batch.labels.clone(), batch.label_mask.clone())
                .sum()
                / n_tokens;
            (loss, Some(embeds))
        }
    };
    let loss_value = crate::tensors::to_f32_vec(loss.clone())[0] as f64;
    let forward_s = start.elapsed().as_secs_f64();
    let grads = loss.backward();
    let grad_norm = match (workload, wrt) {
        (Workload::Prompt { prompt, .. }, _) => prompt
            .params()
            .iter()
            .map(|(_, _, t)| squared_norm(t.grad(&grads)))
            .sum::<f64>(),
        (_, Some(embeds)) => squared_norm(embeds.grad(&grads)),
        (_, None) => f64::NAN,
    }
    .sqrt();
    StepResult {
        forward_s,
        backward_s: start.elapsed().as_secs_f64() - forward_s,
        loss: loss_value,
        grad_norm,
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Runs `warmup` unmeasured steps then `steps` measured ones. `allocator`
/// describes the allocator setting in force, for the report.
pub fn run(settings: &BenchSettings, allocator: &str) -> Result<BenchReport> {
    if settings.batch == 0 || settings.len == 0 || settings.steps == 0 {
        return Err(Error::invalid(
            "bench: batch, len and steps must be positive",
        ));
    }
    let start_rss_mib = proc_status_mib("VmRSS:").unwrap_or(f64::NAN);
    let device = settings.device.clone();
    let shape = settings.shape;
    let mut rng = Rng::new(settings.seed ^ 0x5EED_BA7C);
    let (workload, prompt_rows, trainable_params) = match settings.prompt_config() {
        Some(pc) => {
            let model = shape.build(settings.seed, settings.dtype, settings.quantize, &device)?;
            let tok = placeholder_tokenizer(0)?;
            let prompt = build_prompt(&pc, model.as_ref(), &tok)?.to_device(&device, true);
            let rows = prompt.len();
            let params = prompt
                .params()
                .iter()
                .map(|(_, _, t)| t.dims().iter().product::<usize>())
                .sum();
            let prompt = Box::new(prompt);
            (Workload::Prompt { model, prompt }, rows, params)
        }
        None => {
            let config = shape.t5_config().map_err(|_| {
                Error::invalid("bench --method none: T5 shapes only (a decoder needs pt or ept)")
            })?;
            if settings.quantize.is_some() {
                return Err(Error::invalid(
                    "bench --method none: --quantize needs pt or ept",
                ));
            }
            let model = Box::new(T5::random(
                config.clone(),
                settings.seed,
                settings.dtype,
                &device,
            ));
            let examples = random_examples(settings.batch, settings.len, &config, &mut rng.clone());
            let (pad, start) = (config.pad_id(), config.decoder_start_id());
            let batch = Box::new(Seq2SeqBatch::new(&examples, pad, start, &device));
            (Workload::Inputs { model, batch }, 0, 0)
        }
    };
    let examples = shape.examples(settings.batch, settings.len, &mut rng)?;
    let (frozen_params, weights) = match &workload {
        Workload::Prompt { model, .. } => (model.num_parameters(), model.weight_memory()),
        Workload::Inputs { model, .. } => (model.num_parameters(), model.weight_memory()),
    };
    let estimated_step = match &workload {
        Workload::Prompt { model, .. } => {
            let shape = crate::model::memory::StepShape {
                batch: settings.batch,
                prompt_len: prompt_rows,
                source_len: settings.len,
                target_len: examples
                    .iter()
                    .map(|e| e.label_ids.len())
                    .max()
                    .unwrap_or(0),
            };
            Some(model.step_memory(&shape, trainable_params))
        }
        Workload::Inputs { .. } => None,
    };
    let setup_peak_rss_mib = proc_status_mib("VmHWM:").unwrap_or(f64::NAN);

    for _ in 0..settings.warmup {
        step(&workload, &examples);
    }
    let mut step_s = Vec::with_capacity(settings.steps);
    let mut forward = Vec::with_capacity(settings.steps);
    let mut backward = Vec::with_capacity(settings.steps);
    let mut last = None;
    for _ in 0..settings.steps {
        let r = step(&workload, &examples);
        step_s.push(r.forward_s + r.backward_s);
        forward.push(r.forward_s);
        backward.push(r.backward_s);
        last = Some(r);
    }
    let last = last.expect("at least one step");
    let median_s = median(&step_s);
    Ok(BenchReport {
        implementation: "ept (burn-flex)",
        settings: settings.clone(),
        prompt_rows,
        encoder_len: prompt_rows + settings.len,
        target_tokens: examples.iter().map(|e| e.label_ids.len()).sum(),
        frozen_params,
        weights,
        trainable_params,
        threads: worker_threads(),
        process_threads: proc_status("Threads:").map_or(0, |n| n as usize),
        allocator: allocator.to_string(),
        kernels: crate::kernels::kernels_name().to_string(),
        bf16_kernel: match settings.dtype {
            FloatType::Bf16Mixed => crate::kernels::amx::path_name().to_string(),
            _ => String::new(),
        },
        min_s: step_s.iter().copied().fold(f64::INFINITY, f64::min),
        mean_s: step_s.iter().sum::<f64>() / step_s.len() as f64,
        median_s,
        forward_median_s: median(&forward),
        backward_median_s: median(&backward),
        tokens_per_s: (settings.batch * settings.len) as f64 / median_s,
        step_s,
        start_rss_mib,
        setup_peak_rss_mib,
        peak_rss_mib: proc_status_mib("VmHWM:").unwrap_or(f64::NAN),
        estimated_step,
        loss: last.loss,
        grad_norm: last.grad_norm,
    })
}

impl BenchReport {
    /// A human-readable summary.
    pub fn table(&self) -> String {
        let s = &self.settings;
        let mut out = String::new();
        let mut row = |k: &str, v: String| out.push_str(&format!("{k:<22} {v}\n"));
        row("implementation", self.implementation.into());
        row("shape", s.shape.name().into());
        let method = match s.method {
            BenchMethod::None => "none (gradient w.r.t. input embeddings)".to_string(),
            BenchMethod::Pt => format!("pt (l = {})", s.l),
            BenchMethod::Ept => format!(
                "ept (s = {}, r = {}, m = {}, {} experts, cross-attention fusion)",
                s.s, s.r, s.len, s.num_experts
            ),
        };
        row("method", method);
        row(
            "batch × len",
            format!(
                "{} × {} (+{} prompt rows = {} encoder positions; {} target tokens)",
                s.batch, s.len, self.prompt_rows, self.encoder_len, self.target_tokens
            ),
        );
        row("dtype", s.dtype.name().to_string());
        let w = &self.weights;
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        if let Some(q) = &w.quantization {
            row(
                "weights",
                format!(
                    "{q}: {} parameters at {:.4} bytes ({:.0} MiB); {} others {:.0} MiB",
                    w.quantized_parameters,
                    w.quantized_bytes_per_parameter(),
                    mib(w.quantized_bytes),
                    w.other_parameters,
                    mib(w.other_bytes)
                ),
            );
        } else {
            row("weights", format!("{:.0} MiB", mib(w.other_bytes)));
        }
        row("device", format!("{:?}", s.device));
        row(
            "parameters",
            format!(
                "{} frozen, {} trainable",
                self.frozen_params, self.trainable_params
            ),
        );
        row(
            "threads",
            format!(
                "{} asked, {} in the process after the run",
                self.threads, self.process_threads
            ),
        );
        row("allocator", self.allocator.clone());
        row("kernels", self.kernels.clone());
        if !self.bf16_kernel.is_empty() {
            row("bf16 products", self.bf16_kernel.clone());
        }
        row(
            "steps",
            format!("{} measured after {} warm-up", s.steps, s.warmup),
        );
        row(
            "step time",
            format!(
                "median {:.3} s, min {:.3} s, mean {:.3} s",
                self.median_s, self.min_s, self.mean_s
            ),
        );
        row(
            "  forward / backward",
            format!(
                "{:.3} s / {:.3} s (medians)",
                self.forward_median_s, self.backward_median_s
            ),
        );
        row(
            "tokens/s",
            format!("{:.1} (input tokens)", self.tokens_per_s),
        );
        row(
            "peak RSS (VmHWM)",
            format!(
                "{:.0} MiB (process peak; {:.0} MiB after set-up, {:.0} MiB at start)",
                self.peak_rss_mib, self.setup_peak_rss_mib, self.start_rss_mib
            ),
        );
        if let Some(e) = &self.estimated_step {
            row(
                "step memory",
                format!(
                    "{:.0} MiB measured above set-up; estimated {:.0} MiB activations (ept inspect)",
                    self.peak_rss_mib - self.setup_peak_rss_mib,
                    e.activations as f64 / MIB
                ),
            );
        }
        row(
            "last step",
            format!(
                "loss {:.4}, gradient norm {:.3e}",
                self.loss, self.grad_norm
            ),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_inputs_have_the_asked_shapes() {
        let cfg = Shape::T5Small.t5_config().unwrap();
        assert_eq!(
            (cfg.num_layers, cfg.decoder_layers(), cfg.inner_dim()),
            (6, 6, 512)
        );
        let cfg = Shape::T5V11Small.t5_config().unwrap();
        assert_eq!(
            (cfg.num_layers, cfg.inner_dim(), cfg.tie_word_embeddings),
            (8, 384, false)
        );
        assert!(
            cfg.feed_forward(std::path::Path::new("config.json"))
                .unwrap()
                .gated
        );
        let cfg = Shape::T5Base.t5_config().unwrap();
        assert_eq!(
            (cfg.num_layers, cfg.d_model, cfg.inner_dim()),
            (12, 768, 768)
        );
        let mut rng = Rng::new(1);
        let ex = random_examples(5, 7, &cfg, &mut rng);
        for e in &ex {
            assert_eq!(e.input_ids.len(), 7);
            assert_eq!(*e.input_ids.last().unwrap(), 1);
            assert!((2..=4).contains(&e.label_ids.len()));
            assert!(e.input_ids[..6].iter().all(|&i| i >= 3));
        }
        // Decoder shapes: the checkpoints' configs, BOS first, EOS last.
        let c = Shape::SmolLm2_135M.decoder_config().unwrap();
        assert_eq!(
            (
                c.num_heads(),
                c.num_kv_heads,
                c.head_dim,
                c.raw.num_hidden_layers
            ),
            (9, 3, 64, 30)
        );
        let c = Shape::Llama2_7B.decoder_config().unwrap();
        assert_eq!(
            (c.hidden_size(), c.num_kv_heads, c.head_dim),
            (4096, 32, 128)
        );
        assert!(Shape::TinyLlama1B.t5_config().is_err());
        let ex = Shape::TinyLlama1B.examples(3, 9, &mut rng).unwrap();
        for e in &ex {
            assert_eq!((e.input_ids.len(), e.input_ids[0]), (9, 1));
            assert_eq!(*e.label_ids.last().unwrap(), 2);
        }
        for (name, shape) in SHAPE_NAMES {
            assert_eq!(Shape::parse(name).unwrap(), shape);
            assert_eq!(shape.name(), name);
        }
        let ept = BenchSettings::new(Shape::T5Small, BenchMethod::Ept);
        let b = ept.prompt_config().unwrap().budget(512).unwrap();
        assert_eq!((b.s, b.r, b.m), (60, 30, 128));
        assert_eq!(median(&[3.0, 1.0, 2.0, 10.0]), 2.5);
    }
}
