//! The bad-input table: broken files, settings and flags as a new user meets
//! them, each answered by exit 2 and one `ept: ` line that names the file or
//! flag and what was expected, with every file the user had left as it was.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::common;
use common::{copy_dir, fixtures, model_dir, refusal, temp_dir};

mod files;
mod flags;
mod models;
mod runs;

/// One broken input: the command line and the words its error must hold.
struct Case {
    name: &'static str,
    args: Vec<String>,
    expect: Vec<&'static str>,
}

fn case(name: &'static str, args: &[&str], expect: &[&'static str]) -> Case {
    Case {
        name,
        args: args.iter().map(|s| s.to_string()).collect(),
        expect: expect.to_vec(),
    }
}

/// Every file under `dir` with its bytes: what "nothing was changed" compares.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// Rewrites `dir/model.safetensors` after `edit` on its (name, dtype, shape, bytes) list.
pub fn rewrite_safetensors(
    dir: &Path,
    edit: impl FnOnce(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>),
) {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            let view = safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap();
            (n.clone(), view)
        })
        .collect();
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
}

/// A PT prompt checkpoint for the `relu-tied` fixture (d_model 32) written by
/// hand: `meta` overrides the metadata, the value at index 5 is `fill`.
pub fn hand_checkpoint(path: &Path, meta: &[(&str, &str)], fill: f32) {
    let values: Vec<u8> = (0..4 * 32)
        .flat_map(|i| if i == 5 { fill } else { 0.01 * i as f32 }.to_le_bytes())
        .collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4, 32], &values)
        .unwrap();
    let mut md: std::collections::HashMap<String, String> = [
        ("ept.format", "1"),
        ("ept.method", "pt"),
        ("ept.materialized", "false"),
        ("ept.fusion", "off"),
        ("ept.multi_space", "false"),
        ("ept.lora_scaling", "1"),
        ("ept.max_len", "0"),
        ("ept.d_model", "32"),
        ("ept.model", ""),
        ("ept.l", "4"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in meta {
        md.insert(k.to_string(), v.to_string());
    }
    let bytes = safetensors::serialize([("prompt".to_string(), view)], Some(md)).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// A copy of the `relu-tied` fixture under `work/name` with `config.json` edited.
fn model_with_config(work: &Path, name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    model_copy(work, "t5/relu-tied", name, edit)
}

/// A copy of the fixture folder `fixtures/from` under `work/name` with `config.json` edited.
fn model_copy(
    work: &Path,
    from: &str,
    name: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> String {
    let dir = work.join(name);
    copy_dir(&fixtures().join(from), &dir);
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    dir.display().to_string()
}

fn write(work: &Path, name: &str, bytes: impl AsRef<[u8]>) -> String {
    let path = work.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.display().to_string()
}

/// The flags of a short PT run on the `relu-tied` fixture.
fn short_run(model: &str, data: &str, runs: &str, name: &str) -> Vec<String> {
    [
        "train",
        "--model",
        model,
        "--train-file",
        data,
        "--validation-file",
        data,
        "--method",
        "pt",
        "--l",
        "4",
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--eval-every",
        "2",
        "--runs-dir",
        runs,
        "--name",
        name,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The table (issue #21): at least 60 inputs, each exit 2 with one `ept:` line
/// holding the words its case names, nothing under the test's folder changed
/// (no file written, removed or altered), no panic.
#[test]
fn every_bad_input_is_one_line_and_changes_nothing() {
    let work = temp_dir("bad-inputs");
    let model = work.join("model");
    copy_dir(&model_dir("relu-tied"), &model);
    let m = model.display().to_string();
    let d = fixtures().join("data.jsonl").display().to_string();
    let runs = work.join("runs").display().to_string();
    let out = work.join("new-out").display().to_string();
    let mut cases = flags::cases(&m, &d, &runs, &out);
    cases.extend(models::cases(&work, &d));
    cases.extend(files::cases(&work, &m, &d, &runs));
    cases.extend(runs::cases(&work, &m, &d));
    assert!(cases.len() >= 60, "{} cases", cases.len());

    let mut failures = Vec::new();
    for c in &cases {
        let before = snapshot(&work);
        let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
        match refusal(&args) {
            Err(why) => failures.push(format!("{}: {why}", c.name)),
            Ok(line) => {
                for w in &c.expect {
                    if !line.contains(w) {
                        failures.push(format!("{}: `{w}` missing from: {line}", c.name));
                    }
                }
            }
        }
        if snapshot(&work) != before {
            failures.push(format!(
                "{}: files under {} changed",
                c.name,
                work.display()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    eprintln!(
        "bad-input table: {} cases, all refused with one line",
        cases.len()
    );
    std::fs::remove_dir_all(&work).unwrap();
}

/// The positive control of the hand-written checkpoints above: with good
/// values and metadata the same file evaluates.
#[test]
fn a_good_hand_written_checkpoint_evaluates() {
    let dir = temp_dir("good-ckpt");
    let path = dir.join("prompt.safetensors");
    hand_checkpoint(&path, &[], 0.5);
    let m = model_dir("relu-tied");
    let d = fixtures().join("data.jsonl");
    let out = common::ept(&[
        "eval",
        "--model",
        m.to_str().unwrap(),
        "--data",
        d.to_str().unwrap(),
        "--prompt",
        path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("loss"));
}
