//! Scoring a frozen model (with or without a prompt) on text pairs: losses and
//! generations. Architecture-free: the model is a [`FrozenModel`].

use burn::tensor::Tensor;

use crate::data::Example;
use crate::error::Result;
use crate::model::batch::TokenizedExample;
use crate::model::{FrozenModel, TextTokenizer};
use crate::prompt::PromptInput;

/// Token-weighted loss over a data set.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LossReport {
    /// Sum of token losses / number of target tokens (end-of-sequence included, padding never).
    pub loss: f64,
    pub tokens: usize,
    pub examples: usize,
    pub loss_sum: f64,
}

/// Tokenizes pairs: the source as the tokenizer's post-processor makes it
/// (truncated to `max_source_len`), the target as the model scores it (see
/// [`TextTokenizer::encode_target`]).
pub fn tokenize_pairs(
    tok: &TextTokenizer,
    pairs: &[Example],
    max_source_len: Option<usize>,
) -> Result<Vec<TokenizedExample>> {
    pairs
        .iter()
        .map(|p| {
            Ok(TokenizedExample {
                input_ids: tok.encode(&p.source, max_source_len)?,
                label_ids: tok.encode_target(&p.target)?,
            })
        })
        .collect()
}

/// Per-example sums of target-token cross-entropy for one batch (a tracked
/// tensor when the prompt is trainable: the training loss is built from it).
pub fn batch_loss_sums(
    model: &dyn FrozenModel,
    prompt: &dyn PromptInput,
    rows: &[TokenizedExample],
    min_input_len: usize,
) -> Tensor<1> {
    model.loss_sums(&prompt.soft_input(), rows, min_input_len)
}

/// Batches of at most `batch_size` examples, in length order so padding stays small.
/// Returns index lists into `examples`.
pub fn length_sorted_batches(examples: &[TokenizedExample], batch_size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| (examples[i].input_ids.len(), examples[i].label_ids.len()));
    order
        .chunks(batch_size.max(1))
        .map(|c| c.to_vec())
        .collect()
}

/// Loss sum of every example, in input order.
pub fn example_loss_sums(
    model: &dyn FrozenModel,
    prompt: &dyn PromptInput,
    examples: &[TokenizedExample],
    batch_size: usize,
) -> Vec<f64> {
    let soft = prompt.soft_input();
    let mut sums = vec![0f64; examples.len()];
    for idx in length_sorted_batches(examples, batch_size) {
        let rows: Vec<TokenizedExample> = idx.iter().map(|&i| examples[i].clone()).collect();
        let values = crate::tensors::to_f32_vec(model.loss_sums(&soft, &rows, 0));
        for (k, &i) in idx.iter().enumerate() {
            sums[i] = values[k] as f64;
        }
    }
    sums
}

/// Token-weighted mean cross-entropy over `examples`.
pub fn corpus_loss(
    model: &dyn FrozenModel,
    prompt: &dyn PromptInput,
    examples: &[TokenizedExample],
    batch_size: usize,
) -> LossReport {
    let sums = example_loss_sums(model, prompt, examples, batch_size);
    let tokens: usize = examples.iter().map(|e| e.label_ids.len()).sum();
    let loss_sum: f64 = sums.iter().sum();
    LossReport {
        loss: if tokens == 0 {
            f64::NAN
        } else {
            loss_sum / tokens as f64
        },
        tokens,
        examples: examples.len(),
        loss_sum,
    }
}

/// Greedy generations for `inputs` (source token ids), in input order.
pub fn generate_ids(
    model: &dyn FrozenModel,
    prompt: &dyn PromptInput,
    inputs: &[Vec<u32>],
    batch_size: usize,
    max_new_tokens: usize,
) -> Vec<Vec<u32>> {
    let batches = sorted_input_batches(inputs, batch_size);
    generate_in_batches(model, prompt, inputs, &batches, 0, max_new_tokens)
}

/// `ept eval`'s batches of `inputs`: length-sorted, at most `batch_size` each.
pub fn sorted_input_batches(inputs: &[Vec<u32>], batch_size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..inputs.len()).collect();
    order.sort_by_key(|&i| inputs[i].len());
    order
        .chunks(batch_size.max(1))
        .map(|c| c.to_vec())
        .collect()
}

/// Gathers `idx` of `inputs`.
fn pick(inputs: &[Vec<u32>], idx: &[usize]) -> Vec<Vec<u32>> {
    idx.iter().map(|&i| inputs[i].clone()).collect()
}

/// [`generate_ids`] with the batches given (index lists into `inputs`) and
/// every input padded to at least `min_input_len`: the benchmark replays
/// DePT's fixed-length evaluation with it (`ept bench --eval`).
pub fn generate_in_batches(
    model: &dyn FrozenModel,
    prompt: &dyn PromptInput,
    inputs: &[Vec<u32>],
    batches: &[Vec<usize>],
    min_input_len: usize,
    max_new_tokens: usize,
) -> Vec<Vec<u32>> {
    let soft = prompt.soft_input();
    let mut out = vec![Vec::new(); inputs.len()];
    for idx in batches {
        let generated = model.generate(&soft, &pick(inputs, idx), min_input_len, max_new_tokens);
        for (k, &i) in idx.iter().enumerate() {
            out[i] = generated[k].clone();
        }
    }
    out
}

/// How predictions are made for scoring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scoring {
    /// Greedy decoding (DePT's way), compared as stripped strings.
    Generate,
    /// Rank classification: the label string with the highest log-likelihood.
    /// Never an invalid label; one decoder pass per option.
    Rank,
}

impl Scoring {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "generate" => Ok(Scoring::Generate),
            "rank" => Ok(Scoring::Rank),
            other => Err(crate::Error::invalid(format!(
                "unknown scoring `{other}`: expected generate or rank"
            ))),
        }
    }
}

/// Rank classification: for every input, the index into `options` of the
/// option whose tokens (with the end-of-sequence token) have the highest
/// total log-likelihood.
pub fn rank_options(
    model: &dyn FrozenModel,
    prompt: &dyn PromptInput,
    inputs: &[Vec<u32>],
    options: &[Vec<u32>],
    batch_size: usize,
) -> Vec<usize> {
    let batches = sorted_input_batches(inputs, batch_size);
    rank_in_batches(model, prompt, inputs, options, &batches, 0)
}

/// [`rank_options`] with the batches given and inputs padded to at least
/// `min_input_len` (see [`generate_in_batches`]).
pub fn rank_in_batches(
    model: &dyn FrozenModel,
    prompt: &dyn PromptInput,
    inputs: &[Vec<u32>],
    options: &[Vec<u32>],
    batches: &[Vec<usize>],
    min_input_len: usize,
) -> Vec<usize> {
    let soft = prompt.soft_input();
    let mut best = vec![0usize; inputs.len()];
    for idx in batches {
        let nll = model.option_loss_sums(&soft, &pick(inputs, idx), options, min_input_len);
        let mut scores = vec![f64::NEG_INFINITY; idx.len()];
        for (o, row_nll) in nll.iter().enumerate() {
            for k in 0..idx.len() {
                let ll = -row_nll[k];
                if ll > scores[k] {
                    scores[k] = ll;
                    best[idx[k]] = o;
                }
            }
        }
    }
    best
}

/// Predictions (decoded strings) for `examples` by `scoring`; rank
/// classification needs the task's label strings.
pub fn predict(
    model: &dyn FrozenModel,
    tok: &TextTokenizer,
    prompt: &dyn PromptInput,
    examples: &[TokenizedExample],
    scoring: Scoring,
    labels: Option<&[&str]>,
    batch_size: usize,
) -> Result<Vec<String>> {
    let inputs: Vec<Vec<u32>> = examples.iter().map(|e| e.input_ids.clone()).collect();
    match (scoring, labels) {
        (Scoring::Rank, Some(labels)) => {
            let options = labels
                .iter()
                .map(|l| tok.encode_target(l))
                .collect::<Result<Vec<_>>>()?;
            let best = rank_options(model, prompt, &inputs, &options, batch_size);
            Ok(best.into_iter().map(|i| labels[i].to_string()).collect())
        }
        (Scoring::Rank, None) => Err(crate::Error::invalid(
            "rank scoring needs a fixed label set: use --scoring generate for regression and QA tasks",
        )),
        (Scoring::Generate, _) => generate_ids(model, prompt, &inputs, batch_size, 20)
            .iter()
            .map(|ids| tok.decode(ids))
            .collect(),
    }
}
