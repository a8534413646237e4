//! A Llama-family decoder as a [`FrozenModel`]: text-to-text on one sequence.
//!
//! An example is `[prompt ; source ; target EOS]` (LLAMA.md, "Text-to-text
//! examples on a decoder"): the source as the tokenizer's post-processor
//! makes it, the target without special tokens, then EOS; only the target
//! and EOS are scored, each by the hidden state one position before it.
//! Rows are right-padded and padding keys masked, so every real token keeps
//! the position it has alone. The prompt's position update (A·B) reaches text
//! position j < m, source and target alike, and generated tokens too.

use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use super::batch::TokenizedExample;
use super::frozen::FrozenModel;
use super::layers::{embedding_rows, token_loss_sums};
use super::llama::{KvCache, Llama};
use super::soft::SoftInput;
use crate::io::weights::FloatType;

/// Right-padded token ids `[b, t]` and their mask.
fn padded(
    rows: &[Vec<u32>],
    pad: u32,
    min_len: usize,
    device: &Device,
) -> (Tensor<2, Int>, Tensor<2>, usize) {
    let b = rows.len();
    let t = rows
        .iter()
        .map(Vec::len)
        .max()
        .unwrap_or(0)
        .max(min_len)
        .max(1);
    let mut ids = Vec::with_capacity(b * t);
    let mut mask = Vec::with_capacity(b * t);
    for r in rows {
        for j in 0..t {
            ids.push(r.get(j).map_or(pad as i64, |&x| x as i64));
            mask.push(if j < r.len() { 1f32 } else { 0.0 });
        }
    }
    (
        Tensor::<2, Int>::from_data(TensorData::new(ids, [b, t]), device),
        Tensor::<2>::from_data(TensorData::new(mask, [b, t]), (device, DType::F32)),
        t,
    )
}

/// A right-padded batch with the prompt in front, ready for the stack.
struct Prefill {
    /// `[b, n + t, d]`.
    x: Tensor<3>,
    /// Every row's positions, `0..n+t`.
    positions: Vec<Vec<usize>>,
    /// Each row's key positions (`None` at padding).
    keys: Vec<Vec<Option<usize>>>,
    /// The padded text length.
    t: usize,
}

impl Llama {
    /// Embeds right-padded `texts` and puts the prompt in front.
    fn prefill_input(&self, soft: &SoftInput, texts: &[Vec<u32>], min_len: usize) -> Prefill {
        let (ids, mask, t) = padded(texts, self.config.pad_id(), min_len, &self.device);
        let (x, _) = soft.apply(self.embed(ids), mask);
        let n = soft.prefix_len();
        let positions = vec![(0..n + t).collect::<Vec<_>>(); texts.len()];
        let keys = texts
            .iter()
            .map(|r| (0..n + t).map(|c| (c < n + r.len()).then_some(c)).collect())
            .collect();
        Prefill {
            x,
            positions,
            keys,
            t,
        }
    }

    /// The greedy next token after `text` with the prompt, recomputed over the
    /// whole sequence without a cache (the reference the cached path is tested against).
    pub fn greedy_next(&self, soft: &SoftInput, text: &[u32]) -> u32 {
        let p = self.prefill_input(soft, &[text.to_vec()], 0);
        let h = self.hidden(p.x, &p.positions, &p.keys, None);
        let last = h.dims()[1] - 1;
        let logits = self.head(h.narrow(1, last, 1));
        crate::tensors::to_i64_vec(logits.argmax(2))[0] as u32
    }

    /// The f32 logits that score each row's target tokens `[b, k, vocab]`
    /// (k: the longest target), with the target ids `[b, k]` and their mask
    /// (1 = a real target token): what [`FrozenModel::loss_sums`] sums, and
    /// what `ept pretrain` trains and scores the decoder organism on.
    pub fn target_logits(
        &self,
        soft: &SoftInput,
        rows: &[TokenizedExample],
        min_input_len: usize,
    ) -> (Tensor<3>, Tensor<2, Int>, Tensor<2>) {
        let b = rows.len();
        let texts: Vec<Vec<u32>> = rows
            .iter()
            .map(|r| [r.input_ids.as_slice(), r.label_ids.as_slice()].concat())
            .collect();
        let min_len = min_input_len + rows.iter().map(|r| r.label_ids.len()).max().unwrap_or(0);
        let Prefill {
            x,
            positions,
            keys,
            t,
        } = self.prefill_input(soft, &texts, min_len);
        let n = soft.prefix_len();
        let h = self.hidden(x, &positions, &keys, None);
        // Target token k of row r sits at text index src + k and is scored
        // by the hidden state one position before it.
        let k_max = rows
            .iter()
            .map(|r| r.label_ids.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let (mut idx, mut labels, mut mask) = (Vec::new(), Vec::new(), Vec::new());
        for (r, row) in rows.iter().enumerate() {
            let src = row.input_ids.len();
            for k in 0..k_max {
                let real = k < row.label_ids.len() && src + k > 0;
                let at = if real { n + src + k - 1 } else { 0 };
                idx.push((r * (n + t) + at) as i64);
                labels.push(if real { row.label_ids[k] as i64 } else { 0 });
                mask.push(if real { 1f32 } else { 0.0 });
            }
        }
        let picked = Self::pick_rows(h, idx, b, k_max);
        let logits = self.head(picked);
        let labels = Tensor::<2, Int>::from_data(TensorData::new(labels, [b, k_max]), &self.device);
        let mask = Tensor::<2>::from_data(
            TensorData::new(mask, [b, k_max]),
            (&self.device, DType::F32),
        );
        (logits, labels, mask)
    }

    /// Rows `idx` of `h` `[b, t, d]` flattened to `[b·t, d]`, as `[b, k, d]`.
    fn pick_rows(h: Tensor<3>, idx: Vec<i64>, b: usize, k: usize) -> Tensor<3> {
        let [hb, ht, d] = h.dims();
        let device = h.device();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [b * k]), &device);
        h.reshape([hb * ht, d]).select(0, idx).reshape([b, k, d])
    }
}

impl FrozenModel for Llama {
    fn architecture(&self) -> &'static str {
        self.config.family.name()
    }

    fn peft_task_type(&self) -> &'static str {
        "CAUSAL_LM"
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn hidden_size(&self) -> usize {
        self.config.hidden_size()
    }

    fn vocab_size(&self) -> usize {
        self.config.raw.vocab_size
    }

    fn num_layers(&self) -> usize {
        self.layers.len()
    }

    fn num_heads(&self) -> usize {
        self.config.num_heads()
    }

    fn dtype(&self) -> FloatType {
        self.dtype
    }

    fn num_parameters(&self) -> usize {
        Llama::num_parameters(self)
    }

    fn weight_memory(&self) -> crate::model::params::WeightMemory {
        crate::model::params::WeightMemory::of(&self.weights())
    }

    fn tied_head(&self) -> bool {
        self.tied_head
    }

    fn step_activations(&self, shape: &super::memory::StepShape) -> super::memory::Activations {
        super::memory::llama(&self.config, shape)
    }

    fn describe(&self) -> Vec<(&'static str, serde_json::Value)> {
        let c = &self.config;
        let windows: Vec<serde_json::Value> = c.windows.iter().map(|w| (*w).into()).collect();
        vec![
            ("hidden_size", c.hidden_size().into()),
            ("intermediate_size", c.raw.intermediate_size.into()),
            ("layers", c.raw.num_hidden_layers.into()),
            ("num_heads", c.num_heads().into()),
            ("num_kv_heads", c.num_kv_heads.into()),
            ("head_dim", c.head_dim.into()),
            ("vocab_size", c.raw.vocab_size.into()),
            ("rope_theta", c.rope_theta.into()),
            ("rope_scaling", format!("{:?}", c.rope_scaling).into()),
            ("sliding_windows", windows.into()),
            ("qkv_bias", c.qkv_bias.into()),
            ("mlp_bias", c.raw.mlp_bias.into()),
            ("eos_ids", c.eos_ids().into()),
        ]
    }

    fn embedding_rows(&self, ids: &[usize]) -> Tensor<2> {
        embedding_rows(&self.embed_tokens, ids)
    }

    fn for_inference(&self) -> Box<dyn FrozenModel> {
        Box::new(Llama::for_inference(self))
    }

    fn loss_sums(
        &self,
        soft: &SoftInput,
        rows: &[TokenizedExample],
        min_input_len: usize,
    ) -> Tensor<1> {
        let (logits, labels, mask) = self.target_logits(soft, rows, min_input_len);
        token_loss_sums(logits, labels, mask)
    }

    fn generate(
        &self,
        soft: &SoftInput,
        inputs: &[Vec<u32>],
        min_input_len: usize,
        max_new_tokens: usize,
    ) -> Vec<Vec<u32>> {
        let b = inputs.len();
        let eos = self.config.eos_ids();
        let pad = self.config.pad_id();
        let n = soft.prefix_len();
        let mut out: Vec<Vec<u32>> = vec![Vec::new(); b];
        if b == 0 || max_new_tokens == 0 {
            return out;
        }
        let Prefill {
            x,
            positions,
            mut keys,
            t,
        } = self.prefill_input(soft, inputs, min_input_len);
        let stride = n + t;
        let mut caches: Vec<Option<KvCache>> = vec![None; self.layers.len()];
        let h = self.hidden(x, &positions, &keys, Some(&mut caches));
        let last: Vec<i64> = inputs
            .iter()
            .enumerate()
            .map(|(r, i)| (r * stride + n + i.len().max(1) - 1) as i64)
            .collect();
        let mut h = Self::pick_rows(h, last, b, 1);
        // The update rows (A·B) with a zero row at the end for positions ≥ m.
        let update = soft.position_update.as_ref().map(|u| {
            let [m, d] = u.dims();
            let zero = Tensor::<2>::zeros([1, d], (&u.device(), u.dtype()));
            (Tensor::cat(vec![u.clone(), zero], 0), m)
        });
        let mut done = vec![false; b];
        for step in 0..max_new_tokens {
            let logits = self.head(h);
            let next = crate::tensors::to_i64_vec(logits.argmax(2));
            let mut current = Vec::with_capacity(b);
            for r in 0..b {
                let tok = if done[r] { pad } else { next[r] as u32 };
                if !done[r] {
                    out[r].push(tok);
                    done[r] = eos.contains(&tok);
                }
                current.push(tok);
            }
            if done.iter().all(|&d| d) || step + 1 == max_new_tokens {
                break;
            }
            // The token just chosen is text position len + step of its row.
            let text_pos: Vec<usize> = inputs.iter().map(|i| i.len() + step).collect();
            let ids: Vec<i64> = current.iter().map(|&i| i as i64).collect();
            let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, 1]), &self.device);
            let mut x = self.embed(ids);
            if let Some((rows, m)) = &update {
                let sel: Vec<i64> = text_pos.iter().map(|&p| p.min(*m) as i64).collect();
                let sel = Tensor::<1, Int>::from_data(TensorData::new(sel, [b]), &rows.device());
                let dtype = x.dtype();
                let u = rows.clone().select(0, sel).unsqueeze_dim::<3>(1);
                x = (x.cast(u.dtype()) + u).cast(dtype);
            }
            let positions: Vec<Vec<usize>> = text_pos.iter().map(|&p| vec![n + p]).collect();
            for (r, k) in keys.iter_mut().enumerate() {
                k.push(Some(n + text_pos[r]));
            }
            h = self.hidden(x, &positions, &keys, Some(&mut caches));
        }
        out
    }
}
