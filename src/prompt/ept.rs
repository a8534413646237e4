//! The soft prompt of EPT (Lan et al., 2024), and of its special cases PT and DePT.
//!
//! One struct covers all three methods, because each is EPT with parts switched
//! off (the paper's Table 2): PT is the prompt alone; DePT adds the low-rank
//! update of the input embeddings; EPT adds prompt fusion and multi-space
//! projection on top. The forward pass below follows the paper's equations.
//!
//! Trainable tensors are all stored as 2-D f32 tensors (biases as `[1, n]`) so
//! that the optimiser treats them uniformly, whatever the backbone's dtype.

use burn::tensor::activation::{relu, softmax};
use burn::tensor::{Device, Tensor};

use super::{PromptInput, SoftInput};
use crate::error::{Error, Result};

/// How the paper's fusion einsum is read (METHOD.md §3 D).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FusionReading {
    /// As printed: softmax over the m axis, `Σ_l W[p,l] · P_s[p]` (= P_s: inert, kept to check the claim).
    Literal,
    /// Softmax over the prompt axis, same einsum: a learned per-row rescale driven by A·B.
    PromptSoftmax,
    /// Values are A·B: `P_f = P_s + W · (A·B)` (the default).
    CrossAttention,
}

impl FusionReading {
    pub fn parse(s: &str) -> Result<Option<Self>> {
        Ok(match s {
            "off" | "none" => None,
            "literal" => Some(FusionReading::Literal),
            "prompt-softmax" => Some(FusionReading::PromptSoftmax),
            "cross-attention" => Some(FusionReading::CrossAttention),
            other => {
                return Err(Error::invalid(format!(
                    "unknown fusion reading `{other}`: expected off, literal, prompt-softmax or cross-attention"
                )));
            }
        })
    }

    pub fn name(reading: Option<Self>) -> &'static str {
        match reading {
            None => "off",
            Some(FusionReading::Literal) => "literal",
            Some(FusionReading::PromptSoftmax) => "prompt-softmax",
            Some(FusionReading::CrossAttention) => "cross-attention",
        }
    }
}

/// Which optimiser group a trainable tensor belongs to (they get separate learning rates).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum ParamGroup {
    /// P (PT) or P_s (DePT, EPT).
    Prompt,
    /// A and B.
    LowRank,
    /// Experts and gate (discarded after training).
    Auxiliary,
}

/// The low-rank pair A (m×r), B (r×d) whose product updates the input embeddings.
#[derive(Clone, Debug)]
pub struct LowRank {
    pub a: Tensor<2>,
    pub b: Tensor<2>,
    /// 1 for EPT; `lora_alpha/√r` for DePT.
    pub scaling: f64,
}

impl LowRank {
    /// `scaling · A·B`, `[m, d]`.
    pub fn product(&self) -> Tensor<2> {
        let ab = self.a.clone().matmul(self.b.clone());
        if self.scaling == 1.0 {
            ab
        } else {
            ab * self.scaling
        }
    }

    pub fn max_len(&self) -> usize {
        self.a.dims()[0]
    }

    pub fn rank(&self) -> usize {
        self.a.dims()[1]
    }
}

/// One expert of the multi-space projection: `E_i(x) = W1_i · ReLU(W2_i · x)` (Eq. 5),
/// weights in PyTorch's `[out, in]` layout.
#[derive(Clone, Debug)]
pub struct Expert {
    pub w2: Tensor<2>,
    pub b2: Tensor<2>,
    pub w1: Tensor<2>,
    pub b1: Tensor<2>,
}

impl Expert {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let h = relu(x.matmul(self.w2.clone().transpose()) + self.b2.clone());
        h.matmul(self.w1.clone().transpose()) + self.b1.clone()
    }
}

/// N_e experts mixed per prompt row by a softmax gate (Eq. 5–7).
#[derive(Clone, Debug)]
pub struct MultiSpace {
    pub experts: Vec<Expert>,
    /// `[N_e, d]` and `[1, N_e]`.
    pub gate_w: Tensor<2>,
    pub gate_b: Tensor<2>,
}

impl MultiSpace {
    /// Gate weights `G = softmax_i(x · W_g)`, `[n, N_e]` (Eq. 6).
    pub fn gate(&self, x: Tensor<2>) -> Tensor<2> {
        softmax(
            x.matmul(self.gate_w.clone().transpose()) + self.gate_b.clone(),
            1,
        )
    }

    /// `P_amend = Σ_i G_i ⊙ E_i(x)` (Eq. 7).
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let g = self.gate(x.clone());
        let mut out: Option<Tensor<2>> = None;
        for (i, expert) in self.experts.iter().enumerate() {
            let gi = g.clone().narrow(1, i, 1);
            let term = expert.forward(x.clone()) * gi;
            out = Some(match out {
                Some(acc) => acc + term,
                None => term,
            });
        }
        out.expect("at least one expert")
    }
}

/// Prompt fusion (Eq. 3–4): enrich P_s with attention against A·B.
pub fn fuse(p_s: Tensor<2>, ab: Tensor<2>, reading: FusionReading) -> Tensor<2> {
    let d = p_s.dims()[1] as f64;
    // Eq. 3: similarity of every prompt row to every row of A·B, scaled by √d.
    let scores = p_s.clone().matmul(ab.clone().transpose()) / d.sqrt();
    match reading {
        // Eq. 4 as printed: 'bpl,bpd->bpd' sums W over l, then scales P_s.
        FusionReading::Literal => {
            let w = softmax(scores, 1);
            p_s.clone() + p_s * w.sum_dim(1)
        }
        FusionReading::PromptSoftmax => {
            let w = softmax(scores, 0);
            p_s.clone() + p_s * w.sum_dim(1)
        }
        // Eq. 4 with A·B as values: the low-rank knowledge instilled into the prompt.
        FusionReading::CrossAttention => {
            let w = softmax(scores, 1);
            p_s + w.matmul(ab)
        }
    }
}

/// A trainable soft prompt with any subset of EPT's parts.
#[derive(Clone, Debug)]
pub struct SoftPrompt {
    /// P (l×d) for PT, P_s (s×d) for DePT and EPT; P_new once materialised.
    pub prompt: Tensor<2>,
    pub low_rank: Option<LowRank>,
    pub fusion: Option<FusionReading>,
    pub multi_space: Option<MultiSpace>,
    /// Longest text input m the prompt was trained with (A·B's rows when present;
    /// PT keeps it too, so evaluation truncates as training did).
    pub max_len: Option<usize>,
}

impl SoftPrompt {
    pub fn len(&self) -> usize {
        self.prompt.dims()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn d_model(&self) -> usize {
        self.prompt.dims()[1]
    }

    /// Checks that the parts fit together (fusion needs A·B; shapes agree).
    pub fn validate(&self) -> Result<()> {
        let d = self.d_model();
        if self.fusion.is_some() && self.low_rank.is_none() {
            return Err(Error::invalid(
                "prompt fusion attends to A·B: it needs the decomposition (low-rank A, B)",
            ));
        }
        if let Some(lr) = &self.low_rank
            && (lr.b.dims()[1] != d || lr.b.dims()[0] != lr.a.dims()[1])
        {
            return Err(Error::invalid(format!(
                "low-rank shapes do not fit: A {:?}, B {:?}, prompt width {d}",
                lr.a.dims(),
                lr.b.dims()
            )));
        }
        if let (Some(lr), Some(m)) = (&self.low_rank, self.max_len)
            && lr.max_len() != m
        {
            return Err(Error::invalid(format!(
                "A has {} rows but the prompt's m is {m}",
                lr.max_len()
            )));
        }
        if let Some(ms) = &self.multi_space
            && ms.experts.is_empty()
        {
            return Err(Error::invalid(
                "multi-space projection needs at least one expert (N_e >= 1)",
            ));
        }
        Ok(())
    }

    /// The reconstructed prompt `P_new = P_amend + P_f` (Eq. 8), `[n, d]`, given `A·B` if any.
    pub fn reconstructed(&self, ab: Option<&Tensor<2>>) -> Tensor<2> {
        let p_s = self.prompt.clone();
        // Eq. 3–4: P_f; without fusion P_f = P_s.
        let p_f = match (self.fusion, ab) {
            (Some(reading), Some(ab)) => fuse(p_s.clone(), ab.clone(), reading),
            _ => p_s.clone(),
        };
        // Eq. 5–7: P_amend; without experts it is 0.
        match &self.multi_space {
            Some(ms) => ms.forward(p_s) + p_f,
            None => p_f,
        }
    }

    /// The gate's weights per short-prompt row and space, `[s][N_e]` (Eq. 6;
    /// the paper's Figure 8), or `None` without multi-space projection.
    pub fn gate_weights(&self) -> Option<Vec<Vec<f32>>> {
        let ms = self.multi_space.as_ref()?;
        let g = ms.gate(self.prompt.clone().detach());
        let [_, n] = g.dims();
        let values = crate::tensors::to_f32_vec(g);
        Some(values.chunks(n).map(<[f32]>::to_vec).collect())
    }

    /// Collapses the auxiliary networks: P_new becomes the prompt, A and B stay.
    /// The result computes the same encoder input with no fusion or experts.
    pub fn materialize(&self) -> SoftPrompt {
        let ab = self.low_rank.as_ref().map(LowRank::product);
        SoftPrompt {
            prompt: self.reconstructed(ab.as_ref()).detach(),
            low_rank: self.low_rank.as_ref().map(|lr| LowRank {
                a: lr.a.clone().detach(),
                b: lr.b.clone().detach(),
                scaling: lr.scaling,
            }),
            fusion: None,
            multi_space: None,
            max_len: self.max_len,
        }
    }

    /// Every trainable tensor with its checkpoint name and optimiser group.
    pub fn params(&self) -> Vec<(String, ParamGroup, &Tensor<2>)> {
        let mut out = vec![("prompt".to_string(), ParamGroup::Prompt, &self.prompt)];
        if let Some(lr) = &self.low_rank {
            out.push(("lora_a".into(), ParamGroup::LowRank, &lr.a));
            out.push(("lora_b".into(), ParamGroup::LowRank, &lr.b));
        }
        if let Some(ms) = &self.multi_space {
            for (i, e) in ms.experts.iter().enumerate() {
                out.push((
                    format!("experts.{i}.w2.weight"),
                    ParamGroup::Auxiliary,
                    &e.w2,
                ));
                out.push((format!("experts.{i}.w2.bias"), ParamGroup::Auxiliary, &e.b2));
                out.push((
                    format!("experts.{i}.w1.weight"),
                    ParamGroup::Auxiliary,
                    &e.w1,
                ));
                out.push((format!("experts.{i}.w1.bias"), ParamGroup::Auxiliary, &e.b1));
            }
            out.push(("gate.weight".into(), ParamGroup::Auxiliary, &ms.gate_w));
            out.push(("gate.bias".into(), ParamGroup::Auxiliary, &ms.gate_b));
        }
        out
    }

    /// Mutable access to the trainable tensors, in the order of [`Self::params`].
    pub fn params_mut(&mut self) -> Vec<&mut Tensor<2>> {
        let mut out = vec![&mut self.prompt];
        if let Some(lr) = &mut self.low_rank {
            out.push(&mut lr.a);
            out.push(&mut lr.b);
        }
        if let Some(ms) = &mut self.multi_space {
            for e in &mut ms.experts {
                out.push(&mut e.w2);
                out.push(&mut e.b2);
                out.push(&mut e.w1);
                out.push(&mut e.b1);
            }
            out.push(&mut ms.gate_w);
            out.push(&mut ms.gate_b);
        }
        out
    }

    /// Moves every tensor to `device` and marks it trainable (or not).
    pub fn to_device(mut self, device: &Device, trainable: bool) -> Self {
        for t in self.params_mut() {
            let moved = t.clone().detach().to_device(device);
            let moved = if device.is_autodiff() {
                moved.autodiff()
            } else {
                moved.without_autodiff()
            };
            *t = if trainable && device.is_autodiff() {
                moved.require_grad()
            } else {
                moved
            };
        }
        self
    }

    /// Number of parameters per group.
    pub fn count(&self, group: ParamGroup) -> usize {
        self.params()
            .iter()
            .filter(|(_, g, _)| *g == group)
            .map(|(_, _, t)| t.dims().iter().product::<usize>())
            .sum()
    }
}

impl PromptInput for SoftPrompt {
    fn soft_input(&self) -> SoftInput {
        // A·B once: Eq. 2 adds it to the text embeddings, Eq. 3–4 fuse it into the prompt.
        let ab = self.low_rank.as_ref().map(LowRank::product);
        // Eq. 8: P_new, input-independent: computed once and broadcast over the batch.
        let prefix = self.reconstructed(ab.as_ref());
        SoftInput {
            prefix: Some(prefix),
            position_update: ab,
        }
    }

    fn max_input_len(&self) -> Option<usize> {
        self.max_len
            .or(self.low_rank.as_ref().map(LowRank::max_len))
    }
}
