//! Prompt checkpoints and the run folder `--resume` reads.

use super::*;

#[test]
fn prompt_checkpoint() {
    let f = fixtures().join("prompt");
    let p = &["prompt.safetensors"];
    let mut seeds: Vec<Seed> = [
        "pt",
        "dept",
        "ept-cross",
        "ept-cross-gated",
        "ept-literal",
        "ablate-multispace",
    ]
    .iter()
    .map(|d| seed(f.join(d), p))
    .collect();
    seeds.push(seed(
        fixtures().join("llama/llama-gqa"),
        &["pt_prompt.safetensors"],
    ));
    fuzz("prompt", &seeds, true, |_, path| {
        let r = ept::prompt::checkpoint::load(path, &device());
        if let Ok((prompt, _)) = &r {
            let _ = ept::prompt::checkpoint::check_fits(path, prompt, 16);
        }
        r.into()
    });
}

/// A finished short run on the T5 fixture with a checkpoint in `last/`
/// (made by the binary, as `resume.rs` does), in `dir/run`.
pub(super) fn make_run(dir: &Path) -> PathBuf {
    let data = fixtures().join("data.jsonl");
    let model = fixtures().join("t5/gated-untied");
    let out = Command::new(env!("CARGO_BIN_EXE_ept"))
        .args(["train", "--model"])
        .arg(&model)
        .arg("--train-file")
        .arg(&data)
        .arg("--validation-file")
        .arg(&data)
        .args([
            "--method",
            "ept",
            "--l",
            "10",
            "--s",
            "6",
            "--m",
            "64",
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--eval-every",
            "2",
            "--save-every",
            "2",
            "--name",
            "run",
        ])
        .arg("--runs-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = dir.join("run");
    assert!(run.join("last/state.json").is_file(), "the run saved last/");
    run
}

/// `last/` of a run: state.json, the prompt, and (`optimizer: true`) the
/// optimiser's moments, read as `ept train --resume` reads them.
fn fuzz_run_folder(reader: &str, files: &[&'static str]) {
    let made = temp_dir(&format!("fuzz-{reader}-made"));
    let run = make_run(&made);
    // The optimiser's parameter count, from the valid file.
    let bytes = std::fs::read(run.join("last/optimizer.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let n_params = st
        .names()
        .iter()
        .filter_map(|n| n.strip_prefix("m.")?.parse::<usize>().ok())
        .max()
        .map_or(0, |i| i + 1);
    fuzz(reader, &[seed(run.join("last"), files)], true, |last, _| {
        // `last_dir` and `load_last` look for `last/` inside the run folder.
        let run = last.parent().unwrap().join("run");
        if !run.join("last").exists() {
            std::fs::create_dir_all(&run).unwrap();
            std::os::unix::fs::symlink(last, run.join("last")).unwrap();
        }
        let _ = ept::train::state::last_dir(&run);
        let mut optim =
            ept::train::optim::AdamW::new(ept::train::optim::AdamWConfig::default(), n_params);
        ept::train::state::load_last(&run, &mut optim, &device()).into()
    });
    let _ = std::fs::remove_dir_all(&made);
}

#[test]
fn run_folder_state() {
    fuzz_run_folder("run-state", &["state.json", "prompt.safetensors"]);
}

/// `optimizer.safetensors` of `last/`: its moments must be F32 and of their
/// parameters' shapes (a 1-D `m.0` once panicked on `shape[1]`).
#[test]
fn run_folder_optimizer() {
    fuzz_run_folder("run-optimizer", &["optimizer.safetensors"]);
}
