//! The bad-input table: broken files, settings and flags as a new user meets
//! them, each answered by exit 2 and one `ept: ` line that names the file or
//! flag and what was expected, with every file the user had left as it was.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::common;
use common::{copy_dir, fixtures, model_dir, refusal, temp_dir};

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

/// Flags: numbers out of range, unknown names and values.
fn flag_cases(m: &str, d: &str, runs: &str, out: &str) -> Vec<Case> {
    // Only what a run needs, so that each case's flag is given once.
    let train = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "train",
            "--model",
            m,
            "--train-file",
            d,
            "--validation-file",
            d,
            "--runs-dir",
            runs,
            "--name",
            "flags",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let train_case = |name, extra: &[&str], expect: &[&'static str]| Case {
        name,
        args: train(extra),
        expect: expect.to_vec(),
    };
    let eval = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["eval", "--model", m, "--data", d]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let eval_case = |name, extra: &[&str], expect: &[&'static str]| Case {
        name,
        args: eval(extra),
        expect: expect.to_vec(),
    };
    vec![
        eval_case(
            "eval batch 0",
            &["--batch-size", "0"],
            &["--batch-size", "'0'", "≥ 1"],
        ),
        eval_case(
            "eval batch -3",
            &["--batch-size", "-3"],
            &["--batch-size", "-3"],
        ),
        eval_case("eval limit 0", &["--limit", "0"], &["--limit", "≥ 1"]),
        eval_case(
            "eval source len 0",
            &["--max-source-len", "0"],
            &["--max-source-len", "≥ 1"],
        ),
        eval_case(
            "eval dtype f16",
            &["--dtype", "f16"],
            &["f16", "expected f32, bf16 or bf16-mixed"],
        ),
        eval_case(
            "eval quantize int8",
            &["--quantize", "int8"],
            &["--quantize", "int8", "nf4 or fp4"],
        ),
        eval_case(
            "eval device tpu",
            &["--device", "tpu"],
            &["--device tpu", "expected auto, cpu, cuda"],
        ),
        eval_case("eval device cuda:x", &["--device", "cuda:x"], &["cuda:x"]),
        case(
            "eval split dev",
            &["eval", "--model", m, "--task", "rte", "--split", "devtest"],
            &["devtest", "train, validation or test"],
        ),
        eval_case("eval unknown flag", &["--bogus"], &["--bogus"]),
        eval_case(
            "eval scoring vote",
            &["--task", "toy-sst2", "--scoring", "vote"],
            &["vote", "generate or rank"],
        ),
        case(
            "predict batch 0",
            &["predict", "--model", m, "--data", d, "--batch-size", "0"],
            &["--batch-size", "≥ 1"],
        ),
        case(
            "generate 0 tokens",
            &[
                "generate",
                "--model",
                m,
                "--text",
                "a",
                "--max-new-tokens",
                "0",
            ],
            &["--max-new-tokens", "≥ 1"],
        ),
        train_case("train lr 0", &["--lr-prompt", "0"], &["--lr-prompt", "> 0"]),
        train_case(
            "train lr nan",
            &["--lr-prompt", "nan"],
            &["--lr-prompt", "finite"],
        ),
        train_case(
            "train low-rank lr -1",
            &["--lr-low-rank", "-1"],
            &["--lr-low-rank", "-1"],
        ),
        train_case(
            "train steps 0",
            &["--max-steps", "0"],
            &["--max-steps", "≥ 1"],
        ),
        train_case(
            "train batch 0",
            &["--batch-size", "0"],
            &["--batch-size", "≥ 1"],
        ),
        train_case(
            "train grad accum 0",
            &["--grad-accum", "0"],
            &["--grad-accum", "≥ 1"],
        ),
        train_case(
            "train weight decay < 0",
            &["--weight-decay", "-0.1"],
            &["--weight-decay", "≥ 0"],
        ),
        train_case(
            "train clip inf",
            &["--max-grad-norm", "inf"],
            &["--max-grad-norm", "finite"],
        ),
        train_case("train l 0", &["--l", "0"], &["--l", "≥ 1"]),
        train_case(
            "train experts 0",
            &["--num-experts", "0"],
            &["--num-experts", "≥ 1"],
        ),
        train_case("train m 0", &["--m", "0"], &["--m", "≥ 1"]),
        train_case(
            "train few-shot 0",
            &["--few-shot", "0"],
            &["--few-shot", "≥ 1"],
        ),
        train_case(
            "train token budget 0",
            &["--max-batch-tokens", "0"],
            &["--max-batch-tokens", "≥ 1"],
        ),
        train_case(
            "train method magic",
            &["--method", "magic"],
            &["magic", "pt, dept or ept"],
        ),
        train_case(
            "train fusion",
            &["--method", "ept", "--fusion", "sideways"],
            &["sideways", "cross-attention"],
        ),
        train_case(
            "train schedule",
            &["--schedule", "weird"],
            &["weird", "linear, constant or cosine"],
        ),
        train_case(
            "train scoring",
            &["--scoring", "vote"],
            &["vote", "generate or rank"],
        ),
        train_case(
            "train init",
            &["--init", "bogus"],
            &["--init", "bogus", "vocab, random or text:"],
        ),
        train_case("train preset", &["--preset", "ept/notatask"], &["notatask"]),
        case(
            "train unknown task",
            &["train", "--task", "notatask", "--runs-dir", runs],
            &["notatask"],
        ),
        case(
            "bench steps 0",
            &["bench", "--steps", "0"],
            &["--steps", "≥ 1"],
        ),
        case(
            "bench batch 0",
            &["bench", "--batch", "0"],
            &["--batch", "≥ 1"],
        ),
        case(
            "bench shape",
            &["bench", "--shape", "t5-huge"],
            &["t5-huge", "expected one of"],
        ),
        case(
            "bench lr nan",
            &["bench", "--task", "sst2", "--lr", "NaN"],
            &["--lr", "finite"],
        ),
        case(
            "pretrain fraction 1.5",
            &["pretrain", "--out", out, "--supervised-fraction", "1.5"],
            &["--supervised-fraction", "0 to 1"],
        ),
        case(
            "pretrain steps 0",
            &["pretrain", "--out", out, "--steps", "0"],
            &["--steps", "≥ 1"],
        ),
        case(
            "pretrain arch",
            &["pretrain", "--out", out, "--arch", "gpt"],
            &["gpt"],
        ),
        case(
            "budget m 0",
            &[
                "budget", "--l", "100", "--s", "60", "--d", "768", "--m", "0",
            ],
            &["--m", "≥ 1"],
        ),
        case(
            "tasks limit 0",
            &["tasks", "show", "toy-sst2", "--limit", "0"],
            &["--limit", "≥ 1"],
        ),
        case(
            "quantize type",
            &[
                "quantize",
                "--model",
                m,
                "--out",
                out,
                "--quant-type",
                "int4",
            ],
            &["int4", "nf4 or fp4"],
        ),
    ]
}

/// Model folders: configs, weights, tokenizers, 4-bit files, decoders.
fn model_cases(work: &Path, d: &str) -> Vec<Case> {
    let inspect = |name: &'static str, dir: String, expect: &[&'static str]| Case {
        name,
        args: vec!["inspect".into(), "--model".into(), dir],
        expect: expect.to_vec(),
    };
    let copy = |name: &str| -> PathBuf {
        let dir = work.join(name);
        copy_dir(&model_dir("relu-tied"), &dir);
        dir
    };
    let set = |k: &'static str, v: serde_json::Value| move |c: &mut serde_json::Value| c[k] = v;

    let truncated = copy("truncated");
    let bytes = std::fs::read(truncated.join("model.safetensors")).unwrap();
    std::fs::write(
        truncated.join("model.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let huge_header = copy("huge-header");
    let mut bytes = std::fs::read(huge_header.join("model.safetensors")).unwrap();
    bytes[..8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    std::fs::write(huge_header.join("model.safetensors"), bytes).unwrap();
    let garbage = copy("garbage-weights");
    std::fs::write(garbage.join("model.safetensors"), b"not a safetensors file").unwrap();
    let missing = copy("missing-tensor");
    rewrite_safetensors(&missing, |t| {
        t.retain(|(n, ..)| n != "encoder.block.1.layer.0.SelfAttention.k.weight")
    });
    let shape = copy("wrong-shape");
    rewrite_safetensors(&shape, |t| {
        let e = t
            .iter_mut()
            .find(|(n, ..)| n == "encoder.final_layer_norm.weight")
            .unwrap();
        e.2 = vec![e.2[0] / 2];
        e.3.truncate(e.3.len() / 2);
    });
    let dtype = copy("wrong-dtype");
    rewrite_safetensors(&dtype, |t| {
        let e = t
            .iter_mut()
            .find(|(n, ..)| n == "encoder.final_layer_norm.weight")
            .unwrap();
        e.1 = safetensors::Dtype::I32;
    });
    let no_weights = copy("no-weights");
    std::fs::remove_file(no_weights.join("model.safetensors")).unwrap();
    let bad_json = copy("bad-config-json");
    std::fs::write(bad_json.join("config.json"), "{\"model_type\": \"t5\",").unwrap();
    let no_tokenizer = copy("no-tokenizer");
    std::fs::remove_file(no_tokenizer.join("tokenizer.json")).unwrap();
    let bad_tokenizer = copy("bad-tokenizer");
    std::fs::write(bad_tokenizer.join("tokenizer.json"), "{\"version\": 7}").unwrap();
    let shards = work.join("missing-shard");
    copy_dir(&fixtures().join("llama/mistral-window-sharded"), &shards);
    std::fs::remove_file(shards.join("model-00003-of-00004.safetensors")).unwrap();
    let bad_index = work.join("bad-index");
    copy_dir(&fixtures().join("llama/mistral-window-sharded"), &bad_index);
    std::fs::write(
        bad_index.join("model.safetensors.index.json"),
        "{\"weight_map\": [1, 2]}",
    )
    .unwrap();

    let nf4 = |name: &str, k: &'static str, v: serde_json::Value| {
        model_copy(work, "nf4/llama-gqa", name, move |c| {
            c["quantization_config"][k] = v
        })
    };
    vec![
        inspect(
            "missing model folder",
            "/nonexistent/model".into(),
            &["/nonexistent/model"],
        ),
        inspect(
            "unknown model_type",
            model_with_config(work, "gemma", set("model_type", "gemma".into())),
            &[
                "config.json",
                "model_type",
                "gemma",
                "llama, mistral or qwen2",
            ],
        ),
        inspect(
            "malformed config.json",
            bad_json.display().to_string(),
            &["config.json", "JSON"],
        ),
        inspect(
            "d_model a string",
            model_with_config(work, "d-string", set("d_model", "wide".into())),
            &["config.json", "d_model"],
        ),
        inspect(
            "d_model negative",
            model_with_config(work, "d-negative", set("d_model", (-32).into())),
            &["config.json", "d_model"],
        ),
        inspect(
            "heads 0",
            model_with_config(work, "heads-0", set("num_heads", 0.into())),
            &["config.json", "num_heads"],
        ),
        inspect(
            "unknown activation",
            model_with_config(work, "act", set("feed_forward_proj", "swish-swash".into())),
            &["config.json", "feed_forward_proj"],
        ),
        inspect(
            "missing tensor",
            missing.display().to_string(),
            &["encoder.block.1.layer.0.SelfAttention.k.weight", "missing"],
        ),
        inspect(
            "wrong shape",
            shape.display().to_string(),
            &["encoder.final_layer_norm.weight", "expected"],
        ),
        inspect(
            "wrong dtype",
            dtype.display().to_string(),
            &["encoder.final_layer_norm.weight", "I32"],
        ),
        inspect(
            "no weights",
            no_weights.display().to_string(),
            &["model.safetensors"],
        ),
        inspect(
            "truncated weights",
            truncated.display().to_string(),
            &["model.safetensors"],
        ),
        inspect(
            "header length 2^60",
            huge_header.display().to_string(),
            &["model.safetensors"],
        ),
        inspect(
            "not safetensors",
            garbage.display().to_string(),
            &["model.safetensors"],
        ),
        inspect(
            "missing shard",
            shards.display().to_string(),
            &["model-00003-of-00004.safetensors"],
        ),
        inspect(
            "shard index not a map",
            bad_index.display().to_string(),
            &["model.safetensors.index.json", "weight_map"],
        ),
        case(
            "no tokenizer",
            &[
                "eval",
                "--model",
                no_tokenizer.to_str().unwrap(),
                "--data",
                d,
            ],
            &["tokenizer.json"],
        ),
        case(
            "bad tokenizer",
            &[
                "eval",
                "--model",
                bad_tokenizer.to_str().unwrap(),
                "--data",
                d,
            ],
            &["tokenizer.json"],
        ),
        inspect(
            "llama yarn rope",
            model_copy(work, "llama/llama-gqa", "yarn", |c| {
                c["rope_parameters"]["rope_type"] = "yarn".into()
            }),
            &["config.json", "rope_type", "yarn"],
        ),
        inspect(
            "llama kv heads 3",
            model_copy(work, "llama/llama-gqa", "kv3", |c| {
                c["num_key_value_heads"] = 3.into()
            }),
            &["config.json", "num_key_value_heads"],
        ),
        inspect(
            "llama act",
            model_copy(work, "llama/llama-gqa", "act-llama", |c| {
                c["hidden_act"] = "swish-swash".into()
            }),
            &["config.json", "hidden_act"],
        ),
        inspect(
            "llama layers string",
            model_copy(work, "llama/llama-gqa", "layers-str", |c| {
                c["num_hidden_layers"] = "two".into()
            }),
            &["config.json", "num_hidden_layers"],
        ),
        inspect(
            "4-bit awq",
            nf4("awq", "quant_method", "awq".into()),
            &["config.json", "quant_method", "awq"],
        ),
        inspect(
            "4-bit type",
            nf4("int4", "bnb_4bit_quant_type", "int4".into()),
            &["config.json", "bnb_4bit_quant_type", "int4"],
        ),
        inspect(
            "8-bit",
            nf4("8bit", "load_in_8bit", true.into()),
            &["config.json", "load_in_8bit"],
        ),
    ]
}

/// Data files, prompt checkpoints, TOML settings, sweep files.
fn file_cases(work: &Path, m: &str, d: &str, runs: &str) -> Vec<Case> {
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

/// Run folders: resuming broken runs, writing over a run, exports and quantizing.
fn run_cases(work: &Path, m: &str, d: &str) -> Vec<Case> {
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
    let mut cases = flag_cases(&m, &d, &runs, &out);
    cases.extend(model_cases(&work, &d));
    cases.extend(file_cases(&work, &m, &d, &runs));
    cases.extend(run_cases(&work, &m, &d));
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
