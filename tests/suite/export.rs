//! `ept export`: PEFT's adapter (checked against one PEFT itself loaded in
//! `scripts/peft_reference.py`), DePT's lossless layout, and our materialised format.

use crate::common;

use std::process::Command;

use common::{close, fixtures, temp_dir};

fn ept(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ept"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .unwrap()
}

fn tensors(path: &std::path::Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| {
            let vals = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (n, t.shape().to_vec(), vals)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn eval_loss(prompt: &std::path::Path) -> f64 {
    let out = ept(&[
        "eval",
        "--model",
        "tests/fixtures/t5/relu-tied",
        "--data",
        "tests/fixtures/data.jsonl",
        "--json",
        "--prompt",
        prompt.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    v["loss"].as_f64().unwrap()
}

#[test]
fn peft_export_is_what_peft_loads() {
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("peft/reference.json")).unwrap(),
    )
    .unwrap();
    let out_dir = temp_dir("export-peft");
    let pt = fixtures().join("prompt/pt/prompt.safetensors");
    let out = ept(&[
        "export",
        pt.to_str().unwrap(),
        "--format",
        "peft",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(ours, reference["adapter_config"]);
    let want = tensors(&fixtures().join("peft/pt-adapter/adapter_model.safetensors"));
    assert_eq!(tensors(&out_dir.join("adapter_model.safetensors")), want);
    // The loss PEFT + transformers computed with this adapter equals ours for the PT prompt.
    let peft_loss = reference["loss"].as_f64().unwrap();
    let ours = eval_loss(&pt);
    assert!(
        close(ours, peft_loss, 1e-4, 1e-6),
        "ept {ours} vs PEFT {peft_loss}"
    );
}

#[test]
fn dept_and_native_exports_keep_the_low_rank_part() {
    let src = fixtures().join("prompt/ept-cross/prompt.safetensors");
    let device = ept::runtime::cpu_device(false);
    let (prompt, _) = ept::prompt::checkpoint::load(&src, &device).unwrap();
    let mat = prompt.materialize();

    // Native: materialised, same loss.
    let native = temp_dir("export-native");
    let out = ept(&[
        "export",
        src.to_str().unwrap(),
        "--format",
        "native",
        "--out",
        native.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (reloaded, meta) =
        ept::prompt::checkpoint::load(&native.join("prompt.safetensors"), &device).unwrap();
    assert!(meta.materialized && reloaded.multi_space.is_none() && reloaded.fusion.is_none());
    let a = eval_loss(&src);
    let b = eval_loss(&native.join("prompt.safetensors"));
    assert!(close(a, b, 1e-5, 1e-6), "{a} vs {b}");

    // DePT: P_new, A, and B rescaled so that DePT's alpha/√r reproduces our A·B.
    let dept = temp_dir("export-dept");
    let out = ept(&[
        "export",
        src.to_str().unwrap(),
        "--format",
        "dept",
        "--out",
        dept.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dept.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "PROMPT_TUNING_LORA");
    let r = cfg["r"].as_u64().unwrap() as usize;
    let alpha = cfg["lora_alpha"].as_f64().unwrap();
    let t = tensors(&dept.join("adapter_model.safetensors"));
    let get = |n: &str| t.iter().find(|x| x.0 == n).unwrap().clone();
    let (_, sa, va) = get("prompt_encoder.lora_embedding_A");
    let (_, sb, vb) = get("prompt_encoder.lora_embedding_B");
    let (_, _, vp) = get("prompt_embeddings");
    assert_eq!(vp, ept::tensors::to_f32_vec(mat.prompt.clone()));
    let ours = ept::tensors::to_f32_vec(mat.low_rank.as_ref().unwrap().product());
    let (m, d) = (sa[0], sb[1]);
    let scale = (alpha / (r as f64).sqrt()) as f32;
    for i in 0..m {
        for j in 0..d {
            let ab: f32 = (0..r).map(|k| va[i * r + k] * vb[k * d + j]).sum::<f32>() * scale;
            assert!((ab - ours[i * d + j]).abs() <= 1e-5 * ours[i * d + j].abs().max(1.0));
        }
    }
    // PEFT's format drops A·B, and says so.
    let peft = temp_dir("export-peft-lossy");
    let out = ept(&[
        "export",
        src.to_str().unwrap(),
        "--format",
        "peft",
        "--out",
        peft.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("A·B"));
}
