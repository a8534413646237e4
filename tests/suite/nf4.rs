//! 4-bit weights against bitsandbytes and transformers: fixtures made by
//! `scripts/make_nf4_fixtures.py` (torch, transformers, the bitsandbytes CPU wheel).
//!
//! Exact: quantized bytes (packed indices, scales, double-quantized scales,
//! the quant-state JSON) equal bitsandbytes'; decoded weights bitwise equal
//! to its `dequantize_4bit` (the torch kernel: see the script on the AVX-512
//! C kernel). Tolerances: the f32 loss on the decoded weights within 1e-4
//! relative of transformers'; the bf16 compute within 5e-3 relative of
//! bitsandbytes' own 4-bit forward.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::common::{self, close, error_of, fixtures};
use ept::evaluate::example_loss_sums;
use ept::io::bnb4::{Absmax, Quant4, QuantType, StoredDtype};
use ept::io::weights::{FloatType, WeightFile};
use ept::model::Backbone;
use ept::model::batch::TokenizedExample;
use ept::prompt::NoPrompt;
use serde::Deserialize;

fn nf4_dir() -> PathBuf {
    fixtures().join("nf4")
}

/// A safetensors file's tensors: name -> (dtype, shape, bytes).
fn tensors(path: &Path) -> BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            let dtype = format!("{:?}", v.dtype());
            (n, (dtype, v.shape().to_vec(), v.data().to_vec()))
        })
        .collect()
}

/// Little-endian f32 or bf16 bytes as f32 values.
fn floats(dtype: &str, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        "F32" => ept::tensors::f32_from_le(bytes),
        "BF16" => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => panic!("unexpected dtype {other}"),
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[derive(Deserialize)]
struct BlockCase {
    name: String,
    input: String,
    input_dtype: String,
    shape: Vec<usize>,
    quant_type: String,
    blocksize: usize,
    compress_statistics: bool,
    nested_offset_bits: Option<u32>,
}

#[derive(Deserialize)]
struct Blocks {
    cases: Vec<BlockCase>,
}

/// `quantize_4bit` and `dequantize_4bit` on tensors made to hit the edge
/// cases (odd counts, short last blocks and nested blocks, zero blocks,
/// values on midpoints, bf16 inputs, FP4, block size 128).
#[test]
fn quantize_and_dequantize_are_bitsandbytes_bit_for_bit() {
    let dir = nf4_dir();
    let doc: Blocks =
        serde_json::from_str(&std::fs::read_to_string(dir.join("blocks.json")).unwrap()).unwrap();
    let t = tensors(&dir.join("blocks.safetensors"));
    assert!(doc.cases.len() >= 16, "{} cases", doc.cases.len());
    for c in &doc.cases {
        let (dt, _, input) = &t[&c.input];
        let values = floats(dt, input);
        let dtype = StoredDtype::parse(&c.input_dtype).unwrap();
        let qt = QuantType::parse(&c.quant_type).unwrap();
        let q = Quant4::quantize(
            &values,
            &c.shape,
            qt,
            c.compress_statistics,
            c.blocksize,
            dtype,
        );
        let want = |s: &str| &t[&format!("{}.{s}", c.name)];
        assert_eq!(q.packed, want("packed").2, "{}: packed indices", c.name);
        match &q.absmax {
            Absmax::Plain(a) => {
                assert_eq!(
                    bits(a),
                    bits(&floats("F32", &want("absmax").2)),
                    "{}: absmax",
                    c.name
                )
            }
            Absmax::Nested {
                q: qa,
                nested,
                offset,
                ..
            } => {
                assert_eq!(*qa, want("absmax").2, "{}: 8-bit absmax", c.name);
                let nested_want = floats("F32", &want("nested_absmax").2);
                assert_eq!(
                    bits(nested),
                    bits(&nested_want),
                    "{}: nested absmax",
                    c.name
                );
                assert_eq!(
                    Some(offset.to_bits()),
                    c.nested_offset_bits,
                    "{}: offset",
                    c.name
                );
            }
        }
        let (ddt, _, dq) = want("dequant");
        assert_eq!(
            bits(&q.dequantize()),
            bits(&floats(ddt, dq)),
            "{}: dequantized",
            c.name
        );
    }
}

#[derive(Deserialize)]
struct ModelExample {
    input_ids: Vec<u32>,
    label_ids: Vec<u32>,
    loss_sum_f32: f64,
}

#[derive(Deserialize)]
struct Bnb {
    per_example_loss_sum: Vec<f64>,
    mean_loss: f64,
}

#[derive(Deserialize)]
struct ModelRef {
    source: String,
    quantized: Vec<String>,
    examples: Vec<ModelExample>,
    mean_loss_f32: f64,
    bnb_bf16: Bnb,
}

/// The 4-bit folders transformers wrote: NF4 + double quantization of four
/// architectures and one FP4 without it.
const MODELS: [&str; 5] = [
    "relu-bf16",
    "gated-untied",
    "llama-gqa",
    "qwen2-bias",
    "llama-gqa-fp4",
];

fn model_ref(name: &str) -> ModelRef {
    let text = std::fs::read_to_string(nf4_dir().join(name).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn source_dir(r: &ModelRef) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(&r.source)
}

/// Every 4-bit weight of every folder decodes to bitsandbytes' values.
#[test]
fn four_bit_files_decode_bitwise() {
    for name in MODELS {
        let dir = nf4_dir().join(name);
        let r = model_ref(name);
        let w = WeightFile::open_dir(&dir).unwrap();
        let decoded = tensors(&dir.join("decoded.safetensors"));
        assert_eq!(decoded.len(), r.quantized.len(), "{name}");
        for q in &r.quantized {
            let (dt, shape, bytes) = &decoded[q];
            let got = w
                .quant4(q, shape)
                .unwrap()
                .unwrap_or_else(|| panic!("{name}: {q} not 4-bit"));
            assert_eq!(
                bits(&got.dequantize()),
                bits(&floats(dt, bytes)),
                "{name}: {q}"
            );
        }
    }
}

/// `ept quantize` writes the tensors transformers + bitsandbytes write, byte for byte.
#[test]
fn ept_quantize_writes_bitsandbytes_bytes() {
    for name in MODELS {
        let r = model_ref(name);
        let out = common::temp_dir(&format!("quantize-{name}")).join("q");
        let mut args = vec![
            "quantize".to_string(),
            "--model".into(),
            source_dir(&r).display().to_string(),
            "--out".into(),
            out.display().to_string(),
        ];
        if name.ends_with("fp4") {
            args.extend([
                "--quant-type".into(),
                "fp4".into(),
                "--no-double-quant".into(),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = common::ept(&args);
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let want = tensors(&nf4_dir().join(name).join("model.safetensors"));
        let got = tensors(&out.join("model.safetensors"));
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{name}: tensor names"
        );
        for (k, v) in &want {
            assert!(got[k] == *v, "{name}: {k} differs");
        }
        // And it loads back as the same 4-bit model.
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["quantization_config"]["load_in_4bit"], true);
    }
}

fn examples(r: &ModelRef) -> Vec<TokenizedExample> {
    r.examples
        .iter()
        .map(|e| TokenizedExample {
            input_ids: e.input_ids.clone(),
            label_ids: e.label_ids.clone(),
        })
        .collect()
}

fn mean(sums: &[f64], r: &ModelRef) -> f64 {
    let tokens: usize = r.examples.iter().map(|e| e.label_ids.len()).sum();
    sums.iter().sum::<f64>() / tokens as f64
}

/// The losses of the 4-bit files: in f32 on the decoded weights against
/// transformers, in bf16 against bitsandbytes' own forward; and a model
/// quantized at load (`--quantize`) is the same model as the file.
#[test]
fn four_bit_losses_match_transformers_and_bitsandbytes() {
    let device = ept::runtime::cpu_device(false);
    for name in MODELS {
        let dir = nf4_dir().join(name);
        let r = model_ref(name);
        let ex = examples(&r);
        let b = Backbone::load(&dir, Some(FloatType::F32), &device).unwrap();
        let sums = example_loss_sums(b.model.as_ref(), &NoPrompt, &ex, ex.len());
        for (i, (got, e)) in sums.iter().zip(&r.examples).enumerate() {
            assert!(
                close(*got, e.loss_sum_f32, 1e-4, 1e-6),
                "{name} example {i}: f32 loss sum {got} vs transformers {}",
                e.loss_sum_f32
            );
        }
        let m = mean(&sums, &r);
        assert!(
            close(m, r.mean_loss_f32, 1e-4, 1e-6),
            "{name}: mean {m} vs {}",
            r.mean_loss_f32
        );

        // Quantized at load from the source: the same weights, the same losses.
        let spec = ept::io::bnb4::QuantizeSpec {
            quant_type: if name.ends_with("fp4") {
                QuantType::Fp4
            } else {
                QuantType::Nf4
            },
            double: !name.ends_with("fp4"),
            skip: Vec::new(),
        };
        let q =
            Backbone::load_quantized(&source_dir(&r), Some(FloatType::F32), Some(spec), &device)
                .unwrap();
        let q_sums = example_loss_sums(q.model.as_ref(), &NoPrompt, &ex, ex.len());
        assert_eq!(q_sums, sums, "{name}: --quantize vs the 4-bit file");
        assert_eq!(
            q.model.weight_memory(),
            b.model.weight_memory(),
            "{name}: memory"
        );

        // bf16 compute (the file's default: bnb_4bit_compute_dtype bfloat16)
        // against bitsandbytes; a bf16 checkpoint runs every tensor in bf16 there.
        let dtype = if name == "relu-bf16" {
            FloatType::Bf16
        } else {
            FloatType::Bf16Mixed
        };
        let b16 = Backbone::load(&dir, Some(dtype), &device).unwrap();
        let sums16 = example_loss_sums(b16.model.as_ref(), &NoPrompt, &ex, 1);
        let m16 = mean(&sums16, &r);
        assert!(
            close(m16, r.bnb_bf16.mean_loss, 5e-3, 1e-6),
            "{name}: bf16 mean loss {m16} vs bitsandbytes {}",
            r.bnb_bf16.mean_loss
        );
        for (i, (got, want)) in sums16
            .iter()
            .zip(&r.bnb_bf16.per_example_loss_sum)
            .enumerate()
        {
            assert!(
                close(*got, *want, 2e-2, 1e-3),
                "{name} example {i}: bf16 loss sum {got} vs bitsandbytes {want}"
            );
        }
        let default = Backbone::load(&dir, None, &device).unwrap();
        assert_eq!(
            default.model.dtype(),
            FloatType::Bf16Mixed,
            "{name}: compute dtype"
        );
    }
}

/// The memory report: 4-bit layers at bitsandbytes' size, the rest apart.
#[test]
fn four_bit_weights_stay_four_bit_in_memory() {
    let device = ept::runtime::cpu_device(false);
    let b = Backbone::load(&nf4_dir().join("llama-gqa"), None, &device).unwrap();
    let m = b.model.weight_memory();
    assert_eq!(m.quantization.as_deref(), Some("nf4 + double quantization"));
    let r = model_ref("llama-gqa");
    let decoded = tensors(&nf4_dir().join("llama-gqa").join("decoded.safetensors"));
    let n: usize = r
        .quantized
        .iter()
        .map(|q| decoded[q].1.iter().product::<usize>())
        .sum();
    assert_eq!(m.quantized_parameters, n);
    assert_eq!(
        m.quantized_parameters + m.other_parameters,
        b.model.num_parameters()
    );
    // At a real layer's size (4096 × 1024): 0.5 + 1/64 + 4/(64·256) = 0.5159
    // bytes per weight, plus the 256-entry map and offset once per layer.
    let values: Vec<f32> = (0..4096 * 1024u64)
        .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 300.0)
        .collect();
    let q = Quant4::quantize(
        &values,
        &[4096, 1024],
        QuantType::Nf4,
        true,
        64,
        StoredDtype::Bf16,
    );
    let per = q.bytes() as f64 / q.numel() as f64;
    assert!((0.5159..0.5163).contains(&per), "{per} bytes per parameter");
}

/// A copy of a 4-bit fixture folder with `edit` applied to its config and tensors.
fn broken(
    tag: &str,
    edit_config: impl FnOnce(&mut serde_json::Value),
    edit_tensors: impl FnOnce(&mut BTreeMap<String, (String, Vec<usize>, Vec<u8>)>),
) -> PathBuf {
    let dir = common::temp_dir(&format!("nf4-bad-{tag}"));
    common::copy_dir(&nf4_dir().join("llama-gqa"), &dir);
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit_config(&mut config);
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
    let mut t = tensors(&dir.join("model.safetensors"));
    edit_tensors(&mut t);
    let dtype = |d: &str| match d {
        "U8" => safetensors::Dtype::U8,
        "F32" => safetensors::Dtype::F32,
        "BF16" => safetensors::Dtype::BF16,
        other => panic!("{other}"),
    };
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = t
        .iter()
        .map(|(n, (d, s, b))| {
            let v = safetensors::tensor::TensorView::new(dtype(d), s.clone(), b).unwrap();
            (n.clone(), v)
        })
        .collect();
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    dir
}

/// Every malformed 4-bit input is one line naming the file and the field, exit 2.
#[test]
fn bad_four_bit_inputs_are_one_line_errors() {
    const Q: &str = "model.layers.0.self_attn.q_proj.weight";
    let set = |k: &'static str, v: serde_json::Value| {
        move |c: &mut serde_json::Value| c["quantization_config"][k] = v
    };
    let keep = |_: &mut BTreeMap<String, (String, Vec<usize>, Vec<u8>)>| {};
    let cases: Vec<(&str, PathBuf, &[&str])> = vec![
        (
            "method",
            broken("method", set("quant_method", "awq".into()), keep),
            &["quant_method", "awq"],
        ),
        (
            "8bit",
            broken("8bit", set("load_in_8bit", true.into()), keep),
            &["load_in_8bit", "8-bit"],
        ),
        (
            "storage",
            broken(
                "storage",
                set("bnb_4bit_quant_storage", "bfloat16".into()),
                keep,
            ),
            &["bnb_4bit_quant_storage", "uint8"],
        ),
        (
            "type",
            broken("type", set("bnb_4bit_quant_type", "int4".into()), keep),
            &["bnb_4bit_quant_type", "int4"],
        ),
        (
            "compute",
            broken(
                "compute",
                set("bnb_4bit_compute_dtype", "float8".into()),
                keep,
            ),
            &["bnb_4bit_compute_dtype"],
        ),
        (
            "state-json",
            broken(
                "state-json",
                |_| {},
                |t| {
                    t.get_mut(&format!("{Q}.quant_state.bitsandbytes__nf4"))
                        .unwrap()
                        .2
                        .truncate(20);
                    let e = t
                        .get_mut(&format!("{Q}.quant_state.bitsandbytes__nf4"))
                        .unwrap();
                    e.1 = vec![20];
                },
            ),
            &[Q, "quant_state"],
        ),
        (
            "nested",
            broken(
                "nested",
                |_| {},
                |t| {
                    t.remove(&format!("{Q}.nested_absmax"));
                },
            ),
            &[Q, "nested_absmax", "missing"],
        ),
        (
            "packed",
            broken(
                "packed",
                |_| {},
                |t| {
                    let e = t.get_mut(Q).unwrap();
                    e.2.truncate(e.2.len() - 2);
                    e.1 = vec![e.2.len(), 1];
                },
            ),
            &[Q, "bytes"],
        ),
        (
            "stored-dtype",
            broken(
                "stored-dtype",
                |_| {},
                |t| {
                    let e = t.get_mut(Q).unwrap();
                    e.2.truncate(e.2.len() / 2 * 2);
                    e.1 = vec![e.2.len() / 2, 1];
                    e.0 = "BF16".into();
                },
            ),
            &[Q, "uint8"],
        ),
    ];
    for (what, dir, want) in cases {
        let e = error_of(&["inspect", "--model", dir.to_str().unwrap()]);
        assert!(
            e.contains("config.json") || e.contains("model.safetensors"),
            "{what}: {e}"
        );
        for w in want {
            assert!(e.contains(w), "{what}: `{w}` missing from {e}");
        }
    }
    // Flags and `ept quantize`'s own refusals.
    let src = fixtures().join("llama/llama-gqa");
    let e = error_of(&[
        "inspect",
        "--model",
        src.to_str().unwrap(),
        "--quantize",
        "int3",
    ]);
    assert!(e.contains("--quantize") && e.contains("nf4 or fp4"), "{e}");
    let four_bit = nf4_dir().join("llama-gqa");
    let out = common::temp_dir("nf4-requantize").join("q");
    let e = error_of(&[
        "quantize",
        "--model",
        four_bit.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        e.contains("quantization_config") && e.contains("already"),
        "{e}"
    );
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("mine.txt"), "keep").unwrap();
    let e = error_of(&[
        "quantize",
        "--model",
        src.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(e.contains("--overwrite"), "{e}");
    assert_eq!(
        std::fs::read_to_string(out.join("mine.txt")).unwrap(),
        "keep"
    );
}
