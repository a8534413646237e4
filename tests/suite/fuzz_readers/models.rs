//! Safetensors weights, sharded indexes, config.json and tokenizer.json.

use super::*;

/// `WeightFile` over a (mutated) folder: every tensor read raw and as f32,
/// then the whole model loaded as `ept` loads it (4-bit weights included).
fn read_weights(dir: &Path) -> Outcome {
    use ept::io::weights::WeightFile;
    let weights = match WeightFile::open_dir(dir) {
        Ok(w) => w,
        Err(_) => return Outcome::Refused,
    };
    let names: Vec<String> = weights.names().map(str::to_owned).collect();
    let _ = weights.storage_dtype();
    for name in &names {
        if let Ok(Some(raw)) = weights.raw(name) {
            let _ = weights.read_f32(name, &raw.shape);
        }
    }
    ept::model::Backbone::load(dir, None, &device()).into()
}

#[test]
fn safetensors_weights() {
    let f = fixtures();
    let w = &["model.safetensors"];
    fuzz(
        "safetensors",
        &[
            seed(f.join("t5/relu-tied"), w),
            seed(f.join("t5/relu-bf16"), w),
            seed(f.join("llama/llama-gqa"), w),
            seed(f.join("nf4/llama-gqa"), w),
            seed(f.join("nf4/qwen2-bias"), w),
        ],
        true,
        |dir, _| read_weights(dir),
    );
}

#[test]
fn safetensors_sharded_index() {
    let f = fixtures();
    fuzz(
        "shard-index",
        &[
            seed(
                f.join("t5/sharded-silu"),
                &[
                    "model.safetensors.index.json",
                    "model.safetensors.index.json",
                    "model-00001-of-00002.safetensors",
                    "model-00002-of-00002.safetensors",
                ],
            ),
            seed(
                f.join("llama/mistral-window-sharded"),
                &["model.safetensors.index.json"],
            ),
        ],
        true,
        |dir, _| read_weights(dir),
    );
}

#[test]
fn config_json() {
    let f = fixtures();
    let c = &["config.json"];
    let mut seeds: Vec<Seed> = [
        "t5/relu-tied",
        "t5/gated-untied",
        "t5/v5-flag",
        "llama/llama-gqa",
        "llama/llama-v4-config",
        "llama/llama3-mqa-tied",
        "llama/qwen2-bias",
        "nf4/llama-gqa",
    ]
    .iter()
    .map(|d| seed(f.join(d), c))
    .collect();
    seeds.push(seed(repo().join("assets/organism-llama"), c));
    fuzz("config.json", &seeds, true, |dir, path| {
        let Ok((p, value)) = ept::model::read_config(dir) else {
            return Outcome::Refused;
        };
        let _ = ept::io::bnb4::QuantConfig::from_config(&value, &p);
        let _ = ept::model::T5Config::from_file(path);
        let _ = ept::model::LlamaConfig::from_file(path);
        let _ = ept::model::ModelShape::from_dir(dir);
        ept::model::Backbone::load(dir, None, &device()).into()
    });
}

#[test]
fn tokenizer_json() {
    let f = fixtures();
    let t = &["tokenizer.json"];
    fuzz(
        "tokenizer.json",
        &[
            seed(f.join("t5/relu-tied"), t),
            seed(f.join("llama/llama-gqa"), t),
            seed(repo().join("assets/organism-llama"), t),
        ],
        true,
        |_, path| {
            use ept::model::TextTokenizer;
            let Ok(tok) = TextTokenizer::from_file(path, 1) else {
                return Outcome::Refused;
            };
            let _ = tok.vocab_size();
            let ids = tok.encode("The quick brown fox, 42 times.", Some(12));
            let _ = tok.encode_target("yes");
            let _ = tok.for_decoder().encode_target("no");
            ids.into()
        },
    );
}
