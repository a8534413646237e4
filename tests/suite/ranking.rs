//! Rank classification picks the label whose loss is lowest, and never an invalid label.

use crate::common;

use ept::evaluate::{Scoring, example_loss_sums, predict, rank_options};
use ept::model::Backbone;
use ept::model::batch::TokenizedExample;
use ept::prompt::NoPrompt;

/// On T5 and on a decoder (label continuations after the source, EOS included).
#[test]
fn ranking_agrees_with_per_option_losses() {
    let decoder = common::fixtures().join("llama/llama-gqa");
    for dir in [common::model_dir("gated-untied"), decoder] {
        ranking_agrees(&dir);
    }
}

fn ranking_agrees(dir: &std::path::Path) {
    let b = Backbone::load(dir, None, &ept::runtime::cpu_device(false)).unwrap();
    let examples = ept::data::load_user_file(&common::fixtures().join("data.jsonl")).unwrap();
    let inputs: Vec<Vec<u32>> = examples
        .iter()
        .map(|e| b.tokenizer.encode(&e.source, None).unwrap())
        .collect();
    let labels = ["yes", "no", "maybe so"];
    let options: Vec<Vec<u32>> = labels
        .iter()
        .map(|l| b.tokenizer.encode_target(l).unwrap())
        .collect();
    let best = rank_options(b.model.as_ref(), &NoPrompt, &inputs, &options, 4);
    for (i, input) in inputs.iter().enumerate() {
        let per_option: Vec<TokenizedExample> = options
            .iter()
            .map(|o| TokenizedExample {
                input_ids: input.clone(),
                label_ids: o.clone(),
            })
            .collect();
        let nll = example_loss_sums(b.model.as_ref(), &NoPrompt, &per_option, 1);
        let want = (0..nll.len())
            .min_by(|&a, &c| nll[a].total_cmp(&nll[c]))
            .unwrap();
        assert_eq!(best[i], want, "{}: example {i}: {nll:?}", dir.display());
    }
    let tokenized: Vec<TokenizedExample> = inputs
        .iter()
        .map(|i| TokenizedExample {
            input_ids: i.clone(),
            label_ids: vec![1],
        })
        .collect();
    let preds = predict(
        b.model.as_ref(),
        &b.tokenizer,
        &NoPrompt,
        &tokenized,
        Scoring::Rank,
        Some(&labels),
        3,
    )
    .unwrap();
    assert!(preds.iter().all(|p| labels.contains(&p.as_str())));
}
