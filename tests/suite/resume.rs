//! Resume: a run killed (-9) at a random moment and resumed ends with tensors
//! bit-identical to an uninterrupted run; a crash in the middle of writing a
//! checkpoint never leaves a corrupt `last/`.

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::{fixtures, model_dir, temp_dir};

fn args(runs: &Path, name: &str) -> Vec<String> {
    let data = fixtures().join("data.jsonl").display().to_string();
    [
        "train",
        "--model",
        model_dir("gated-untied").to_str().unwrap(),
        "--train-file",
        &data,
        "--validation-file",
        &data,
        "--method",
        "ept",
        "--l",
        "10",
        "--s",
        "6",
        "--m",
        "64",
        "--lr-low-rank",
        "0.01",
        "--max-steps",
        "24",
        "--warmup-steps",
        "3",
        "--batch-size",
        "2",
        "--eval-every",
        "6",
        "--save-every",
        "2",
        "--seed",
        "5",
        "--runs-dir",
        runs.to_str().unwrap(),
        "--name",
        name,
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn ept() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ept"))
}

/// Every tensor of a prompt file as raw f32 bits.
fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.data().to_vec()))
        .collect();
    v.sort();
    v
}

fn step_losses(dir: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

fn assert_same_run(a: &Path, b: &Path) {
    for f in [
        "last/prompt.safetensors",
        "best/prompt.safetensors",
        "last/optimizer.safetensors",
    ] {
        assert_eq!(tensors(&a.join(f)), tensors(&b.join(f)), "{f} differs");
    }
    assert_eq!(step_losses(a), step_losses(b));
}

#[test]
fn killed_and_resumed_equals_uninterrupted() {
    let runs = temp_dir("resume");
    let out = ept().args(args(&runs, "whole")).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let whole = runs.join("whole");

    // Kill after a pseudo-random number of step lines, several times over.
    for (k, kill_after) in [3usize, 8, 13, 19].into_iter().enumerate() {
        let name = format!("killed{k}");
        let mut child = ept()
            .args(args(&runs, &name))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for _ in 0..kill_after {
            lines.next().unwrap().unwrap();
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let dir = runs.join(&name);
        let out = ept()
            .args(["train", "--resume", dir.to_str().unwrap(), "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "resume {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_same_run(&whole, &dir);
    }
}

#[test]
fn crash_while_writing_a_checkpoint_leaves_a_usable_last() {
    let runs = temp_dir("resume-crash");
    let out = ept().args(args(&runs, "whole")).output().unwrap();
    assert!(out.status.success());
    let dir = runs.join("crashed");
    let out = ept()
        .args(args(&runs, "crashed"))
        .env("EPT_TEST_CRASH_IN_CHECKPOINT", "10")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the hook must abort the run");
    // The previous checkpoint (step 8) is intact and loads.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("last/state.json")).unwrap())
            .unwrap();
    assert_eq!(state["step"], 8);
    let device = ept::runtime::cpu_device(false);
    ept::prompt::checkpoint::load(&dir.join("last/prompt.safetensors"), &device).unwrap();
    let out = ept()
        .args(["train", "--resume", dir.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_run(&runs.join("whole"), &dir);
    // No temporary folders are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("last."))
        .collect();
    assert!(
        leftovers.iter().all(|n| n.starts_with("last.tmp")),
        "{leftovers:?}"
    );
}
