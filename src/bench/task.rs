//! Task-level benchmark: one training epoch of a GLUE-shaped workload, as
//! `ept train` runs it (length buckets, each batch padded to its longest
//! input) or as DePT's pipeline runs it (every input padded to 256).
//!
//! Why a second benchmark: the kernel-level step ([`super::run`]) compares
//! equal work. What a user waits for is an epoch, and there the padding
//! policy decides how much work there is: SST-2's inputs are a tenth of the
//! 256 positions DePT pads them to. `scripts/bench_pytorch.py --task-dir`
//! replays the same epoch in PyTorch + PEFT from what [`run`] exports (the
//! random model in Hugging Face's layout, the examples, the initial prompt),
//! so both sides start from identical weights, data and prompt, and the loss
//! at the initial prompt must agree.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::data::batching::{BatchSize, epoch_batches};
use crate::error::{Error, Result};
use crate::evaluate::{batch_loss_sums, corpus_loss};
use crate::model::T5;
use crate::model::batch::TokenizedExample;
use crate::prompt::checkpoint::{self, PromptMeta};
use crate::prompt::{SoftPrompt, build_prompt};
use crate::rng::Rng;
use crate::train::optim::{AdamW, AdamWConfig, GroupSettings};

use super::{BenchSettings, placeholder_tokenizer, proc_status_mib, random_examples};

/// Input-length distributions standing in for GLUE tasks in DePT's
/// text-to-text format (T5 tokens, task prefix and `</s>` included).
///
/// The data sets cannot be downloaded here, so the lengths are drawn from a
/// log-normal whose median, spread and cut-offs follow the real tasks' shape:
/// SST-2's short single sentences (`sst2 sentence: …`, about 20 tokens on
/// average, at most 70) and RTE's sentence pairs (about 85 tokens on average,
/// long tail cut at DePT's 256).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskShape {
    Sst2,
    Rte,
}

impl TaskShape {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "sst2" => Ok(TaskShape::Sst2),
            "rte" => Ok(TaskShape::Rte),
            other => Err(Error::invalid(format!(
                "unknown task shape `{other}`: expected sst2 or rte"
            ))),
        }
    }

    /// (median, standard deviation of the log, shortest, longest).
    fn length_model(self) -> (f64, f64, usize, usize) {
        match self {
            TaskShape::Sst2 => (17.0, 0.5, 6, 70),
            TaskShape::Rte => (75.0, 0.5, 25, 256),
        }
    }

    /// `n` input lengths drawn with `rng`.
    pub fn lengths(self, n: usize, rng: &mut Rng) -> Vec<usize> {
        let (median, sigma, lo, hi) = self.length_model();
        (0..n)
            .map(|_| {
                let l = (median.ln() + sigma * rng.normal()).exp().round() as usize;
                l.clamp(lo, hi)
            })
            .collect()
    }
}

/// One task-level workload.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TaskBenchSettings {
    /// Model shape, method, prompt sizes, batch size and seed (its `len` is m,
    /// the longest input: 256, DePT's `max_source_length`).
    pub step: BenchSettings,
    pub task: TaskShape,
    /// Examples in the epoch.
    pub examples: usize,
    /// Pad every input to this many tokens (DePT's way); 0 pads each batch to
    /// its longest input and groups similar lengths (`ept train`'s way).
    pub pad_to: usize,
    /// Learning rate of the prompt (constant; AdamW as `ept train`).
    pub lr: f64,
    /// Where to write the model, examples and initial prompt for the PyTorch side.
    pub export: Option<PathBuf>,
}

/// What one epoch cost and what it computed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TaskBenchReport {
    pub implementation: &'static str,
    pub settings: TaskBenchSettings,
    pub kernels: String,
    pub batches: usize,
    /// Input positions the encoder saw, padding included (prompt rows excluded).
    pub padded_tokens: usize,
    /// Input tokens without padding.
    pub real_tokens: usize,
    /// Wall time of the epoch: batching, forward, backward, optimiser.
    pub epoch_s: f64,
    pub examples_per_s: f64,
    /// Token-mean loss over every example at the initial prompt (untimed).
    pub initial_loss: f64,
    /// Mean of the batches' losses during the epoch.
    pub epoch_mean_loss: f64,
    pub peak_rss_mib: f64,
}

/// Token-mean loss of all `examples` at `prompt`, in batches of `batch`, on
/// copies off the autodiff device (see `FrozenModel::for_inference`).
fn mean_loss(model: &T5, prompt: &SoftPrompt, examples: &[TokenizedExample], batch: usize) -> f64 {
    let model = model.for_inference();
    let prompt = prompt.clone().to_device(model.device(), false);
    corpus_loss(&model, &prompt, examples, batch).loss
}

/// Writes what `scripts/bench_pytorch.py --task-dir` needs to replay the
/// epoch and the evaluation: the model, the initial prompt, the examples and
/// the rank-classification options.
fn export(dir: &Path, w: &Workload, s: &TaskBenchSettings) -> Result<()> {
    w.model.save(&dir.join("model"))?;
    let meta = PromptMeta {
        method: s.step.method.name().to_string(),
        materialized: false,
        model: "random".into(),
        d_model: w.model.d_model(),
        l: s.step.l,
    };
    checkpoint::save(&dir.join("prompt.safetensors"), &w.prompt, &meta)?;
    let json = serde_json::json!({
        "settings": s,
        "examples": w.examples.iter().map(|e| serde_json::json!({
            "input_ids": e.input_ids, "label_ids": e.label_ids
        })).collect::<Vec<_>>(),
        "options": w.options(s.step.seed),
    });
    crate::error::write_atomic(dir.join("workload.json"), json.to_string().as_bytes())
}

/// What both the training and the evaluation benchmark start from: the
/// random model, the initial prompt and the examples, all from the seed.
pub(super) struct Workload {
    pub model: T5,
    pub prompt: SoftPrompt,
    pub examples: Vec<TokenizedExample>,
    pub lengths: Vec<usize>,
    /// The random stream after drawing the examples (the epoch's order).
    pub rng: Rng,
}

impl Workload {
    /// Builds the workload of `s`, and exports it where `s.export` says.
    pub fn new(s: &TaskBenchSettings) -> Result<Self> {
        let st = &s.step;
        if s.examples == 0 || st.batch == 0 {
            return Err(Error::invalid("bench: examples and batch must be positive"));
        }
        let pc = st
            .prompt_config()
            .ok_or_else(|| Error::invalid("bench --task: needs --method pt or ept"))?;
        let device = st.device.clone();
        let config = st.shape.t5_config()?;
        let model = T5::random(config.clone(), st.seed, st.dtype, &device);
        let tok = placeholder_tokenizer(config.eos_token_id)?;
        let prompt = build_prompt(&pc, &model, &tok)?.to_device(&device, true);

        // Examples: random ids, lengths from the task's distribution.
        let mut rng = Rng::new(st.seed ^ 0x7A5C_BE4C);
        let lengths = s.task.lengths(s.examples, &mut rng);
        let examples: Vec<TokenizedExample> = lengths
            .iter()
            .map(|&len| random_examples(1, len, &config, &mut rng).remove(0))
            .collect();
        let w = Workload {
            model,
            prompt,
            examples,
            lengths,
            rng,
        };
        if let Some(dir) = &s.export {
            export(dir, &w, s)?;
        }
        Ok(w)
    }

    /// The label strings rank classification chooses between: two (SST-2's
    /// "0"/"1", RTE's two classes), one random piece and `</s>` each, drawn
    /// from their own stream so they do not move the examples.
    pub fn options(&self, seed: u64) -> Vec<Vec<u32>> {
        let mut rng = Rng::new(seed ^ 0x0F71_0A5E);
        random_examples(2, 2, &self.model.config, &mut rng)
            .into_iter()
            .map(|e| e.input_ids)
            .collect()
    }
}

/// Runs one epoch and reports it (see the module docs).
pub fn run(s: &TaskBenchSettings) -> Result<TaskBenchReport> {
    let st = &s.step;
    let Workload {
        model,
        mut prompt,
        examples,
        lengths,
        mut rng,
    } = Workload::new(s)?;
    let initial_loss = mean_loss(&model, &prompt, &examples, st.batch);

    let groups: Vec<_> = prompt
        .params()
        .iter()
        .map(|(_, g, _)| {
            (
                *g,
                GroupSettings {
                    lr: s.lr,
                    weight_decay: 0.0,
                },
            )
        })
        .collect();
    let mut optim = AdamW::new(AdamWConfig::default(), groups.len());
    let t0 = Instant::now();
    let order = if s.pad_to > 0 {
        // DePT: a random order, every input padded to the same length.
        let mut idx: Vec<usize> = (0..examples.len()).collect();
        rng.shuffle(&mut idx);
        idx.chunks(st.batch).map(|c| c.to_vec()).collect()
    } else {
        epoch_batches(&lengths, BatchSize::Examples(st.batch), true, &mut rng)
    };
    let (mut padded_tokens, mut loss_sum) = (0usize, 0.0);
    for idx in &order {
        let rows: Vec<TokenizedExample> = idx.iter().map(|&i| examples[i].clone()).collect();
        let longest = rows.iter().map(|r| r.input_ids.len()).max().unwrap_or(0);
        padded_tokens += longest.max(s.pad_to).max(1) * rows.len();
        let n_tokens: usize = rows.iter().map(|r| r.label_ids.len()).sum();
        let loss = batch_loss_sums(&model, &prompt, &rows, s.pad_to).sum() / n_tokens as f64;
        loss_sum += crate::tensors::to_f32_vec(loss.clone())[0] as f64;
        let grads = loss.backward();
        let g = prompt
            .params()
            .iter()
            .map(|(_, _, t)| t.grad(&grads))
            .collect();
        optim.step_prompt(&mut prompt, g, &groups, 1.0);
    }
    let epoch_s = t0.elapsed().as_secs_f64();
    Ok(TaskBenchReport {
        implementation: "ept (burn-flex)",
        settings: s.clone(),
        kernels: crate::kernels::kernels_name().to_string(),
        batches: order.len(),
        padded_tokens,
        real_tokens: lengths.iter().sum(),
        epoch_s,
        examples_per_s: s.examples as f64 / epoch_s,
        initial_loss,
        epoch_mean_loss: loss_sum / order.len() as f64,
        peak_rss_mib: proc_status_mib("VmHWM:").unwrap_or(f64::NAN),
    })
}

impl TaskBenchReport {
    /// A human-readable summary.
    pub fn table(&self) -> String {
        let s = &self.settings;
        let padding = if s.pad_to > 0 {
            format!("every input padded to {}", s.pad_to)
        } else {
            "length buckets, each batch padded to its longest".to_string()
        };
        format!(
            "task                   {:?}-shaped, {} examples, batches of {} ({})\n\
             model                  {} random weights, {} (kernels {})\n\
             epoch                  {:.2} s, {} batches, {:.1} examples/s\n\
             input positions        {} padded, {} real ({:.0} % padding)\n\
             loss                   {:.4} at the initial prompt, {:.4} mean over the epoch\n\
             peak RSS (VmHWM)       {:.0} MiB\n",
            s.task,
            s.examples,
            s.step.batch,
            padding,
            s.step.shape.name(),
            s.step.method.name(),
            self.kernels,
            self.epoch_s,
            self.batches,
            self.examples_per_s,
            self.padded_tokens,
            self.real_tokens,
            100.0 * (1.0 - self.real_tokens as f64 / self.padded_tokens as f64),
            self.initial_loss,
            self.epoch_mean_loss,
            self.peak_rss_mib,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_lengths_follow_their_shape() {
        let mut rng = Rng::new(0);
        let sst2 = TaskShape::Sst2.lengths(4000, &mut rng);
        let rte = TaskShape::Rte.lengths(4000, &mut rng);
        let mean = |v: &[usize]| v.iter().sum::<usize>() as f64 / v.len() as f64;
        assert!((17.0..23.0).contains(&mean(&sst2)), "{}", mean(&sst2));
        assert!((75.0..95.0).contains(&mean(&rte)), "{}", mean(&rte));
        assert!(sst2.iter().all(|l| (6..=70).contains(l)));
        assert!(rte.iter().all(|l| (25..=256).contains(l)));
        assert!(TaskShape::parse("cola").is_err());
    }
}
