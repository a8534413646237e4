//! `ept train --config run.toml` (keys, precedence, errors), gradient
//! accumulation, `--init-from` across methods, and `ept sweep` (resumable
//! grid, summary table, figures) on the fixture model.

use crate::common;

use std::path::Path;
use std::process::Output;

use common::{ept, fixtures, model_dir, temp_dir};

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The shared settings of a quick run on the fixture model, as TOML.
fn base_toml() -> String {
    let data = fixtures().join("data.jsonl");
    format!(
        "model = {model:?}\ntrain_file = {data:?}\nvalidation-file = {data:?}\n\
         method = \"ept\"\nl = 10\ns = 6\nm = 64\nlr_low_rank = 0.01\nmax_steps = 6\n\
         warmup_steps = 2\nbatch_size = 3\neval_every = 3\n",
        model = model_dir("gated-untied").to_str().unwrap(),
        data = data.to_str().unwrap(),
    )
}

#[test]
fn a_config_file_sets_flags_and_the_command_line_wins() {
    let dir = temp_dir("config");
    let cfg = dir.join("run.toml");
    std::fs::write(&cfg, format!("{}lr_prompt = 0.05\nseed = 7\n", base_toml())).unwrap();
    let runs = dir.join("runs");
    let out = ept(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--seed",
        "9",
        "--runs-dir",
        runs.to_str().unwrap(),
        "--name",
        "a",
        "--json",
    ]);
    ok(&out);
    let args = json(&runs.join("a/args.json"));
    assert_eq!(args["lr_prompt"], 0.05, "from the file");
    assert_eq!(args["max_steps"], 6, "from the file");
    assert_eq!(args["seed"], 9, "the flag overrides the file");
    // The resolved settings are saved as TOML too, and they reproduce the run's settings.
    let saved: toml::Table =
        toml::from_str(&std::fs::read_to_string(runs.join("a/run.toml")).unwrap()).unwrap();
    assert_eq!(saved["seed"].as_integer(), Some(9));
    assert_eq!(saved["lr_prompt"].as_float(), Some(0.05));

    // An unknown key is one line naming the file and the key, with the closest key.
    std::fs::write(&cfg, format!("{}lr_promt = 0.05\n", base_toml())).unwrap();
    let out = ept(&["train", "--config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("run.toml") && err.contains("lr_promt") && err.contains("`lr_prompt`"),
        "{err}"
    );
    // A value of the wrong type names the key.
    std::fs::write(&cfg, format!("{}num_experts = \"many\"\n", base_toml())).unwrap();
    let out = ept(&["train", "--config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("num_experts") && err.lines().count() == 1,
        "{err}"
    );
    // Broken TOML names the line.
    std::fs::write(&cfg, "seed = 1\nl = [\n").unwrap();
    let out = ept(&["train", "--config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("run.toml:") && err.contains("TOML"), "{err}");
}

#[test]
fn gradient_accumulation_and_init_from_another_method() {
    let dir = temp_dir("accum");
    let cfg = dir.join("run.toml");
    std::fs::write(&cfg, base_toml()).unwrap();
    let runs = dir.join("runs");
    let run = |name: &str, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--runs-dir",
            runs.to_str().unwrap(),
            "--name",
            name,
            "--json",
        ];
        args.extend_from_slice(extra);
        ept(&args)
    };
    let plain = ok(&run("plain", &[]));
    let accum = ok(&run("accum", &["--grad-accum", "2"]));
    let steps = |s: &str| -> Vec<serde_json::Value> {
        s.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v.get("step").is_some())
            .collect()
    };
    let (p, a) = (steps(&plain), steps(&accum));
    assert_eq!(p.len(), 6);
    assert_eq!(a.len(), 6, "grad_accum counts optimiser steps");
    // Two batches per step: the first step's loss is the mean of two batches,
    // so it differs from the single-batch run that starts from the same prompt.
    let (lp, la) = (
        p[0]["loss"].as_f64().unwrap(),
        a[0]["loss"].as_f64().unwrap(),
    );
    assert!(lp.is_finite() && la.is_finite() && lp != la, "{lp} {la}");
    // Accumulation reads twice as many examples per step.
    let tokens =
        |v: &[serde_json::Value]| v.iter().all(|s| s["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(tokens(&p) && tokens(&a));
    let out = run("zero", &["--grad-accum", "0"]);
    assert_eq!(out.status.code(), Some(2));

    // A checkpoint of another method is refused naming the field.
    let best = runs.join("plain/best/prompt.safetensors");
    let out = run(
        "wrong",
        &["--method", "pt", "--init-from", best.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("ept.method") && err.lines().count() == 1,
        "{err}"
    );
    // The same method starts from it.
    ok(&run("right", &["--init-from", best.to_str().unwrap()]));
}

#[test]
fn a_sweep_runs_its_grid_resumably_and_summarises_it() {
    let dir = temp_dir("sweep");
    let file = dir.join("fusion.toml");
    let base = base_toml()
        .lines()
        .map(|l| format!("{l}\n"))
        .collect::<String>();
    std::fs::write(
        &file,
        format!("name = \"fusion\"\n[base]\n{base}\n[grid]\nnum_experts = [1, 2]\nseed = [1, 2]\n"),
    )
    .unwrap();
    let runs = dir.join("runs");
    let out = ept(&[
        "sweep",
        file.to_str().unwrap(),
        "--runs-dir",
        runs.to_str().unwrap(),
    ]);
    let stdout = ok(&out);
    let sweep = runs.join("fusion");
    for run in [
        "num_experts=1,seed=1",
        "num_experts=1,seed=2",
        "num_experts=2,seed=1",
        "num_experts=2,seed=2",
    ] {
        assert!(sweep.join(run).join("results.json").is_file(), "{run}");
    }
    let md = std::fs::read_to_string(sweep.join("results.md")).unwrap();
    assert!(md.contains("| num_experts | runs |"), "{md}");
    assert!(md.matches("| 2 |").count() >= 2, "{md}");
    assert!(stdout.contains("±"), "{stdout}");
    // Mean ± std agree with the runs' own results.
    let summary = json(&sweep.join("results.json"));
    let v1: Vec<f64> = ["num_experts=1,seed=1", "num_experts=1,seed=2"]
        .iter()
        .map(|r| {
            json(&sweep.join(r).join("results.json"))["validation"]["selection"]
                .as_f64()
                .unwrap()
        })
        .collect();
    let mean = (v1[0] + v1[1]) / 2.0;
    let got = summary["summary"][0]["validation"][0].as_f64().unwrap();
    assert!((got - mean).abs() < 1e-9, "{got} vs {mean}");
    for fig in [
        "fig5-spaces.png",
        "fig5-spaces.svg",
        "fig8-gate.png",
        "fig8-gate.svg",
    ] {
        assert!(sweep.join(fig).is_file(), "{fig}");
    }
    // Re-running skips the finished runs (their results are untouched) and
    // writes the summary again from them: byte for byte the same files, in
    // another process (whose hash maps iterate in another order).
    let before = std::fs::read(sweep.join("num_experts=1,seed=1/results.json")).unwrap();
    let summary_files = [
        "results.md",
        "results.json",
        "fig5-spaces.png",
        "fig5-spaces.svg",
        "fig8-gate.png",
        "fig8-gate.svg",
    ];
    let first: Vec<Vec<u8>> = summary_files
        .iter()
        .map(|f| std::fs::read(sweep.join(f)).unwrap())
        .collect();
    let out = ept(&[
        "sweep",
        file.to_str().unwrap(),
        "--runs-dir",
        runs.to_str().unwrap(),
    ]);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("skipped"));
    assert_eq!(
        before,
        std::fs::read(sweep.join("num_experts=1,seed=1/results.json")).unwrap()
    );
    for (f, bytes) in summary_files.iter().zip(&first) {
        assert!(
            std::fs::read(sweep.join(f)).unwrap() == *bytes,
            "{f}: written again with other bytes"
        );
    }
    // An unknown key in the sweep file is a one-line error.
    std::fs::write(&file, "[base]\nlr = 1\n").unwrap();
    let out = ept(&[
        "sweep",
        file.to_str().unwrap(),
        "--runs-dir",
        runs.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("`lr`") && err.lines().count() == 1, "{err}");
}

/// `results.md` without its last column, the time, which two sweeps never share.
fn without_time(md: &str) -> String {
    md.lines()
        .map(|l| match l.trim_end_matches('|').rfind('|') {
            Some(i) if l.starts_with('|') => l[..i].to_string(),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The runs a sweep's stderr says it trained (`[k/N] NAME` lines that did not skip).
fn trained(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with('[') && !l.contains("skipped"))
        .map(|l| {
            l.split_whitespace()
                .nth(1)
                .unwrap()
                .trim_end_matches(':')
                .to_string()
        })
        .collect()
}

/// `--shard i/N` slices cover the grid exactly once, `--collect` refuses an
/// unfinished sweep and then writes the unsharded sweep's summary, and
/// `--devices` runs the grid two at a time to the same results.
#[test]
fn shards_collect_to_the_unsharded_sweep_and_devices_run_at_once() {
    let dir = temp_dir("sweep-shards");
    let file = dir.join("seeds.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"seeds\"\n[base]\n{}\n[grid]\nseed = [1, 2, 3]\n",
            base_toml()
        ),
    )
    .unwrap();
    let sweep = |runs: &str, extra: &[&str]| {
        let runs = dir.join(runs).display().to_string();
        let mut args = vec!["sweep", file.to_str().unwrap(), "--runs-dir", &runs];
        args.extend_from_slice(extra);
        ept(&args)
    };
    let whole = sweep("whole", &[]);
    ok(&whole);
    let mut names = trained(&whole);
    names.sort();
    assert_eq!(names, ["seed=1", "seed=2", "seed=3"]);

    let first = sweep("sharded", &["--shard", "1/2"]);
    ok(&first);
    assert_eq!(trained(&first), ["seed=1", "seed=3"]);
    assert!(!dir.join("sharded/seeds/results.md").exists());
    let early = sweep("sharded", &["--collect"]);
    assert_eq!(early.status.code(), Some(2));
    let err = String::from_utf8_lossy(&early.stderr);
    assert!(
        err.contains("1 of 3 runs are not finished (seed=2)"),
        "{err}"
    );
    let second = sweep("sharded", &["--shard", "2/2"]);
    ok(&second);
    assert_eq!(trained(&second), ["seed=2"]);
    let collect = sweep("sharded", &["--collect"]);
    ok(&collect);
    assert!(trained(&collect).is_empty());

    let both = sweep("both", &["--devices", "cpu,cpu"]);
    ok(&both);
    let mut names = trained(&both);
    names.sort();
    assert_eq!(names, ["seed=1", "seed=2", "seed=3"]);

    let md = |runs: &str| std::fs::read_to_string(dir.join(runs).join("seeds/results.md")).unwrap();
    assert!(md("whole").contains("| 3 |"), "{}", md("whole"));
    assert_eq!(without_time(&md("sharded")), without_time(&md("whole")));
    assert_eq!(without_time(&md("both")), without_time(&md("whole")));
    for bad in ["0/2", "3/2", "x"] {
        let out = sweep("bad", &["--shard", bad]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("--shard") && err.lines().count() == 1, "{err}");
    }
}
