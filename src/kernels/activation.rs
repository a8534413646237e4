//! Gated feed-forward activations, forward and backward: T5 v1.1's
//! `gelu_new(gate) ⊙ linear` and the Llama family's SwiGLU `silu(gate) ⊙ up`.
//!
//! burn composes `gelu_new(gate) ⊙ linear` from nine tensor operations (SwiGLU
//! from three, each a pass kept alive for the backward); here one parallel
//! pass forward and one backward, keeping both inputs.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Autodiff, AutodiffBackend, Backend, Dispatch, Flex, TensorMetadata, backend_extension,
};
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::common::{contiguous_f32, enabled, flex_f32, flex_tensor};

/// The activation applied to the gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// `gelu_new`, the tanh approximation of GELU (T5 v1.1).
    GeluNew,
    /// `silu(x) = x·σ(x)` (SwiGLU: Llama, Mistral, Qwen2).
    Silu,
}

/// T5 v1.1's gated feed-forward activation, `gelu_new(gate) ⊙ linear`, where
/// `gelu_new` is the tanh approximation of GELU.
pub fn gated_gelu(gate: Tensor<3>, linear: Tensor<3>) -> Tensor<3> {
    gated(gate, linear, Gate::GeluNew)
}

/// SwiGLU's activation, `silu(gate) ⊙ up`.
pub fn gated_silu(gate: Tensor<3>, up: Tensor<3>) -> Tensor<3> {
    gated(gate, up, Gate::Silu)
}

/// `act(gate) ⊙ linear` on the fused kernel for f32 on Flex, else plain operations.
fn gated(gate: Tensor<3>, linear: Tensor<3>, act: Gate) -> Tensor<3> {
    if enabled() && flex_f32(&gate) && flex_f32(&linear) {
        let out =
            <Dispatch as ActivationOps>::gated(gate.into_dispatch(), linear.into_dispatch(), act);
        Tensor::from_dispatch(out)
    } else {
        gated_reference(gate, linear, act)
    }
}

/// [`gated_gelu`] from plain tensor operations.
pub fn gated_gelu_reference(gate: Tensor<3>, linear: Tensor<3>) -> Tensor<3> {
    gated_reference(gate, linear, Gate::GeluNew)
}

/// [`gated_silu`] from plain tensor operations.
pub fn gated_silu_reference(gate: Tensor<3>, up: Tensor<3>) -> Tensor<3> {
    gated_reference(gate, up, Gate::Silu)
}

fn gated_reference(gate: Tensor<3>, linear: Tensor<3>, act: Gate) -> Tensor<3> {
    match act {
        Gate::GeluNew => burn::tensor::activation::gelu_approximate(gate) * linear,
        Gate::Silu => burn::tensor::activation::silu(gate) * linear,
    }
}

/// The fused gated activation, per backend (a burn backend extension).
/// [`ActivationOps::gated_backward`] is the backward pass the `Autodiff`
/// implementation calls on the inner backend.
#[backend_extension(Flex, Autodiff)]
pub trait ActivationOps: Backend {
    /// `act(gate) ⊙ linear`, elementwise (same shapes).
    fn gated(gate: FloatTensor<Self>, linear: FloatTensor<Self>, act: Gate) -> FloatTensor<Self>;

    /// Gradients of [`ActivationOps::gated`] with respect to `gate` and `linear`.
    fn gated_backward(
        gate: FloatTensor<Self>,
        linear: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        act: Gate,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

impl ActivationOps for Flex {
    fn gated(gate: FlexTensor, linear: FlexTensor, act: Gate) -> FlexTensor {
        let shape = gate.shape();
        let (a, l) = (contiguous_f32(&gate), contiguous_f32(&linear));
        let mut out = vec![0f32; a.len()];
        let chunk = 16 * 1024;
        out.par_chunks_mut(chunk)
            .zip(a.par_chunks(chunk).zip(l.par_chunks(chunk)))
            .for_each(|(out, (a, l))| {
                for ((o, &a), &l) in out.iter_mut().zip(a).zip(l) {
                    *o = value_and_slope(act, a).0 * l;
                }
            });
        flex_tensor(out, shape)
    }

    fn gated_backward(
        gate: FlexTensor,
        linear: FlexTensor,
        grad: FlexTensor,
        act: Gate,
    ) -> (FlexTensor, FlexTensor) {
        let shape = gate.shape();
        let (a, l, g) = (
            contiguous_f32(&gate),
            contiguous_f32(&linear),
            contiguous_f32(&grad),
        );
        let mut da = vec![0f32; a.len()];
        let mut dl = vec![0f32; a.len()];
        let chunk = 16 * 1024;
        da.par_chunks_mut(chunk)
            .zip(dl.par_chunks_mut(chunk))
            .zip(
                a.par_chunks(chunk)
                    .zip(l.par_chunks(chunk).zip(g.par_chunks(chunk))),
            )
            .for_each(|((da, dl), (a, (l, g)))| {
                for (((da, dl), &a), (&l, &g)) in
                    da.iter_mut().zip(dl.iter_mut()).zip(a).zip(l.iter().zip(g))
                {
                    // out = act(a)·l: d_a = g·l·act'(a), d_l = g·act(a).
                    let (value, slope) = value_and_slope(act, a);
                    *da = g * l * slope;
                    *dl = g * value;
                }
            });
        (flex_tensor(da, shape.clone()), flex_tensor(dl, shape))
    }
}

/// sqrt(2/π), the scale inside `gelu_new`'s tanh.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// The cubic coefficient of `gelu_new`.
const GELU_CUBIC: f32 = 0.044_715;

/// `act(a)` and its derivative.
fn value_and_slope(act: Gate, a: f32) -> (f32, f32) {
    match act {
        Gate::GeluNew => gelu_new_and_slope(a),
        Gate::Silu => {
            // silu(a) = a·σ(a); silu'(a) = σ(a)·(1 + a·(1 − σ(a))).
            let sigma = 1.0 / (1.0 + (-a).exp());
            (a * sigma, sigma * (1.0 + a * (1.0 - sigma)))
        }
    }
}

/// `gelu_new(a)` and its derivative.
fn gelu_new_and_slope(a: f32) -> (f32, f32) {
    let t = (SQRT_2_OVER_PI * (a + GELU_CUBIC * a * a * a)).tanh();
    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * a * a);
    (
        0.5 * a * (1.0 + t),
        0.5 * (1.0 + t) + 0.5 * a * (1.0 - t * t) * du,
    )
}

/// The backward step of [`ActivationOps::gated`] under autodiff; keeps both inputs.
#[derive(Debug)]
struct GatedStep(Gate);

impl<B: Backend + ActivationOps> Backward<B, 2> for GatedStep {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [gate_node, linear_node] = ops.parents;
        let (gate, linear) = ops.state;
        let (dgate, dlinear) = B::gated_backward(gate, linear, grad, self.0);
        if let Some(node) = gate_node {
            grads.register::<B>(node.id, dgate);
        }
        if let Some(node) = linear_node {
            grads.register::<B>(node.id, dlinear);
        }
    }
}

impl<B: Backend + ActivationOps, C: CheckpointStrategy> ActivationOps for Autodiff<B, C> {
    fn gated(gate: FloatTensor<Self>, linear: FloatTensor<Self>, act: Gate) -> FloatTensor<Self> {
        let prep = GatedStep(act)
            .prepare::<C>([gate.node(), linear.node()])
            .compute_bound()
            .stateful();
        let (a, l) = (gate.into_primitive(), linear.into_primitive());
        match prep {
            OpsKind::Tracked(prep) => {
                let out = B::gated(a.clone(), l.clone(), act);
                prep.finish((a, l), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::gated(a, l, act)),
        }
    }

    fn gated_backward(
        gate: FloatTensor<Self>,
        linear: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        act: Gate,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (da, dl) = B::gated_backward(
            gate.into_primitive(),
            linear.into_primitive(),
            grad.into_primitive(),
            act,
        );
        (Self::from_inner(da), Self::from_inner(dl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::common::testing::{compare, random};
    use burn::tensor::Device;

    #[test]
    fn fused_gated_activations_match_plain_ops_in_values_and_gradients() {
        let device = Device::flex();
        for act in [Gate::GeluNew, Gate::Silu] {
            let gate = random([2, 5, 64], 4, &device) * 3.0;
            let linear = random([2, 5, 64], 5, &device);
            let diffs = compare((gate, linear), |a, l, fused| {
                let l: Tensor<3> = l;
                if fused {
                    gated(a, l, act)
                } else {
                    gated_reference(a, l, act)
                }
            });
            for d in diffs {
                assert!(
                    d < 1e-5,
                    "fused and plain {act:?} differ by {d} ({diffs:?})"
                );
            }
        }
    }
}
