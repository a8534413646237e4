//! Scoring a frozen model (with or without a prompt) on text pairs: losses and generations.

use burn::tensor::Tensor;

use crate::data::Example;
use crate::error::Result;
use crate::model::batch::{Seq2SeqBatch, TokenizedExample};
use crate::model::t5::token_loss_sums;
use crate::model::{T5, TextTokenizer};
use crate::prompt::PromptInput;

/// Token-weighted loss over a data set.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LossReport {
    /// Sum of token losses / number of target tokens (`</s>` included, padding never).
    pub loss: f64,
    pub tokens: usize,
    pub examples: usize,
    pub loss_sum: f64,
}

/// Tokenizes pairs; sources longer than `max_source_len` are truncated (keeping `</s>`).
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
                label_ids: tok.encode(&p.target, None)?,
            })
        })
        .collect()
}

/// Per-example sums of target-token cross-entropy for one batch (a tracked
/// tensor when the prompt is trainable: the training loss is built from it).
pub fn batch_loss_sums(model: &T5, prompt: &dyn PromptInput, batch: &Seq2SeqBatch) -> Tensor<1> {
    let embeds = model.embed(batch.input_ids.clone());
    let (enc_in, mask) = prompt.encoder_input(embeds, batch.attention_mask.clone());
    let enc = model.encode_embeds(enc_in, &mask);
    let logits = model.decode(batch.decoder_input_ids.clone(), enc, &mask);
    token_loss_sums(logits, batch.labels.clone(), batch.label_mask.clone())
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
    model: &T5,
    prompt: &dyn PromptInput,
    examples: &[TokenizedExample],
    batch_size: usize,
) -> Vec<f64> {
    let cfg = &model.config;
    let mut sums = vec![0f64; examples.len()];
    for idx in length_sorted_batches(examples, batch_size) {
        let rows: Vec<TokenizedExample> = idx.iter().map(|&i| examples[i].clone()).collect();
        let batch = Seq2SeqBatch::new(&rows, cfg.pad_id(), cfg.decoder_start_id(), model.device());
        let values = crate::tensors::to_f32_vec(batch_loss_sums(model, prompt, &batch));
        for (k, &i) in idx.iter().enumerate() {
            sums[i] = values[k] as f64;
        }
    }
    sums
}

/// Token-weighted mean cross-entropy over `examples`.
pub fn corpus_loss(
    model: &T5,
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

/// Inputs without targets (a lone `</s>` stands in), for generation and ranking.
fn inputs_only(inputs: &[Vec<u32>], eos: u32) -> Vec<TokenizedExample> {
    inputs
        .iter()
        .map(|ids| TokenizedExample {
            input_ids: ids.clone(),
            label_ids: vec![eos],
        })
        .collect()
}

/// Greedy generations for `inputs` (token ids with `</s>`), in input order.
pub fn generate_ids(
    model: &T5,
    prompt: &dyn PromptInput,
    inputs: &[Vec<u32>],
    batch_size: usize,
    max_new_tokens: usize,
) -> Vec<Vec<u32>> {
    let batches = sorted_input_batches(model, inputs, batch_size);
    generate_in_batches(model, prompt, inputs, &batches, 0, max_new_tokens)
}

/// `ept eval`'s batches of `inputs`: length-sorted, at most `batch_size` each.
pub fn sorted_input_batches(model: &T5, inputs: &[Vec<u32>], batch_size: usize) -> Vec<Vec<usize>> {
    length_sorted_batches(&inputs_only(inputs, model.config.eos_token_id), batch_size)
}

/// The encoder's output and mask for `rows` with the prompt, inputs padded to
/// at least `min_input_len`: what generation and ranking start from.
fn encode_rows(
    model: &T5,
    prompt: &dyn PromptInput,
    rows: &[TokenizedExample],
    min_input_len: usize,
) -> (Tensor<3>, Tensor<2>) {
    let cfg = &model.config;
    let batch = Seq2SeqBatch::padded_to(
        rows,
        cfg.pad_id(),
        cfg.decoder_start_id(),
        min_input_len,
        model.device(),
    );
    let embeds = model.embed(batch.input_ids);
    let (enc_in, mask) = prompt.encoder_input(embeds, batch.attention_mask);
    (model.encode_embeds(enc_in, &mask), mask)
}

/// [`generate_ids`] with the batches given (index lists into `inputs`) and
/// every input padded to at least `min_input_len`: the benchmark replays
/// DePT's fixed-length evaluation with it (`ept bench --eval`).
pub fn generate_in_batches(
    model: &T5,
    prompt: &dyn PromptInput,
    inputs: &[Vec<u32>],
    batches: &[Vec<usize>],
    min_input_len: usize,
    max_new_tokens: usize,
) -> Vec<Vec<u32>> {
    let cfg = &model.config;
    let examples = inputs_only(inputs, cfg.eos_token_id);
    let mut out = vec![Vec::new(); inputs.len()];
    for idx in batches {
        let rows: Vec<TokenizedExample> = idx.iter().map(|&i| examples[i].clone()).collect();
        let (enc, mask) = encode_rows(model, prompt, &rows, min_input_len);
        let generated = model.generate(enc, &mask, max_new_tokens);
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
/// option whose tokens (with `</s>`) have the highest total log-likelihood.
/// The encoder runs once per batch; the decoder once per option.
pub fn rank_options(
    model: &T5,
    prompt: &dyn PromptInput,
    inputs: &[Vec<u32>],
    options: &[Vec<u32>],
    batch_size: usize,
) -> Vec<usize> {
    let batches = sorted_input_batches(model, inputs, batch_size);
    rank_in_batches(model, prompt, inputs, options, &batches, 0)
}

/// [`rank_options`] with the batches given and inputs padded to at least
/// `min_input_len` (see [`generate_in_batches`]).
pub fn rank_in_batches(
    model: &T5,
    prompt: &dyn PromptInput,
    inputs: &[Vec<u32>],
    options: &[Vec<u32>],
    batches: &[Vec<usize>],
    min_input_len: usize,
) -> Vec<usize> {
    let cfg = &model.config;
    let examples = inputs_only(inputs, cfg.eos_token_id);
    let mut best = vec![0usize; inputs.len()];
    for idx in batches {
        let rows: Vec<TokenizedExample> = idx.iter().map(|&i| examples[i].clone()).collect();
        let (enc, mask) = encode_rows(model, prompt, &rows, min_input_len);
        let mut scores = vec![f64::NEG_INFINITY; idx.len()];
        for (o, option) in options.iter().enumerate() {
            let with_option: Vec<TokenizedExample> = rows
                .iter()
                .map(|r| TokenizedExample {
                    input_ids: r.input_ids.clone(),
                    label_ids: option.clone(),
                })
                .collect();
            let ob = Seq2SeqBatch::new(
                &with_option,
                cfg.pad_id(),
                cfg.decoder_start_id(),
                model.device(),
            );
            let logits = model.decode(ob.decoder_input_ids.clone(), enc.clone(), &mask);
            let nll = crate::tensors::to_f32_vec(token_loss_sums(logits, ob.labels, ob.label_mask));
            for k in 0..idx.len() {
                let ll = -(nll[k] as f64);
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
    model: &T5,
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
                .map(|l| tok.encode(l, None))
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
