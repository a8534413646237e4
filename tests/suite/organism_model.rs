//! The shipped model organisms (`assets/organism`, a T5, and
//! `assets/organism-llama`, a Llama): each is what its recipe says,
//! transformers computes the same losses on it (committed fixtures made by
//! `scripts/check_organism.py`), pretraining is deterministic in its seed,
//! and prompt tuning on it learns: PT, DePT and EPT beat the majority class
//! of `toy-sst2` within the README's step budget (`examples/toy-sst2.toml`,
//! `examples/toy-sst2-llama.toml`).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{ept, ept_env, temp_dir};
use ept::train::pretrain::{LlamaShape, PretrainConfig};

/// The built-in organisms: `--model` names and `assets/` folders.
const ORGANISMS: [&str; 2] = ["organism", "organism-llama"];

fn organism(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets")
        .join(name)
}

/// The losses transformers computes on organism `name` (scripts/check_organism.py).
fn transformers_fixture(name: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .join("transformers_losses.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn stdout_json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().expect("a JSON line")).unwrap()
}

/// `name`'s `pretrain.json`, after checking that the model is small and
/// that pretraining more than halved the held-out loss.
fn pretrain_record(name: &str) -> serde_json::Value {
    let dir = organism(name);
    let size = std::fs::metadata(dir.join("model.safetensors"))
        .unwrap()
        .len();
    assert!(size < 5 << 20, "{name}: model.safetensors is {size} bytes");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("pretrain.json")).unwrap()).unwrap();
    assert!(
        record["final_eval_loss"].as_f64().unwrap()
            < record["first_eval_loss"].as_f64().unwrap() / 2.0,
        "{name}"
    );
    record
}

#[test]
fn the_shipped_organism_is_small_and_made_by_the_documented_recipe() {
    let record = pretrain_record("organism");
    // `ept pretrain --out assets/organism` with no other flag is the recipe.
    let config: PretrainConfig = serde_json::from_value(record["config"].clone()).unwrap();
    assert_eq!(config, PretrainConfig::default());
    // It loads as a model like any other, and `organism` names it.
    let info = stdout_json(&ept(&["inspect", "--model", "organism", "--json"]));
    assert_eq!(info["d_model"], config.model.d_model);
}

#[test]
fn the_shipped_decoder_organism_is_small_and_made_by_the_documented_recipe() {
    let record = pretrain_record("organism-llama");
    // `ept pretrain --arch llama --out assets/organism-llama` with no other flag is the recipe.
    let config: PretrainConfig<LlamaShape> =
        serde_json::from_value(record["config"].clone()).unwrap();
    assert_eq!(config, PretrainConfig::<LlamaShape>::default());
    // It learned every mixed-in task (held-out exact match, %).
    for (task, v) in record["final_exact_match"].as_object().unwrap() {
        assert!(v.as_f64().unwrap() >= 90.0, "{task}: {v}");
    }
    // `organism-llama` names it, and it is the Llama its recipe describes.
    let info = stdout_json(&ept(&["inspect", "--model", "organism-llama", "--json"]));
    assert_eq!(info["architecture"], "llama");
    assert_eq!(info["hidden_size"], config.model.hidden_size);
    assert_eq!(info["layers"], config.model.num_hidden_layers);
    assert_eq!(info["num_kv_heads"], config.model.num_key_value_heads);
    assert_eq!(info["tied_head"], config.model.tie_word_embeddings);
}

#[test]
fn transformers_computes_the_same_losses_on_the_organism() {
    check_transformers_losses("organism");
}

/// The decoder organism as transformers' `LlamaForCausalLM` scores it
/// (`<s> source`, then `target </s>` scored).
#[test]
fn transformers_computes_the_same_losses_on_the_decoder_organism() {
    check_transformers_losses("organism-llama");
}

/// `ept eval` on every toy task's validation split against the fixture of
/// organism `name`: the same target tokens, the loss within 1e-4 relative.
fn check_transformers_losses(name: &str) {
    let fixture = transformers_fixture(name);
    let losses = fixture["losses"].as_object().unwrap();
    assert_eq!(losses.len(), 4);
    for (task, want) in losses {
        let got = stdout_json(&ept(&[
            "eval",
            "--task",
            task,
            "--split",
            "validation",
            "--model",
            name,
            "--json",
        ]));
        let (g, w) = (
            got["loss"].as_f64().unwrap(),
            want["loss"].as_f64().unwrap(),
        );
        assert_eq!(got["tokens"], want["tokens"], "{name} {task}");
        assert!(
            (g - w).abs() <= 1e-4 * w,
            "{name} {task}: ept {g} vs transformers {w}"
        );
    }
}

/// bf16 mixed precision (`--dtype bf16-mixed`) against transformers under
/// `torch.autocast("cpu", dtype=torch.bfloat16)` (fixture by
/// scripts/check_organism.py). Autocast rounds more than ept does (every
/// product's inputs and outputs), so the tolerance is 5e-3 relative; the
/// losses must also differ from f32's, or nothing was rounded. Run on the
/// packed kernel this CPU has (AMX tiles, else AVX512-BF16), and on the
/// portable path; on both organisms.
#[test]
fn bf16_mixed_precision_is_close_to_torch_autocast() {
    for name in ORGANISMS {
        bf16_mixed_against_autocast(name);
    }
}

fn bf16_mixed_against_autocast(name: &str) {
    let fixture = transformers_fixture(name);
    for (task, want) in fixture["losses"].as_object().unwrap() {
        let autocast = want["bf16_mixed_loss"].as_f64().unwrap();
        let f32_loss = want["loss"].as_f64().unwrap();
        for no_amx in ["0", "1"] {
            let out = ept_env(
                &[
                    "eval",
                    "--task",
                    task,
                    "--split",
                    "validation",
                    "--model",
                    name,
                    "--dtype",
                    "bf16-mixed",
                    "--json",
                ],
                &[("EPT_NO_AMX", no_amx)],
            );
            let got = stdout_json(&out)["loss"].as_f64().unwrap();
            assert!(
                (got - autocast).abs() <= 5e-3 * autocast,
                "{name} {task} (EPT_NO_AMX={no_amx}): ept {got} vs autocast {autocast}"
            );
            assert!(
                (got - f32_loss).abs() > 1e-5 * f32_loss,
                "{name} {task} (EPT_NO_AMX={no_amx}): {got} is f32's loss: nothing was rounded"
            );
        }
    }
}

#[test]
fn pretraining_is_deterministic_in_its_seed() {
    let dir = temp_dir("pretrain");
    // (--arch, what `ept inspect` calls the width)
    for (arch, width) in [("t5", "d_model"), ("llama", "hidden_size")] {
        let run = |name: &str| {
            let out = dir.join(format!("{arch}-{name}"));
            let o = ept(&[
                "pretrain",
                "--arch",
                arch,
                "--out",
                out.to_str().unwrap(),
                "--steps",
                "3",
                "--d-model",
                "32",
                "--layers",
                "1",
                "--batch-size",
                "8",
                "--json",
            ]);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            out
        };
        let (a, b) = (run("a"), run("b"));
        for f in ["model.safetensors", "tokenizer.json", "config.json"] {
            let same = std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap();
            assert!(
                same,
                "{arch}: {f} differs between two runs with the same seed"
            );
        }
        // What it writes loads as a model, and the command refuses to overwrite it.
        let info = stdout_json(&ept(&["inspect", "--model", a.to_str().unwrap(), "--json"]));
        assert_eq!(info["architecture"], arch);
        assert_eq!(info[width], 32);
        let o = ept(&[
            "pretrain",
            "--arch",
            arch,
            "--out",
            a.to_str().unwrap(),
            "--steps",
            "1",
        ]);
        assert_eq!(o.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&o.stderr).contains("--overwrite"));
    }
    // An architecture it does not pretrain is a one-line error naming the flag and the choices.
    let out = dir.join("gpt2");
    let o = ept(&["pretrain", "--arch", "gpt2", "--out", out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.starts_with("ept: --arch gpt2") && err.lines().count() == 1,
        "{err}"
    );
    assert!(err.contains("t5") && err.contains("llama"), "{err}");
    assert!(!out.exists());
}

#[test]
fn every_word_of_the_language_is_one_piece_of_the_organism_tokenizers() {
    for name in ORGANISMS {
        let tk = tokenizers::Tokenizer::from_file(organism(name).join("tokenizer.json")).unwrap();
        for word in ept::organism::vocabulary() {
            let pieces = tk.encode(word, false).unwrap().get_tokens().to_vec();
            assert_eq!(pieces, [format!("▁{word}")], "{name}: {word}");
        }
    }
}

/// Trains `method` on toy-sst2 with the README's settings (examples/toy-sst2.toml)
/// and returns the validation and test accuracy.
fn toy_sst2_accuracy(method: &str, runs: &Path) -> (f64, f64) {
    toy_sst2_accuracy_in("toy-sst2.toml", method, "f32", runs)
}

/// [`toy_sst2_accuracy`] with the settings of `examples/{config}`, the frozen model in `dtype`.
fn toy_sst2_accuracy_in(config: &str, method: &str, dtype: &str, runs: &Path) -> (f64, f64) {
    let config = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(config);
    let name = format!("{method}-{dtype}");
    let o = ept(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--method",
        method,
        "--dtype",
        dtype,
        "--runs-dir",
        runs.to_str().unwrap(),
        "--name",
        &name,
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run_toml = std::fs::read_to_string(runs.join(&name).join("run.toml")).unwrap();
    assert!(
        run_toml.contains(&format!("dtype = \"{dtype}\"")),
        "{run_toml}"
    );
    let results: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(runs.join(&name).join("results.json")).unwrap(),
    )
    .unwrap();
    let accuracy = |split: &str| results[split]["metrics"]["accuracy"].as_f64().unwrap();
    (accuracy("validation"), accuracy("test"))
}

/// "A clear margin": the README's run of each method scores 73–82 % here
/// (docs/ORGANISM.md); 65 % is far outside what a prompt that learned nothing
/// scores on 200 and 500 balanced rows (50 ± 3.5 and 50 ± 2.2 per standard deviation).
const MARGIN_OVER_MAJORITY: f64 = 15.0;

#[test]
fn prompt_tuning_on_the_organism_beats_the_majority_class() {
    // toy-sst2's classes are balanced (tests/organism.rs): the majority class scores 50 %.
    let runs = temp_dir("learning");
    for method in ["pt", "dept", "ept"] {
        let (validation, test) = toy_sst2_accuracy(method, &runs);
        assert!(
            validation >= MARGIN_OVER_MAJORITY + 50.0 && test >= MARGIN_OVER_MAJORITY + 50.0,
            "{method}: validation {validation}, test {test} (majority class 50)"
        );
    }
}

/// The same on the decoder organism (`organism-llama`) with its settings,
/// `examples/toy-sst2-llama.toml`: the README's but the learning rates,
/// 0.1 for the prompt and 0.003 for the low-rank pair. (The T5's 0.3 and
/// 0.01 are far above the decoder's embedding scale, N(0, 0.02²) at
/// initialisation: there DePT stayed at chance, 53.0 / 52.4, and PT reached
/// 68.5 / 68.4.) Measured with these settings, validation / test, seeds 42, 1
/// and 2 (docs/ORGANISM.md): PT 83.5 / 81.6, 80.5 / 82.8, 80.5 / 81.4;
/// DePT 95.5 / 94.2, 89.5 / 90.2, 93.5 / 91.2; EPT 93.0 / 90.4,
/// 89.5 / 91.2, 91.5 / 89.6.
#[test]
fn prompt_tuning_on_the_decoder_organism_beats_the_majority_class() {
    let runs = temp_dir("learning-llama");
    for method in ["pt", "dept", "ept"] {
        let (validation, test) = toy_sst2_accuracy_in("toy-sst2-llama.toml", method, "f32", &runs);
        let run_toml =
            std::fs::read_to_string(runs.join(format!("{method}-f32/run.toml"))).unwrap();
        assert!(
            run_toml.contains("model = \"organism-llama\""),
            "{run_toml}"
        );
        assert!(
            validation >= MARGIN_OVER_MAJORITY + 50.0 && test >= MARGIN_OVER_MAJORITY + 50.0,
            "{method} on organism-llama: validation {validation}, test {test} (majority class 50)"
        );
    }
}

/// The same learning test for EPT with the frozen model in bf16 mixed
/// precision (dense layers on AMX tiles or AVX512-BF16 where the CPU has them): the prompt
/// and its optimizer stay in f32 and still learn.
#[test]
fn ept_learns_on_the_organism_in_bf16_mixed_precision() {
    let runs = temp_dir("learning-bf16");
    let (validation, test) = toy_sst2_accuracy_in("toy-sst2.toml", "ept", "bf16-mixed", &runs);
    assert!(
        validation >= MARGIN_OVER_MAJORITY + 50.0 && test >= MARGIN_OVER_MAJORITY + 50.0,
        "ept bf16-mixed: validation {validation}, test {test} (majority class 50)"
    );
}
