//! Frozen means frozen: after a backward pass through the backbone, no weight
//! has a gradient and the prompt does.

use crate::common;

use burn::tensor::{DType, Tensor, TensorData};
use ept::evaluate::batch_loss_sums;
use ept::io::weights::FloatType;
use ept::model::batch::TokenizedExample;
use ept::model::t5::WeightRef;
use ept::model::{Backbone, T5};
use ept::prompt::SoftPrompt;

#[test]
fn backward_reaches_the_prompt_and_no_weight() {
    let device = ept::runtime::cpu_device(true);
    let b = Backbone::load(&common::model_dir("gated-untied"), None, &device).unwrap();
    // The same checkpoint as a T5, to list its weights.
    let t5 = T5::load(&common::model_dir("gated-untied"), FloatType::F32, &device).unwrap();
    let d = b.model.hidden_size();
    let values: Vec<f32> = (0..3 * d).map(|i| ((i % 17) as f32 - 8.0) * 0.05).collect();
    let prompt = SoftPrompt {
        prompt: Tensor::from_data(TensorData::new(values, [3, d]), (&device, DType::F32)),
        low_rank: None,
        fusion: None,
        multi_space: None,
        max_len: None,
    }
    .to_device(&device, true);
    let examples = vec![
        TokenizedExample {
            input_ids: b.tokenizer.encode("the cat sat on the mat", None).unwrap(),
            label_ids: b.tokenizer.encode("yes", None).unwrap(),
        },
        TokenizedExample {
            input_ids: b.tokenizer.encode("a dog", None).unwrap(),
            label_ids: b.tokenizer.encode("no it did not", None).unwrap(),
        },
    ];
    let n_tokens: usize = examples.iter().map(|e| e.label_ids.len()).sum();
    let loss = batch_loss_sums(&t5, &prompt, &examples, 0).sum() / n_tokens as f64;
    let grads = loss.backward();
    let g = prompt
        .prompt
        .grad(&grads)
        .expect("the prompt has a gradient");
    let norm: f32 = g.abs().sum().into_scalar();
    assert!(norm > 0.0, "prompt gradient is zero");
    let weights = t5.weights();
    assert!(weights.len() > 20);
    for (name, w) in weights {
        let has_grad = match w {
            WeightRef::D1(t) => t.grad(&grads).is_some() || t.is_require_grad(),
            WeightRef::D2(t) => t.grad(&grads).is_some() || t.is_require_grad(),
            WeightRef::Quant4(_) => false,
        };
        assert!(!has_grad, "frozen weight {name} has a gradient");
    }
}
