//! T5's RMS norm (`T5LayerNorm`), forward and backward in one pass each.
//!
//! burn composes it from six tensor operations, each a pass over memory on
//! the calling thread and, under autodiff, a graph node that keeps its inputs;
//! here one parallel pass over rows forward and one backward, keeping only the
//! input rows.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Autodiff, AutodiffBackend, Backend, Dispatch, Flex, TensorMetadata, backend_extension,
};
use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use super::common::{contiguous_f32, enabled, flex_f32, flex_tensor, rows_per_task};

/// T5LayerNorm, `weight * x / sqrt(mean(x²) + eps)` over the last dimension.
pub fn rms_norm(x: Tensor<3>, weight: Tensor<1>, eps: f64) -> Tensor<3> {
    if enabled() && flex_f32(&x) && flex_f32(&weight) {
        let out = <Dispatch as NormOps>::rms_norm(x.into_dispatch(), weight.into_dispatch(), eps);
        Tensor::from_dispatch(out)
    } else {
        rms_norm_reference(x, weight, eps)
    }
}

/// [`rms_norm`] from plain tensor operations, statistics in f32 whatever the dtype.
pub fn rms_norm_reference(x: Tensor<3>, weight: Tensor<1>, eps: f64) -> Tensor<3> {
    let dtype = x.dtype();
    let x32 = x.cast(DType::F32);
    let var = x32.clone().square().mean_dim(2);
    let normed = x32 * (var + eps).sqrt().recip();
    normed.cast(dtype) * weight.unsqueeze::<3>()
}

/// The fused RMS norm, per backend (a burn backend extension).
/// [`NormOps::rms_norm_backward`] is the backward pass the `Autodiff`
/// implementation calls on the inner backend.
#[backend_extension(Flex, Autodiff)]
pub trait NormOps: Backend {
    /// `weight * x / sqrt(mean(x²) + eps)` over the last dimension of `x`.
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self>;

    /// Gradients of [`NormOps::rms_norm`] with respect to `x` and `weight`.
    fn rms_norm_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

impl NormOps for Flex {
    fn rms_norm(x: FlexTensor, weight: FlexTensor, eps: f64) -> FlexTensor {
        let shape = x.shape();
        let d = *shape.as_slice().last().unwrap_or(&1);
        let xs = contiguous_f32(&x);
        let w = contiguous_f32(&weight);
        let mut out = vec![0f32; xs.len()];
        let chunk = rows_per_task(d) * d;
        out.par_chunks_mut(chunk)
            .zip(xs.par_chunks(chunk))
            .for_each(|(out, xs)| {
                for (o, x) in out.chunks_exact_mut(d).zip(xs.chunks_exact(d)) {
                    let r = inv_rms(x, eps);
                    for ((o, &x), &w) in o.iter_mut().zip(x).zip(w.iter()) {
                        *o = w * (x * r);
                    }
                }
            });
        flex_tensor(out, shape)
    }

    fn rms_norm_backward(
        x: FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
        eps: f64,
    ) -> (FlexTensor, FlexTensor) {
        let shape = x.shape();
        let d = *shape.as_slice().last().unwrap_or(&1);
        let xs = contiguous_f32(&x);
        let gs = contiguous_f32(&grad);
        let w = contiguous_f32(&weight);
        let mut dx = vec![0f32; xs.len()];
        let chunk = rows_per_task(d) * d;
        // Each task returns its rows' share of the weight gradient; the shares are summed.
        let dw = dx
            .par_chunks_mut(chunk)
            .zip(xs.par_chunks(chunk).zip(gs.par_chunks(chunk)))
            .map(|(dx, (xs, gs))| {
                let mut dw = vec![0f32; d];
                for ((dx, x), g) in dx
                    .chunks_exact_mut(d)
                    .zip(xs.chunks_exact(d))
                    .zip(gs.chunks_exact(d))
                {
                    let r = inv_rms(x, eps);
                    // y = w ⊙ x̂, x̂ = x·r, r = (mean(x²) + eps)^(-1/2):
                    // dx = r·(g⊙w) − x·r³·mean(g⊙w⊙x), dw = Σ_rows g⊙x̂.
                    let mut dot = 0f32;
                    for ((&g, &x), &w) in g.iter().zip(x).zip(w.iter()) {
                        dot += g * w * x;
                    }
                    let c = r * r * r * dot / d as f32;
                    for (((dx, &g), &x), (&w, dw)) in
                        dx.iter_mut().zip(g).zip(x).zip(w.iter().zip(dw.iter_mut()))
                    {
                        *dx = r * g * w - c * x;
                        *dw += g * x * r;
                    }
                }
                dw
            })
            .reduce(
                || vec![0f32; d],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        (flex_tensor(dx, shape), flex_tensor(dw, weight.shape()))
    }
}

/// `(mean(x²) + eps)^(-1/2)` of one row, accumulated in f32 like the reference.
fn inv_rms(x: &[f32], eps: f64) -> f32 {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    1.0 / (ms + eps as f32).sqrt()
}

/// The backward step of [`NormOps::rms_norm`] under autodiff; keeps `x` and `weight`.
#[derive(Debug)]
struct RmsNormStep {
    eps: f64,
}

impl<B: Backend + NormOps> Backward<B, 2> for RmsNormStep {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [x_node, w_node] = ops.parents;
        let (x, w) = ops.state;
        let (dx, dw) = B::rms_norm_backward(x, w, grad, self.eps);
        if let Some(node) = x_node {
            grads.register::<B>(node.id, dx);
        }
        if let Some(node) = w_node {
            grads.register::<B>(node.id, dw);
        }
    }
}

impl<B: Backend + NormOps, C: CheckpointStrategy> NormOps for Autodiff<B, C> {
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        let prep = RmsNormStep { eps }
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful();
        let (x, w) = (x.into_primitive(), weight.into_primitive());
        match prep {
            OpsKind::Tracked(prep) => {
                let out = B::rms_norm(x.clone(), w.clone(), eps);
                prep.finish((x, w), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::rms_norm(x, w, eps)),
        }
    }

    fn rms_norm_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        // Second-order gradients are not needed anywhere: computed untracked.
        let (dx, dw) = B::rms_norm_backward(
            x.into_primitive(),
            weight.into_primitive(),
            grad.into_primitive(),
            eps,
        );
        (Self::from_inner(dx), Self::from_inner(dw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::common::testing::{compare, random};
    use burn::tensor::Device;

    #[test]
    fn fused_rms_norm_matches_plain_ops_in_values_and_gradients() {
        let device = Device::flex();
        let x = random([3, 7, 48], 1, &device) * 3.0;
        let w = random([48], 2, &device);
        let diffs = compare((x, w), |x, w, fused| {
            let w1: Tensor<1> = w.reshape([48]);
            if fused {
                rms_norm(x, w1, 1e-6)
            } else {
                rms_norm_reference(x, w1, 1e-6)
            }
        });
        for d in diffs {
            assert!(
                d < 1e-5,
                "fused and plain RMS norm differ by {d} ({diffs:?})"
            );
        }
    }
}
