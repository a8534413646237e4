//! The frozen T5 against transformers: fixtures made by `scripts/make_fixtures.py`.
//!
//! Tolerances: per-example loss sums and the mean loss within 1e-4 relative;
//! logits within 1e-4 of max(1, |logit|); greedy generations identical; a
//! padded batch equal to one-by-one within 1e-5 relative. bf16 compute against
//! torch's bf16 run within 2e-2 relative.

use crate::common;

use common::{close, model_dir};
use ept::evaluate::{corpus_loss, generate_ids};
use ept::io::weights::FloatType;
use ept::model::batch::{Seq2SeqBatch, TokenizedExample};
use ept::model::{Backbone, T5};
use ept::prompt::NoPrompt;
use serde::Deserialize;

#[derive(Deserialize)]
struct RefExample {
    source: String,
    target: String,
    input_ids: Vec<u32>,
    label_ids: Vec<u32>,
    loss_sum: f64,
    n_tokens: usize,
    logits: Option<Vec<Vec<f64>>>,
    generated_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Bf16Ref {
    mean_loss: f64,
}

#[derive(Deserialize)]
struct Reference {
    examples: Vec<RefExample>,
    mean_loss: f64,
    batch_mean_loss: f64,
    bf16: Option<Bf16Ref>,
}

fn reference(name: &str) -> Reference {
    let text = std::fs::read_to_string(model_dir(name).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn load(name: &str, dtype: FloatType) -> Backbone {
    Backbone::load(
        &model_dir(name),
        Some(dtype),
        &ept::runtime::cpu_device(false),
    )
    .unwrap()
}

fn check_model(name: &str) {
    let r = reference(name);
    let b = load(name, FloatType::F32);
    let mut examples = Vec::new();
    for e in &r.examples {
        let input_ids = b.tokenizer.encode(&e.source, None).unwrap();
        let label_ids = b.tokenizer.encode(&e.target, None).unwrap();
        assert_eq!(
            input_ids, e.input_ids,
            "{name}: tokenization of {:?}",
            e.source
        );
        assert_eq!(
            label_ids, e.label_ids,
            "{name}: tokenization of {:?}",
            e.target
        );
        assert_eq!(label_ids.len(), e.n_tokens);
        examples.push(TokenizedExample {
            input_ids,
            label_ids,
        });
    }
    // One by one, then all in one padded batch.
    let want: Vec<f64> = r.examples.iter().map(|e| e.loss_sum).collect();
    common::check_example_losses(name, b.model.as_ref(), &examples, &want, 1e-3);
    let report = corpus_loss(b.model.as_ref(), &NoPrompt, &examples, 4);
    assert!(
        close(report.loss, r.mean_loss, 1e-4, 1e-6),
        "{name}: mean loss {} vs {}",
        report.loss,
        r.mean_loss
    );
    assert!(close(report.loss, r.batch_mean_loss, 1e-4, 1e-6));

    // Full teacher-forced logits where recorded.
    let t5 = T5::load(
        &model_dir(name),
        FloatType::F32,
        &ept::runtime::cpu_device(false),
    )
    .unwrap();
    let cfg = &t5.config;
    for (i, e) in r.examples.iter().enumerate() {
        let Some(want) = &e.logits else { continue };
        let batch = Seq2SeqBatch::new(
            &examples[i..=i],
            cfg.pad_id(),
            cfg.decoder_start_id(),
            t5.device(),
        );
        let emb = t5.embed(batch.input_ids.clone());
        let enc = t5.encode_embeds(emb, &batch.attention_mask);
        let logits = t5.decode(batch.decoder_input_ids.clone(), enc, &batch.attention_mask);
        let got = ept::tensors::to_f32_vec(logits);
        let v = want[0].len();
        assert_eq!(got.len(), want.len() * v, "{name}: logits shape");
        let scale = want.iter().flatten().fold(1f64, |m, x| m.max(x.abs()));
        for (k, w) in want.iter().flatten().enumerate() {
            assert!(
                (got[k] as f64 - w).abs() <= 1e-4 * scale,
                "{name} example {i} logit {k}: {} vs {w}",
                got[k]
            );
        }
    }

    // Greedy generation, token for token.
    let inputs: Vec<Vec<u32>> = examples.iter().map(|e| e.input_ids.clone()).collect();
    let alone = generate_ids(b.model.as_ref(), &NoPrompt, &inputs, 1, 12);
    let together = generate_ids(b.model.as_ref(), &NoPrompt, &inputs, inputs.len(), 12);
    for (i, e) in r.examples.iter().enumerate() {
        assert_eq!(
            alone[i], e.generated_ids,
            "{name} example {i}: generation ({:?})",
            e.target
        );
        assert_eq!(
            together[i], e.generated_ids,
            "{name} example {i}: batched generation"
        );
    }
}

#[test]
fn relu_tied_matches_transformers() {
    check_model("relu-tied");
}

#[test]
fn gated_untied_matches_transformers() {
    check_model("gated-untied");
}

#[test]
fn sharded_silu_matches_transformers() {
    check_model("sharded-silu");
}

#[test]
fn bf16_weights_upcast_match_transformers() {
    check_model("relu-bf16");
}

#[test]
fn explicit_scale_flag_wins_over_tie() {
    check_model("v5-flag");
}

#[test]
fn transformers5_resaved_untied_head_is_used() {
    check_model("v5-untied-resave");
}

#[test]
fn bf16_compute_is_close_to_torch_bf16() {
    let r = reference("relu-bf16");
    let want = r.bf16.expect("bf16 reference").mean_loss;
    let b = load("relu-bf16", FloatType::Bf16);
    let examples: Vec<TokenizedExample> = r
        .examples
        .iter()
        .map(|e| TokenizedExample {
            input_ids: e.input_ids.clone(),
            label_ids: e.label_ids.clone(),
        })
        .collect();
    let got = corpus_loss(b.model.as_ref(), &NoPrompt, &examples, 6).loss;
    assert!(
        close(got, want, 2e-2, 1e-3),
        "bf16 loss {got} vs torch bf16 {want}"
    );
    assert!(
        close(got, r.mean_loss, 2e-2, 1e-3),
        "bf16 loss {got} vs f32 {}",
        r.mean_loss
    );
}

#[test]
fn relative_buckets_match_transformers_formula() {
    use ept::model::t5::relative_position_bucket as bucket;
    // Values computed by transformers' _relative_position_bucket (32 buckets, max distance 128).
    assert_eq!(bucket(0, true, 32, 128), 0);
    assert_eq!(bucket(1, true, 32, 128), 17);
    assert_eq!(bucket(-1, true, 32, 128), 1);
    assert_eq!(bucket(-7, true, 32, 128), 7);
    assert_eq!(bucket(-8, true, 32, 128), 8);
    assert_eq!(bucket(-1000, true, 32, 128), 15);
    assert_eq!(bucket(1000, true, 32, 128), 31);
    assert_eq!(bucket(3, false, 32, 128), 0);
    assert_eq!(bucket(-20, false, 32, 128), 17);
}
