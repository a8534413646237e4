//! Data files, prompt checkpoints, TOML settings, sweep files.

use super::*;

pub(super) fn cases(work: &Path, m: &str, d: &str, runs: &str) -> Vec<Case> {
    let eval_data = |name: &'static str, file: String, expect: &[&'static str]| Case {
        name,
        args: ["eval", "--model", m, "--data", &file]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        expect: expect.to_vec(),
    };
    let eval_prompt = |name: &'static str, file: &Path, expect: &[&'static str]| Case {
        name,
        args: [
            "eval",
            "--model",
            m,
            "--data",
            d,
            "--prompt",
            file.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        expect: expect.to_vec(),
    };
    let eval_task = |name: &'static str, dir: &Path, expect: &[&'static str]| Case {
        name,
        args: [
            "eval",
            "--model",
            m,
            "--task",
            "rte",
            "--split",
            "test",
            "--data",
            dir.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        expect: expect.to_vec(),
    };
    // A task data folder holding one file.
    let folder = |name: &str, file: &str, bytes: &[u8]| -> PathBuf {
        let dir = work.join(name);
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
        dir
    };
    let ckpt = |name: &str, meta: &[(&str, &str)], fill: f32| -> PathBuf {
        let path = work.join(name);
        hand_checkpoint(&path, meta, fill);
        path
    };
    let train_config = |name: &'static str, text: &str, expect: &[&'static str]| {
        let file = write(work, &format!("{}.toml", name.replace(' ', "-")), text);
        let args = [
            "train",
            "--config",
            &file,
            "--runs-dir",
            runs,
            "--name",
            "config",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Case {
            name,
            args,
            expect: expect.to_vec(),
        }
    };
    let sweep = |name: &'static str, text: &str, expect: &[&'static str]| {
        let file = write(work, &format!("{}.toml", name.replace(' ', "-")), text);
        Case {
            name,
            args: vec!["sweep".into(), file, "--runs-dir".into(), runs.into()],
            expect: expect.to_vec(),
        }
    };
    let garbage = ckpt("garbage.safetensors", &[], 0.5);
    std::fs::write(&garbage, b"\x10\0\0\0\0\0\0\0{\"a\": 1}").unwrap();
    let base = format!(
        "[base]\nmodel = \"{m}\"\ntrain_file = \"{d}\"\nvalidation_file = \"{d}\"\nmax_steps = 1\n"
    );
    vec![
        eval_data(
            "missing data file",
            "/nonexistent/data.jsonl".into(),
            &["/nonexistent/data.jsonl", "not found"],
        ),
        eval_data(
            "malformed JSON line",
            write(
                work,
                "bad.jsonl",
                "{\"source\": \"a\", \"target\": \"b\"}\n{\"source\": oops}\n",
            ),
            &["bad.jsonl:2"],
        ),
        eval_data(
            "line without target",
            write(work, "notarget.jsonl", "{\"source\": \"a\"}\n"),
            &["notarget.jsonl", "target"],
        ),
        eval_data(
            "empty JSONL",
            write(work, "empty.jsonl", ""),
            &["empty.jsonl"],
        ),
        eval_data(
            "binary JSONL",
            write(work, "binary.jsonl", [0xff, 0xfe, 0x00, 0x9f]),
            &["binary.jsonl"],
        ),
        eval_data(
            "CSV as JSON lines",
            write(work, "x.csv", "a,b\n"),
            &["x.csv:1", "malformed JSON"],
        ),
        eval_task(
            "TSV without columns",
            &folder("short-tsv", "RTE/dev.tsv", b"only\n"),
            &["dev.tsv"],
        ),
        eval_task(
            "not parquet",
            &folder(
                "bad-parquet",
                "rte/validation-00000-of-00001.parquet",
                b"PAR1 nothing",
            ),
            &["validation-00000-of-00001.parquet"],
        ),
        eval_task(
            "not arrow",
            &folder(
                "bad-arrow",
                "validation/data-00000-of-00001.arrow",
                b"ARROW1\0\0",
            ),
            &["data-00000-of-00001.arrow"],
        ),
        eval_task(
            "SuperGLUE JSONL",
            &folder("bad-superglue", "RTE/val.jsonl", b"{\"premise\": }\n"),
            &["val.jsonl"],
        ),
        eval_task(
            "parquet without a column",
            &fixtures().join("tables/bad/rte_nocol"),
            &["validation-00000-of-00001.parquet"],
        ),
        eval_task(
            "parquet bad label",
            &fixtures().join("tables/bad/rte_badlabel"),
            &["validation-00000-of-00001.parquet", "label"],
        ),
        eval_prompt(
            "prompt method magic",
            &ckpt("magic.safetensors", &[("ept.method", "magic")], 0.5),
            &["ept.method", "magic", "pt, dept or ept"],
        ),
        eval_prompt(
            "prompt NaN",
            &ckpt("nan.safetensors", &[], f32::NAN),
            &["prompt", "finite", "index 5"],
        ),
        eval_prompt(
            "prompt inf",
            &ckpt("inf.safetensors", &[], f32::INFINITY),
            &["prompt", "finite", "index 5"],
        ),
        eval_prompt(
            "prompt multi_space",
            &ckpt("ms.safetensors", &[("ept.multi_space", "maybe")], 0.5),
            &["ept.multi_space", "maybe"],
        ),
        eval_prompt(
            "prompt materialized",
            &ckpt("mat.safetensors", &[("ept.materialized", "2")], 0.5),
            &["ept.materialized"],
        ),
        eval_prompt(
            "prompt fusion",
            &ckpt("fusion.safetensors", &[("ept.fusion", "sideways")], 0.5),
            &["ept.fusion", "sideways"],
        ),
        eval_prompt(
            "prompt l not a number",
            &ckpt("l.safetensors", &[("ept.l", "many")], 0.5),
            &["ept.l", "many", "non-negative integer"],
        ),
        eval_prompt(
            "prompt format",
            &ckpt("format.safetensors", &[("ept.format", "99")], 0.5),
            &["ept.format"],
        ),
        eval_prompt(
            "prompt for another width",
            &fixtures().join("llama/llama-gqa/pt_prompt.safetensors"),
            &["prompt.safetensors"],
        ),
        eval_prompt("prompt garbage", &garbage, &["garbage.safetensors"]),
        eval_prompt(
            "prompt missing",
            Path::new("/nonexistent/prompt.safetensors"),
            &["/nonexistent/prompt.safetensors"],
        ),
        train_config(
            "config syntax",
            "lr_prompt = = 3\n",
            &["config-syntax.toml:1", "TOML"],
        ),
        train_config(
            "config typo",
            "lr_promt = 0.3\n",
            &["lr_promt", "did you mean `lr_prompt`"],
        ),
        train_config(
            "config batch 0",
            "batch_size = 0\n",
            &["config-batch-0.toml", "batch_size", "≥ 1"],
        ),
        train_config(
            "config lr string",
            "lr_prompt = \"fast\"\n",
            &["config-lr-string.toml", "lr_prompt", "fast"],
        ),
        train_config(
            "config lr negative",
            "lr-prompt = -1.0\n",
            &["config-lr-negative.toml", "lr-prompt", "> 0"],
        ),
        case(
            "config missing",
            &["train", "--config", "/nonexistent/run.toml"],
            &["/nonexistent/run.toml", "not found"],
        ),
        sweep(
            "sweep top key",
            "grids = 1\n",
            &["sweep-top-key.toml", "grids"],
        ),
        sweep(
            "sweep grid typo",
            &format!("{base}[grid]\nsede = [1, 2]\n"),
            &["sweep-grid-typo.toml", "sede", "did you mean `seed`"],
        ),
        sweep(
            "sweep grid batch 0",
            &format!("{base}[grid]\nbatch_size = [2, 0]\n"),
            &["sweep-grid-batch-0.toml", "batch_size", "≥ 1"],
        ),
        sweep(
            "sweep base lr nan",
            &format!("{base}lr_prompt = nan\n"),
            &["sweep-base-lr-nan.toml", "lr_prompt"],
        ),
        sweep(
            "sweep grid too large",
            &format!(
                "{base}[grid]\nseed = {v:?}\nl = {v:?}\nm = {v:?}\n",
                v = (1..=100).collect::<Vec<i32>>()
            ),
            &["sweep-grid-too-large.toml", "grid", "100000 runs"],
        ),
        case(
            "sweep file missing",
            &["sweep", "/nonexistent/sweep.toml"],
            &["/nonexistent/sweep.toml"],
        ),
    ]
}
