//! The resumable state of a run, written atomically to `last/`.
//!
//! `last/` holds the prompt (docs/FORMAT.md), the optimiser's moments
//! (`optimizer.safetensors`) and `state.json` (step, random generator, the
//! batches left in the current epoch, the best validation so far). It is
//! written as a sibling folder and swapped in by renames, so a crash at any
//! moment leaves either the previous `last/` or the new one, never a mix:
//! between the two renames the previous one is `last.old/`, which resume
//! falls back to. A write that fails part-way (disk full) removes the
//! temporary folder and leaves the previous `last/` as it was.

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
    crate::error::write_atomic(path, &bytes)
}

/// Reads AdamW's moments; `shapes[i]` is parameter `i`'s shape, which its
/// moments must have (a file from another run or a damaged one is refused,
/// naming the tensor).
fn read_optimizer(
    path: &Path,
    optim: &mut AdamW,
    shapes: &[Vec<usize>],
    device: &Device,
) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::data(path, e.to_string()))?;
    let get = |name: &str, want: &[usize]| -> Result<Option<Tensor<2>>> {
        let Ok(v) = st.tensor(name) else {
            return Ok(None);
        };
        if v.dtype() != safetensors::Dtype::F32 || v.shape() != want {
            return Err(Error::field(
                path,
                name,
                format!(
                    "{:?} {:?}: expected F32 {want:?}, the shape of the parameter it belongs to",
                    v.dtype(),
                    v.shape()
                ),
            ));
        }
        let vals = f32_from_le(v.data());
        Ok(Some(Tensor::from_data(
            TensorData::new(vals, [want[0], want[1]]),
            (device, DType::F32),
        )))
    };
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::data(path, e.to_string()))?;
    let steps: Vec<u64> = header
        .metadata()
        .as_ref()
        .and_then(|md| md.get("param_steps"))
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| Error::field(path, "param_steps", "missing from the metadata"))?;
    if shapes.len() != optim.moments.len() {
        return Err(Error::data(
            path,
            format!(
                "the optimiser has {} parameter groups, the prompt {}",
                optim.moments.len(),
                shapes.len()
            ),
        ));
    }
    for (i, want) in shapes.iter().enumerate() {
        optim.moments[i] = match (get(&format!("m.{i}"), want)?, get(&format!("v.{i}"), want)?) {
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

/// Writes `last/` atomically (see the module docs). A write that fails part-way
/// (disk full, permission removed) removes the temporary folder and leaves the
/// previous `last/` as it was; the error names the file under `last/`. The
/// environment variable `EPT_TEST_CRASH_IN_CHECKPOINT=STEP` is a test hook: at
/// that step the process aborts after the temporary folder is written, as a kill
/// at the worst moment would (`EPT_TEST_FAIL_WRITE`, see
/// [`crate::error::injected_failure`], makes one of its writes fail instead).
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
    let written = write_files(&tmp, prompt, meta, optim, state);
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(renamed(e, &tmp, &last));
    }
    let crash_at = std::env::var("EPT_TEST_CRASH_IN_CHECKPOINT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    if crash_at == Some(state.step) {
        // Simulates a kill between writing the new state and swapping it in.
        std::process::abort();
    }
    // With no `last/` (a crash between the renames), `last.old/` is the checkpoint
    // resume reads: it stays until the new `last/` is in place.
    if last.exists() {
        let _ = std::fs::remove_dir_all(&old);
        if let Err(e) = std::fs::rename(&last, &old) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(Error::io(&last, e));
        }
    }
    if let Err(e) = std::fs::rename(&tmp, &last) {
        let _ = std::fs::remove_dir_all(&tmp);
        if !last.exists() {
            let _ = std::fs::rename(&old, &last);
        }
        return Err(Error::io(&last, e));
    }
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// The files of a `last/` folder, written into `dir`.
fn write_files(
    dir: &Path,
    prompt: &SoftPrompt,
    meta: &PromptMeta,
    optim: &AdamW,
    state: &LoopState,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    checkpoint::save(&dir.join("prompt.safetensors"), prompt, meta)?;
    write_optimizer(&dir.join("optimizer.safetensors"), optim)?;
    let json = serde_json::to_vec(state).expect("state serialises");
    crate::error::write_atomic(dir.join("state.json"), &json)
}

/// `err` with the paths under `from` (the temporary folder, gone) shown under `to`.
fn renamed(err: Error, from: &Path, to: &Path) -> Error {
    let fix = |p: PathBuf| match p.strip_prefix(from) {
        Ok(rest) => to.join(rest),
        Err(_) => p,
    };
    match err {
        Error::Io { path, source } => Error::Io {
            path: fix(path),
            source,
        },
        Error::NotFound { path, hint } => Error::NotFound {
            path: fix(path),
            hint,
        },
        Error::Data { path, msg } => Error::Data {
            path: fix(path),
            msg,
        },
        other => other,
    }
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
    let shapes: Vec<Vec<usize>> = prompt
        .params()
        .iter()
        .map(|(_, _, t)| t.dims().to_vec())
        .collect();
    read_optimizer(&dir.join("optimizer.safetensors"), optim, &shapes, device)?;
    let path = dir.join("state.json");
    let state: LoopState = crate::error::parse_json(&path, &crate::error::read_to_string(&path)?)?;
    optim.step = state.optimizer_step;
    Ok((prompt, state))
}
