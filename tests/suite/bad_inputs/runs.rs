//! Run folders: resuming broken runs, writing over a run, exports, quantizing.

use super::*;

pub(super) fn cases(work: &Path, m: &str, d: &str) -> Vec<Case> {
    let runs = work.join("runs");
    let runs_s = runs.display().to_string();
    let out = common::ept(
        &short_run(m, d, &runs_s, "good")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let good = runs.join("good");
    let broken = |name: &str, edit: &dyn Fn(&Path)| -> String {
        let dir = runs.join(name);
        for sub in ["", "last", "best"] {
            if good.join(sub).is_dir() {
                copy_dir(&good.join(sub), &dir.join(sub));
            }
        }
        edit(&dir);
        dir.display().to_string()
    };
    let resume = |name: &'static str, dir: String, expect: &[&'static str]| Case {
        name,
        args: vec!["train".into(), "--resume".into(), dir],
        expect: expect.to_vec(),
    };
    let set_arg = |key: &'static str, v: serde_json::Value| {
        move |dir: &Path| {
            let path = dir.join("args.json");
            let mut a: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            a[key] = v.clone();
            std::fs::write(path, serde_json::to_string_pretty(&a).unwrap()).unwrap();
        }
    };
    let best = good.join("best/prompt.safetensors").display().to_string();
    let nan_prompt = work.join("init-nan.safetensors");
    hand_checkpoint(&nan_prompt, &[], f32::NAN);
    let mut init_nan = short_run(m, d, &runs_s, "init-nan");
    init_nan.extend(["--init-from".into(), nan_prompt.display().to_string()]);
    let quantized = fixtures().join("nf4/llama-gqa").display().to_string();
    let existing = work.join("existing-out");
    std::fs::create_dir_all(&existing).unwrap();
    let existing = existing.display().to_string();
    vec![
        resume(
            "resume a missing folder",
            "/nonexistent/run".into(),
            &["/nonexistent/run"],
        ),
        resume(
            "resume without args.json",
            broken("no-args", &|d| {
                std::fs::remove_file(d.join("args.json")).unwrap()
            }),
            &["args.json"],
        ),
        resume(
            "resume garbled args.json",
            broken("bad-args", &|d| {
                std::fs::write(d.join("args.json"), "{\"l\": ").unwrap()
            }),
            &["args.json", "JSON"],
        ),
        resume(
            "resume args batch 0",
            broken("zero-args", &set_arg("batch_size", 0.into())),
            &["args.json", "batch_size", "≥ 1"],
        ),
        resume(
            "resume args lr string",
            broken("str-args", &set_arg("lr_prompt", "fast".into())),
            &["args.json"],
        ),
        resume(
            "resume without last/",
            broken("no-last", &|d| {
                std::fs::remove_dir_all(d.join("last")).unwrap()
            }),
            &["last", "nothing to resume"],
        ),
        resume(
            "resume garbled state.json",
            broken("bad-state", &|d| {
                std::fs::write(d.join("last/state.json"), "[]").unwrap()
            }),
            &["state.json"],
        ),
        resume(
            "resume truncated optimizer",
            broken("bad-optim", &|d| {
                std::fs::write(d.join("last/optimizer.safetensors"), b"\x08\0\0\0").unwrap()
            }),
            &["optimizer.safetensors"],
        ),
        case(
            "train over a run",
            &short_run(m, d, &runs_s, "good")
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            &["good", "--overwrite"],
        ),
        Case {
            name: "init from NaN",
            args: init_nan,
            expect: vec!["init-nan.safetensors", "finite"],
        },
        case(
            "export format",
            &["export", &best, "--format", "onnx", "--out", &existing],
            &["onnx", "peft, dept or native"],
        ),
        case(
            "export alpha 0",
            &[
                "export",
                &best,
                "--format",
                "peft",
                "--out",
                &existing,
                "--lora-alpha",
                "0",
            ],
            &["--lora-alpha", "> 0"],
        ),
        case(
            "quantize a 4-bit folder",
            &[
                "quantize",
                "--model",
                &quantized,
                "--out",
                &format!("{}/q", work.display()),
            ],
            &["quantization_config", "already"],
        ),
        case(
            "quantize onto a folder",
            &["quantize", "--model", m, "--out", &existing],
            &["--overwrite"],
        ),
    ]
}
