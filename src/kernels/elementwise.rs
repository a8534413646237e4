//! ReLU and the residual additions: parallel, and in place when the buffer
//! is theirs (a fresh product or sublayer output), where burn's run on the
//! calling thread into a new buffer.

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

/// `max(x, 0)` elementwise (NaN kept, as burn and PyTorch keep it): for f32
/// on Flex, parallel and in place when `x` holds the only reference to its
/// buffer (the feed-forward layer's fresh product); else burn's `relu`, a
/// pass on the calling thread.
pub fn relu(x: Tensor<3>) -> Tensor<3> {
    if enabled() && flex_f32(&x) {
        Tensor::from_dispatch(<Dispatch as ElementwiseOps>::fused_relu(x.into_dispatch()))
    } else {
        burn::tensor::activation::relu(x)
    }
}

/// `a + b` for two tensors of one shape (the residual connections): for f32
/// on Flex, parallel and in place in `b` when it holds the only reference to
/// its buffer (a sublayer's fresh output); else burn's addition.
pub fn residual_add(a: Tensor<3>, b: Tensor<3>) -> Tensor<3> {
    if enabled() && flex_f32(&a) && flex_f32(&b) && a.dims() == b.dims() {
        let out = <Dispatch as ElementwiseOps>::residual_add(a.into_dispatch(), b.into_dispatch());
        Tensor::from_dispatch(out)
    } else {
        a + b
    }
}

/// The fused elementwise operations, per backend (a burn backend extension).
/// [`ElementwiseOps::fused_relu_backward`] is the backward pass the
/// `Autodiff` implementation calls on the inner backend.
#[backend_extension(Flex, Autodiff)]
pub trait ElementwiseOps: Backend {
    /// `max(x, 0)` elementwise; see [`relu`].
    fn fused_relu(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Gradient of [`ElementwiseOps::fused_relu`] from its output: `grad` where the output is positive.
    fn fused_relu_backward(out: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `a + b`, same shapes; see [`residual_add`].
    fn residual_add(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl ElementwiseOps for Flex {
    fn fused_relu(x: FlexTensor) -> FlexTensor {
        map_f32(x, |v| if v.is_nan() || v > 0.0 { v } else { 0.0 })
    }

    fn fused_relu_backward(out: FlexTensor, grad: FlexTensor) -> FlexTensor {
        zip_f32(
            out,
            grad,
            |o, g| if o.is_nan() || o > 0.0 { g } else { 0.0 },
        )
    }

    fn residual_add(a: FlexTensor, b: FlexTensor) -> FlexTensor {
        zip_f32(a, b, |a, b| a + b)
    }
}

/// Elements per rayon task of the elementwise kernels.
const ELEMENTWISE_CHUNK: usize = 16 * 1024;

/// The f32 elements of `t` to overwrite in place: some when `t` is
/// contiguous from the start of a buffer it alone holds.
fn exclusive_f32(t: &mut FlexTensor) -> Option<&mut [f32]> {
    let n = t.shape().num_elements();
    if !t.is_contiguous() || t.layout().start_offset() != 0 {
        return None;
    }
    t.try_storage_mut::<f32>().map(|v| &mut v[..n])
}

/// `f` of every element of `x`, in place when [`exclusive_f32`] allows, else
/// into a new buffer; in parallel.
fn map_f32(mut x: FlexTensor, f: impl Fn(f32) -> f32 + Sync) -> FlexTensor {
    if let Some(values) = exclusive_f32(&mut x) {
        values
            .par_chunks_mut(ELEMENTWISE_CHUNK)
            .for_each(|c| c.iter_mut().for_each(|v| *v = f(*v)));
        return x;
    }
    let out = contiguous_f32(&x).par_iter().map(|&v| f(v)).collect();
    flex_tensor(out, x.shape())
}

/// `f(a, b)` of every pair of elements (same shapes), in place in `b` when
/// [`exclusive_f32`] allows, else into a new buffer; in parallel.
fn zip_f32(a: FlexTensor, mut b: FlexTensor, f: impl Fn(f32, f32) -> f32 + Sync) -> FlexTensor {
    let a_values = contiguous_f32(&a);
    if let Some(values) = exclusive_f32(&mut b) {
        values
            .par_chunks_mut(ELEMENTWISE_CHUNK)
            .zip(a_values.par_chunks(ELEMENTWISE_CHUNK))
            .for_each(|(b, a)| b.iter_mut().zip(a).for_each(|(b, &a)| *b = f(a, *b)));
        return b;
    }
    let b_values = contiguous_f32(&b);
    let out = a_values
        .par_iter()
        .zip(b_values.par_iter())
        .map(|(&a, &b)| f(a, b))
        .collect();
    flex_tensor(out, b.shape())
}

/// The backward step of [`ElementwiseOps::fused_relu`] under autodiff; keeps the output.
#[derive(Debug)]
struct ReluStep;

impl<B: Backend + ElementwiseOps> Backward<B, 1> for ReluStep {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [x_node] = ops.parents;
        if let Some(node) = x_node {
            grads.register::<B>(node.id, B::fused_relu_backward(ops.state, grad));
        }
    }
}

/// The backward step of [`ElementwiseOps::residual_add`] under autodiff: the
/// gradient reaches both operands unchanged; keeps nothing.
#[derive(Debug)]
struct ResidualAddStep;

impl<B: Backend> Backward<B, 2> for ResidualAddStep {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        match ops.parents {
            [Some(a), Some(b)] => {
                grads.register::<B>(a.id, grad.clone());
                grads.register::<B>(b.id, grad);
            }
            [Some(node), None] | [None, Some(node)] => grads.register::<B>(node.id, grad),
            [None, None] => {}
        }
    }
}

impl<B: Backend + ElementwiseOps, C: CheckpointStrategy> ElementwiseOps for Autodiff<B, C> {
    fn fused_relu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let prep = ReluStep.prepare::<C>([x.node()]).compute_bound().stateful();
        let out = B::fused_relu(x.into_primitive());
        match prep {
            OpsKind::Tracked(prep) => prep.finish(out.clone(), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn fused_relu_backward(out: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::from_inner(B::fused_relu_backward(
            out.into_primitive(),
            grad.into_primitive(),
        ))
    }

    fn residual_add(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        let prep = ResidualAddStep
            .prepare::<C>([a.node(), b.node()])
            .compute_bound()
            .stateful();
        let out = B::residual_add(a.into_primitive(), b.into_primitive());
        match prep {
            OpsKind::Tracked(prep) => prep.finish((), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::common::testing::{compare, random};
    use burn::tensor::{Device, TensorData};

    #[test]
    fn relu_and_residual_add_match_burn_in_place_or_not() {
        let device = Device::flex();
        let a = random([3, 5, 40_000], 41, &device);
        let b = random([3, 5, 40_000], 42, &device);
        // Scaled first: a fresh buffer, which the kernels overwrite in place.
        let diffs = compare((a.clone(), b.clone()), |a, b, fused| {
            let (a, b) = (a * 1.5, b * 0.5);
            match fused {
                true => relu(residual_add(a, b)),
                false => burn::tensor::activation::relu(a + b),
            }
        });
        assert_eq!(diffs, [0.0; 3], "relu(a + b): {diffs:?}");
        // Inputs still referenced elsewhere are left as they were.
        let before = a.to_data();
        let _ = relu(a.clone());
        let _ = residual_add(b.clone(), a.clone());
        assert_eq!(a.to_data(), before);
        // NaN passes through, as in burn and PyTorch.
        let nan = Tensor::<3>::from_data(
            TensorData::new(vec![f32::NAN, -1.0, 2.0], [1, 1, 3]),
            &device,
        );
        let out = crate::tensors::to_f32_vec(relu(nan));
        assert!(out[0].is_nan() && out[1] == 0.0 && out[2] == 2.0, "{out:?}");
    }
}
