//! PT, DePT and EPT against the PyTorch reference (`scripts/prompt_reference.py`).
//!
//! Each case is a prompt checkpoint with untrained, non-degenerate weights in
//! the format of docs/FORMAT.md. Tolerances: the batch loss within 1e-4
//! relative; each gradient within 1e-4 of its tensor's largest reference
//! magnitude (max|Δ| ≤ 1e-4·max|ref|: an element-wise relative test is
//! meaningless for near-zero entries, and the f32 reference itself differs
//! from float64 by up to 1e-5 on this measure).

use crate::common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, Tensor};
use common::{close, fixtures};
use ept::evaluate::{batch_loss_sums, tokenize_pairs};
use ept::model::Backbone;
use ept::model::batch::TokenizedExample;
use ept::prompt::{PromptInput, SoftPrompt, checkpoint};
use ept::tensors::to_f32_vec;
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    model: String,
    m: usize,
    loss: f64,
    n_tokens: usize,
    per_example_loss_sum: Vec<f64>,
    input_ids: Vec<Vec<u32>>,
    labels: Vec<Vec<i64>>,
    loss_padded_to_m: Option<f64>,
}

const CASES: [&str; 17] = [
    "pt",
    "dept",
    "ept-cross",
    "ept-literal",
    "ept-prompt-softmax",
    "ablate-decomp",
    "ablate-decomp-fusion",
    "ablate-decomp-multispace",
    "ablate-multispace",
    "ept-cross-gated",
    "ept-short-batch",
    "llama-pt",
    "llama-dept",
    "llama-ept-cross",
    "llama-ept-literal",
    "llama-ept-prompt-softmax",
    "qwen2-ept-cross-gated",
];

fn case_dir(case: &str) -> PathBuf {
    fixtures().join("prompt").join(case)
}

fn reference(case: &str) -> Reference {
    serde_json::from_str(&std::fs::read_to_string(case_dir(case).join("reference.json")).unwrap())
        .unwrap()
}

fn model_path(r: &Reference) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(&r.model)
}

fn examples(r: &Reference) -> Vec<TokenizedExample> {
    r.input_ids
        .iter()
        .zip(&r.labels)
        .map(|(i, l)| TokenizedExample {
            input_ids: i.clone(),
            label_ids: l.iter().filter(|&&x| x >= 0).map(|&x| x as u32).collect(),
        })
        .collect()
}

fn mean_loss(
    b: &Backbone,
    prompt: &dyn PromptInput,
    ex: &[TokenizedExample],
    pad_to: usize,
) -> Tensor<1> {
    let n_tokens: usize = ex.iter().map(|e| e.label_ids.len()).sum();
    batch_loss_sums(b.model.as_ref(), prompt, ex, pad_to).sum() / n_tokens as f64
}

fn scalar(t: Tensor<1>) -> f64 {
    to_f32_vec(t)[0] as f64
}

fn reference_grads(case: &str) -> HashMap<String, Vec<f32>> {
    let bytes = std::fs::read(case_dir(case).join("grads.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            let vals = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (n, vals)
        })
        .collect()
}

/// The batch loss and every prompt gradient on `device` (autodiff on)
/// against PyTorch's; returns the loss. Also the GPU path's check
/// (`gpu_path.rs`).
pub fn check_loss_and_grads(case: &str, device: &burn::tensor::Device) -> f64 {
    let r = reference(case);
    let b = Backbone::load(&model_path(&r), None, device).unwrap();
    let path = case_dir(case).join("prompt.safetensors");
    let (prompt, _) = checkpoint::load(&path, device).unwrap();
    let prompt = prompt.to_device(device, true);

    // Our tokenizer and truncation to m give the reference's inputs.
    let pairs = ept::data::load_user_file(&fixtures().join("data.jsonl")).unwrap();
    let ours = tokenize_pairs(&b.tokenizer, &pairs, prompt.max_input_len().or(Some(r.m))).unwrap();
    let ex = examples(&r);
    assert_eq!(ours, ex, "{case}: tokenized inputs");
    assert_eq!(
        ex.iter().map(|e| e.label_ids.len()).sum::<usize>(),
        r.n_tokens
    );

    let loss = mean_loss(&b, &prompt, &ex, 0);
    let got = scalar(loss.clone());
    assert!(
        close(got, r.loss, 1e-4, 1e-6),
        "{case}: loss {got} vs PyTorch {}",
        r.loss
    );

    let grads = loss.backward();
    let want = reference_grads(case);
    let params = prompt.params();
    assert_eq!(
        params.len(),
        want.len(),
        "{case}: number of trainable tensors"
    );
    for (name, _, t) in params {
        let g = to_f32_vec(
            t.grad(&grads)
                .unwrap_or_else(|| panic!("{case}: no gradient for {name}")),
        );
        let w = &want[&name];
        assert_eq!(g.len(), w.len(), "{case}: {name} gradient size");
        let scale = w.iter().fold(0f32, |m, x| m.max(x.abs()));
        let worst = g.iter().zip(w).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(scale > 0.0, "{case}: reference gradient of {name} is zero");
        assert!(
            worst <= 1e-4 * scale,
            "{case}: {name} gradient off by {worst} (scale {scale})"
        );
    }
    got
}

fn check_case(case: &str) {
    let r = reference(case);
    let got = check_loss_and_grads(case, &ept::runtime::cpu_device(true));
    let path = case_dir(case).join("prompt.safetensors");
    let ex = examples(&r);

    // One by one equals the batch.
    let eval_dev = ept::runtime::cpu_device(false);
    let b_eval = Backbone::load(&model_path(&r), None, &eval_dev).unwrap();
    let (p_eval, _) = checkpoint::load(&path, &eval_dev).unwrap();
    let sums = ept::evaluate::example_loss_sums(b_eval.model.as_ref(), &p_eval, &ex, 1);
    for (i, (got, want)) in sums.iter().zip(&r.per_example_loss_sum).enumerate() {
        assert!(
            close(*got, *want, 1e-4, 1e-3),
            "{case} example {i}: {got} vs {want}"
        );
    }

    // The materialised prompt (P_new, A, B; no fusion, no experts) gives the same loss.
    let mat = p_eval.materialize();
    assert!(mat.fusion.is_none() && mat.multi_space.is_none());
    let mat_loss = scalar(mean_loss(&b_eval, &mat, &ex, 0));
    assert!(
        close(mat_loss, r.loss, 1e-4, 1e-6),
        "{case}: materialised {mat_loss} vs {}",
        r.loss
    );

    if let Some(padded) = r.loss_padded_to_m {
        let ours = scalar(mean_loss(&b_eval, &p_eval, &ex, r.m));
        assert!(
            close(ours, padded, 1e-4, 1e-6),
            "{case}: padded to m {ours} vs {padded}"
        );
        assert!(
            close(ours, got, 1e-5, 1e-6),
            "{case}: padded to m {ours} vs dynamic {got}"
        );
    }
}

#[test]
fn prompt_tuning() {
    check_case("pt");
}
#[test]
fn dept() {
    check_case("dept");
}
#[test]
fn ept_cross_attention() {
    check_case("ept-cross");
}
#[test]
fn ept_literal() {
    check_case("ept-literal");
}
#[test]
fn ept_prompt_softmax() {
    check_case("ept-prompt-softmax");
}
#[test]
fn ablation_decomposition_only() {
    check_case("ablate-decomp");
}
#[test]
fn ablation_decomposition_fusion() {
    check_case("ablate-decomp-fusion");
}
#[test]
fn ablation_decomposition_multispace() {
    check_case("ablate-decomp-multispace");
}
#[test]
fn ablation_multispace_only() {
    check_case("ablate-multispace");
}
#[test]
fn ept_on_gated_untied_t5() {
    check_case("ept-cross-gated");
}
#[test]
fn inputs_shorter_than_m_equal_padding_to_m() {
    check_case("ept-short-batch");
}

// Decoders (PEFT's CAUSAL_LM composition; A·B on source and target positions < m).
#[test]
fn decoder_prompt_tuning() {
    check_case("llama-pt");
}
#[test]
fn decoder_dept() {
    check_case("llama-dept");
}
#[test]
fn decoder_ept_cross_attention() {
    check_case("llama-ept-cross");
}
#[test]
fn decoder_ept_literal() {
    check_case("llama-ept-literal");
}
#[test]
fn decoder_ept_prompt_softmax() {
    check_case("llama-ept-prompt-softmax");
}
#[test]
fn decoder_ept_on_qwen2() {
    check_case("qwen2-ept-cross-gated");
}

/// Generation with the key/value cache, a prompt and A·B (row j at text
/// position j, generated tokens included) equals greedy decoding by full
/// recomputation, one by one and in a padded batch.
#[test]
fn decoder_generation_with_a_prompt_equals_full_recomputation() {
    for case in ["llama-ept-cross", "qwen2-ept-cross-gated"] {
        let r = reference(case);
        let device = ept::runtime::cpu_device(false);
        let dir = model_path(&r);
        let b = Backbone::load(&dir, None, &device).unwrap();
        let llama =
            ept::model::Llama::load(&dir, ept::io::weights::FloatType::F32, &device).unwrap();
        let (prompt, _) =
            checkpoint::load(&case_dir(case).join("prompt.safetensors"), &device).unwrap();
        let soft = prompt.soft_input();
        let inputs: Vec<Vec<u32>> = examples(&r).into_iter().map(|e| e.input_ids).collect();
        let steps = 6;
        let alone = ept::evaluate::generate_ids(b.model.as_ref(), &prompt, &inputs, 1, steps);
        let together = ept::evaluate::generate_ids(b.model.as_ref(), &prompt, &inputs, 4, steps);
        let eos = llama.config.eos_ids();
        for (i, input) in inputs.iter().enumerate() {
            let mut text = input.clone();
            let mut want = Vec::new();
            for _ in 0..steps {
                let next = llama.greedy_next(&soft, &text);
                want.push(next);
                text.push(next);
                if eos.contains(&next) {
                    break;
                }
            }
            assert_eq!(alone[i], want, "{case} example {i}: cached generation");
            assert_eq!(together[i], want, "{case} example {i}: batched generation");
        }
    }
}

#[test]
fn every_case_is_covered() {
    let on_disk: Vec<String> = std::fs::read_dir(fixtures().join("prompt"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for case in &on_disk {
        assert!(CASES.contains(&case.as_str()), "fixture {case} has no test");
    }
}

#[test]
fn checkpoint_roundtrip_is_exact() {
    let device = ept::runtime::cpu_device(false);
    let (p, meta) =
        checkpoint::load(&case_dir("ept-cross").join("prompt.safetensors"), &device).unwrap();
    let tmp = common::temp_dir("roundtrip");
    let out = tmp.join("p.safetensors");
    checkpoint::save(&out, &p, &meta).unwrap();
    let (q, meta2) = checkpoint::load(&out, &device).unwrap();
    assert_eq!(meta, meta2);
    let (a, b): (Vec<_>, Vec<_>) = (p.params(), q.params());
    assert_eq!(a.len(), b.len());
    for ((na, _, ta), (nb, _, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert_eq!(to_f32_vec((*ta).clone()), to_f32_vec((*tb).clone()), "{na}");
    }
    assert_eq!(q.fusion, p.fusion);
}

#[test]
fn svd_init_matches_torch() {
    use ept::prompt::init::{Align, Matrix, Split, svd_decompose};
    let bytes = std::fs::read(fixtures().join("prompt/svd_init.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let get = |n: &str| -> Vec<f32> {
        st.tensor(n)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let p = Matrix {
        rows: 7,
        cols: 32,
        data: get("P"),
    };
    for (align, key) in [(Align::ZeroPad, "AB"), (Align::Tile, "AB_tile")] {
        for split in [Split::Balanced, Split::Left] {
            let (a, b) = svd_decompose(&p, 24, 3, align, split).unwrap();
            let want = get(key);
            let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
            for i in 0..24 {
                for j in 0..32 {
                    let got: f32 = (0..3).map(|k| a.data[i * 3 + k] * b.data[k * 32 + j]).sum();
                    let w = want[i * 32 + j];
                    assert!(
                        (got - w).abs() <= 1e-4 * scale,
                        "{key} {split:?} ({i},{j}): {got} vs {w}"
                    );
                }
            }
        }
    }
}

/// Central differences of `f` at the entry of each trainable tensor with the
/// largest autodiff gradient, against that gradient.
/// `value` evaluates the same function as `f`, as precisely as it can (FD needs it).
fn finite_difference_check(
    case: &str,
    base: &SoftPrompt,
    f: &dyn Fn(&SoftPrompt) -> Tensor<1>,
    value: &dyn Fn(&SoftPrompt) -> f64,
    dtype: DType,
    eps: f64,
    tol: f64,
) {
    let device = ept::runtime::cpu_device(true);
    let tracked = base.clone().to_device(&device, true);
    let grads = f(&tracked).backward();
    let n = tracked.params().len();
    for k in 0..n {
        let (name, _, t) = &tracked.params()[k];
        let g = to_f32_vec(t.grad(&grads).unwrap());
        let idx = (0..g.len())
            .max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()))
            .unwrap();
        let value_at = |delta: f64| -> f64 {
            let mut p: SoftPrompt = base.clone().to_device(&device, false);
            let t = &mut p.params_mut()[k];
            let dims = t.dims();
            let mut v: Vec<f64> = to_f32_vec((*t).clone())
                .into_iter()
                .map(f64::from)
                .collect();
            v[idx] += delta;
            **t = Tensor::from_data(burn::tensor::TensorData::new(v, dims), (&device, dtype));
            if dtype == DType::F64 {
                for t in p.params_mut() {
                    *t = t.clone().cast(DType::F64);
                }
            }
            value(&p)
        };
        let fd = (value_at(eps) - value_at(-eps)) / (2.0 * eps);
        let ad = g[idx] as f64;
        assert!(
            (fd - ad).abs() <= tol * ad.abs().max(1e-2),
            "{case}: {name}[{idx}] finite difference {fd} vs autodiff {ad}"
        );
    }
}

/// Each module on its own: `f = Σ R ⊙ encoder_input(E)` for fixed random R and
/// E, so the low-rank update, every fusion reading and the experts are checked
/// without the backbone in between.
#[test]
fn finite_difference_gradients_per_module() {
    let device = ept::runtime::cpu_device(true);
    for case in [
        "pt",
        "dept",
        "ept-cross",
        "ept-literal",
        "ept-prompt-softmax",
        "ablate-multispace",
    ] {
        let (base, _) =
            checkpoint::load(&case_dir(case).join("prompt.safetensors"), &device).unwrap();
        let d = base.d_model();
        let (b, t) = (2, 10);
        let n = base.len() + t;
        let mut rng = ept::rng::Rng::new(7);
        let e: Vec<f32> = (0..b * t * d).map(|_| rng.normal() as f32).collect();
        let r: Vec<f32> = (0..b * n * d).map(|_| rng.normal() as f32).collect();
        let emb = Tensor::<3>::from_data(
            burn::tensor::TensorData::new(e, [b, t, d]),
            (&device, burn::tensor::DType::F32),
        );
        let weights = Tensor::<3>::from_data(
            burn::tensor::TensorData::new(r, [b, n, d]),
            (&device, burn::tensor::DType::F32),
        );
        let mask = Tensor::<2>::ones([b, t], (&device, burn::tensor::DType::F32));
        let f = |p: &SoftPrompt| -> Tensor<1> {
            let (input, _) = p.encoder_input(emb.clone(), mask.clone());
            (input * weights.clone()).sum()
        };
        // The value side runs in f64 so rounding does not swamp the differences.
        let (emb64, w64) = (
            emb.clone().cast(DType::F64),
            weights.clone().cast(DType::F64),
        );
        let value = |p: &SoftPrompt| -> f64 {
            let (input, _) = p.encoder_input(emb64.clone(), mask.clone());
            let s = (input * w64.clone()).sum();
            s.into_data().convert::<f64>().try_to_vec::<f64>().unwrap()[0]
        };
        finite_difference_check(case, &base, &f, &value, DType::F64, 1e-5, 1e-4);
    }
}

/// The whole model: the loss of EPT on the gated-GELU T5 (smooth, unlike ReLU
/// feed-forwards, whose kinks defeat finite differences).
#[test]
fn finite_difference_gradients_through_the_model() {
    let case = "ept-cross-gated";
    let r = reference(case);
    let device = ept::runtime::cpu_device(true);
    let b = Backbone::load(&model_path(&r), None, &device).unwrap();
    let (base, _) = checkpoint::load(&case_dir(case).join("prompt.safetensors"), &device).unwrap();
    let ex = examples(&r);
    let f = |p: &SoftPrompt| mean_loss(&b, p, &ex, 0);
    finite_difference_check(
        case,
        &base,
        &f,
        &|p: &SoftPrompt| scalar(f(p)),
        DType::F32,
        2e-3,
        3e-2,
    );
}
