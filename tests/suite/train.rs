//! `ept train` end to end on a fixture model: the loss falls, the run folder
//! holds what it should, and bad settings are one-line errors.

use crate::common;

use std::process::Command;

use common::{fixtures, model_dir, temp_dir};

fn train(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ept"))
        .arg("train")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn training_lowers_the_loss_and_writes_the_run_folder() {
    let runs = temp_dir("train-runs");
    let data = fixtures().join("data.jsonl");
    let model = model_dir("gated-untied");
    for method in ["pt", "dept", "ept"] {
        let out = train(&[
            "--model",
            model.to_str().unwrap(),
            "--train-file",
            data.to_str().unwrap(),
            "--validation-file",
            data.to_str().unwrap(),
            "--test-file",
            data.to_str().unwrap(),
            "--method",
            method,
            "--l",
            "10",
            "--s",
            "6",
            "--m",
            "64",
            "--lr-low-rank",
            "0.01",
            "--max-steps",
            "40",
            "--warmup-steps",
            "4",
            "--batch-size",
            "3",
            "--eval-every",
            "20",
            "--runs-dir",
            runs.to_str().unwrap(),
            "--name",
            method,
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{method}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let logs: Vec<serde_json::Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // 40 step lines and the summary.
        assert_eq!(logs.len(), 41, "{method}");
        let vals: Vec<f64> = logs
            .iter()
            .filter_map(|l| {
                l.get("validation")
                    .and_then(|v| v.get("loss"))
                    .and_then(|v| v.as_f64())
            })
            .collect();
        assert_eq!(vals.len(), 2);
        let first_train = logs[0]["loss"].as_f64().unwrap();
        assert!(
            vals[1] < first_train * 0.9,
            "{method}: validation loss {vals:?} vs first step {first_train}"
        );
        let dir = runs.join(method);
        for f in [
            "config.json",
            "metrics.jsonl",
            "results.json",
            "best/prompt.safetensors",
            "last/prompt.safetensors",
        ] {
            assert!(dir.join(f).is_file(), "{method}: {f} missing");
        }
        let results: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap())
                .unwrap();
        assert!(results["test"]["loss"].as_f64().is_some());
        // The best checkpoint evaluates with `ept eval --prompt`.
        let out = Command::new(env!("CARGO_BIN_EXE_ept"))
            .args([
                "eval",
                "--model",
                model.to_str().unwrap(),
                "--data",
                data.to_str().unwrap(),
                "--json",
                "--prompt",
            ])
            .arg(dir.join("best/prompt.safetensors"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
        let best_val = results["validation"]["loss"].as_f64().unwrap();
        assert!(common::close(
            v["loss"].as_f64().unwrap(),
            best_val,
            1e-4,
            1e-6
        ));
    }

    // An existing run folder is never overwritten without --overwrite.
    let before = std::fs::read(runs.join("pt/results.json")).unwrap();
    let out = train(&[
        "--model",
        model.to_str().unwrap(),
        "--train-file",
        data.to_str().unwrap(),
        "--validation-file",
        data.to_str().unwrap(),
        "--method",
        "pt",
        "--runs-dir",
        runs.to_str().unwrap(),
        "--name",
        "pt",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--overwrite"));
    assert_eq!(before, std::fs::read(runs.join("pt/results.json")).unwrap());

    // A learning rate <= 0 and an unknown method are one-line errors.
    for (flag, value, needle) in [
        ("--lr-prompt", "0", "lr-prompt"),
        ("--method", "lora", "lora"),
    ] {
        let out = train(&[
            "--model",
            model.to_str().unwrap(),
            "--train-file",
            data.to_str().unwrap(),
            "--validation-file",
            data.to_str().unwrap(),
            flag,
            value,
            "--runs-dir",
            runs.to_str().unwrap(),
            "--name",
            "bad",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(needle) && err.lines().count() == 1, "{err}");
    }
}

/// Two identical runs write identical bytes in every file, except the
/// fields that are timings: `tokens_per_s` in metrics.jsonl, `wall_seconds`
/// and `steps_per_second` in results.json (removed before comparing).
#[test]
fn identical_runs_write_identical_bytes() {
    let run = |tag: &str| {
        let runs = temp_dir(tag);
        let out = train(&[
            "--task",
            "toy-sst2",
            "--method",
            "ept",
            "--max-steps",
            "4",
            "--eval-every",
            "2",
            "--batch-size",
            "8",
            "--name",
            "same",
            "--runs-dir",
            runs.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        runs.join("same")
    };
    let (a, b) = (run("bytes-a"), run("bytes-b"));
    let mut files = Vec::new();
    let mut stack = vec![a.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p)
            } else {
                files.push(p.strip_prefix(&a).unwrap().to_path_buf())
            }
        }
    }
    files.sort();
    assert!(files.len() >= 12, "{files:?}");
    let timings = ["tokens_per_s", "wall_seconds", "steps_per_second"];
    let without_timings = |text: &str| -> Vec<serde_json::Value> {
        let strip = |mut v: serde_json::Value| {
            if let Some(o) = v.as_object_mut() {
                for t in timings {
                    o.remove(t);
                }
            }
            v
        };
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(v) => vec![strip(v)],
            Err(_) => text
                .lines()
                .map(|l| strip(serde_json::from_str(l).unwrap()))
                .collect(),
        }
    };
    for f in &files {
        let (x, y) = (
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
        );
        let name = f.to_string_lossy();
        if name == "metrics.jsonl" || name == "results.json" {
            let (x, y) = (String::from_utf8(x).unwrap(), String::from_utf8(y).unwrap());
            assert_eq!(
                without_timings(&x),
                without_timings(&y),
                "{name} beyond its timings"
            );
        } else if name == "args.json" || name == "run.toml" {
            // They name the runs folder, which differs between the two runs.
            let (x, y) = (String::from_utf8(x).unwrap(), String::from_utf8(y).unwrap());
            let (ra, rb) = (
                a.parent().unwrap().display().to_string(),
                b.parent().unwrap().display().to_string(),
            );
            assert_eq!(x.replace(&ra, "RUNS"), y.replace(&rb, "RUNS"), "{name}");
        } else {
            assert!(x == y, "{name}: the bytes differ");
        }
    }
}
