//! AdamW against Hugging Face's old `transformers.AdamW` (what DePT trains
//! with), on `tests/fixtures/optim/adamw.json` from `scripts/optim_reference.py`:
//! parameter groups, weight decay, global-norm clipping, the linear warm-up
//! schedule, a parameter without a gradient. Parameters and moments within 1e-6.

use crate::common;

use burn::tensor::{DType, Tensor, TensorData};
use ept::prompt::ParamGroup;
use ept::tensors::to_f32_vec;
use ept::train::optim::{AdamW, AdamWConfig, GroupSettings, clip_grad_norm};
use ept::train::schedule::Schedule;
use serde_json::Value;

fn flat(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(a) => a.iter().flat_map(flat).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap() as f32],
        other => panic!("unexpected {other}"),
    }
}

fn shape2(shape: &Value) -> [usize; 2] {
    let s: Vec<usize> = shape
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    match s.as_slice() {
        [n] => [1, *n],
        [a, b] => [*a, *b],
        _ => panic!("rank"),
    }
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-6 * w.abs().max(1.0),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

#[test]
fn adamw_matches_huggingface() {
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixtures().join("optim/adamw.json")).unwrap(),
    )
    .unwrap();
    let hyper = &fixture["hyper"];
    let device = ept::runtime::cpu_device(false);
    for (name, sc) in fixture["scenarios"].as_object().unwrap() {
        let params_meta = sc["params"].as_array().unwrap();
        let names: Vec<String> = params_meta
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect();
        let shapes: Vec<[usize; 2]> = params_meta.iter().map(|p| shape2(&p["shape"])).collect();
        let mut groups = Vec::new();
        for n in &names {
            let g = sc["groups"]
                .as_array()
                .unwrap()
                .iter()
                .find(|g| {
                    g["params"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|p| p == n.as_str())
                })
                .unwrap();
            let settings = GroupSettings {
                lr: g["lr"].as_f64().unwrap(),
                weight_decay: g["weight_decay"].as_f64().unwrap(),
            };
            groups.push((ParamGroup::Prompt, settings));
        }
        let tensor = |v: Vec<f32>, s: [usize; 2]| {
            Tensor::<2>::from_data(TensorData::new(v, s), (&device, DType::F32))
        };
        let mut params: Vec<Tensor<2>> = names
            .iter()
            .zip(&shapes)
            .map(|(n, s)| tensor(flat(&sc["initial"][n]), *s))
            .collect();
        let mut optim = AdamW::new(AdamWConfig::default(), names.len());
        let total = hyper["num_training_steps"].as_u64().unwrap();
        let warmup = hyper["num_warmup_steps"].as_u64().unwrap();
        for (k, step) in sc["steps"].as_array().unwrap().iter().enumerate() {
            let mut grads: Vec<Option<Tensor<2>>> = names
                .iter()
                .zip(&shapes)
                .map(|(n, s)| {
                    (!step["grads"][n].is_null()).then(|| tensor(flat(&step["grads"][n]), *s))
                })
                .collect();
            let norm = clip_grad_norm(&mut grads, hyper["max_grad_norm"].as_f64());
            let want_norm = step["grad_norm"].as_f64().unwrap();
            assert!(
                (norm - want_norm).abs() <= 1e-6 * want_norm,
                "{name} step {k}: norm {norm} vs {want_norm}"
            );
            let factor = Schedule::Linear.factor(k as u64, warmup, total);
            assert!(
                (factor - step["lr_factor"].as_f64().unwrap()).abs() < 1e-12,
                "{name} step {k}: lr factor"
            );
            params = optim.step(params, grads, &groups, factor);
            for (i, n) in names.iter().enumerate() {
                let what = format!("{name} step {k} {n}");
                assert_close(
                    &to_f32_vec(params[i].clone()),
                    &flat(&step["params"][n]),
                    &format!("{what} param"),
                );
                if let Some(m) = &optim.moments[i] {
                    assert_close(
                        &to_f32_vec(m.m.clone()),
                        &flat(&step["exp_avg"][n]),
                        &format!("{what} exp_avg"),
                    );
                    assert_close(
                        &to_f32_vec(m.v.clone()),
                        &flat(&step["exp_avg_sq"][n]),
                        &format!("{what} exp_avg_sq"),
                    );
                    assert_eq!(
                        m.step,
                        step["state_step"][n].as_u64().unwrap(),
                        "{what} step count"
                    );
                } else {
                    assert!(step["exp_avg"][n].is_null(), "{what}: state expected");
                }
            }
        }
    }
}
