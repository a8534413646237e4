//! Llama-family decoders against transformers and PEFT: fixtures made by
//! `scripts/make_llama_fixtures.py` (tests/fixtures/llama/).
//!
//! Tolerances: per-example loss sums and the mean loss within 1e-4 relative;
//! logits within 1e-4 of max(1, |logit|); greedy generations identical, one by
//! one and in a padded batch; a padded batch equal to one-by-one within 1e-5
//! relative; bf16 compute against transformers' bf16 run within 2e-2 relative.

use crate::common;

use burn::tensor::{DType, Tensor, TensorData};
use common::close;
use ept::evaluate::{corpus_loss, example_loss_sums, generate_ids};
use ept::io::weights::FloatType;
use ept::model::batch::TokenizedExample;
use ept::model::{Backbone, Llama, SoftInput};
use ept::prompt::{NoPrompt, PromptInput};
use serde::Deserialize;
use std::path::PathBuf;

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
struct MeanRef {
    mean_loss: f64,
}

#[derive(Deserialize)]
struct PeftRef {
    prompt_file: String,
    per_example_loss_sum: Vec<f64>,
    mean_loss: f64,
    generated_ids: Vec<Vec<u32>>,
}

#[derive(Deserialize)]
struct Reference {
    examples: Vec<RefExample>,
    mean_loss: f64,
    batch_mean_loss: f64,
    batch_generated_ids: Vec<Vec<u32>>,
    bf16: Option<MeanRef>,
    peft_pt: Option<PeftRef>,
}

fn llama_dir(name: &str) -> PathBuf {
    common::fixtures().join("llama").join(name)
}

/// Every checkpoint folder under tests/fixtures/llama.
fn fixture_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(common::fixtures().join("llama"))
        .expect("tests/fixtures/llama exists (scripts/make_llama_fixtures.py)")
        .filter_map(|e| {
            let e = e.unwrap();
            e.path()
                .join("reference.json")
                .is_file()
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
        .collect();
    names.sort();
    assert!(
        names.len() >= 6,
        "expected the six decoder fixtures, found {names:?}"
    );
    names
}

fn reference(name: &str) -> Reference {
    let text = std::fs::read_to_string(llama_dir(name).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn load(name: &str, dtype: FloatType) -> Backbone {
    Backbone::load(
        &llama_dir(name),
        Some(dtype),
        &ept::runtime::cpu_device(false),
    )
    .unwrap()
}

fn tokenized(name: &str, b: &Backbone, r: &Reference) -> Vec<TokenizedExample> {
    r.examples
        .iter()
        .map(|e| {
            let input_ids = b.tokenizer.encode(&e.source, None).unwrap();
            let label_ids = b.tokenizer.encode_target(&e.target).unwrap();
            assert_eq!(input_ids, e.input_ids, "{name}: source {:?}", e.source);
            assert_eq!(label_ids, e.label_ids, "{name}: target {:?}", e.target);
            assert_eq!(label_ids.len(), e.n_tokens);
            TokenizedExample {
                input_ids,
                label_ids,
            }
        })
        .collect()
}

fn check_model(name: &str) {
    let r = reference(name);
    let b = load(name, FloatType::F32);
    let examples = tokenized(name, &b, &r);
    let want: Vec<f64> = r.examples.iter().map(|e| e.loss_sum).collect();
    common::check_example_losses(name, b.model.as_ref(), &examples, &want, 1e-6);
    let report = corpus_loss(b.model.as_ref(), &NoPrompt, &examples, 4);
    assert!(
        close(report.loss, r.mean_loss, 1e-4, 1e-6),
        "{name}: mean {} vs {}",
        report.loss,
        r.mean_loss
    );
    let all = corpus_loss(b.model.as_ref(), &NoPrompt, &examples, examples.len());
    assert!(
        close(all.loss, r.batch_mean_loss, 1e-4, 1e-6),
        "{name}: batch mean {} vs transformers' padded batch {}",
        all.loss,
        r.batch_mean_loss
    );

    // Logits of the scored positions, through the model's own forward.
    let llama = Llama::load(
        &llama_dir(name),
        FloatType::F32,
        &ept::runtime::cpu_device(false),
    )
    .unwrap();
    for (i, e) in r.examples.iter().enumerate() {
        let Some(want) = &e.logits else { continue };
        let seq = [e.input_ids.as_slice(), e.label_ids.as_slice()].concat();
        let logits = llama.logits(&[seq]);
        let [_, _, v] = logits.dims();
        let got = ept::tensors::to_f32_vec(logits);
        let first = e.input_ids.len() - 1;
        assert_eq!(want.len(), e.label_ids.len(), "{name}: logits rows");
        for (k, row) in want.iter().enumerate() {
            for (j, &w) in row.iter().enumerate() {
                let g = got[(first + k) * v + j] as f64;
                assert!(
                    (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                    "{name} example {i} row {k} logit {j}: {g} vs {w}"
                );
            }
        }
    }

    let inputs: Vec<Vec<u32>> = r.examples.iter().map(|e| e.input_ids.clone()).collect();
    let alone = generate_ids(b.model.as_ref(), &NoPrompt, &inputs, 1, 8);
    let together = generate_ids(b.model.as_ref(), &NoPrompt, &inputs, inputs.len(), 8);
    for (i, e) in r.examples.iter().enumerate() {
        assert_eq!(
            alone[i], e.generated_ids,
            "{name} example {i}: greedy generation"
        );
        assert_eq!(
            together[i], r.batch_generated_ids[i],
            "{name} example {i}: batched generation"
        );
    }
}

#[test]
fn every_decoder_fixture_matches_transformers() {
    for name in fixture_names() {
        check_model(&name);
    }
}

#[test]
fn bf16_decoder_within_bf16_tolerance() {
    let name = "llama-bf16";
    let r = reference(name);
    let want = r
        .bf16
        .as_ref()
        .expect("llama-bf16 has a bf16 reference")
        .mean_loss;
    let b = load(name, FloatType::Bf16);
    let examples = tokenized(name, &b, &r);
    let got = corpus_loss(b.model.as_ref(), &NoPrompt, &examples, 6).loss;
    assert!(
        close(got, want, 2e-2, 1e-6),
        "bf16 mean loss {got} vs transformers {want}"
    );
    let mixed = load(name, FloatType::Bf16Mixed);
    let got = corpus_loss(mixed.model.as_ref(), &NoPrompt, &examples, 6).loss;
    assert!(
        close(got, r.mean_loss, 2e-2, 1e-6),
        "bf16-mixed mean loss {got} vs f32 {}",
        r.mean_loss
    );
}

/// A fixed prefix, as PEFT's prompt tuning prepends it.
struct Prefix(Tensor<2>);

impl PromptInput for Prefix {
    fn soft_input(&self) -> SoftInput {
        SoftInput {
            prefix: Some(self.0.clone()),
            position_update: None,
        }
    }
}

#[test]
fn prompt_tuning_matches_peft_causal_lm() {
    let mut checked = 0;
    for name in fixture_names() {
        let r = reference(&name);
        let Some(peft) = &r.peft_pt else { continue };
        let b = load(&name, FloatType::F32);
        let examples = tokenized(&name, &b, &r);
        let file = std::fs::read(llama_dir(&name).join(&peft.prompt_file)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&file).unwrap();
        let t = st.tensor("prompt").unwrap();
        let shape = t.shape().to_vec();
        let values = ept::tensors::f32_from_le(t.data());
        let device = ept::runtime::cpu_device(false);
        let prompt = Prefix(Tensor::from_data(
            TensorData::new(values, shape),
            (&device, DType::F32),
        ));
        let sums = example_loss_sums(b.model.as_ref(), &prompt, &examples, 1);
        let batched = example_loss_sums(b.model.as_ref(), &prompt, &examples, examples.len());
        for (i, &want) in peft.per_example_loss_sum.iter().enumerate() {
            assert!(
                close(sums[i], want, 1e-4, 1e-6),
                "{name} example {i}: {} vs PEFT {want}",
                sums[i]
            );
            assert!(
                close(batched[i], sums[i], 1e-5, 1e-6),
                "{name} example {i}: padded batch"
            );
        }
        let mean = corpus_loss(b.model.as_ref(), &prompt, &examples, 3).loss;
        assert!(
            close(mean, peft.mean_loss, 1e-4, 1e-6),
            "{name}: mean {mean} vs PEFT {}",
            peft.mean_loss
        );
        let inputs: Vec<Vec<u32>> = examples.iter().map(|e| e.input_ids.clone()).collect();
        let alone = generate_ids(b.model.as_ref(), &prompt, &inputs, 1, 8);
        let together = generate_ids(b.model.as_ref(), &prompt, &inputs, inputs.len(), 8);
        for (i, want) in peft.generated_ids.iter().enumerate() {
            assert_eq!(&alone[i], want, "{name} example {i}: PEFT generation");
            assert_eq!(
                together[i], alone[i],
                "{name} example {i}: batched generation with a prompt"
            );
        }
        checked += 1;
    }
    assert!(checked >= 2, "two fixtures carry PEFT references");
}

/// A change made to a valid `config.json`.
type ConfigEdit = dyn Fn(&mut serde_json::Value);

/// Refused configs name the file and the field.
#[test]
fn unsupported_decoder_configs_are_one_line_errors() {
    let src = llama_dir("llama-gqa");
    let cases: [(&str, &ConfigEdit, &str); 4] = [
        (
            "model-type",
            &|c| c["model_type"] = "gemma".into(),
            "model_type",
        ),
        (
            "yarn",
            &|c| {
                c.as_object_mut().unwrap().remove("rope_parameters");
                c["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
            },
            "rope_type",
        ),
        ("act", &|c| c["hidden_act"] = "gelu".into(), "hidden_act"),
        (
            "kv",
            &|c| c["num_key_value_heads"] = 3.into(),
            "num_key_value_heads",
        ),
    ];
    for (tag, edit, field) in cases {
        let dir = common::temp_dir(&format!("llama-bad-{tag}"));
        common::copy_dir(&src, &dir);
        let path = dir.join("config.json");
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        edit(&mut config);
        std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
        let err = match Backbone::load(&dir, None, &ept::runtime::cpu_device(false)) {
            Ok(_) => panic!("{tag}: a bad config loaded"),
            Err(e) => e.to_string(),
        };
        assert!(!err.contains('\n'), "{tag}: one line: {err}");
        assert!(
            err.contains("config.json") && err.contains(field),
            "{tag}: names the file and `{field}`: {err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Byte-fallback BPE (Llama 2) and byte-level BPE (Qwen2, Llama 3) from
/// `tokenizer.json`: ids with the post-processor's specials (sources),
/// targets without them plus EOS, and decoding, as the `tokenizers` library
/// of transformers gives them (tests/fixtures/llama/tokenizer_cases.json).
#[test]
fn decoder_tokenizers_match_the_reference() {
    let text =
        std::fs::read_to_string(common::fixtures().join("llama/tokenizer_cases.json")).unwrap();
    let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut n = 0;
    for kind in ["bytefallback", "bytelevel-qwen", "bytelevel-llama3"] {
        let entry = &cases[kind];
        let folder = entry["folder"].as_str().unwrap();
        let b = load(folder, FloatType::F32);
        let eos = b.tokenizer.eos_id;
        for case in entry["cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
            let mut target: Vec<u32> =
                serde_json::from_value(case["ids_no_special"].clone()).unwrap();
            target.push(eos);
            assert_eq!(
                b.tokenizer.encode(text, None).unwrap(),
                ids,
                "{kind}: {text:?}"
            );
            assert_eq!(
                b.tokenizer.encode_target(text).unwrap(),
                target,
                "{kind}: target {text:?}"
            );
            assert_eq!(
                b.tokenizer.decode(&ids).unwrap(),
                case["decoded"].as_str().unwrap(),
                "{kind}: decode {text:?}"
            );
            n += 1;
        }
    }
    assert!(n >= 9, "{n} cases");
}

/// The command line on a decoder: `ept eval` with PEFT's prompt gives PEFT's
/// loss, `ept export --format peft` writes a `CAUSAL_LM` adapter of the
/// decoder's shape, and `ept train` runs end to end.
#[test]
fn decoder_eval_export_and_train_from_the_command_line() {
    let dir = llama_dir("llama-gqa");
    let r = reference("llama-gqa");
    let peft = r.peft_pt.as_ref().unwrap();
    let prompt = dir.join(&peft.prompt_file);
    let run = |args: &[&str]| {
        let out = common::ept(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let model = dir.to_str().unwrap();
    let data = common::fixtures().join("data.jsonl");
    let data = data.to_str().unwrap();
    let loss = |extra: &[&str]| {
        let mut args = vec!["eval", "--model", model, "--data", data, "--json"];
        args.extend_from_slice(extra);
        let v: serde_json::Value = serde_json::from_str(run(&args).trim()).unwrap();
        v["loss"].as_f64().unwrap()
    };
    let bare = loss(&[]);
    assert!(
        close(bare, r.mean_loss, 1e-4, 1e-6),
        "eval {bare} vs transformers {}",
        r.mean_loss
    );
    let with_prompt = loss(&["--prompt", prompt.to_str().unwrap()]);
    assert!(
        close(with_prompt, peft.mean_loss, 1e-4, 1e-6),
        "eval {with_prompt} vs PEFT {}",
        peft.mean_loss
    );

    let tmp = common::temp_dir("llama-cli");
    let out = tmp.join("peft");
    run(&[
        "export",
        prompt.to_str().unwrap(),
        "--format",
        "peft",
        "--model",
        model,
        "--out",
        out.to_str().unwrap(),
    ]);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["token_dim"], 64);
    assert_eq!(cfg["num_layers"], 2);
    assert_eq!(cfg["num_attention_heads"], 4);
    assert_eq!(cfg["num_virtual_tokens"], 5);

    let stdout = run(&[
        "train",
        "--model",
        model,
        "--task",
        "toy-sst2",
        "--method",
        "ept",
        "--l",
        "20",
        "--s",
        "10",
        "--r",
        "2",
        "--m",
        "64",
        "--max-steps",
        "12",
        "--eval-every",
        "6",
        "--batch-size",
        "8",
        "--runs-dir",
        tmp.to_str().unwrap(),
        "--name",
        "ept-llama",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    let acc = v["results"]["test"]["metrics"]["accuracy"]
        .as_f64()
        .unwrap_or(f64::NAN);
    assert!(
        (0.0..=100.0).contains(&acc),
        "test accuracy {acc}: {stdout}"
    );
    assert!(tmp.join("ept-llama/best/prompt.safetensors").is_file());
    let _ = std::fs::remove_dir_all(&tmp);
}
