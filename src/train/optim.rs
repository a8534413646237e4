//! AdamW with parameter groups, in Hugging Face's old `transformers.AdamW`
//! semantics (DePT's optimiser): eps added to √v before bias correction is
//! folded into the step size, decoupled weight decay applied after the update.
//! State is f32 whatever the backbone's dtype.

use burn::tensor::{DType, Tensor};

use crate::prompt::{ParamGroup, SoftPrompt};

/// Settings of one parameter group.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GroupSettings {
    pub lr: f64,
    pub weight_decay: f64,
}

/// Adam hyper-parameters shared by all groups.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub correct_bias: bool,
}

impl Default for AdamWConfig {
    /// Hugging Face's old defaults: betas (0.9, 0.999), eps 1e-6, bias correction on.
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-6,
            correct_bias: true,
        }
    }
}

/// First and second moments of one parameter, and its own step count (the old
/// Hugging Face AdamW counts steps per parameter: one skipped for lack of a
/// gradient keeps its count, which changes its bias correction).
#[derive(Clone, Debug)]
pub struct Moments {
    pub m: Tensor<2>,
    pub v: Tensor<2>,
    pub step: u64,
}

/// The optimiser: its settings, step count and per-parameter moments.
#[derive(Clone, Debug)]
pub struct AdamW {
    pub config: AdamWConfig,
    pub step: u64,
    pub moments: Vec<Option<Moments>>,
}

impl AdamW {
    pub fn new(config: AdamWConfig, n_params: usize) -> Self {
        AdamW {
            config,
            step: 0,
            moments: vec![None; n_params],
        }
    }

    /// One update of every parameter in `params` (not tracked by autodiff) with
    /// gradients `grads` (same order; `None` leaves a parameter unchanged), at the
    /// learning rate `lr_scale × group lr`. Returns the updated parameters.
    pub fn step(
        &mut self,
        params: Vec<Tensor<2>>,
        grads: Vec<Option<Tensor<2>>>,
        groups: &[(ParamGroup, GroupSettings)],
        lr_scale: f64,
    ) -> Vec<Tensor<2>> {
        self.step += 1;
        let c = self.config;
        params
            .into_iter()
            .zip(grads)
            .enumerate()
            .map(|(i, (p, g))| {
                let Some(g) = g else { return p };
                let g = g.cast(DType::F32);
                let settings = groups[i].1;
                let lr = settings.lr * lr_scale;
                let state = self.moments[i].take().unwrap_or_else(|| Moments {
                    m: p.zeros_like(),
                    v: p.zeros_like(),
                    step: 0,
                });
                let t = state.step + 1;
                let (bc1, bc2) = if c.correct_bias {
                    (1.0 - c.beta1.powi(t as i32), 1.0 - c.beta2.powi(t as i32))
                } else {
                    (1.0, 1.0)
                };
                let m = state.m * c.beta1 + g.clone() * (1.0 - c.beta1);
                let v = state.v * c.beta2 + g.square() * (1.0 - c.beta2);
                let denom = v.clone().sqrt() + c.eps;
                let step_size = lr * bc2.sqrt() / bc1;
                let mut p = p - m.clone() / denom * step_size;
                if settings.weight_decay > 0.0 {
                    p = p.clone() - p * (lr * settings.weight_decay);
                }
                self.moments[i] = Some(Moments { m, v, step: t });
                p
            })
            .collect()
    }
}

impl AdamW {
    /// One [`AdamW::step`] of `prompt`'s parameters in place: the update runs
    /// on the plain f32 tensors, which go back on the autodiff device as
    /// trainable leaves for the next forward pass.
    pub fn step_prompt(
        &mut self,
        prompt: &mut SoftPrompt,
        grads: Vec<Option<Tensor<2>>>,
        groups: &[(ParamGroup, GroupSettings)],
        lr_scale: f64,
    ) {
        let current: Vec<Tensor<2>> = prompt
            .params()
            .iter()
            .map(|(_, _, t)| (*t).clone().inner())
            .collect();
        let updated = self.step(current, grads, groups, lr_scale);
        for (slot, new) in prompt.params_mut().into_iter().zip(updated) {
            *slot = new.autodiff().require_grad();
        }
    }
}

/// Scales `grads` so that their global L2 norm is at most `max_norm`
/// (PyTorch's `clip_grad_norm_`: coefficient `max_norm / (norm + 1e-6)`).
/// Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Option<Tensor<2>>], max_norm: Option<f64>) -> f64 {
    // One read back to the host per step, not one per parameter group: on a
    // GPU each read waits for the queued work to finish.
    let squares = grads
        .iter()
        .flatten()
        .map(|g| g.clone().cast(DType::F32).square().sum())
        .reduce(|a, b| a + b);
    let total = squares.map_or(0.0, |s| (s.into_scalar::<f32>() as f64).sqrt());
    if let Some(max) = max_norm {
        let coef = max / (total + 1e-6);
        if coef < 1.0 {
            for g in grads.iter_mut().flatten() {
                *g = g.clone() * coef;
            }
        }
    }
    total
}
