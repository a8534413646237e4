//! `ept pretrain`: the model organisms — a small T5 ([`T5Shape`], the
//! default) or a small Llama ([`LlamaShape`], `--arch llama`) trained from
//! scratch, every weight trainable, on the synthetic language (`crate::organism`).
//!
//! The recipe is the architecture's own objective on a generated corpus —
//! T5's span corruption (15% noise, mean span 3, one sentinel per span), or a
//! decoder's next-token prediction over whole documents — with supervised
//! tasks mixed in as T5 itself did. The mixed-in tasks (`aux-subject`,
//! `aux-negation`, `aux-pole`, `aux-truth`) are *not* the toy tasks prompt
//! tuning is evaluated on (`toy-sst2`, `toy-mnli`, …), so what a prompt
//! achieves on those is the prompt's doing. Everything is seeded: the corpus,
//! the tokenizer's training text, the weights' initialisation, the mixture
//! and the noise masks, so the same command writes the same model.
//!
//! The same [`T5`](crate::model::T5) and [`Llama`](crate::model::Llama) code
//! serves here and in frozen prompt tuning: pretraining marks every weight as
//! requiring gradients (their `weights_mut`) and updates them with the
//! project's AdamW after each step. This file is the loop both share;
//! `t5.rs` and `llama.rs` are what differs ([`Architecture`], [`Trainable`]).

mod llama;
mod t5;

use std::collections::{BTreeMap, HashSet};
use std::fmt::Debug;
use std::path::Path;
use std::time::Instant;

use burn::tensor::{Device, Int, Tensor};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::optim::{AdamW, AdamWConfig, GroupSettings, clip_grad_norm};
use super::schedule::Schedule;
use crate::error::{Error, Result, write_atomic};
use crate::model::batch::TokenizedExample;
use crate::model::params::{WeightMut, WeightRef};
use crate::model::t5::token_loss_sums;
use crate::organism::{ToyTask, corpus, generate, span_corrupt};
use crate::prompt::ParamGroup;
use crate::rng::Rng;

pub use self::llama::LlamaShape;
pub use self::t5::T5Shape;

/// Everything that determines an organism; `M` is the architecture's part
/// (its shape and objective settings), written in its place among the
/// others. Saved as `pretrain.json` next to the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PretrainConfig<M = T5Shape> {
    pub seed: u64,
    /// Optimiser steps.
    pub steps: u64,
    /// Sequences per step.
    pub batch_size: usize,
    pub lr: f64,
    pub warmup_steps: u64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    /// Share of each batch drawn from the supervised auxiliary tasks.
    pub supervised_fraction: f64,
    /// Corpus documents (T5's masks are drawn afresh each time a document is used).
    pub documents: usize,
    /// Examples of each auxiliary task.
    pub supervised_examples: usize,
    /// Tokenizer size, special tokens (and T5's sentinels) included.
    pub vocab_size: usize,
    #[serde(flatten)]
    pub model: M,
    /// Held-out documents scored every `eval_every` steps.
    pub eval_documents: usize,
    pub eval_every: u64,
}

impl<M> PretrainConfig<M> {
    /// The recipe both shipped organisms share, around `model`
    /// (docs/ORGANISM.md; each architecture's `Default` is this with its shape).
    pub fn shipped(model: M) -> Self {
        PretrainConfig {
            seed: 0,
            steps: 2000,
            batch_size: 32,
            // 2e-3 trained the T5's span corruption as well but left the
            // mixed-in tasks near chance for 2,000 steps (docs/ORGANISM.md).
            lr: 1e-3,
            warmup_steps: 100,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            supervised_fraction: 0.5,
            documents: 20_000,
            supervised_examples: 5_000,
            vocab_size: 512,
            model,
            eval_documents: 256,
            eval_every: 250,
        }
    }
}

/// One line of `pretrain.jsonl`.
#[derive(Clone, Debug, Serialize)]
pub struct PretrainLog {
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    /// The objective's loss on held-out documents (span corruption, or
    /// next-token prediction), every `eval_every` steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    /// Exact match (teacher-forced argmax, %) of each auxiliary task on
    /// held-out sentences, every `eval_every` steps: whether the organism has
    /// learned what the mixture teaches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_exact_match: Option<BTreeMap<String, f64>>,
}

/// What `ept pretrain` reports and writes into `pretrain.json`.
#[derive(Clone, Debug, Serialize)]
pub struct PretrainResult<M = T5Shape> {
    pub config: PretrainConfig<M>,
    pub parameters: usize,
    pub vocab_size: usize,
    pub first_eval_loss: f64,
    pub final_eval_loss: f64,
    pub final_train_loss: f64,
    /// The auxiliary tasks' held-out exact match (%) at the end.
    pub final_exact_match: BTreeMap<String, f64>,
    pub wall_seconds: f64,
}

/// What an architecture brings to the shared loop: its tokenizer, how text
/// becomes training rows, and its model. Implemented by the shape part of
/// [`PretrainConfig`].
pub trait Architecture: Clone + Debug + PartialEq + Serialize + DeserializeOwned {
    type Model: Trainable;
    /// `--arch`'s name for it.
    const NAME: &'static str;
    /// What the held-out loss measures (for logs).
    const HELD_OUT: &'static str;
    /// Tokens the tokenizer holds besides the trained pieces.
    fn reserved_tokens(&self) -> usize;
    /// Attention heads (the width must be a multiple).
    fn heads(&self) -> usize;
    /// Sets the width, and the feed-forward and head widths with it.
    fn set_width(&mut self, d: usize);
    /// Sets the number of layers (of each stack).
    fn set_layers(&mut self, n: usize);
    /// Trains the tokenizer on `texts`.
    fn tokenizer(&self, texts: &[String], vocab_size: usize) -> Result<tokenizers::Tokenizer>;
    /// How documents and examples become rows, given the trained tokenizer.
    fn objective(&self, tk: &tokenizers::Tokenizer) -> Result<Objective>;
    /// The model, initialised for pretraining from `seed`.
    fn model(&self, tk: &tokenizers::Tokenizer, seed: u64, device: &Device) -> Result<Self::Model>;
}

/// A model every weight of which pretraining updates.
pub trait Trainable: Sized {
    /// The logits that score `rows`' targets, padded as one batch (the graph
    /// kept when the device is autodiff).
    fn scored(&self, rows: &[TokenizedExample]) -> Scored;
    fn weights(&self) -> Vec<(String, WeightRef<'_>)>;
    fn weights_mut(&mut self) -> Vec<(String, WeightMut<'_>)>;
    /// Makes a tied head follow the embedding again.
    fn retie(&mut self);
    fn for_inference(&self) -> Self;
    fn detached(self) -> Self;
    fn save(&self, dir: &Path) -> Result<()>;
    fn vocab_size(&self) -> usize;
}

/// The [`Trainable`] methods that a model has under the same names.
macro_rules! same_named {
    ($model:ty) => {
        fn weights(&self) -> Vec<(String, $crate::model::params::WeightRef<'_>)> {
            <$model>::weights(self)
        }

        fn weights_mut(&mut self) -> Vec<(String, $crate::model::params::WeightMut<'_>)> {
            <$model>::weights_mut(self)
        }

        fn retie(&mut self) {
            <$model>::retie(self)
        }

        fn for_inference(&self) -> Self {
            <$model>::for_inference(self)
        }

        fn detached(self) -> Self {
            <$model>::detached(self)
        }

        fn save(&self, dir: &std::path::Path) -> $crate::Result<()> {
            <$model>::save(self, dir)
        }
    };
}
use same_named;

/// Target logits `[b, k, vocab]`, the target ids `[b, k]` and their mask.
pub struct Scored {
    pub logits: Tensor<3>,
    pub labels: Tensor<2, Int>,
    pub mask: Tensor<2>,
    /// Real target tokens.
    pub tokens: usize,
}

/// How text becomes rows (`input_ids`, `label_ids`: what is scored).
pub enum Objective {
    /// T5: a document span-corrupted into `input </s>` → `sentinels and spans
    /// </s>`; an example is `source </s>` → `target </s>`.
    SpanCorruption {
        /// `<extra_id_0>` first.
        sentinels: Vec<u32>,
        eos: u32,
        noise_density: f64,
        mean_noise_span_length: f64,
    },
    /// A decoder: `<s>` → the whole document and `</s>`; an example is
    /// `<s> source` → `target </s>`, as ept scores decoder examples.
    CausalLm { bos: u32, eos: u32 },
}

impl Objective {
    /// The row of document `ids` (T5: dynamic masking, drawn from `rng`).
    fn document(&self, ids: &[u32], rng: &mut Rng) -> TokenizedExample {
        match self {
            Objective::SpanCorruption {
                sentinels,
                eos,
                noise_density,
                mean_noise_span_length,
            } => {
                let (mut input, mut target) =
                    span_corrupt(ids, sentinels, *noise_density, *mean_noise_span_length, rng);
                input.push(*eos);
                target.push(*eos);
                TokenizedExample {
                    input_ids: input,
                    label_ids: target,
                }
            }
            Objective::CausalLm { bos, eos } => TokenizedExample {
                input_ids: vec![*bos],
                label_ids: [ids, &[*eos]].concat(),
            },
        }
    }

    /// The row of a supervised example: the source through the tokenizer's
    /// post-processor, the target as the model scores it.
    fn example(
        &self,
        tk: &tokenizers::Tokenizer,
        e: &crate::data::Example,
    ) -> Result<TokenizedExample> {
        let label_ids = match self {
            Objective::SpanCorruption { .. } => encode(tk, &e.target, true)?,
            Objective::CausalLm { eos, .. } => [encode(tk, &e.target, false)?, vec![*eos]].concat(),
        };
        Ok(TokenizedExample {
            input_ids: encode(tk, &e.source, true)?,
            label_ids,
        })
    }
}

/// The texts the tokenizer is trained on: the corpus and every toy task's
/// formatted inputs and targets, so that task prefixes and label words are
/// whole pieces too (real T5's tokenizer saw all of C4 the same way).
fn tokenizer_texts(seed: u64, docs: &[String]) -> Vec<String> {
    let mut texts = docs.to_vec();
    for task in ToyTask::ALL {
        for e in generate(task, 500, seed ^ 0x70CE) {
            texts.push(e.source);
            texts.push(e.target);
        }
    }
    texts
}

fn encode(tk: &tokenizers::Tokenizer, text: &str, special: bool) -> Result<Vec<u32>> {
    tk.encode(text, special)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| Error::invalid(format!("organism tokenizer: {e}")))
}

/// The id of `token` in `tk`.
fn token_id(tk: &tokenizers::Tokenizer, token: &str) -> Result<u32> {
    tk.token_to_id(token)
        .ok_or_else(|| Error::invalid(format!("organism tokenizer lacks `{token}`")))
}

/// The auxiliary tasks mixed into pretraining (none is a toy task prompt tuning is scored on).
const AUX_TASKS: [ToyTask; 4] = [
    ToyTask::AuxSubject,
    ToyTask::AuxNegation,
    ToyTask::AuxPole,
    ToyTask::AuxTruth,
];

/// Held-out sentences per auxiliary task for the exact-match evaluation.
const AUX_EVAL_EXAMPLES: usize = 200;

/// The tokenized training material.
struct Material {
    /// Corpus documents, without special tokens.
    docs: Vec<Vec<u32>>,
    /// Supervised examples.
    supervised: Vec<TokenizedExample>,
    /// Held-out examples of each auxiliary task (sources unseen in `supervised`).
    aux_eval: Vec<(ToyTask, Vec<TokenizedExample>)>,
}

/// Mean token loss of `rows` (the graph kept when the device is autodiff).
fn batch_loss(model: &impl Trainable, rows: &[TokenizedExample]) -> (Tensor<1>, usize) {
    let s = model.scored(rows);
    let sums = token_loss_sums(s.logits, s.labels, s.mask);
    (sums.sum() / s.tokens as f64, s.tokens)
}

/// The loss of one step's rows: the supervised rows and the documents are
/// padded as two batches (a supervised example is a few tokens, a document
/// dozens: one padded batch would be mostly padding), and each part's
/// token-mean loss weighs by its share of the rows. Weighing by tokens instead
/// would give a two-token answer a sixth of a document's say, and the
/// mixed-in tasks would barely be trained.
fn mixture_loss(
    model: &impl Trainable,
    supervised: &[TokenizedExample],
    docs: &[TokenizedExample],
) -> Tensor<1> {
    let n = (supervised.len() + docs.len()) as f64;
    [supervised, docs]
        .into_iter()
        .filter(|part| !part.is_empty())
        .map(|part| batch_loss(model, part).0 * (part.len() as f64 / n))
        .reduce(|a, b| a + b)
        .expect("a step has rows")
}

/// Exact match (%) of `rows`: every target token is the argmax given the gold prefix.
fn exact_match(model: &impl Trainable, rows: &[TokenizedExample]) -> f64 {
    let mut hits = 0usize;
    for chunk in rows.chunks(64) {
        let s = model.scored(chunk);
        let t = s.labels.dims()[1];
        let best = crate::tensors::to_i64_vec(s.logits.argmax(2));
        hits += chunk
            .iter()
            .enumerate()
            .filter(|(i, r)| {
                r.label_ids
                    .iter()
                    .enumerate()
                    .all(|(j, &id)| best[i * t + j] == id as i64)
            })
            .count();
    }
    100.0 * hits as f64 / rows.len().max(1) as f64
}

/// Each auxiliary task's held-out exact match; `frozen` is a detached model.
fn aux_exact_match(frozen: &impl Trainable, material: &Material) -> BTreeMap<String, f64> {
    material
        .aux_eval
        .iter()
        .map(|(task, rows)| (task.name().to_string(), exact_match(frozen, rows)))
        .collect()
}

/// Mean token loss on fixed held-out documents; `frozen` is a detached model.
fn eval_loss(frozen: &impl Trainable, rows: &[TokenizedExample]) -> f64 {
    let mut sum = 0.0;
    let mut tokens = 0usize;
    for chunk in rows.chunks(64) {
        let (loss, n) = batch_loss(frozen, chunk);
        sum += crate::tensors::to_f32_vec(loss)[0] as f64 * n as f64;
        tokens += n;
    }
    sum / tokens.max(1) as f64
}

/// Pretrains an organism into `out` (`tokenizer.json`, `config.json`,
/// `model.safetensors`, `pretrain.json`, `pretrain.jsonl`). `device` must be
/// an autodiff device. `on_step` sees every step's log.
pub fn pretrain<A: Architecture>(
    cfg: &PretrainConfig<A>,
    out: &Path,
    device: &Device,
    on_step: &mut dyn FnMut(&PretrainLog),
) -> Result<PretrainResult<A>> {
    if cfg.steps == 0 || cfg.batch_size == 0 || cfg.lr <= 0.0 {
        return Err(Error::invalid(
            "pretrain: steps, batch size and learning rate must be positive",
        ));
    }
    if !(0.0..=1.0).contains(&cfg.supervised_fraction) {
        return Err(Error::invalid(format!(
            "pretrain: supervised fraction {}: expected a share between 0 and 1",
            cfg.supervised_fraction
        )));
    }
    if cfg.vocab_size <= cfg.model.reserved_tokens() {
        return Err(Error::invalid(
            "pretrain: the vocabulary must be larger than the special and sentinel tokens",
        ));
    }
    let started = Instant::now();
    let all_docs = corpus(cfg.documents + cfg.eval_documents, cfg.seed);
    let tk = cfg
        .model
        .tokenizer(&tokenizer_texts(cfg.seed, &all_docs), cfg.vocab_size)?;
    let tk_json = tk
        .to_string(true)
        .map_err(|e| Error::invalid(format!("organism tokenizer: {e}")))?;
    let objective = cfg.model.objective(&tk)?;
    let supervised: Vec<_> = AUX_TASKS
        .into_iter()
        .flat_map(|t| generate(t, cfg.supervised_examples, cfg.seed))
        .collect();
    let seen: HashSet<&str> = supervised.iter().map(|e| e.source.as_str()).collect();
    let material = Material {
        docs: all_docs
            .iter()
            .map(|d| encode(&tk, d, false))
            .collect::<Result<_>>()?,
        supervised: supervised
            .iter()
            .map(|e| objective.example(&tk, e))
            .collect::<Result<_>>()?,
        aux_eval: AUX_TASKS
            .into_iter()
            .map(|t| {
                let rows = generate(t, 4 * AUX_EVAL_EXAMPLES, cfg.seed ^ 0xA0E7)
                    .into_iter()
                    .filter(|e| !seen.contains(e.source.as_str()))
                    .take(AUX_EVAL_EXAMPLES)
                    .map(|e| objective.example(&tk, &e))
                    .collect::<Result<_>>()?;
                Ok((t, rows))
            })
            .collect::<Result<_>>()?,
    };
    let (train_docs, eval_docs) = material.docs.split_at(cfg.documents);
    let mut eval_rng = Rng::new(cfg.seed ^ 0xE7A1);
    let eval_rows: Vec<TokenizedExample> = eval_docs
        .iter()
        .map(|d| objective.document(d, &mut eval_rng))
        .collect();

    let mut model = cfg.model.model(&tk, cfg.seed, device)?;
    for (_, w) in model.weights_mut() {
        w.require_grad();
    }
    model.retie();
    let n_weights = model.weights().len();
    let settings = GroupSettings {
        lr: cfg.lr,
        weight_decay: cfg.weight_decay,
    };
    let groups = vec![(ParamGroup::Auxiliary, settings); n_weights];
    let mut optim = AdamW::new(AdamWConfig::default(), n_weights);
    let mut rng = Rng::new(cfg.seed ^ 0x5EED);
    let first_eval_loss = eval_loss(&model.for_inference(), &eval_rows);
    let mut logs = Vec::with_capacity(cfg.steps as usize);
    let mut final_eval_loss = first_eval_loss;
    for step in 0..cfg.steps {
        let t0 = Instant::now();
        let (mut sup_rows, mut doc_rows) = (Vec::new(), Vec::new());
        for _ in 0..cfg.batch_size {
            if rng.next_f64() < cfg.supervised_fraction {
                let i = rng.below(material.supervised.len() as u64) as usize;
                sup_rows.push(material.supervised[i].clone());
            } else {
                let i = rng.below(train_docs.len() as u64) as usize;
                doc_rows.push(objective.document(&train_docs[i], &mut rng));
            }
        }
        let loss = mixture_loss(&model, &sup_rows, &doc_rows);
        let loss_value = crate::tensors::to_f32_vec(loss.clone())[0] as f64;
        if !loss_value.is_finite() {
            return Err(Error::Numeric(format!(
                "pretrain step {}: the loss is {loss_value}",
                step + 1
            )));
        }
        let grads = loss.backward();
        let weights = model.weights();
        let mut g: Vec<Option<Tensor<2>>> =
            weights.iter().map(|(_, w)| w.grad_2d(&grads)).collect();
        let grad_norm = clip_grad_norm(&mut g, Some(cfg.max_grad_norm));
        let factor = Schedule::Linear.factor(step + 1, cfg.warmup_steps, cfg.steps);
        let current: Vec<Tensor<2>> = weights.iter().map(|(_, w)| w.inner_2d()).collect();
        let updated = optim.step(current, g, &groups, factor);
        for ((_, slot), new) in model.weights_mut().into_iter().zip(updated) {
            slot.set_tracked(new);
        }
        model.retie();
        let tokens: usize = sup_rows
            .iter()
            .chain(&doc_rows)
            .map(|r| r.input_ids.len() + r.label_ids.len())
            .sum();
        // Held-out scores on one copy of the weights off the autodiff device.
        let (eval, exact) = if (step + 1) % cfg.eval_every.max(1) == 0 || step + 1 == cfg.steps {
            let frozen = model.for_inference();
            let e = eval_loss(&frozen, &eval_rows);
            final_eval_loss = e;
            (Some(e), Some(aux_exact_match(&frozen, &material)))
        } else {
            (None, None)
        };
        let log = PretrainLog {
            step: step + 1,
            loss: loss_value,
            lr: cfg.lr * factor,
            grad_norm,
            tokens_per_s: tokens as f64 / t0.elapsed().as_secs_f64().max(1e-9),
            eval_loss: eval,
            eval_exact_match: exact,
        };
        on_step(&log);
        logs.push(log);
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    // Everything is written at the end, each file atomically: a failed run
    // leaves a previous model in `out` whole.
    let model = model.detached();
    write_atomic(out.join("tokenizer.json"), tk_json.as_bytes())?;
    model.save(out)?;
    let mut lines = String::new();
    for l in &logs {
        lines.push_str(&serde_json::to_string(l).expect("logs serialise"));
        lines.push('\n');
    }
    write_atomic(out.join("pretrain.jsonl"), lines.as_bytes())?;
    let result = PretrainResult {
        config: cfg.clone(),
        parameters: model.weights().iter().map(|(_, w)| w.numel()).sum(),
        vocab_size: model.vocab_size(),
        first_eval_loss,
        final_eval_loss,
        final_train_loss: logs.last().map(|l| l.loss).unwrap_or(f64::NAN),
        final_exact_match: logs
            .iter()
            .rev()
            .find_map(|l| l.eval_exact_match.clone())
            .unwrap_or_default(),
        wall_seconds: started.elapsed().as_secs_f64(),
    };
    let text = serde_json::to_string_pretty(&result).expect("results serialise");
    write_atomic(out.join("pretrain.json"), format!("{text}\n").as_bytes())?;
    Ok(result)
}
