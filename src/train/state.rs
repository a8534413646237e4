//! The resumable state of a run, written atomically to `last/`.
//!
//! `last/` holds the prompt (docs/FORMAT.md), the optimiser's moments
//! (`optimizer.safetensors`) and `state.json` (step, random generator, the
//! batches left in the current epoch, the best validation so far). It is
//! written as a sibling folder and swapped in by renames, so a crash at any
//! moment leaves either the previous `last/` or the new one, never a mix:
//! between the two renames the previous one is `last.old/`, which resume
//! falls back to.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, Device, Tensor, TensorData};

use super::optim::{AdamW, Moments};
use crate::error::{Error, Result};
use crate::prompt::SoftPrompt;
use crate::prompt::checkpoint::{self, PromptMeta};
use crate::rng::Rng;
use crate::tensors::{NamedF32, f32_from_le, safetensors_f32, to_f32_vec};

/// Validation or test scores.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Scores {
    pub loss: f64,
    pub metrics: std::collections::BTreeMap<String, f64>,
    /// The value that picks the best checkpoint (higher is better).
    pub selection: f64,
}

/// Everything besides the tensors that a resumed run needs to continue exactly.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct LoopState {
    /// Steps completed.
    pub step: u64,
    pub rng: Rng,
    /// Batches (example indices) left in the current epoch, next last.
    pub queue: Vec<Vec<usize>>,
    /// The step and validation scores of the best checkpoint so far.
    pub best: Option<(u64, Scores)>,
    pub optimizer_step: u64,
}

fn write_optimizer(path: &Path, optim: &AdamW) -> Result<()> {
    let mut tensors: Vec<NamedF32> = Vec::new();
    for (i, m) in optim.moments.iter().enumerate() {
        let Some(m) = m else { continue };
        for (kind, t) in [("m", &m.m), ("v", &m.v)] {
            tensors.push((
                format!("{kind}.{i}"),
                t.dims().to_vec(),
                to_f32_vec(t.clone()),
            ));
        }
    }
    let steps: Vec<u64> = optim
        .moments
        .iter()
        .map(|m| m.as_ref().map_or(0, |m| m.step))
        .collect();
    let md: HashMap<String, String> = [
        ("step".to_string(), optim.step.to_string()),
        (
            "param_steps".to_string(),
            serde_json::to_string(&steps).expect("integers"),
        ),
    ]
    .into();
    let bytes = safetensors_f32(&tensors, md).map_err(|e| Error::data(path, e.to_string()))?;
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

fn read_optimizer(path: &Path, optim: &mut AdamW, device: &Device) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::data(path, e.to_string()))?;
    let get = |name: &str| -> Option<Tensor<2>> {
        let v = st.tensor(name).ok()?;
        let shape = v.shape();
        let vals = f32_from_le(v.data());
        Some(Tensor::from_data(
            TensorData::new(vals, [shape[0], shape[1]]),
            (device, DType::F32),
        ))
    };
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::data(path, e.to_string()))?;
    let steps: Vec<u64> = header
        .metadata()
        .as_ref()
        .and_then(|md| md.get("param_steps"))
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| Error::field(path, "param_steps", "missing from the metadata"))?;
    for i in 0..optim.moments.len() {
        optim.moments[i] = match (get(&format!("m.{i}")), get(&format!("v.{i}"))) {
            (Some(m), Some(v)) => Some(Moments {
                m,
                v,
                step: steps.get(i).copied().unwrap_or(0),
            }),
            _ => None,
        };
    }
    Ok(())
}

/// Writes `last/` atomically (see the module docs). The environment variable
/// `EPT_TEST_CRASH_IN_CHECKPOINT=STEP` is a test hook: at that step the process
/// aborts after the temporary folder is written, as a kill at the worst moment would.
pub fn save_last(
    run_dir: &Path,
    prompt: &SoftPrompt,
    meta: &PromptMeta,
    optim: &AdamW,
    state: &LoopState,
) -> Result<()> {
    let last = run_dir.join("last");
    let tmp = run_dir.join(format!("last.tmp-{}", std::process::id()));
    let old = run_dir.join("last.old");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    checkpoint::save(&tmp.join("prompt.safetensors"), prompt, meta)?;
    write_optimizer(&tmp.join("optimizer.safetensors"), optim)?;
    let json = serde_json::to_vec(state).expect("state serialises");
    crate::error::write_atomic(tmp.join("state.json"), &json)?;
    let crash_at = std::env::var("EPT_TEST_CRASH_IN_CHECKPOINT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    if crash_at == Some(state.step) {
        // Simulates a kill between writing the new state and swapping it in.
        std::process::abort();
    }
    let _ = std::fs::remove_dir_all(&old);
    if last.exists() {
        std::fs::rename(&last, &old).map_err(|e| Error::io(&last, e))?;
    }
    std::fs::rename(&tmp, &last).map_err(|e| Error::io(&tmp, e))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// The `last/` folder to resume from: `last/`, or `last.old/` when a crash hit between the renames.
pub fn last_dir(run_dir: &Path) -> Result<PathBuf> {
    for name in ["last", "last.old"] {
        let dir = run_dir.join(name);
        if dir.join("state.json").is_file() {
            return Ok(dir);
        }
    }
    Err(Error::NotFound {
        path: run_dir.join("last").join("state.json"),
        hint: "nothing to resume: the run saved no checkpoint yet".into(),
    })
}

/// Loads prompt, optimiser moments and loop state from `last/`.
pub fn load_last(
    run_dir: &Path,
    optim: &mut AdamW,
    device: &Device,
) -> Result<(SoftPrompt, LoopState)> {
    let dir = last_dir(run_dir)?;
    let (prompt, _) = checkpoint::load(&dir.join("prompt.safetensors"), device)?;
    read_optimizer(&dir.join("optimizer.safetensors"), optim, device)?;
    let text = crate::error::read_to_string(dir.join("state.json"))?;
    let state: LoopState = serde_json::from_str(&text).map_err(|e| Error::Json {
        path: dir.join("state.json"),
        line: Some(e.line()),
        msg: e.to_string(),
    })?;
    optim.step = state.optimizer_step;
    Ok((prompt, state))
}
