//! Evaluation benchmark: scoring the validation set of a GLUE-shaped
//! workload, by greedy generation (DePT's way) or by label ranking.
//!
//! Why a third benchmark: during training, DePT's pipeline scores the
//! validation set every 1,000 steps with `model.generate` (greedy, at most 20
//! tokens, every input padded to 256), and on a CPU that costs about as much
//! as the training between two evaluations. `ept` can do the same, or rank
//! the task's label strings (one encoder pass per batch, one teacher-forced
//! decoder pass per label). `scripts/bench_pytorch.py --task-dir DIR --eval`
//! replays the same scoring in PyTorch + PEFT on what [`super::task`] exports,
//! and the predictions of both sides must agree.

use std::time::Instant;

use crate::error::Result;
use crate::evaluate::{Scoring, generate_in_batches, rank_in_batches, sorted_input_batches};
use crate::prompt::PromptInput;

use super::proc_status_mib;
use super::task::{TaskBenchSettings, Workload};

/// One evaluation workload: the task-level workload's examples scored once.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EvalBenchSettings {
    /// Model, prompt, examples, batch size and padding (`pad_to` > 0: every
    /// input padded to it, batches in data order, as DePT evaluates; 0:
    /// length-sorted batches, each padded to its longest, as `ept eval`).
    pub task: TaskBenchSettings,
    pub scoring: Scoring,
    /// Generation: the most tokens generated per example (DePT: 20).
    pub max_new_tokens: usize,
}

/// What scoring cost and what it predicted.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EvalBenchReport {
    pub implementation: &'static str,
    pub settings: EvalBenchSettings,
    pub kernels: String,
    pub batches: usize,
    /// Input positions the encoder saw, padding included (prompt rows excluded).
    pub padded_tokens: usize,
    pub real_tokens: usize,
    /// Wall time of scoring every example: batching, encoder, decoder passes.
    pub eval_s: f64,
    pub examples_per_s: f64,
    /// Tokens generated, `</s>` included (generation only; 0 for ranking).
    pub generated_tokens: usize,
    /// Per example, in input order: the generated ids (generation) or the
    /// index of the best option (ranking).
    pub predictions: serde_json::Value,
    pub peak_rss_mib: f64,
}

/// Scores the workload once and reports it (see the module docs).
pub fn run(s: &EvalBenchSettings) -> Result<EvalBenchReport> {
    let t = &s.task;
    let w = Workload::new(t)?;
    let options = w.options(t.step.seed);
    // Inference copies (no autodiff bookkeeping), made before the clock starts.
    let model = w.model.for_inference();
    let prompt = w.prompt.clone().to_device(model.device(), false);
    let prompt: &dyn PromptInput = &prompt;
    let inputs: Vec<Vec<u32>> = w.examples.iter().map(|e| e.input_ids.clone()).collect();
    let batches: Vec<Vec<usize>> = if t.pad_to > 0 {
        let idx: Vec<usize> = (0..inputs.len()).collect();
        idx.chunks(t.step.batch).map(|c| c.to_vec()).collect()
    } else {
        sorted_input_batches(&inputs, t.step.batch)
    };
    let padded_tokens = batches
        .iter()
        .map(|idx| {
            let longest = idx.iter().map(|&i| inputs[i].len()).max().unwrap_or(0);
            longest.max(t.pad_to) * idx.len()
        })
        .sum();

    let t0 = Instant::now();
    let (predictions, generated_tokens) = match s.scoring {
        Scoring::Generate => {
            let ids = generate_in_batches(
                &model,
                prompt,
                &inputs,
                &batches,
                t.pad_to,
                s.max_new_tokens,
            );
            let n = ids.iter().map(Vec::len).sum();
            (serde_json::json!(ids), n)
        }
        Scoring::Rank => {
            let best = rank_in_batches(&model, prompt, &inputs, &options, &batches, t.pad_to);
            (serde_json::json!(best), 0)
        }
    };
    let eval_s = t0.elapsed().as_secs_f64();
    Ok(EvalBenchReport {
        implementation: "ept (burn-flex)",
        settings: s.clone(),
        kernels: crate::kernels::kernels_name().to_string(),
        batches: batches.len(),
        padded_tokens,
        real_tokens: w.lengths.iter().sum(),
        eval_s,
        examples_per_s: inputs.len() as f64 / eval_s,
        generated_tokens,
        predictions,
        peak_rss_mib: proc_status_mib("VmHWM:").unwrap_or(f64::NAN),
    })
}

impl EvalBenchReport {
    /// A human-readable summary.
    pub fn table(&self) -> String {
        let t = &self.settings.task;
        let how = match self.settings.scoring {
            Scoring::Generate => format!(
                "greedy generation, at most {} tokens ({} generated)",
                self.settings.max_new_tokens, self.generated_tokens
            ),
            Scoring::Rank => "label ranking, 2 options".to_string(),
        };
        let padding = if t.pad_to > 0 {
            format!("every input padded to {}, data order", t.pad_to)
        } else {
            "length-sorted batches, each padded to its longest".to_string()
        };
        format!(
            "task                   {:?}-shaped, {} examples, batches of {} ({})\n\
             model                  {} random weights, {} (kernels {})\n\
             scoring                {}\n\
             time                   {:.2} s, {} batches, {:.1} examples/s\n\
             input positions        {} padded, {} real\n\
             peak RSS (VmHWM)       {:.0} MiB\n",
            t.task,
            t.examples,
            t.step.batch,
            padding,
            t.step.shape.name(),
            t.step.method.name(),
            self.kernels,
            how,
            self.eval_s,
            self.batches,
            self.examples_per_s,
            self.padded_tokens,
            self.real_tokens,
            self.peak_rss_mib,
        )
    }
}
