//! Model folders: configs, weights, tokenizers, 4-bit files, decoders.

use super::*;

pub(super) fn cases(work: &Path, d: &str) -> Vec<Case> {
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
