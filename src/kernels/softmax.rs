//! `softmax(scores + bias)` over the last dimension, forward and backward,
//! and the row kernels the attention kernels share.
//!
//! burn composes the attention softmax with its additive position bias and
//! mask from six tensor operations; here one parallel pass over rows, keeping
//! only the probabilities for the backward pass. The rows use an `exp` in
//! plain arithmetic that vectorises, with AVX-512 where the CPU has it.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, broadcast_shape};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Autodiff, AutodiffBackend, Backend, Dispatch, Flex, TensorMetadata, backend_extension,
};
use burn::tensor::activation::softmax;
use burn::tensor::{Shape, Tensor};
use rayon::prelude::*;

use super::common::{contiguous_f32, enabled, flex_f32, flex_tensor, rows_per_task};

/// `softmax(scores + bias)` over the last dimension; `bias` broadcasts to `scores`.
pub fn softmax_with_bias(scores: Tensor<4>, bias: Tensor<4>) -> Tensor<4> {
    if enabled() && flex_f32(&scores) && flex_f32(&bias) {
        let out = <Dispatch as SoftmaxOps>::softmax_with_bias(
            scores.into_dispatch(),
            bias.into_dispatch(),
        );
        Tensor::from_dispatch(out)
    } else {
        softmax_with_bias_reference(scores, bias)
    }
}

/// [`softmax_with_bias`] from plain tensor operations.
pub fn softmax_with_bias_reference(scores: Tensor<4>, bias: Tensor<4>) -> Tensor<4> {
    softmax(scores + bias, 3)
}

/// The fused softmax with bias, per backend (a burn backend extension).
/// [`SoftmaxOps::softmax_backward`] is the backward pass the `Autodiff`
/// implementation calls on the inner backend.
#[backend_extension(Flex, Autodiff)]
pub trait SoftmaxOps: Backend {
    /// `softmax(scores + bias)` over the last dimension; `bias` broadcasts to `scores`.
    fn softmax_with_bias(scores: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Gradient of a softmax with respect to its input, from its output `probs`.
    fn softmax_backward(probs: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl SoftmaxOps for Flex {
    fn softmax_with_bias(scores: FlexTensor, bias: FlexTensor) -> FlexTensor {
        let shape = scores.shape();
        let k = *shape.as_slice().last().unwrap_or(&1);
        let bias = Flex::float_expand(bias, shape.clone());
        let ss = contiguous_f32(&scores);
        let bs = contiguous_f32(&bias);
        let mut out = vec![0f32; ss.len()];
        let chunk = rows_per_task(k) * k;
        out.par_chunks_mut(chunk)
            .zip(ss.par_chunks(chunk).zip(bs.par_chunks(chunk)))
            .for_each(|(out, (ss, bs))| softmax_rows(out, ss, bs, k));
        flex_tensor(out, shape)
    }

    fn softmax_backward(probs: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let shape = probs.shape();
        let k = *shape.as_slice().last().unwrap_or(&1);
        let ps = contiguous_f32(&probs);
        let gs = contiguous_f32(&grad);
        let mut out = vec![0f32; ps.len()];
        let chunk = rows_per_task(k) * k;
        out.par_chunks_mut(chunk)
            .zip(ps.par_chunks(chunk).zip(gs.par_chunks(chunk)))
            .for_each(|(out, (ps, gs))| {
                for ((o, p), g) in out
                    .chunks_exact_mut(k)
                    .zip(ps.chunks_exact(k))
                    .zip(gs.chunks_exact(k))
                {
                    o.copy_from_slice(g);
                    softmax_backward_row(o, p);
                }
            });
        flex_tensor(out, shape)
    }
}

/// The gradient of a softmax row with respect to its input, in place of the
/// gradient `g` with respect to its output `p`: `g ← p ⊙ (g − Σ g⊙p)`.
pub(super) fn softmax_backward_row(g: &mut [f32], p: &[f32]) {
    let dot: f32 = g.iter().zip(p).map(|(g, p)| g * p).sum();
    for (g, &p) in g.iter_mut().zip(p) {
        *g = p * (*g - dot);
    }
}

/// `softmax(s + b)` of every `k`-long row of `s` and `b` into `p`.
fn softmax_rows(p: &mut [f32], s: &[f32], b: &[f32], k: usize) {
    p.copy_from_slice(s);
    for (p, b) in p.chunks_exact_mut(k).zip(b.chunks_exact(k)) {
        softmax_row_in_place(p, b);
    }
}

/// `p ← softmax(p + b)` of one row, with AVX-512 where the CPU has it (the
/// same arithmetic, in wider vectors).
pub(super) fn softmax_row_in_place(p: &mut [f32], b: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F is present.
        return unsafe { softmax_row_avx512(p, b) };
    }
    softmax_row_body(p, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_row_avx512(p: &mut [f32], b: &[f32]) {
    softmax_row_body(p, b)
}

/// Lanes of the reductions below: sixteen partial results, so that the
/// compiler keeps them in one AVX-512 register (or four SSE ones).
const LANES: usize = 16;

#[inline(always)]
fn softmax_row_body(p: &mut [f32], b: &[f32]) {
    let k = p.len();
    let b = &b[..k];
    let whole = k / LANES * LANES;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    for (p, b) in p[..whole]
        .chunks_exact_mut(LANES)
        .zip(b.chunks_exact(LANES))
    {
        for l in 0..LANES {
            p[l] += b[l];
            lanes[l] = lanes[l].max(p[l]);
        }
    }
    let mut max = lanes.iter().fold(f32::NEG_INFINITY, |a, &m| a.max(m));
    for i in whole..k {
        p[i] += b[i];
        max = max.max(p[i]);
    }
    for p in p.iter_mut() {
        *p = exp_fast(*p - max);
    }
    let mut lanes = [0f32; LANES];
    for p in p[..whole].chunks_exact(LANES) {
        for l in 0..LANES {
            lanes[l] += p[l];
        }
    }
    let sum = lanes.iter().sum::<f32>() + p[whole..].iter().sum::<f32>();
    let inv = 1.0 / sum;
    p.iter_mut().for_each(|p| *p *= inv);
}

/// `eˣ` to about 2e-7 relative, in plain arithmetic that vectorises (libm's
/// `expf` is a call per element: 4 % of a training step's time). `x` is
/// split as `k·ln 2 + r` with `|r| ≤ ln 2 / 2` (Cody–Waite, two-part ln 2),
/// `eʳ` is its degree-6 Taylor polynomial (error below `r⁷/7!` ≈ 1.2e-7), and
/// `2ᵏ` is built in the exponent bits. Below −87.3 (the smallest normal
/// result) it returns 0, like `expf` for masked scores (−1e30).
#[inline(always)]
fn exp_fast(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    /// 1.5 · 2²³: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    const LO: f32 = -87.336_55;
    let xc = x.clamp(LO, 88.376_26);
    let k = (xc * LOG2_E + ROUND) - ROUND;
    let r = (xc - k * LN2_HI) - k * LN2_LO;
    let poly = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(((k as i32 + 127) as u32) << 23);
    if x < LO { 0.0 } else { poly * scale }
}

/// The backward step of [`SoftmaxOps::softmax_with_bias`] under autodiff; keeps the
/// probabilities, and the bias's shape to sum its gradient back to.
#[derive(Debug)]
struct SoftmaxWithBiasStep {
    bias_shape: Shape,
}

impl<B: Backend + SoftmaxOps> Backward<B, 2> for SoftmaxWithBiasStep {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [scores_node, bias_node] = ops.parents;
        let ds = B::softmax_backward(ops.state, grad);
        if let Some(node) = bias_node {
            grads.register::<B>(node.id, broadcast_shape::<B>(ds.clone(), &self.bias_shape));
        }
        if let Some(node) = scores_node {
            grads.register::<B>(node.id, ds);
        }
    }
}

impl<B: Backend + SoftmaxOps, C: CheckpointStrategy> SoftmaxOps for Autodiff<B, C> {
    fn softmax_with_bias(scores: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        let bias_shape = bias.primitive().shape();
        let prep = SoftmaxWithBiasStep { bias_shape }
            .prepare::<C>([scores.node(), bias.node()])
            .compute_bound()
            .stateful();
        let probs = B::softmax_with_bias(scores.into_primitive(), bias.into_primitive());
        match prep {
            OpsKind::Tracked(prep) => prep.finish(probs.clone(), probs),
            OpsKind::UnTracked(prep) => prep.finish(probs),
        }
    }

    fn softmax_backward(probs: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let ds = B::softmax_backward(probs.into_primitive(), grad.into_primitive());
        Self::from_inner(ds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::common::testing::{compare, random};
    use burn::tensor::{Device, TensorData};

    #[test]
    fn exp_fast_is_exp_to_a_few_ulps_over_the_float_range() {
        let mut worst = 0f64;
        let mut x = -87.3f32;
        while x < 88.3 {
            let (got, want) = (exp_fast(x) as f64, (x as f64).exp());
            worst = worst.max((got - want).abs() / want);
            x += 0.0137;
        }
        assert!(worst < 5e-7, "relative error up to {worst}");
        for x in [-1e30f32, -100.0, f32::NEG_INFINITY] {
            assert_eq!(exp_fast(x), 0.0, "{x}");
        }
        assert_eq!(exp_fast(0.0), 1.0);
    }

    #[test]
    fn fused_softmax_matches_plain_ops_for_every_bias_shape() {
        let device = Device::flex();
        // Full bias (encoder), per-head bias (decoder self-attention), per-example
        // mask (cross); rows shorter and longer than the kernel's 16 lanes.
        for k in [9, 37] {
            for (i, bias_shape) in [[2, 3, 5, k], [1, 3, 5, k], [2, 1, 1, k]]
                .into_iter()
                .enumerate()
            {
                let scores = random([2, 3, 5, k], 10 + i as u64, &device) * 4.0;
                let mut bias = random(bias_shape, 20 + i as u64, &device);
                if i == 2 {
                    // A padding mask: the last two keys of the second example are masked off.
                    let mut v = vec![0f32; 2 * k];
                    v[2 * k - 2] = -1e30;
                    v[2 * k - 1] = -1e30;
                    bias = Tensor::from_data(TensorData::new(v, bias_shape), &device);
                }
                let diffs = compare((scores, bias), |s, b, fused| {
                    if fused {
                        softmax_with_bias(s, b)
                    } else {
                        softmax_with_bias_reference(s, b)
                    }
                });
                for d in diffs {
                    assert!(
                        d < 1e-5,
                        "bias {bias_shape:?}: fused and plain differ by {d} ({diffs:?})"
                    );
                }
            }
        }
    }
}
