//! The shipped model organism (`assets/organism`): it is what its recipe
//! says, transformers computes the same losses on it (committed fixture made
//! by `scripts/check_organism.py`), pretraining is deterministic in its seed,
//! and prompt tuning on it learns: PT, DePT and EPT beat the majority class
//! of `toy-sst2` within the README's step budget.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{ept, ept_env, temp_dir};
use ept::train::pretrain::PretrainConfig;

fn organism() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/organism")
}

/// The losses transformers computes on the organism (scripts/check_organism.py).
fn transformers_fixture() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/organism/transformers_losses.json");
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

#[test]
fn the_shipped_organism_is_small_and_made_by_the_documented_recipe() {
    let dir = organism();
    let size = std::fs::metadata(dir.join("model.safetensors"))
        .unwrap()
        .len();
    assert!(size < 5 << 20, "model.safetensors is {size} bytes");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("pretrain.json")).unwrap()).unwrap();
    // `ept pretrain --out assets/organism` with no other flag is the recipe.
    let config: PretrainConfig = serde_json::from_value(record["config"].clone()).unwrap();
    assert_eq!(config, PretrainConfig::default());
    assert!(
        record["final_eval_loss"].as_f64().unwrap()
            < record["first_eval_loss"].as_f64().unwrap() / 2.0
    );
    // It loads as a model like any other, and `organism` names it.
    let info = stdout_json(&ept(&["inspect", "--model", "organism", "--json"]));
    assert_eq!(info["d_model"], config.d_model);
}

#[test]
fn transformers_computes_the_same_losses_on_the_organism() {
    let fixture = transformers_fixture();
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
            "organism",
            "--json",
        ]));
        let (g, w) = (
            got["loss"].as_f64().unwrap(),
            want["loss"].as_f64().unwrap(),
        );
        assert_eq!(got["tokens"], want["tokens"], "{task}");
        assert!(
            (g - w).abs() <= 1e-4 * w,
            "{task}: ept {g} vs transformers {w}"
        );
    }
}

/// bf16 mixed precision (`--dtype bf16-mixed`) against transformers under
/// `torch.autocast("cpu", dtype=torch.bfloat16)` (fixture by
/// scripts/check_organism.py). Autocast rounds more than ept does (every
/// product's inputs and outputs), so the tolerance is 5e-3 relative; the
/// losses must also differ from f32's, or nothing was rounded. Run on the
/// packed kernel this CPU has (AMX tiles, else AVX512-BF16), and on the
/// portable path.
#[test]
fn bf16_mixed_precision_is_close_to_torch_autocast() {
    let fixture = transformers_fixture();
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
                    "organism",
                    "--dtype",
                    "bf16-mixed",
                    "--json",
                ],
                &[("EPT_NO_AMX", no_amx)],
            );
            let got = stdout_json(&out)["loss"].as_f64().unwrap();
            assert!(
                (got - autocast).abs() <= 5e-3 * autocast,
                "{task} (EPT_NO_AMX={no_amx}): ept {got} vs autocast {autocast}"
            );
            assert!(
                (got - f32_loss).abs() > 1e-5 * f32_loss,
                "{task} (EPT_NO_AMX={no_amx}): {got} is f32's loss: nothing was rounded"
            );
        }
    }
}

#[test]
fn pretraining_is_deterministic_in_its_seed() {
    let dir = temp_dir("pretrain");
    let run = |name: &str| {
        let out = dir.join(name);
        let o = ept(&[
            "pretrain",
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
        assert!(same, "{f} differs between two runs with the same seed");
    }
    // What it writes loads as a model, and the command refuses to overwrite it.
    let info = stdout_json(&ept(&["inspect", "--model", a.to_str().unwrap(), "--json"]));
    assert_eq!(info["d_model"], 32);
    let o = ept(&["pretrain", "--out", a.to_str().unwrap(), "--steps", "1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--overwrite"));
}

#[test]
fn every_word_of_the_language_is_one_piece_of_the_organism_tokenizer() {
    let tk = tokenizers::Tokenizer::from_file(organism().join("tokenizer.json")).unwrap();
    for word in ept::organism::vocabulary() {
        let pieces = tk.encode(word, false).unwrap().get_tokens().to_vec();
        assert_eq!(pieces, [format!("▁{word}")], "{word}");
    }
}

/// Trains `method` on toy-sst2 with the README's settings (examples/toy-sst2.toml)
/// and returns the validation and test accuracy.
fn toy_sst2_accuracy(method: &str, runs: &Path) -> (f64, f64) {
    toy_sst2_accuracy_in(method, "f32", runs)
}

fn toy_sst2_accuracy_in(method: &str, dtype: &str, runs: &Path) -> (f64, f64) {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/toy-sst2.toml");
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

/// The same learning test for EPT with the frozen model in bf16 mixed
/// precision (dense layers on AMX tiles or AVX512-BF16 where the CPU has them): the prompt
/// and its optimizer stay in f32 and still learn.
#[test]
fn ept_learns_on_the_organism_in_bf16_mixed_precision() {
    let runs = temp_dir("learning-bf16");
    let (validation, test) = toy_sst2_accuracy_in("ept", "bf16-mixed", &runs);
    assert!(
        validation >= MARGIN_OVER_MAJORITY + 50.0 && test >= MARGIN_OVER_MAJORITY + 50.0,
        "ept bf16-mixed: validation {validation}, test {test} (majority class 50)"
    );
}
