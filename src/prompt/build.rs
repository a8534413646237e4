//! Building a fresh prompt of each method from its settings (METHOD.md §2, §4).

use burn::tensor::{DType, Device, Tensor, TensorData};

use super::budget::Budget;
use super::ept::{Expert, FusionReading, LowRank, MultiSpace, SoftPrompt};
use super::init::{self, Align, Matrix, Split};
use crate::error::{Error, Result};
use crate::model::{FrozenModel, TextTokenizer};
use crate::rng::Rng;

/// The prompt methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Vanilla prompt tuning (Lester et al., 2021).
    Pt,
    /// Decomposed prompt tuning (Shi & Lipani, 2024).
    Dept,
    /// Efficient prompt tuning (Lan et al., 2024).
    Ept,
}

impl Method {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "pt" => Ok(Method::Pt),
            "dept" => Ok(Method::Dept),
            "ept" => Ok(Method::Ept),
            other => Err(Error::invalid(format!(
                "unknown method `{other}`: expected pt, dept or ept"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::Pt => "pt",
            Method::Dept => "dept",
            Method::Ept => "ept",
        }
    }
}

/// Where the prompt rows start from.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PromptInit {
    /// Rows of the frozen embedding for ids sampled from the 5000 most frequent pieces.
    Vocab,
    /// The embedding of a text's tokens, repeated to fill.
    Text(String),
    /// N(0, 1): trains badly, kept for comparison.
    Random,
}

/// Every setting of a fresh prompt. Defaults are METHOD.md's (T5-Base, s = 60 of l = 100).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PromptConfig {
    pub method: Method,
    /// Long prompt length l (the budget).
    pub l: usize,
    /// Short prompt length s (DePT, EPT); `None` solves it from `r`, else 60.
    pub s: Option<usize>,
    /// Rank r; `None` solves it from the budget.
    pub r: Option<usize>,
    /// Maximum text length m (rows of A·B).
    pub m: usize,
    pub num_experts: usize,
    /// Experts' hidden width; `None` = m, as in the paper.
    pub expert_hidden: Option<usize>,
    /// EPT's switches (the paper's Table 2).
    pub decomposition: bool,
    pub fusion: Option<FusionReading>,
    pub multi_space: bool,
    pub init: PromptInit,
    pub align: Align,
    pub split: Split,
    /// DePT's lora_alpha: A·B is scaled by alpha/√r.
    pub lora_alpha: f64,
    pub seed: u64,
}

impl PromptConfig {
    /// The paper's defaults for `method`.
    pub fn new(method: Method) -> Self {
        PromptConfig {
            method,
            l: 100,
            s: None,
            r: None,
            m: 256,
            num_experts: 4,
            expert_hidden: None,
            decomposition: method != Method::Pt,
            fusion: (method == Method::Ept).then_some(FusionReading::CrossAttention),
            multi_space: method == Method::Ept,
            init: PromptInit::Vocab,
            align: Align::ZeroPad,
            split: Split::Balanced,
            lora_alpha: 8.0,
            seed: 42,
        }
    }

    /// Solves s and r for width `d`.
    pub fn budget(&self, d: usize) -> Result<Budget> {
        if self.method == Method::Pt || !self.decomposition {
            return Ok(Budget {
                l: self.l,
                s: self.l,
                r: 0,
                m: self.m,
                d,
            });
        }
        let s = match (self.s, self.r) {
            (None, None) => Some(60.min(self.l) as i64),
            (s, _) => s.map(|s| s as i64),
        };
        Budget::solve(Some(self.l as i64), s, self.r.map(|r| r as i64), self.m, d)
    }
}

fn tensor2(m: &Matrix, device: &Device) -> Tensor<2> {
    Tensor::from_data(
        TensorData::new(m.data.clone(), [m.rows, m.cols]),
        (device, DType::F32),
    )
}

/// Rows `ids` of the frozen embedding, as f32.
fn embedding_rows(model: &dyn FrozenModel, ids: &[usize]) -> Matrix {
    Matrix {
        rows: ids.len(),
        cols: model.hidden_size(),
        data: crate::tensors::to_f32_vec(model.embedding_rows(ids)),
    }
}

/// The initial prompt rows (n×d).
fn initial_prompt(
    cfg: &PromptConfig,
    n: usize,
    model: &dyn FrozenModel,
    tok: &TextTokenizer,
    rng: &mut Rng,
) -> Result<Matrix> {
    let d = model.hidden_size();
    Ok(match &cfg.init {
        PromptInit::Vocab => {
            embedding_rows(model, &init::sample_vocab_ids(n, model.vocab_size(), rng))
        }
        PromptInit::Text(text) => {
            let mut ids = tok.encode(text, None)?;
            if ids.last() == Some(&tok.eos_id) {
                ids.pop();
            }
            embedding_rows(model, &init::text_ids(&ids, n)?)
        }
        PromptInit::Random => init::random_normal(n, d, rng),
    })
}

fn multi_space(cfg: &PromptConfig, d: usize, rng: &mut Rng, device: &Device) -> Result<MultiSpace> {
    if cfg.num_experts == 0 {
        return Err(Error::invalid(
            "number of spaces N_e = 0: multi-space projection needs N_e >= 1",
        ));
    }
    let h = cfg.expert_hidden.unwrap_or(cfg.m);
    let experts = (0..cfg.num_experts)
        .map(|_| {
            let (w2, b2) = init::linear_default(d, h, rng);
            let (w1, b1) = init::linear_default(h, d, rng);
            Expert {
                w2: tensor2(&w2, device),
                b2: tensor2(&b2, device),
                w1: tensor2(&w1, device),
                b1: tensor2(&b1, device),
            }
        })
        .collect();
    let (gw, gb) = init::linear_default(d, cfg.num_experts, rng);
    Ok(MultiSpace {
        experts,
        gate_w: tensor2(&gw, device),
        gate_b: tensor2(&gb, device),
    })
}

/// Builds a fresh prompt for `model` (tensors on the model's device, not yet trainable).
pub fn build_prompt(
    cfg: &PromptConfig,
    model: &dyn FrozenModel,
    tok: &TextTokenizer,
) -> Result<SoftPrompt> {
    let d = model.hidden_size();
    let device = model.device().clone();
    let mut rng = Rng::new(cfg.seed);
    let budget = cfg.budget(d)?;
    if cfg.l == 0 {
        return Err(Error::invalid("prompt length l = 0: nothing to train"));
    }
    if budget.s == 0 {
        return Err(Error::invalid(
            "short prompt length s = 0: fusion and multi-space have nothing to act on (that is DePT without a prompt)",
        ));
    }
    let prompt = match cfg.method {
        Method::Pt => SoftPrompt {
            prompt: tensor2(&initial_prompt(cfg, cfg.l, model, tok, &mut rng)?, &device),
            low_rank: None,
            fusion: None,
            multi_space: None,
            max_len: Some(cfg.m),
        },
        Method::Dept => {
            let p_s = initial_prompt(cfg, budget.s, model, tok, &mut rng)?;
            let a = init::kaiming_uniform_sqrt5(cfg.m, budget.r, &mut rng);
            let b = Matrix::zeros(budget.r, d);
            SoftPrompt {
                prompt: tensor2(&p_s, &device),
                low_rank: (budget.r > 0).then(|| LowRank {
                    a: tensor2(&a, &device),
                    b: tensor2(&b, &device),
                    scaling: cfg.lora_alpha / (budget.r as f64).sqrt(),
                }),
                fusion: None,
                multi_space: None,
                max_len: Some(cfg.m),
            }
        }
        Method::Ept => {
            // §2.1: P (l×d) sampled from the vocabulary; P_s = its first s rows.
            let p = initial_prompt(cfg, cfg.l, model, tok, &mut rng)?;
            let decomposed = cfg.decomposition && budget.r > 0;
            let p_s = if cfg.decomposition {
                Matrix {
                    rows: budget.s,
                    cols: d,
                    data: p.data[..budget.s * d].to_vec(),
                }
            } else {
                p.clone()
            };
            // §2.2: A, B from the truncated SVD of P aligned to m rows.
            let low_rank = if decomposed {
                let (a, b) = init::svd_decompose(&p, cfg.m, budget.r, cfg.align, cfg.split)?;
                Some(LowRank {
                    a: tensor2(&a, &device),
                    b: tensor2(&b, &device),
                    scaling: 1.0,
                })
            } else {
                None
            };
            if cfg.fusion.is_some() && !cfg.decomposition {
                return Err(Error::invalid(
                    "prompt fusion attends to A·B: switch the decomposition on, or fusion off",
                ));
            }
            SoftPrompt {
                prompt: tensor2(&p_s, &device),
                // With r = 0 there is no A·B to fuse with: fusion is the identity.
                fusion: if low_rank.is_some() { cfg.fusion } else { None },
                low_rank,
                multi_space: if cfg.multi_space {
                    Some(multi_space(cfg, d, &mut rng, &device)?)
                } else {
                    None
                },
                max_len: Some(cfg.m),
            }
        }
    };
    prompt.validate()?;
    Ok(prompt)
}
