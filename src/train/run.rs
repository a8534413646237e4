//! The training loop: batches, AdamW groups, schedule, clipping, periodic
//! validation with the task's selection metric, best and last checkpoints.
//!
//! Only the prompt's tensors are tracked by autodiff; the backbone's weights
//! are plain tensors, so no weight gradient is ever computed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Tensor;

use super::optim::{AdamW, AdamWConfig, GroupSettings, clip_grad_norm};
use super::schedule::Schedule;
pub use super::state::Scores;
use super::state::{LoopState, load_last, save_last};
use crate::data::batching::{BatchSize, epoch_batches};
use crate::data::{Example, Task};
use crate::error::{Error, Result};
use crate::evaluate::{Scoring, corpus_loss, predict, tokenize_pairs};
use crate::model::Backbone;
use crate::model::batch::TokenizedExample;
use crate::prompt::checkpoint::{self, PromptMeta};
use crate::prompt::{ParamGroup, PromptConfig, PromptInput, SoftPrompt, build_prompt};
use crate::rng::Rng;

fn one() -> usize {
    1
}

/// Everything a run needs besides the model and the data.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    pub prompt: PromptConfig,
    /// Learning rate of P / P_s.
    pub lr_prompt: f64,
    /// Learning rate of A and B.
    pub lr_low_rank: f64,
    /// Learning rate of experts, gate (EPT); `None` = the prompt's.
    pub lr_aux: Option<f64>,
    pub weight_decay: f64,
    pub schedule: Schedule,
    pub warmup_steps: u64,
    pub max_steps: u64,
    /// Examples per batch.
    pub batch_size: usize,
    /// Batches per optimiser step (gradient accumulation).
    #[serde(default = "one")]
    pub grad_accum: usize,
    /// Cap on padded input tokens per batch (token-budget batching) instead of a fixed count.
    pub max_batch_tokens: Option<usize>,
    pub max_grad_norm: Option<f64>,
    /// Validate every N steps (0: only at the end).
    pub eval_every: u64,
    /// Pad every input to m (the paper's fixed-length runs) instead of to the batch's longest.
    pub pad_to_max: bool,
    pub scoring: Scoring,
    pub eval_batch_size: usize,
    /// Start from this prompt checkpoint instead of a fresh init (few-shot transfer).
    pub init_from: Option<PathBuf>,
    /// Also write the resumable `last/` checkpoint every N steps (0: only at validations).
    pub save_every: u64,
    pub seed: u64,
}

impl TrainConfig {
    pub fn new(prompt: PromptConfig) -> Self {
        TrainConfig {
            prompt,
            lr_prompt: 0.3,
            lr_low_rank: 1e-4,
            lr_aux: None,
            weight_decay: 0.0,
            schedule: Schedule::Linear,
            warmup_steps: 500,
            max_steps: 30_000,
            batch_size: 16,
            grad_accum: 1,
            max_batch_tokens: None,
            max_grad_norm: Some(1.0),
            eval_every: 1000,
            pad_to_max: false,
            scoring: Scoring::Generate,
            eval_batch_size: 32,
            save_every: 0,
            init_from: None,
            seed: 42,
        }
    }

    pub fn validate(&self) -> Result<()> {
        for (name, lr) in [
            ("lr-prompt", self.lr_prompt),
            ("lr-low-rank", self.lr_low_rank),
        ] {
            if lr <= 0.0 || !lr.is_finite() {
                return Err(Error::invalid(format!(
                    "--{name} = {lr}: a learning rate must be > 0"
                )));
            }
        }
        if let Some(lr) = self.lr_aux
            && (lr <= 0.0 || !lr.is_finite())
        {
            return Err(Error::invalid(format!(
                "--lr-aux = {lr}: a learning rate must be > 0"
            )));
        }
        if self.batch_size == 0 || self.max_steps == 0 || self.grad_accum == 0 {
            return Err(Error::invalid(
                "--batch-size, --grad-accum and --max-steps must be positive",
            ));
        }
        Ok(())
    }

    fn group(&self, g: ParamGroup) -> GroupSettings {
        let lr = match g {
            ParamGroup::Prompt => self.lr_prompt,
            ParamGroup::LowRank => self.lr_low_rank,
            ParamGroup::Auxiliary => self.lr_aux.unwrap_or(self.lr_prompt),
        };
        GroupSettings {
            lr,
            weight_decay: self.weight_decay,
        }
    }
}

/// The data of a run: formatted examples per split, and the task if any (it picks the metrics).
pub struct RunData {
    pub task: Option<Task>,
    pub train: Vec<Example>,
    pub validation: Vec<Example>,
    pub test: Vec<Example>,
}

impl RunData {
    /// Training needs examples to train on and to validate with.
    pub fn check(&self) -> Result<()> {
        if self.train.is_empty() || self.validation.is_empty() {
            return Err(Error::invalid(
                "training needs non-empty train and validation sets",
            ));
        }
        Ok(())
    }
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StepLog {
    pub step: u64,
    pub loss: f64,
    pub lr_prompt: f64,
    pub lr_low_rank: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation: Option<Scores>,
}

/// The outcome of a run (`results.json`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RunResult {
    pub best_step: u64,
    pub validation: Scores,
    pub test: Option<Scores>,
    pub params_prompt: usize,
    pub params_low_rank: usize,
    pub params_auxiliary: usize,
    pub steps: u64,
    pub wall_seconds: f64,
    pub steps_per_second: f64,
}

/// Scores `examples` with `prompt`: loss, the task's metrics (or exact match
/// for a plain JSONL task) and the selection value. With several `replicas`
/// (data parallel) each scores an equal contiguous share, one thread each,
/// and the shares' loss sums and predictions are put back together in order.
pub fn score_split(
    replicas: &[Backbone],
    prompt: &SoftPrompt,
    task: Option<Task>,
    examples: &[Example],
    cfg: &TrainConfig,
) -> Result<Scores> {
    let tokenizer = &replicas[0].tokenizer;
    let tokenized = tokenize_pairs(tokenizer, examples, Some(cfg.prompt.m))?;
    let labels = task.and_then(|t| t.labels());
    let scoring = if labels.is_none() {
        Scoring::Generate
    } else {
        cfg.scoring
    };
    let share = tokenized.len().div_ceil(replicas.len()).max(1);
    let score_share = |replica: &Backbone, part: &[crate::model::batch::TokenizedExample]| {
        // Forward passes only: off the autodiff device (see `FrozenModel::for_inference`).
        let model = replica.model.for_inference();
        let prompt = &prompt.clone().to_device(model.device(), false);
        let report = corpus_loss(model.as_ref(), prompt, part, cfg.eval_batch_size);
        let preds = predict(
            model.as_ref(),
            tokenizer,
            prompt,
            part,
            scoring,
            labels,
            cfg.eval_batch_size,
        );
        preds.map(|p| (report.loss_sum, report.tokens, p))
    };
    let shares: Vec<Result<(f64, usize, Vec<String>)>> = if replicas.len() == 1 {
        vec![score_share(&replicas[0], &tokenized)]
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = replicas
                .iter()
                .zip(tokenized.chunks(share))
                .map(|(replica, part)| scope.spawn(move || score_share(replica, part)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a replica's scoring does not panic"))
                .collect()
        })
    };
    let (mut loss_sum, mut tokens, mut preds) = (0.0, 0usize, Vec::with_capacity(examples.len()));
    for share in shares {
        let (l, t, p) = share?;
        (loss_sum, tokens) = (loss_sum + l, tokens + t);
        preds.extend(p);
    }
    let loss = if tokens == 0 {
        f64::NAN
    } else {
        loss_sum / tokens as f64
    };
    let (metrics, selection) = match task {
        Some(t) => {
            let m = crate::metrics::score(t, &preds, examples)?;
            let sel = crate::metrics::selection_score(t, &m).unwrap_or(f64::NAN);
            (m, sel)
        }
        None => {
            let correct = preds
                .iter()
                .zip(examples)
                .filter(|(p, e)| p.trim() == e.target.trim())
                .count();
            let acc = 100.0 * correct as f64 / examples.len().max(1) as f64;
            (
                std::iter::once(("exact_match".to_string(), acc)).collect(),
                acc,
            )
        }
    };
    Ok(Scores {
        loss,
        metrics,
        selection,
    })
}

/// Appends one JSON line to `path`; a failed append leaves the earlier lines as they were.
fn append_line(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let line = format!("{}\n", serde_json::to_string(value).expect("serialisable"));
    crate::error::append(path, line.as_bytes())
}

/// Drops the lines of steps after `step` (they are redone by a resumed run).
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    crate::error::write_atomic(path, kept.as_bytes())
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    crate::error::write_atomic(
        path,
        serde_json::to_string_pretty(value)
            .expect("serialisable")
            .as_bytes(),
    )
}

/// The prompt of `--init-from`, checked against the run: it fits the model,
/// was trained with the same method and, with a low-rank part, the same m.
/// Callers may call it before writing anything, to refuse a bad file early.
pub fn load_init(
    path: &Path,
    cfg: &TrainConfig,
    backbone: &Backbone,
) -> Result<(SoftPrompt, PromptMeta)> {
    let device = backbone.model.device().clone();
    let (p, meta) = checkpoint::load(path, &device)?;
    checkpoint::check_fits(path, &p, backbone.model.hidden_size())?;
    if meta.method != cfg.prompt.method.name() {
        return Err(Error::field(
            path,
            "ept.method",
            format!(
                "`{}`, but this run trains `{}`: start from a checkpoint of the same method",
                meta.method,
                cfg.prompt.method.name()
            ),
        ));
    }
    if p.max_input_len().is_some_and(|m| m != cfg.prompt.m) && p.low_rank.is_some() {
        return Err(Error::field(
            path,
            "ept.max_len",
            format!(
                "{:?}, but this run's m is {}",
                p.max_input_len(),
                cfg.prompt.m
            ),
        ));
    }
    Ok((p, meta))
}

/// Trains a prompt on `data`, writing the run folder `run_dir`. `on_step`
/// receives every step's log (for progress display).
pub fn train(
    cfg: &TrainConfig,
    backbone: &Backbone,
    data: &RunData,
    run_dir: &Path,
    model_id: &str,
    resume: bool,
    on_step: &mut dyn FnMut(&StepLog),
) -> Result<RunResult> {
    train_on(
        cfg,
        std::slice::from_ref(backbone),
        data,
        run_dir,
        model_id,
        resume,
        on_step,
    )
}

/// [`train`] data-parallel over `replicas`, the same frozen model on several
/// devices (see [`super::parallel`]): every batch and every evaluation is
/// shared out among them; the first holds the prompt and the optimiser.
pub fn train_on(
    cfg: &TrainConfig,
    replicas: &[Backbone],
    data: &RunData,
    run_dir: &Path,
    model_id: &str,
    resume: bool,
    on_step: &mut dyn FnMut(&StepLog),
) -> Result<RunResult> {
    let backbone = replicas
        .first()
        .ok_or_else(|| Error::invalid("train: no model"))?;
    cfg.validate()?;
    data.check()?;
    let device = backbone.model.device().clone();
    if !device.is_autodiff() {
        return Err(Error::invalid(
            "train: the backbone must be loaded on an autodiff device",
        ));
    }
    std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
    let metrics_path = run_dir.join("metrics.jsonl");
    let fresh = match &cfg.init_from {
        Some(path) => {
            let (p, meta) = load_init(path, cfg, backbone)?;
            if meta.model != model_id {
                log::warn!(
                    "{}: trained on `{}`, now used with `{model_id}` (same width, so it loads)",
                    path.display(),
                    meta.model
                );
            }
            p
        }
        None => build_prompt(&cfg.prompt, backbone.model.as_ref(), &backbone.tokenizer)?,
    };
    let groups: Vec<(ParamGroup, GroupSettings)> = fresh
        .params()
        .iter()
        .map(|(_, g, _)| (*g, cfg.group(*g)))
        .collect();
    let mut optim = AdamW::new(AdamWConfig::default(), groups.len());
    let (prompt, mut state) = if resume {
        let (p, s) = load_last(run_dir, &mut optim, &device)?;
        truncate_metrics(&metrics_path, s.step)?;
        (p, s)
    } else {
        write_json(&run_dir.join("config.json"), cfg)?;
        let _ = std::fs::remove_file(&metrics_path);
        let state = LoopState {
            step: 0,
            rng: Rng::new(cfg.seed),
            queue: Vec::new(),
            best: None,
            optimizer_step: 0,
        };
        (fresh, state)
    };
    let mut prompt = prompt.to_device(&device, true);
    let train = tokenize_pairs(&backbone.tokenizer, &data.train, Some(cfg.prompt.m))?;
    let lengths: Vec<usize> = train.iter().map(|e| e.input_ids.len()).collect();
    let size = match cfg.max_batch_tokens {
        Some(t) => BatchSize::Tokens(t),
        None => BatchSize::Examples(cfg.batch_size),
    };
    let meta = PromptMeta {
        method: cfg.prompt.method.name().to_string(),
        materialized: false,
        model: model_id.to_string(),
        d_model: backbone.model.hidden_size(),
        l: cfg.prompt.l,
    };
    let pad_to = if cfg.pad_to_max { cfg.prompt.m } else { 0 };
    let started = Instant::now();
    let first_step = state.step;
    for step in first_step..cfg.max_steps {
        // Gradient accumulation: `grad_accum` batches per optimiser step, each
        // loss divided by their number (what Hugging Face's Trainer does).
        let accum = cfg.grad_accum.max(1);
        let t0 = Instant::now();
        let mut g: Vec<Option<Tensor<2>>> = Vec::new();
        let (mut loss_value, mut tokens) = (0.0, 0usize);
        for _ in 0..accum {
            if state.queue.is_empty() {
                state.queue = epoch_batches(&lengths, size, true, &mut state.rng);
                state.queue.reverse();
            }
            let idx = state.queue.pop().expect("non-empty epoch");
            let rows: Vec<TokenizedExample> = idx.iter().map(|&i| train[i].clone()).collect();
            let n_tokens: usize = rows.iter().map(|r| r.label_ids.len()).sum();
            let (value, micro) = super::parallel::loss_and_gradients(
                replicas,
                &prompt,
                &rows,
                n_tokens,
                pad_to,
                1.0 / accum as f64,
            );
            if !value.is_finite() {
                return Err(Error::Numeric(format!(
                    "step {}: the loss is {value}; the last good checkpoint is in {}",
                    step + 1,
                    run_dir.join("last").display()
                )));
            }
            loss_value += value / accum as f64;
            let input_len = rows.iter().map(|r| r.input_ids.len()).max().unwrap_or(0);
            tokens += input_len.max(pad_to).max(1) * rows.len();
            g = super::parallel::add_gradients(g, micro);
        }
        let grad_norm = clip_grad_norm(&mut g, cfg.max_grad_norm);
        let factor = cfg.schedule.factor(step, cfg.warmup_steps, cfg.max_steps);
        optim.step_prompt(&mut prompt, g, &groups, factor);
        state.step = step + 1;
        state.optimizer_step = optim.step;
        let secs = t0.elapsed().as_secs_f64();
        let mut log = StepLog {
            step: step + 1,
            loss: loss_value,
            lr_prompt: cfg.lr_prompt * factor,
            lr_low_rank: cfg.lr_low_rank * factor,
            grad_norm,
            tokens_per_s: tokens as f64 / secs.max(1e-9),
            validation: None,
        };
        let last = step + 1 == cfg.max_steps;
        if last || (cfg.eval_every > 0 && (step + 1) % cfg.eval_every == 0) {
            let scores = score_split(replicas, &prompt, data.task, &data.validation, cfg)?;
            // Ties on the metric (common early on) go to the lower validation loss.
            let better = state.best.as_ref().is_none_or(|(_, b)| {
                scores.selection > b.selection
                    || (scores.selection == b.selection && scores.loss < b.loss)
            });
            if better {
                checkpoint::save(
                    &run_dir.join("best").join("prompt.safetensors"),
                    &prompt,
                    &meta,
                )?;
                state.best = Some((step + 1, scores.clone()));
            }
            log.validation = Some(scores);
        }
        // The metrics line goes first: a resumed run truncates the file to its checkpoint.
        append_line(&metrics_path, &log)?;
        if log.validation.is_some() || (cfg.save_every > 0 && (step + 1) % cfg.save_every == 0) {
            save_last(run_dir, &prompt, &meta, &optim, &state)?;
        }
        on_step(&log);
    }
    let wall = started.elapsed().as_secs_f64();
    let (best_step, validation) = state.best.clone().expect("validated at the last step");
    let best_path = run_dir.join("best").join("prompt.safetensors");
    let test = if data.test.is_empty() {
        None
    } else {
        let (best_prompt, _) = checkpoint::load(&best_path, &device)?;
        Some(score_split(
            replicas,
            &best_prompt,
            data.task,
            &data.test,
            cfg,
        )?)
    };
    let result = RunResult {
        best_step,
        validation,
        test,
        params_prompt: prompt.count(ParamGroup::Prompt),
        params_low_rank: prompt.count(ParamGroup::LowRank),
        params_auxiliary: prompt.count(ParamGroup::Auxiliary),
        steps: cfg.max_steps,
        wall_seconds: wall,
        steps_per_second: (cfg.max_steps - first_step) as f64 / wall.max(1e-9),
    };
    write_json(&run_dir.join("results.json"), &result)?;
    super::plots::write_plots(run_dir)?;
    Ok(result)
}

/// `runs/<name>` unless a folder is given.
pub fn run_dir(name: &str, root: Option<&Path>) -> PathBuf {
    root.map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("runs"))
        .join(name)
}
